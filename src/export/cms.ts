/**
 * The batch signature: a detached CMS SignedData (RFC 5652) whose signed
 * attributes carry the SHA-256 of the batch's content. The content digest
 * is computed while the batch streams by, so neither side ever holds a
 * 100,000-record batch in memory; pkijs builds and parses the structures,
 * the token signs, node:crypto verifies.
 */
import { createHash, verify as verifySignature, X509Certificate } from 'node:crypto';
import * as asn1js from 'asn1js';
import * as pkijs from 'pkijs';
import type { Signer } from '../token/signer.js';

const OID_DATA = '1.2.840.113549.1.7.1';
const OID_SIGNED_DATA = '1.2.840.113549.1.7.2';
const OID_CONTENT_TYPE = '1.2.840.113549.1.9.3';
const OID_MESSAGE_DIGEST = '1.2.840.113549.1.9.4';
const OID_SIGNING_TIME = '1.2.840.113549.1.9.5';
const OID_SHA256 = '2.16.840.1.101.3.4.2.1';
const ECDSA_SIGNATURES = ['1.2.840.10045.4.3.2', '1.2.840.10045.4.3.3'];

// A copy: Buffer.slice() is a view into a shared pool, whose .buffer holds other bytes too.
const ab = (b: Uint8Array): ArrayBuffer => new Uint8Array(b).buffer as ArrayBuffer;

/** Group orders: an ECDSA signature (r, s) has a twin (r, n - s); only the low one is accepted. */
const CURVE_ORDER: Record<string, bigint> = {
  prime256v1: 0xffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551n,
  secp384r1: 0xffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf581a0db248b0a77aecec196accc52973n,
};

function derInteger(v: bigint): Buffer {
  let hex = v.toString(16);
  if (hex.length % 2) hex = '0' + hex;
  let b = Buffer.from(hex, 'hex');
  if (b[0]! & 0x80) b = Buffer.concat([Buffer.from([0]), b]);
  return Buffer.concat([Buffer.from([0x02, b.length]), b]);
}

function derLength(n: number): Buffer {
  return n < 0x80 ? Buffer.from([n]) : Buffer.from([0x81, n]);
}

/** DER ECDSA-Sig-Value → (r, s); null unless it is strict DER. */
function parseEcdsaSignature(der: Uint8Array): { r: bigint; s: bigint } | null {
  const parsed = asn1js.fromBER(ab(der));
  if (parsed.offset !== der.length || !(parsed.result instanceof asn1js.Sequence)) return null;
  const [r, s, extra] = parsed.result.valueBlock.value;
  if (!(r instanceof asn1js.Integer) || !(s instanceof asn1js.Integer) || extra) return null;
  const big = (i: asn1js.Integer): bigint => BigInt('0x' + (Buffer.from(i.valueBlock.valueHexView).toString('hex') || '0'));
  const sig = { r: big(r), s: big(s) };
  if (sig.r <= 0n || sig.s <= 0n || Buffer.compare(encodeEcdsaSignature(sig), Buffer.from(der)) !== 0) return null;
  return sig;
}

function encodeEcdsaSignature(sig: { r: bigint; s: bigint }): Buffer {
  const body = Buffer.concat([derInteger(sig.r), derInteger(sig.s)]);
  return Buffer.concat([Buffer.from([0x30]), derLength(body.length), body]);
}

function curveOf(certificateDer: Uint8Array): bigint {
  const curve = new X509Certificate(Buffer.from(certificateDer)).publicKey.asymmetricKeyDetails?.namedCurve ?? '';
  const n = CURVE_ORDER[curve];
  if (!n) throw new Error(`the station key's curve ${curve || '(none)'} is not P-256 or P-384`);
  return n;
}

/** The low-S form of a DER ECDSA signature: what export writes and verify requires. */
export function lowS(der: Uint8Array, n: bigint): Uint8Array {
  const sig = parseEcdsaSignature(der);
  if (!sig) throw new Error('the token returned a signature that is not DER ECDSA');
  return new Uint8Array(sig.s > n / 2n ? encodeEcdsaSignature({ r: sig.r, s: n - sig.s }) : encodeEcdsaSignature(sig));
}

/** signedAttrs as DER SET OF, elements in DER order (what is signed, and what OpenSSL re-encodes to check). */
function signedAttributesDer(attributes: pkijs.Attribute[]): Uint8Array {
  const encoded = attributes.map((a) => Buffer.from(a.toSchema().toBER(false))).sort(Buffer.compare);
  return new Uint8Array(new asn1js.Set({ value: encoded.map((e) => asn1js.fromBER(ab(e)).result) }).toBER(false));
}

