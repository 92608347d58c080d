/**
 * Each row of the profile's "signed only if" table: a violating CSR gets
 * its code, nothing is issued, and the rejection is in the events table.
 */
import test, { type ExecutionContext } from 'ava';
import { createHash, generateKeyPairSync } from 'node:crypto';
import Database from 'better-sqlite3';
import * as asn1js from 'asn1js';
import { makeDeviceCsr, pemEncode } from '../src/x509/index.js';
import type { Signer } from '../src/token/signer.js';
import type { ProtocolCode } from '../src/errors.js';
import { csrDer } from '../src/x509/index.js';
import { tlv } from '../src/x509/asn1.js';
import { MESSAGE_MAX } from '../src/text.js';
import { ALONE_AFTER_MS, MAX_UNPROVEN, PROOF_FIRST_MS } from '../src/station/station.js';
import type { SignResult } from '../src/station/index.js';
import { FACTORY, opensslCsr, reserveStationTokens, testStation, type TestStation, uuid } from './helpers/pki.js';
import { served } from './helpers/served.js';

reserveStationTokens(24);

const prod = `/OU=${FACTORY}/businessCategory=production`;

async function expectRefusal(t: ExecutionContext, s: TestStation, csr: Uint8Array, code: ProtocolCode, message?: RegExp): Promise<void> {
  const before = s.ledger.issuedCount();
  const r = await s.station.handle({ csr, link: 'test' });
  t.false(r.ok, `expected ${code}`);
  if (r.ok) return;
  t.is(r.code, code, r.message);
  if (message) t.regex(r.message, message);
  t.is(s.ledger.issuedCount(), before, 'nothing issued');
  const db = new Database(s.config.station.ledger, { readonly: true });
  try {
    let hash: string | null = null;
    try {
      hash = createHash('sha256').update(csrDer(csr)).digest('hex');
    } catch {
      hash = null; // unreadable PEM: recorded without a hash
    }
    const ev = db
      .prepare("SELECT * FROM events WHERE kind = 'rejection' AND csr_sha256 IS ? ORDER BY seq DESC LIMIT 1")
      .get(hash) as
      | { code: string; message: string; link: string; csr_sha256: string | null }
      | undefined;
    t.truthy(ev, 'rejection recorded');
    t.is(ev!.code, code);
    t.is(ev!.message, r.message);
    t.is(ev!.link, 'test');
  } finally {
    db.close();
  }
}

let station: Promise<TestStation>;
test.before(() => {
  station = testStation();
});
test.after.always(async () => (await station).close());

/** Flip one bit inside the CSR's signature BIT STRING. */
function corruptSignature(der: Uint8Array): Uint8Array {
  const copy = new Uint8Array(der);
  copy[copy.length - 5]! ^= 0x01;
  return copy;
}

test.serial('form: garbage, empty, truncated, trailing bytes and broken PEM are BAD_CSR', async (t) => {
  const s = await station;
  const { csr } = opensslCsr(s.dir);
  await expectRefusal(t, s, new Uint8Array([0x01, 0x02, 0x03]), 'BAD_CSR');
  await expectRefusal(t, s, new Uint8Array(), 'BAD_CSR');
  await expectRefusal(t, s, csr.subarray(0, csr.length - 10), 'BAD_CSR');
  await expectRefusal(t, s, new Uint8Array([...csr, 0x00]), 'BAD_CSR', /trailing/);
  await expectRefusal(t, s, Buffer.from('-----BEGIN CERTIFICATE REQUEST-----\n!!!\n-----END CERTIFICATE REQUEST-----\n'), 'BAD_CSR');
  // A certificate is not a CSR.
  const cert = new asn1js.Sequence({ value: [new asn1js.Integer({ value: 1 })] }).toBER(false);
  await expectRefusal(t, s, new Uint8Array(cert), 'BAD_CSR');
});

