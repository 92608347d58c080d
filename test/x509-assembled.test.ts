/**
 * The last gate, checkAssembled: OpenSSL reads the assembled certificate
 * back, and serial, issuer, validity, subject and public key must be what
 * was built; otherwise INTERNAL and, in the station, nothing issued.
 */
import test from 'ava';
import { createHash, sign, X509Certificate } from 'node:crypto';
import Database from 'better-sqlite3';
import { LineSignerError } from '../src/errors.js';
import { OID } from '../src/oids.js';
import { Station, type StationParts } from '../src/station/station.js';
import { tlv } from '../src/x509/asn1.js';
import { assembleCertificate, buildTbs, checkAssembled, newSerial, type CertificateRequestFacts, type IssuerProfile } from '../src/x509/certificate.js';
import { makeDeviceCsr } from '../src/x509/device-csr.js';
import { parseCsr, canonicalSpki } from '../src/x509/csr.js';
import { softwareIssuer } from './helpers/csr-properties.js';
import { FACTORY, testStation, uuid } from './helpers/pki.js';

const issuer = softwareIssuer();

function built(notBefore = new Date(), serial = newSerial()): { certificate: Uint8Array; facts: CertificateRequestFacts } {
  const profile = issuer.profile;
  const deviceId = uuid();
  const csr = parseCsr(makeDeviceCsr({ deviceId, factory: FACTORY, production: true }).der);
  const facts: CertificateRequestFacts = {
    serial,
    notBefore,
    subject: [
      { type: OID.commonName, value: deviceId },
      { type: OID.organizationalUnit, value: FACTORY },
      { type: OID.businessCategory, value: 'production' },
    ],
    spki: canonicalSpki(csr),
    publicKeyBits: csr.publicKeyBits,
  };
  const tbs = buildTbs(profile, facts);
  return { certificate: assembleCertificate(tbs, profile.signatureAlgorithm, new Uint8Array(sign('sha256', tbs, issuer.key))), facts };
}

function gateSays(certificate: Uint8Array, facts: CertificateRequestFacts, profile: IssuerProfile = issuer.profile): string | null {
  try {
    checkAssembled(certificate, profile, facts);
    return null;
  } catch (err) {
    if (!(err instanceof LineSignerError) || err.code !== 'INTERNAL') throw err;
    return err.message;
  }
}

test('a certificate as built passes, including single-digit days, the last UTCTime year and GeneralizedTime', (t) => {
  for (const when of ['2026-11-30T06:33:27.456Z', '2027-03-05T00:00:00Z', '2029-12-31T23:59:59Z', '2049-12-31T23:59:59Z', '2050-01-01T00:00:00Z']) {
    const { certificate, facts } = built(new Date(when));
    t.is(gateSays(certificate, facts), null, when);
  }
});

test('serials pass whatever their first bytes: the 00 that keeps the INTEGER positive, a small first byte, one byte', (t) => {
  const rest = new Uint8Array(15).fill(0x5a);
  for (const serial of [new Uint8Array([0x00, 0xa0, ...rest]), new Uint8Array([0x0a, ...rest]), new Uint8Array([0x7f, ...rest]), new Uint8Array([0x01])]) {
    const { certificate, facts } = built(new Date(), serial);
    t.is(gateSays(certificate, facts), null, Buffer.from(serial).toString('hex'));
  }
});

test('a certificate that differs from what was built in serial, validity, subject, key or issuer is INTERNAL and says which', (t) => {
  const { certificate, facts } = built();
  const other = built();
  t.regex(gateSays(certificate, { ...facts, serial: other.facts.serial })!, /serial/);
  t.regex(gateSays(certificate, { ...facts, notBefore: new Date(facts.notBefore.getTime() + 1000) })!, /notBefore/);
  t.regex(gateSays(certificate, facts, { ...issuer.profile, validityDays: 7299 })!, /notAfter/);
  t.regex(gateSays(certificate, { ...facts, subject: other.facts.subject })!, /subject/);
  t.regex(gateSays(certificate, { ...facts, subject: facts.subject.slice(0, 2) })!, /subject/);
  t.regex(gateSays(certificate, { ...facts, spki: other.facts.spki })!, /key block/);
  t.regex(gateSays(certificate, facts, { ...issuer.profile, issuerName: other.facts.spki })!, /issuer/);
});

test('a certificate OpenSSL cannot read (the non-canonical key block of the reproduction, truncation, trailing bytes) is INTERNAL', (t) => {
  const { facts } = built();
  // The key block as the reproduction CSR had it: a NULL after the curve OID.
  const alg = tlv(0x30, facts.spki.subarray(4, 13), facts.spki.subarray(13, 23), new Uint8Array([5, 0]));
  const nonCanonical = tlv(0x30, alg, facts.spki.subarray(23));
  const tbs = buildTbs(issuer.profile, { ...facts, spki: nonCanonical });
  const certificate = assembleCertificate(tbs, OID.ecdsaSha256, new Uint8Array(sign('sha256', tbs, issuer.key)));
  t.throws(() => new X509Certificate(Buffer.from(certificate)), undefined, 'OpenSSL refuses it too');
  t.regex(gateSays(certificate, { ...facts, spki: nonCanonical })!, /cannot be read back/);

  const good = built();
  t.regex(gateSays(good.certificate.subarray(0, good.certificate.length - 1), good.facts)!, /cannot be read back/);
  t.regex(gateSays(new Uint8Array([...good.certificate, 0]), good.facts)!, /trailing bytes|cannot be read back/);
  t.regex(gateSays(new Uint8Array(0), good.facts)!, /cannot be read back/);
});

test('in the station, a certificate that fails the gate is not issued, and the rejection says why', async (t) => {
  const s = await testStation();
  t.teardown(() => s.close());
  // The same station parts, with an issuer name that is not a Name: the token signs, OpenSSL cannot read the result.
  const inner = s.station as unknown as { signer: StationParts['signer']; ledger: StationParts['ledger']; ca: StationParts['localCa']; rules: StationParts['rules'] };
  const broken = new Station({
    stationId: s.station.stationId,
    signer: inner.signer,
    ledger: inner.ledger,
    localCa: { ...inner.ca, profile: { ...inner.ca.profile, issuerName: new Uint8Array([0x30, 0x03, 0x02, 0x01, 0x00]) } },
    rootPem: s.station.rootPem,
    rules: inner.rules,
  });
  const { der } = makeDeviceCsr({ deviceId: uuid(), factory: FACTORY, production: true });
  const r = await broken.handle({ csr: der, link: 'test' });
  if (r.ok) return void t.fail('issued a certificate OpenSSL cannot read');
  t.is(r.code, 'INTERNAL');
  t.regex(r.message, /assembled certificate cannot be read back .*nothing issued/);
  t.is(s.ledger.issuedCount(), 0);
  const db = new Database(s.config.station.ledger, { readonly: true });
  try {
    const ev = db.prepare("SELECT code, message FROM events WHERE kind = 'rejection' AND csr_sha256 = ?").get(createHash('sha256').update(der).digest('hex'));
    t.deepEqual(ev, { code: 'INTERNAL', message: r.message });
  } finally {
    db.close();
  }
  // The real station signs the same CSR.
  t.true((await s.station.handle({ csr: der, link: 'test' })).ok);
});
