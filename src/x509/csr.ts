/**
 * Reading a device CSR (PKCS#10) on the hot path. asn1js decodes the DER
 * once and we walk the tree by position: pkijs's schema matching costs
 * about 1 ms per CSR, this about a tenth of that. Signature checks go
 * through node:crypto (OpenSSL), never through code of ours.
 */
import { createPublicKey, verify, type KeyObject } from 'node:crypto';
import * as asn1js from 'asn1js';
import { LineSignerError } from '../errors.js';
import { ECDSA_HASH, OID } from './oids.js';

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
  signature: Uint8Array;
  /** SubjectPublicKeyInfo exactly as it stands in the CSR. */
  spki: Uint8Array;
  /** subjectPublicKey BIT STRING contents (the key bits). */
  publicKeyBits: Uint8Array;
  keyAlgorithm: string;
  /** namedCurve OID for EC keys, else null. */
  curve: string | null;
  subject: NameAttribute[];
  rdnCount: number;
  extensions: RequestedExtension[];
}

type Block = asn1js.AsnType;

function bad(message: string): never {
  throw new LineSignerError('BAD_CSR', message);
}

function children(b: Block | undefined, what: string): Block[] {
  if (!b || !(b instanceof asn1js.Constructed) || !Array.isArray(b.valueBlock.value)) bad(`${what} is not a constructed value`);
  return b.valueBlock.value as Block[];
}

function oidOf(b: Block | undefined, what: string): string {
  if (!(b instanceof asn1js.ObjectIdentifier)) bad(`${what} is not an OBJECT IDENTIFIER`);
  return b.valueBlock.toString();
}

function rawOf(b: Block): Uint8Array {
  return (b as unknown as { valueBeforeDecodeView: Uint8Array }).valueBeforeDecodeView;
}

const STRING_TYPES = [
  asn1js.Utf8String,
  asn1js.PrintableString,
  asn1js.IA5String,
  asn1js.TeletexString,
  asn1js.BmpString,
  asn1js.UniversalString,
  asn1js.VisibleString,
];

function stringValue(b: Block | undefined): string | null {
  for (const T of STRING_TYPES) if (b instanceof T) return (b as asn1js.Utf8String).valueBlock.value;
  return null;
}

export function parseCsr(der: Uint8Array): ParsedCsr {
  if (der.byteLength === 0) bad('empty request');
  const view = new Uint8Array(der);
  const decoded = asn1js.fromBER(view);
  if (decoded.offset === -1) bad(`not DER: ${decoded.result.error || 'undecodable'}`);
  if (decoded.offset !== view.byteLength) bad(`${view.byteLength - decoded.offset} trailing bytes after the request`);
  const top = children(decoded.result, 'CertificationRequest');
  if (top.length !== 3) bad('CertificationRequest must have 3 fields');
  const [infoBlock, algBlock, sigBlock] = top as [Block, Block, Block];

  const info = children(infoBlock, 'certificationRequestInfo');
  if (info.length !== 4) bad('certificationRequestInfo must have 4 fields');
  const [version, nameBlock, spkiBlock, attrsBlock] = info as [Block, Block, Block, Block];
  if (!(version instanceof asn1js.Integer) || version.valueBlock.valueDec !== 0) bad('version must be 0 (v1)');

  // Subject
  const subject: NameAttribute[] = [];
  const rdns = children(nameBlock, 'subject');
  rdns.forEach((rdn, i) => {
    if (!(rdn instanceof asn1js.Set)) bad('subject RDN is not a SET');
    for (const atv of children(rdn, 'subject attribute')) {
      const [t, v, ...rest] = children(atv, 'subject attribute');
      if (rest.length || !v) bad('subject attribute must be (type, value)');
      subject.push({ type: oidOf(t, 'attribute type'), value: stringValue(v), rdn: i });
    }
  });

  // Public key
  const spkiParts = children(spkiBlock, 'subjectPublicKeyInfo');
  if (spkiParts.length !== 2) bad('subjectPublicKeyInfo must have 2 fields');
  const keyAlgParts = children(spkiParts[0], 'public key algorithm');
  const keyAlgorithm = oidOf(keyAlgParts[0], 'public key algorithm');
  const curve = keyAlgParts[1] instanceof asn1js.ObjectIdentifier ? keyAlgParts[1].valueBlock.toString() : null;
  if (!(spkiParts[1] instanceof asn1js.BitString)) bad('subjectPublicKey is not a BIT STRING');
  const publicKeyBits = spkiParts[1].valueBlock.valueHexView;

  // Attributes: only extensionRequest matters; the rest is never copied.
  if (attrsBlock.idBlock.tagClass !== 3 || attrsBlock.idBlock.tagNumber !== 0) bad('attributes [0] missing');
  const extensions: RequestedExtension[] = [];
  for (const attr of children(attrsBlock, 'attributes')) {
    const [t, values] = children(attr, 'attribute');
    if (oidOf(t, 'attribute type') !== OID.extensionRequest) continue;
    for (const exts of children(values, 'extensionRequest')) {
      for (const extBlock of children(exts, 'extensions')) {
        const parts = children(extBlock, 'extension');
        const oid = oidOf(parts[0], 'extension id');
        const critical = parts.length === 3 && parts[1] instanceof asn1js.Boolean ? parts[1].valueBlock.value : false;
        const value = parts[parts.length - 1];
        if (!(value instanceof asn1js.OctetString) || parts.length < 2 || parts.length > 3) bad(`extension ${oid} is malformed`);
        const bytes = value.valueBlock.valueHexView;
        extensions.push({ oid, critical, value: bytes, asksForCa: requestsCa(oid, bytes) });
      }
    }
  }

  const sigAlg = oidOf(children(algBlock, 'signatureAlgorithm')[0], 'signature algorithm');
  if (!(sigBlock instanceof asn1js.BitString)) bad('signature is not a BIT STRING');

  return {
    der: view,
    info: rawOf(infoBlock),
    signatureAlgorithm: sigAlg,
    signature: sigBlock.valueBlock.valueHexView,
    spki: rawOf(spkiBlock),
    publicKeyBits,
    keyAlgorithm,
    curve,
    subject,
    rdnCount: rdns.length,
    extensions,
  };
}

