/**
 * Issues 8, 9 and 11: sync trusts only what it pinned, counts only the
 * API's own 2xx, keeps settled outcomes settled, and never lets the token
 * out. Each test is a reproduction from the issue.
 */
import test from 'ava';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import Database from 'better-sqlite3';
import { join } from 'node:path';
import { exportBatch, sync } from '../src/export/index.js';
import { caShow, stationKeyInit } from '../src/station/index.js';
import { allowReissue, exportNext, issue, revoke, stationWithBatches, forgeRevocation } from './helpers/batches.js';
import { cliAsync as cli } from './helpers/cli.js';
import { deviceApi, type DeviceApi } from './helpers/device-api.js';
import { reserveStationTokens, testStation, type TestStation, uuid } from './helpers/pki.js';

reserveStationTokens(36);

const TOKEN = 'osf-secret-token-0123456789';
const pin = (s: TestStation): string => caShow(s.config).station_key.sha256!;

function tokenFile(dir: string, text = TOKEN + '\n'): string {
  const p = join(mkdtempSync(join(dir, 'tok-')), 'api-token');
  writeFileSync(p, text, { mode: 0o600 });
  return p;
}

async function api(t: { teardown(f: () => Promise<void>): void }): Promise<DeviceApi> {
  const a = await deviceApi(TOKEN);
  t.teardown(() => a.close());
  return a;
}

test('a 303 to a login page counts as nothing: every step fails, nothing is reported registered, exit 1', async (t) => {
  const { s, files } = await stationWithBatches([3]);
  t.teardown(() => s.close());
  const a = await api(t);
  a.anyFaults.push(...Array(50).fill('redirect303'));
  const r = await cli(['sync', ...files, '--api', a.url, '--token-file', tokenFile(s.dir), '--state', join(s.dir, 'st.db'), '--station-key', pin(s), '--retry-base-ms', '5']);
  t.is(r.status, 1);
  t.regex(r.stdout, /0 registered, 0 already there, 0 deleted, 3 failed/);
  t.regex(r.stderr, /HTTP 303: a redirect to \/login, not followed/);
  t.is(a.devices.size, 0);
  t.false(a.log.some((l) => l.path === '/login'), 'the login page was never asked');
});

test('a 307 to another origin: that origin receives nothing, the token stays home, the steps fail', async (t) => {
  const { s, files } = await stationWithBatches([3]);
  t.teardown(() => s.close());
  const a = await api(t);
  const elsewhere = await api(t);
  a.redirectTarget = elsewhere.url;
  a.anyFaults.push(...Array(50).fill('redirectAway'));
  const summary = await sync({ files, api: a.url, tokenFile: tokenFile(s.dir), statePath: join(s.dir, 'st.db'), stationKey: pin(s), retryBaseMs: 5 });
  t.is(summary.failed, 3);
  t.is(summary.registered, 0);
  t.deepEqual(elsewhere.log, []);
  t.true(a.log.every((l) => l.token === TOKEN));
});

test('a revoked device is never registered again: a failed PUT is not retried once a batch revokes it', async (t) => {
  const { s, stick, files, devices } = await stationWithBatches([3]);
  t.teardown(() => s.close());
  const x = devices[0]!;
  const a = await api(t);
  const tf = tokenFile(s.dir);
  const state = join(s.dir, 'st.db');
  a.faults.set(x, Array(10).fill('error503'));
  a.retryAfter = '0';
  const run1 = await sync({ files, api: a.url, tokenFile: tf, statePath: state, stationKey: pin(s), retryBaseMs: 5, tries: 2 });
  t.is(run1.failed, 1);
  revoke(s, x, 'stolen');
  const second = (await exportNext(s, stick))!;
  a.faults.delete(x);
  const run2 = await sync({ files: [...files, second], api: a.url, tokenFile: tf, statePath: state, stationKey: pin(s), retryBaseMs: 5 });
  t.is(run2.failed, 0);
  const run3 = await sync({ files: [...files, second], api: a.url, tokenFile: tf, statePath: state, stationKey: pin(s), retryBaseMs: 5 });
  t.is(run3.pending, 0);
  t.false(a.devices.has(x));
  t.false(a.log.some((l) => l.name === x && l.method === 'PUT' && l.outcome === 201), 'X never registered');
  const afterRevocation = a.log.filter((l) => l.method === 'PUT' && l.name === x && l.outcome !== 503);
  t.deepEqual(afterRevocation, []);
});

