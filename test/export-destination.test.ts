/**
 * `export` onto a destination someone else prepared (a USB stick, a shared
 * folder): symlinks and FIFOs planted at the names a temporary file could
 * take are never written through nor waited on, a serving station keeps
 * answering, and a batch name its file cannot take leaves ledger and disk
 * agreeing.
 */
import test from 'ava';
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, readlinkSync, rmdirSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { basename, join } from 'node:path';
import { exportBatch, verifyBatches } from '../src/export/index.js';
import { batchFileName } from '../src/export/format.js';
import { SqliteLedger } from '../src/ledger/index.js';
import { LineSignerError } from '../src/errors.js';
import { issue, stationWithBatches } from './helpers/batches.js';
import { BIN, cli, cliAsync } from './helpers/cli.js';
import { testStation, uuid } from './helpers/pki.js';
import { waitFor } from './helpers/served.js';

/** Names a batch's temporary file could take in a process whose id is `pid`: the pid-named ones an attacker would guess. */
function tempLookingNames(batchPath: string, pid: number): string[] {
  const dir = join(batchPath, '..');
  const name = basename(batchPath);
  return [`${batchPath}.${pid}.tmp`, `${batchPath}.tmp`, join(dir, `.${name}.${pid}.tmp`), join(dir, `.${name}.tmp`)];
}

function recordedBatches(ledgerPath: string, stationId: string): number[] {
  const ledger = new SqliteLedger(ledgerPath, stationId, { readonly: true });
  try {
    return ledger.allBatches().map((b) => b.number);
  } finally {
    ledger.close();
  }
}

test('symlinks planted at every temp-looking name, and at the batch name itself, are never written through: the victim and the ledger stay whole', async (t) => {
  const { s, stick, files } = await stationWithBatches([2]);
  t.teardown(() => s.close());
  await issue(s, uuid());
  const victim = join(s.dir, 'victim.txt');
  writeFileSync(victim, 'precious\n');
  const next = join(stick, batchFileName(s.config.station.id, 2));
  const planted = [
    ...tempLookingNames(next, process.pid).map((p, i) => [p, i === 0 ? s.config.station.ledger : victim] as const),
    ...tempLookingNames(files[0]!, process.pid).map((p, i) => [p, i === 0 ? s.config.station.ledger : victim] as const),
  ];
  for (const [p, target] of planted) symlinkSync(target, p);
  const ledgerSize = statSync(s.config.station.ledger).size;

  const r = await exportBatch(s.config, { outDir: stick });
  t.is(r!.path, next);
  // Batch 1 again, its file a symlink to the victim now: the link is replaced, not followed.
  const original = readFileSync(files[0]!);
  rmSync(files[0]!);
  symlinkSync(victim, files[0]!);
  const again = await exportBatch(s.config, { outDir: stick, batch: 1 });

  t.is(readFileSync(victim, 'utf8'), 'precious\n');
  for (const [p, target] of planted) {
    t.true(lstatSync(p).isSymbolicLink(), p);
    t.is(readlinkSync(p), target);
  }
  for (const f of [next, again!.path]) t.true(lstatSync(f).isFile(), `${f} is a regular file`);
  t.deepEqual(readFileSync(again!.path), original);
  t.deepEqual((await verifyBatches([files[0]!, next])).problems, []);
  // The ledger file was not written through a link (only the station's own writes reach it, through its WAL).
  t.true(statSync(s.config.station.ledger).size >= ledgerSize);
  t.is(readFileSync(s.config.station.ledger).subarray(0, 16).toString('latin1'), 'SQLite format 3\0');
  t.is(s.ledger.issuedCount(), 3);
  t.deepEqual(recordedBatches(s.config.station.ledger, s.config.station.id), [1, 2]);
  // Nothing of ours is left behind: the only .tmp names are the planted ones.
  t.deepEqual(readdirSync(stick).filter((f) => f.endsWith('.tmp')).sort(), planted.map(([p]) => basename(p)).sort());
});

test('a FIFO planted at the pid-named temp of a CLI export is neither opened nor waited on: the command returns and writes its batch', async (t) => {
  t.timeout(60_000);
  const s = await testStation();
  await issue(s, uuid());
  await s.close(); // the CLI takes the ledger
  const stick = join(s.dir, 'stick');
  mkdirSync(stick);
  const batch = join(stick, batchFileName(s.config.station.id, 1));
  const child = spawn(process.execPath, [BIN, 'export', '--out', stick, '--config', s.configPath], { stdio: ['ignore', 'pipe', 'pipe'] });
  t.teardown(() => child.kill('SIGKILL'));
  // The name is planted while the CLI starts (its pid is known from here on, its export is a Node start-up away).
  const fifos = tempLookingNames(batch, child.pid!);
  for (const f of fifos) execFileSync('mkfifo', [f]);
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  const status = await new Promise<number | null>((resolve) => child.on('close', resolve));
  t.is(status, 0, stderr);
  t.true(lstatSync(batch).isFile());
  t.deepEqual((await verifyBatches([batch])).problems, []);
  for (const f of fifos) t.true(lstatSync(f).isFIFO(), f);
});

