/**
 * The policy state tables (orders, revoked, reissue_grants, the clock
 * confirmation) decide what the station issues; each is a projection of
 * hash-chained events. An edit of one with nothing but SQLite (no
 * re-hashing needed) must be named by `ledger verify` and stop the
 * station from starting on it.
 */
import test from 'ava';
import Database from 'better-sqlite3';
import { copyFileSync } from 'node:fs';
import { makeDeviceCsr } from '../src/x509/index.js';
import { loadConfig } from '../src/config/index.js';
import { openStation } from '../src/station/index.js';
import { BIN, cli } from './helpers/cli.js';
import { spawnSync } from 'node:child_process';
import { FACTORY, testStation, uuid } from './helpers/pki.js';
import { revoke } from './helpers/batches.js';
import { generateKeyPairSync } from 'node:crypto';

const csrOf = (deviceId: string): Uint8Array => makeDeviceCsr({ deviceId, factory: FACTORY, production: true }).der;

/** A stopped station with an order (2 of 2 issued), a revoked device and a device with a used re-issue grant. */
async function history(): Promise<{ configPath: string; ledger: string; revoked: string; reissued: string; other: string }> {
  const s = await testStation();
  const run = (args: string[]): void => {
    const r = cli([...args, '--config', s.configPath, '--operator', 'ana']);
    if (r.status !== 0) throw new Error(r.stderr);
  };
  const [revoked, reissued, other] = [uuid(), uuid(), uuid()];
  for (const id of [revoked, reissued, other]) if (!(await s.station.handle({ csr: csrOf(id), link: 't' })).ok) throw new Error('not issued');
  await s.close();
  run(['ledger', 'revoke', revoked, '--reason', 'scrapped']);
  run(['ledger', 'allow-reissue', reissued, '--reason', 'new board']);
  const s2 = await openStation(loadConfig(s.configPath));
  if (!(await s2.station.handle({ csr: csrOf(reissued), link: 't' })).ok) throw new Error('re-issue refused');
  await s2.close();
  run(['order', 'open', 'WO-1', '--quantity', '2']);
  const s3 = await openStation(loadConfig(s.configPath));
  for (let i = 0; i < 2; i++) if (!(await s3.station.handle({ csr: csrOf(uuid()), link: 't' })).ok) throw new Error('order refused');
  await s3.close();
  run(['clock', 'confirm', '--reason', 'checked against the wall clock']);
  return { configPath: s.configPath, ledger: s.config.station.ledger, revoked, reissued, other };
}

/** Everything in the main file, so that a copy of it is the whole ledger. */
function checkpointWal(ledger: string): void {
  const db = new Database(ledger);
  db.pragma('wal_checkpoint(TRUNCATE)');
  db.close();
}

function sql(ledger: string, text: string, ...params: unknown[]): void {
  const db = new Database(ledger);
  try {
    db.prepare(text).run(...params);
  } finally {
    db.close();
  }
}

test('an untouched history verifies, and each policy table edited behind the chain is named by verify and refused by the station', async (t) => {
  const h = await history();
  const clean = cli(['ledger', 'verify', '--config', h.configPath]);
  t.is(clean.status, 0, clean.stderr);

  const edits: Array<[string, () => void, RegExp]> = [
    ['a revocation undone', () => sql(h.ledger, 'DELETE FROM revoked WHERE device_id = ?', h.revoked), new RegExp(`revoked "${h.revoked}": revoked by event seq \\d+, not re-issued since`)],
    ['a grant forged', () => sql(h.ledger, "INSERT INTO reissue_grants VALUES (?, '2026-01-01T00:00:00.000Z', 'forged')", h.other), new RegExp(`reissue_grants "${h.other}": a re-issue grant that no reissue_granted event left standing`)],
    ['a used grant put back', () => sql(h.ledger, "INSERT INTO reissue_grants VALUES (?, '2026-01-01T00:00:00.000Z', 'again')", h.reissued), new RegExp(`reissue_grants "${h.reissued}": a re-issue grant that no reissue_granted event left standing`)],
    ["an order's count reset", () => sql(h.ledger, "UPDATE orders SET issued = 0, operator = 'mallory' WHERE id = 'WO-1'"), /orders "WO-1": (says 0 issued, the ledger holds 2|differs from its order_open event)/],
    ['a clock confirmation moved on', () => sql(h.ledger, "UPDATE settings SET value = '999' WHERE key = 'clock_confirmed_after_seq'"), /clock_confirmed_after_seq.*999: not the issuance count the clock_confirm event \(seq \d+\) was made after \(6\)/],
  ];
  for (const [what, edit, named] of edits) {
    checkpointWal(h.ledger);
    copyFileSync(h.ledger, `${h.ledger}.clean`);
    edit();
    const v = cli(['ledger', 'verify', '--config', h.configPath]);
    t.is(v.status, 1, `${what}: verify passed`);
    t.regex(v.stderr, named, what);
    t.regex(v.stderr, /^ERROR LEDGER policy state: /m, what);
    const sign = cli(['sign', '-', '--config', h.configPath], { input: Buffer.from(csrOf(uuid())) });
    t.not(sign.status, 0, `${what}: the station signed on an edited ledger`);
    t.regex(sign.stderr, /ERROR LEDGER not signed: .*edited outside line-signer/, what);
    // Put the file back for the next edit.
    checkpointWal(h.ledger);
    copyFileSync(`${h.ledger}.clean`, h.ledger);
    t.is(cli(['ledger', 'verify', '--config', h.configPath]).status, 0, `${what}: not restored`);
  }
});

