import { createPublicKey, type KeyObject } from 'node:crypto';

/**
 * What the station needs from a key: ECDSA over a digest it computed, and
 * the public half. The PKCS#11 token is one implementation; tests can
 * stand in a software or a deliberately slow one.
 */
export interface Signer {
  /** The curve decides the digest: SHA-256 for P-256, SHA-384 for P-384. */
  readonly hash: 'sha256' | 'sha384';
  /** OID of the X.509 signature algorithm this signer produces. */
  readonly signatureAlgorithm: string;
  /** SubjectPublicKeyInfo, DER. */
  publicKeySpki(): Uint8Array;
  publicKey(): KeyObject;
  /**
   * ECDSA over `digest`; returns a DER ECDSA-Sig-Value ready for X.509.
   * `alone`: no other request is in flight, so the signer may take its
   * lowest-latency path rather than the one that scales.
   */
  sign(digest: Uint8Array, hint?: { alone?: boolean }): Promise<Uint8Array>;
  /** Releases what the signer holds (a worker thread); optional. */
  close?(): Promise<void>;
}

export const OID_ECDSA_SHA256 = '1.2.840.10045.4.3.2';
export const OID_ECDSA_SHA384 = '1.2.840.10045.4.3.3';

/** What a signer says about itself, from its key's curve and public half. */
export function signerIdentity(info: { spki: Uint8Array; curve: 'P-256' | 'P-384' }): { hash: 'sha256' | 'sha384'; signatureAlgorithm: string; key: KeyObject } {
  const p256 = info.curve === 'P-256';
  return {
    hash: p256 ? 'sha256' : 'sha384',
    signatureAlgorithm: p256 ? OID_ECDSA_SHA256 : OID_ECDSA_SHA384,
    key: createPublicKey({ key: Buffer.from(info.spki), format: 'der', type: 'spki' }),
  };
}
