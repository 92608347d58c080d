/**
 * One canonical device key: SEQUENCE { SEQUENCE { id-ecPublicKey, namedCurve },
 * BIT STRING 04 || X || Y }. Every other shaping of an EC key, each in a CSR
 * whose signature verifies with the key it carries, is refused with the
 * profile's code and leaves nothing in the ledger. The first case is the
 * one that reached a certificate OpenSSL cannot read.
 */
import test, { type ExecutionContext } from 'ava';
import { createHash, generateKeyPairSync, sign, X509Certificate, type KeyObject } from 'node:crypto';
import Database from 'better-sqlite3';
import type { ProtocolCode } from '../src/errors.js';
import { OID } from '../src/oids.js';
import { der, name, signed, tlv } from '../src/x509/asn1.js';
import { deviceSubject, makeDeviceCsr } from '../src/x509/device-csr.js';
import { verifyLedger } from '../src/station/index.js';
import { FACTORY, openssl, opensslCsr, testStation, uuid, type TestStation } from './helpers/pki.js';
import * as asn1js from 'asn1js';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { parseCsr, signatureTwin } from '../src/x509/index.js';
import { join } from 'node:path';

const NULL = new Uint8Array([0x05, 0x00]);
const oidDer = (dotted: string): Uint8Array => {
  const [first, second, ...rest] = dotted.split('.').map(Number);
  const arcs = [first! * 40 + second!, ...rest];
  const bytes: number[] = [];
  for (const arc of arcs) {
    const chunk = [arc & 0x7f];
    for (let v = arc >> 7; v > 0; v >>= 7) chunk.unshift((v & 0x7f) | 0x80);
    bytes.push(...chunk);
  }
  return tlv(0x06, new Uint8Array(bytes));
};
const EC_KEY = oidDer(OID.ecPublicKey);

interface DeviceKey {
  key: KeyObject;
  curveOid: Uint8Array;
  /** 04 || X || Y */
  point: Uint8Array;
}

function deviceKey(curve: 'P-256' | 'P-384' = 'P-256'): DeviceKey {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: curve });
  const jwk = publicKey.export({ format: 'jwk' });
  const point = Buffer.concat([Buffer.from([4]), Buffer.from(jwk.x!, 'base64url'), Buffer.from(jwk.y!, 'base64url')]);
  return { key: privateKey, curveOid: oidDer(curve === 'P-256' ? OID.p256 : OID.p384), point };
}

const spki = (algorithm: Uint8Array[], bitString: Uint8Array, ...extra: Uint8Array[]): Uint8Array =>
  tlv(0x30, tlv(0x30, ...algorithm), tlv(0x03, bitString), ...extra);
const bitsOf = (point: Uint8Array, unused = 0): Uint8Array => new Uint8Array([unused, ...point]);

/** A CSR for a new production device with this key block, signed by the device key (or with a broken signature). */
function csrWith(keyBlock: Uint8Array, key: KeyObject, opts: { breakSignature?: boolean; signatureParameters?: boolean } = {}): Uint8Array {
  const info = tlv(
    0x30,
    new Uint8Array([0x02, 0x01, 0x00]),
    der(name(deviceSubject({ deviceId: uuid(), factory: FACTORY, production: true }))),
    keyBlock,
    new Uint8Array([0xa0, 0x00]),
  );
  const signature = new Uint8Array(sign('sha256', info, key));
  if (opts.breakSignature) signature[signature.length - 1]! ^= 1;
  if (!opts.signatureParameters) return signed(info, OID.ecdsaSha256, signature);
  return tlv(0x30, info, tlv(0x30, oidDer(OID.ecdsaSha256), NULL), tlv(0x03, new Uint8Array([0]), signature));
}

const canonical = (k: DeviceKey): Uint8Array => spki([EC_KEY, k.curveOid], bitsOf(k.point));

function compressed(k: DeviceKey): Uint8Array {
  const size = (k.point.length - 1) / 2;
  return new Uint8Array([0x02 | (k.point[k.point.length - 1]! & 1), ...k.point.subarray(1, 1 + size)]);
}

function withExplicitParameters(k: DeviceKey): Uint8Array {
  const pem = k.key.export({ type: 'sec1', format: 'pem' }) as string;
  return new Uint8Array(openssl(['ec', '-param_enc', 'explicit', '-pubout', '-outform', 'DER'], pem));
}

