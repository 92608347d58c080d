/**
 * A name freed by a re-issue and taken by another device: a DELETE of the
 * old registration whose answer is lost (or a 500, or a kill) is sent again
 * only while the name still holds the removed device's key. Then what
 * `--state` may be (only a state file, nothing changed before it is known
 * to be one) and a gap inside the given batches.
 */
import test from 'ava';
import { execFileSync } from 'node:child_process';
import { chmodSync, copyFileSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import Database from 'better-sqlite3';
import { basename, join } from 'node:path';
import { sync } from '../src/export/index.js';
import { caShow } from '../src/station/index.js';
import { allowReissue, exportNext, issue, stationWithBatches } from './helpers/batches.js';
import { cliAsync as cli } from './helpers/cli.js';
import { deviceApi, type DeviceApi, type Fault } from './helpers/device-api.js';
import { testStation, uuid, type TestStation } from './helpers/pki.js';

const TOKEN = 'osf-secret-token-0123456789';
const pin = (s: TestStation): string => caShow(s.config).station_key.sha256!;

function tokenFile(dir: string): string {
  const p = join(mkdtempSync(join(dir, 'tok-')), 'api-token');
  writeFileSync(p, TOKEN + '\n', { mode: 0o600 });
  return p;
}

async function api(t: { teardown(f: () => Promise<void>): void }): Promise<DeviceApi> {
  const a = await deviceApi(TOKEN);
  t.teardown(() => a.close());
  return a;
}

/**
 * The issue's setup: batches 1-3 synced (the API holds dev2 for device A);
 * then A re-issued with a new key as dev2b and a new device B signed as
 * dev2, in batch 4.
 */
async function renamedAndTaken(t: { teardown(f: () => unknown): void }) {
  const s = await testStation();
  t.teardown(() => s.close());
  const stick = join(s.dir, 'stick');
  const a = uuid();
  await issue(s, a, { name: 'dev2' });
  const files = [(await exportNext(s, stick))!];
  for (let i = 0; i < 2; i++) {
    await issue(s, uuid());
    files.push((await exportNext(s, stick))!);
  }
  const device = await api(t);
  const tf = tokenFile(s.dir);
  const state = join(s.dir, 'st.db');
  const options = { api: device.url, tokenFile: tf, statePath: state, stationKey: pin(s), retryBaseMs: 5, timeoutMs: 2000 };
  const first = await sync({ ...options, files });
  if (first.registered !== 3 || !device.devices.has('dev2')) throw new Error('batches 1-3 did not sync');
  allowReissue(s, a);
  const a2 = await issue(s, a, { name: 'dev2b' });
  // B comes before A in the run's order (by device id): B's step would go first if the order were the run's.
  let b = uuid();
  while (b > a) b = uuid();
  const bIssued = await issue(s, b, { name: 'dev2' });
  files.push((await exportNext(s, stick))!);
  return { s, device, options, files, a, a2, b, bIssued, state, tf };
}

/** B takes dev2 the moment the DELETE of A's dev2 has taken effect (as B's own PUT can). */
function bTakesTheNameRightAfterTheDelete(device: DeviceApi, bPem: string): void {
  let once = false;
  device.onRequest = (_n, e) => {
    if (once || e.method !== 'DELETE' || e.name !== 'dev2') return;
    once = true;
    // The server applies this DELETE synchronously after this call: B's registration lands right after it.
    setImmediate(() => device.devices.set('dev2', { 'client.pem': bPem, name: 'dev2', uuid: 'b-registered-meanwhile' }));
  };
}

function assertApiAsTheLedgerSays(t: import('ava').ExecutionContext, device: DeviceApi, a2Pem: string, bPem: string): void {
  t.is(device.devices.get('dev2')?.['client.pem'], bPem, 'B holds dev2 with its certificate');
  t.is(device.devices.get('dev2b')?.['client.pem'], a2Pem, 'A holds dev2b with its new certificate');
  t.is(device.log.filter((l) => l.method === 'DELETE' && l.name === 'dev2').length, 1, 'A\'s dev2 deleted once, B\'s never');
}

for (const [fault, label] of [
  ['applyThenDrop', 'its answer lost'],
  ['applyThen500', 'answered 500'],
] as Array<[Fault, string]>) {
  test(`a DELETE of a renamed device's old name that took effect, ${label}, is not sent again once another device holds the name`, async (t) => {
    const { device, options, files, a2, bIssued } = await renamedAndTaken(t);
    device.faults.set('DELETE dev2', [fault]);
    bTakesTheNameRightAfterTheDelete(device, bIssued.certificatePem);
    const steps: string[] = [];
    const r = await sync({ ...options, files, onStep: (x) => steps.push(`${x.action} ${x.name} ${x.outcome} ${x.detail}`) });
    t.is(r.failed, 0, steps.join('\n'));
    assertApiAsTheLedgerSays(t, device, a2.certificatePem, bIssued.certificatePem);
    // A rerun: nothing to do, not one request, and the API still as the ledger says.
    const quiet = device.log.length;
    const again = await sync({ ...options, files });
    t.is(again.pending, 0);
    t.is(device.log.length, quiet);
    assertApiAsTheLedgerSays(t, device, a2.certificatePem, bIssued.certificatePem);
  });
}

test('the issue\'s run, as the CLI makes it: B stays registered and a rerun finds everything as the ledger says', async (t) => {
  const { device, options, files, a2, bIssued, state, tf } = await renamedAndTaken(t);
  device.faults.set('DELETE dev2', ['applyThenDrop']);
  const args = ['sync', ...files, '--api', device.url, '--token-file', tf, '--state', state, '--station-key', options.stationKey, '--timeout', '2000', '--retry-base-ms', '5', '--concurrency', '1'];
  const r = await cli(args);
  t.is(r.status, 0, r.stderr);
  assertApiAsTheLedgerSays(t, device, a2.certificatePem, bIssued.certificatePem);
  const again = await cli(args);
  t.is(again.status, 0, again.stderr);
  t.regex(again.stdout, /4 devices, 0 needing a step: .* 4 already as the ledger says/);
  t.is(device.devices.size, 4);
});

test('a run killed with a DELETE in flight: the next run asks, sees another device\'s key under the name and does not delete it', async (t) => {
  const { device, options, files, a2, bIssued } = await renamedAndTaken(t);
  const killer = new AbortController();
  bTakesTheNameRightAfterTheDelete(device, bIssued.certificatePem);
  const hook = device.onRequest!;
  device.onRequest = (n, e) => {
    hook(n, e);
    if (e.method === 'DELETE' && e.name === 'dev2') killer.abort();
  };
  const killed = await t.throwsAsync(sync({ ...options, files, signal: killer.signal }));
  t.regex(killed!.message, /stopped/);
  device.onRequest = undefined;
  // The kill ends the run before the server's turn is over: B's registration lands a turn later.
  await new Promise((r) => setImmediate(r));
  t.is(device.devices.get('dev2')?.['client.pem'], bIssued.certificatePem);
  const r = await sync({ ...options, files });
  t.is(r.failed, 0);
  assertApiAsTheLedgerSays(t, device, a2.certificatePem, bIssued.certificatePem);
  const quiet = device.log.length;
  t.is((await sync({ ...options, files })).pending, 0);
  t.is(device.log.length, quiet);
});

test('a name held with another key when the old registration is to be deleted: that registration is left alone, the re-issue completes', async (t) => {
  const { device, options, files, a2, bIssued } = await renamedAndTaken(t);
  // Before this run: A's dev2 gone (by hand), B registered there (by another sync).
  device.devices.set('dev2', { 'client.pem': bIssued.certificatePem, name: 'dev2', uuid: 'b' });
  const r = await sync({ ...options, files });
  t.is(r.failed, 0);
  t.is(device.devices.get('dev2')?.['client.pem'], bIssued.certificatePem);
  t.is(device.devices.get('dev2b')?.['client.pem'], a2.certificatePem);
  t.false(device.log.some((l) => l.method === 'DELETE' && l.name === 'dev2'), 'not one DELETE of B\'s registration');
});

test('--state is only ever a state file: a folder, a batch, a symlink or a FIFO is refused with SYNC and left as it was; nothing is created beside it', async (t) => {
  const { s, files } = await stationWithBatches([1]);
  t.teardown(() => s.close());
  const device = await api(t);
  const tf = tokenFile(s.dir);
  const folder = join(s.dir, 'a-folder');
  mkdirSync(folder, { mode: 0o755 });
  const batchCopy = join(s.dir, 'copy.lsbatch');
  writeFileSync(batchCopy, readFileSync(files[0]!));
  const target = join(s.dir, 'target');
  writeFileSync(target, '', { mode: 0o644 });
  const link = join(s.dir, 'link.db');
  symlinkSync(target, link);
  const fifo = join(s.dir, 'fifo.db');
  execFileSync('mkfifo', [fifo]);
  for (const [path, why] of [
    [folder, /a folder, not a state file/],
    [batchCopy, /not a state file \(not SQLite/],
    [link, /a symbolic link, not a state file/],
    [fifo, /a FIFO, not a state file/],
  ] as Array<[string, RegExp]>) {
    const modeBefore = lstatSync(path).mode;
    const targetMode = statSync(target).mode;
    const bytes = statSync(path).isFile() ? readFileSync(path) : null;
    for (const dry of [[], ['--dry-run']]) {
      const r = await cli(['sync', ...files, '--api', device.url, '--token-file', tf, '--station-key', pin(s), '--state', path, ...dry]);
      t.is(r.status, 1, `${path} ${dry.join('')}`);
      t.regex(r.stderr, /^ERROR SYNC --state /m);
      t.regex(r.stderr, why);
      t.is(lstatSync(path).mode, modeBefore, `${path}: mode unchanged`);
      t.is(statSync(target).mode, targetMode, 'a symlink\'s target is never chmodded');
      if (bytes) t.deepEqual(readFileSync(path), bytes);
      t.false(readdirSync(s.dir).some((f) => f === `${basename(path)}-wal` || f === `${basename(path)}-shm`), 'no -wal or -shm made beside it');
    }
  }
  t.deepEqual(device.log, []);
});

test('--dry-run creates no state file and changes an existing one in nothing, its mode included', async (t) => {
  const { s, files } = await stationWithBatches([1, 1]);
  t.teardown(() => s.close());
  const device = await api(t);
  const tf = tokenFile(s.dir);
  const missing = join(s.dir, 'never.db');
  const dry = await cli(['sync', ...files, '--api', device.url, '--token-file', tf, '--station-key', pin(s), '--state', missing, '--dry-run']);
  t.is(dry.status, 0, dry.stderr);
  t.is(dry.stdout.match(/would register/g)?.length, 2);
  t.false(readdirSync(s.dir).some((f) => f.startsWith('never.db')), 'nothing created');

  // A state that synced batch 1, made readable by others (as a copy could be).
  const state = join(s.dir, 'st.db');
  await sync({ files: [files[0]!], api: device.url, tokenFile: tf, statePath: state, stationKey: pin(s) });
  chmodSync(state, 0o644);
  const before = readFileSync(state);
  const listing = readdirSync(s.dir).sort();
  const plan = await cli(['sync', ...files, '--api', device.url, '--token-file', tf, '--station-key', pin(s), '--state', state, '--dry-run']);
  t.is(plan.status, 0, plan.stderr);
  // Planned from the state: batch 1's device is done, batch 2's would be registered.
  t.regex(plan.stdout, /2 devices, 1 needing a step: .* 1 already as the ledger says/);
  t.is(statSync(state).mode & 0o777, 0o644, 'a dry run chmods nothing');
  t.deepEqual(readFileSync(state), before);
  t.deepEqual(readdirSync(s.dir).sort(), listing);
  t.is(device.log.filter((l) => l.method === 'PUT').length, 1);
  // A state a killed run left with its -wal and without its -shm: a dry run reads both and makes neither.
  const killed = join(s.dir, 'killed');
  mkdirSync(killed);
  const writer = new Database(state);
  writer.pragma('wal_autocheckpoint = 0');
  writer.exec("UPDATE batches SET synced_at = synced_at || ''");
  copyFileSync(state, join(killed, 'st.db'));
  copyFileSync(`${state}-wal`, join(killed, 'st.db-wal'));
  writer.close();
  const fromWal = await cli(['sync', ...files, '--api', device.url, '--token-file', tf, '--station-key', pin(s), '--state', join(killed, 'st.db'), '--dry-run']);
  t.is(fromWal.status, 0, fromWal.stderr);
  t.regex(fromWal.stdout, /1 already as the ledger says/);
  t.deepEqual(readdirSync(killed).sort(), ['st.db', 'st.db-wal'], 'no -shm made');
  // A real run makes it private.
  const real = await cli(['sync', ...files, '--api', device.url, '--token-file', tf, '--station-key', pin(s), '--state', state]);
  t.is(real.status, 0, real.stderr);
  t.is(statSync(state).mode & 0o777, 0o600);
});

test('a gap inside the given batches: refused as a gap, saying how to go on; with --allow-gap synced as batch 3 alone would be', async (t) => {
  const { s, files } = await stationWithBatches([1, 1, 1]);
  t.teardown(() => s.close());
  const device = await api(t);
  const tf = tokenFile(s.dir);
  const state = join(s.dir, 'st.db');
  const given = [files[0]!, files[2]!];
  const r = await cli(['sync', ...given, '--api', device.url, '--token-file', tf, '--station-key', pin(s), '--state', state]);
  t.is(r.status, 1);
  t.regex(r.stderr, /^ERROR SYNC nothing synced: gap inside the given batches: batch 2 missing between 1 and 3 \(give the missing batch too, or --allow-gap/m);
  t.notRegex(r.stderr, /do not verify/);
  t.deepEqual(device.log, []);
  const allowed = await cli(['sync', ...given, '--api', device.url, '--token-file', tf, '--station-key', pin(s), '--state', state, '--allow-gap']);
  t.is(allowed.status, 0, allowed.stderr);
  t.regex(allowed.stdout, /2 registered/);
  // The missing batch, late: it follows batch 1 and is followed by batch 3.
  const late = await sync({ files: [files[1]!], api: device.url, tokenFile: tf, statePath: state, stationKey: pin(s) });
  t.is(late.registered, 1);
  t.is(device.devices.size, 3);
  // A changed batch beside the gap is still refused as not verifying.
  const changed = join(s.dir, 'changed.lsbatch');
  writeFileSync(changed, readFileSync(files[2]!, 'utf8').replace('"link":"test"', '"link":"tset"'));
  const bad = await cli(['sync', files[0]!, changed, '--api', device.url, '--token-file', tf, '--station-key', pin(s), '--state', join(s.dir, 'other.db'), '--allow-gap']);
  t.is(bad.status, 1);
  t.regex(bad.stderr, /do not verify against the pinned key/);
});