test('one batch issues X, the next revokes it, synced together: no PUT of X at all', async (t) => {
  const { s, stick, files, devices } = await stationWithBatches([2]);
  t.teardown(() => s.close());
  revoke(s, devices[0]!);
  const second = (await exportNext(s, stick))!;
  const a = await api(t);
  const summary = await sync({ files: [...files, second], api: a.url, tokenFile: tokenFile(s.dir), statePath: join(s.dir, 'st.db'), stationKey: pin(s) });
  t.is(summary.failed, 0);
  t.false(a.log.some((l) => l.method === 'PUT' && l.name === devices[0]));
  t.deepEqual([...a.devices.keys()], [devices[1]]);
});

test('one state, two APIs: the second API gets every device too', async (t) => {
  const { s, files } = await stationWithBatches([3]);
  t.teardown(() => s.close());
  const staging = await api(t);
  const production = await api(t);
  const state = join(s.dir, 'st.db');
  const tf = tokenFile(s.dir);
  await sync({ files, api: staging.url, tokenFile: tf, statePath: state, stationKey: pin(s) });
  const r = await sync({ files, api: production.url, tokenFile: tf, statePath: state, stationKey: pin(s) });
  t.is(r.registered, 3);
  t.is(production.devices.size, 3);
});

test('two stations with the same id share nothing in one state', async (t) => {
  const a1 = await stationWithBatches([2]);
  t.teardown(() => a1.s.close());
  const b = await testStation();
  t.teardown(() => b.close());
  // Station B: its own station key, and (by mistake) station A's id.
  const sameId = {
    ...b.config,
    station: { ...b.config.station, id: a1.s.config.station.id },
    token: { ...b.config.token, station_key_label: `station-key-${uuid()}` },
    ca: { ...b.config.ca, station_certificate: join(b.dir, 'station-key-b.pem') },
  };
  await stationKeyInit(sameId);
  await issue(b, uuid());
  await issue(b, uuid());
  mkdirSync(join(b.dir, 'stick'), { recursive: true });
  const bFile = (await exportBatch(sameId, { outDir: join(b.dir, 'stick') }))!.path;
  const a = await api(t);
  const state = join(a1.s.dir, 'st.db');
  const tf = tokenFile(a1.s.dir);
  t.is((await sync({ files: a1.files, api: a.url, tokenFile: tf, statePath: state, stationKey: pin(a1.s) })).registered, 2);
  const r = await sync({ files: [bFile], api: a.url, tokenFile: tf, statePath: state, stationKey: caShow(sameId).station_key.sha256! });
  t.is(r.registered, 2);
  t.is(a.devices.size, 4);
});

test('a batch number reused with other bytes is refused loudly, and nothing is sent', async (t) => {
  const a1 = await stationWithBatches([1]);
  t.teardown(() => a1.s.close());
  const a = await api(t);
  const state = join(a1.s.dir, 'st.db');
  const tf = tokenFile(a1.s.dir);
  await sync({ files: a1.files, api: a.url, tokenFile: tf, statePath: state, stationKey: pin(a1.s) });
  // The same station's batch 1 written again after its ledger lost it (a restored backup): other bytes, same number.
  const other = join(a1.s.dir, 'other-stick');
  mkdirSync(other);
  const { SqliteLedger } = await import('../src/ledger/index.js');
  const l = new SqliteLedger(a1.s.config.station.ledger, a1.s.config.station.id);
  (l as unknown as { db: { exec(sql: string): void } }).db.exec('DELETE FROM batches');
  l.close();
  await issue(a1.s, uuid());
  const again = (await exportBatch(a1.s.config, { outDir: other }))!.path;
  const before = a.log.length;
  const err = await t.throwsAsync(sync({ files: [again], api: a.url, tokenFile: tf, statePath: state, stationKey: pin(a1.s) }));
  t.regex(err!.message, /batch 1 synced earlier had other bytes/);
  t.is(a.log.length, before);
});

test('the state file is private and never holds the token, even when the API echoes it', async (t) => {
  const { s, files, devices } = await stationWithBatches([2]);
  t.teardown(() => s.close());
  const a = await api(t);
  a.faults.set(devices[0]!, ['echo400']);
  const state = join(s.dir, 'st.db');
  const r = await cli(['sync', ...files, '--api', a.url, '--token-file', tokenFile(s.dir), '--state', state, '--station-key', pin(s)]);
  t.is(r.status, 1);
  t.regex(r.stderr, /HTTP 400/);
  t.false((r.stdout + r.stderr).includes(TOKEN));
  t.is(statSync(state).mode & 0o777, 0o600);
  for (const f of [state, `${state}-wal`]) {
    try {
      t.false(readFileSync(f).includes(TOKEN), f);
    } catch {
      // no WAL left: nothing to look at
    }
  }
});