let station: Promise<TestStation>;
test.before(() => {
  station = testStation({ policy: 'allow_p384 = true' });
});
test.after.always(async () => (await station).close());

async function expectRefusal(t: ExecutionContext, csr: Uint8Array, code: ProtocolCode, message: RegExp): Promise<void> {
  const s = await station;
  const before = s.ledger.issuedCount();
  const r = await s.station.handle({ csr, link: 'test' });
  if (r.ok) return void t.fail(`expected ${code}, got a certificate`);
  t.is(r.code, code, r.message);
  t.regex(r.message, message);
  t.is(s.ledger.issuedCount(), before, 'nothing issued');
  const db = new Database(s.config.station.ledger, { readonly: true });
  try {
    const ev = db
      .prepare("SELECT code, message FROM events WHERE kind = 'rejection' AND csr_sha256 = ? ORDER BY seq DESC LIMIT 1")
      .get(createHash('sha256').update(csr).digest('hex')) as { code: string; message: string } | undefined;
    t.deepEqual(ev, { code, message: r.message }, 'rejection recorded');
  } finally {
    db.close();
  }
}

test.serial('control: the canonical P-256 and P-384 key blocks are signed, and the certificate carries them byte for byte', async (t) => {
  const s = await station;
  for (const curve of ['P-256', 'P-384'] as const) {
    const k = deviceKey(curve);
    const r = await s.station.handle({ csr: csrWith(canonical(k), k.key), link: 'test' });
    if (!r.ok) return void t.fail(`${curve}: ${r.code} ${r.message}`);
    t.deepEqual(new Uint8Array(new X509Certificate(r.certificatePem).publicKey.export({ type: 'spki', format: 'der' })), canonical(k));
  }
});

test.serial('the reproduction: a NULL after the curve OID is BAD_CSR, signature valid or not', async (t) => {
  const k = deviceKey();
  const block = spki([EC_KEY, k.curveOid, NULL], bitsOf(k.point));
  await expectRefusal(t, csrWith(block, k.key), 'BAD_CSR', /public key algorithm has 3 fields/);
  await expectRefusal(t, csrWith(block, k.key, { breakSignature: true }), 'BAD_CSR', /public key algorithm has 3 fields/);
  const k384 = deviceKey('P-384');
  await expectRefusal(t, csrWith(spki([EC_KEY, k384.curveOid, NULL], bitsOf(k384.point)), k384.key), 'BAD_CSR', /at most 2/);
});

test.serial('explicit curve parameters, NULL parameters and no parameters are POLICY_KEY, before the signature', async (t) => {
  const k = deviceKey();
  const explicit = withExplicitParameters(k);
  t.true(explicit.length > 200, 'openssl wrote explicit parameters');
  for (const breakSignature of [false, true]) {
    await expectRefusal(t, csrWith(explicit, k.key, { breakSignature }), 'POLICY_KEY', /explicit curve parameters/);
    await expectRefusal(t, csrWith(spki([EC_KEY, NULL], bitsOf(k.point)), k.key, { breakSignature }), 'POLICY_KEY', /NULL parameters/);
    await expectRefusal(t, csrWith(spki([EC_KEY], bitsOf(k.point)), k.key, { breakSignature }), 'POLICY_KEY', /no curve/);
  }
});

test.serial('compressed, hybrid (06/07) and wrong-length points are POLICY_KEY, before the signature', async (t) => {
  for (const curve of ['P-256', 'P-384'] as const) {
    const k = deviceKey(curve);
    const hybrid = new Uint8Array([0x06 | (k.point[k.point.length - 1]! & 1), ...k.point.subarray(1)]);
    for (const breakSignature of [false, true]) {
      await expectRefusal(t, csrWith(spki([EC_KEY, k.curveOid], bitsOf(compressed(k))), k.key, { breakSignature }), 'POLICY_KEY', /compressed/);
      await expectRefusal(t, csrWith(spki([EC_KEY, k.curveOid], bitsOf(hybrid)), k.key, { breakSignature }), 'POLICY_KEY', /hybrid/);
      await expectRefusal(t, csrWith(spki([EC_KEY, k.curveOid], bitsOf(new Uint8Array([...k.point, 0]))), k.key, { breakSignature }), 'POLICY_KEY', /uncompressed point of/);
    }
  }
  // A P-384 point under the P-256 OID.
  const k384 = deviceKey('P-384');
  await expectRefusal(t, csrWith(spki([EC_KEY, deviceKey().curveOid], bitsOf(k384.point)), k384.key), 'POLICY_KEY', /uncompressed point of 65 bytes/);
});

