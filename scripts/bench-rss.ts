/**
 * The benchmark's memory figure, in a process of its own started with the
 * station's own Node flags (bin/line-signer.js), so that nothing the
 * benchmark did before counts: a station issues K certificates, 8 in
 * flight, and its RSS after the first 1,000 and after all K is printed as
 * JSON. The CSRs are made here in chunks, as a link's parsing would make
 * garbage of its own.
 *   node --expose-gc dist/scripts/bench-rss.js CONFIG K
 */
import { randomUUID } from 'node:crypto';
import { loadConfig } from '../src/config/index.js';
import { openStation } from '../src/station/index.js';
import { makeDeviceCsr } from '../src/x509/index.js';
import { pool } from './bench-lib.js';

const [configPath, kText] = process.argv.slice(2);
const K = Number(kText);
const config = loadConfig(configPath!);
process.env.SOFTHSM2_CONF = config.token.softhsm2_conf;
const open = await openStation(config);
const rssMb = (): number => {
  (globalThis as { gc?: () => void }).gc?.();
  return process.memoryUsage().rss / 1e6;
};
let at1k = 0;
for (let done = 0; done < K; ) {
  const chunk = Array.from({ length: Math.min(done === 0 ? 1000 : 2000, K - done) }, () =>
    makeDeviceCsr({ deviceId: randomUUID(), factory: config.station.factory, production: true }).der,
  );
  let i = 0;
  await pool(chunk.length, 8, async () => {
    const r = await open.station.handle({ csr: chunk[i++]!, link: 'bench', hardwareId: 'imx8mm' });
    if (!r.ok) throw new Error(`bench: ${r.message}`);
  });
  done += chunk.length;
  if (done === 1000) at1k = rssMb();
}
const atK = rssMb();
await open.close();
process.stdout.write(JSON.stringify({ at1k, atK }) + '\n');
