import { createHash } from 'node:crypto';

export const GENESIS_HASH = '0'.repeat(64);

/**
 * entry_hash = SHA-256(previous entry_hash ‖ "\n" ‖ JSON of this row's
 * content). JSON of an array of strings, numbers and nulls is canonical
 * enough: one value per field, in a fixed order, no whitespace.
 */
export function chainHash(prev: string, content: ReadonlyArray<string | number | null>): string {
  return createHash('sha256').update(prev).update('\n').update(JSON.stringify(content)).digest('hex');
}

/** An issuance as the chain sees it; an export carries exactly these fields. */
export interface IssuanceFields {
  seq: number;
  serial: string;
  deviceId: string;
  subject: string;
  publicKeySha256: string;
  csrSha256: string;
  /** DER bytes, or their base64. */
  certificate: Uint8Array | string;
  notBefore: string;
  notAfter: string;
  issuedAt: string;
  stationId: string;
  link: string;
  hardwareId: string | null;
  workOrder: string | null;
}

export function issuanceHash(prev: string, r: IssuanceFields): string {
  const cert = typeof r.certificate === 'string' ? r.certificate : Buffer.from(r.certificate).toString('base64');
  return chainHash(prev, [
    r.seq, r.serial, r.deviceId, r.subject, r.publicKeySha256, r.csrSha256, cert,
    r.notBefore, r.notAfter, r.issuedAt, r.stationId, r.link, r.hardwareId, r.workOrder,
  ]);
}

export interface EventFields {
  seq: number;
  at: string;
  kind: string;
  code: string | null;
  message: string | null;
  csrSha256: string | null;
  deviceId: string | null;
  link: string | null;
  stationId: string;
}

export function eventHash(prev: string, e: EventFields): string {
  return chainHash(prev, [e.seq, e.at, e.kind, e.code, e.message, e.csrSha256, e.deviceId, e.link, e.stationId]);
}