test.serial('a point not on the curve is POLICY_KEY', async (t) => {
  const k = deviceKey();
  const off = k.point.slice();
  off[off.length - 1]! ^= 1;
  await expectRefusal(t, csrWith(spki([EC_KEY, k.curveOid], bitsOf(off)), k.key), 'POLICY_KEY', /not a point on P-256/);
});

test('under load, where the proof of possession comes after the signature and uses the key OpenSSL read back, a point not on the curve is still POLICY_KEY and never issued', async (t) => {
  // A station of its own: no proof has failed on it, so the proof is left for the checking worker.
  const s = await testStation();
  t.teardown(() => s.close());
  const offCurve = (): Uint8Array => {
    const k = deviceKey();
    const off = k.point.slice();
    off[off.length - 1]! ^= 1;
    return csrWith(spki([EC_KEY, k.curveOid], bitsOf(off)), k.key);
  };
  for (let round = 0; round < 2; round++) {
    // Six others in flight: not alone, and fewer than MAX_UNPROVEN waiting unproven with it.
    const good = Array.from({ length: 6 }, () => makeDeviceCsr({ deviceId: uuid(), factory: FACTORY, production: true }).der);
    const before = s.ledger.issuedCount();
    const results = await Promise.all([...good, offCurve()].map((csr) => s.station.handle({ csr, link: 'test' })));
    t.true(results.slice(0, 6).every((r) => r.ok));
    const last = results[6]!;
    t.false(last.ok);
    if (!last.ok) {
      t.is(last.code, 'POLICY_KEY', last.message);
      t.regex(last.message, /not a point on P-256/);
    }
    t.is(s.ledger.issuedCount(), before + 6);
  }
});

test.serial('an extra element after the key bits, unused bits in the key BIT STRING, and trailing bytes are BAD_CSR', async (t) => {
  const k = deviceKey();
  await expectRefusal(t, csrWith(spki([EC_KEY, k.curveOid], bitsOf(k.point), NULL), k.key), 'BAD_CSR', /subjectPublicKeyInfo must have 2 fields/);
  await expectRefusal(t, csrWith(spki([EC_KEY, k.curveOid], bitsOf(k.point, 1)), k.key), 'BAD_CSR', /unused bits/);
  await expectRefusal(t, csrWith(spki([EC_KEY, k.curveOid], bitsOf(k.point, 1)), k.key, { breakSignature: true }), 'BAD_CSR', /unused bits/);
  // Bytes after the key block inside certificationRequestInfo's SEQUENCE would be a fifth field.
  const block = canonical(k);
  const padded = new Uint8Array([...block, 0x05, 0x00]);
  await expectRefusal(t, csrWith(padded, k.key), 'BAD_CSR', /certificationRequestInfo must have 4 fields/);
});

test.serial('an ECDSA signature algorithm with parameters is BAD_SIGNATURE', async (t) => {
  const k = deviceKey();
  await expectRefusal(t, csrWith(canonical(k), k.key, { signatureParameters: true }), 'BAD_SIGNATURE', /must have no parameters/);
});

test.serial('after all of these the ledger verifies: only the controls are in it', async (t) => {
  const s = await station;
  const { checked, problem } = verifyLedger(s.config);
  t.is(problem, null);
  t.is(checked, 2);
});

const P256_ORDER = 0xffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551n;