test.serial('key: RSA, P-384 (not allowed here), secp256k1 and Ed25519 are POLICY_KEY, before the signature is even checked', async (t) => {
  const s = await station;
  const subject = `/CN=${uuid()}${prod}`;
  await expectRefusal(t, s, opensslCsr(s.dir, { subject, newkey: ['-newkey', 'rsa:2048'] }).csr, 'POLICY_KEY', /RSA/);
  await expectRefusal(t, s, opensslCsr(s.dir, { subject, newkey: ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:secp384r1'] }).csr, 'POLICY_KEY', /P-384/);
  await expectRefusal(t, s, opensslCsr(s.dir, { subject, newkey: ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:secp256k1'] }).csr, 'POLICY_KEY');
  await expectRefusal(t, s, opensslCsr(s.dir, { subject, newkey: ['-newkey', 'ed25519'] }).csr, 'POLICY_KEY', /Ed25519/);
  // A disallowed key with a broken signature is still POLICY_KEY.
  const rsa = opensslCsr(s.dir, { subject, newkey: ['-newkey', 'rsa:2048'] }).csr;
  await expectRefusal(t, s, corruptSignature(rsa), 'POLICY_KEY');
});

test('key: P-384 is signed where the station allows it', async (t) => {
  const s = await testStation({ policy: 'allow_p384 = true' });
  t.teardown(() => s.close());
  const r = await s.station.handle({ csr: opensslCsr(s.dir, { newkey: ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:secp384r1'] }).csr, link: 't' });
  t.true(r.ok);
});

test.serial('proof of possession: a CSR whose signature does not verify is BAD_SIGNATURE', async (t) => {
  const s = await station;
  const { csr } = opensslCsr(s.dir);
  await expectRefusal(t, s, corruptSignature(csr), 'BAD_SIGNATURE');
  // Signed by another key than the one inside it.
  const other = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const good = makeDeviceCsr({ deviceId: uuid(), factory: FACTORY, production: true });
  const forged = makeDeviceCsr({ deviceId: uuid(), factory: FACTORY, production: true }, other.privateKey);
  // Splice: good CSR's info with the forged signature.
  const goodTop = asn1js.fromBER(good.der).result as asn1js.Sequence;
  const forgedTop = asn1js.fromBER(forged.der).result as asn1js.Sequence;
  goodTop.valueBlock.value[2] = forgedTop.valueBlock.value[2]!;
  await expectRefusal(t, s, new Uint8Array(goodTop.toBER(false)), 'BAD_SIGNATURE');
});

/** A test station whose token signatures are counted, on a clock the test can move forward. */
async function countingStation(opts: { aloneAfterMs?: number; signDelayMs?: number } = {}): Promise<{ s: TestStation; signatures: () => number; skip: (ms: number) => void; lone: boolean[] }> {
  const { aloneAfterMs, signDelayMs = 0 } = opts;
  let signatures = 0;
  let skew = 0;
  /** Each signature's hint: whether the station served its request as a lone one. */
  const lone: boolean[] = [];
  const counting = (inner: Signer): Signer => ({
    hash: inner.hash,
    signatureAlgorithm: inner.signatureAlgorithm,
    publicKeySpki: () => inner.publicKeySpki(),
    publicKey: () => inner.publicKey(),
    sign: (digest, hint) => {
      signatures++;
      lone.push(hint?.alone === true);
      if (signDelayMs === 0) return inner.sign(digest, hint);
      return new Promise((r) => setTimeout(r, signDelayMs)).then(() => inner.sign(digest, hint));
    },
  });
  const s = await testStation({}, { wrapSigner: counting, clock: () => new Date(Date.now() + skew), ...(aloneAfterMs !== undefined ? { aloneAfterMs } : {}) });
  return { s, signatures: () => signatures, skip: (ms) => void (skew += ms), lone };
}

/** Real time for the station to count as quiet again (its lone path), whatever its own clock says. */
const quiet = (ms = ALONE_AFTER_MS): Promise<void> => new Promise((r) => setTimeout(r, ms + 5));

test('a request is served as a lone one only when no two requests overlapped for ALONE_AFTER_MS: one that comes in a gap of a busy station is served as under load', async (t) => {
  // The window lengthened to a second: on a loaded machine "right after" the four below can be more than 20 ms.
  const WINDOW = 1000;
  const { s, lone } = await countingStation({ aloneAfterMs: WINDOW });
  t.teardown(() => s.close());
  const handle = (): Promise<unknown> => s.station.handle({ csr: makeDeviceCsr({ deviceId: uuid(), factory: FACTORY, production: true }).der, link: 'test' });
  await quiet(WINDOW);
  await handle();
  await handle();
  t.deepEqual(lone, [true, true], 'one request after another: the lone path');
  await Promise.all(Array.from({ length: 4 }, handle));
  // The first of four signs before the others arrive (the station was quiet until then); the others overlap it.
  t.deepEqual(lone.slice(2), [true, false, false, false]);
  await handle(); // alone in the station, right after four at once
  t.is(lone[6], false, 'a gap between overlapping requests is not quiet');
  // A forged CSR alone in the station inside the window: its proof after the signature, and still refused.
  const forged = await s.station.handle({ csr: corruptSignature(makeDeviceCsr({ deviceId: uuid(), factory: FACTORY, production: true }).der), link: 'test' });
  t.like(forged, { ok: false, code: 'BAD_SIGNATURE' });
  t.is(lone[7], false);
  await quiet(WINDOW);
  await handle();
  t.is(lone[8], true, 'quiet again');
  t.is(s.ledger.issuedCount(), 8, 'the forged one not issued');
});

test('requests refused before the token do not count as overlapping: a flood of bad ones cannot take the lone path from a quiet line', async (t) => {
  const WINDOW = 1000;
  const { s, lone } = await countingStation({ aloneAfterMs: WINDOW });
  t.teardown(() => s.close());
  const refused = (): Promise<SignResult> => s.station.handle({ csr: makeDeviceCsr({ deviceId: uuid(), factory: 'other-factory', production: true }).der, link: 'test' });
  const flood = await Promise.all(Array.from({ length: 3 }, refused));
  t.true(flood.every((r) => !r.ok && r.code === 'POLICY_SUBJECT'));
  t.true((await s.station.handle({ csr: makeDeviceCsr({ deviceId: uuid(), factory: FACTORY, production: true }).der, link: 'test' })).ok);
  t.deepEqual(lone, [true], 'served as a lone one right after three refused at once');
});

test('requests that stay in the station together longer than the window count as overlapping until the last of them leaves', async (t) => {
  // Two requests whose signatures take 300 ms each, a 100 ms window: they came together long before they left.
  const { s, lone } = await countingStation({ aloneAfterMs: 100, signDelayMs: 300 });
  t.teardown(() => s.close());
  const handle = (): Promise<unknown> => s.station.handle({ csr: makeDeviceCsr({ deviceId: uuid(), factory: FACTORY, production: true }).der, link: 'test' });
  await Promise.all([handle(), handle()]);
  await handle();
  t.deepEqual(lone, [true, false, false], 'the one right after them is not served as a lone one');
});

test('the proof of possession is made after the token signs (inline for a lone request, in a checking worker under load): a forged CSR is still BAD_SIGNATURE before any later check and never issued, and for ten seconds after one the proof comes first again', async (t) => {
  const { s, signatures, skip, lone } = await countingStation();
  const GOOD = 6;
  t.teardown(() => s.close());
  const issuedId = uuid();
  t.true((await s.station.handle({ csr: makeDeviceCsr({ deviceId: issuedId, factory: FACTORY, production: true }).der, link: 'test' })).ok);
  const db = new Database(s.config.station.ledger, { readonly: true });
  t.teardown(() => db.close());
  const good = (): Uint8Array => makeDeviceCsr({ deviceId: uuid(), factory: FACTORY, production: true }).der;
  const otherFactory = (): Uint8Array => corruptSignature(makeDeviceCsr({ deviceId: uuid(), factory: 'other-factory', production: true }).der);
  const issuedDevice = (): Uint8Array => corruptSignature(makeDeviceCsr({ deviceId: issuedId, factory: FACTORY, production: true }).der);
  // Six good requests first, so that the forged ones are not alone (and fewer than MAX_UNPROVEN wait with them).
  const round = async (forged: Uint8Array[]): Promise<{ codes: string[]; signed: number }> => {
    const before = { issued: s.ledger.issuedCount(), signatures: signatures() };
    const results = await Promise.all([...Array.from({ length: GOOD }, good), ...forged].map((csr) => s.station.handle({ csr, link: 'test' })));
    t.true(results.slice(0, GOOD).every((r) => r.ok));
    t.is(s.ledger.issuedCount(), before.issued + GOOD, 'only the good ones issued');
    await s.station.flushEvents();
    for (const csr of forged) {
      const ev = db.prepare("SELECT code FROM events WHERE kind = 'rejection' AND csr_sha256 = ?").get(createHash('sha256').update(csr).digest('hex')) as { code: string } | undefined;
      t.is(ev?.code, 'BAD_SIGNATURE');
    }
    return { codes: results.slice(GOOD).map((r) => (r.ok ? 'issued' : r.code)), signed: signatures() - before.signatures };
  };
  // A forged CSR that passes every later check: signed by the token, then refused, the signature dropped.
  t.deepEqual(await round([corruptSignature(good())]), { codes: ['BAD_SIGNATURE'], signed: GOOD + 1 });
  // Right after it, forged CSRs cost the token nothing.
  t.deepEqual(await round([corruptSignature(good()), otherFactory(), issuedDevice()]), { codes: ['BAD_SIGNATURE', 'BAD_SIGNATURE', 'BAD_SIGNATURE'], signed: GOOD });
  // Ten quiet seconds on: the proof is left for after the signature again, and a forged CSR that a
  // later check refuses before any signature is still BAD_SIGNATURE, as the profile orders the checks.
  for (const forged of [otherFactory(), issuedDevice()]) {
    skip(PROOF_FIRST_MS + 1);
    t.deepEqual(await round([forged]), { codes: ['BAD_SIGNATURE'], signed: GOOD });
  }
  skip(PROOF_FIRST_MS + 1);
  t.deepEqual(await round([corruptSignature(good())]), { codes: ['BAD_SIGNATURE'], signed: GOOD + 1 });

  // A lone request makes the proof inline after the token signs: the same outcomes, one at a time.
  const alone = async (csr: Uint8Array): Promise<{ code: string; signed: number }> => {
    const before = { issued: s.ledger.issuedCount(), signatures: signatures() };
    await quiet(); // right after the rounds above, the station still counts as busy
    const r = await s.station.handle({ csr, link: 'test' });
    t.is(s.ledger.issuedCount(), before.issued, 'nothing issued');
    return { code: r.ok ? 'issued' : r.code, signed: signatures() - before.signatures };
  };
  skip(PROOF_FIRST_MS + 1);
  t.deepEqual(await alone(otherFactory()), { code: 'BAD_SIGNATURE', signed: 0 });
  skip(PROOF_FIRST_MS + 1);
  t.deepEqual(await alone(issuedDevice()), { code: 'BAD_SIGNATURE', signed: 0 });
  skip(PROOF_FIRST_MS + 1);
  t.deepEqual(await alone(corruptSignature(good())), { code: 'BAD_SIGNATURE', signed: 1 });
  t.true(lone.at(-1), 'signed as a lone request');
  t.deepEqual(await alone(corruptSignature(good())), { code: 'BAD_SIGNATURE', signed: 0 });
});

test('a burst of forged CSRs costs the token at most MAX_UNPROVEN signatures, and their refusals name no device (the id in a forged CSR may be a victim\'s)', async (t) => {
  const { s, signatures, skip } = await countingStation();
  t.teardown(() => s.close());
  const victim = uuid();
  t.true((await s.station.handle({ csr: makeDeviceCsr({ deviceId: victim, factory: FACTORY, production: true }).der, link: 'test' })).ok);
  // A forged CSR in the victim's name, its proof left for later: refused as BAD_SIGNATURE, naming no device.
  const forgedVictim = await s.station.handle({ csr: corruptSignature(makeDeviceCsr({ deviceId: victim, factory: FACTORY, production: true }).der), link: 'test' });
  t.like(forgedVictim, { ok: false, code: 'BAD_SIGNATURE', deviceId: null });
  skip(PROOF_FIRST_MS + 1);
  const before = { issued: s.ledger.issuedCount(), signatures: signatures() };
  // 64 at once, as many as the HTTP link lets in, the window open again.
  const burst = Array.from({ length: 64 }, () => corruptSignature(makeDeviceCsr({ deviceId: uuid(), factory: FACTORY, production: true }).der));
  const results = await Promise.all(burst.map((csr) => s.station.handle({ csr, link: 'test' })));
  t.true(results.every((r) => !r.ok && r.code === 'BAD_SIGNATURE'));
  t.true(results.every((r) => !r.ok && r.deviceId === null), 'no refusal names the device in the CSR');
  t.is(signatures() - before.signatures, MAX_UNPROVEN);
  t.is(s.ledger.issuedCount(), before.issued);
  await s.station.flushEvents();
  const db = new Database(s.config.station.ledger, { readonly: true });
  t.teardown(() => db.close());
  const named = db.prepare("SELECT count(*) AS n FROM events WHERE kind = 'rejection' AND code = 'BAD_SIGNATURE' AND device_id IS NOT NULL").get() as { n: number };
  t.is(named.n, 0, 'no BAD_SIGNATURE event names a device');
});

test.serial('subject: anything but CN, OU and businessCategory=production is POLICY_SUBJECT', async (t) => {
  const s = await station;
  const id = uuid();
  const cases: Array<[string, RegExp]> = [
    [`/CN=${id}/OU=${FACTORY}/O=Acme/businessCategory=production`, /O is not allowed/],
    [`/CN=${id.toUpperCase()}${prod}`, /not a device id/],
    [`/CN=device-42${prod}`, /not a device id/],
    [`/OU=${FACTORY}/businessCategory=production`, /no CN/],
    [`/CN=${id}/OU=other-factory/businessCategory=production`, /not this factory/],
    [`/CN=${id}/businessCategory=production`, /no OU/],
    [`/CN=${id}/OU=${FACTORY}`, /requires businessCategory/],
    [`/CN=${id}/OU=${FACTORY}/businessCategory=test`, /must be "production"/],
    [`/CN=${id}/CN=${uuid()}${prod}`, /more than once/],
    [`/CN=${id}${prod}/emailAddress=a@b.c`, /emailAddress is not allowed/],
  ];
  for (const [subject, why] of cases) await expectRefusal(t, s, opensslCsr(s.dir, { subject }).csr, 'POLICY_SUBJECT', why);
  // Multi-valued RDN.
  await expectRefusal(
    t,
    s,
    opensslCsr(s.dir, { subject: `/CN=${id}+OU=${FACTORY}/businessCategory=production` }).csr.slice(),
    'POLICY_SUBJECT',
    /multi-valued/,
  );
});

test.serial('subject: attributes may come in any order', async (t) => {
  const s = await station;
  const r = await s.station.handle({ csr: opensslCsr(s.dir, { subject: `/businessCategory=production/OU=${FACTORY}/CN=${uuid()}` }).csr, link: 't' });
  t.true(r.ok, r.ok ? '' : r.message);
});

test('subject: a non-production station refuses businessCategory and signs without it', async (t) => {
  const s = await testStation({ production: false });
  t.teardown(() => s.close());
  await expectRefusal(t, s, opensslCsr(s.dir, { subject: `/CN=${uuid()}${prod}` }).csr, 'POLICY_SUBJECT', /non-production/);
  const r = await s.station.handle({ csr: opensslCsr(s.dir, { subject: `/CN=${uuid()}/OU=${FACTORY}` }).csr, link: 't' });
  t.true(r.ok);
});

test('subject: the device id pattern is station configuration', async (t) => {
  const s = await testStation({ policy: 'device_id = "dev-[0-9]{6}"' });
  t.teardown(() => s.close());
  await expectRefusal(t, s, opensslCsr(s.dir, { subject: `/CN=${uuid()}${prod}` }).csr, 'POLICY_SUBJECT', /pattern/);
  await expectRefusal(t, s, opensslCsr(s.dir, { subject: `/CN=dev-1234567${prod}` }).csr, 'POLICY_SUBJECT', /pattern/);
  const r = await s.station.handle({ csr: opensslCsr(s.dir, { subject: `/CN=dev-123456${prod}` }).csr, link: 't' });
  t.true(r.ok);
});

test.serial('extensions: asking for a CA is POLICY_EXTENSION; other requested extensions are ignored and never copied', async (t) => {
  const s = await station;
  await expectRefusal(t, s, opensslCsr(s.dir, { addext: ['basicConstraints=critical,CA:TRUE'] }).csr, 'POLICY_EXTENSION', /CA:TRUE/);
  await expectRefusal(t, s, opensslCsr(s.dir, { addext: ['keyUsage=critical,keyCertSign'] }).csr, 'POLICY_EXTENSION', /keyCertSign/);
  await expectRefusal(t, s, opensslCsr(s.dir, { addext: ['keyUsage=digitalSignature,cRLSign'] }).csr, 'POLICY_EXTENSION', /cRLSign/);
  const r = await s.station.handle({
    csr: opensslCsr(s.dir, { addext: ['subjectAltName=DNS:evil.example', 'basicConstraints=CA:FALSE', 'extendedKeyUsage=serverAuth'] }).csr,
    link: 't',
  });
  if (!r.ok) return t.fail(r.message);
  const { X509Certificate } = await import('node:crypto');
  const x = new X509Certificate(r.certificatePem);
  t.is(x.subjectAltName, undefined);
  t.false(x.ca);
  t.notRegex(x.toLegacyObject().ext_key_usage?.join(',') ?? '', /1\.3\.6\.1\.5\.5\.7\.3\.1/);
});

test.serial('device id: another key for a device that has a certificate is DUPLICATE_DEVICE, until the operator allows one re-issue', async (t) => {
  const s = await station;
  const id = uuid();
  const subject = `/CN=${id}${prod}`;
  t.true((await s.station.handle({ csr: opensslCsr(s.dir, { subject }).csr, link: 't' })).ok);
  await expectRefusal(t, s, opensslCsr(s.dir, { subject }).csr, 'DUPLICATE_DEVICE', new RegExp(id));
  s.ledger.grantReissue(id, 'board replaced, ticket 42');
  t.true((await s.station.handle({ csr: opensslCsr(s.dir, { subject }).csr, link: 't' })).ok);
  // The grant is good for one certificate.
  await expectRefusal(t, s, opensslCsr(s.dir, { subject }).csr, 'DUPLICATE_DEVICE');
});

test('quota: the station limit is QUOTA_EXCEEDED', async (t) => {
  const s = await testStation({ policy: 'max_certificates = 1' });
  t.teardown(() => s.close());
  t.true((await s.station.handle({ csr: opensslCsr(s.dir).csr, link: 't' })).ok);
  await expectRefusal(t, s, opensslCsr(s.dir).csr, 'QUOTA_EXCEEDED');
});

test('clock: outside the local-ca validity, or behind the last issuance, is CLOCK', async (t) => {
  let now = new Date(0);
  const s = await testStation({}, { clock: () => now });
  t.teardown(() => s.close());
  now = new Date(Date.now() + 3600_000);
  t.true((await s.station.handle({ csr: opensslCsr(s.dir).csr, link: 't' })).ok);
  // Back to real time: an hour behind the last issuance, more than the allowed skew.
  now = new Date();
  await expectRefusal(t, s, opensslCsr(s.dir).csr, 'CLOCK', /behind the last issuance/);
  now = new Date('2001-01-01T00:00:00Z');
  await expectRefusal(t, s, opensslCsr(s.dir).csr, 'CLOCK', /outside the local-ca validity/);
  now = new Date('2099-01-01T00:00:00Z');
  await expectRefusal(t, s, opensslCsr(s.dir).csr, 'CLOCK', /outside the local-ca validity/);
});

test('token: a signature that does not verify with the local-ca key is never released (TOKEN_UNAVAILABLE)', async (t) => {
  const wrong = (inner: Signer): Signer => ({
    hash: inner.hash,
    signatureAlgorithm: inner.signatureAlgorithm,
    publicKeySpki: () => inner.publicKeySpki(),
    publicKey: () => inner.publicKey(),
    // A well-formed signature over other data: what a broken software token returns.
    sign: (digest) => inner.sign(createHash('sha256').update(digest).digest()),
  });
  const s = await testStation({}, { wrapSigner: wrong });
  t.teardown(() => s.close());
  await expectRefusal(t, s, opensslCsr(s.dir).csr, 'TOKEN_UNAVAILABLE', /does not verify/);
  t.is(s.station.health()?.code, 'TOKEN_UNAVAILABLE', 'a refusal for it marks the token down (HEAD /sign answers 503)');
  // The probe (HEAD /sign, status) checks its throwaway signature too: a device is told before it makes a key.
  const fresh = await testStation({}, { wrapSigner: wrong });
  t.teardown(() => fresh.close());
  t.regex((await fresh.station.checkHealth())?.message ?? 'healthy', /does not verify with the local-ca key/);
});

test.serial('a PEM CSR is accepted where the link carries text', async (t) => {
  const s = await station;
  const { csr } = opensslCsr(s.dir);
  const r = await s.station.handle({ csr: Buffer.from(pemEncode(csr, 'CERTIFICATE REQUEST')), link: 't' });
  t.true(r.ok);
});

/** A CSR whose one subject attribute has `oid` (content bytes) for its type: parsing stops there. */
function csrWithAttributeOid(oid: Uint8Array): Uint8Array {
  const attr = tlv(0x30, tlv(0x06, oid), tlv(0x0c, new TextEncoder().encode('x')));
  const info = tlv(0x30, tlv(0x02, new Uint8Array([0])), tlv(0x30, tlv(0x31, attr)), tlv(0x30), tlv(0xa0));
  return tlv(0x30, info, tlv(0x30, tlv(0x06, new Uint8Array([0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02]))), tlv(0x03, new Uint8Array([0])));
}

test.serial("form: an OID of thousands of bytes or with an arc past 2^53 is BAD_CSR, and no refusal carries more than a bounded message", async (t) => {
  const s = await station;
  // 11,000 one-byte arcs: its text would be 22,000 characters in the reply and the ledger.
  await expectRefusal(t, s, csrWithAttributeOid(new Uint8Array(11_000).fill(0x01)), 'BAD_CSR', /OBJECT IDENTIFIER of 11000 bytes/);
  await expectRefusal(t, s, csrWithAttributeOid(new Uint8Array([0x2a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f])), 'BAD_CSR', /arc too large/);
  // The longest OID read (64 bytes of 1-byte arcs) makes a refusal that still fits a J1 frame.
  const r = await s.station.handle({ csr: csrWithAttributeOid(new Uint8Array(64).fill(0x01)), link: 'test' });
  t.false(r.ok);
  if (!r.ok) t.true(r.message.length <= MESSAGE_MAX, `${r.message.length} characters`);
  // Whatever produced it, a refusal message is clipped before it is answered or recorded.
  await s.station.recordRefusal('test', 'BAD_FRAME', 'y'.repeat(50_000));
  await s.station.flushEvents();
  const db = new Database(s.config.station.ledger, { readonly: true });
  const longest = (db.prepare("SELECT max(length(message)) AS n FROM events WHERE kind = 'rejection'").get() as { n: number }).n;
  db.close();
  t.true(longest <= MESSAGE_MAX, `an event message of ${longest} characters`);
});

test.serial('one name, one device: of 16 devices asking for one name at once exactly one gets it, and a device whose id another took as its name is refused', async (t) => {
  const s = await station;
  const name = `rc-${uuid()}`;
  const results = await Promise.all(Array.from({ length: 16 }, () => s.station.handle({ csr: makeDeviceCsr({ deviceId: uuid(), factory: FACTORY, production: true }).der, link: 'test', name })));
  t.is(results.filter((r) => r.ok).length, 1, JSON.stringify(results.filter((r) => !r.ok).map((r) => !r.ok && r.code)));
  for (const r of results) if (!r.ok) t.is(r.code, 'POLICY_SUBJECT', r.message);
  // The reverse order: device X asks for the name U, the id of a device not made yet; then device U asks with
  // no name (J1, a stick: its id is its name). X is refused the name, so U gets its own.
  const u = uuid();
  const x = await s.station.handle({ csr: makeDeviceCsr({ deviceId: uuid(), factory: FACTORY, production: true }).der, link: 'test', name: u });
  t.is(!x.ok && x.code, 'POLICY_SUBJECT');
  t.regex(!x.ok ? x.message : '', /reads as a UUID, the form of a device id, and is not this device's/);
  t.true((await s.station.handle({ csr: makeDeviceCsr({ deviceId: u, factory: FACTORY, production: true }).der, link: 'test' })).ok);
});

test.serial('a J1 SIGN body must be DER, as the protocol says: PEM text there is BAD_CSR; PEM text with two CSR blocks is BAD_CSR on any link', async (t) => {
  const sv = await served();
  t.teardown(() => sv.close());
  const der = makeDeviceCsr({ deviceId: uuid(), factory: FACTORY, production: true }).der;
  const pem = await sv.jig.request('SIGN', 'p1', Buffer.from(pemEncode(der, 'CERTIFICATE REQUEST')));
  t.is(pem.code, 'BAD_CSR');
  t.regex(pem.message ?? '', /not PEM text/);
  t.is((await sv.jig.request('SIGN', 'd1', Buffer.from(der))).type, 'CERT', 'the same CSR as DER is signed');
  const s = await station;
  const two = pemEncode(makeDeviceCsr({ deviceId: uuid(), factory: FACTORY, production: true }).der, 'CERTIFICATE REQUEST') + pemEncode(makeDeviceCsr({ deviceId: uuid(), factory: FACTORY, production: true }).der, 'CERTIFICATE REQUEST');
  await expectRefusal(t, s, Buffer.from(two), 'BAD_CSR', /2 CERTIFICATE REQUEST blocks/);
});