/** The signed attributes line-signer writes (content type, signing time, digest), as the DER that is signed. */
function signedAttributesFor(contentSha256: Uint8Array, signingTime: Date): Uint8Array {
  return signedAttributesDer([
    new pkijs.Attribute({ type: OID_CONTENT_TYPE, values: [new asn1js.ObjectIdentifier({ value: OID_DATA })] }),
    new pkijs.Attribute({ type: OID_SIGNING_TIME, values: [new asn1js.UTCTime({ valueDate: new Date(Math.floor(signingTime.getTime() / 1000) * 1000) })] }),
    new pkijs.Attribute({ type: OID_MESSAGE_DIGEST, values: [new asn1js.OctetString({ valueHex: ab(contentSha256) })] }),
  ]);
}

export async function signDetached(signer: Signer, certificateDer: Uint8Array, contentSha256: Uint8Array, signingTime: Date): Promise<Uint8Array> {
  const toSign = signedAttributesFor(contentSha256, signingTime);
  // The token may return either twin; the batch carries the low-S one, so a
  // batch has exactly one valid signature line.
  const signature = lowS(await signer.sign(createHash(signer.hash).update(toSign).digest()), curveOf(certificateDer));
  return assembleSignedData(certificateDer, toSign, signer.signatureAlgorithm, signature);
}

/** The detached SignedData around signed attributes and their signature: the one encoding line-signer writes. */
function assembleSignedData(certificateDer: Uint8Array, toSign: Uint8Array, signatureAlgorithm: string, signature: Uint8Array): Uint8Array {
  const cert = pkijs.Certificate.fromBER(ab(certificateDer));
  // Keep the signed order inside [0]: re-parse the exact bytes that were signed.
  const sortedAttrs = (asn1js.fromBER(ab(toSign)).result as asn1js.Set).valueBlock.value.map((v) => new pkijs.Attribute({ schema: v }));
  const signerInfo = new pkijs.SignerInfo({
    version: 1,
    sid: new pkijs.IssuerAndSerialNumber({ issuer: cert.issuer, serialNumber: cert.serialNumber }),
    digestAlgorithm: new pkijs.AlgorithmIdentifier({ algorithmId: OID_SHA256 }),
    signedAttrs: new pkijs.SignedAndUnsignedAttributes({ type: 0, attributes: sortedAttrs }),
    signatureAlgorithm: new pkijs.AlgorithmIdentifier({ algorithmId: signatureAlgorithm }),
    signature: new asn1js.OctetString({ valueHex: ab(signature) }),
  });
  const signedData = new pkijs.SignedData({
    version: 1,
    digestAlgorithms: [new pkijs.AlgorithmIdentifier({ algorithmId: OID_SHA256 })],
    encapContentInfo: new pkijs.EncapsulatedContentInfo({ eContentType: OID_DATA }),
    certificates: [cert],
    signerInfos: [signerInfo],
  });
  const contentInfo = new pkijs.ContentInfo({ contentType: OID_SIGNED_DATA, content: signedData.toSchema(true) });
  return new Uint8Array(contentInfo.toSchema().toBER(false));
}

export interface DetachedCheck {
  /** The signer's certificate, DER, as carried in the SignedData. */
  signerCertificate: Uint8Array | null;
  problem: string | null;
}

/** Checks a detached SignedData against the content's SHA-256; never throws. */
export function verifyDetached(cmsDer: Uint8Array, contentSha256: Uint8Array): DetachedCheck {
  try {
    return checkDetached(cmsDer, contentSha256);
  } catch (err) {
    return { signerCertificate: null, problem: `the signature is malformed (${(err as Error).message})` };
  }
}

