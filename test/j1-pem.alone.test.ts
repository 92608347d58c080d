/**
 * PEM parsing is linear: a hostile 64 KiB body (every CSR from every link
 * goes through csrDer) costs a few milliseconds of event-loop time, not the
 * quarter second a backtracking regular expression took. Loose bound; the
 * figures are logged.
 */
import test from 'ava';
import { csrDer } from '../src/x509/pem.js';

const HOSTILE: Record<string, string> = {
  'BEGIN lines, no END': '-----BEGIN CERTIFICATE REQUEST-----\n'.repeat(1820),
  'blocks with mismatched END': '-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUESX-----\n'.repeat(780),
  'BEGIN then blanks': '-----BEGIN CERTIFICATE REQUEST-----\n' + ' \t\n'.repeat(21_800),
  'BEGIN without line ends': '-----BEGIN '.repeat(5950),
  'many labels': Array.from({ length: 2200 }, (_, i) => `-----BEGIN A${i}-----\n`).join(''),
};

test('a hostile 64 KiB PEM body costs well under 10 ms (median of 21)', (t) => {
  for (const [name, text] of Object.entries(HOSTILE)) {
    const bytes = Buffer.from(text);
    t.true(bytes.length <= 65536 && bytes.length > 45_000, name);
    const times: number[] = [];
    for (let i = 0; i < 21; i++) {
      const t0 = performance.now();
      t.throws(() => csrDer(bytes));
      times.push(performance.now() - t0);
    }
    times.sort((a, b) => a - b);
    t.log(`${name} (${bytes.length} bytes): median ${times[10]!.toFixed(2)} ms, worst ${times[20]!.toFixed(2)} ms`);
    t.true(times[10]! < 10, `${name}: ${times[10]!.toFixed(2)} ms`);
  }
});
