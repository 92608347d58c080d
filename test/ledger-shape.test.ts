/**
 * What SQL can change beyond rows, with the ledger file and without the
 * token: a trigger that undoes a revocation inside the station's own
 * writes, rows numbered below 1 (outside every chain walk, yet read by
 * the policy replay and by lookups), values of the wrong type, a seq
 * moved far ahead, a dropped table. `ledger verify` lists each instead of
 * passing, hanging or crashing; `serve` and `sign` do not start on them.
 */
import test from 'ava';
import Database from 'better-sqlite3';
import { execFileSync } from 'node:child_process';
import { mkdirSync, openSync, readFileSync, statSync, writeFileSync, writeSync, closeSync } from 'node:fs';
import { makeDeviceCsr } from '../src/x509/index.js';
import { cli } from './helpers/cli.js';
import { FACTORY, testStation, uuid } from './helpers/pki.js';

const csr = (deviceId = uuid()): Uint8Array => makeDeviceCsr({ deviceId, factory: FACTORY, production: true }).der;

async function stopped(n: number): Promise<{ configPath: string; ledger: string; devices: string[] }> {
  const s = await testStation();
  const devices: string[] = [];
  for (let i = 0; i < n; i++) {
    const r = await s.station.handle({ csr: csr(), link: 't' });
    if (r.ok) devices.push(r.deviceId);
  }
  await s.close();
  return { configPath: s.configPath, ledger: s.config.station.ledger, devices };
}

function sql(ledger: string, text: string, ...params: unknown[]): void {
  const db = new Database(ledger);
  try {
    if (params.length) db.prepare(text).run(...params);
    else db.exec(text);
  } finally {
    db.close();
  }
}

function verifyFails(t: import('ava').ExecutionContext, configPath: string, ...why: RegExp[]): void {
  const v = cli(['ledger', 'verify', '--config', configPath]);
  t.is(v.status, 1, v.stdout + v.stderr);
  t.notRegex(v.stderr, /INTERNAL/);
  for (const w of why) t.regex(v.stderr, w);
}

test('a trigger planted in the file is named by verify, and serve and sign refuse the ledger', async (t) => {
  const s = await stopped(2);
  const r = cli(['ledger', 'revoke', s.devices[0]!, '--reason', 'scrapped', '--config', s.configPath]);
  t.is(r.status, 0, r.stderr);
  sql(s.ledger, `CREATE TRIGGER unrevoke AFTER INSERT ON events WHEN NEW.kind = 'start' BEGIN DELETE FROM revoked WHERE device_id = '${s.devices[0]}'; END`);
  verifyFails(t, s.configPath, /ERROR LEDGER file: trigger unrevoke: a trigger line-signer never makes/);
  const sign = cli(['sign', '-', '--config', s.configPath], { input: Buffer.from(csr(s.devices[0])) });
  t.not(sign.status, 0);
  t.regex(sign.stderr, /ERROR LEDGER not signed: .*trigger unrevoke.*changed outside line-signer/);
  const db = new Database(s.ledger, { readonly: true });
  t.is((db.prepare('SELECT count(*) AS n FROM revoked').get() as { n: number }).n, 1, 'the trigger never ran: nothing was written');
  db.close();
});

test('rows numbered below 1 (a forged replay base and grant, a planted issuance) are named, not believed', async (t) => {
  const s = await stopped(2);
  sql(s.ledger, `INSERT INTO events (v, seq, at, kind, message, device_id, station_id, count, entry_hash) VALUES (2, -1, '2026-01-01T00:00:00.000Z', 'replay_base', '{"revoked":[],"grants":["${s.devices[0]}"]}', NULL, 'x', 1, '${'0'.repeat(64)}')`);
  sql(s.ledger, `INSERT INTO reissue_grants VALUES ('${s.devices[0]}', '2026-01-01T00:00:00.000Z', 'forged')`);
  sql(s.ledger, `INSERT INTO issuances (v, seq, serial, device_id, subject, public_key_sha256, csr_sha256, certificate, not_before, not_after, issued_at, station_id, link, entry_hash)
    VALUES (2, 0, 'DEAD', 'planted', 'CN=planted', 'x', 'y', X'00', 'a', 'b', 'c', 'x', 't', 'z')`);
  verifyFails(t, s.configPath, /events\.seq: 1 row numbered below 1/, /issuances\.seq: 1 row numbered below 1/);
  const sign = cli(['sign', '-', '--config', s.configPath], { input: Buffer.from(csr(s.devices[0])) });
  t.not(sign.status, 0);
  t.regex(sign.stderr, /ERROR LEDGER not signed: /);
});

