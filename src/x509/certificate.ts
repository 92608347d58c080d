/**
 * Building a device certificate exactly as ../shared/spec/certificate-profile.md
 * says. The parts that never change between certificates (issuer, key
 * identifiers, the extension shapes) are prepared once per local-ca; the
 * per-certificate work is a handful of asn1js values and two hashes.
 */
import { createHash, randomBytes, verify, X509Certificate, type KeyObject } from 'node:crypto';
import * as asn1js from 'asn1js';
import { LineSignerError } from '../errors.js';
import { OID } from '../oids.js';
import { serialText } from '../serial.js';
import { der, oid, seq, tlv } from './asn1.js';
import { proveKeyPossession, type ParsedCsr } from './csr.js';
import { childrenOf, content, oidText, readTlv, whole, type Tlv } from './der-reader.js';

/** What every certificate signed by one local-ca shares. */
export interface IssuerProfile {
  /** The local-ca certificate's subject Name, DER, byte for byte. */
  issuerName: Uint8Array;
  /** The local-ca's subjectKeyIdentifier. */
  authorityKeyId: Uint8Array;
  /** ecdsa-with-SHA256 for a P-256 local-ca, ecdsa-with-SHA384 for P-384. */
  signatureAlgorithm: string;
  hash: 'sha256' | 'sha384';
  validityDays: number;
}

export interface CertificateRequestFacts {
  serial: Uint8Array;
  notBefore: Date;
  /** Attribute (type OID, value) in the order they stand in the checked CSR. */
  subject: ReadonlyArray<{ type: string; value: string }>;
  /** SubjectPublicKeyInfo: the CSR's, which equals its canonical encoding (x509 canonicalSpki). */
  spki: Uint8Array;
  /** subjectPublicKey bits, for the subjectKeyIdentifier. */
  publicKeyBits: Uint8Array;
}

function extension(id: string, critical: boolean, value: Uint8Array): asn1js.Sequence {
  const parts: asn1js.AsnType[] = [oid(id)];
  if (critical) parts.push(new asn1js.Boolean({ value: true }));
  parts.push(new asn1js.OctetString({ valueHex: value.slice().buffer }));
  return seq(...parts);
}

// Extension values that are the same in every device certificate.
const BASIC_CONSTRAINTS_END_ENTITY = der(seq()); // cA FALSE is the DEFAULT, so DER omits it
const KEY_USAGE_DIGITAL_SIGNATURE = der(new asn1js.BitString({ valueHex: new Uint8Array([0x80]).buffer, unusedBits: 7 }));
const EKU_CLIENT_AUTH = der(seq(oid(OID.clientAuth)));

/**
 * 16 random bytes, top bit cleared so the INTEGER is positive, never zero.
 * DER wants the shortest form, so leading zero bytes are dropped.
 */
export function newSerial(): Uint8Array {
  for (;;) {
    const bytes = randomBytes(16);
    bytes[0]! &= 0x7f;
    let i = 0;
    while (i < bytes.length - 1 && bytes[i] === 0 && (bytes[i + 1]! & 0x80) === 0) i++;
    const serial = new Uint8Array(bytes.subarray(i));
    if (serial.some((b) => b !== 0)) return serial;
  }
}

/** The serial as `openssl x509 -serial` prints it (even count of hex digits), lowercase. */
export function serialHex(serial: Uint8Array): string {
  return serialText(Buffer.from(serial).toString('hex'));
}

/** RFC 5280: UTCTime through 2049, GeneralizedTime from 2050; whole seconds. */
function time(date: Date): asn1js.AsnType {
  const valueDate = new Date(Math.floor(date.getTime() / 1000) * 1000);
  return valueDate.getUTCFullYear() < 2050 ? new asn1js.UTCTime({ valueDate }) : new asn1js.GeneralizedTime({ valueDate });
}

export function notAfterFor(notBefore: Date, validityDays: number): Date {
  return new Date(Math.floor(notBefore.getTime() / 1000) * 1000 + validityDays * 86_400_000);
}

export function subjectKeyIdentifier(publicKeyBits: Uint8Array): Uint8Array {
  return createHash('sha1').update(publicKeyBits).digest();
}

