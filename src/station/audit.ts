/** What the PKI owner asks of a station's ledger: is it intact, and what has it done. */
import { X509Certificate } from 'node:crypto';
import type { StationConfig } from '../config/index.js';
import { SqliteLedger } from '../ledger/index.js';
import { readCertificateFile } from './open.js';

export interface StationStatus {
  station: string;
  issued: number;
  rejected: Record<string, number>;
  replays: number;
  last_issuance: { seq: number; device_id: string; serial: string; issued_at: string; link: string } | null;
  local_ca_expires: string | null;
  local_ca_days_left: number | null;
}

export function stationStatus(config: StationConfig, now = new Date()): StationStatus {
  let expires: Date | null = null;
  try {
    expires = new Date(new X509Certificate(Buffer.from(readCertificateFile(config.ca.certificate, 'local-ca certificate'))).validTo);
  } catch {
    expires = null;
  }
  const ledger = new SqliteLedger(config.station.ledger, config.station.id);
  try {
    const s = ledger.stats();
    const last = s.lastIssuance;
    return {
      station: config.station.id,
      issued: s.issued,
      rejected: s.rejectedByCode,
      replays: s.replays,
      last_issuance: last
        ? { seq: last.seq, device_id: last.deviceId, serial: last.serial, issued_at: last.issuedAt, link: last.link }
        : null,
      local_ca_expires: expires?.toISOString() ?? null,
      local_ca_days_left: expires ? Math.floor((expires.getTime() - now.getTime()) / 86_400_000) : null,
    };
  } finally {
    ledger.close();
  }
}
