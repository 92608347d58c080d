/** The real `line-signer serve` process: links from the config and from flags, JSON logs, a clean stop. */
import test from 'ava';
import { spawn } from 'node:child_process';
import { copyFileSync, mkdirSync, readFileSync, readdirSync, renameSync, rmSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { basename, dirname, join } from 'node:path';
import Database from 'better-sqlite3';
import { makeDeviceCsr, pemEncode } from '../src/x509/index.js';
import { BIN, cli, cliAsync } from './helpers/cli.js';
import { TestJig } from './helpers/jig.js';
import { FACTORY, testStation, uuid } from './helpers/pki.js';
import { ptyPair } from './helpers/pty.js';
import { waitFor } from './helpers/served.js';

test('serve runs a serial link from [links] and HTTP and spool from flags, logs JSON lines, and stops on SIGTERM with exit 0', async (t) => {
  const s = await testStation({ extra: '\n[sota]\ngateway = "https://gw.example:8443"\nostree = "https://gw.example:8443/treehub"\n' });
  await s.close(); // the serve process opens the station itself
  const pty = await ptyPair(s.dir, 'serve');
  t.teardown(() => pty.kill());
  writeFileSync(s.configPath, readFileSync(s.configPath, 'utf8').replace('[policy]', `[links]\nserial = [{ path = "${pty.station}" }]\n\n[policy]`));
  const stick = join(s.dir, 'stick');
  mkdirSync(join(stick, 'inbox'), { recursive: true });
  const csrFile = join(stick, 'inbox', 'dev.csr');
  writeFileSync(csrFile, pemEncode(makeDeviceCsr({ deviceId: uuid(), factory: FACTORY, production: true }).der, 'CERTIFICATE REQUEST'));
  const old = new Date(Date.now() - 10_000);
  utimesSync(csrFile, old, old);

  const child = spawn(process.execPath, [BIN, 'serve', '--config', s.configPath, '--http', '127.0.0.1:0', '--spool', stick], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (out += d));
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  t.teardown(() => child.kill('SIGKILL'));
  await waitFor(() => out.includes('"msg":"serving"'), 15_000);
  const logs = (): Array<Record<string, unknown>> => out.trim().split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l));

  // serial, from the config
  await waitFor(() => logs().some((l) => l.link === `serial:${pty.station}` && l.state === 'open'), 10_000);
  const jig = await TestJig.open(pty.jig);
  const r = await jig.request('SIGN', 'a1', Buffer.from(makeDeviceCsr({ deviceId: uuid(), factory: FACTORY, production: true }).der));
  t.is(r.type, 'CERT');
  await jig.close();
  // spool, from a flag
  await waitFor(() => readdirSync(join(stick, 'outbox')).includes('dev.pem'), 10_000);
  // http, from a flag: the bound port is in its state line
  const listening = logs().find((l) => typeof l.link === 'string' && (l.link as string).startsWith('http:') && l.state === 'listening');
  const port = Number(String(listening!.detail).split(':').pop());
  const status = await new Promise<number>((resolve) => request({ host: '127.0.0.1', port, path: '/sign', method: 'HEAD', agent: false }, (res) => resolve(res.statusCode!)).end());
  t.is(status, 200);

  child.kill('SIGTERM');
  t.is(await exited, 0);
  const all = logs();
  t.true(all.some((l) => l.msg === 'issued' && l.link === `serial:${pty.station}`));
  t.true(all.some((l) => l.msg === 'issued' && String(l.link).startsWith('spool:')));
  t.true(all.some((l) => l.msg === 'stopped'));
  t.false(out.includes('    at '), 'no stack trace');
});

