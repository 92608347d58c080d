/**
 * `ledger backup DEST` never overwrites anything nor writes through a
 * symlink, even one swapped in at DEST after the checks, while the copy is
 * made: VACUUM INTO (which follows links and fills an empty file) writes
 * into a private folder beside the ledger, and the copy takes DEST's name
 * by link() or is written into DEST, a file made exclusively.
 */
import test from 'ava';
import { existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, rmSync, readFileSync, renameSync, statSync, symlinkSync, watch, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { LineSignerError } from '../src/errors.js';
import { backupLedger } from '../src/operator/backup.js';
import { issue } from './helpers/batches.js';
import { cli } from './helpers/cli.js';
import { testStation, uuid, type TestStation } from './helpers/pki.js';

async function stationWithIssuances(n: number): Promise<TestStation> {
  const s = await testStation();
  for (let i = 0; i < n; i++) await issue(s, uuid());
  return s;
}

for (const victimKind of ['missing', 'empty'] as const) {
  test(`a symlink swapped in at DEST after the checks, while the copy runs, is never written through (victim ${victimKind})`, async (t) => {
    const s = await stationWithIssuances(5);
    t.teardown(() => s.close());
    const dir = join(s.dir, 'usb');
    mkdirSync(dir);
    const victim = join(s.dir, 'victim.db');
    if (victimKind === 'empty') writeFileSync(victim, '');
    const dest = join(dir, 'backup.db');
    // The checks run in the call; the copy starts once its worker thread is up, after the link is planted.
    const copying = backupLedger(s.config.station.ledger, dest);
    symlinkSync(victim, dest);
    const err = await t.throwsAsync(copying);
    t.true(err instanceof LineSignerError);
    t.is((err as LineSignerError).code, 'USAGE');
    t.regex(err!.message, /backup\.db appeared while the copy was made \(EEXIST\); a backup never overwrites a file nor writes through a symlink/);
    if (victimKind === 'missing') t.false(existsSync(victim));
    else t.is(statSync(victim).size, 0);
    t.true(lstatSync(dest).isSymbolicLink());
    t.deepEqual(readdirSync(dir), ['backup.db'], 'its private folder is gone');
  });
}

test('a file that appears at DEST during the copy is kept as it is; the backup is refused with EEXIST', async (t) => {
  const s = await stationWithIssuances(3);
  t.teardown(() => s.close());
  const before = readdirSync(s.dir);
  const dest = join(s.dir, 'backup.db');
  const copying = backupLedger(s.config.station.ledger, dest);
  writeFileSync(dest, '');
  const err = await t.throwsAsync(copying);
  t.regex(err!.message, /EEXIST/);
  t.is(statSync(dest).size, 0);
  t.deepEqual(readdirSync(s.dir).filter((f) => !before.includes(f)), ['backup.db'], 'its private folder is gone');
});

// On the ledger's file system the copy takes DEST's name by link(); on another (tmpfs here, a stick on a
// station) it is copied into a file made there. Both must land alike.
for (const where of ['the ledger\'s file system', 'another file system'] as const) {
  test(`a backup on ${where} lands as a regular file of its own, mode 0600, that verifies, and leaves no private folder behind`, async (t) => {
    const s = await stationWithIssuances(3);
    const before = readdirSync(s.dir);
    const elsewhere = where === 'another file system' ? mkdtempSync(join('/dev/shm', 'backup-')) : null;
    t.teardown(() => elsewhere && rmSync(elsewhere, { recursive: true, force: true }));
    const dest = join(elsewhere ?? s.dir, 'backup.db');
    t.is(statSync(dirname(dest)).dev !== statSync(s.config.station.ledger).dev, elsewhere !== null, `${dest} is on ${where}`);
    const r = await backupLedger(s.config.station.ledger, dest);
    await s.close();
    t.is(r.bytes, statSync(dest).size);
    t.true(lstatSync(dest).isFile());
    t.is(statSync(dest).nlink, 1);
    t.is(statSync(dest).mode & 0o777, 0o600);
    t.deepEqual(readdirSync(s.dir).filter((f) => !before.includes(f)), elsewhere ? [] : ['backup.db']);
    const v = cli(['ledger', 'verify', '--config', s.configPath, '--ledger', dest]);
    t.is(v.status, 0, v.stderr);
  });
}

test('ledger backup refuses an existing DEST (an empty file, a symlink to a victim, a dangling symlink) with USAGE and writes nothing', async (t) => {
  const s = await stationWithIssuances(1);
  await s.close();
  const victim = join(s.dir, 'victim.db');
  writeFileSync(victim, '');
  const empty = join(s.dir, 'empty.db');
  writeFileSync(empty, '');
  const link = join(s.dir, 'link.db');
  symlinkSync(victim, link);
  const dangling = join(s.dir, 'dangling.db');
  symlinkSync(join(s.dir, 'nowhere.db'), dangling);
  for (const dest of [empty, link, dangling]) {
    const r = cli(['ledger', 'backup', dest, '--config', s.configPath]);
    t.is(r.status, 64, r.stderr);
    t.regex(r.stderr, /^ERROR USAGE .* exists/m);
  }
  t.is(readFileSync(victim).length, 0);
  t.is(readFileSync(empty).length, 0);
  t.false(existsSync(join(s.dir, 'nowhere.db')));
});

test('an attacker who owns DEST\'s folder and replaces every folder made there with one holding a symlink writes nothing through it', async (t) => {
  const s = await stationWithIssuances(5);
  t.teardown(() => s.close());
  const dir = join(s.dir, 'attacker');
  mkdirSync(dir);
  const victim = join(s.dir, 'victim.conf');
  writeFileSync(victim, '');
  let swapped = 0;
  const watcher = watch(dir, (_, name) => {
    const entry = name ? join(dir, String(name)) : '';
    if (!entry || !String(name).startsWith('.') || String(name).endsWith('.moved')) return;
    try {
      if (!lstatSync(entry).isDirectory()) return;
      renameSync(entry, `${entry}.moved`);
      mkdirSync(entry);
      symlinkSync(victim, join(entry, 'ledger.db'));
      swapped++;
    } catch {
      // already gone
    }
  });
  t.teardown(() => watcher.close());
  const dest = join(dir, 'bk.db');
  const done = await backupLedger(s.config.station.ledger, dest);
  t.is(done.dest, dest);
  t.is(statSync(victim).size, 0, 'the victim is untouched');
  t.true(lstatSync(dest).isFile(), 'DEST is a file of its own');
  t.is(readFileSync(dest).subarray(0, 15).toString('latin1'), 'SQLite format 3');
  t.is(swapped, 0, 'no folder was made where the attacker writes');
});
