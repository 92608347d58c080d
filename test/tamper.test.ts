/**
 * What someone with the ledger file (and not the token) might try, and what
 * catches it: a changed ledger id, an older copy written to by an operator
 * command, rows added after a clean stop, a second name for the file, the
 * batches table, a swapped station certificate.
 */
import test from 'ava';
import { copyFileSync, existsSync, linkSync, mkdirSync, readdirSync, renameSync, rmSync, statSync, symlinkSync, writeFileSync, readFileSync } from 'node:fs';
import { execFileSync, spawnSync } from 'node:child_process';
import { generateKeyPairSync, sign } from 'node:crypto';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { loadConfig } from '../src/config/index.js';
import { checkpointStatement, eventHash, SqliteLedger, type LedgerEvent } from '../src/ledger/index.js';
import { caCsr, caInit, openStation, verifyLedger } from '../src/station/index.js';
import { makeDeviceCsr } from '../src/x509/index.js';
import { BIN, cli, cliAsync } from './helpers/cli.js';
import { FACTORY, makeOpensslRoot, reserveStationTokens, signCaCsrWithOpenssl, testPki, testStation, uuid } from './helpers/pki.js';
import { revoke as revokeDevice, stationWithBatches } from './helpers/batches.js';
import { batchFileName, exportBatch } from '../src/export/index.js';

reserveStationTokens(60);

const csr = (): Uint8Array => makeDeviceCsr({ deviceId: uuid(), factory: FACTORY, production: true }).der;

async function stopped(n: number): Promise<{ configPath: string; dir: string; ledger: string; stick: string }> {
  const s = await testStation();
  for (let i = 0; i < n; i++) await s.station.handle({ csr: csr(), link: 't' });
  await s.close();
  mkdirSync(join(s.dir, 'stick'), { recursive: true });
  return { configPath: s.configPath, dir: s.dir, ledger: s.config.station.ledger, stick: join(s.dir, 'stick') };
}

function sql(ledger: string, text: string): void {
  const db = new Database(ledger);
  try {
    db.exec(text);
  } finally {
    db.close();
  }
}

/** A correctly hashed event appended as a forger with the file (and no token) would: `kind` for `deviceId` by "ana". Its seq and time. */
function appendForgedEvent(db: Database.Database, kind: string, deviceId: string): { seq: number; at: string } {
  const last = db.prepare('SELECT * FROM events ORDER BY seq DESC LIMIT 1').get() as Record<string, unknown>;
  const e = { v: 2, seq: (last.seq as number) + 1, at: new Date().toISOString(), kind, code: null, message: 'forged', csrSha256: null, deviceId, link: null, stationId: last.station_id as string, count: 1, operator: 'ana' };
  db.prepare('INSERT INTO events (v, seq, at, kind, code, message, csr_sha256, device_id, link, station_id, count, operator, entry_hash) VALUES (2, ?, ?, ?, NULL, ?, NULL, ?, NULL, ?, 1, ?, ?)').run(
    e.seq, e.at, e.kind, e.message, deviceId, e.stationId, e.operator, eventHash(last.entry_hash as string, e as unknown as LedgerEvent),
  );
  return { seq: e.seq, at: e.at };
}