/**
 * The DER of every part of a device certificate's TBS that depends only on
 * the local-ca, made once: asn1js object building is the costly step of a
 * certificate, and most of a TBS is the same every time.
 */
interface TbsTemplate {
  version: Uint8Array;
  signature: Uint8Array;
  /** basicConstraints, keyUsage and extendedKeyUsage extensions, concatenated. */
  fixedExtensions: Uint8Array;
  authorityKeyIdExtension: Uint8Array;
  /** subjectKeyIdentifier extension up to its 20-byte key identifier. */
  skiPrefix: Uint8Array;
}

const templates = new WeakMap<IssuerProfile, TbsTemplate>();

function template(issuer: IssuerProfile): TbsTemplate {
  let t = templates.get(issuer);
  if (t) return t;
  const aki = der(seq(new asn1js.Primitive({ idBlock: { tagClass: 3, tagNumber: 0 }, valueHex: issuer.authorityKeyId.slice().buffer })));
  const skiShape = der(extension(OID.subjectKeyIdentifier, false, der(new asn1js.OctetString({ valueHex: new ArrayBuffer(20) }))));
  t = {
    version: der(new asn1js.Constructed({ idBlock: { tagClass: 3, tagNumber: 0 }, value: [new asn1js.Integer({ value: 2 })] })),
    signature: der(seq(oid(issuer.signatureAlgorithm))),
    fixedExtensions: Buffer.concat([
      der(extension(OID.basicConstraints, true, BASIC_CONSTRAINTS_END_ENTITY)),
      der(extension(OID.keyUsage, true, KEY_USAGE_DIGITAL_SIGNATURE)),
      der(extension(OID.extKeyUsage, true, EKU_CLIENT_AUTH)),
    ]),
    authorityKeyIdExtension: der(extension(OID.authorityKeyIdentifier, false, aki)),
    skiPrefix: skiShape.subarray(0, skiShape.length - 20),
  };
  templates.set(issuer, t);
  return t;
}

// Certificates issued in the same second share their validity encoding.
let lastValidity: { second: number; days: number; der: Uint8Array } | undefined;

function validity(notBefore: Date, days: number): Uint8Array {
  const second = Math.floor(notBefore.getTime() / 1000);
  if (lastValidity?.second !== second || lastValidity.days !== days) {
    lastValidity = { second, days, der: der(seq(time(notBefore), time(notAfterFor(notBefore, days)))) };
  }
  return lastValidity.der;
}

const attributeTypes = new Map<string, Uint8Array>();
function attributeType(type: string): Uint8Array {
  let d = attributeTypes.get(type);
  if (!d) attributeTypes.set(type, (d = der(oid(type))));
  return d;
}

const utf8 = new TextEncoder();

/** tbsCertificate, DER: the precomputed pieces around this request's serial, subject and key. */
export function buildTbs(issuer: IssuerProfile, facts: CertificateRequestFacts): Uint8Array {
  const t = template(issuer);
  const ski = tlv(0x30, t.skiPrefix.subarray(2), subjectKeyIdentifier(facts.publicKeyBits));
  const subject = tlv(
    0x30,
    ...facts.subject.map((a) => tlv(0x31, tlv(0x30, attributeType(a.type), tlv(0x0c, utf8.encode(a.value))))),
  );
  return tlv(
    0x30,
    t.version,
    tlv(0x02, facts.serial), // newSerial gives the minimal positive form DER wants
    t.signature,
    issuer.issuerName,
    validity(facts.notBefore, issuer.validityDays),
    subject,
    facts.spki,
    tlv(0xa3, tlv(0x30, t.fixedExtensions, ski, t.authorityKeyIdExtension)),
  );
}

/** Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signatureValue }. */
export function assembleCertificate(tbs: Uint8Array, signatureAlgorithm: string, signature: Uint8Array): Uint8Array {
  return tlv(0x30, tbs, algorithmIdentifier(signatureAlgorithm), tlv(0x03, new Uint8Array([0]), signature));
}

