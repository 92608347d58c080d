import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { exportBatch } from '../../src/export/index.js';
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