test('a value of the wrong type and a seq moved to 10^12 are listed in seconds, not a crash or a hang', async (t) => {
  const s = await stopped(3);
  mkdirSync(`${s.ledger}.out`);
  const e = cli(['export', '--config', s.configPath, '--out', `${s.ledger}.out`]);
  t.is(e.status, 0, e.stderr);
  sql(s.ledger, "UPDATE events SET message = CAST(message AS BLOB) WHERE kind = 'export'");
  sql(s.ledger, 'UPDATE issuances SET seq = 1000000000000 WHERE seq = 2');
  const t0 = Date.now();
  verifyFails(t, s.configPath, /file: events\.message: 1 value not of its declared type TEXT/, /issuances seq 2: seq 2 is missing \(deleted after a checkpoint signed it\)/, /issuances seq 4: seq 4-999999999999 are missing \(999999999996 rows\)/);
  t.true(Date.now() - t0 < 30_000, `verify took ${Date.now() - t0} ms`);
});

test('a dropped table is named, with what could not be checked because of it', async (t) => {
  const s = await stopped(1);
  sql(s.ledger, 'DROP TABLE orders');
  verifyFails(t, s.configPath, /file: table orders: is missing/, /file: cannot read the ledger: no such table: orders/);
});

test('a name skeleton changed in the file (so a look-alike would pass) is named by verify', async (t) => {
  const s = await stopped(2);
  sql(s.ledger, "UPDATE issuances SET name_skeleton = 'x' WHERE seq = 2");
  verifyFails(t, s.configPath, /issuances seq 2: name_skeleton is not what the name looks like/);
});