test('a [station] ledger naming a file that is not there, on a station whose token vouches for a ledger: serve, sign, export and operator commands refuse and leave nothing at the path; accept --forget-newer starts over there', async (t) => {
  const s = await stopped(3);
  const typo = join(s.dir, 'typo');
  const elsewhere = join(typo, 'ledgr.db');
  mkdirSync(typo);
  const configPath = join(s.dir, 'station-typo.toml');
  writeFileSync(configPath, readFileSync(s.configPath, 'utf8').replace(/^ledger = .*$/m, `ledger = "${elsewhere}"`));
  const why = String.raw`no ledger at .*ledgr\.db, but the token's newest checkpoint .* vouches for ledger [0-9a-f]{32} of station .*, up to issuance seq 3: \[station\] ledger names the wrong file, or that ledger was lost\. Point \[station\] ledger at it, or restore it from a backup there .*only to start over without its records, \`line-signer ledger accept --forget-newer --reason R\` makes a new, empty ledger there$`;
  const serve = cli(['serve', '--config', configPath, '--spool', s.stick, '--json']);
  t.not(serve.status, 0);
  t.regex(serve.stderr, new RegExp(`^ERROR LEDGER not serving: ${why}`, 'm'));
  const csrFile = join(s.dir, 'one.csr');
  writeFileSync(csrFile, csr());
  const sign = cli(['sign', csrFile, '--config', configPath]);
  t.not(sign.status, 0);
  t.regex(sign.stderr, new RegExp(`^ERROR LEDGER not signed: ${why}`, 'm'));
  const exp = cli(['export', '--config', configPath, '--out', join(s.dir, 'out')]);
  t.not(exp.status, 0);
  t.regex(exp.stderr, new RegExp(`^ERROR LEDGER nothing exported: ${why}`, 'm'));
  const order = cli(['order', 'open', 'WO-1', '--quantity', '1', '--config', configPath]);
  t.not(order.status, 0);
  t.regex(order.stderr, new RegExp(`^ERROR LEDGER nothing written: ${why}`, 'm'));
  const accept = cli(['ledger', 'accept', '--config', configPath, '--reason', 'mistyped', '--operator', 'ana']);
  t.not(accept.status, 0);
  t.regex(accept.stderr, /^ERROR LEDGER nothing to accept: no file at .*ledgr\.db \(the path \[station\] ledger names\); put the ledger's copy there first$/m);
  // Reading commands say so too, and make nothing either.
  const verify = cli(['ledger', 'verify', '--config', configPath]);
  t.not(verify.status, 0);
  t.regex(verify.stderr, new RegExp(`^ERROR LEDGER ${why}`, 'm'));
  const log = cli(['log', '--config', configPath]);
  t.not(log.status, 0);
  t.regex(log.stderr, /^ERROR LEDGER no ledger at .*ledgr\.db: a new station makes it at its first serve or sign; if this station has issued, \[station\] ledger names the wrong file, or the file was moved or deleted$/m);
  const status = cli(['status', '--config', configPath]);
  t.regex(status.stdout, /WARNING NO LEDGER at .*ledgr\.db/);
  // Nothing was made at the mistyped path: no empty ledger, no lock or owner file.
  t.deepEqual(readdirSync(typo), []);
  // The station's own ledger is untouched and still serves.
  const v = cli(['ledger', 'verify', '--config', s.configPath]);
  t.is(v.status, 0, v.stderr);
  // Not while a station serves the real one: the token's lease names it; still nothing made at the path.
  const live = await openStation(loadConfig(s.configPath));
  const busy = await cliAsync(['ledger', 'accept', '--forget-newer', '--config', configPath, '--reason', 'mistyped', '--operator', 'ana']);
  await live.close();
  t.not(busy.status, 0);
  t.regex(busy.stderr, /^ERROR LEDGER_BUSY nothing written: /m);
  t.deepEqual(readdirSync(typo), []);
  // Starting over at the new path is an operator's recorded choice, and then the station signs there.
  const over = cli(['ledger', 'accept', '--forget-newer', '--config', configPath, '--reason', 'the old ledger was lost with its disk', '--operator', 'ana']);
  t.is(over.status, 0, over.stderr);
  t.regex(over.stdout, /^WARNING forgotten, as --forget-newer asked: .*all 3 issuances/m);
  t.true(existsSync(elsewhere));
  const signed = cli(['sign', csrFile, '--config', configPath]);
  t.is(signed.status, 0, signed.stderr);
  const trail = cli(['log', '--config', configPath, '--json']).stdout.trim().split('\n').map((l) => JSON.parse(l) as { kind: string; operator: string });
  t.true(trail.some((r) => r.kind === 'ledger_accept' && r.operator === 'ana'));
});

test('a ledger whose id was changed, rows and checkpoints deleted, is caught; serve refuses it until an operator accepts it', async (t) => {
  const s = await stopped(6);
  sql(s.ledger, "DELETE FROM issuances WHERE seq > 3; DELETE FROM checkpoints; UPDATE settings SET value = '00000000000000000000000000000001' WHERE key = 'ledger_id'");
  const v = cli(['ledger', 'verify', '--config', s.configPath]);
  t.is(v.status, 1);
  t.regex(v.stderr, /is not the ledger the token last checkpointed for station/);
  const serve = cli(['serve', '--config', s.configPath, '--spool', s.stick, '--json']);
  t.not(serve.status, 0);
  t.regex(serve.stderr, /ERROR LEDGER not serving: .*ledger accept/);
  const order = cli(['order', 'open', 'WO-1', '--quantity', '1', '--config', s.configPath]);
  t.not(order.status, 0);
  t.regex(order.stderr, /ERROR LEDGER nothing written/);
  // The token vouched for another ledger of 6 issuances: accepting this file leaves it behind, so it takes --forget-newer.
  const refused = cli(['ledger', 'accept', '--reason', 'restored from the offsite copy after a disk failure', '--config', s.configPath, '--operator', 'ana']);
  t.not(refused.status, 0);
  t.regex(refused.stderr, /ERROR LEDGER nothing written: the token's newest checkpoint .* this file is ledger 00000000000000000000000000000001: all 6 issuances and \d+ events of the other are left behind.*--forget-newer/);
  const accept = cli(['ledger', 'accept', '--forget-newer', '--reason', 'restored from the offsite copy after a disk failure', '--config', s.configPath, '--operator', 'ana']);
  t.is(accept.status, 0, accept.stderr);
  t.regex(accept.stdout, /^WARNING forgotten, as --forget-newer asked: .*all 6 issuances/m);
  const after = cli(['ledger', 'verify', '--config', s.configPath]);
  t.is(after.status, 0, after.stderr);
  const log = cli(['log', '--config', s.configPath, '--json']).stdout.trim().split('\n').map((l) => JSON.parse(l) as { kind: string; operator: string });
  t.true(log.some((r) => r.kind === 'ledger_accept' && r.operator === 'ana'));
});

test('an older backup put back: ledger accept names the issuances and events it would forget, and takes them only with --forget-newer, recorded', async (t) => {
  const s = await stopped(2);
  const backup = join(s.dir, 'backup.db');
  const b = cli(['ledger', 'backup', backup, '--config', s.configPath]);
  t.is(b.status, 0, b.stderr);
  const later = await openStation(loadConfig(s.configPath));
  for (let i = 0; i < 3; i++) t.true((await later.station.handle({ csr: csr(), link: 't' })).ok);
  await later.close();
  const newerCopy = join(s.dir, 'newer.db');
  t.is(cli(['ledger', 'backup', newerCopy, '--config', s.configPath]).status, 0);
  const newer = new SqliteLedger(s.ledger, loadConfig(s.configPath).station.id, { readonly: true });
  const lost = newer.heads().issuanceSeq;
  newer.close();
  for (const f of ['', '-wal', '-shm']) rmSync(`${s.ledger}${f}`, { force: true });
  const none = cli(['ledger', 'accept', '--reason', 'not copied yet', '--config', s.configPath, '--operator', 'ana']);
  t.not(none.status, 0);
  t.regex(none.stderr, /ERROR LEDGER nothing to accept: no file at /);
  t.false(existsSync(s.ledger), 'a refused accept of a missing file leaves no empty ledger behind');
  // What a failed copy or a wrong file leaves there is refused as it is, --forget-newer or not, and left unchanged.
  const notes = new Database(join(s.dir, 'notes.db'));
  notes.exec('CREATE TABLE notes (a)');
  notes.close();
  const wrong: Array<[string, () => void, RegExp]> = [
    ['an empty file', () => writeFileSync(s.ledger, ''), /is empty/],
    ['another SQLite file', () => copyFileSync(join(s.dir, 'notes.db'), s.ledger), /is an SQLite file, but not a line-signer ledger/],
    ['a folder', () => mkdirSync(s.ledger), /is not a file/],
    ['tables of the ledger\'s names, not its shape', () => {
      const db = new Database(s.ledger);
      db.exec('CREATE TABLE issuances (x); CREATE TABLE events (x); CREATE TABLE settings (x); PRAGMA user_version = 6');
      db.close();
    }, /is not a line-signer ledger/],
    // A crashed station's journal left beside a copied backup: SQLite once played it into the copy.
    ['a backup with another file\'s -wal beside it', () => {
      copyFileSync(backup, s.ledger);
      writeFileSync(`${s.ledger}-wal`, 'not this file\'s');
    }, /-wal is beside it: SQLite would play it into the file/],
  ];
  for (const [what, put, why] of wrong) {
    put();
    const before = statSync(s.ledger).isFile() ? readFileSync(s.ledger) : null;
    const r = cli(['ledger', 'accept', '--forget-newer', '--reason', 'wrong file', '--config', s.configPath, '--operator', 'ana']);
    t.not(r.status, 0, what);
    t.regex(r.stderr, new RegExp(`ERROR LEDGER (nothing to accept: )?.*${why.source}`), what);
    if (before) t.deepEqual(readFileSync(s.ledger), before, `${what}: left as it was`);
    for (const f of ['', '-wal', '-shm', '-journal']) rmSync(`${s.ledger}${f}`, { recursive: true, force: true });
  }
  copyFileSync(backup, s.ledger);
  const kept = new SqliteLedger(s.ledger, loadConfig(s.configPath).station.id, { readonly: true });
  const at = kept.heads().issuanceSeq;
  kept.close();
  const plain = cli(['ledger', 'accept', '--reason', 'the disk died', '--config', s.configPath, '--operator', 'ana']);
  t.not(plain.status, 0);
  t.regex(plain.stderr, new RegExp(`nothing written: .*this file ends at issuance seq ${at} and event seq \\d+: ${lost - at} issuances and \\d+ events written after it are not in it\\. What they recorded \\(revocations, re-issue grants used, orders' counts\\) would be forgotten`));
  const forced = cli(['ledger', 'accept', '--forget-newer', '--reason', 'the disk died', '--config', s.configPath, '--operator', 'ana']);
  t.is(forced.status, 0, forced.stderr);
  const log = cli(['log', '--config', s.configPath, '--json']).stdout.trim().split('\n').map((l) => JSON.parse(l) as { kind: string; message: string });
  t.regex(log.find((r) => r.kind === 'ledger_accept')!.message, new RegExp(`forgotten \\(--forget-newer\\): .*${lost - at} issuances`));
  t.is(cli(['ledger', 'verify', '--config', s.configPath]).status, 0);
  // Written to after the accept, this branch now has a row at seq at+1 that the newer copy has too,
  // with another certificate: putting the newer copy back would drop that row, though its seqs are ahead.
  const branch = await openStation(loadConfig(s.configPath));
  t.true((await branch.station.handle({ csr: csr(), link: 't' })).ok);
  await branch.close();
  for (const f of ['', '-wal', '-shm']) rmSync(`${s.ledger}${f}`, { force: true });
  copyFileSync(newerCopy, s.ledger);
  const fork = cli(['ledger', 'accept', '--reason', 'the newer disk', '--config', s.configPath, '--operator', 'ana']);
  t.not(fork.status, 0, 'another branch is refused without --forget-newer');
  t.regex(fork.stderr, /nothing written: .*this file's (issuance|event) seq \d+ differs from it: the file is another branch of the ledger/);
});

test('an older copy put back: operator commands and export write nothing to it', async (t) => {
  const s = await stopped(2);
  const old = join(s.dir, 'old.db');
  copyFileSync(s.ledger, old);
  const open = await openStation(loadConfig(s.configPath));
  await open.station.handle({ csr: csr(), link: 't' });
  await open.close();
  copyFileSync(old, s.ledger);
  for (const args of [['order', 'open', 'WO-2', '--quantity', '3'], ['export', '--out', s.stick], ['clock', 'confirm', '--reason', 'x']]) {
    const r = cli([...args, '--config', s.configPath]);
    t.not(r.status, 0, args.join(' '));
    t.regex(r.stderr, /ERROR LEDGER nothing written: .*not in this ledger/, args.join(' '));
  }
  t.is(cli(['ledger', 'verify', '--config', s.configPath]).status, 1, 'still caught: nothing laundered it');
});

test('a start killed between its first rows and their checkpoint comes back as after any crash: the next start serves, verify is intact', async (t) => {
  const s = await stopped(2);
  const before = new SqliteLedger(s.ledger, loadConfig(s.configPath).station.id, { readonly: true });
  const eventsBefore = before.heads().eventSeq;
  before.close();
  const died = spawnSync(process.execPath, [join(import.meta.dirname, 'helpers', 'die-starting.js'), s.configPath], { encoding: 'utf8' });
  t.is(died.signal, 'SIGKILL', died.stderr);
  const db = new Database(s.ledger, { readonly: true });
  const kinds = (db.prepare('SELECT kind FROM events WHERE seq > ? ORDER BY seq').all(eventsBefore) as Array<{ kind: string }>).map((r) => r.kind);
  db.close();
  t.true(kinds.includes('start'), `the start row is in the file: ${kinds.join(', ')}`);
  const again = await openStation(loadConfig(s.configPath), { operator: 'next-start' });
  const issued = await again.station.handle({ csr: csr(), link: 't' });
  t.true(issued.ok);
  await again.close();
  const v = cli(['ledger', 'verify', '--config', s.configPath]);
  t.is(v.status, 0, v.stderr);
});

test('[station] id changed under a ledger: serve, operator commands and ledger accept name both ids and write nothing; the old id still serves', async (t) => {
  const s = await stopped(1);
  const id = loadConfig(s.configPath).station.id;
  const renamed = join(s.dir, 'renamed.toml');
  writeFileSync(renamed, readFileSync(s.configPath, 'utf8').replace(`id = "${id}"`, 'id = "line-9-z"'));
  const heads = (): string => {
    const l = new SqliteLedger(s.ledger, id, { readonly: true });
    const h = JSON.stringify(l.heads());
    l.close();
    return h;
  };
  const before = heads();
  const why = new RegExp(`is station "${id}"'s ledger, and the config says station "line-9-z": put \\[station\\] id back to "${id}"`);
  for (const args of [['serve', '--spool', s.stick, '--json'], ['ledger', 'accept', '--reason', 'moved', '--operator', 'ana'], ['order', 'open', 'WO-1', '--quantity', '5', '--operator', 'ana']]) {
    const r = cli([...args, '--config', renamed]);
    t.not(r.status, 0, args.join(' '));
    t.regex(r.stderr, why, args.join(' '));
  }
  t.is(heads(), before, 'nothing written');
  const back = await openStation(loadConfig(s.configPath));
  t.true((await back.station.handle({ csr: csr(), link: 't' })).ok);
  await back.close();
});

test('rows added after a clean stop: verify fails and serve refuses, so no start signs them', async (t) => {
  const s = await stopped(2);
  const db = new Database(s.ledger);
  const last = db.prepare('SELECT * FROM events ORDER BY seq DESC LIMIT 1').get() as Record<string, unknown>;
  const e = { v: 2, seq: (last.seq as number) + 1, at: new Date().toISOString(), kind: 'clock_confirm', code: null, message: 'forged', csrSha256: null, deviceId: null, link: null, stationId: last.station_id as string, count: 1, operator: 'nobody' };
  db.prepare('INSERT INTO events (v, seq, at, kind, code, message, csr_sha256, device_id, link, station_id, count, operator, entry_hash) VALUES (2, ?, ?, ?, NULL, ?, NULL, NULL, NULL, ?, 1, ?, ?)').run(
    e.seq, e.at, e.kind, e.message, e.stationId, e.operator, eventHash(last.entry_hash as string, e as unknown as LedgerEvent),
  );
  db.close();
  t.regex(cli(['ledger', 'verify', '--config', s.configPath]).stderr, /rows were added after the station's last clean close/);
  const serve = cli(['serve', '--config', s.configPath, '--spool', s.stick, '--json']);
  t.not(serve.status, 0);
  t.regex(serve.stderr, /rows were added after the station's last clean close/);
});

/** A config of the same station whose ledger is `folder`/ledger.db (the folder made): a second name or a copy. */
function configWithLedgerIn(s: { dir: string; configPath: string }, folder: string): string {
  mkdirSync(join(s.dir, folder));
  const path = join(s.dir, `station-${folder}.toml`);
  writeFileSync(path, readFileSync(s.configPath, 'utf8').replace('ledger = "ledger.db"', `ledger = "${folder}/ledger.db"`));
  return path;
}

test('a second name for the ledger file finds the same lock', async (t) => {
  const s = await stopped(0);
  const config2 = configWithLedgerIn(s, 'other');
  const other = join(s.dir, 'other');
  symlinkSync(s.ledger, join(other, 'ledger.db'));
  const first = await openStation(loadConfig(s.configPath));
  t.teardown(() => first.close());
  const second = await cliAsync(['serve', '--config', config2, '--spool', s.stick, '--json']);
  t.not(second.status, 0);
  t.regex(second.stderr, /ERROR LEDGER_BUSY/);
});

test('a hard link to the ledger: no process owns it by either name, so sign by the other name cannot write beside a serving station', async (t) => {
  const s = await stopped(0);
  const config2 = configWithLedgerIn(s, 'other');
  const other = join(s.dir, 'other');
  const first = await openStation(loadConfig(s.configPath));
  linkSync(s.ledger, join(other, 'ledger.db'));
  const csrPath = join(s.dir, 'one.der');
  writeFileSync(csrPath, csr());
  const byOtherName = await cliAsync(['sign', csrPath, '--config', config2]);
  t.not(byOtherName.status, 0, byOtherName.stdout);
  t.regex(byOtherName.stderr, /ERROR LEDGER .*2 names \(hard links\)/);
  t.is(first.ledger.heads().issuanceSeq, 0, 'nothing recorded by the other name');
  await first.close();
  const again = await cliAsync(['serve', '--config', s.configPath, '--spool', s.stick, '--json']);
  t.not(again.status, 0);
  t.regex(again.stderr, /ERROR LEDGER .*hard links/);
  rmSync(join(other, 'ledger.db'));
  const signed = await cliAsync(['sign', csrPath, '--config', s.configPath]);
  t.is(signed.status, 0, signed.stderr);
});

test('a copy of the ledger given to another config while the station serves: sign and operator commands on it are refused, naming the file the station serves; after the station stops they are not', async (t) => {
  const s = await stopped(0);
  const config2 = configWithLedgerIn(s, 'copy');
  const other = join(s.dir, 'copy');
  const first = await openStation(loadConfig(s.configPath));
  let closed = false;
  t.teardown(() => (closed ? undefined : first.close()));
  // The file and its journal as they are now, as `cp` would take them.
  for (const f of ['ledger.db', 'ledger.db-wal']) if (existsSync(join(s.dir, f))) copyFileSync(join(s.dir, f), join(other, f));
  const csrPath = join(s.dir, 'one.der');
  writeFileSync(csrPath, csr());
  const signed = await cliAsync(['sign', csrPath, '--config', config2]);
  t.not(signed.status, 0, signed.stdout);
  t.regex(signed.stderr, /ERROR LEDGER_BUSY .*served from .*ledger\.db by pid \d+/);
  const order = await cliAsync(['order', 'open', 'WO-9', '--quantity', '5', '--config', config2, '--operator', 'ana']);
  t.not(order.status, 0, order.stdout);
  t.regex(order.stderr, /ERROR LEDGER_BUSY /);
  await first.close();
  closed = true;
  const afterStop = await cliAsync(['sign', csrPath, '--config', config2]);
  t.notRegex(afterStop.stderr, /LEDGER_BUSY/, 'the lease ends with the station');
});

test('a FIFO or a symlink planted at the ledger\'s owner file is replaced, neither waited on nor written through', async (t) => {
  const s = await stopped(0);
  const owner = `${s.ledger}.owner`;
  const victim = join(s.dir, 'victim.txt');
  writeFileSync(victim, 'keep');
  for (const plant of [() => execFileSync('mkfifo', [owner]), () => symlinkSync(victim, owner)]) {
    rmSync(owner, { force: true });
    plant();
    const csrPath = join(s.dir, `${uuid()}.der`);
    writeFileSync(csrPath, csr());
    const signed = await cliAsync(['sign', csrPath, '--config', s.configPath]);
    t.is(signed.status, 0, signed.stderr);
    t.is(readFileSync(victim, 'utf8'), 'keep');
  }
});

test('the batches table: a deleted newest batch row is caught', async (t) => {
  const { s } = await stationWithBatches([1, 1]);
  await s.close();
  sql(s.config.station.ledger, 'DELETE FROM batches WHERE number = 2');
  const r = verifyLedger(loadConfig(s.configPath));
  t.true(r.problems.some((p) => p.table === 'batches' && p.seq === 2 && /row in the batches table is gone/.test(p.reason)), JSON.stringify(r.problems));
});

test('the batches table: a recorded signature, file hash or time changed is named by ledger verify, batch by batch', async (t) => {
  const { s } = await stationWithBatches([2, 1, 1]);
  await s.close();
  const clean = cli(['ledger', 'verify', '--config', s.configPath]);
  t.is(clean.status, 0, clean.stderr);
  sql(s.config.station.ledger, "UPDATE batches SET signature = X'3006020101020101' WHERE number = 1; UPDATE batches SET created_at = '2020-01-01T00:00:00.000Z' WHERE number = 3");
  const v = cli(['ledger', 'verify', '--config', s.configPath]);
  t.is(v.status, 1);
  t.regex(v.stderr, /ERROR LEDGER batches seq 1: its recorded signature does not hold/);
  t.regex(v.stderr, /ERROR LEDGER batches seq 3: (its recorded signature does not hold|its rows, signature or certificates no longer make the file)/);
  t.notRegex(v.stderr, /batches seq 2:/);
});

test('a swapped station certificate: serve and export refuse rather than sign batches no pin verifies', async (t) => {
  const s = await stopped(1);
  const cfg = loadConfig(s.configPath);
  const other = makeOpensslRoot(s.dir, 'not-the-station-key', 'line-signer station x', FACTORY);
  copyFileSync(other.pem, cfg.ca.station_certificate);
  const serve = cli(['serve', '--config', s.configPath, '--spool', s.stick, '--json']);
  t.not(serve.status, 0);
  t.regex(serve.stderr, /station certificate .* is for another key than the token's/);
  const exp = cli(['export', '--out', s.stick, '--config', s.configPath]);
  t.not(exp.status, 0);
  t.regex(exp.stderr, /for another key than the token's/);
  t.is(new SqliteLedger(cfg.station.ledger, cfg.station.id, { readonly: true }).lastBatch(), undefined, 'no batch recorded');
});

test('ledger verify --without-token checks what it can and says what it leaves out', async (t) => {
  const s = await stopped(2);
  const r = cli(['ledger', 'verify', '--without-token', '--config', s.configPath]);
  t.is(r.status, 0, r.stderr);
  t.regex(r.stdout, /note: checked without the token/);
});

test('an output flag never renames a file over a device, a FIFO or a folder: /dev/null stays a device', async (t) => {
  const s = await stopped(0);
  const csrFile = join(s.dir, 'one.csr');
  writeFileSync(csrFile, csr());
  const r = cli(['sign', csrFile, '--out', '/dev/null', '--config', s.configPath]);
  t.is(r.status, 0, r.stderr);
  t.true(statSync('/dev/null').isCharacterDevice());
  const folder = cli(['ca', 'csr', '--csr-out', s.dir, '--config', s.configPath]);
  t.not(folder.status, 0);
  t.regex(folder.stderr, /is a folder; give a file name/);
});

test('a ledger folder the command cannot write: the message names the path, the user, the owner and what to do', async (t) => {
  const s = await stopped(0);
  const mnt = join(s.dir, 'ro');
  mkdirSync(mnt);
  // The station's own ledger on a disk mounted read-only (a missing one is refused before: see the first test).
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=4m', 'tmpfs', mnt]);
  t.teardown(() => execFileSync('umount', ['-l', mnt]));
  copyFileSync(s.ledger, join(mnt, 'ledger.db'));
  execFileSync('mount', ['-o', 'remount,ro', mnt]);
  const cfg = join(s.dir, 'ro.toml');
  writeFileSync(cfg, readFileSync(s.configPath, 'utf8').replace('ledger = "ledger.db"', 'ledger = "ro/ledger.db"'));
  const r = cli(['order', 'open', 'WO-1', '--quantity', '1', '--config', cfg]);
  t.not(r.status, 0);
  t.regex(r.stderr, /ro\/ledger\.db.*read-only file system; mount it read-write/);
});

test('a broken checkpoint hash list and a deleted ledger id are listed problems, not a stop at the first; status does not make a missing ledger; log --order matches the id, not a pattern', async (t) => {
  const s = await stopped(4);
  for (const id of ['WO_A', 'WOXA']) {
    const r = cli(['order', 'open', id, '--quantity', '1', '--config', s.configPath, '--operator', 'ana']);
    t.is(r.status, 0, r.stderr);
    t.is(cli(['order', 'close', id, '--config', s.configPath, '--operator', 'ana']).status, 0);
  }
  const orderLog = cli(['log', '--order', 'WO_A', '--config', s.configPath, '--json']).stdout.trim().split('\n').map((l) => JSON.parse(l) as { message: string });
  t.true(orderLog.length > 0);
  t.true(orderLog.every((r) => !r.message.includes('WOXA')), JSON.stringify(orderLog));
  t.is(cli(['log', '--order', '%', '--config', s.configPath, '--json']).stdout.trim(), '');

  sql(s.ledger, "UPDATE checkpoints SET issuance_hashes = X'00' WHERE n = 1; UPDATE issuances SET hardware_id = 'changed' WHERE seq = 3");
  const v = cli(['ledger', 'verify', '--config', s.configPath]);
  t.is(v.status, 1);
  t.regex(v.stderr, /checkpoints n 1: a checkpoint hash list is not whole hashes/);
  t.regex(v.stderr, /issuances seq 3: /, 'the second edit is listed too');
  sql(s.ledger, "DELETE FROM settings WHERE key = 'ledger_id'");
  const gone = cli(['ledger', 'verify', '--config', s.configPath]);
  t.is(gone.status, 1);
  t.regex(gone.stderr, /ERROR LEDGER the ledger's id \(settings ledger_id\) is gone/);

  const moved = `${s.ledger}.moved`;
  renameSync(s.ledger, moved);
  const st = cli(['status', '--json', '--config', s.configPath]);
  t.is(st.status, 0, st.stderr);
  t.true((JSON.parse(st.stdout) as { warnings: string[] }).warnings.some((w) => w.startsWith('NO LEDGER at ')), st.stdout);
  t.false(existsSync(s.ledger), 'status made no ledger');
});

test('export signs nothing the chain does not vouch for: a changed issuance or event row stops it, names the row, and uses up no batch number', async (t) => {
  const s = await stopped(4);
  sql(s.ledger, "UPDATE issuances SET hardware_id = 'evil-name' WHERE seq = 2");
  const exp = cli(['export', '--out', s.stick, '--config', s.configPath]);
  t.not(exp.status, 0);
  t.regex(exp.stderr, /ERROR EXPORT issuance seq 2 does not match the ledger's hash chain/);
  t.false(existsSync(s.stick) && readdirSync(s.stick).some((f) => f.endsWith('.jsonl')), 'no batch file');
  const db = new Database(s.ledger, { readonly: true });
  t.is((db.prepare('SELECT count(*) AS n FROM batches').get() as { n: number }).n, 0, 'no batch recorded');
  db.close();
  sql(s.ledger, "UPDATE issuances SET hardware_id = NULL WHERE seq = 2; UPDATE events SET message = 'forged' WHERE seq = 1");
  const again = cli(['export', '--out', s.stick, '--config', s.configPath]);
  t.not(again.status, 0);
  t.regex(again.stderr, /ERROR EXPORT event seq 1 does not match the ledger's hash chain/);
});

test('after an unclean stop, an operator event past the token\'s newest checkpoint (a forged revocation, correctly hashed) is caught by verify and the next start', async (t) => {
  // A station that is still running stands for one killed: no stop checkpoint.
  const s = await testStation();
  t.teardown(() => s.close());
  const victim = uuid();
  t.true((await s.station.handle({ csr: makeDeviceCsr({ deviceId: victim, factory: FACTORY, production: true }).der, link: 't' })).ok);
  await s.checkpointer.take('test');
  const db = new Database(s.config.station.ledger);
  const e = appendForgedEvent(db, 'revocation', victim);
  db.prepare('INSERT INTO revoked (device_id, event_seq, reason, at) VALUES (?, ?, ?, ?)').run(victim, e.seq, 'forged', e.at);
  db.close();
  const v = cli(['ledger', 'verify', '--config', s.configPath]);
  t.is(v.status, 1);
  t.regex(v.stderr, new RegExp(`event seq ${e.seq} \\(revocation\\) after the token's newest checkpoint`));
  // The station that had the file meanwhile does not sign it as its own either: its stop checkpoint refuses.
  await t.throwsAsync(s.close(), { message: new RegExp(`event seq ${e.seq} is not a row this station wrote; no checkpoint signed`) });
});

test('a row whose serial and device id were both changed gets both named, not only the first', async (t) => {
  const s = await stopped(3);
  sql(s.ledger, "UPDATE issuances SET serial = '01', device_id = 'someone-else' WHERE seq = 2");
  const v = cli(['ledger', 'verify', '--config', s.configPath]);
  t.is(v.status, 1);
  t.regex(v.stderr, /issuances seq 2: serial does not match the certificate/);
  t.regex(v.stderr, /issuances seq 2: device_id does not match the certificate/);
});

test('batches made before a recorded ca import --replace are a note in ledger verify, not a problem: the certificates they carry were replaced', async (t) => {
  const p = testPki();
  const { s } = await stationWithBatches([2]);
  await s.close();
  const renewed = signCaCsrWithOpenssl(await caCsr(s.config), s.dir, { key: p.rootKey, pem: p.rootPem });
  const imp = cli(['ca', 'import', renewed, '--replace', '--config', s.configPath]);
  t.is(imp.status, 0, imp.stderr);
  const v = cli(['ledger', 'verify', '--config', s.configPath]);
  t.is(v.status, 0, v.stderr);
  t.regex(v.stdout, /note: batch 1 cannot be made again byte for byte: a certificate it carries \(local-ca, root or station\) was replaced since \(ca import, event seq \d+\)/);
});

test('an export that fails after recording its batch (its file cannot take its name) still closes the ledger with a checkpoint: the station starts after it', async (t) => {
  const s = await stopped(2);
  const cfg = loadConfig(s.configPath);
  mkdirSync(join(s.stick, batchFileName(cfg.station.id, 1), 'x'), { recursive: true });
  const exp = cli(['export', '--out', s.stick, '--config', s.configPath]);
  t.not(exp.status, 0);
  const v = cli(['ledger', 'verify', '--config', s.configPath]);
  t.is(v.status, 0, v.stderr);
  const sign = cli(['sign', '-', '--config', s.configPath], { input: Buffer.from(csr()) });
  t.is(sign.status, 0, sign.stderr);
});

test('a batch whose event range was stretched past its export event is named: a later revocation cannot be skipped from every batch', async (t) => {
  const { s } = await stationWithBatches([1]);
  await s.close();
  sql(s.config.station.ledger, 'UPDATE batches SET last_event_seq = last_event_seq + 50 WHERE number = 1');
  const v = cli(['ledger', 'verify', '--config', s.configPath]);
  t.is(v.status, 1);
  t.regex(v.stderr, /batches seq 1: its events \(seq \d+-\d+\) do not end before its export event/);
});

test('after a recorded local-ca key rotation (ca import --replace of a certificate for a new key), the certificates issued before still verify against the local-ca they were issued under', async (t) => {
  const p = testPki();
  const s = await stopped(3);
  writeFileSync(s.configPath, readFileSync(s.configPath, 'utf8').replace(/key_label = "[^"]*"/, 'key_label = "local-ca-2"'));
  const cfg = loadConfig(s.configPath);
  const renewed = signCaCsrWithOpenssl(await caInit(cfg), s.dir, { key: p.rootKey, pem: p.rootPem });
  const imp = cli(['ca', 'import', renewed, '--replace', '--config', s.configPath]);
  t.is(imp.status, 0, imp.stderr);
  const v = cli(['ledger', 'verify', '--config', s.configPath]);
  t.is(v.status, 0, v.stderr);
  // The kept certificate is what vouches for them: without it they are named.
  for (const f of readdirSync(s.dir)) if (f.endsWith('.replaced.pem')) rmSync(join(s.dir, f));
  const gone = cli(['ledger', 'verify', '--config', s.configPath]);
  t.is(gone.status, 1);
  t.regex(gone.stderr, /issuances seq 1: stored certificate is not signed by the local-ca/);
});

test('a batch made before its factory root was renewed (the same key, no ca import recorded) is a note; a batch whose signature was changed with the certificates untouched is a problem', async (t) => {
  const p = testPki();
  const { s } = await stationWithBatches([1, 1]);
  await s.close();
  sql(s.config.station.ledger, "UPDATE batches SET signature = X'3006020101020101' WHERE number = 2");
  const changed = cli(['ledger', 'verify', '--config', s.configPath]);
  t.is(changed.status, 1);
  t.regex(changed.stderr, /batches seq 2: its recorded signature does not hold/);
  t.notRegex(changed.stderr, /batches seq 1:/);
  // The root renewed with the same key (in a copy of this station's own): every batch's certificates
  // line differs from the one its export event named.
  const root = join(s.dir, 'renewed-root.pem');
  execFileSync('openssl', ['req', '-x509', '-new', '-key', p.rootKey, '-subj', '/CN=Factory-CA/OU=acme-factory', '-days', '4000', '-out', root, '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign']);
  writeFileSync(s.configPath, readFileSync(s.configPath, 'utf8').replace(/^root = .*$/m, `root = "${root}"`));
  const renewed = cli(['ledger', 'verify', '--config', s.configPath]);
  t.regex(renewed.stdout, /note: batch 1 cannot be made again byte for byte: a certificate it carries/);
  t.regex(renewed.stdout, /note: batch 2 cannot be made again/);
});

test('a revocation event turned into another kind in place, the revoked table emptied to match: sign, export, operator commands and serve refuse the file, and the revoked key gets nothing', async (t) => {
  const s = await testStation();
  const device = uuid();
  const first = makeDeviceCsr({ deviceId: device, factory: FACTORY, production: true });
  t.true((await s.station.handle({ csr: first.der, link: 't' })).ok);
  await s.close();
  t.is(cli(['ledger', 'revoke', device, '--reason', 'key leaked', '--config', s.configPath]).status, 0);
  const db = new Database(s.config.station.ledger);
  const seq = (db.prepare("SELECT seq FROM events WHERE kind = 'revocation'").get() as { seq: number }).seq;
  db.close();
  // Below the head, no hash recomputed: the stored hashes and the token's checkpoint still agree.
  sql(s.config.station.ledger, `UPDATE events SET kind = 'start' WHERE seq = ${seq}; DELETE FROM revoked`);
  const again = join(s.dir, 'again.der');
  writeFileSync(again, makeDeviceCsr({ deviceId: device, factory: FACTORY, production: true }, first.privateKey).der);
  const sign = cli(['sign', again, '--config', s.configPath]);
  t.is(sign.status, 1);
  t.regex(sign.stderr, new RegExp(`ERROR LEDGER not signed: event seq ${seq} does not match the ledger's hash chain`));
  t.notRegex(sign.stdout, /BEGIN CERTIFICATE/);
  mkdirSync(join(s.dir, 'stick'));
  const exp = cli(['export', '--out', join(s.dir, 'stick'), '--config', s.configPath]);
  t.not(exp.status, 0);
  t.regex(exp.stderr, new RegExp(`ERROR EXPORT event seq ${seq} does not match the ledger's hash chain .*nothing exported`));
  t.deepEqual(readdirSync(join(s.dir, 'stick')), []);
  const order = cli(['order', 'open', 'R1', '--quantity', '5', '--config', s.configPath]);
  t.not(order.status, 0);
  t.regex(order.stderr, new RegExp(`ERROR LEDGER event seq ${seq} does not match the ledger's hash chain .*nothing written`));
  await t.throwsAsync(openStation(loadConfig(s.configPath)), { message: new RegExp(`not serving: event seq ${seq} does not match the ledger's hash chain`) });
  const check = new Database(s.config.station.ledger, { readonly: true });
  t.is((check.prepare('SELECT count(*) AS n FROM issuances').get() as { n: number }).n, 1, 'nothing issued to the revoked key');
  check.close();
});

test('an issuance row edited in place below the head (its device id changed, so the device looks new): sign refuses the file instead of issuing the device a second certificate', async (t) => {
  const s = await testStation();
  const device = uuid();
  t.true((await s.station.handle({ csr: makeDeviceCsr({ deviceId: device, factory: FACTORY, production: true }).der, link: 't' })).ok);
  t.true((await s.station.handle({ csr: csr(), link: 't' })).ok);
  await s.close();
  sql(s.config.station.ledger, `UPDATE issuances SET device_id = 'someone-else' WHERE device_id = '${device}'`);
  const second = join(s.dir, 'second.der');
  writeFileSync(second, makeDeviceCsr({ deviceId: device, factory: FACTORY, production: true }).der);
  const sign = cli(['sign', second, '--config', s.configPath]);
  t.is(sign.status, 1);
  t.regex(sign.stderr, /ERROR LEDGER not signed: issuance seq 1 does not match the ledger's hash chain \(entry_hash does not match the row and the previous hash\)/);
  t.notRegex(sign.stdout, /BEGIN CERTIFICATE/);
});

/** Every event's entry_hash from `fromSeq` on, recomputed as a forger with the file (and no token) would. */
function rehashEvents(ledger: string, fromSeq: number): void {
  const db = new Database(ledger);
  try {
    let prev = fromSeq > 1 ? (db.prepare('SELECT entry_hash FROM events WHERE seq = ?').get(fromSeq - 1) as { entry_hash: string }).entry_hash : '0'.repeat(64);
    for (const r of db.prepare('SELECT * FROM events WHERE seq >= ? ORDER BY seq').all(fromSeq) as Array<Record<string, unknown>>) {
      const e = { v: r.v, seq: r.seq, at: r.at, kind: r.kind, code: r.code, message: r.message, csrSha256: r.csr_sha256, deviceId: r.device_id, link: r.link, stationId: r.station_id, count: r.count, operator: r.operator };
      const h = eventHash(prev, e as unknown as LedgerEvent);
      db.prepare('UPDATE events SET entry_hash = ? WHERE seq = ?').run(h, r.seq);
      prev = h;
    }
  } finally {
    db.close();
  }
}

test('while a station serves, its checkpoints vouch only for rows it wrote: a chain edited and recomputed, the newest rows deleted, the checkpoints table emptied, a correctly hashed grant appended; each stops the checkpoint, further issuance and export', async (t) => {
  const attacks: Array<[string, (ledger: string) => void, RegExp]> = [
    ['a revocation turned into another kind, every later hash recomputed', (l) => {
      const db = new Database(l);
      const seq = (db.prepare("SELECT seq FROM events WHERE kind = 'revocation'").get() as { seq: number }).seq;
      db.close();
      sql(l, `UPDATE events SET kind = 'start' WHERE seq = ${seq}; DELETE FROM revoked`);
      rehashEvents(l, seq);
    }, /rows this station had vouched for were changed or deleted/],
    ['the newest issuances deleted', (l) => sql(l, 'DELETE FROM issuances WHERE seq > (SELECT max(seq) - 2 FROM issuances)'), /rows this station wrote since its newest checkpoint are gone/],
    ['the checkpoints table emptied', (l) => sql(l, 'DELETE FROM checkpoints'), /the newest checkpoint in the ledger file is not the one this station left there/],
    ['a re-issue grant appended with a correct hash, and its row', (l) => {
      const db = new Database(l);
      const device = (db.prepare('SELECT device_id FROM issuances LIMIT 1').get() as { device_id: string }).device_id;
      const e = appendForgedEvent(db, 'reissue_granted', device);
      db.prepare("INSERT INTO reissue_grants VALUES (?, ?, 'forged')").run(device, e.at);
      db.close();
    }, /event seq \d+ is not a row this station wrote/],
  ];
  for (const [what, attack, caught] of attacks) {
    const s = await testStation();
    const revoked = uuid();
    t.true((await s.station.handle({ csr: makeDeviceCsr({ deviceId: revoked, factory: FACTORY, production: true }).der, link: 't' })).ok);
    revokeDevice(s, revoked);
    await s.checkpointer.take('test');
    for (let i = 0; i < 3; i++) t.true((await s.station.handle({ csr: csr(), link: 't' })).ok);
    attack(s.config.station.ledger);
    await t.throwsAsync(s.checkpointer.take('test'), { message: caught }, what);
    const after = await s.station.handle({ csr: csr(), link: 't' });
    t.false(after.ok, `${what}: nothing more issued`);
    await t.throwsAsync(s.ledger.checkBeforeExport(), { message: /changed outside line-signer while this station had it/ }, `${what}: no export`);
    await s.close().catch(() => undefined);
  }
});

test('an event changed in place while the station serves (its stored hash kept), the revoked table emptied to match: an export through the station refuses before it signs', async (t) => {
  const s = await testStation();
  t.teardown(() => s.close().catch(() => undefined));
  const device = uuid();
  t.true((await s.station.handle({ csr: makeDeviceCsr({ deviceId: device, factory: FACTORY, production: true }).der, link: 't' })).ok);
  revokeDevice(s, device);
  await s.checkpointer.take('test');
  const db = new Database(s.config.station.ledger);
  const seq = (db.prepare("SELECT seq FROM events WHERE kind = 'revocation'").get() as { seq: number }).seq;
  db.close();
  sql(s.config.station.ledger, `UPDATE events SET kind = 'start' WHERE seq = ${seq}; DELETE FROM revoked`);
  await t.throwsAsync(s.ledger.checkBeforeExport(), { message: new RegExp(`event seq ${seq} does not match the ledger's hash chain .*nothing exported`) });
});

test("an operator's row written on the station's thread just after a writer-thread row whose answer is still on its way: the checkpoint waits for that row, it does not take it for a foreign one", async (t) => {
  const s = await testStation();
  t.teardown(() => s.close());
  const device = uuid();
  t.true((await s.station.handle({ csr: makeDeviceCsr({ deviceId: device, factory: FACTORY, production: true }).der, link: 't' })).ok);
  await s.checkpointer.take('test');
  const look = new Database(s.config.station.ledger, { readonly: true });
  const newest = (): number => (look.prepare('SELECT max(seq) AS m FROM events').get() as { m: number }).m;
  const before = newest();
  // A refusal event through the writer thread; its commit becomes visible before its answer reaches this thread.
  const viaWriter = s.ledger.recordEvent({ kind: 'rejection', code: 'BAD_CSR', message: 'test refusal', link: 't' });
  await new Promise((r) => setImmediate(r));
  while (newest() === before) {
    // the writer thread commits
  }
  look.close();
  // The control socket's connection, as an operator's revoke through the serving station writes.
  const control = new SqliteLedger(s.config.station.ledger, s.config.station.id);
  control.revoke(device, 'operator revokes');
  control.close();
  await t.notThrowsAsync(s.checkpointer.take('operator'));
  await viaWriter;
  await t.notThrowsAsync(s.checkpointer.take('test'));
  t.true((await s.station.handle({ csr: csr(), link: 't' })).ok, 'the station still issues');
});

test('a row appended after the serving station checked the file for an export and before the batch is recorded: nothing is exported', async (t) => {
  const s = await testStation();
  t.teardown(() => s.close().catch(() => undefined));
  const device = uuid();
  t.true((await s.station.handle({ csr: makeDeviceCsr({ deviceId: device, factory: FACTORY, production: true }).der, link: 't' })).ok);
  await s.checkpointer.take('test');
  await s.ledger.checkBeforeExport();
  const bound = s.ledger.exportBound();
  // A correctly hashed revocation, needing no key: written between the check and the batch.
  const db = new Database(s.config.station.ledger);
  const e = appendForgedEvent(db, 'revocation', device);
  db.close();
  const stick = join(s.dir, 'stick');
  mkdirSync(stick);
  await t.throwsAsync(exportBatch(s.config, { outDir: stick, upTo: bound.upTo, beforeRecord: bound.stillOwn }), { message: new RegExp(`event seq ${e.seq} is not a row this station wrote`) });
  t.deepEqual(readdirSync(stick), [], 'no batch file');
});

test('ca import checks the file as every owner does: a trigger planted to run inside its event, a row edited below the head, a second name for the file; nothing installed, nothing checkpointed', async (t) => {
  const p = testPki();
  const { s } = await stationWithBatches([2]);
  await s.close();
  const renewed = signCaCsrWithOpenssl(await caCsr(s.config), s.dir, { key: p.rootKey, pem: p.rootPem });
  const localCa = readFileSync(s.config.ca.certificate, 'utf8');
  const checkpoints = (): number => {
    const db = new Database(s.config.station.ledger, { readonly: true });
    try {
      return (db.prepare('SELECT count(*) AS n FROM checkpoints').get() as { n: number }).n;
    } finally {
      db.close();
    }
  };
  const before = checkpoints();
  const importIt = () => cli(['ca', 'import', renewed, '--replace', '--config', s.configPath]);

  sql(s.config.station.ledger, "CREATE TRIGGER forge AFTER INSERT ON events WHEN NEW.kind = 'ca_import' BEGIN DELETE FROM revoked; END");
  const trigger = importIt();
  t.not(trigger.status, 0);
  t.regex(trigger.stderr, /^ERROR LEDGER nothing installed: .*trigger forge/m);
  sql(s.config.station.ledger, 'DROP TRIGGER forge');

  const db = new Database(s.config.station.ledger);
  const original = (db.prepare('SELECT hardware_id FROM issuances WHERE seq = 1').get() as { hardware_id: string }).hardware_id;
  db.prepare("UPDATE issuances SET hardware_id = 'changed' WHERE seq = 1").run();
  db.close();
  const edited = importIt();
  t.not(edited.status, 0);
  t.regex(edited.stderr, /^ERROR LEDGER nothing installed: issuance seq 1 does not match the ledger's hash chain/m);
  sql(s.config.station.ledger, `UPDATE issuances SET hardware_id = '${original}' WHERE seq = 1`);

  const second = join(s.dir, 'second-name.db');
  linkSync(s.config.station.ledger, second);
  const linked = importIt();
  t.not(linked.status, 0);
  t.regex(linked.stderr, /^ERROR LEDGER .* has 2 names \(hard links\)/m);
  rmSync(second);

  t.is(readFileSync(s.config.ca.certificate, 'utf8'), localCa, 'the local-ca is not replaced');
  t.is(checkpoints(), before, 'no checkpoint signed what was there');
  const ok = importIt();
  t.is(ok.status, 0, ok.stderr);
});

test('the batches table is checked before an export with no station serving: a deleted row does not make a second batch 1, a stretched range does not leave a revocation out', async (t) => {
  const { s, devices } = await stationWithBatches([2]);
  await s.close();
  const out = join(s.dir, 'out');
  mkdirSync(out);
  sql(s.config.station.ledger, 'DELETE FROM batches');
  const deleted = cli(['export', '--out', out, '--config', s.configPath]);
  t.not(deleted.status, 0);
  t.regex(deleted.stderr, /^ERROR EXPORT .*batches "1": the chain records its export, but its row in the batches table is gone.*nothing exported$/m);
  t.deepEqual(readdirSync(out), []);

  const again = await stationWithBatches([1]);
  await again.s.close();
  const r = cli(['ledger', 'revoke', again.devices[0]!, '--reason', 'stolen', '--config', again.s.configPath]);
  t.is(r.status, 0, r.stderr);
  sql(again.s.config.station.ledger, 'UPDATE batches SET last_event_seq = (SELECT max(seq) FROM events) WHERE number = 1');
  const stretched = cli(['export', '--out', out, '--config', again.s.configPath]);
  t.not(stretched.status, 0);
  t.regex(stretched.stderr, /^ERROR EXPORT .*batches "1": .*do not end before its export event.*nothing exported$/m);
  t.deepEqual(readdirSync(out), []);
  t.is(devices.length, 2);
});

test('a ledger path naming a FIFO or a folder: reading and writing commands say so at once, instead of waiting on the FIFO for ever or reporting a disk I/O error', async (t) => {
  const s = await stopped(1);
  for (const [what, make] of [
    ['a FIFO', (p: string) => execFileSync('mkfifo', [p])],
    ['a folder', (p: string) => mkdirSync(p)],
  ] as const) {
    const odd = join(s.dir, `odd-${what.replace(/\W/g, '')}.db`);
    make(odd);
    const cfg = join(s.dir, `odd-${what.replace(/\W/g, '')}.toml`);
    writeFileSync(cfg, readFileSync(s.configPath, 'utf8').replace(/^ledger = .*$/m, `ledger = "${odd}"`));
    for (const args of [['status'], ['log'], ['ledger', 'verify'], ['order', 'list'], ['order', 'open', 'WO-1', '--quantity', '1']]) {
      const r = spawnSync(process.execPath, [BIN, ...args, '--config', cfg], { encoding: 'utf8', timeout: 30_000 });
      t.is(r.signal, null, `${what}: ${args.join(' ')} returned`);
      t.not(r.status, 0, `${what}: ${args.join(' ')}`);
      t.regex(r.stderr, new RegExp(`^ERROR LEDGER .*odd-\\w+\\.db is not a file`, 'm'), `${what}: ${args.join(' ')}`);
    }
  }
});

test('an empty -wal beside the ledger (what a reader such as ledger verify leaves) does not stop ledger accept', async (t) => {
  const s = await stopped(1);
  writeFileSync(`${s.ledger}-wal`, '');
  const r = cli(['ledger', 'accept', '--reason', 'checked after a move', '--config', s.configPath, '--operator', 'ana']);
  t.is(r.status, 0, r.stderr);
});

test('a schema version lowered outside line-signer: the migrations it sets off are all undone when one fails, and the refusal says what happened instead of INTERNAL', async (t) => {
  const s = await stopped(1);
  const version = (): number => {
    const db = new Database(s.ledger, { readonly: true });
    try {
      return db.pragma('user_version', { simple: true }) as number;
    } finally {
      db.close();
    }
  };
  const current = version();
  sql(s.ledger, 'PRAGMA user_version = 3');
  const sign = cli(['sign', '-', '--config', s.configPath], { input: Buffer.from(csr()) });
  t.not(sign.status, 0);
  t.regex(sign.stderr, /^ERROR LEDGER .*migrating the ledger from schema version 3 to \d+ failed \(.*\); nothing was changed\./m);
  t.is(version(), 3, 'nothing was changed');
  sql(s.ledger, `PRAGMA user_version = ${current}`);
  t.is(cli(['ledger', 'verify', '--config', s.configPath]).status, 0);
});

test('a [station] ledger that is a symlink to a file not made yet: starting over through it locks under the name the file will have, as every later command does', async (t) => {
  const s = await stopped(1);
  const place = join(s.dir, 'place');
  mkdirSync(place);
  const link = join(place, 'link.db');
  symlinkSync(join(place, 'target.db'), link);
  const cfg = join(s.dir, 'link.toml');
  writeFileSync(cfg, readFileSync(s.configPath, 'utf8').replace(/^ledger = .*$/m, `ledger = "${link}"`));
  const over = cli(['ledger', 'accept', '--forget-newer', '--config', cfg, '--reason', 'new disk', '--operator', 'ana']);
  t.is(over.status, 0, over.stderr);
  t.is(cli(['sign', '-', '--config', cfg], { input: Buffer.from(csr()) }).status, 0);
  const names = readdirSync(place).sort();
  t.true(names.includes('target.db'), names.join());
  t.false(names.some((n) => n.startsWith('link.db.')), `nothing named after the link: ${names.join()}`);
});

test('ledger accept refuses a file whose checkpoints another key signed (rows kept, checkpoints signed again without the token), --forget-newer or not, and writes nothing', async (t) => {
  const s = await stopped(2);
  const backup = join(s.dir, 'backup.db');
  t.is(cli(['ledger', 'backup', backup, '--config', s.configPath]).status, 0);
  copyFileSync(backup, join(s.dir, 'backup-clean.db'));
  const later = await openStation(loadConfig(s.configPath));
  for (let i = 0; i < 2; i++) t.true((await later.station.handle({ csr: csr(), link: 't' })).ok);
  await later.close();
  // The older copy's checkpoints signed again with a key of the attacker's own.
  const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const db = new Database(backup);
  const id = (db.prepare("SELECT value FROM settings WHERE key = 'ledger_id'").get() as { value: string }).value;
  const rows = db.prepare('SELECT * FROM checkpoints ORDER BY n').all() as Array<Record<string, unknown>>;
  t.true(rows.length > 0);
  for (const r of rows) {
    const c = { n: r.n, at: r.at, reason: r.reason, issuanceSeq: r.issuance_seq, issuanceHash: r.issuance_hash, eventSeq: r.event_seq, eventHash: r.event_hash, issuanceHashes: r.issuance_hashes, eventHashes: r.event_hashes, previous: r.previous } as Parameters<typeof checkpointStatement>[1];
    db.prepare('UPDATE checkpoints SET signature = ? WHERE n = ?').run(sign('sha256', checkpointStatement(id, c), privateKey), r.n);
  }
  db.close();
  for (const f of ['', '-wal', '-shm']) rmSync(`${s.ledger}${f}`, { force: true });
  copyFileSync(backup, s.ledger);
  const rowsNow = (): string => {
    const d = new Database(s.ledger, { readonly: true });
    try {
      return JSON.stringify([d.prepare('SELECT max(seq) AS n FROM events').get(), d.prepare('SELECT max(n) AS n FROM checkpoints').get(), d.prepare('SELECT max(seq) AS n FROM issuances').get()]);
    } finally {
      d.close();
    }
  };
  const before = rowsNow();
  for (const flags of [[], ['--forget-newer']]) {
    const r = cli(['ledger', 'accept', ...flags, '--reason', 'restored', '--config', s.configPath, '--operator', 'ana']);
    t.is(r.status, 1, r.stdout);
    t.regex(r.stderr, new RegExp(`^ERROR LEDGER nothing written: ${rows.length} of the file's ${rows.length} checkpoints \\(the first: n 1\\) are not signed by this station's key`, 'm'), flags.join(' '));
  }
  t.is(rowsNow(), before, 'nothing written');
  // The same copy as the station signed it is taken (with --forget-newer: it lacks the two issuances after it).
  copyFileSync(join(s.dir, 'backup-clean.db'), s.ledger);
  t.is(cli(['ledger', 'accept', '--forget-newer', '--reason', 'restored', '--config', s.configPath]).status, 0);
});