const algorithmIdentifiers = new Map<string, Uint8Array>();
function algorithmIdentifier(id: string): Uint8Array {
  let d = algorithmIdentifiers.get(id);
  if (!d) algorithmIdentifiers.set(id, (d = der(seq(oid(id)))));
  return d;
}

/**
 * Checks the token's signature before anything leaves the station: software
 * tokens have been seen to return well-formed but wrong ECDSA signatures.
 */
export function checkIssuedSignature(tbs: Uint8Array, hash: string, signature: Uint8Array, caKey: KeyObject): void {
  let ok = false;
  try {
    ok = verify(hash, tbs, caKey, signature);
  } catch {
    ok = false;
  }
  if (!ok) {
    throw new LineSignerError('TOKEN_UNAVAILABLE', 'the token returned a signature that does not verify with the local-ca key; nothing issued');
  }
}

const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];
const two = (n: number): string => String(n).padStart(2, '0');

/** A time as OpenSSL's ASN1_TIME_print (and so X509Certificate's validFrom) writes it: "Nov  3 06:33:27 2026 GMT". */
function opensslTime(d: Date): string {
  return `${MONTHS[d.getUTCMonth()]} ${String(d.getUTCDate()).padStart(2, ' ')} ${two(d.getUTCHours())}:${two(d.getUTCMinutes())}:${two(d.getUTCSeconds())} ${d.getUTCFullYear()} GMT`;
}

/** A serial as OpenSSL prints the INTEGER's value: whole bytes, upper case, without the 00 that keeps DER positive. */
function serialValueHex(serial: Uint8Array): string {
  const value = serial.length > 1 && serial[0] === 0 ? serial.subarray(1) : serial;
  return Buffer.from(value).toString('hex').toUpperCase();
}

const sameBytes = (a: Uint8Array, b: Uint8Array): boolean => Buffer.compare(a, b) === 0;

/** The subject attributes of a certificate's Name, or null when it is not one UTF8String attribute per RDN. */
function nameAttributes(buf: Uint8Array, nameT: Tlv): Array<{ type: string; value: string }> | null {
  const out: Array<{ type: string; value: string }> = [];
  for (const rdn of childrenOf(buf, nameT)) {
    const atvs = childrenOf(buf, rdn);
    if (rdn.tag !== 0x31 || atvs.length !== 1 || atvs[0]!.tag !== 0x30) return null;
    const [typeT, valueT, ...rest] = childrenOf(buf, atvs[0]!);
    if (rest.length || typeT?.tag !== 0x06 || valueT?.tag !== 0x0c) return null;
    out.push({ type: oidText(content(buf, typeT)), value: Buffer.from(content(buf, valueT)).toString('utf8') });
  }
  return out;
}

/**
 * The last gate before a certificate is committed: OpenSSL (Node's
 * X509Certificate), a parser that shares no code with the builder, reads
 * it back, and what it reads must be what was built: serial, issuer,
 * validity, subject and public key. A certificate that other software
 * cannot read would stop `ledger verify` and every export of its batch, so
 * any difference is INTERNAL and nothing is issued. Raw DER pieces are
 * compared where OpenSSL's view is a formatted string (issuer, subject) or
 * costly: exporting OpenSSL's key again for comparison would double the
 * gate's cost: the key block is compared byte for byte with the CSR's
 * canonical encoding (csr.ts canonicalSpki), and OpenSSL's decoding of it
 * here refuses a point off its curve. Returns the key OpenSSL decoded.
 */
export function checkAssembled(certificate: Uint8Array, issuer: IssuerProfile, facts: CertificateRequestFacts): KeyObject {
  let why: string | null;
  let read: X509Certificate | null = null;
  try {
    read = new X509Certificate(Buffer.from(certificate.buffer, certificate.byteOffset, certificate.byteLength));
    why = differenceFromBuilt(read, certificate, issuer, facts);
  } catch (err) {
    why = `cannot be read back (${(err as Error).message})`;
  }
  if (why || !read) throw new LineSignerError('INTERNAL', `the assembled certificate ${why}; nothing issued`);
  // The device key as OpenSSL decoded it (the key block checked to be facts.spki): a proof of possession made next need not import it again.
  return read.publicKey;
}