/** The CSR with its ECDSA signature's other valid form, (r, n - s): what anyone who saw the CSR can make, without its key. */
function signatureTwinOf(csrDer: Uint8Array): Uint8Array {
  const outer = asn1js.fromBER(csrDer).result as asn1js.Sequence;
  const [info, alg, bits] = outer.valueBlock.value as [asn1js.Sequence, asn1js.Sequence, asn1js.BitString];
  const sig = asn1js.fromBER(bits.valueBlock.valueHexView).result as asn1js.Sequence;
  const [r, s] = sig.valueBlock.value as [asn1js.Integer, asn1js.Integer];
  const twinSig = new asn1js.Sequence({ value: [r, asn1js.Integer.fromBigInt(P256_ORDER - s.toBigInt())] }).toBER();
  return tlv(0x30, info.valueBeforeDecodeView, alg.valueBeforeDecodeView, tlv(0x03, new Uint8Array([0]), new Uint8Array(twinSig)));
}

test("a CSR's signature twin, which anyone who saw the CSR can make: the same certificate again, never a second one that would replace the device's own", async (t) => {
  const s = await testStation();
  t.teardown(() => s.close());
  const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');
  for (const twinFirst of [false, true]) {
    const { csr } = opensslCsr(s.dir);
    const twin = signatureTwinOf(csr);
    t.not(sha(twin), sha(csr), 'other bytes');
    // OpenSSL takes the twin as a CSR whose signature verifies.
    const file = join(s.dir, `twin-${twinFirst}.der`);
    writeFileSync(file, twin);
    openssl(['req', '-verify', '-inform', 'DER', '-in', file, '-noout']);
    const [a, b] = twinFirst ? [twin, csr] : [csr, twin];
    const first = await s.station.handle({ csr: a, link: 'serial:/dev/ttyACM0' });
    const second = await s.station.handle({ csr: b, link: 'http:127.0.0.1' });
    const again = await s.station.handle({ csr: a, link: 'serial:/dev/ttyACM0' });
    t.true(first.ok && second.ok && again.ok, [first, second, again].map((r) => (r.ok ? 'ok' : r.message)).join('; '));
    if (first.ok && second.ok && again.ok) {
      t.is(second.certificatePem, first.certificatePem, 'the twin gets the certificate already made');
      t.is(again.certificatePem, first.certificatePem, 'and the device its own, still');
    }
  }
  t.is(s.ledger.issuedCount(), 2, 'one certificate a CSR, whichever form came first');
});

test('signatureTwin on P-256 and P-384 CSRs: OpenSSL verifies each twin, and the twin of the twin is the CSR itself', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'twin-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  for (const curve of ['prime256v1', 'secp384r1', 'prime256v1', 'secp384r1', 'prime256v1', 'secp384r1']) {
    const { csr } = opensslCsr(dir, { newkey: ['-newkey', 'ec', '-pkeyopt', `ec_paramgen_curve:${curve}`] });
    const twin = signatureTwin(parseCsr(csr));
    t.truthy(twin, curve);
    const file = join(dir, 'twin.der');
    writeFileSync(file, twin!);
    t.notThrows(() => openssl(['req', '-verify', '-inform', 'DER', '-in', file, '-noout']), `${curve}: OpenSSL verifies the twin`);
    t.deepEqual(Buffer.from(signatureTwin(parseCsr(twin!))!), Buffer.from(csr), `${curve}: the twin's twin is the CSR`);
  }
});

test('a CSR as `openssl req -text` prints it (over a kilobyte of text, then the PEM block) is read past its text; as a J1 DER body it is named PEM text', async (t) => {
  const s = await testStation();
  t.teardown(() => s.close());
  const { csr } = opensslCsr(s.dir, { outform: 'PEM' });
  const text = openssl(['req', '-text'], csr);
  t.true(text.indexOf('-----BEGIN CERTIFICATE REQUEST-----') > 1000, 'the block comes after a kilobyte of text');
  const r = await s.station.handle({ csr: text, link: 'spool:/media/stick' });
  t.true(r.ok, r.ok ? '' : `${r.code} ${r.message}`);
  const j1 = await s.station.handle({ csr: text, link: 'serial:/dev/ttyACM0', encoding: 'der' });
  t.is(!j1.ok && j1.code, 'BAD_CSR');
  t.regex(!j1.ok ? j1.message : '', /not PEM text/);
});

