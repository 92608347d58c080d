import { createHash } from 'node:crypto';

export const GENESIS_HASH = '0'.repeat(64);

/**
 * entry_hash = SHA-256(previous entry_hash ‖ "\n" ‖ JSON of this row's
 * content). JSON of an array of strings, numbers and nulls is canonical
 * enough: one value per field, in a fixed order, no whitespace. Every
 * string in it is well-formed Unicode (the ledger refuses anything else),
 * so the text hashed is the text SQLite stores.
 *
 * Row format 1 (ledgers from before the name, supersession and event
 * counts) hashes the fields it had; format 2 starts its content with the
 * number 2, so no row can be read as the other format. Rows are never
 * rewritten: a format-1 row keeps its format-1 hash.
 */
export function chainHash(prev: string, content: ReadonlyArray<string | number | null>): string {
  return createHash('sha256').update(prev).update('\n').update(JSON.stringify(content)).digest('hex');
}

/** The row format new rows are written in. */
export const ROW_FORMAT = 2;

/** An issuance as the chain sees it; an export carries exactly these fields. */
export interface IssuanceFields {
  /** Row format: 1 (old ledgers) or 2. */
  v: number;
  seq: number;
  /** Format 1 rows stored the serial without leading zeros; format 2 as `openssl x509 -serial` prints it. */
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
  /** Format 2: the device's name (its id when it sent none). */
  name: string | null;
  /** Format 2: seq of the issuance this one replaces for the same device, or null. */
  supersedes: number | null;
}

export function issuanceHash(prev: string, r: IssuanceFields): string {
  const cert = typeof r.certificate === 'string' ? r.certificate : Buffer.from(r.certificate).toString('base64');
  if (r.v === 1) {
    // Format 1 hashed the serial as stored then: without leading zeros.
    const serial = r.serial.replace(/^0+(?=.)/, '');
    return chainHash(prev, [
      r.seq, serial, r.deviceId, r.subject, r.publicKeySha256, r.csrSha256, cert,
      r.notBefore, r.notAfter, r.issuedAt, r.stationId, r.link, r.hardwareId, r.workOrder,
    ]);
  }
  return chainHash(prev, [
    r.v, r.seq, r.serial, r.deviceId, r.subject, r.publicKeySha256, r.csrSha256, cert,
    r.notBefore, r.notAfter, r.issuedAt, r.stationId, r.link, r.hardwareId, r.workOrder, r.name, r.supersedes,
  ]);
}

export interface EventFields {
  v: number;
  seq: number;
  at: string;
  kind: string;
  code: string | null;
  message: string | null;
  csrSha256: string | null;
  deviceId: string | null;
  link: string | null;
  stationId: string;
  /** Format 2: how many identical refusals this one event stands for (1 for every other event). */
  count: number;
  /** Format 2: who caused it (an operator's name), or null for the station's own events. */
  operator: string | null;
}

export function eventHash(prev: string, e: EventFields): string {
  if (e.v === 1) return chainHash(prev, [e.seq, e.at, e.kind, e.code, e.message, e.csrSha256, e.deviceId, e.link, e.stationId]);
  return chainHash(prev, [e.v, e.seq, e.at, e.kind, e.code, e.message, e.csrSha256, e.deviceId, e.link, e.stationId, e.count, e.operator]);
}
