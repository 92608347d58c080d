/**
 * Reading a device CSR (PKCS#10) on the hot path, with the strict DER
 * reader (der-reader.ts): pkijs's schema matching costs about 1 ms per CSR
 * and asn1js's object model about 0.2 ms; this a few microseconds.
 * Signature checks go through node:crypto (OpenSSL), never code of ours.
 * asn1js still reads the rare requested extension values.
 */
import { KeyObject, verify, webcrypto } from 'node:crypto';
import * as asn1js from 'asn1js';
import { LineSignerError } from '../errors.js';
import { ECDSA_HASH, OID } from '../oids.js';
import { der, oid, tlv } from './asn1.js';
import { childrenOf, content, directoryString, oidText, readTlv, whole, type Tlv } from './der-reader.js';

export interface NameAttribute {
  /** Attribute type OID. */
  type: string;
  /** The value as text, or null when it is not a directory string. */
  value: string | null;
  /** The index of the RDN this attribute sits in. */
  rdn: number;
}

export interface RequestedExtension {
  oid: string;
  critical: boolean;
  value: Uint8Array;
  /** What this extension asks for that only a CA gets ("basicConstraints CA:TRUE", ...), else null. */
  asksForCa: string | null;
}

export interface ParsedCsr {
  der: Uint8Array;
  /** certificationRequestInfo, the bytes the signature covers. */
  info: Uint8Array;
  signatureAlgorithm: string;
  /** The signature's AlgorithmIdentifier carries parameters (ECDSA must not). */
  signatureHasParameters: boolean;
  signature: Uint8Array;
  /** SubjectPublicKeyInfo exactly as it stands in the CSR. */
  spki: Uint8Array;
  /** subjectPublicKey BIT STRING contents (the key bits). */
  publicKeyBits: Uint8Array;
  keyAlgorithm: string;
  /** What the key's AlgorithmIdentifier carries as parameters. */
  keyParameters: KeyParameters;
  /** namedCurve OID for EC keys, else null. */
  curve: string | null;
  subject: NameAttribute[];
  rdnCount: number;
  extensions: RequestedExtension[];
}

/** absent, NULL, an OID (namedCurve), a SEQUENCE (explicit EC parameters) or anything else. */
export type KeyParameters = 'absent' | 'null' | 'namedCurve' | 'explicit' | 'other';

const TAG = { INTEGER: 0x02, BIT_STRING: 0x03, OCTET_STRING: 0x04, OID: 0x06, BOOLEAN: 0x01, NULL: 0x05, SEQUENCE: 0x30, SET: 0x31, ATTRIBUTES: 0xa0 } as const;

function bad(message: string): never {
  throw new LineSignerError('BAD_CSR', message);
}

function expect(t: Tlv | undefined, tag: number, what: string): Tlv {
  if (!t || t.tag !== tag) bad(`${what} is missing or of the wrong type`);
  return t;
}

/** AlgorithmIdentifier ::= SEQUENCE { algorithm OID, parameters ANY OPTIONAL }: one or two fields, no more. */
function algorithmIdentifier(buf: Uint8Array, t: Tlv | undefined, what: string): { oid: string; parameters: Tlv | undefined } {
  const fields = childrenOf(buf, expect(t, TAG.SEQUENCE, what));
  if (fields.length > 2) bad(`${what} has ${fields.length} fields; an AlgorithmIdentifier has at most 2`);
  return { oid: oidText(content(buf, expect(fields[0], TAG.OID, what))), parameters: fields[1] };
}

function keyParameters(t: Tlv | undefined): KeyParameters {
  if (!t) return 'absent';
  switch (t.tag) {
    case TAG.NULL:
      if (t.end !== t.contentStart) bad('public key parameters: a NULL with contents');
      return 'null';
    case TAG.OID:
      return 'namedCurve';
    case TAG.SEQUENCE:
      return 'explicit';
    default:
      return 'other';
  }
}

/** A BOOLEAN's value: one content byte. */
function flag(buf: Uint8Array, t: Tlv): boolean {
  const c = content(buf, t);
  if (c.length !== 1) bad('a BOOLEAN must have one content byte');
  // DER: FALSE is 00 and TRUE is FF, nothing else.
  if (c[0] !== 0x00 && c[0] !== 0xff) bad('a BOOLEAN must be 00 or FF (DER)');
  return c[0] === 0xff;
}

/** A BIT STRING's bits, which must be whole bytes here (keys and signatures). */
function bitStringBytes(buf: Uint8Array, t: Tlv, what: string): Uint8Array {
  const c = content(buf, t);
  if (c.length === 0 || c[0] !== 0) bad(`${what} has unused bits`);
  return c.subarray(1);
}

