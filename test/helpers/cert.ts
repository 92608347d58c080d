/** Reading issued certificates field by field, to compare with the profile. */
import { X509Certificate } from 'node:crypto';
import * as asn1js from 'asn1js';
import * as pkijs from 'pkijs';
import { pemDecodeAll } from '../../src/x509/index.js';

export interface CertFields {
  x509: X509Certificate;
  pkijs: pkijs.Certificate;
  /** Raw DER of tbsCertificate fields, by name. */
  raw: { serial: Uint8Array; issuer: Uint8Array; subject: Uint8Array; spki: Uint8Array; notBefore: Uint8Array; notAfter: Uint8Array };
  subjectTags: number[];
}

const rawOf = (b: asn1js.AsnType): Uint8Array => new Uint8Array((b as unknown as { valueBeforeDecodeView: Uint8Array }).valueBeforeDecodeView);

export function certFields(der: Uint8Array): CertFields {
  const top = asn1js.fromBER(new Uint8Array(der)).result as asn1js.Sequence;
  const tbs = (top.valueBlock.value[0] as asn1js.Sequence).valueBlock.value;
  const validity = (tbs[4] as asn1js.Sequence).valueBlock.value;
  const subjectTags: number[] = [];
  for (const rdn of (tbs[5] as asn1js.Sequence).valueBlock.value) {
    for (const atv of (rdn as asn1js.Set).valueBlock.value) {
      subjectTags.push(((atv as asn1js.Sequence).valueBlock.value[1] as asn1js.AsnType).idBlock.tagNumber);
    }
  }
  return {
    x509: new X509Certificate(Buffer.from(der)),
    pkijs: pkijs.Certificate.fromBER(der.slice().buffer as ArrayBuffer),
    raw: {
      serial: rawOf(tbs[1]!),
      issuer: rawOf(tbs[3]!),
      notBefore: rawOf(validity[0]!),
      notAfter: rawOf(validity[1]!),
      subject: rawOf(tbs[5]!),
      spki: rawOf(tbs[6]!),
    },
    subjectTags,
  };
}

export function chainBlocks(chain: string): Uint8Array[] {
  return pemDecodeAll(chain, 'CERTIFICATE');
}

/** The SubjectPublicKeyInfo of a CSR, raw. */
export function csrSpki(der: Uint8Array): Uint8Array {
  const top = asn1js.fromBER(new Uint8Array(der)).result as asn1js.Sequence;
  const info = (top.valueBlock.value[0] as asn1js.Sequence).valueBlock.value;
  return rawOf(info[2]!);
}