test.serial('a serving station exporting into a folder with FIFOs at its pid-named temps keeps answering HTTP and writes the batch', async (t) => {
  t.timeout(90_000);
  const s = await testStation({ extra: '\n[sota]\ngateway = "https://gw.example:8443"\nostree = "https://gw.example:8443/treehub"\n' });
  await issue(s, uuid());
  await s.close(); // the serve process opens the station itself
  const stick = join(s.dir, 'stick');
  mkdirSync(stick);
  const station = spawn(process.execPath, [BIN, 'serve', '--config', s.configPath, '--http', '127.0.0.1:0'], { stdio: ['ignore', 'pipe', 'pipe'] });
  t.teardown(() => station.kill('SIGKILL'));
  let out = '';
  station.stdout.on('data', (d) => (out += d));
  station.stderr.on('data', (d) => (out += d));
  await waitFor(() => out.includes('"msg":"serving"'), 15_000).catch((err: Error) => {
    throw new Error(`${err.message}: ${out}`);
  });
  const listening = out.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Record<string, unknown>).find((l) => String(l.link).startsWith('http:') && l.state === 'listening');
  const port = Number(String(listening!.detail).split(':').pop());
  const headSign = (): Promise<number> => new Promise((resolve, reject) => request({ host: '127.0.0.1', port, path: '/sign', method: 'HEAD', agent: false }, (res) => resolve(res.statusCode!)).on('error', reject).end());

  const batch = join(stick, batchFileName(s.config.station.id, 1));
  const fifos = tempLookingNames(batch, station.pid!);
  for (const f of fifos) execFileSync('mkfifo', [f]);
  // The export goes through the serving station (it owns the ledger); HTTP is asked while it runs and after.
  const exporting = cliAsync(['export', '--out', stick, '--config', s.configPath]);
  const during = headSign();
  const exported = await exporting;
  t.is(exported.status, 0, exported.stderr);
  t.regex(exported.stdout, /exported batch 1: 1 issuances/);
  t.is(await during, 200);
  t.is(await headSign(), 200);
  t.true(lstatSync(batch).isFile());
  for (const f of fifos) t.true(lstatSync(f).isFIFO(), f);
  const status = await cliAsync(['status', '--config', s.configPath]);
  t.is(status.status, 0, status.stderr);
  t.notRegex(status.stdout, /not serving/);
});

test('a folder at the batch name is refused before the batch is recorded: EXPORT, no temp left, and the next export writes that batch', async (t) => {
  const s = await testStation();
  await issue(s, uuid());
  await s.close();
  const stick = join(s.dir, 'stick');
  const blocker = join(stick, batchFileName(s.config.station.id, 1));
  mkdirSync(blocker, { recursive: true });
  const refused = cli(['export', '--out', stick, '--config', s.configPath]);
  t.is(refused.status, 1, refused.stderr);
  t.regex(refused.stderr, /^ERROR EXPORT .*000001\.lsbatch is a folder \(EISDIR\).*nothing exported/m);
  t.deepEqual(readdirSync(stick), [basename(blocker)]);
  t.deepEqual(recordedBatches(s.config.station.ledger, s.config.station.id), []);
  rmdirSync(blocker);
  const ok = cli(['export', '--out', stick, '--config', s.configPath]);
  t.is(ok.status, 0, ok.stderr);
  t.regex(ok.stdout, /exported batch 1: 1 issuances/);
  t.true(lstatSync(blocker).isFile());
  t.deepEqual(recordedBatches(s.config.station.ledger, s.config.station.id), [1]);
});

test('a rename failing after the batch was recorded removes the temp and says, with its code, that export --batch N writes it again; that then agrees with the ledger', async (t) => {
  const s = await testStation();
  t.teardown(() => s.close());
  await issue(s, uuid());
  const stick = join(s.dir, 'stick');
  mkdirSync(stick);
  const path = join(stick, batchFileName(s.config.station.id, 1));
  // The folder appears after the name was checked, as the batch is recorded (a racing stick, a second writer).
  const err = await t.throwsAsync(exportBatch(s.config, { outDir: stick, beforeRecord: () => mkdirSync(path) }));
  t.true(err instanceof LineSignerError);
  t.is((err as LineSignerError).code, 'EXPORT');
  t.regex(err!.message, /EISDIR.*batch 1 is recorded in the ledger but its file is not there: `line-signer export --batch 1 --out .*stick` writes it again/);
  t.deepEqual(readdirSync(stick), [basename(path)]);
  rmdirSync(path);
  const again = await exportBatch(s.config, { outDir: stick, batch: 1 });
  const ledger = new SqliteLedger(s.config.station.ledger, s.config.station.id, { readonly: true });
  t.is(again!.sha256, ledger.batch(1)!.fileSha256);
  ledger.close();
  t.true(existsSync(path));
  t.deepEqual((await verifyBatches([path])).problems, []);
  t.is(await exportBatch(s.config, { outDir: stick }), null);
});
