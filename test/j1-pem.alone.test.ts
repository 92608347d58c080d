/**
 * PEM parsing is linear: a hostile 64 KiB body (every CSR from every link
 * goes through csrDer) costs a few milliseconds of event-loop time, not the
 * quarter second a backtracking regular expression took. Loose bound; the
 * figures are logged.
 */
import { HOSTILE_PEM } from './helpers/load.js';
import test from 'ava';
import { csrDer } from '../src/x509/pem.js';


test('a hostile 64 KiB PEM body costs well under 10 ms (median of 21)', (t) => {
  for (const [name, text] of Object.entries(HOSTILE_PEM)) {
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