/** What differs between a certificate as OpenSSL read it (`x`) and what was built, or null. Throws when it cannot be read. */
function differenceFromBuilt(x: X509Certificate, certificate: Uint8Array, issuer: IssuerProfile, facts: CertificateRequestFacts): string | null {
  if (x.serialNumber !== serialValueHex(facts.serial)) return `has serial ${x.serialNumber}, not the one drawn`;
  if (x.validFrom !== opensslTime(facts.notBefore)) return `has notBefore ${x.validFrom}, not the station's clock`;
  if (x.validTo !== opensslTime(notAfterFor(facts.notBefore, issuer.validityDays))) return `has notAfter ${x.validTo}, not the configured validity`;
  // OpenSSL decoded the key while parsing; a key it could not use would show here.
  if (x.publicKey.asymmetricKeyType !== 'ec') return 'has a public key that OpenSSL does not read as EC';

  const top = readTlv(certificate, 0);
  if (top.end !== certificate.length) return 'has trailing bytes';
  const fields = childrenOf(certificate, childrenOf(certificate, top)[0]!);
  // tbsCertificate: [0] version, serial, signature, issuer, validity, subject, subjectPublicKeyInfo, [3] extensions
  const [, serialT, , issuerT, , subjectT, spkiT] = fields;
  if (fields.length !== 8 || !serialT || !issuerT || !subjectT || !spkiT) return 'does not have the fields of a v3 TBSCertificate';
  if (!sameBytes(content(certificate, serialT), facts.serial)) return 'has a serial field that differs from the one drawn';
  if (!sameBytes(whole(certificate, issuerT), issuer.issuerName)) return "has an issuer that is not the local-ca's subject";
  if (!sameBytes(whole(certificate, spkiT), facts.spki)) return 'has a key block that differs from the checked one';
  const subject = nameAttributes(certificate, subjectT);
  const wanted = facts.subject;
  if (!subject || subject.length !== wanted.length || subject.some((a, i) => a.type !== wanted[i]!.type || a.value !== wanted[i]!.value)) {
    return 'has a subject that differs from the checked one';
  }
  return null;
}

/**
 * After the token signed: its signature checked with the local-ca key, the
 * certificate assembled, and read back by OpenSSL. The certificate, or a
 * refusal; the station runs it inline for a lone request and in its
 * checking worker under load.
 */
export function finishCertificate(tbs: Uint8Array, signature: Uint8Array, issuer: IssuerProfile, caKey: KeyObject, facts: CertificateRequestFacts): Uint8Array {
  return finishReadingKey(tbs, signature, issuer, caKey, facts).certificate;
}

/**
 * finishCertificate with the CSR's proof of possession left for after the
 * signature (a lone request makes it inline, a loaded station in a
 * checking worker). The proof is the earlier check in the profile's order,
 * so its refusal comes first; it uses the device key OpenSSL decoded in the
 * read-back (the key block checked to be the CSR's), which spares
 * importing the key again.
 */
export async function finishAndProve(
  tbs: Uint8Array,
  signature: Uint8Array,
  issuer: IssuerProfile,
  caKey: KeyObject,
  facts: CertificateRequestFacts,
  csr: Uint8Array | ParsedCsr,
): Promise<Uint8Array> {
  let finished: { certificate: Uint8Array; key: KeyObject } | null = null;
  let refusal: unknown = null;
  try {
    finished = finishReadingKey(tbs, signature, issuer, caKey, facts);
  } catch (err) {
    refusal = err;
  }
  await proveKeyPossession(csr, finished ? { spki: facts.spki, key: finished.key } : undefined);
  if (!finished) throw refusal;
  return finished.certificate;
}

/** finishCertificate, also giving the device key as OpenSSL read it from the certificate. */
export function finishReadingKey(tbs: Uint8Array, signature: Uint8Array, issuer: IssuerProfile, caKey: KeyObject, facts: CertificateRequestFacts): { certificate: Uint8Array; key: KeyObject } {
  checkIssuedSignature(tbs, issuer.hash, signature, caKey);
  const certificate = assembleCertificate(tbs, issuer.signatureAlgorithm, signature);
  return { certificate, key: checkAssembled(certificate, issuer, facts) };
}
