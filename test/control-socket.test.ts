/**
 * The control channel (<ledger>.sock): only the service user and root reach
 * it, but what they send is still bounded: a request over the size limit
 * is answered TOO_LARGE and never carried out, and idle connections cannot
 * use up the station's files.
 */
import test from 'ava';
import { connect, type Socket } from 'node:net';
import Database from 'better-sqlite3';
import { serveControl } from '../src/cli/owner.js';
import { callOwner } from '../src/operator/control.js';
import type { LineSignerError } from '../src/errors.js';
import { cliAsync } from './helpers/cli.js';
import { testStation } from './helpers/pki.js';

function clockConfirms(ledger: string): number {
  const db = new Database(ledger, { readonly: true });
  try {
    return (db.prepare("SELECT count(*) AS n FROM events WHERE kind = 'clock_confirm'").get() as { n: number }).n;
  } finally {
    db.close();
  }
}

const open = (path: string): Promise<Socket> =>
  new Promise((resolve, reject) => {
    const s = connect(path, () => resolve(s));
    s.once('error', reject);
  });

/** Writes `parts` 300 ms apart on one connection; resolves with all it was answered once the station closes it. */
async function answerTo(path: string, parts: string[]): Promise<string> {
  const sock = await open(path);
  let answer = '';
  sock.setEncoding('utf8');
  sock.on('data', (d: string) => (answer += d));
  const ended = new Promise((r) => sock.once('close', r));
  for (const [i, part] of parts.entries()) {
    if (i > 0) await new Promise((r) => setTimeout(r, 300));
    sock.write(part);
  }
  await ended;
  return answer;
}

test('a request past 256 KiB whose line end comes later is answered TOO_LARGE and never carried out', async (t) => {
  const s = await testStation();
  const control = await serveControl(s.config, s);
  t.teardown(async () => {
    await control.close();
    await s.close();
  });
  const line = JSON.stringify({ op: 'clock-confirm', reason: 'x'.repeat(300_000), operator: 'ana' });
  const answer = await answerTo(`${s.config.station.ledger}.sock`, [line.slice(0, 250_000), line.slice(250_000) + '\n']);
  t.regex(answer, /"code":"TOO_LARGE"/);
  t.is(clockConfirms(s.config.station.ledger), 0, 'nothing done');
});

test('the limit is in bytes: a line of 3-byte characters past 256 KiB is refused, though it has fewer characters than that', async (t) => {
  const s = await testStation();
  const control = await serveControl(s.config, s);
  t.teardown(async () => {
    await control.close();
    await s.close();
  });
  const answer = await answerTo(`${s.config.station.ledger}.sock`, [JSON.stringify({ op: 'clock-confirm', reason: '€'.repeat(100_000), operator: 'ana' }) + '\n']);
  t.regex(answer, /"code":"TOO_LARGE"/);
  t.is(clockConfirms(s.config.station.ledger), 0, 'nothing done');
});

test('idle connections past the cap are closed at once; the station still answers its operator afterwards', async (t) => {
  const s = await testStation();
  const control = await serveControl(s.config, s);
  const idle: Socket[] = [];
  t.teardown(async () => {
    for (const c of idle) c.destroy();
    await control.close();
    await s.close();
  });
  const path = `${s.config.station.ledger}.sock`;
  // Read as any client does: the ones past the cap get an answer, then the end.
  for (let i = 0; i < 40; i++) idle.push((await open(path)).resume());
  const closed = await Promise.all(idle.map((c) => new Promise<boolean>((r) => (c.destroyed ? r(true) : (c.once('close', () => r(true)), setTimeout(() => r(false), 500))))));
  t.is(closed.filter(Boolean).length, 8, 'the 8 past 32 are closed');
  // An operator's command meanwhile is told why, not a bare EPIPE; status does not say "not serving".
  const turned = await t.throwsAsync(callOwner(s.config.station.ledger, { op: 'health' }));
  t.is((turned as LineSignerError).code, 'LEDGER_BUSY');
  t.regex(turned!.message, /has 32 control connections open at once .*; nothing done, try again/);
  const status = await cliAsync(['status', '--config', s.configPath]);
  t.regex(status.stdout, /^station: {3}.*, serving unknown: the serving station has 32 control connections open at once/m, status.stderr);
  const json = JSON.parse((await cliAsync(['status', '--json', '--config', s.configPath])).stdout) as { serving: { pid: null; unreachable: string } | null };
  t.regex(json.serving!.unreachable, /32 control connections open at once/, 'not null, which says no station serves');
  for (const c of idle) c.destroy();
  await new Promise((r) => setTimeout(r, 100));
  const health = (await callOwner(s.config.station.ledger, { op: 'health' }))!.result as { pid: number };
  t.is(health.pid, process.pid);
});

test('a client that ends its side after the request still gets the answer; one that never reads or closes does not hold the station\'s stop', async (t) => {
  const s = await testStation();
  const control = await serveControl(s.config, s);
  t.teardown(() => s.close());
  const path = `${s.config.station.ledger}.sock`;
  // Half-closed, as `socat -t` and shutdown(SHUT_WR) leave it: the answer once went nowhere while the action was done.
  const half = await open(path);
  let answer = '';
  half.setEncoding('utf8');
  half.on('data', (d: string) => (answer += d));
  const closed = new Promise((r) => half.once('close', r));
  half.end(JSON.stringify({ op: 'health' }) + '\n');
  await closed;
  t.regex(answer, /"ok":true/);
  // Asks, then neither reads nor closes: the stop cuts it instead of waiting for it.
  const stuck = await open(path);
  stuck.pause();
  stuck.write(JSON.stringify({ op: 'health' }) + '\n');
  await new Promise((r) => setTimeout(r, 200));
  const t0 = Date.now();
  const stopped = await Promise.race([control.close().then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), 3000))]);
  t.true(stopped, `close() returned in ${Date.now() - t0} ms`);
  stuck.destroy();
});