function checkDetached(cmsDer: Uint8Array, contentSha256: Uint8Array): DetachedCheck {
  let signedData: pkijs.SignedData;
  try {
    // Strict DER: parsed and encoded again, it must be the very same bytes,
    // so no byte of it can change without the check noticing.
    const parsed = asn1js.fromBER(ab(cmsDer));
    if (parsed.offset !== cmsDer.length || Buffer.compare(Buffer.from(parsed.result.toBER(false)), Buffer.from(cmsDer)) !== 0) {
      return { signerCertificate: null, problem: 'the signature is not in DER: the batch was changed' };
    }
    const ci = pkijs.ContentInfo.fromBER(ab(cmsDer));
    if (ci.contentType !== OID_SIGNED_DATA) return { signerCertificate: null, problem: 'the signature is not a CMS SignedData' };
    signedData = new pkijs.SignedData({ schema: ci.content });
  } catch (err) {
    return { signerCertificate: null, problem: `the signature is not readable CMS (${(err as Error).message})` };
  }
  const si = signedData.signerInfos[0];
  const certs = signedData.certificates ?? [];
  const cert = certs[0] instanceof pkijs.Certificate ? certs[0] : null;
  const certDer = cert ? new Uint8Array(cert.toSchema().toBER(false)) : null;
  if (!si || signedData.signerInfos.length !== 1) return { signerCertificate: certDer, problem: 'the signature must have exactly one signer' };
  if (!cert || !certDer || certs.length !== 1) return { signerCertificate: null, problem: 'the signature must carry exactly one signer certificate' };
  // What the signature itself does not cover must still be exactly what line-signer writes.
  const unsigned = [
    signedData.version === 1 || 'SignedData version',
    (signedData.digestAlgorithms.length === 1 && signedData.digestAlgorithms[0]!.algorithmId === OID_SHA256 && !signedData.digestAlgorithms[0]!.algorithmParams) || 'digest algorithms',
    (signedData.encapContentInfo.eContentType === OID_DATA && !signedData.encapContentInfo.eContent) || 'content type (or not detached)',
    !signedData.crls || 'CRLs',
    si.version === 1 || 'SignerInfo version',
    (si.digestAlgorithm.algorithmId === OID_SHA256 && !si.digestAlgorithm.algorithmParams) || 'signer digest algorithm',
    (ECDSA_SIGNATURES.includes(si.signatureAlgorithm.algorithmId) && !si.signatureAlgorithm.algorithmParams) || 'signature algorithm',
    !si.unsignedAttrs || 'unsigned attributes',
    (si.sid instanceof pkijs.IssuerAndSerialNumber && si.sid.issuer.isEqual(cert.issuer) && si.sid.serialNumber.isEqual(cert.serialNumber)) || 'signer identifier',
    (si.signedAttrs?.attributes.length === 3) || 'signed attributes',
  ].find((x) => x !== true);
  if (unsigned) return { signerCertificate: certDer, problem: `the signature's ${unsigned} is not what line-signer writes: the batch was changed` };
  const attrs = si.signedAttrs?.attributes ?? [];
  const attr = (oid: string): asn1js.AsnType | undefined => attrs.find((a) => a.type === oid)?.values[0];
  const digest = attr(OID_MESSAGE_DIGEST);
  const contentType = attr(OID_CONTENT_TYPE);
  if (!(contentType instanceof asn1js.ObjectIdentifier) || contentType.valueBlock.toString() !== OID_DATA) {
    return { signerCertificate: certDer, problem: 'the signed content type is not id-data' };
  }
  if (!(digest instanceof asn1js.OctetString) || Buffer.compare(Buffer.from(digest.valueBlock.valueHexView), Buffer.from(contentSha256)) !== 0) {
    return { signerCertificate: certDer, problem: 'the content does not match the signed digest: the batch was changed' };
  }
  const toVerify = new Uint8Array(new asn1js.Set({ value: attrs.map((a) => a.toSchema()) }).toBER(false));
  const hash = si.signatureAlgorithm.algorithmId === '1.2.840.10045.4.3.3' ? 'sha384' : 'sha256';
  let n: bigint;
  try {
    n = curveOf(certDer);
  } catch (err) {
    return { signerCertificate: certDer, problem: (err as Error).message };
  }
  const sig = parseEcdsaSignature(si.signature.valueBlock.valueHexView);
  if (!sig) return { signerCertificate: certDer, problem: 'the ECDSA signature is not strict DER: the batch was changed' };
  if (sig.s > n / 2n) return { signerCertificate: certDer, problem: 'the ECDSA signature is not in low-S form: the batch was changed' };
  let ok = false;
  try {
    ok = verifySignature(hash, toVerify, new X509Certificate(Buffer.from(certDer)).publicKey, si.signature.valueBlock.valueHexView);
  } catch {
    ok = false;
  }
  if (!ok) return { signerCertificate: certDer, problem: 'the CMS signature does not verify with the station key' };
  // One encoding only: the SignedData line-signer would write for this certificate, time, digest and signature,
  // byte for byte (a BER parser takes long-form lengths or padded integers, and would write them back as it read them).
  const time = attr(OID_SIGNING_TIME);
  if (!(time instanceof asn1js.UTCTime)) return { signerCertificate: certDer, problem: 'the signing time is not what line-signer writes: the batch was changed' };
  const rebuilt = assembleSignedData(certDer, signedAttributesFor(contentSha256, time.toDate()), si.signatureAlgorithm.algorithmId, new Uint8Array(si.signature.valueBlock.valueHexView));
  if (Buffer.compare(Buffer.from(rebuilt), Buffer.from(cmsDer)) !== 0) {
    return { signerCertificate: certDer, problem: 'the signature is not encoded as line-signer writes it (not DER): the batch was changed' };
  }
  return { signerCertificate: certDer, problem: null };
}
