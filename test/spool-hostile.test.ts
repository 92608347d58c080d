/**
 * A stick is the client's, folder tree included: symlinks, FIFOs, folders
 * in the way, files with old mtimes, read-only and missing folders.
 */
import test from 'ava';
import { execFileSync } from 'node:child_process';
import { chmodSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmdirSync, symlinkSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SpoolLink, type SpoolLinkOptions } from '../src/links/spool.js';
import type { LinkEvent } from '../src/links/index.js';
import { makeDeviceCsr, pemDecodeAll, pemEncode } from '../src/x509/index.js';
import { FACTORY, testStation, uuid, type TestStation } from './helpers/pki.js';

const csrPem = (): string => pemEncode(makeDeviceCsr({ deviceId: uuid(), factory: FACTORY, production: true }).der, 'CERTIFICATE REQUEST');
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Every event the station wrote to its ledger: issuances, replays, refusals. */
function ledgerEvents(s: TestStation): number {
  const st = s.ledger.stats();
  return st.issued + st.replays + Object.values(st.rejectedByCode).reduce((a, b) => a + b, 0);
}

/** Three passes: a file is seen, then seen unchanged twice (the quiet period is 0 here). */
async function settle(link: SpoolLink): Promise<void> {
  for (let i = 0; i < 3; i++) await link.scan();
}

function spoolLink(s: TestStation, dir: string, opts: Partial<SpoolLinkOptions> = {}, events: LinkEvent[] = []): SpoolLink {
  return new SpoolLink(s.station, { dir, pollMs: 50, quietMs: 0, ...opts }, (e) => events.push(e));
}

/** Names and contents of every file under `dir`, symlinks as their targets. */
function tree(dir: string): string[] {
  const out: string[] = [];
  for (const n of readdirSync(dir)) {
    const p = join(dir, n);
    const st = lstatSync(p);
    if (st.isSymbolicLink()) out.push(`${n} -> symlink`);
    else if (st.isDirectory()) out.push(`${n}/`, ...tree(p).map((x) => `${n}/${x}`));
    else out.push(`${n} ${readFileSync(p).toString('base64')}`);
  }
  return out.sort();
}

test('a *.csr that is a symlink, a FIFO or a folder gets an .error and moves to done/, and is never read through', async (t) => {
  const s = await testStation();
  t.teardown(() => s.close());
  const outside = join(s.dir, 'outside');
  mkdirSync(outside);
  writeFileSync(join(outside, 'dev.csr'), csrPem());
  const before = tree(outside);
  const dir = join(s.dir, 'stick');
  const inbox = join(dir, 'inbox');
  mkdirSync(inbox, { recursive: true });
  symlinkSync(join(outside, 'dev.csr'), join(inbox, 'link.csr'));
  symlinkSync(outside, join(inbox, 'dirlink.csr'));
  execFileSync('mkfifo', [join(inbox, 'fifo.csr')]);
  mkdirSync(join(inbox, 'folder.csr'));
  writeFileSync(join(inbox, 'fine.csr'), csrPem());

  const link = spoolLink(s, dir);
  await settle(link);
  await link.stop();

  const outbox = join(dir, 'outbox');
  t.regex(readFileSync(join(outbox, 'link.error'), 'utf8'), /^BAD_CSR "link\.csr" is not a regular file \(a symlink\); not read\n$/);
  t.regex(readFileSync(join(outbox, 'dirlink.error'), 'utf8'), /^BAD_CSR .*a symlink/);
  t.regex(readFileSync(join(outbox, 'fifo.error'), 'utf8'), /^BAD_CSR .*a FIFO/);
  t.regex(readFileSync(join(outbox, 'folder.error'), 'utf8'), /^BAD_CSR .*a folder/);
  t.is(pemDecodeAll(readFileSync(join(outbox, 'fine.pem'), 'utf8'), 'CERTIFICATE').length, 2);
  t.deepEqual(readdirSync(inbox), [], 'every request moved out of the inbox');
  t.true(lstatSync(join(dir, 'done', 'link.csr')).isSymbolicLink(), 'the symlink itself moved, not its target');
  t.deepEqual(tree(outside), before, 'nothing outside the stick touched');
  t.is(s.ledger.issuedCount(), 1, 'only the regular file was signed');
  t.is(link.status.refused, 4);
});