test('a link that cannot start stops serve with its code, and the station is closed as at any stop: a stop row, no socket or owner file left', async (t) => {
  const s = await testStation(); // no [sota] table: the HTTP link refuses to start
  await s.close();
  const r = await new Promise<{ code: number | null; err: string }>((resolve) => {
    const child = spawn(process.execPath, [BIN, 'serve', '--config', s.configPath, '--http', '127.0.0.1:0', '--json'], { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    child.stderr.on('data', (d) => (err += d));
    child.once('close', (code) => resolve({ code, err }));
  });
  t.is(r.code, 64);
  t.regex(r.err, /^ERROR CONFIG sota: the HTTP link needs a \[sota\] table/m);
  const db = new Database(s.config.station.ledger, { readonly: true });
  const kinds = (db.prepare('SELECT kind FROM events ORDER BY seq DESC LIMIT 2').all() as Array<{ kind: string }>).map((e) => e.kind);
  db.close();
  t.deepEqual(kinds, ['stop', 'start'], 'the start has its stop');
  const left = readdirSync(dirname(s.config.station.ledger)).filter((f) => f.endsWith('.sock') || f.endsWith('.owner'));
  t.deepEqual(left, []);
});

test("serve's log shows each action that came through its control channel, done or refused, with who did it", async (t) => {
  const s = await testStation();
  await s.close();
  const { child, exited, logs } = await serveProcess(t, s);

  const opened = await cliAsync(['order', 'open', 'WO-7', '--quantity', '2', '--operator', 'ana', '--config', s.configPath]);
  t.is(opened.status, 0, opened.stderr);
  const refused = await cliAsync(['ledger', 'revoke', 'no-such-device', '--reason', 'line 3 swapped the board', '--operator', 'bo', '--config', s.configPath]);
  t.not(refused.status, 0);
  const csrFile = join(s.dir, 'by-hand.csr');
  const deviceId = uuid();
  writeFileSync(csrFile, makeDeviceCsr({ deviceId, factory: FACTORY, production: true }).der);
  const signed = await cliAsync(['sign', csrFile, '--operator', 'cy', '--config', s.configPath]);
  t.is(signed.status, 0, signed.stderr);
  await waitFor(() => logs().filter((l) => typeof l.op === 'string').length >= 3, 10_000);

  const actions = logs().filter((l) => typeof l.op === 'string');
  t.deepEqual(actions.map((l) => [l.op, l.operator]), [['order-open', 'ana'], ['revoke', 'bo'], ['sign', 'cy']]);
  t.regex(String(actions[0]!.msg), /^ana opened work order WO-7: 0 of 2; opened \S+ by ana; open$/);
  t.regex(String(actions[1]!.msg), /^bo: revoke refused: [A-Z_]+ .*no-such-device/);
  t.is(actions[1]!.code, /^ERROR ([A-Z_]+) /m.exec(refused.stderr)?.[1]);
  t.regex(String(actions[2]!.msg), new RegExp(`^cy signed device ${deviceId} by hand$`));

  child.kill('SIGTERM');
  t.is(await exited, 0);
});

/** A served station (spool link) as its own process, with its JSON log lines. */
async function serveProcess(t: import('ava').ExecutionContext, s: { configPath: string; dir: string }) {
  const stick = join(s.dir, 'stick');
  mkdirSync(stick, { recursive: true });
  const child = spawn(process.execPath, [BIN, 'serve', '--config', s.configPath, '--spool', stick, '--json'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (out += d));
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  t.teardown(() => child.kill('SIGKILL'));
  await waitFor(() => out.includes('"msg":"serving"'), 15_000);
  const logs = (): Array<Record<string, unknown>> => out.trim().split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l));
  return { child, exited, logs, out: () => out };
}

async function signByHand(s: { configPath: string; dir: string }): Promise<{ status: number | null; stderr: string }> {
  const file = join(s.dir, `${uuid()}.csr`);
  writeFileSync(file, makeDeviceCsr({ deviceId: uuid(), factory: FACTORY, production: true }).der);
  return cliAsync(['sign', file, '--config', s.configPath]);
}

test('the ledger file deleted under a serving station: it stops within seconds, saves the ledger it wrote beside the path, and that copy serves again once moved back', async (t) => {
  const s = await testStation();
  await s.close();
  const ledger = s.config.station.ledger;
  const sv = await serveProcess(t, s);
  for (let i = 0; i < 2; i++) t.is((await signByHand(s)).status, 0);
  for (const f of readdirSync(dirname(ledger))) if (f.startsWith(basename(ledger))) rmSync(join(dirname(ledger), f), { force: true });
  t.is(await sv.exited, 1);
  const lines = sv.logs();
  t.true(lines.some((l) => /^ERROR LEDGER the ledger file .* was deleted while this station had it open/.test(String(l.msg))), sv.out());
  const saved = lines.find((l) => typeof l.saved === 'string')?.saved as string;
  t.truthy(saved, sv.out());
  t.true(saved.startsWith(`${ledger}.saved-`));
  t.false(sv.out().includes('    at '), 'no stack trace');
  // The copy holds both certificates and the stop, and the token vouches for it once it is back at the path.
  renameSync(saved, ledger);
  const v = cli(['ledger', 'verify', '--config', s.configPath]);
  t.is(v.status, 0, v.stderr + v.stdout);
  const db = new Database(ledger, { readonly: true });
  t.is((db.prepare('SELECT count(*) AS n FROM issuances').get() as { n: number }).n, 2);
  db.close();
  t.is((await signByHand(s)).status, 0);
});

test('another file moved over a serving station\'s ledger: operator commands through it are refused, it stops and saves its own ledger; the file moved in is refused at the next start', async (t) => {
  const s = await testStation();
  await s.close();
  const ledger = s.config.station.ledger;
  const older = join(s.dir, 'older.db');
  t.is(cli(['ledger', 'backup', older, '--config', s.configPath]).status, 0);
  const sv = await serveProcess(t, s);
  t.is((await signByHand(s)).status, 0);
  renameSync(older, ledger);
  const exp = await cliAsync(['export', '--config', s.configPath, '--out', join(s.dir, 'out')]);
  // Refused by the station, or (once it stopped) by the file's own checks: never exported from the file moved in.
  t.not(exp.status, 0, exp.stdout);
  t.regex(exp.stderr, /^ERROR LEDGER /m);
  t.is(await sv.exited, 1);
  // SQLite leaves a moved file's WAL at the path: the station emptied it into its own file first, so the file moved in does not take its pages.
  t.is(statSync(`${ledger}-wal`, { throwIfNoEntry: false })?.size ?? 0, 0);
  const saved = sv.logs().find((l) => typeof l.saved === 'string')?.saved as string;
  t.truthy(saved, sv.out());
  t.true(sv.logs().some((l) => /was replaced by another file while this station had it open/.test(String(l.msg))));
  // The file moved in is behind the token's checkpoint: refused, nothing signed into it.
  const refused = await signByHand(s);
  t.not(refused.status, 0);
  t.regex(refused.stderr, /^ERROR LEDGER /m);
  renameSync(saved, ledger);
  const v = cli(['ledger', 'verify', '--config', s.configPath]);
  t.is(v.status, 0, v.stderr + v.stdout);
  t.is((await signByHand(s)).status, 0);
});

test("the ledger's folder deleted under a serving station: no crash, the folder is made again and the ledger it wrote saved there", async (t) => {
  const s = await testStation();
  await s.close();
  // The ledger in a folder of its own.
  mkdirSync(join(s.dir, 'led'));
  renameSync(s.config.station.ledger, join(s.dir, 'led', 'ledger.db'));
  writeFileSync(s.configPath, readFileSync(s.configPath, 'utf8').replace(/^ledger = .*$/m, 'ledger = "led/ledger.db"'));
  const ledger = join(s.dir, 'led', 'ledger.db');
  const sv = await serveProcess(t, s);
  for (let i = 0; i < 2; i++) t.is((await signByHand(s)).status, 0);
  rmSync(dirname(ledger), { recursive: true, force: true });
  t.is(await sv.exited, 1);
  t.false(sv.out().includes('    at '), `no stack trace: ${sv.out()}`);
  const saved = sv.logs().find((l) => typeof l.saved === 'string')?.saved as string;
  t.truthy(saved, sv.out());
  t.is(dirname(saved), dirname(ledger));
  renameSync(saved, ledger);
  const v = cli(['ledger', 'verify', '--config', s.configPath]);
  t.is(v.status, 0, v.stderr + v.stdout);
  const db = new Database(ledger, { readonly: true });
  t.is((db.prepare('SELECT count(*) AS n FROM issuances').get() as { n: number }).n, 2);
  db.close();
});

test("another ledger's content copied over a serving station's (cp: the same inode): it stops, writes nothing more into it, and says to restore a backup", async (t) => {
  const other = await testStation();
  await other.close();
  const s = await testStation();
  await s.close();
  const ledger = s.config.station.ledger;
  const sv = await serveProcess(t, s);
  t.is((await signByHand(s)).status, 0);
  const before = readFileSync(other.config.station.ledger);
  copyFileSync(other.config.station.ledger, ledger);
  t.is(await sv.exited, 1);
  t.true(sv.logs().some((l) => /^ERROR LEDGER the ledger file .* was overwritten with another file's content .*Restore the newest backup/.test(String(l.msg))), sv.out());
  t.false(sv.logs().some((l) => typeof l.saved === 'string'), 'no copy of a mix is offered as the ledger');
  t.false(sv.out().includes('    at '));
  // The file copied in got no stop row or checkpoint from this station.
  const db = new Database(ledger, { readonly: true });
  t.is((db.prepare("SELECT value FROM settings WHERE key = 'ledger_id'").get() as { value: string }).value, (new Database(other.config.station.ledger, { readonly: true }).prepare("SELECT value FROM settings WHERE key = 'ledger_id'").get() as { value: string }).value);
  db.close();
  t.true(before.length > 0);
});

test("an older copy of the same ledger copied over a serving station's (cp: the same inode and ledger id): it stops, and leaves the file as it found it or names what it did not write", async (t) => {
  const s = await testStation();
  await s.close();
  const ledger = s.config.station.ledger;
  const older = join(s.dir, 'older.db');
  const sv = await serveProcess(t, s);
  t.is((await signByHand(s)).status, 0);
  t.is(cli(['ledger', 'backup', older, '--config', s.configPath]).status, 0);
  // Signed after the copy, and past a checkpoint the token holds: the copy lacks them.
  for (let i = 0; i < 3; i++) t.is((await signByHand(s)).status, 0);
  await new Promise((r) => setTimeout(r, 1500));
  copyFileSync(older, ledger);
  const exited = await Promise.race([sv.exited, new Promise<'running'>((r) => setTimeout(() => r('running'), 10_000))]);
  t.is(exited, 1, sv.out());
  const said = sv.logs().map((l) => String(l.msg)).find((m) => m.startsWith('ERROR LEDGER the ledger file'));
  t.regex(said ?? '', /was overwritten with another file's content .*The file is left as it was found|was changed outside line-signer while this station had it: .*nothing more is written or signed/, sv.out());
  t.false(sv.out().includes('    at '));
  t.false(sv.logs().some((l) => typeof l.saved === 'string'), 'no copy of a mix is offered as the ledger');
  // Left as found: exactly the copy's bytes, and no WAL of the station's beside it to play into them.
  if (/overwritten/.test(said ?? '')) {
    t.true(readFileSync(ledger).equals(readFileSync(older)), 'the file copied in is as it was copied');
    t.is(statSync(`${ledger}-wal`, { throwIfNoEntry: false })?.size ?? 0, 0);
  }
  // The next start refuses it with the ledger's code, never INTERNAL.
  const refused = await signByHand(s);
  t.not(refused.status, 0);
  t.regex(refused.stderr, /^ERROR LEDGER not signed: /m, sv.out());
});

test("a station killed right after another ledger was moved over its file: the next start names the WAL it left beside that file, writes nothing, and once it is moved away the file reads as it is", async (t) => {
  const other = await testStation();
  await other.close();
  const s = await testStation();
  await s.close();
  const ledger = s.config.station.ledger;
  const sv = await serveProcess(t, s);
  for (let i = 0; i < 3; i++) t.is((await signByHand(s)).status, 0);
  const wal = readFileSync(`${ledger}-wal`);
  t.true(wal.length > 0, 'the station has commits in its WAL');
  // Within the 2 s the station takes to notice, then killed: SQLite leaves its WAL at the path.
  renameSync(ledger, join(s.dir, 'moved-away.db'));
  renameSync(other.config.station.ledger, ledger);
  sv.child.kill('SIGKILL');
  await sv.exited;
  const before = readFileSync(ledger);
  const refused = await signByHand(s);
  t.not(refused.status, 0);
  t.regex(refused.stderr, new RegExp(`^ERROR LEDGER not signed: ${ledger}-wal is the WAL that pid ${sv.child.pid} .* left for the file it had open at ${ledger}, and another file is there now .*Nothing was opened or written\\. Move ${ledger}-wal and ${ledger}-shm away`, 'm'));
  t.true(readFileSync(ledger).equals(before), 'nothing was written into the file');
  t.true(statSync(`${ledger}-wal`).size > 0, 'the WAL is left for the operator to move');
  // Moved away as told: the file is another station's ledger, refused as such (never "damaged", never INTERNAL).
  renameSync(`${ledger}-wal`, join(s.dir, 'left.wal'));
  rmSync(`${ledger}-shm`, { force: true });
  const again = await signByHand(s);
  t.not(again.status, 0);
  t.regex(again.stderr, /^ERROR LEDGER not signed: /m);
  t.notRegex(again.stderr, /damaged|malformed/);
  t.true(readFileSync(ledger).equals(before), 'the other station\'s file is still as it was');
  // The killed station's own file put back with its WAL: that is a crash, recovered as any other.
  renameSync(ledger, join(s.dir, 'other-back.db'));
  renameSync(join(s.dir, 'moved-away.db'), ledger);
  writeFileSync(`${ledger}-wal`, wal);
  const back = await signByHand(s);
  t.is(back.status, 0, back.stderr);
  const db = new Database(ledger, { readonly: true });
  t.is((db.prepare('SELECT count(*) AS n FROM issuances').get() as { n: number }).n, 4, 'the three in the WAL and the new one');
  db.close();
});

test('rows deleted from the ledger by another program while the station serves: it stops by itself within seconds, writes no stop row or checkpoint over them, and the next start refuses the file', async (t) => {
  const s = await testStation();
  await s.close();
  const ledger = s.config.station.ledger;
  const sv = await serveProcess(t, s);
  for (let i = 0; i < 3; i++) t.is((await signByHand(s)).status, 0);
  // Past the checkpoint that covers them (one a second), so the token vouches for what is deleted.
  const covered = (): boolean => {
    const look = new Database(ledger, { readonly: true });
    try {
      const r = look.prepare('SELECT (SELECT max(issuance_seq) FROM checkpoints) AS c, (SELECT max(seq) FROM issuances) AS i').get() as { c: number | null; i: number };
      return r.c !== null && r.c >= r.i;
    } finally {
      look.close();
    }
  };
  await waitFor(covered, 10_000);
  await new Promise((r) => setTimeout(r, 500));
  const edit = new Database(ledger);
  edit.exec('DELETE FROM issuances WHERE seq = (SELECT max(seq) FROM issuances)');
  const eventsBefore = (edit.prepare('SELECT max(seq) AS n FROM events').get() as { n: number }).n;
  edit.close();
  const exited = await Promise.race([sv.exited, new Promise<'running'>((r) => setTimeout(() => r('running'), 10_000))]);
  t.is(exited, 1, sv.out());
  t.true(sv.logs().some((l) => /^ERROR LEDGER the ledger file was changed outside line-signer while this station had it: .*; nothing more is written or signed: run `line-signer ledger verify`/.test(String(l.msg))), sv.out());
  t.false(sv.logs().some((l) => typeof l.saved === 'string'));
  const db = new Database(ledger, { readonly: true });
  t.is((db.prepare('SELECT max(seq) AS n FROM events').get() as { n: number }).n, eventsBefore, 'no stop row after the edit');
  db.close();
  const refused = await signByHand(s);
  t.not(refused.status, 0);
  t.regex(refused.stderr, /^ERROR LEDGER not signed: /m);
});

test('serve with nothing to serve says USAGE once the token took the PIN, and writes no start or stop row', async (t) => {
  const s = await testStation();
  await s.close();
  const count = (): number => {
    const db = new Database(s.config.station.ledger, { readonly: true });
    try {
      return (db.prepare('SELECT count(*) AS n FROM events').get() as { n: number }).n;
    } finally {
      db.close();
    }
  };
  const before = count();
  const r = cli(['serve', '--config', s.configPath, '--json']);
  t.is(r.status, 64, r.stderr);
  t.regex(r.stderr, /^ERROR USAGE no links: give --serial, --http or --spool/m);
  t.is(count(), before, 'no start or stop row');
});
