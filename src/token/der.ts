/**
 * DER helpers that only the token needs: PKCS#11 returns ECDSA signatures
 * as raw r||s and public points wrapped in an OCTET STRING; X.509 wants an
 * ECDSA-Sig-Value and a SubjectPublicKeyInfo.
 */
import * as asn1js from 'asn1js';

export const OID_EC_PUBLIC_KEY = '1.2.840.10045.2.1';

/** DER of the namedCurve OID, as CKA_EC_PARAMS wants it. */
export const EC_PARAMS_P256 = Buffer.from('06082a8648ce3d030107', 'hex');

/**
 * raw r||s (each half the curve size) → DER ECDSA-Sig-Value { r INTEGER, s INTEGER }.
 * Written out by hand because it runs once a certificate on the signing
 * thread, where asn1js's object model cost more than the token's signature.
 */
export function rawEcdsaToDer(raw: Uint8Array): Uint8Array {
  const half = raw.length / 2;
  const r = derUnsignedInteger(raw.subarray(0, half));
  const s = derUnsignedInteger(raw.subarray(half));
  const body = r.length + s.length; // at most 2 × (2 + 1 + 48): a one-byte length for P-256 and P-384 alike
  const out = new Uint8Array(2 + body);
  out[0] = 0x30;
  out[1] = body;
  out.set(r, 2);
  out.set(s, 2 + r.length);
  return out;
}

/** INTEGER of an unsigned big-endian number: leading zero bytes dropped, one 00 kept where the top bit is set. */
function derUnsignedInteger(value: Uint8Array): Uint8Array {
  let i = 0;
  while (i < value.length - 1 && value[i] === 0) i++;
  const digits = value.subarray(i);
  const pad = digits[0]! & 0x80 ? 1 : 0;
  const out = new Uint8Array(2 + pad + digits.length);
  out[0] = 0x02;
  out[1] = pad + digits.length;
  out.set(digits, 2 + pad);
  return out;
}

/** CKA_EC_POINT (DER OCTET STRING around an uncompressed point) + curve → SPKI DER. */
export function spkiFromEcPoint(ecPointAttr: Uint8Array, ecParams: Uint8Array): Uint8Array {
  const point = asn1js.fromBER(toArrayBuffer(ecPointAttr));
  if (point.offset === -1 || !(point.result instanceof asn1js.OctetString)) {
    throw new Error('CKA_EC_POINT is not a DER OCTET STRING');
  }
  const curve = asn1js.fromBER(toArrayBuffer(ecParams));
  if (curve.offset === -1 || !(curve.result instanceof asn1js.ObjectIdentifier)) {
    throw new Error('CKA_EC_PARAMS is not a named curve');
  }
  const spki = new asn1js.Sequence({
    value: [
      new asn1js.Sequence({
        value: [new asn1js.ObjectIdentifier({ value: OID_EC_PUBLIC_KEY }), curve.result],
      }),
      new asn1js.BitString({ valueHex: point.result.valueBlock.valueHexView.slice().buffer }),
    ],
  });
  return new Uint8Array(spki.toBER(false));
}

/** An exactly sized ArrayBuffer copy: a Buffer's .buffer may be the whole pool. */
export function toArrayBuffer(bytes: Uint8Array): ArrayBuffer {
  return bytes.slice().buffer as ArrayBuffer;
}