export function parseCsr(der: Uint8Array): ParsedCsr {
  if (der.byteLength === 0) bad('empty request');
  const buf = new Uint8Array(der.buffer, der.byteOffset, der.byteLength);
  const top = readTlv(buf, 0);
  if (top.end !== buf.length) bad(`${buf.length - top.end} trailing bytes after the request`);
  const [infoT, algT, sigT, ...extra] = childrenOf(buf, expect(top, TAG.SEQUENCE, 'CertificationRequest'));
  if (extra.length) bad('CertificationRequest must have 3 fields');
  const [versionT, nameT, spkiT, attrsT, ...more] = childrenOf(buf, expect(infoT, TAG.SEQUENCE, 'certificationRequestInfo'));
  if (more.length) bad('certificationRequestInfo must have 4 fields');
  const version = content(buf, expect(versionT, TAG.INTEGER, 'version'));
  if (version.length !== 1 || version[0] !== 0) bad('version must be 0 (v1)');

  // Subject
  const subject: NameAttribute[] = [];
  const rdns = childrenOf(buf, expect(nameT, TAG.SEQUENCE, 'subject'));
  rdns.forEach((rdn, i) => {
    for (const atv of childrenOf(buf, expect(rdn, TAG.SET, 'subject RDN'))) {
      const [typeT, valueT, ...rest] = childrenOf(buf, expect(atv, TAG.SEQUENCE, 'subject attribute'));
      if (rest.length || !valueT) bad('subject attribute must be (type, value)');
      subject.push({ type: oidText(content(buf, expect(typeT, TAG.OID, 'attribute type'))), value: directoryString(buf, valueT), rdn: i });
    }
  });

  // Public key
  const [keyAlgT, keyBitsT, ...spkiExtra] = childrenOf(buf, expect(spkiT, TAG.SEQUENCE, 'subjectPublicKeyInfo'));
  if (spkiExtra.length) bad('subjectPublicKeyInfo must have 2 fields');
  const keyAlg = algorithmIdentifier(buf, keyAlgT, 'public key algorithm');
  const keyParamsT = keyAlg.parameters;
  const curve = keyParamsT?.tag === TAG.OID ? oidText(content(buf, keyParamsT)) : null;
  const publicKeyBits = bitStringBytes(buf, expect(keyBitsT, TAG.BIT_STRING, 'subjectPublicKey'), 'subjectPublicKey');

  // Attributes: only extensionRequest matters; the rest is never copied.
  const extensions: RequestedExtension[] = [];
  for (const attr of childrenOf(buf, expect(attrsT, TAG.ATTRIBUTES, 'attributes [0]'))) {
    const [typeT, valuesT, ...attrExtra] = childrenOf(buf, expect(attr, TAG.SEQUENCE, 'attribute'));
    if (attrExtra.length || !valuesT) bad('an attribute must be (type, values)');
    if (oidText(content(buf, expect(typeT, TAG.OID, 'attribute type'))) !== OID.extensionRequest) continue;
    for (const exts of childrenOf(buf, expect(valuesT, TAG.SET, 'extensionRequest values'))) {
      for (const extT of childrenOf(buf, expect(exts, TAG.SEQUENCE, 'extensions'))) {
        const parts = childrenOf(buf, expect(extT, TAG.SEQUENCE, 'extension'));
        const oid = oidText(content(buf, expect(parts[0], TAG.OID, 'extension id')));
        if (parts.length < 2 || parts.length > 3) bad(`extension ${oid} is malformed`);
        const critical = parts.length === 3 && flag(buf, expect(parts[1], TAG.BOOLEAN, `extension ${oid} critical`));
        // DER leaves a DEFAULT value out: critical FALSE spelt out is another encoding of the same request.
        if (parts.length === 3 && !critical) bad(`extension ${oid}: critical FALSE must be left out (DER)`);
        const value = content(buf, expect(parts[parts.length - 1], TAG.OCTET_STRING, `extension ${oid} value`));
        extensions.push({ oid, critical, value, asksForCa: requestsCa(oid, value) });
      }
    }
  }

  const sigAlg = algorithmIdentifier(buf, algT, 'signatureAlgorithm');
  const signature = bitStringBytes(buf, expect(sigT, TAG.BIT_STRING, 'signature'), 'signature');

  return {
    der: buf,
    info: whole(buf, infoT!),
    signatureAlgorithm: sigAlg.oid,
    signatureHasParameters: sigAlg.parameters !== undefined,
    signature,
    spki: whole(buf, spkiT!),
    publicKeyBits,
    keyAlgorithm: keyAlg.oid,
    keyParameters: keyParameters(keyParamsT),
    curve,
    subject,
    rdnCount: rdns.length,
    extensions,
  };
}

