/**
 * Tampering: changing any field of one issuances row (or of an event) makes
 * `ledger verify` fail and name that row.
 */
import test from 'ava';
import { copyFileSync, mkdirSync, writeFileSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { loadConfig } from '../src/config/index.js';
import { verifyLedger } from '../src/station/index.js';
import { makeDeviceCsr } from '../src/x509/index.js';
import { cli } from './helpers/cli.js';
import { FACTORY, testStation, uuid, type TestStation } from './helpers/pki.js';

let base: Promise<TestStation>;

test.before(() => {
  base = (async () => {
    const s = await testStation();
    for (let i = 0; i < 3; i++) {
      const r = await s.station.handle({ csr: makeDeviceCsr({ deviceId: uuid(), factory: FACTORY, production: true }).der, link: `link-${i}`, hardwareId: 'imx8' });
      if (!r.ok) throw new Error(r.message);
    }
    await s.station.handle({ csr: new Uint8Array([1, 2, 3]), link: 'noise' });
    await s.close(); // checkpoints the WAL into the file
    return s;
  })();
});

/** A copy of the base station's folder whose ledger gets `mutate` applied. */
async function tampered(name: string, mutate: (db: Database.Database) => void): Promise<string> {
  const s = await base;
  const dir = join(s.dir, `tamper-${name}`);
  mkdirSync(dir, { recursive: true });
  copyFileSync(s.config.station.ledger, join(dir, 'ledger.db'));
  copyFileSync(s.config.ca.certificate, join(dir, 'local-ca.pem'));
  const configPath = join(dir, 'station.toml');
  writeFileSync(configPath, readFileSync(s.configPath, 'utf8'));
  const db = new Database(join(dir, 'ledger.db'));
  mutate(db);
  db.close();
  return configPath;
}

test('an untouched ledger verifies, through the CLI too', async (t) => {
  const s = await base;
  const r = verifyLedger(s.config);
  t.is(r.problem, null);
  t.is(r.checked, 3);
  const out = cli(['ledger', 'verify', '--config', s.configPath]);
  t.is(out.status, 0, out.stderr);
  t.regex(out.stdout, /ledger intact: 3 issuances, \d+ events, \d+ signed checkpoints verified/);
});

const FIELDS: Array<[string, string]> = [
  ['serial', "'7fffffffffffffffffffffffffffffff'"],
  ['device_id', "'00000000-0000-0000-0000-000000000000'"],
  ['subject', "subject || 'x'"],
  ['public_key_sha256', "'00' || substr(public_key_sha256, 3)"],
  ['csr_sha256', "'00' || substr(csr_sha256, 3)"],
  ['certificate', "substr(certificate, 1, length(certificate) - 1) || x'00'"],
  ['not_before', "'2020-01-01T00:00:00.000Z'"],
  ['not_after', "'2099-01-01T00:00:00.000Z'"],
  ['issued_at', "'2020-01-01T00:00:00.000Z'"],
  ['station_id', "'another-station'"],
  ['link', "'forged'"],
  ['hardware_id', "'other-hw'"],
  ['work_order', "'WO-forged'"],
  ['name', "'forged-name'"],
  ['supersedes', "1"],
  ['v', "1"],
  ['entry_hash', "'00' || substr(entry_hash, 3)"],
];

for (const [field, value] of FIELDS) {
  test(`changing ${field} of row 2 makes ledger verify fail and name seq 2`, async (t) => {
    const configPath = await tampered(field, (db) => db.exec(`UPDATE issuances SET ${field} = ${value} WHERE seq = 2`));
    const r = verifyLedger(loadConfig(configPath));
    t.truthy(r.problem);
    t.is(r.problem!.table, 'issuances');
    t.is(r.problem!.seq, 2, r.problem!.reason);
    const out = cli(['ledger', 'verify', '--config', configPath]);
    t.not(out.status, 0);
    t.regex(out.stderr, /^ERROR LEDGER issuances seq 2: /m);
  });
}

test('changing seq of a row or deleting one is reported as the missing seq', async (t) => {
  const moved = await tampered('seq', (db) => db.exec('UPDATE issuances SET seq = 9 WHERE seq = 2'));
  const r1 = verifyLedger(loadConfig(moved));
  t.regex(r1.problem!.reason, /seq 2 is missing/);
  const deleted = await tampered('delete', (db) => db.exec('DELETE FROM issuances WHERE seq = 2'));
  const r2 = verifyLedger(loadConfig(deleted));
  t.regex(r2.problem!.reason, /seq 2 is missing/);
});

test('a rewritten rejection event is caught too', async (t) => {
  const configPath = await tampered('event', (db) => db.exec("UPDATE events SET code = 'INTERNAL' WHERE kind = 'rejection'"));
  const r = verifyLedger(loadConfig(configPath));
  t.is(r.problem?.table, 'events');
});

test('a row re-hashed to hide a change is still caught: the next row no longer chains to it', async (t) => {
  const { chainHash } = await import('../src/ledger/index.js');
  const configPath = await tampered('rehash', (db) => {
    db.exec("UPDATE issuances SET link = 'forged' WHERE seq = 2");
    const prev = (db.prepare('SELECT entry_hash FROM issuances WHERE seq = 1').get() as { entry_hash: string }).entry_hash;
    const r = db.prepare('SELECT * FROM issuances WHERE seq = 2').get() as Record<string, unknown>;
    const content = [r.v, r.seq, r.serial, r.device_id, r.subject, r.public_key_sha256, r.csr_sha256, Buffer.from(r.certificate as Buffer).toString('base64'), r.not_before, r.not_after, r.issued_at, r.station_id, r.link, r.hardware_id, r.work_order, r.name, r.supersedes] as Array<string | number | null>;
    db.prepare('UPDATE issuances SET entry_hash = ? WHERE seq = 2').run(chainHash(prev, content));
  });
  const r = verifyLedger(loadConfig(configPath));
  // The signed checkpoint names the changed row itself; the next row no longer chains to it.
  t.true(r.problems.some((p) => p.table === 'issuances' && p.seq === 2 && /changed after a checkpoint/.test(p.reason)), JSON.stringify(r.problems));
  t.true(r.problems.some((p) => p.table === 'issuances' && p.seq === 3), JSON.stringify(r.problems));
});
