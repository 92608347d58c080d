/** Small asn1js building blocks shared by the certificate and CSR builders. */
import * as asn1js from 'asn1js';

/**
 * Bytes that are already DER (the local-ca's subject, the CSR's key) go in
 * as they are. asn1js's own RawData ignores the writer that a SEQUENCE
 * hands its children, so this is the small piece that honours it.
 */
class RawDer {
  constructor(private readonly bytes: Uint8Array) {}
  toBER(_sizeOnly?: boolean, writer?: { write(buf: Uint8Array): void }): ArrayBuffer {
    if (writer) {
      writer.write(this.bytes);
      return new ArrayBuffer(0);
    }
    return this.bytes.slice().buffer as ArrayBuffer;
  }
}

export const raw = (bytes: Uint8Array): asn1js.AsnType => new RawDer(bytes) as unknown as asn1js.AsnType;
export const seq = (...value: asn1js.AsnType[]): asn1js.Sequence => new asn1js.Sequence({ value });
export const oid = (value: string): asn1js.ObjectIdentifier => new asn1js.ObjectIdentifier({ value });
export const der = (b: { toBER(sizeOnly?: boolean): ArrayBuffer }): Uint8Array => new Uint8Array(b.toBER(false));
export const bits = (bytes: Uint8Array): asn1js.BitString => new asn1js.BitString({ valueHex: bytes.slice().buffer as ArrayBuffer });

/** A Name with one attribute per RDN, values as UTF8String, in the given order. */
export function name(attributes: ReadonlyArray<{ type: string; value: string }>): asn1js.Sequence {
  return seq(...attributes.map((a) => new asn1js.Set({ value: [seq(oid(a.type), new asn1js.Utf8String({ value: a.value }))] })));
}

/** SEQUENCE { tbs, AlgorithmIdentifier { alg }, BIT STRING signature }: a signed object. */
export function signed(tbs: Uint8Array, algorithm: string, signature: Uint8Array): Uint8Array {
  return der(seq(raw(tbs), seq(oid(algorithm)), bits(signature)));
}

/**
 * One DER TLV from already-encoded parts. The certificate path builds its
 * TBS from DER pieces that asn1js encoded once (OIDs, extensions, the
 * issuer); wrapping them needs only a tag and a length, and asn1js's object
 * model costs a tenth of the whole per-certificate budget for that.
 */
export function tlv(tag: number, ...parts: Uint8Array[]): Uint8Array {
  let len = 0;
  for (const p of parts) len += p.length;
  const head = len < 0x80 ? [tag, len] : len < 0x100 ? [tag, 0x81, len] : len < 0x10000 ? [tag, 0x82, len >> 8, len & 0xff] : [tag, 0x83, len >> 16, (len >> 8) & 0xff, len & 0xff];
  const out = new Uint8Array(head.length + len);
  out.set(head, 0);
  let at = head.length;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}