/** The CSR's public key for node:crypto; an invalid point is a key policy matter. */
export function csrPublicKey(csr: ParsedCsr): KeyObject {
  try {
    return createPublicKey({ key: Buffer.from(csr.spki), format: 'der', type: 'spki' });
  } catch (err) {
    throw new LineSignerError('POLICY_KEY', `the public key is not a valid EC point: ${(err as Error).message}`);
  }
}

/** Proof of possession: the CSR is signed by the key inside it. */
export function verifyCsrSignature(csr: ParsedCsr, key: KeyObject): void {
  const hash = ECDSA_HASH[csr.signatureAlgorithm];
  if (!hash) throw new LineSignerError('BAD_SIGNATURE', `signature algorithm ${csr.signatureAlgorithm} is not ECDSA with SHA-2`);
  let ok = false;
  try {
    ok = verify(hash, csr.info, key, csr.signature);
  } catch {
    ok = false;
  }
  if (!ok) throw new LineSignerError('BAD_SIGNATURE', 'the CSR signature does not verify with its own public key');
}

/** basicConstraints cA and keyUsage keyCertSign/cRLSign, read from a requested extension. */
function requestsCa(oid: string, value: Uint8Array): string | null {
  if (oid !== OID.basicConstraints && oid !== OID.keyUsage) return null;
  const parsed = asn1js.fromBER(new Uint8Array(value));
  if (parsed.offset === -1) return `unreadable ${oid} extension`;
  if (oid === OID.basicConstraints) {
    const fields = parsed.result instanceof asn1js.Sequence ? (parsed.result.valueBlock.value as Block[]) : null;
    if (!fields) return 'unreadable basicConstraints';
    if (fields[0] instanceof asn1js.Boolean && fields[0].valueBlock.value) return 'basicConstraints CA:TRUE';
  }
  if (oid === OID.keyUsage) {
    if (!(parsed.result instanceof asn1js.BitString)) return 'unreadable keyUsage';
    const bits = parsed.result.valueBlock.valueHexView;
    // Bit 5 keyCertSign = 0x04, bit 6 cRLSign = 0x02 of the first byte.
    if ((bits[0] ?? 0) & 0x04) return 'keyUsage keyCertSign';
    if ((bits[0] ?? 0) & 0x02) return 'keyUsage cRLSign';
  }
  return null;
}