/** DER of SEQUENCE { SEQUENCE { id-ecPublicKey, namedCurve }, BIT STRING } up to the point, with 0 unused bits. */
function ecSpkiPrefix(curve: string, pointLength: number): Buffer {
  const spki = tlv(0x30, tlv(0x30, der(oid(OID.ecPublicKey)), der(oid(curve))), tlv(0x03, new Uint8Array(1 + pointLength)));
  return Buffer.from(spki.subarray(0, spki.length - pointLength));
}

/** The curves a device key may use, and the canonical key block of each up to the uncompressed point. */
const EC_CURVES: Record<string, { crv: string; size: number; spkiPrefix: Buffer; order: bigint }> = {
  [OID.p256]: { crv: 'P-256', size: 32, spkiPrefix: ecSpkiPrefix(OID.p256, 65), order: 0xffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551n },
  [OID.p384]: {
    crv: 'P-384',
    size: 48,
    spkiPrefix: ecSpkiPrefix(OID.p384, 97),
    order: 0xffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf581a0db248b0a77aecec196accc52973n,
  },
};

/** A non-negative INTEGER's DER content: minimal big-endian bytes, a 00 in front when the top bit is set. */
function integerContent(n: bigint): Uint8Array {
  let hex = n.toString(16);
  if (hex.length % 2) hex = '0' + hex;
  if (/^[89a-f]/.test(hex)) hex = '00' + hex;
  return Buffer.from(hex, 'hex');
}

/**
 * The same CSR with its ECDSA signature's other valid form: (r, n - s)
 * verifies exactly as (r, s) does, so anyone who sees a CSR can make its
 * twin without the key, and the twin's bytes (and SHA-256) differ. The
 * station takes the twin of a CSR it signed as a retry of it, so a CSR
 * seen on a stick, a serial line or plain HTTP cannot be turned into a
 * second certificate that replaces the device's own. Null when the
 * signature is not a DER ECDSA-Sig-Value on a curve the station knows.
 */
export function signatureTwin(csr: ParsedCsr): Uint8Array | null {
  const curve = csr.curve ? EC_CURVES[csr.curve] : undefined;
  if (!curve || !ECDSA_HASH[csr.signatureAlgorithm]) return null;
  try {
    const sig = csr.signature;
    const top = readTlv(sig, 0);
    if (top.tag !== TAG.SEQUENCE || top.end !== sig.length) return null;
    const [rT, sT, ...rest] = childrenOf(sig, top);
    if (!rT || !sT || rest.length || rT.tag !== TAG.INTEGER || sT.tag !== TAG.INTEGER) return null;
    // Only a signature in DER has a twin: (r, 00 || n - s) is no signature (OpenSSL refuses it), and its
    // "twin" would be the original, replayed for a request that should be BAD_SIGNATURE.
    const sBytes = content(sig, sT);
    if (sBytes.length === 0 || sBytes[0]! & 0x80 || (sBytes[0] === 0 && (sBytes.length === 1 || sBytes[1]! < 0x80))) return null;
    const sValue = BigInt('0x' + Buffer.from(sBytes).toString('hex'));
    if (sValue <= 0n || sValue >= curve.order) return null;
    const twinSig = tlv(TAG.SEQUENCE, whole(sig, rT), tlv(TAG.INTEGER, integerContent(curve.order - sValue)));
    const buf = csr.der;
    const [, algT] = childrenOf(buf, readTlv(buf, 0));
    return tlv(TAG.SEQUENCE, csr.info, whole(buf, algT!), tlv(TAG.BIT_STRING, new Uint8Array([0]), twinSig));
  } catch {
    return null;
  }
}

function refuseKey(message: string): never {
  throw new LineSignerError('POLICY_KEY', message);
}

/**
 * The one encoding of a device key that the station accepts and puts in a
 * certificate, rebuilt from the curve and the point: the CSR's key block
 * must equal it byte for byte, so nothing of the CSR's own shaping (extra
 * parameters, other point forms) can reach a certificate.
 */