test('a spool folder, inbox, outbox or done that is a symlink is not followed: the link says so and touches nothing', async (t) => {
  const s = await testStation();
  t.teardown(() => s.close());
  for (const which of ['spool', 'inbox', 'outbox', 'done'] as const) {
    const base = join(s.dir, which);
    const outside = join(base, 'outside');
    mkdirSync(join(outside, 'inbox'), { recursive: true });
    writeFileSync(join(outside, 'x.csr'), csrPem());
    writeFileSync(join(outside, 'inbox', 'x.csr'), csrPem());
    const dir = join(base, 'stick');
    if (which === 'spool') symlinkSync(outside, dir);
    else {
      mkdirSync(dir);
      for (const sub of ['inbox', 'outbox', 'done']) {
        if (sub === which) symlinkSync(outside, join(dir, sub));
        else mkdirSync(join(dir, sub));
      }
      if (which !== 'inbox') writeFileSync(join(dir, 'inbox', 'y.csr'), csrPem());
    }
    const before = tree(outside);
    const link = spoolLink(s, dir);
    await settle(link);
    await link.stop();
    t.deepEqual(tree(outside), before, `${which}: nothing outside read, moved or written`);
    t.is(s.ledger.issuedCount(), 0, `${which}: nothing signed`);
    // stop() has set 'stopped'; the reason given before is kept in the events.
    const link2 = spoolLink(s, dir);
    await link2.scan();
    t.is(link2.status.state, 'error', which);
    t.regex(link2.status.reason ?? '', new RegExp(`${which === 'spool' ? 'stick' : which} is a symlink, not a folder`), which);
  }
});

test('an answer that cannot be written is reported once and retried with back-off, without new ledger events, while the rest of the inbox flows', async (t) => {
  const s = await testStation();
  t.teardown(() => s.close());
  const dir = join(s.dir, 'stick');
  const inbox = join(dir, 'inbox');
  const outbox = join(dir, 'outbox');
  mkdirSync(inbox, { recursive: true });
  // A folder where the answer must go: even root cannot rename a file over it.
  mkdirSync(join(outbox, 'a-broken.error'), { recursive: true });
  writeFileSync(join(inbox, 'a-broken.csr'), 'this is not a CSR');
  writeFileSync(join(inbox, 'b-good.csr'), csrPem());
  const events: LinkEvent[] = [];
  const link = spoolLink(s, dir, { retryMs: 300 }, events);

  await settle(link);
  t.is(pemDecodeAll(readFileSync(join(outbox, 'b-good.pem'), 'utf8'), 'CERTIFICATE').length, 2, 'the next file was answered');
  t.is(link.status.state, 'error');
  t.is(link.status.reason, 'cannot write "a-broken.error": a folder is in the way');
  const afterFirst = ledgerEvents(s);
  t.is(afterFirst, 2, 'one refusal and one issuance');

  // Many polls: nothing new in the ledger, no new report, the file still waits.
  for (let i = 0; i < 10; i++) {
    await link.scan();
    await sleep(40);
  }
  writeFileSync(join(inbox, 'c-later.csr'), csrPem());
  await settle(link);
  t.true(existsSync(join(outbox, 'c-later.pem')), 'files dropped later flow too');
  t.is(ledgerEvents(s), afterFirst + 1);
  t.is(events.filter((e) => e.kind === 'state' && e.state === 'error').length, 1, 'reported once');
  t.is(events.filter((e) => e.kind === 'refused').length, 1);
  t.true(existsSync(join(inbox, 'a-broken.csr')));

  // The way cleared: the kept answer is written at the next retry, without asking the station again.
  rmdirSync(join(outbox, 'a-broken.error'));
  await sleep(700);
  await link.scan();
  t.regex(readFileSync(join(outbox, 'a-broken.error'), 'utf8'), /^BAD_CSR /);
  t.is(ledgerEvents(s), afterFirst + 1);
  t.deepEqual(readdirSync(inbox), []);
  t.is(link.status.state, 'polling');
  t.is(link.status.reason, null);
  await link.stop();
});

test('a folder where root.crt goes (a hostile stick) is reported, and the requests on the stick are answered all the same', async (t) => {
  const s = await testStation();
  t.teardown(() => s.close());
  const dir = join(s.dir, 'stick');
  const outbox = join(dir, 'outbox');
  mkdirSync(join(dir, 'inbox'), { recursive: true });
  mkdirSync(join(outbox, 'root.crt', 'x'), { recursive: true });
  writeFileSync(join(dir, 'inbox', 'dev.csr'), csrPem());
  const link = spoolLink(s, dir);
  await settle(link);
  t.is(pemDecodeAll(readFileSync(join(outbox, 'dev.pem'), 'utf8'), 'CERTIFICATE').length, 2);
  t.is(link.status.state, 'error');
  t.regex(link.status.reason ?? '', /cannot write .*root\.crt: .*; requests are answered still$/);
  await link.stop();
});

