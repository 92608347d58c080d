import test from 'ava';
import { spawn } from 'node:child_process';
import { chmodSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { sync } from '../src/export/index.js';
import { SqliteLedger } from '../src/ledger/index.js';
import { exportBatch } from '../src/export/index.js';
import { stationWithBatches } from './helpers/batches.js';
import { BIN, cliAsync as cli } from './helpers/cli.js';
import { deviceApi } from './helpers/device-api.js';
import { caShow } from '../src/station/index.js';
import type { TestStation } from './helpers/pki.js';

const TOKEN = 'osf-secret-token-0123456789';
const pin = (s: TestStation): string => caShow(s.config).station_key.sha256!;

function tokenFile(dir: string): string {
  const p = join(dir, 'api-token');
  writeFileSync(p, TOKEN + '\n', { mode: 0o600 });
  return p;
}

test('every device ends registered exactly once despite 500s, a stalled response, a dropped connection and a known device', async (t) => {
  const { s, files, devices } = await stationWithBatches([6, 4]);
  t.teardown(() => s.close());
  const api = await deviceApi(TOKEN);
  t.teardown(() => api.close());
  api.faults.set(devices[0]!, ['error500', 'error500']);
  api.faults.set(devices[1]!, ['stall']);
  api.faults.set(devices[2]!, ['drop']);
  api.faults.set(devices[3]!, ['error500']);
  // Registered before this state existed, with the very certificate of the batch: found there (409, then GET), not sent twice.
  const rec = readFileSync(files[0]!, 'utf8').split('\n').map((l) => (l ? JSON.parse(l) : null)).find((l) => l?.device_id === devices[4]);
  api.devices.set(devices[4]!, { 'client.pem': rec.client_pem, name: devices[4]!, uuid: 'earlier' });
  const summary = await sync({
    files,
    api: api.url,
    tokenFile: tokenFile(s.dir),
    group: 'line-3',
    statePath: join(s.dir, 'sync.db'),
    stationKey: pin(s),
    // Long enough that no answer but the stalled one times out on a loaded machine: a 409 answered
    // late was resent, found by GET, and counted as registered by this run (one CI run).
    timeoutMs: 2000,
    retryBaseMs: 20,
  });
  t.deepEqual(summary, { devices: 10, pending: 10, registered: 9, alreadyThere: 1, deleted: 0, failed: 0, upToDate: 0, dryRun: false });
  t.is(api.devices.size, 10);
  for (const d of devices) {
    const created = api.log.filter((l) => l.method === 'PUT' && l.name === d && l.outcome === 201);
    t.is(created.length, d === devices[4] ? 0 : 1, d);
  }
  const reg = api.devices.get(devices[5]!)!;
  t.is(reg.group, 'line-3');
  t.regex(reg['client.pem'], /^-----BEGIN CERTIFICATE-----/);
  t.true(api.log.some((l) => l.outcome === 'stalled'));
  t.true(api.log.some((l) => l.outcome === 'dropped'));

  // A rerun skips what is done: not one request.
  const before = api.log.length;
  const again = await sync({ files, api: api.url, tokenFile: tokenFile(s.dir), statePath: join(s.dir, 'sync.db'), stationKey: pin(s), retryBaseMs: 20 });
  t.is(again.upToDate, 10);
  t.is(again.pending, 0);
  t.is(api.log.length, before);
});

test('other 4xx are failures with the response body; a rerun retries only those; the exit code says so', async (t) => {
  const { s, files, devices } = await stationWithBatches([3]);
  t.teardown(() => s.close());
  const api = await deviceApi(TOKEN);
  t.teardown(() => api.close());
  api.faults.set(devices[1]!, ['reject400']);
  const tf = tokenFile(s.dir);
  const state = join(s.dir, 'sync.db');
  const r = await cli(['sync', ...files, '--api', api.url, '--token-file', tf, '--state', state, '--retry-base-ms', '20', '--station-key', pin(s)]);
  t.is(r.status, 1);
  t.regex(r.stderr, new RegExp(`failed: register ${devices[1]}: HTTP 400: .*client.pem is not acceptable`));
  t.regex(r.stdout, /3 devices, 3 needing a step: 2 registered, 0 already there, 0 deleted, 1 failed/);
  t.false(r.stdout.includes(TOKEN) || r.stderr.includes(TOKEN), 'the token is never printed');
  const again = await cli(['sync', ...files, '--api', api.url, '--token-file', tf, '--state', state, '--retry-base-ms', '20', '--station-key', pin(s)]);
  t.is(again.status, 0, again.stderr);
  t.regex(again.stdout, /3 devices, 1 needing a step: 1 registered, .* 2 already as the ledger says/);
  t.is(api.devices.size, 3);
});

test('sync verifies first: a changed batch syncs nothing; dry run sends nothing; the token file must be private', async (t) => {
  const { s, files } = await stationWithBatches([2]);
  t.teardown(() => s.close());
  const api = await deviceApi(TOKEN);
  t.teardown(() => api.close());
  const tf = tokenFile(s.dir);
  const changed = join(s.dir, 'changed.lsbatch');
  writeFileSync(changed, readFileSync(files[0]!, 'utf8').replace('"link":"test"', '"link":"tset"'));
  const bad = await cli(['sync', changed, '--api', api.url, '--token-file', tf, '--state', join(s.dir, 'a.db'), '--station-key', pin(s)]);
  t.not(bad.status, 0);
  t.regex(bad.stderr, /nothing synced: the batches do not verify/);
  t.is(api.log.length, 0);
  const dry = await cli(['sync', files[0]!, '--api', api.url, '--token-file', tf, '--state', join(s.dir, 'b.db'), '--dry-run', '--station-key', pin(s)]);
  t.is(dry.status, 0, dry.stderr);
  t.regex(dry.stdout, /would register/);
  t.is(dry.stdout.match(/would register/g)!.length, 2);
  t.is(api.log.length, 0);
  chmodSync(tf, 0o644);
  const open = await cli(['sync', files[0]!, '--api', api.url, '--token-file', tf, '--state', join(s.dir, 'c.db'), '--station-key', pin(s)]);
  t.regex(open.stderr, /readable by group or others/);
});

test('revocation marks delete the device', async (t) => {
  const { s, stick, files, devices } = await stationWithBatches([2]);
  t.teardown(() => s.close());
  const ledger = new SqliteLedger(s.config.station.ledger, s.config.station.id);
  ledger.revoke(devices[0]!, 'stolen');
  ledger.close();
  const second = (await exportBatch(s.config, { outDir: stick }))!.path;
  const api = await deviceApi(TOKEN);
  t.teardown(() => api.close());
  const state = join(s.dir, 'sync.db');
  const first = await sync({ files, api: api.url, tokenFile: tokenFile(s.dir), statePath: state, stationKey: pin(s), retryBaseMs: 20 });
  t.is(first.registered, 2);
  const summary = await sync({ files: [...files, second], api: api.url, tokenFile: tokenFile(s.dir), statePath: state, stationKey: pin(s), retryBaseMs: 20 });
  t.is(summary.registered, 0);
  t.is(summary.deleted, 1);
  t.false(api.devices.has(devices[0]!));
  t.true(api.devices.has(devices[1]!));
  t.true(api.log.some((l) => l.method === 'DELETE' && l.name === devices[0] && l.outcome === 204));
});

test('killing sync midway and rerunning completes without a duplicate PUT of a device already done', async (t) => {
  const { s, files, devices } = await stationWithBatches([120]);
  t.teardown(() => s.close());
  const api = await deviceApi(TOKEN);
  t.teardown(() => api.close());
  api.delayMs = 5;
  const tf = tokenFile(s.dir);
  const state = join(s.dir, 'sync.db');
  const args = [BIN, 'sync', ...files, '--api', api.url, '--token-file', tf, '--state', state, '--concurrency', '4', '--station-key', pin(s)];
  const child = spawn(process.execPath, args, { stdio: 'ignore' });
  const killed = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  api.onRequest = (n) => {
    if (n === 50) child.kill('SIGKILL');
  };
  await killed;
  api.onRequest = undefined;
  const firstRun = api.log.length;
  t.true(firstRun < 120, `killed midway (${firstRun} requests)`);
  const doneBeforeKill = new Set(api.log.filter((l) => l.outcome === 201).map((l) => l.name));
  const again = await cli(['sync', ...files, '--api', api.url, '--token-file', tf, '--state', state, '--concurrency', '4', '--station-key', pin(s)]);
  t.is(again.status, 0, again.stderr);
  t.is(api.devices.size, 120);
  for (const d of devices) t.is(api.log.filter((l) => l.name === d && l.outcome === 201).length, 1);
  // A step in flight when the run was killed is asked about (GET), never sent again: one PUT per device, in all.
  const secondPuts = api.log.slice(firstRun).filter((l) => doneBeforeKill.has(l.name) && l.method === 'PUT');
  t.deepEqual(secondPuts, []);
  for (const d of devices) t.is(api.log.filter((l) => l.name === d && l.method === 'PUT').length, 1, d);
});
