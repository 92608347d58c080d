/**
 * Production control: work orders and caps, rework and revocation that
 * hold, a clock that cannot brick the line, and who did what. Each refusal
 * is tried through `line-signer sign` (the CLI, with the station's clock
 * set by faketime where the clock matters) and through a J1 link, and each
 * asserts its code, that nothing was issued, and the events with their
 * operators. The tests with a station served in this process run serially,
 * before the others: those run the CLI synchronously, which would hold this
 * process's event loop (and so that station) meanwhile.
 */
import test, { type ExecutionContext } from 'ava';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { generateKeyPairSync, type KeyObject } from 'node:crypto';
import { SqliteLedger, type LogRow } from '../src/ledger/index.js';
import { serveControl } from '../src/cli/owner.js';
import { makeDeviceCsr } from '../src/x509/index.js';
import { BIN, cli, cliAsync } from './helpers/cli.js';
import { deviceFields, ptreeJson, send, SOTA } from './helpers/http.js';
import { HttpLink } from '../src/links/http.js';
import { served, type Served } from './helpers/served.js';
import { FACTORY, reserveStationTokens, type StationOptions, testStation, type TestStation, uuid } from './helpers/pki.js';

reserveStationTokens(20);

const newKey = (): KeyObject => generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;
const csrFor = (deviceId: string, key?: KeyObject): Uint8Array => makeDeviceCsr({ deviceId, factory: FACTORY, production: true }, key).der;

function logRows(configPath: string, ...flags: string[]): LogRow[] {
  const r = cli(['log', '--config', configPath, '--json', ...flags]);
  return r.stdout.trim() ? r.stdout.trim().split('\n').map((l) => JSON.parse(l) as LogRow) : [];
}

function issuedCount(s: { config: TestStation['config'] }): number {
  const l = new SqliteLedger(s.config.station.ledger, s.config.station.id, { readonly: true });
  try {
    return l.issuedCount();
  } finally {
    l.close();
  }
}

/** `line-signer sign` on a CSR file, optionally with the station's clock moved by faketime. */
function signCli(s: { configPath: string; dir: string }, csr: Uint8Array, opts: { fake?: string; flags?: string[] } = {}): { status: number | null; stderr: string } {
  const file = join(s.dir, `${uuid()}.csr`);
  writeFileSync(file, csr);
  const args = [BIN, 'sign', file, '--config', s.configPath, ...(opts.flags ?? [])];
  const r = opts.fake
    ? spawnSync('faketime', [opts.fake, process.execPath, ...args], { encoding: 'utf8', timeout: 60_000 })
    : spawnSync(process.execPath, args, { encoding: 'utf8', timeout: 60_000 });
  return { status: r.status, stderr: r.stderr };
}