test('a trigger named to look like SQLite\'s own objects, and an index rewired to an empty b-tree through writable_schema, are named; the rewired revocation index stops sign', async (t) => {
  const s = await stopped(1);
  const device = s.devices[0]!;
  t.is(cli(['ledger', 'revoke', device, '--reason', 'key leaked', '--config', s.configPath]).status, 0);
  sql(s.ledger, `CREATE TRIGGER sqliteXunrevoke AFTER INSERT ON events WHEN NEW.kind = 'start' BEGIN DELETE FROM revoked WHERE device_id = '${device}'; END`);
  verifyFails(t, s.configPath, /file: trigger sqliteXunrevoke: a trigger line-signer never makes/);
  sql(s.ledger, 'DROP TRIGGER sqliteXunrevoke');
  // The sqlite3 shell, as an attacker would use it (better-sqlite3 runs in defensive mode, which refuses writable_schema).
  execFileSync('sqlite3', [s.ledger], {
    input: `CREATE INDEX zz1 ON revoked(device_id) WHERE 0;
     PRAGMA writable_schema = ON;
     UPDATE sqlite_master SET rootpage = (SELECT rootpage FROM sqlite_master WHERE name = 'zz1') WHERE name = 'sqlite_autoindex_revoked_1';
     DELETE FROM sqlite_master WHERE name = 'zz1';
     PRAGMA writable_schema = OFF;`,
  });
  verifyFails(t, s.configPath, /file: the file: SQLite's integrity check: /);
  const sign = cli(['sign', '-', '--config', s.configPath], { input: Buffer.from(csr(device)) });
  t.not(sign.status, 0);
  t.regex(sign.stderr, /ERROR LEDGER not signed: .*table revoked: SQLite's integrity check/);
});

test('a trigger planted while the station has the ledger open: its next write refuses, and the trigger never runs', async (t) => {
  const s = await testStation();
  const first = await s.station.handle({ csr: csr(), link: 't' });
  t.true(first.ok);
  sql(s.config.station.ledger, "CREATE TRIGGER meddle AFTER INSERT ON issuances BEGIN UPDATE settings SET value = 'meddled' WHERE key = 'ledger_id'; END");
  const second = await s.station.handle({ csr: csr(), link: 't' });
  t.false(second.ok);
  t.regex(second.ok ? '' : second.message, /schema was changed outside line-signer while this process had it open/);
  t.is(s.ledger.issuedCount(), 1);
  const db = new Database(s.config.station.ledger, { readonly: true });
  t.not((db.prepare("SELECT value FROM settings WHERE key = 'ledger_id'").get() as { value: string }).value, 'meddled');
  db.close();
  // Nor does the closing checkpoint write into the changed file.
  await t.throwsAsync(s.close(), { message: /schema was changed outside line-signer/ });
});

test('an operator command run here (no station serving) refuses a file with a trigger: it would run inside the command\'s own writes', async (t) => {
  const s = await stopped(1);
  sql(s.ledger, 'CREATE TRIGGER inflate AFTER INSERT ON orders BEGIN UPDATE orders SET quantity = 999999; END');
  const r = cli(['order', 'open', 'WO-1', '--quantity', '10', '--config', s.configPath]);
  t.not(r.status, 0);
  t.regex(r.stderr, /ERROR LEDGER nothing written: .*trigger inflate/);
});

/** Bytes overwritten (by default the first page's after the header: SQLite's schema page no longer reads). */
function damage(ledger: string, from = 100, length = 3996): void {
  const fd = openSync(ledger, 'r+');
  try {
    writeSync(fd, Buffer.alloc(length, 0x55), 0, length, from);
  } finally {
    closeSync(fd);
  }
}

test('a ledger file SQLite finds damaged is refused with LEDGER naming the file by sign, the operator commands, verify, status and log, never INTERNAL', async (t) => {
  const s = await stopped(2);
  damage(s.ledger);
  const sign = cli(['sign', '-', '--config', s.configPath], { input: Buffer.from(csr()) });
  t.is(sign.status, 1);
  t.regex(sign.stderr, new RegExp(`^ERROR LEDGER the ledger file ${s.ledger} is damaged \\(SQLite: .*\\): restore the newest backup`, 'm'));
  const order = cli(['order', 'open', 'WO-1', '--quantity', '5', '--config', s.configPath]);
  t.not(order.status, 0);
  t.regex(order.stderr, /^ERROR LEDGER /m);
  t.notRegex(order.stderr, /INTERNAL/, "order");
  verifyFails(t, s.configPath, new RegExp(`^ERROR LEDGER the ledger file ${s.ledger} is damaged`, 'm'));
  for (const args of [['status'], ['log']]) {
    const r = cli([...args, '--config', s.configPath]);
    t.is(r.status, 1, args[0]);
    t.regex(r.stderr, new RegExp(`^ERROR LEDGER the ledger file ${s.ledger} is damaged`, 'm'), args[0]);
  }
});

test('a WAL beside the ledger that makes it read as a damaged database is named before anything is written: the file and the WAL stay as they were', async (t) => {
  const s = await stopped(2);
  // A WAL of the file's own, kept: a connection's write left in it, copied out before the close plays it in.
  const db = new Database(s.ledger);
  db.pragma('wal_autocheckpoint = 0');
  db.exec('CREATE TABLE scratch (x)');
  const wal = readFileSync(`${s.ledger}-wal`);
  db.close();
  t.true(wal.length > 0);
  // Every page after the first (the WAL holds a newer first page, and the new table's).
  damage(s.ledger, 4096, statSync(s.ledger).size - 4096);
  writeFileSync(`${s.ledger}-wal`, wal);
  const before = readFileSync(s.ledger);
  const sign = cli(['sign', '-', '--config', s.configPath], { input: Buffer.from(csr()) });
  t.is(sign.status, 1);
  t.regex(sign.stderr, new RegExp(`^ERROR LEDGER ${s.ledger} with the WAL beside it \\(${s.ledger}-wal, ${wal.length} bytes, .*reads as a damaged database .*Nothing was written`, 'm'));
  t.true(readFileSync(s.ledger).equals(before), 'the file is as it was');
  t.is(statSync(`${s.ledger}-wal`).size, wal.length, 'the WAL is where it was');
});
