/** What the PKI owner and the technician ask of a station: what has it done, and what needs a look. */
import { X509Certificate } from 'node:crypto';
import { existsSync, statfsSync } from 'node:fs';
import { dirname } from 'node:path';
import type { StationConfig } from '../config/index.js';
import { SqliteLedger, type OpenOrder } from '../ledger/index.js';
import { checkClock } from '../policy/index.js';
import { serialText } from '../serial.js';
import { readCertificateFile, rulesFrom } from './open.js';

export interface StationStatus {
  station: string;
  issued: number;
  /** Issuances since midnight (UTC), per link. */
  today: Record<string, number>;
  rejected: Record<string, number>;
  replays: number;
  order: (OpenOrder & { left: number }) | null;
  last_issuance: { seq: number; device_id: string; serial: string; issued_at: string; link: string } | null;
  local_ca_expires: string | null;
  local_ca_days_left: number | null;
  /** Things that need a person's look: the clock, the local-ca's expiry, the ledger's disk, the token. */
  warnings: string[];
}

const GiB = 1024 ** 3;

/** The warnings that do not need the serving process (the token's health comes from it). */
export function stationWarnings(config: StationConfig, ledger: SqliteLedger, now: Date, caNotBefore: Date | null, caNotAfter: Date | null): string[] {
  const warnings: string[] = [];
  if (caNotBefore && caNotAfter) {
    const ctx = ledger.stationContext(now);
    const clock = checkClock({ ...ctx, order: undefined, caNotBefore, caNotAfter, now }, rulesFrom(config));
    if (clock) warnings.push(`CLOCK: ${clock.message}`);
    const days = Math.floor((caNotAfter.getTime() - now.getTime()) / 86_400_000);
    if (days < 90) warnings.push(`the local-ca expires in ${days} days (${caNotAfter.toISOString()}): have the factory sign a new one (line-signer ca csr)`);
  } else warnings.push('no local-ca installed: line-signer ca import FILE');
  try {
    const fs = statfsSync(dirname(config.station.ledger));
    const free = fs.bavail * fs.bsize;
    const share = fs.blocks ? fs.bavail / fs.blocks : 1;
    if (free < GiB || share < 0.1) {
      warnings.push(`the ledger's disk has ${(free / GiB).toFixed(2)} GiB free (${Math.round(share * 100)} %): make room before it fills (${dirname(config.station.ledger)})`);
    }
  } catch {
    /* no statfs here: nothing to say */
  }
  return warnings;
}

export function localCaValidity(config: StationConfig): { notBefore: Date; notAfter: Date } | null {
  try {
    const x = new X509Certificate(Buffer.from(readCertificateFile(config.ca.certificate, 'local-ca certificate')));
    return { notBefore: new Date(x.validFrom), notAfter: new Date(x.validTo) };
  } catch {
    return null;
  }
}

export function stationStatus(config: StationConfig, now = new Date()): StationStatus {
  const ca = localCaValidity(config);
  // Read-only on a ledger that exists. A missing one is not made here: an empty ledger where a
  // station's record was (moved, deleted) must not read as a station that issued nothing.
  const missing = !existsSync(config.station.ledger);
  const ledger = new SqliteLedger(missing ? ':memory:' : config.station.ledger, config.station.id, { readonly: !missing });
  try {
    const s = ledger.stats();
    const last = s.lastIssuance;
    const order = ledger.stationContext(now).order;
    const midnight = Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), now.getUTCDate());
    return {
      station: config.station.id,
      issued: s.issued,
      today: ledger.issuedPerLink(new Date(midnight).toISOString(), new Date(midnight + 86_400_000).toISOString()),
      rejected: s.rejectedByCode,
      replays: s.replays,
      order: order ? { ...order, left: Math.max(0, order.quantity - order.issued) } : null,
      last_issuance: last
        ? { seq: last.seq, device_id: last.deviceId, serial: serialText(last.serial), issued_at: last.issuedAt, link: last.link }
        : null,
      local_ca_expires: ca?.notAfter.toISOString() ?? null,
      local_ca_days_left: ca ? Math.floor((ca.notAfter.getTime() - now.getTime()) / 86_400_000) : null,
      warnings: [
        ...(missing ? [`NO LEDGER at ${config.station.ledger}: a new station makes it at its first serve or sign; if this station has issued, the file was moved or deleted`] : []),
        ...stationWarnings(config, ledger, now, ca?.notBefore ?? null, ca?.notAfter ?? null),
      ],
    };
  } finally {
    ledger.close();
  }
}