/** A CSR for a new production device that requests these extensions (each a DER Extension), correctly signed. */
function csrRequesting(...extensions: Uint8Array[]): Uint8Array {
  const k = deviceKey();
  const request = tlv(0x30, oidDer('1.2.840.113549.1.9.14'), tlv(0x31, tlv(0x30, ...extensions)));
  const info = tlv(0x30, new Uint8Array([0x02, 0x01, 0x00]), der(name(deviceSubject({ deviceId: uuid(), factory: FACTORY, production: true }))), canonical(k), tlv(0xa0, request));
  return signed(info, OID.ecdsaSha256, new Uint8Array(sign('sha256', info, k.key)));
}

test.serial('requested extensions in DER only: a BOOLEAN other than 00 or FF, critical FALSE spelt out, and an unreadable basicConstraints are BAD_CSR', async (t) => {
  const basicConstraints = oidDer('2.5.29.19');
  const caFalse = tlv(0x04, tlv(0x30));
  await expectRefusal(t, csrRequesting(tlv(0x30, basicConstraints, new Uint8Array([0x01, 0x01, 0x01]), caFalse)), 'BAD_CSR', /a BOOLEAN must be 00 or FF \(DER\)/);
  await expectRefusal(t, csrRequesting(tlv(0x30, basicConstraints, new Uint8Array([0x01, 0x01, 0x00]), caFalse)), 'BAD_CSR', /critical FALSE must be left out \(DER\)/);
  await expectRefusal(t, csrRequesting(tlv(0x30, basicConstraints, tlv(0x04, new Uint8Array([0xff, 0xff])))), 'BAD_CSR', /basicConstraints extension's value is not readable/);
});

test.serial('a CSR superseded by a newer CSR for the same key, sent again: told to send the newer one, not that its key is no longer accepted', async (t) => {
  const s = await station;
  const id = uuid();
  const key = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;
  const older = makeDeviceCsr({ deviceId: id, factory: FACTORY, production: true }, key).der;
  t.true((await s.station.handle({ csr: older, link: 'test' })).ok);
  t.true((await s.station.handle({ csr: makeDeviceCsr({ deviceId: id, factory: FACTORY, production: true }, key).der, link: 'test' })).ok);
  await expectRefusal(t, older, 'DUPLICATE_DEVICE', /superseded by seq \d+, made for the same key from a newer CSR: send that CSR again/);
});

test.serial('a signature whose s is not minimal DER (a 00 in front of n - s) is BAD_SIGNATURE, not a replay of the CSR it is the twin of', async (t) => {
  const s = await station;
  // A CSR whose n - s has its top bit clear, so that a 00 in front of it is not DER.
  for (;;) {
    const { csr } = opensslCsr(s.dir);
    const outer = asn1js.fromBER(csr).result as asn1js.Sequence;
    const [info, alg, bits] = outer.valueBlock.value as [asn1js.Sequence, asn1js.Sequence, asn1js.BitString];
    const sig = asn1js.fromBER(bits.valueBlock.valueHexView).result as asn1js.Sequence;
    const [r, sInt] = sig.valueBlock.value as [asn1js.Integer, asn1js.Integer];
    const other = Buffer.from((P256_ORDER - sInt.toBigInt()).toString(16).padStart(64, '0'), 'hex');
    if (other[0]! >= 0x80) continue;
    t.true((await s.station.handle({ csr, link: 'test' })).ok);
    const padded = tlv(0x30, new Uint8Array(r.toBER()), tlv(0x02, new Uint8Array([0]), other));
    const bad = tlv(0x30, info.valueBeforeDecodeView, alg.valueBeforeDecodeView, tlv(0x03, new Uint8Array([0]), padded));
    await expectRefusal(t, bad, 'BAD_SIGNATURE', /does not verify/);
    return;
  }
});

test.serial('text that starts with "0" (0x30, as DER does) and holds a PEM block is PEM text, not DER', async (t) => {
  const s = await station;
  const { csr } = opensslCsr(s.dir, { outform: 'PEM' });
  const text = Buffer.concat([Buffer.from('0 the request below\n'), csr]);
  const r = await s.station.handle({ csr: text, link: 'spool:/media/stick' });
  t.true(r.ok, r.ok ? '' : `${r.code} ${r.message}`);
  const j1 = await s.station.handle({ csr: text, link: 'serial:/dev/ttyACM0', encoding: 'der' });
  t.is(!j1.ok && j1.code, 'BAD_CSR');
  t.regex(!j1.ok ? j1.message : '', /not PEM text/);
});
