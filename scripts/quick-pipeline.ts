import { randomUUID } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { openStation } from '../src/station/index.js';
import { makeDeviceCsr } from '../src/x509/index.js';
import { benchStation, pool } from './bench-lib.js';
const N = 3000;
if (process.argv[2] === 'make') {
  const csrs = Array.from({ length: N * 4 }, () => Buffer.from(makeDeviceCsr({ deviceId: randomUUID(), factory: 'acme-factory', production: true }).der).toString('base64'));
  writeFileSync('/tmp/csrs.json', JSON.stringify(csrs));
  process.exit(0);
}
const csrs = (JSON.parse(readFileSync('/tmp/csrs.json', 'utf8')) as string[]).map((b) => new Uint8Array(Buffer.from(b, 'base64')));
const { config } = await benchStation();
const open = await openStation(config);
let run = 0;
for (const c of (process.env.CONC ?? "1,8").split(",").map(Number)) {
  const off = N * run++;
  const s = await pool(N, c, (i) => open.station.handle({ csr: csrs[off + i]!, link: 'bench' }).then((r: any) => { if (!r.ok) throw new Error(r.message); }));
  console.log(`concurrency ${c}: ${(N / s).toFixed(0)} certs/s`);
}
await open.close();
