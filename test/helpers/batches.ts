import type { KeyObject } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { exportBatch } from '../../src/export/index.js';
import { SqliteLedger } from '../../src/ledger/index.js';
import { makeDeviceCsr } from '../../src/x509/index.js';
import { FACTORY, testStation, uuid, type TestStation } from './pki.js';

/** A station with `counts[i]` issuances exported as batch i+1 each. */
export async function stationWithBatches(counts: number[]): Promise<{ s: TestStation; stick: string; files: string[]; devices: string[] }> {
  const s = await testStation();
  const stick = join(s.dir, 'stick');
  mkdirSync(stick, { recursive: true });
  const files: string[] = [];
  const devices: string[] = [];
  for (const n of counts) {
    for (let i = 0; i < n; i++) {
      const id = uuid();
      const r = await s.station.handle({ csr: makeDeviceCsr({ deviceId: id, factory: FACTORY, production: true }).der, link: 'test', hardwareId: 'imx8mm' });
      if (!r.ok) throw new Error(r.message);
      devices.push(id);
    }
    const e = await exportBatch(s.config, { outDir: stick });
    files.push(e!.path);
  }
  return { s, stick, files, devices };
}

/** Issues one certificate for `deviceId` (a new key unless one is given); `name` as the HTTP link passes it. */
export async function issue(s: TestStation, deviceId: string, opts: { key?: KeyObject; name?: string } = {}): Promise<{ key: KeyObject; certificatePem: string }> {
  const csr = makeDeviceCsr({ deviceId, factory: FACTORY, production: true }, opts.key);
  const r = await s.station.handle({ csr: csr.der, link: 'test', hardwareId: 'imx8mm', ...(opts.name ? { name: opts.name } : {}) });
  if (!r.ok) throw new Error(`${r.code} ${r.message}`);
  return { key: csr.privateKey, certificatePem: r.certificatePem };
}

/** `ledger allow-reissue`: the next CSR of this device may carry a new key. */
export function allowReissue(s: TestStation, deviceId: string): void {
  s.ledger.grantReissue(deviceId, 'test re-issue');
}

/** `ledger revoke`. */
export function revoke(s: TestStation, deviceId: string, reason = 'test revocation'): void {
  const ledger = new SqliteLedger(s.config.station.ledger, s.config.station.id);
  try {
    ledger.revoke(deviceId, reason);
  } finally {
    ledger.close();
  }
}

/** The next batch, or null when there is nothing new. */
export async function exportNext(s: TestStation, stick: string): Promise<string | null> {
  mkdirSync(stick, { recursive: true }); // the stick is mounted
  return (await exportBatch(s.config, { outDir: stick }))?.path ?? null;
}

/** A revocation mark written straight into a ledger, as another station's own software could: no check that the device was ever issued there. */
export function forgeRevocation(s: TestStation, deviceId: string, reason = 'forged'): void {
  const ledger = new SqliteLedger(s.config.station.ledger, s.config.station.id);
  try {
    ledger.appendEvent({ kind: 'revocation', deviceId, message: reason });
  } finally {
    ledger.close();
  }
}
