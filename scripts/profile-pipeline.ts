/**
 * Where the pipeline's CPU goes, thread by thread: bench (b)'s run (the
 * station's handle(), 8 requests in flight) with each thread's CPU time and
 * context switches per certificate read from /proc. What the README's
 * "what bounds the pipeline" rests on; `node dist/scripts/profile-pipeline.js [N] [sessions] [in flight]`.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { benchStation, fmt, pool } from './bench-lib.js';
import { openStation } from '../src/station/index.js';
import { makeDeviceCsr } from '../src/x509/index.js';
import { randomUUID } from 'node:crypto';

interface ThreadSample {
  name: string;
  cpuTicks: number;
  switches: number;
}

/** Each thread of this process: its name, CPU ticks (user + system) and context switches. */
function threads(): Map<string, ThreadSample> {
  const out = new Map<string, ThreadSample>();
  for (const tid of readdirSync('/proc/self/task')) {
    try {
      const stat = readFileSync(`/proc/self/task/${tid}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      const status = readFileSync(`/proc/self/task/${tid}/status`, 'utf8');
      const sw = (k: string): number => Number(new RegExp(`${k}:\\s+(\\d+)`).exec(status)?.[1] ?? 0);
      out.set(tid, {
        name: stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')')),
        cpuTicks: Number(fields[11]) + Number(fields[12]),
        switches: sw('voluntary_ctxt_switches') + sw('nonvoluntary_ctxt_switches'),
      });
    } catch {
      // the thread ended between the listing and the read
    }
  }
  return out;
}

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
const before = threads();
const cpu0 = process.cpuUsage();
const secs = await pool(N, inFlight, handle);
const cpu = process.cpuUsage(cpu0);
const after = threads();
await open.close();

const tick = 1000 / 100; // ms per clock tick (USER_HZ 100)
console.log(`${inFlight} in flight, ${sessions} session(s): certificates/s ${fmt(N / secs)}; CPU per certificate ${fmt((cpu.user + cpu.system) / 1000 / N, 3)} ms`);
console.log('thread            CPU ms/cert  switches/cert');
for (const [tid, a] of after) {
  const b = before.get(tid) ?? { cpuTicks: 0, switches: 0 };
  const ms = ((a.cpuTicks - b.cpuTicks) * tick) / N;
  const sw = (a.switches - b.switches) / N;
  if (ms < 0.005 && sw < 0.05) continue;
  console.log(`${`${a.name} ${tid}`.padEnd(18)}${fmt(ms, 3).padStart(11)}${fmt(sw, 2).padStart(15)}`);
}