/** A CLI command with the clock moved. */
function cliAt(fake: string, args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync('faketime', [fake, process.execPath, BIN, ...args], { encoding: 'utf8', timeout: 60_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

function expectCliRefusal(t: ExecutionContext, r: { status: number | null; stderr: string }, code: string, message?: RegExp): void {
  t.is(r.status, 2, r.stderr);
  t.regex(r.stderr, new RegExp(`^ERROR ${code} `, 'm'));
  if (message) t.regex(r.stderr, message);
}

/** A station served on a J1 link in this process, with its control channel so that the CLI's operator commands reach it. */
async function servedWithControl(opts: StationOptions = {}, clock?: () => Date): Promise<Served> {
  const sv = await served(opts, clock ? { clock } : {});
  const control = await serveControl(sv.s.config, sv.s);
  const close = sv.close.bind(sv);
  sv.close = async () => {
    await control.close();
    await close();
  };
  return sv;
}

test.serial('an operator command run while serve starts (lock taken, socket not yet listening) goes through the station once it listens', async (t) => {
  const sv = await served({});
  let control: Awaited<ReturnType<typeof serveControl>> | null = null;
  t.teardown(async () => {
    await control?.close();
    await sv.close();
  });
  const t0 = Date.now();
  // The socket listens only once the command is waiting for the lock (a fixed 1.5 s was not always enough for it to start under load).
  let waiting = (): void => undefined;
  const saidWaiting = new Promise<void>((r) => (waiting = r));
  const command = cliAsync(['order', 'open', 'WO-START', '--quantity', '5', '--config', sv.s.configPath, '--operator', 'olga'], {
    onStderr: (soFar) => /waiting for the ledger/.test(soFar) && waiting(),
  });
  await Promise.race([saidWaiting, command]);
  control = await serveControl(sv.s.config, sv.s);
  const r = await command;
  t.is(r.status, 0, r.stderr);
  t.regex(r.stderr, /waiting for the ledger/);
  t.true(Date.now() - t0 < 15_000, `took ${Date.now() - t0} ms`);
  t.true(logRows(sv.s.configPath, '--order', 'WO-START').some((row) => row.kind === 'order_open' && row.operator === 'olga'));
});

test.serial('a work order of 50 with a jig sending 80 CSRs yields exactly 50 certificates and 30 QUOTA_EXCEEDED; log --order lists the 50 with the operator', async (t) => {
  const sv = await servedWithControl({ policy: 'require_order = true' });
  t.teardown(() => sv.close());
  const open = await cliAsync(['order', 'open', 'WO-50', '--quantity', '50', '--config', sv.s.configPath, '--operator', 'olga']);
  t.is(open.status, 0, open.stderr);
  const codes: Record<string, number> = {};
  for (let i = 0; i < 80; i++) {
    const r = await sv.jig.request('SIGN', `d${i}`, Buffer.from(csrFor(uuid())));
    const k = r.type === 'CERT' ? 'CERT' : r.code!;
    codes[k] = (codes[k] ?? 0) + 1;
    if (r.type === 'ERR') t.regex(r.message!, /work order WO-50 is used up \(50 of 50\)/);
  }
  t.deepEqual(codes, { CERT: 50, QUOTA_EXCEEDED: 30 });
  t.is(issuedCount(sv.s), 50);
  const rows = logRows(sv.s.configPath, '--order', 'WO-50');
  const issued = rows.filter((r) => r.type === 'issuance');
  t.is(issued.length, 50);
  t.true(issued.every((r) => r.operator === 'olga' && r.work_order === 'WO-50'));
  t.true(rows.some((r) => r.kind === 'order_open' && r.operator === 'olga'));
  const list = await cliAsync(['order', 'list', '--config', sv.s.configPath]);
  t.regex(list.stdout, /WO-50: 50 of 50; opened .* by olga; open, used up/);
  // HEAD /sign's health says so too: the stock client stops before making a key.
  t.is(sv.s.station.health()?.code, 'QUOTA_EXCEEDED');
  const next = await cliAsync(['order', 'open', 'WO-51', '--quantity', '1', '--config', sv.s.configPath, '--operator', 'olga']);
  t.is(next.status, 0, next.stderr);
  t.is(sv.s.station.health(), null);
  t.is((await sv.jig.request('SIGN', 'after', Buffer.from(csrFor(uuid())))).type, 'CERT');
});

test('the order refusals through line-signer sign: no open order under require_order, order used up, another hardware id, the rate cap', async (t) => {
  const s = await testStation({ policy: 'require_order = true\nmax_per_minute = 3' });
  await s.close();
  expectCliRefusal(t, signCli(s, csrFor(uuid())), 'QUOTA_EXCEEDED', /no open work order/);
  t.is(cli(['order', 'open', 'WO-7', '--quantity', '2', '--hardware-id', 'imx8mm', '--config', s.configPath, '--operator', 'pat']).status, 0);
  expectCliRefusal(t, signCli(s, csrFor(uuid()), { flags: ['--hardware-id', 'rpi4'] }), 'POLICY_SUBJECT', /hardware id "rpi4" is not work order WO-7's/);
  t.is(signCli(s, csrFor(uuid()), { flags: ['--hardware-id', 'imx8mm'] }).status, 0);
  t.is(signCli(s, csrFor(uuid())).status, 0);
  expectCliRefusal(t, signCli(s, csrFor(uuid())), 'QUOTA_EXCEEDED', /WO-7 is used up/);
  t.is(cli(['order', 'open', 'WO-8', '--quantity', '10', '--config', s.configPath, '--operator', 'pat']).status, 0);
  t.is(signCli(s, csrFor(uuid())).status, 0);
  expectCliRefusal(t, signCli(s, csrFor(uuid())), 'QUOTA_EXCEEDED', /more than 3 certificates in the last minute/);
  t.is(issuedCount(s), 3);
  const rows = logRows(s.configPath);
  t.deepEqual(
    rows.filter((r) => r.kind === 'rejection').map((r) => r.code),
    ['QUOTA_EXCEEDED', 'POLICY_SUBJECT', 'QUOTA_EXCEEDED', 'QUOTA_EXCEEDED'],
  );
  t.true(rows.filter((r) => r.kind === 'order_open').every((r) => r.operator === 'pat'));
  t.is(cli(['ledger', 'verify', '--config', s.configPath]).status, 0);
});

test.serial('revoked and reworked devices through J1: revoked gets DUPLICATE_DEVICE until a grant; the old key is refused after a re-issue', async (t) => {
  const sv = await servedWithControl();
  t.teardown(() => sv.close());
  const id = uuid();
  const k1 = newKey();
  const first = csrFor(id, k1);
  t.is((await sv.jig.request('SIGN', 'a', Buffer.from(first))).type, 'CERT');
  t.is((await cliAsync(['ledger', 'revoke', id, '--reason', 'scrapped', '--config', sv.s.configPath, '--operator', 'rita'])).status, 0);
  const before = issuedCount(sv.s);
  for (const csr of [first, csrFor(id, k1), csrFor(id, newKey())]) {
    const r = await sv.jig.request('SIGN', 'b', Buffer.from(csr));
    t.is(r.code, 'DUPLICATE_DEVICE');
    t.regex(r.message!, /revoked|scrapped/);
  }
  t.is(issuedCount(sv.s), before, 'nothing issued to a revoked device');
  t.is((await cliAsync(['ledger', 'allow-reissue', id, '--reason', 'repaired', '--config', sv.s.configPath, '--operator', 'sam'])).status, 0);
  const k2 = newKey();
  const second = await sv.jig.request('SIGN', 'c', Buffer.from(csrFor(id, k2)));
  t.is(second.type, 'CERT');
  // The grant is used up, and the old key is no longer accepted.
  const old = await sv.jig.request('SIGN', 'd', Buffer.from(csrFor(id, k1)));
  t.is(old.code, 'DUPLICATE_DEVICE');
  // Not "grant a re-issue": no grant lets a replaced key back.
  t.regex(old.message!, /this key was device .*'s before a re-issue replaced it: an old key is refused for good/);
  t.is((await sv.jig.request('SIGN', 'e', Buffer.from(first))).code, 'DUPLICATE_DEVICE', 'the old certificate is not handed out again');
  // Both certificates stay, linked.
  const l = new SqliteLedger(sv.s.config.station.ledger, sv.s.config.station.id, { readonly: true });
  const rows = l.issuancesOf(id);
  l.close();
  t.is(rows.length, 2);
  t.is(rows[1]!.supersedes, rows[0]!.seq);
  const log = logRows(sv.s.configPath, '--device', id);
  t.true(log.some((r) => r.kind === 'revocation' && r.operator === 'rita'));
  t.true(log.some((r) => r.kind === 'reissue_granted' && r.operator === 'sam'));
  t.true(log.some((r) => r.kind === 'rejection' && r.code === 'DUPLICATE_DEVICE'));
});

test('revocation and re-issue through line-signer sign; revoke takes a serial and refuses what the ledger never issued', async (t) => {
  const s = await testStation();
  await s.close();
  const id = uuid();
  const k1 = newKey();
  t.is(signCli(s, csrFor(id, k1)).status, 0);
  const l = new SqliteLedger(s.config.station.ledger, s.config.station.id, { readonly: true });
  const serial = l.issuancesOf(id)[0]!.serial;
  l.close();
  const unknown = cli(['ledger', 'revoke', 'deadbeef', '--reason', 'typo', '--config', s.configPath]);
  t.is(unknown.status, 64);
  const bySerial = cli(['ledger', 'revoke', serial.toUpperCase(), '--reason', 'returned', '--config', s.configPath, '--operator', 'ute']);
  t.is(bySerial.status, 0, bySerial.stderr);
  t.regex(bySerial.stdout, new RegExp(`device ${id} revoked`));
  expectCliRefusal(t, signCli(s, csrFor(id, newKey())), 'DUPLICATE_DEVICE', /revoked \("returned"\)|revoked \(returned\)/);
  t.is(cli(['ledger', 'allow-reissue', id, '--reason', 'back', '--config', s.configPath]).status, 0);
  // The grant is for a new key: the revoked key (leaked, say) does not come back with it, and the grant still stands.
  expectCliRefusal(t, signCli(s, csrFor(id, k1)), 'DUPLICATE_DEVICE', /was revoked \("returned"\): its re-issue is for a new key, and the revoked one is refused|was revoked \(returned\): its re-issue is for a new key/);
  t.is(issuedCount(s), 1);
  const k2 = newKey();
  t.is(signCli(s, csrFor(id, k2)).status, 0);
  expectCliRefusal(t, signCli(s, csrFor(id, k1)), 'DUPLICATE_DEVICE', /an old key is refused for good/);
  t.is(issuedCount(s), 2);
  // A later grant (the board reworked again) is for a new key too: neither the revoked key nor the current one.
  t.is(cli(['ledger', 'allow-reissue', id, '--reason', 'reworked again', '--config', s.configPath]).status, 0);
  expectCliRefusal(t, signCli(s, csrFor(id, k1)), 'DUPLICATE_DEVICE', /an old key is refused for good/);
  expectCliRefusal(t, signCli(s, csrFor(id, k2)), 'DUPLICATE_DEVICE', /re-issue for a new key is pending/);
  t.is(issuedCount(s), 2);
  t.is(signCli(s, csrFor(id, newKey())).status, 0);
  t.is(issuedCount(s), 3);
  t.is(cli(['ledger', 'verify', '--config', s.configPath]).status, 0);
});

test('a revocation of a device issued while the clock ran ahead still revokes it in the batch (the mark counts seqs, not times)', async (t) => {
  const s = await testStation();
  await s.close();
  const id = uuid();
  t.is(signCli(s, csrFor(id), { fake: '+2 hours' }).status, 0);
  t.is(cli(['clock', 'confirm', '--reason', 'RTC put right', '--config', s.configPath]).status, 0);
  t.is(cli(['ledger', 'revoke', id, '--reason', 'scrapped', '--config', s.configPath]).status, 0);
  t.is(cli(['ledger', 'allow-reissue', id, '--reason', 'new board', '--config', s.configPath]).status, 0);
  t.is(signCli(s, csrFor(id, newKey())).status, 0);
  const out = join(s.dir, 'out-ahead');
  mkdirSync(out);
  const e = cli(['export', '--config', s.configPath, '--out', out]);
  t.is(e.status, 0, e.stderr);
  const lines = readFileSync(join(out, readdirSync(out).find((f) => f.endsWith('.lsbatch'))!), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { type: string; seq?: number; device_id?: string; after_seq?: number });
  const seqs = lines.filter((l) => l.type === 'issuance' && l.device_id === id).map((l) => l.seq);
  t.deepEqual(seqs, [1, 2]);
  t.is(lines.find((l) => l.type === 'revocation')?.after_seq, 1, 'the mark revokes the certificate issued before it, whatever its time, and not the re-issue after it');
  t.is(cli(['ledger', 'verify', '--config', s.configPath]).status, 0);
});

test('the clock through line-signer sign (faketime): behind and far ahead are CLOCK, and clock confirm gets the line going in both directions', async (t) => {
  const s = await testStation();
  await s.close();
  // A wrong RTC a year ahead issues once...
  const ahead = signCli(s, csrFor(uuid()), { fake: '+365 days' });
  t.is(ahead.status, 0, ahead.stderr);
  // ...then with the clock put right, every request is CLOCK: behind the last issuance.
  expectCliRefusal(t, signCli(s, csrFor(uuid())), 'CLOCK', /behind the last issuance.*clock confirm/);
  const confirm = cli(['clock', 'confirm', '--reason', 'RTC reset after a power cut; checked against a phone', '--config', s.configPath, '--operator', 'vic']);
  t.is(confirm.status, 0, confirm.stderr);
  t.is(signCli(s, csrFor(uuid())).status, 0);
  // Idle for 40 days (or a clock run far ahead): more than clock_gap_days ahead.
  expectCliRefusal(t, signCli(s, csrFor(uuid()), { fake: '+40 days' }), 'CLOCK', /more than 30 days ahead/);
  t.is(cliAt('+40 days', ['clock', 'confirm', '--reason', 'back from the summer shutdown', '--config', s.configPath, '--operator', 'vic']).status, 0);
  t.is(signCli(s, csrFor(uuid()), { fake: '+40 days' }).status, 0);
  const rows = logRows(s.configPath);
  t.is(rows.filter((r) => r.kind === 'clock_confirm' && r.operator === 'vic').length, 2);
  t.is(rows.filter((r) => r.kind === 'rejection' && r.code === 'CLOCK').length, 2);
  t.is(issuedCount(s), 3);
});

test.serial('the clock through a J1 link: behind, far ahead, and clock confirm', async (t) => {
  let now = new Date(Date.now() + 365 * 86_400_000);
  const sv = await servedWithControl({}, () => now);
  t.teardown(() => sv.close());
  t.is((await sv.jig.request('SIGN', 'a', Buffer.from(csrFor(uuid())))).type, 'CERT');
  now = new Date();
  const behind = await sv.jig.request('SIGN', 'b', Buffer.from(csrFor(uuid())));
  t.is(behind.code, 'CLOCK');
  t.is(sv.s.station.health()?.code, 'CLOCK');
  // The serving station's operator confirms its clock (the confirmation's time is the real one here).
  t.is((await cliAsync(['clock', 'confirm', '--reason', 'checked', '--config', sv.s.configPath, '--operator', 'wes'])).status, 0);
  t.is((await sv.jig.request('SIGN', 'c', Buffer.from(csrFor(uuid())))).type, 'CERT');
  now = new Date(Date.now() + 40 * 86_400_000);
  const ahead = await sv.jig.request('SIGN', 'd', Buffer.from(csrFor(uuid())));
  t.is(ahead.code, 'CLOCK');
  t.regex(ahead.message!, /more than 30 days ahead/);
});

test('a clock set 20 days ahead once, with max_per_minute: put right and confirmed, the line goes on (future rows are not "the last minute")', async (t) => {
  const s = await testStation({ policy: 'max_per_minute = 3' });
  await s.close();
  t.is(signCli(s, csrFor(uuid())).status, 0);
  for (let i = 0; i < 3; i++) t.is(signCli(s, csrFor(uuid()), { fake: '+20 days' }).status, 0);
  expectCliRefusal(t, signCli(s, csrFor(uuid())), 'CLOCK', /behind the last issuance/);
  t.is(cli(['clock', 'confirm', '--reason', 'RTC fixed', '--config', s.configPath]).status, 0);
  const after = signCli(s, csrFor(uuid()));
  t.is(after.status, 0, after.stderr);
});

test('a pending re-issue grant refuses the old key at once; the new key gets one certificate', async (t) => {
  const s = await testStation();
  await s.close();
  const id = uuid();
  const k1 = newKey();
  t.is(signCli(s, csrFor(id, k1)).status, 0);
  t.is(cli(['ledger', 'allow-reissue', id, '--reason', 'new secure element', '--config', s.configPath]).status, 0);
  expectCliRefusal(t, signCli(s, csrFor(id, k1)), 'DUPLICATE_DEVICE', /re-issue for a new key is pending/);
  t.is(signCli(s, csrFor(id, newKey())).status, 0);
  expectCliRefusal(t, signCli(s, csrFor(id, newKey())), 'DUPLICATE_DEVICE', /another key/);
  t.is(issuedCount(s), 2);
});

test('names are text and a path segment: "." and ".." are refused; log shows a name quoted', async (t) => {
  const s = await testStation();
  await s.close();
  for (const name of ['.', '..']) expectCliRefusal(t, signCli(s, csrFor(uuid()), { flags: ['--name', name] }), 'BAD_FRAME', /cannot be a device name/);
  const id = uuid();
  t.is(signCli(s, csrFor(id), { flags: ['--name', 'x) serial 0badc0de by ceo'] }).status, 0);
  t.regex(cli(['log', '--device', id, '--config', s.configPath]).stdout, /name "x\) serial 0badc0de by ceo"/);
  t.is(issuedCount(s), 1);
});

test('a certificate signed by hand names its signer: sign --operator is recorded as the link cli:NAME, and the log says whose order it counted against', async (t) => {
  const s = await testStation();
  await s.close();
  t.is(cli(['order', 'open', 'R1', '--quantity', '5', '--config', s.configPath, '--operator', 'root-shift']).status, 0);
  const id = uuid();
  t.is(signCli(s, csrFor(id), { flags: ['--operator', 'mallory'] }).status, 0);
  const line = cli(['log', '--device', id, '--config', s.configPath]).stdout;
  t.regex(line, /issued {2}seq 1 .* via cli:mallory order R1 \(order opened by root-shift\)/);
  t.is(logRows(s.configPath, '--device', id).find((r) => r.type === 'issuance')?.link, 'cli:mallory');
});

test('operator input: a quantity in decimal digits only, a reason that says something, errors that name the argument', async (t) => {
  const s = await testStation();
  await s.close();
  for (const q of ['0x10', '1e3', '12.0', ' 7']) {
    const r = cli(['order', 'open', 'WO-Q', '--quantity', q, '--config', s.configPath]);
    t.is(r.status, 64, `${q}: ${r.stderr}`);
    t.regex(r.stderr, /--quantity: a whole number of certificates in decimal digits/);
  }
  const blank = cli(['clock', 'confirm', '--reason', ' ', '--config', s.configPath]);
  t.is(blank.status, 64);
  t.regex(blank.stderr, /ERROR USAGE --reason: say why, in words/);
  const escape = cli(['ledger', 'revoke', '\u001b[31m', '--reason', 'x', '--config', s.configPath]);
  t.is(escape.status, 64);
  t.regex(escape.stderr, /ERROR USAGE DEVICE contains a control character/);
  t.false(logRows(s.configPath).some((r) => r.kind === 'order_open' || r.kind === 'clock_confirm'), 'nothing recorded');
});

test.serial('status says why a serving station refuses every request: a used-up station limit is a WARNING line', async (t) => {
  const sv = await servedWithControl({ policy: 'max_certificates = 1' });
  t.teardown(() => sv.close());
  t.is((await sv.jig.request('SIGN', 'a', Buffer.from(csrFor(uuid())))).type, 'CERT');
  t.is((await sv.jig.request('SIGN', 'b', Buffer.from(csrFor(uuid())))).code, 'QUOTA_EXCEEDED');
  const st = await cliAsync(['status', '--config', sv.s.configPath]);
  t.is(st.status, 0, st.stderr);
  t.regex(st.stdout, /^WARNING QUOTA_EXCEEDED: the station's limit of 1 certificates is used up/m);
});

test('export and ca import record their operator; a refused backup records nothing', async (t) => {
  const s = await testStation();
  await s.station.handle({ csr: csrFor(uuid()), link: 't' });
  await s.close();
  mkdirSync(join(s.dir, 'stick'), { recursive: true });
  t.is(cli(['export', '--out', join(s.dir, 'stick'), '--config', s.configPath, '--operator', 'eve']).status, 0);
  const existing = join(s.dir, 'exists.db');
  writeFileSync(existing, 'x');
  t.is(cli(['ledger', 'backup', existing, '--config', s.configPath]).status, 64);
  t.is(cli(['ledger', 'backup', join(s.dir, 'no-such-folder', 'b.db'), '--config', s.configPath]).status, 64);
  const rows = logRows(s.configPath);
  t.true(rows.some((r) => r.kind === 'export' && r.operator === 'eve'));
  t.false(rows.some((r) => r.kind === 'backup'));
  // A stick that is not mounted: its mount point's folder is missing, and nothing is written under it.
  const unmounted = cli(['export', '--out', join(s.dir, 'media', 'usb'), '--config', s.configPath]);
  t.is(unmounted.status, 64, unmounted.stderr);
  t.regex(unmounted.stderr, /ERROR USAGE .*media\/usb is not a folder \(is the stick mounted\?\); nothing exported/);
  t.false(existsSync(join(s.dir, 'media')));
  // A copy that fails after its event was written (a folder that takes no files): the log says it failed.
  const failed = cli(['ledger', 'backup', '/proc/line-signer-backup.db', '--config', s.configPath, '--operator', 'fay']);
  t.is(failed.status, 1, failed.stderr);
  t.regex(failed.stderr, /ERROR LEDGER backup to \/proc\/line-signer-backup\.db failed/);
  const backups = logRows(s.configPath).filter((r) => r.kind === 'backup');
  t.true(backups.some((r) => /^backup to \/proc\/line-signer-backup\.db failed: /.test(r.message ?? '') && r.operator === 'fay'), JSON.stringify(backups));
  t.is(cli(['ledger', 'verify', '--config', s.configPath]).status, 0);
});

test.serial('through the HTTP link: no open order under require_order, another hardware id, and the rate cap; HEAD says so first', async (t) => {
  const s = await testStation({ policy: 'require_order = true\nmax_per_minute = 2', extra: SOTA });
  const control = await serveControl(s.config, s);
  const link = new HttpLink(s.station, { listen: '127.0.0.1:0', sota: s.config.sota });
  await link.start();
  t.teardown(async () => {
    await link.stop();
    await control.close();
    await s.close();
  });
  const post = async (extra: Record<string, unknown> = {}): Promise<{ status: number; code?: string; message?: string }> => {
    const r = await send(link.port, 'POST', ptreeJson(deviceFields(extra).fields));
    return { status: r.status, ...(r.status === 201 ? {} : (JSON.parse(r.text) as { code: string; message: string })) };
  };
  t.is((await send(link.port, 'HEAD')).status, 503, 'no open order: the client stops before making a key');
  const none = await post();
  t.is(none.status, 403);
  t.is(none.code, 'QUOTA_EXCEEDED');
  t.regex(none.message!, /no open work order/);
  t.is((await cliAsync(['order', 'open', 'WO-H', '--quantity', '10', '--hardware-id', 'intel-corei7-64', '--config', s.configPath, '--operator', 'hal'])).status, 0);
  t.is((await send(link.port, 'HEAD')).status, 200);
  const wrong = await post({ 'hardware-id': 'raspberrypi4-64' });
  t.is(wrong.status, 400);
  t.is(wrong.code, 'POLICY_SUBJECT');
  t.is((await post()).status, 201);
  t.is((await post()).status, 201);
  const capped = await post();
  t.is(capped.status, 403);
  t.regex(capped.message!, /more than 2 certificates in the last minute/);
  t.is((await send(link.port, 'HEAD')).status, 503);
  t.is(issuedCount(s), 2);
  const rows = logRows(s.configPath);
  t.deepEqual(rows.filter((r) => r.kind === 'rejection').map((r) => r.code), ['QUOTA_EXCEEDED', 'POLICY_SUBJECT', 'QUOTA_EXCEEDED']);
  t.true(rows.some((r) => r.kind === 'order_open' && r.operator === 'hal'));
});
