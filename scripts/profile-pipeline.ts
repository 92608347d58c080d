/**
 * Where the pipeline's CPU goes, thread by thread: bench (b)'s run (the
 * station's handle(), 8 requests in flight) with each thread's CPU time and
 * context switches per certificate read from /proc. What the README's
 * "what bounds the pipeline" rests on; `node dist/scripts/profile-pipeline.js [N] [sessions] [in flight]`.
 */
import { benchStation, cpuPerRequest, fmt, pool, threadSamples } from './bench-lib.js';
import { openStation } from '../src/station/index.js';
import { makeDeviceCsr } from '../src/x509/index.js';
import { randomUUID } from 'node:crypto';

const N = Number(process.argv[2] ?? 3000);
const sessions = Number(process.argv[3] ?? 1);
const inFlight = Number(process.argv[4] ?? 8);
const { config } = await benchStation();
config.token.sessions = sessions;
const factory = config.station.factory;
const csrs = Array.from({ length: N + 400 }, () => makeDeviceCsr({ deviceId: randomUUID(), factory, production: true }).der);
const open = await openStation(config);
let next = 0;
const handle = async (): Promise<void> => {
  const r = await open.station.handle({ csr: csrs[next++]!, link: 'profile' });
  if (!r.ok) throw new Error(r.message);
};
await pool(400, 8, handle);
const before = threadSamples();
const cpu0 = process.cpuUsage();
const secs = await pool(N, inFlight, handle);
const cpu = process.cpuUsage(cpu0);
const after = threadSamples();
await open.close();

console.log(`${inFlight} in flight, ${sessions} session(s): certificates/s ${fmt(N / secs)}; CPU per certificate ${fmt((cpu.user + cpu.system) / 1000 / N, 3)} ms`);
console.log('thread            CPU ms/cert  switches/cert');
for (const row of cpuPerRequest(before, after, N)) console.log(`${row.label.padEnd(18)}${fmt(row.ms, 3).padStart(11)}${fmt(row.switches, 2).padStart(15)}`);