export function canonicalSpki(csr: ParsedCsr): Uint8Array {
  const curve = csr.keyAlgorithm === OID.ecPublicKey && csr.keyParameters === 'namedCurve' && csr.curve ? EC_CURVES[csr.curve] : undefined;
  if (!curve) refuseKey('the public key is not an EC key on a named curve the station knows (P-256, P-384)');
  const point = csr.publicKeyBits;
  if (point.length !== 1 + 2 * curve.size || point[0] !== 0x04) refuseKey(`the public key is not an uncompressed ${curve.crv} point`);
  // Its own memory, not a slice of Buffer's shared pool: it travels to the checking worker, and a view would take the whole pool along.
  const spki = new Uint8Array(curve.spkiPrefix.length + point.length);
  spki.set(curve.spkiPrefix);
  spki.set(point, curve.spkiPrefix.length);
  if (Buffer.compare(spki, csr.spki) !== 0) refuseKey('the public key is not in its canonical encoding');
  return spki;
}

/**
 * The CSR's public key for node:crypto, from its canonical encoding only.
 * The point goes in raw (WebCrypto's import, which refuses a point not on
 * the curve): OpenSSL 3's DER decoder costs twice as much, and a key
 * imported from JWK costs half as much again at its first verification.
 */
export async function csrPublicKey(csr: ParsedCsr): Promise<KeyObject> {
  const spki = canonicalSpki(csr);
  const curve = EC_CURVES[csr.curve!]!;
  try {
    const key = await webcrypto.subtle.importKey('raw', spki.subarray(curve.spkiPrefix.length), { name: 'ECDSA', namedCurve: curve.crv }, true, ['verify']);
    return KeyObject.from(key);
  } catch (err) {
    refuseKey(`the public key is not a point on ${curve.crv}: ${(err as Error).message}`);
  }
}

/** Proof of possession: the CSR is signed by the key inside it. */
export function verifyCsrSignature(csr: ParsedCsr, key: KeyObject): void {
  const hash = ECDSA_HASH[csr.signatureAlgorithm];
  if (!hash) throw new LineSignerError('BAD_SIGNATURE', `signature algorithm ${csr.signatureAlgorithm} is not ECDSA with SHA-2`);
  // RFC 5758 section 3.2: ECDSA AlgorithmIdentifiers have no parameters.
  if (csr.signatureHasParameters) throw new LineSignerError('BAD_SIGNATURE', `signature algorithm ${csr.signatureAlgorithm} must have no parameters`);
  let ok = false;
  try {
    ok = verify(hash, csr.info, key, csr.signature);
  } catch {
    ok = false;
  }
  if (!ok) throw new LineSignerError('BAD_SIGNATURE', 'the CSR signature does not verify with its own public key');
}

/**
 * Proof of possession: the CSR (its bytes, parsed here, or already parsed)
 * signed by the key inside it, that key imported from the canonical
 * encoding. What the station's checking worker runs under load, so that
 * the two OpenSSL steps (about a third of a millisecond a CSR) leave the
 * thread that serves the links. `known`: the key as already decoded from
 * the same key block, if any.
 */
export async function proveKeyPossession(request: Uint8Array | ParsedCsr, known?: { spki: Uint8Array; key: KeyObject }): Promise<void> {
  const csr = request instanceof Uint8Array ? parseCsr(request) : request;
  // A key OpenSSL already decoded from this very key block (the certificate's read-back) is not imported again.
  const key = known && Buffer.compare(canonicalSpki(csr), known.spki) === 0 ? known.key : await csrPublicKey(csr);
  verifyCsrSignature(csr, key);
}

/** basicConstraints cA and keyUsage keyCertSign/cRLSign, read from a requested extension. */
function requestsCa(oid: string, value: Uint8Array): string | null {
  if (oid !== OID.basicConstraints && oid !== OID.keyUsage) return null;
  const parsed = asn1js.fromBER(new Uint8Array(value));
  // A value that does not read is a malformed request, not a policy question.
  if (parsed.offset === -1) bad(`the requested ${oid === OID.basicConstraints ? 'basicConstraints' : 'keyUsage'} extension's value is not readable`);
  if (oid === OID.basicConstraints) {
    const fields = parsed.result instanceof asn1js.Sequence ? parsed.result.valueBlock.value : null;
    if (!fields) bad("the requested basicConstraints extension's value is not a SEQUENCE");
    if (fields[0] instanceof asn1js.Boolean && fields[0].valueBlock.value) return 'basicConstraints CA:TRUE';
  }
  if (oid === OID.keyUsage) {
    if (!(parsed.result instanceof asn1js.BitString)) bad("the requested keyUsage extension's value is not a BIT STRING");
    const bits = parsed.result.valueBlock.valueHexView;
    // Bit 5 keyCertSign = 0x04, bit 6 cRLSign = 0x02 of the first byte.
    if ((bits[0] ?? 0) & 0x04) return 'keyUsage keyCertSign';
    if ((bits[0] ?? 0) & 0x02) return 'keyUsage cRLSign';
  }
  return null;
}
