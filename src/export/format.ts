/**
 * The batch file: JSON Lines, so that 100,000 records stream through in
 * constant memory on both sides. In order:
 *   {"type":"manifest", ...}          what the batch covers
 *   {"type":"certificates", ...}      local-ca, factory root, station key
 *   {"type":"issuance", ...}          one per certificate, every ledger field
 *   {"type":"revocation", ...}        one per revocation mark
 *   {"type":"signature","cms":"..."}  detached CMS SignedData over every byte above
 */
export const FORMAT = 'line-signer-batch/1';
export const EXTENSION = 'lsbatch';

export interface Manifest {
  type: 'manifest';
  format: typeof FORMAT;
  station: string;
  factory: string;
  batch: number;
  first_seq: number;
  last_seq: number;
  count: number;
  first_event_seq: number;
  last_event_seq: number;
  revocations: number;
  chain_before: string;
  chain_after: string;
  previous_batch_sha256: string;
  created_at: string;
}

export interface CertificatesLine {
  type: 'certificates';
  local_ca: string;
  root: string;
  station: string;
}

export interface IssuanceLine {
  type: 'issuance';
  /** Ledger row format (absent in batches from before format 2: 1). */
  v?: number;
  seq: number;
  entry_hash: string;
  device_id: string;
  serial: string;
  client_pem: string;
  not_before: string;
  not_after: string;
  issued_at: string;
  hardware_id: string | null;
  work_order: string | null;
  subject: string;
  public_key_sha256: string;
  csr_sha256: string;
  link: string;
  station_id: string;
  /** Format 2: the device's name, and the seq of the issuance this one replaces. */
  name?: string | null;
  supersedes?: number | null;
}

export interface RevocationLine {
  type: 'revocation';
  /** Event row format 2 and later: 2, with after_seq. */
  v?: number;
  event_seq: number;
  entry_hash: string;
  device_id: string;
  reason: string;
  at: string;
  /**
   * Where the mark stands among the device's issuances: it revokes every
   * issuance of the device with seq <= after_seq; a later seq is a re-issue
   * after it. Absent in batches from before format 2 (then: the batch's last seq).
   */
  after_seq?: number;
}

export interface SignatureLine {
  type: 'signature';
  cms: string;
}

export type BatchLine = Manifest | CertificatesLine | IssuanceLine | RevocationLine | SignatureLine;

export function batchFileName(station: string, batch: number): string {
  return `${station}-${String(batch).padStart(6, '0')}.${EXTENSION}`;
}
