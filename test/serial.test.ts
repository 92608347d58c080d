/**
 * J1 over a real pseudo-terminal, spoken by a jig written from the spec
 * alone (test/helpers/jig.ts): every request type and every error code.
 */
import test from 'ava';
import { createHash, X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import Database from 'better-sqlite3';
import { LineSignerError } from '../src/errors.js';
import type { Signer } from '../src/token/signer.js';
import { makeDeviceCsr, pemDecodeAll, pemEncode } from '../src/x509/index.js';
import { frame } from './helpers/jig.js';
import { FACTORY, openssl, opensslCsr, testPki, uuid } from './helpers/pki.js';
import { served, waitFor, type Served } from './helpers/served.js';

const csrFor = (deviceId = uuid()) => makeDeviceCsr({ deviceId, factory: FACTORY, production: true });

let main: Promise<Served>;
test.before(() => {
  main = served({}, {}, 300);
});
test.after.always(async () => (await main).close());

function eventCodes(x: Served): Record<string, number> {
  const db = new Database(x.s.config.station.ledger, { readonly: true });
  try {
    const rows = db.prepare("SELECT code, count(*) AS n FROM events WHERE kind = 'rejection' GROUP BY code").all() as Array<{ code: string; n: number }>;
    return Object.fromEntries(rows.map((r) => [r.code, r.n]));
  } finally {
    db.close();
  }
}

test.serial('HELLO, CA and PING', async (t) => {
  const x = await main;
  const hello = await x.jig.request('HELLO', 'h1', null);
  t.is(hello.type, 'HELLO');
  t.is(hello.id, 'h1');
  const info = JSON.parse(hello.body!.toString());
  const caDer = pemDecodeAll(readFileSync(x.s.config.ca.certificate, 'utf8'), 'CERTIFICATE')[0]!;
  t.deepEqual(info, {
    protocol: 1,
    station: x.s.config.station.id,
    factory: FACTORY,
    ca: createHash('sha256').update(caDer).digest('hex'),
    max_frame: 16384,
    production: true,
  });
  const ca = await x.jig.request('CA', 'c-1', null);
  t.is(ca.type, 'CA');
  t.is(ca.body!.toString(), readFileSync(testPki().rootPem, 'utf8'));
  const pong = await x.jig.request('PING', 'p_1', null);
  t.is(pong.type, 'PONG');
  t.is(pong.id, 'p_1');
  t.is(pong.body, null);
  // A body on HELLO, CA or PING is ignored.
  t.is((await x.jig.request('PING', 'p2', 'ignored')).type, 'PONG');
});

test.serial('SIGN gets the chain; an identical SIGN gets identical bytes and no second certificate', async (t) => {
  const x = await main;
  const deviceId = uuid();
  const csr = csrFor(deviceId);
  const before = x.s.ledger.issuedCount();
  const first = await x.jig.request('SIGN', 's1', Buffer.from(csr.der));
  t.is(first.type, 'CERT', first.message);
  const chain = first.body!.toString();
  const [device, ca] = pemDecodeAll(chain, 'CERTIFICATE').map((d) => new X509Certificate(Buffer.from(d)));
  t.true(device!.verify(ca!.publicKey));
  t.true(device!.subject.includes(`CN=${deviceId}`));
  const again = await x.jig.request('SIGN', 's1', Buffer.from(csr.der));
  t.is(again.line, first.line, 'byte for byte the same reply');
  t.is(x.s.ledger.issuedCount(), before + 1);
});

test.serial('frame faults: BAD_CRC, BAD_FRAME, UNKNOWN_TYPE, with the ID echoed only when it is one', async (t) => {
  const x = await main;
  const before = eventCodes(x);
  const good = frame('PING', 'k1', null);
  const badCrc = good.slice(0, -3) + (good.at(-3) === '0' ? '1' : '0') + good.slice(-2);
  let r = await x.jig.request('PING', 'x', null); // sync
  t.is(r.type, 'PONG');
  await x.jig.send(badCrc);
  r = await x.jig.reply();
  t.deepEqual([r.type, r.id, r.code], ['ERR', 'k1', 'BAD_CRC']);

  const withCrc = (head: string): string => head + crcOf(head) + '\n';
  const cases: Array<[string, string, string]> = [
    ['J1 PING k2 ', 'BAD_FRAME', 'k2'],
    ['J1 PING k*3 - ', 'BAD_FRAME', '-'],
    ['J1 PING k4 QQ ', 'BAD_FRAME', 'k4'],
    ['J1 PING k5 a\x7fb= ', 'BAD_FRAME', 'k5'],
    ['J1 CERT k6 - ', 'UNKNOWN_TYPE', 'k6'],
    ['J1 PONG k7 - ', 'UNKNOWN_TYPE', 'k7'],
    ['J1 ERR k8 - ', 'UNKNOWN_TYPE', 'k8'],
    ['J1 REBOOT k9 - ', 'UNKNOWN_TYPE', 'k9'],
  ];
  for (const [head, code, id] of cases) {
    await x.jig.send(Buffer.from(withCrc(head), 'latin1'));
    r = await x.jig.reply();
    t.deepEqual([r.type, r.code, r.id], ['ERR', code, id], head);
  }
  const after = eventCodes(x);
  t.is((after.BAD_CRC ?? 0) - (before.BAD_CRC ?? 0), 1);
  t.is((after.BAD_FRAME ?? 0) - (before.BAD_FRAME ?? 0), 4);
  t.is((after.UNKNOWN_TYPE ?? 0) - (before.UNKNOWN_TYPE ?? 0), 4);
});

import { crc32 } from 'node:zlib';
function crcOf(head: string): string {
  return crc32(Buffer.from(head, 'latin1')).toString(16).padStart(8, '0');
}

test.serial('an oversized line gets one TOO_LARGE with ID -, and the link keeps serving', async (t) => {
  const x = await main;
  await x.jig.send('J1 SIGN big ' + 'A'.repeat(20_000) + ' 00000000\n');
  const r = await x.jig.reply();
  t.deepEqual([r.type, r.id, r.code], ['ERR', '-', 'TOO_LARGE']);
  t.is((await x.jig.request('PING', 'after', null)).type, 'PONG');
  t.is(await x.jig.nextLine(200), null, 'exactly one reply');
});

test.serial('noise lines are ignored and counted; a half frame is dropped after the idle timeout', async (t) => {
  const x = await main;
  const noise = x.link.status.noise;
  await x.jig.send('U-Boot 2024.01\r\nroot@device:~# \nhello there\n');
  t.is((await x.jig.request('PING', 'n1', null)).id, 'n1');
  t.is(x.link.status.noise, noise + 3);
  await x.jig.send('J1 PING half - ');
  await new Promise((r) => setTimeout(r, 700)); // idle timeout is 300 ms here
  const r = await x.jig.request('PING', 'whole', null);
  t.deepEqual([r.type, r.id], ['PONG', 'whole'], 'the half frame left nothing behind');
  t.is(await x.jig.nextLine(200), null);
});

test.serial('SIGN refusals over J1: BAD_CSR, BAD_SIGNATURE, POLICY_KEY, POLICY_SUBJECT, POLICY_EXTENSION, DUPLICATE_DEVICE', async (t) => {
  const x = await main;
  const expectErr = async (body: Buffer | null, code: string): Promise<void> => {
    const r = await x.jig.request('SIGN', 'e1', body);
    t.deepEqual([r.type, r.id, r.code], ['ERR', 'e1', code], r.message);
  };
  await expectErr(null, 'BAD_CSR');
  await expectErr(Buffer.from('not a csr'), 'BAD_CSR');
  const broken = Buffer.from(csrFor().der);
  broken[broken.length - 4]! ^= 1;
  await expectErr(broken, 'BAD_SIGNATURE');
  await expectErr(Buffer.from(opensslCsr(x.s.dir, { newkey: ['-newkey', 'rsa:2048'] }).csr), 'POLICY_KEY');
  await expectErr(Buffer.from(opensslCsr(x.s.dir, { subject: `/CN=${uuid()}/OU=other/businessCategory=production` }).csr), 'POLICY_SUBJECT');
  await expectErr(Buffer.from(opensslCsr(x.s.dir, { addext: ['basicConstraints=critical,CA:TRUE'] }).csr), 'POLICY_EXTENSION');
  const id = uuid();
  t.is((await x.jig.request('SIGN', 'd1', Buffer.from(csrFor(id).der))).type, 'CERT');
  await expectErr(Buffer.from(csrFor(id).der), 'DUPLICATE_DEVICE');
});

/**
 * A PEM-mode answer as raw lines (each with its ending), up to `OK` or
 * `ERROR`; `text` is the PEM with LF endings, `eol` the one ending every line had.
 */
async function pemReply(x: Served): Promise<{ text: string; last: string; eol: string }> {
  const lines: string[] = [];
  for (;;) {
    const line = await x.jig.nextLine();
    if (line === null) throw new Error(`no PEM-mode answer after ${JSON.stringify(lines)}`);
    lines.push(line);
    if (/^(OK|ERROR) /.test(line)) break;
  }
  const endings = new Set(lines.map((l) => (l.endsWith('\r') ? '\r\n' : '\n')));
  if (endings.size !== 1) throw new Error(`mixed line endings: ${JSON.stringify(lines)}`);
  const bare = lines.map((l) => l.replace(/\r$/, ''));
  return { text: bare.slice(0, -1).map((l) => l + '\n').join(''), last: bare.at(-1)!, eol: [...endings][0]! };
}

/** The serial as `openssl x509 -serial` prints it, lowercase. */
function opensslSerial(certPem: string): string {
  return openssl(['x509', '-noout', '-serial'], certPem).toString().trim().replace(/^serial=/, '').toLowerCase();
}

test.serial('PEM mode: a block gets the chain and OK <serial>; a refusal one ERROR line; retries are safe across modes', async (t) => {
  const x = await main;
  const csr = csrFor();
  const pem = pemEncode(csr.der, 'CERTIFICATE REQUEST');
  await x.jig.send(pem.replace(/\n/g, '\r\n'));
  const a = await pemReply(x);
  t.is(a.eol, '\r\n', 'CRLF after a CRLF BEGIN line');
  t.regex(a.last, /^OK (?:[0-9a-f]{2})+$/);
  const serial = a.last.slice(3);
  t.is(serial, opensslSerial(a.text));
  const cert = new X509Certificate(a.text);
  t.is(BigInt('0x' + cert.serialNumber), BigInt('0x' + serial));
  // The same CSR through J1 gets the same certificate.
  const j1 = await x.jig.request('SIGN', 'm1', Buffer.from(csr.der));
  t.is(j1.body!.toString(), a.text);
  // And again through PEM mode, with LF endings this time.
  await x.jig.send(pem);
  const again = await pemReply(x);
  t.is(again.text, a.text);
  t.is(again.eol, '\n', 'LF after an LF BEGIN line');
  // A refusal.
  await x.jig.send(pemEncode(opensslCsr(x.s.dir, { subject: `/CN=NOT-A-UUID/OU=${FACTORY}/businessCategory=production` }).csr, 'CERTIFICATE REQUEST'));
  const refused = await pemReply(x);
  t.regex(refused.last, /^ERROR POLICY_SUBJECT /);
  t.is(refused.text, '');
});

test.serial('PEM mode as picocom sends it: CR line ends, an indented paste, blanks after BEGIN; the answer comes with CRLF', async (t) => {
  const x = await main;
  const pem = pemEncode(csrFor().der, 'CERTIFICATE REQUEST').trimEnd().split('\n');
  // Enter gives CR; the paste is indented with spaces and tabs and has trailing blanks.
  const typed = pem.map((l, i) => (i === 0 ? `${l}   \t` : `  \t${l} `)).join('\r') + '\r';
  await x.jig.send('\r'); // a bare Enter first
  for (let i = 0; i < typed.length; i += 7) await x.jig.send(typed.slice(i, i + 7)); // bytes as a slow paste brings them
  const a = await pemReply(x);
  t.is(a.eol, '\r\n');
  t.regex(a.last, /^OK (?:[0-9a-f]{2})+$/);
  t.is(pemDecodeAll(a.text, 'CERTIFICATE').length, 2, 'device certificate then local-ca');
  t.is(a.last.slice(3), opensslSerial(a.text));
  t.is(await x.jig.nextLine(200), null, 'one answer');
});

test.serial('PEM mode: the older NEW CERTIFICATE REQUEST header; a J1 SIGN then a PEM block of the same CSR get the same certificate', async (t) => {
  const x = await main;
  const csr = csrFor();
  const j1 = await x.jig.request('SIGN', 'n1', Buffer.from(csr.der));
  t.is(j1.type, 'CERT');
  await x.jig.send(pemEncode(csr.der, 'NEW CERTIFICATE REQUEST'));
  const a = await pemReply(x);
  t.regex(a.last, /^OK /);
  t.is(a.text, j1.body!.toString());
  t.is(a.eol, '\n');
  // A NEW header does not end at a plain END line: the labels must match.
  const other = pemEncode(csrFor().der, 'NEW CERTIFICATE REQUEST').replace('END NEW CERTIFICATE', 'END CERTIFICATE');
  await x.jig.send(other);
  t.is(await x.jig.nextLine(300), null, 'no END for this block yet');
  t.is((await x.jig.request('PING', 'n2', null)).type, 'PONG', 'a J1 line abandons it');
});

test.serial('PEM mode: a block dropped at the idle timeout is counted as noise', async (t) => {
  const x = await main;
  const noise = x.link.status.noise;
  const pem = pemEncode(csrFor().der, 'CERTIFICATE REQUEST').split('\n');
  await x.jig.send(pem.slice(0, 4).join('\r') + '\r');
  await waitFor(() => x.link.status.noise > noise, 3000);
  t.is(x.link.status.noise, noise + 1);
  t.is(await x.jig.nextLine(100), null, 'silently');
  t.is((await x.jig.request('PING', 'idle-after', null)).type, 'PONG');
});

test.serial('PEM mode: a J1 line abandons an open block and is handled as a frame; so does the idle timeout', async (t) => {
  const x = await main;
  const pem = pemEncode(csrFor().der, 'CERTIFICATE REQUEST').split('\n');
  await x.jig.send(pem.slice(0, 3).join('\n') + '\n');
  const r = await x.jig.request('PING', 'mid', null);
  t.deepEqual([r.type, r.id], ['PONG', 'mid']);
  await x.jig.send(pem.slice(3).join('\n'));
  t.is(await x.jig.nextLine(300), null, 'the rest of the abandoned block is noise');
  await x.jig.send(pem.slice(0, 3).join('\n') + '\n');
  await new Promise((res) => setTimeout(res, 700));
  await x.jig.send(pem.slice(3).join('\n'));
  t.is(await x.jig.nextLine(300), null, 'dropped after the idle timeout');
});

test.serial('PEM mode: a block too large to be a CSR gets ERROR BAD_CSR, and the link keeps serving', async (t) => {
  const x = await main;
  const line = 'A'.repeat(64) + '\n';
  await x.jig.send('-----BEGIN CERTIFICATE REQUEST-----\n' + line.repeat(1100));
  const answer = await x.jig.pemAnswer();
  t.regex(answer.last, /^ERROR BAD_CSR PEM block over \d+ bytes/);
  await x.jig.send(line.repeat(50) + '-----END CERTIFICATE REQUEST-----\n');
  t.is((await x.jig.request('PING', 'after-pem', null)).type, 'PONG');
});

test.serial('PEM mode: a line over 16 KiB inside a block gets an ERROR TOO_LARGE line, not a J1 frame, and the link keeps serving', async (t) => {
  const x = await main;
  await x.jig.send('-----BEGIN CERTIFICATE REQUEST-----\n' + 'A'.repeat(20_000) + '\n');
  const answer = await x.jig.pemAnswer();
  t.regex(answer.last, /^ERROR TOO_LARGE line over 16384 bytes inside a PEM block/);
  t.is((await x.jig.request('PING', 'after-long', null)).type, 'PONG');
});

// Stations of their own for the codes that need one.

test('QUOTA_EXCEEDED, CLOCK, TOKEN_UNAVAILABLE and INTERNAL over J1', async (t) => {
  const quota = await served({ policy: 'max_certificates = 1' });
  t.teardown(() => quota.close());
  t.is((await quota.jig.request('SIGN', 'q1', Buffer.from(csrFor().der))).type, 'CERT');
  t.is((await quota.jig.request('SIGN', 'q2', Buffer.from(csrFor().der))).code, 'QUOTA_EXCEEDED');

  let clockNow = new Date(0);
  const clock = await served({}, { clock: () => clockNow });
  t.teardown(() => clock.close());
  t.is((await clock.jig.request('SIGN', 'c1', Buffer.from(csrFor().der))).code, 'CLOCK');
  clockNow = new Date();
  t.is((await clock.jig.request('SIGN', 'c2', Buffer.from(csrFor().der))).type, 'CERT');

  const failing = (error: Error) => (inner: Signer): Signer => ({ ...inner, publicKeySpki: () => inner.publicKeySpki(), publicKey: () => inner.publicKey(), hash: inner.hash, signatureAlgorithm: inner.signatureAlgorithm, sign: () => Promise.reject(error) });
  const down = await served({}, { wrapSigner: failing(new LineSignerError('TOKEN_UNAVAILABLE', 'token: C_Sign failed: CKR_DEVICE_REMOVED')) });
  t.teardown(() => down.close());
  const r1 = await down.jig.request('SIGN', 't1', Buffer.from(csrFor().der));
  t.deepEqual([r1.code, r1.message], ['TOKEN_UNAVAILABLE', 'token: C_Sign failed: CKR_DEVICE_REMOVED']);
  t.is((await down.jig.request('PING', 't2', null)).type, 'PONG', 'the station keeps serving');

  const broken = await served({}, { wrapSigner: failing(new Error('something unexpected')) });
  t.teardown(() => broken.close());
  t.is((await broken.jig.request('SIGN', 'i1', Buffer.from(csrFor().der))).code, 'INTERNAL');
  t.is(broken.s.ledger.issuedCount(), 0);
});