/** The CLI under faketime: the station's clock moved by `fake` ("+2h", "-1m"). */
function fakeCli(fake: string, args: string[], input?: Uint8Array): { status: number | null; stderr: string } {
  const r = spawnSync('faketime', ['-f', fake, process.execPath, BIN, ...args], { input, encoding: 'utf8', timeout: 60_000 });
  return { status: r.status, stderr: r.stderr };
}

test('histories with a clock that jumped verify clean and serve: a revocation made two hours ahead then a re-issue, a grant made a minute behind', async (t) => {
  const s = await testStation();
  const [a, b] = [uuid(), uuid()];
  for (const id of [a, b]) t.true((await s.station.handle({ csr: csrOf(id), link: 't' })).ok);
  await s.close();
  const run = (fake: string | null, args: string[], input?: Uint8Array): void => {
    const r = fake ? fakeCli(fake, [...args, '--config', s.configPath], input) : cli([...args, '--config', s.configPath], { input });
    t.is(r.status, 0, `${args.join(' ')}: ${r.stderr}`);
  };
  run('+2h', ['ledger', 'revoke', a, '--reason', 'scrapped', '--operator', 'ana']);
  run(null, ['clock', 'confirm', '--reason', 'rtc fixed', '--operator', 'ana']);
  run(null, ['ledger', 'allow-reissue', a, '--reason', 'rework', '--operator', 'ana']);
  run(null, ['sign', '-'], csrOf(a));
  run('-1m', ['ledger', 'allow-reissue', b, '--reason', 'rework', '--operator', 'ana']);
  const v = cli(['ledger', 'verify', '--config', s.configPath]);
  t.is(v.status, 0, v.stderr);
  run(null, ['sign', '-'], csrOf(b));
  t.is(cli(['ledger', 'verify', '--config', s.configPath]).status, 0);
});

test('a grant forged while the station serves is refused on the spot: the grant table must be what the events say for the device, and nothing is issued', async (t) => {
  const s = await testStation();
  t.teardown(() => s.close());
  const id = uuid();
  t.true((await s.station.handle({ csr: csrOf(id), link: 't' })).ok);
  sql(s.config.station.ledger, "INSERT INTO reissue_grants VALUES (?, '2026-01-01T00:00:00.000Z', 'forged')", id);
  s.station.invalidate();
  // A new key for the device: the forged grant would let it through.
  const r = await s.station.handle({ csr: csrOf(id), link: 't' });
  t.false(r.ok);
  if (!r.ok) t.regex(r.message, new RegExp(`reissue_grants table disagrees with its hash-chained events for device "${id}"`));
  t.is(s.ledger.issuedCount(), 1, 'nothing issued to the new key');
  const v = cli(['ledger', 'verify', '--config', s.configPath]);
  t.is(v.status, 1);
  t.regex(v.stderr, new RegExp(`reissue_grants "${id}": a re-issue grant that no reissue_granted event left standing`));
});

test('a revocation deleted while the station serves (one SQL statement): the revoked key is still refused, at the decision and at the commit', async (t) => {
  const s = await testStation();
  t.teardown(() => s.close());
  const id = uuid();
  const key = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;
  t.true((await s.station.handle({ csr: makeDeviceCsr({ deviceId: id, factory: FACTORY, production: true }, key).der, link: 't' })).ok);
  revoke(s, id);
  sql(s.config.station.ledger, 'DELETE FROM revoked WHERE device_id = ?', id);
  s.station.invalidate();
  const r = await s.station.handle({ csr: makeDeviceCsr({ deviceId: id, factory: FACTORY, production: true }, key).der, link: 't' });
  t.false(r.ok);
  if (!r.ok) t.regex(r.message, new RegExp(`revoked table disagrees with its hash-chained events for device "${id}"`));
  t.is(s.ledger.issuedCount(), 1);
});

test('from the replay base on, a revocation dropped with its grant is named even though a grant followed it: one grant cannot yield two certificates', async (t) => {
  const s = await testStation();
  const id = uuid();
  t.true((await s.station.handle({ csr: csrOf(id), link: 't' })).ok);
  await s.close();
  for (const args of [['ledger', 'revoke', id, '--reason', 'scrapped'], ['ledger', 'allow-reissue', id, '--reason', 'rework']]) {
    const r = cli([...args, '--config', s.configPath, '--operator', 'ana']);
    t.is(r.status, 0, r.stderr);
  }
  t.is(cli(['ledger', 'verify', '--config', s.configPath]).status, 0);
  sql(s.config.station.ledger, 'DELETE FROM revoked WHERE device_id = ?', id);
  sql(s.config.station.ledger, 'DELETE FROM reissue_grants WHERE device_id = ?', id);
  const v = cli(['ledger', 'verify', '--config', s.configPath]);
  t.is(v.status, 1);
  t.regex(v.stderr, new RegExp(`revoked "${id}": revoked by event seq \\d+`));
});

test('a ledger from before the replay base gets one at its first start, holding what stood then', async (t) => {
  const s = await testStation();
  const id = uuid();
  t.true((await s.station.handle({ csr: csrOf(id), link: 't' })).ok);
  await s.close();
  const db = new Database(s.config.station.ledger, { readonly: true });
  const bases = db.prepare("SELECT message FROM events WHERE kind = 'replay_base'").all() as Array<{ message: string }>;
  db.close();
  t.is(bases.length, 1, 'one base, written at the first start only');
  t.deepEqual(JSON.parse(bases[0]!.message), { revoked: [], grants: [] });
});