test('an existing state file others can read is made private; one of an older line-signer is refused', async (t) => {
  const { s, files } = await stationWithBatches([1]);
  t.teardown(() => s.close());
  const a = await api(t);
  const state = join(s.dir, 'open.db');
  writeFileSync(state, '', { mode: 0o644 });
  chmodSync(state, 0o644);
  await sync({ files, api: a.url, tokenFile: tokenFile(s.dir), statePath: state, stationKey: pin(s) });
  t.is(statSync(state).mode & 0o777, 0o600);
  const legacy = join(s.dir, 'legacy.db');
  const db = new Database(legacy);
  db.exec('CREATE TABLE items (station TEXT)');
  db.close();
  const err = await t.throwsAsync(sync({ files, api: a.url, tokenFile: tokenFile(s.dir), statePath: legacy, stationKey: pin(s) }));
  t.regex(err!.message, /older line-signer/);
});

test('a token file with a second line is refused without showing it; no request is made', async (t) => {
  const { s, files } = await stationWithBatches([1]);
  t.teardown(() => s.close());
  const a = await api(t);
  for (const text of [`${TOKEN}\nsecond-line\n`, `${TOKEN} trailing\n`, `${TOKEN}\u00e9\n`, '\n']) {
    const r = await cli(['sync', ...files, '--api', a.url, '--token-file', tokenFile(s.dir, text), '--state', join(s.dir, `${uuid()}.db`), '--station-key', pin(s)]);
    t.not(r.status, 0);
    t.regex(r.stderr, /token-file/);
    t.false((r.stdout + r.stderr).includes(TOKEN));
    t.false(r.stderr.includes('second-line'));
  }
  t.deepEqual(a.log, []);
});