test('a file first seen with an old mtime is read only after two stable polls and the quiet period', async (t) => {
  const s = await testStation();
  t.teardown(() => s.close());
  const dir = join(s.dir, 'stick');
  const inbox = join(dir, 'inbox');
  mkdirSync(inbox, { recursive: true });
  writeFileSync(join(inbox, 'old.csr'), csrPem());
  const old = new Date(Date.now() - 3_600_000);
  utimesSync(join(inbox, 'old.csr'), old, old);
  const outbox = join(dir, 'outbox');

  const quick = spoolLink(s, dir);
  await quick.scan();
  t.false(existsSync(join(outbox, 'old.pem')), 'not at first sight');
  await quick.scan();
  t.false(existsSync(join(outbox, 'old.pem')), 'not after one stable poll');
  // A second link with the default quiet period (1 s at this poll): polls alone are not enough either.
  const patient = new SpoolLink(s.station, { dir, pollMs: 50 });
  for (let i = 0; i < 4; i++) await patient.scan();
  t.false(existsSync(join(outbox, 'old.pem')), 'not before the quiet period');
  await sleep(1100);
  await patient.scan();
  t.is(pemDecodeAll(readFileSync(join(outbox, 'old.pem'), 'utf8'), 'CERTIFICATE').length, 2);
  await quick.stop();
  await patient.stop();
});

/** Makes a folder read-only for this process: chmod for a plain user, a read-only tmpfs for root (who ignores modes). */
function readOnlyFolders(): { make(dir: string): void; ro(dir: string): void; rw(dir: string): void; drop(dir: string): void } | null {
  if (process.getuid?.() !== 0) {
    const each = (dir: string, mode: number): void => {
      for (const sub of ['inbox', 'outbox', 'done']) if (existsSync(join(dir, sub))) chmodSync(join(dir, sub), mode);
      chmodSync(dir, mode);
    };
    return { make: (dir) => mkdirSync(dir), ro: (dir) => each(dir, 0o555), rw: (dir) => each(dir, 0o755), drop: (dir) => each(dir, 0o755) };
  }
  const probe = mkdtempSync(join(tmpdir(), 'ro-probe-'));
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', probe], { stdio: 'ignore' });
    execFileSync('umount', [probe], { stdio: 'ignore' });
  } catch {
    return null;
  } finally {
    rmdirSync(probe);
  }
  return {
    make: (dir) => {
      mkdirSync(dir);
      execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', dir]);
    },
    ro: (dir) => execFileSync('mount', ['-o', 'remount,ro', dir]),
    rw: (dir) => execFileSync('mount', ['-o', 'remount,rw', dir]),
    drop: (dir) => execFileSync('umount', [dir]),
  };
}

const folders = readOnlyFolders();

(folders ? test : test.skip)('a missing or read-only spool folder shows its reason, nothing on it is handled, and it serves again once writable', async (t) => {
  const s = await testStation();
  t.teardown(() => s.close());
  const dir = join(s.dir, 'stick');
  const link = spoolLink(s, dir);
  await link.scan();
  t.is(link.status.state, 'waiting');
  t.is(link.status.reason, 'no inbox (stick not mounted?)');

  folders!.make(dir);
  t.teardown(() => folders!.drop(dir));
  for (const sub of ['inbox', 'outbox', 'done']) mkdirSync(join(dir, sub));
  writeFileSync(join(dir, 'inbox', 'dev.csr'), csrPem());
  folders!.ro(dir);
  for (let i = 0; i < 5; i++) await link.scan();
  t.is(link.status.state, 'error');
  t.is(link.status.reason, 'read-only');
  t.is(ledgerEvents(s), 0, 'nothing handled that could not be answered');
  t.deepEqual(readdirSync(join(dir, 'inbox')), ['dev.csr']);

  folders!.rw(dir);
  await settle(link);
  t.is(link.status.state, 'polling');
  t.true(existsSync(join(dir, 'outbox', 'dev.pem')));
  t.is(ledgerEvents(s), 1);
  await link.stop();
});