test('a wrong token stops the run at the first 401, with a clear message', async (t) => {
  const { s, files } = await stationWithBatches([40]);
  t.teardown(() => s.close());
  const a = await api(t);
  const r = await cli(['sync', ...files, '--api', a.url, '--token-file', tokenFile(s.dir, 'wrong-token\n'), '--state', join(s.dir, 'st.db'), '--station-key', pin(s), '--concurrency', '4']);
  t.not(r.status, 0);
  t.regex(r.stderr, /the API refused the token \(HTTP 401/);
  t.true(a.log.length <= 4, `${a.log.length} requests`);
});

// Serial: it reads arrival times, which other tests of this process would blur.
test.serial('429 and 503 with Retry-After hold back every request of the run, then it completes', async (t) => {
  const { s, files } = await stationWithBatches([6]);
  t.teardown(() => s.close());
  const a = await api(t);
  a.anyFaults.push('throttle429');
  // Its own process, so that the server here sees requests when they are sent.
  const r = await cli(['sync', ...files, '--api', a.url, '--token-file', tokenFile(s.dir), '--state', join(s.dir, 'st.db'), '--station-key', pin(s), '--concurrency', '4', '--retry-base-ms', '5']);
  t.is(r.status, 0, r.stderr);
  t.is(a.devices.size, 6);
  const throttled = a.log.find((l) => l.outcome === 429)!;
  // Requests already in flight when the 429 arrived may land just after it; none is sent within the second it asked for.
  const after = a.log.filter((l) => l.at > throttled.at + 300);
  t.true(after.length > 0);
  t.true(after.every((l) => l.at >= throttled.at + 900), after.map((l) => l.at - throttled.at).join(','));
  a.anyFaults.push('error503');
  a.retryAfter = new Date(Date.now() + 60_000).toUTCString();
  // An HTTP date far away is capped.
  const { s: s2, files: f2 } = await stationWithBatches([1]);
  t.teardown(() => s2.close());
  const capped = await sync({ files: f2, api: a.url, tokenFile: tokenFile(s2.dir), statePath: join(s2.dir, 'st.db'), stationKey: pin(s2), maxRetryAfterMs: 200 });
  t.is(capped.registered, 1);
});

test('an API that throttles, answers 400, and throttles again cannot hold a run for long: the run stops once its waits add up past the budget', async (t) => {
  const { s, files } = await stationWithBatches([12]);
  t.teardown(() => s.close());
  const a = await api(t);
  for (let i = 0; i < 12; i++) a.anyFaults.push('throttle429', 'reject400');
  a.retryAfter = '3600';
  const err = await t.throwsAsync(sync({ files, api: a.url, tokenFile: tokenFile(s.dir), statePath: join(s.dir, 'st.db'), stationKey: pin(s), concurrency: 1, maxRetryAfterMs: 200, maxRunWaitMs: 1000 }));
  t.regex(err!.message, /the API kept this run waiting \d+ s in all .*stopped, nothing more sent: run sync again later, it resumes/);
  // Counted, not timed (a loaded machine is slow): 1 s of budget is 5 throttles of 200 ms, not 12.
  t.true(a.log.filter((l) => l.outcome === 429).length <= 7, `${a.log.filter((l) => l.outcome === 429).length} throttles sat through`);
  // Stalls count too: each costs its time-out, though it pushes back no Retry-After.
  const { s: s2, files: f2 } = await stationWithBatches([12]);
  t.teardown(() => s2.close());
  const b = await api(t);
  for (let i = 0; i < 12; i++) b.anyFaults.push('stall', 'reject400');
  const stalled = await t.throwsAsync(sync({ files: f2, api: b.url, tokenFile: tokenFile(s2.dir), statePath: join(s2.dir, 'st.db'), stationKey: pin(s2), concurrency: 1, timeoutMs: 300, retryBaseMs: 5, maxRunWaitMs: 1000 }));
  t.regex(stalled!.message, /kept this run waiting/);
  t.true(b.log.filter((l) => l.outcome === 'stalled').length <= 5, `${b.log.filter((l) => l.outcome === 'stalled').length} stalls sat through`);
});

test('error bodies are read up to 64 KiB: four 256 MB answers are not downloaded', async (t) => {
  const { s, files } = await stationWithBatches([1]);
  t.teardown(() => s.close());
  const a = await api(t);
  a.anyFaults.push('huge500', 'huge500', 'huge500', 'huge500');
  const summary = await sync({ files, api: a.url, tokenFile: tokenFile(s.dir), statePath: join(s.dir, 'st.db'), stationKey: pin(s), retryBaseMs: 5, tries: 4 });
  t.is(a.log.filter((l) => l.outcome === 500).length, 4);
  t.is(summary.registered, 1);
  t.true(a.hugeBytesSent < 64 * 1024 * 1024, `${a.hugeBytesSent} bytes sent`);
});

test('plain http is for loopback only; a missing or empty pin is a usage error', async (t) => {
  const { s, files } = await stationWithBatches([1]);
  t.teardown(() => s.close());
  const tf = tokenFile(s.dir);
  const state = join(s.dir, 'st.db');
  const far = await cli(['sync', ...files, '--api', 'http://device-api.example/', '--token-file', tf, '--state', state, '--station-key', pin(s)]);
  t.is(far.status, 64);
  t.regex(far.stderr, /ERROR USAGE .*plain http/);
  const none = await cli(['sync', ...files, '--api', 'https://device-api.example/', '--token-file', tf, '--state', state]);
  t.is(none.status, 64);
  t.regex(none.stderr, /ERROR USAGE .*--station-key/);
  const empty = await cli(['sync', ...files, '--api', 'https://device-api.example/', '--token-file', tf, '--state', state, '--station-key', '']);
  t.is(empty.status, 64);
  t.regex(empty.stderr, /empty pin/);
  const verifyEmpty = await cli(['verify-export', ...files, '--station-key', '']);
  t.is(verifyEmpty.status, 64);
  t.regex(verifyEmpty.stderr, /ERROR USAGE .*empty pin/);
});

test('a batch from another station key, revocations and all, sends nothing: not one DELETE', async (t) => {
  const { s, files, devices } = await stationWithBatches([2]);
  t.teardown(() => s.close());
  const a = await api(t);
  const tf = tokenFile(s.dir);
  const state = join(s.dir, 'st.db');
  await sync({ files, api: a.url, tokenFile: tf, statePath: state, stationKey: pin(s) });
  // Somebody else's station, revoking our devices.
  const evil = await testStation();
  t.teardown(() => evil.close());
  for (const d of devices) forgeRevocation(evil, d, 'gone');
  const forged = (await exportNext(evil, join(evil.dir, 'stick')))!;
  const before = a.log.length;
  const err = await t.throwsAsync(sync({ files: [forged], api: a.url, tokenFile: tf, statePath: state, stationKey: pin(s), allowGap: true }));
  t.regex(err!.message, /not the pinned one/);
  t.is(a.log.length, before);
  t.is(a.devices.size, 2);
  // The pins file form says the same.
  const pins = join(s.dir, 'pins.toml');
  writeFileSync(pins, `station_key = "${pin(s)}"\nfactory_root = "${'ab'.repeat(32)}"\n`, { mode: 0o600 });
  const rootPinned = await t.throwsAsync(sync({ files, api: a.url, tokenFile: tf, statePath: state, pinsFile: pins }));
  t.regex(rootPinned!.message, /factory root is not the pinned one/);
});

test('a batch skipped between runs is a gap: refused unless --allow-gap', async (t) => {
  const { s, files } = await stationWithBatches([1, 1, 1]);
  t.teardown(() => s.close());
  const a = await api(t);
  const tf = tokenFile(s.dir);
  const state = join(s.dir, 'st.db');
  await sync({ files: [files[0]!], api: a.url, tokenFile: tf, statePath: state, stationKey: pin(s) });
  const err = await t.throwsAsync(sync({ files: [files[2]!], api: a.url, tokenFile: tf, statePath: state, stationKey: pin(s) }));
  t.regex(err!.message, /gap: batch 2 .* never synced/);
  t.is(a.devices.size, 1);
  const allowed = await sync({ files: [files[2]!], api: a.url, tokenFile: tf, statePath: state, stationKey: pin(s), allowGap: true });
  t.is(allowed.registered, 1);
  const late = await sync({ files: [files[1]!], api: a.url, tokenFile: tf, statePath: state, stationKey: pin(s) });
  t.is(late.registered, 1);
  t.is(a.devices.size, 3);
});

test('a re-issue replaces the registration: DELETE of the old name, PUT of the new certificate under the new name', async (t) => {
  const s = await testStation();
  t.teardown(() => s.close());
  const stick = join(s.dir, 'stick');
  const x = uuid();
  const y = uuid();
  const first = await issue(s, x, { name: 'press-7' });
  const firstY = await issue(s, y);
  const b1 = (await exportNext(s, stick))!;
  const a = await api(t);
  const tf = tokenFile(s.dir);
  const state = join(s.dir, 'st.db');
  await sync({ files: [b1], api: a.url, tokenFile: tf, statePath: state, stationKey: pin(s) });
  t.is(a.devices.get('press-7')!['client.pem'], first.certificatePem, 'registered under its name, not its id');
  t.false(a.devices.has(x));
  allowReissue(s, x);
  const second = await issue(s, x, { name: 'press-7b' });
  // A new certificate for the same key, same name.
  const secondY = await issue(s, y, { key: firstY.key });
  const b2 = (await exportNext(s, stick))!;
  const dry = await cli(['sync', b1, b2, '--api', a.url, '--token-file', tf, '--state', state, '--station-key', pin(s), '--dry-run']);
  t.is(dry.status, 0, dry.stderr);
  t.regex(dry.stdout, /^would delete press-7 \(device /m);
  t.regex(dry.stdout, /^would register press-7b \(device /m);
  t.regex(dry.stdout, new RegExp(`^would delete ${y}\\n[^]*^would register ${y}$`, 'm'));
  const logBefore = a.log.length;
  const r = await sync({ files: [b1, b2], api: a.url, tokenFile: tf, statePath: state, stationKey: pin(s) });
  t.is(r.failed, 0);
  t.false(a.devices.has('press-7'));
  t.is(a.devices.get('press-7b')!['client.pem'], second.certificatePem);
  t.is(a.devices.get(y)!['client.pem'], secondY.certificatePem);
  const steps = a.log.slice(logBefore).map((l) => `${l.method} ${l.name} ${l.outcome}`);
  t.true(steps.indexOf('DELETE press-7 204') < steps.indexOf('PUT press-7b 201'));
  t.true(steps.indexOf(`DELETE ${y} 204`) < steps.indexOf(`PUT ${y} 201`));
  // Then revoked: deleted, and a further run sends nothing.
  revoke(s, x);
  const b3 = (await exportNext(s, stick))!;
  await sync({ files: [b1, b2, b3], api: a.url, tokenFile: tf, statePath: state, stationKey: pin(s) });
  t.false(a.devices.has('press-7b'));
  const quiet = a.log.length;
  t.is((await sync({ files: [b1, b2, b3], api: a.url, tokenFile: tf, statePath: state, stationKey: pin(s) })).pending, 0);
  t.is(a.log.length, quiet);
});

test('409 is done only when the API holds this certificate\'s key; another key there is a failure, not replaced', async (t) => {
  const { s, files, devices } = await stationWithBatches([1]);
  t.teardown(() => s.close());
  const a = await api(t);
  const stranger = await testStation();
  t.teardown(() => stranger.close());
  const other = await issue(stranger, devices[0]!);
  a.devices.set(devices[0]!, { 'client.pem': other.certificatePem, name: devices[0]!, uuid: 'x' });
  const r = await sync({ files, api: a.url, tokenFile: tokenFile(s.dir), statePath: join(s.dir, 'st.db'), stationKey: pin(s) });
  t.is(r.failed, 1);
  t.is(r.alreadyThere, 0);
  t.is(a.devices.get(devices[0]!)!['client.pem'], other.certificatePem);
});

test('one name, one device: the station refuses a name another device has; a revoked, never-synced device whose name the API holds with another key is not deleted', async (t) => {
  const s = await testStation();
  t.teardown(() => s.close());
  const a = await api(t);
  const q = uuid();
  await issue(s, q, { name: 'gateway-1' });
  const p = uuid();
  const err = await t.throwsAsync(issue(s, p, { name: 'gateway-1' }));
  t.regex(err!.message, /POLICY_SUBJECT name "gateway-1" is device .* already/);
  // What an older station (or another one) could have let through: the API holds the name with another device's key.
  const other = uuid();
  await issue(s, other);
  const stick = join(s.dir, 'stick-dup');
  const f1 = (await exportNext(s, stick))!;
  revoke(s, other);
  const f2 = (await exportNext(s, stick))!;
  a.devices.set(other, { 'client.pem': (await issue(s, uuid())).certificatePem, name: other, uuid: other } as never);
  const state = join(s.dir, 'dup.db');
  await sync({ files: [f1, f2], api: a.url, tokenFile: tokenFile(s.dir), statePath: state, stationKey: pin(s) }).catch(() => undefined);
  t.true(a.devices.has(other), 'a registration with another key under that name is left alone');
  t.false(a.log.some((l) => l.method === 'DELETE' && l.name === other));
});

test('the state is per API base URL: a second path on the same host is synced in full', async (t) => {
  const { s, files } = await stationWithBatches([2]);
  t.teardown(() => s.close());
  const a = await api(t);
  const state = join(s.dir, 'paths.db');
  await sync({ files, api: `${a.url}`, tokenFile: tokenFile(s.dir), statePath: state, stationKey: pin(s) });
  const before = a.log.length;
  a.devices.clear();
  await sync({ files, api: `${a.url}/`, tokenFile: tokenFile(s.dir), statePath: state, stationKey: pin(s) }).catch(() => undefined);
  t.is(a.log.length, before, 'the same base (a trailing slash aside) is the same API');
  // This stand-in serves no /other path: what matters is that both devices were tried there, not taken as done.
  const other = await sync({ files, api: `${a.url}/other`, tokenFile: tokenFile(s.dir), statePath: state, stationKey: pin(s) });
  t.is(other.pending, 2, 'another path is another API: everything is sent to it');
  t.true(a.log.length > before);
});

test('an API that fails everything in a row stops the run instead of backing off for days', async (t) => {
  const { s, files } = await stationWithBatches([6]);
  t.teardown(() => s.close());
  const dead = await new Promise<{ url: string; close: () => Promise<void> }>((resolve) => {
    const server = createServer((_req, res) => {
      res.writeHead(500);
      res.end('down');
    });
    server.listen(0, '127.0.0.1', () => resolve({ url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, close: () => new Promise((r) => server.close(() => r())) }));
  });
  t.teardown(() => dead.close());
  const t0 = Date.now();
  const err = await t.throwsAsync(sync({ files, api: dead.url, tokenFile: tokenFile(s.dir), statePath: join(s.dir, 'dead.db'), stationKey: pin(s), retryBaseMs: 5, maxRetryAfterMs: 50 }));
  t.regex(err!.message, /failed \d+ requests in a row.*run sync again later/);
  t.true(Date.now() - t0 < 30_000);
});
