/**
 * Where the HTTP link's CPU goes, thread by thread: the station serving
 * `/sign` to clients in a process of their own (bench-http.js), with each
 * station thread's CPU per certificate read from /proc, as
 * profile-pipeline.ts does for the pipeline alone.
 *   node dist/scripts/profile-http.js [requests] [clients]
 */
import { spawn } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { HttpLink } from '../src/links/http.js';
import { openStation } from '../src/station/index.js';
import { benchStation, fmt } from './bench-lib.js';

/** CPU ticks (user + system) of each thread of this process, by thread id and name. */
function threadTicks(): Map<string, { name: string; ticks: number }> {
  const out = new Map<string, { name: string; ticks: number }>();
  for (const tid of readdirSync('/proc/self/task')) {
    try {
      const stat = readFileSync(`/proc/self/task/${tid}/stat`, 'utf8');
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      out.set(tid, { name: stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')')), ticks: Number(f[11]) + Number(f[12]) });
    } catch {
      // ended between the listing and the read
    }
  }
  return out;
}

const N = Number(process.argv[2] ?? 3000);
const CLIENTS = Number(process.argv[3] ?? 8);
const { config } = await benchStation();
const open = await openStation(config);
const http = new HttpLink(open.station, { listen: '127.0.0.1:0', sota: { gateway: 'https://ota-lite.example:8443', ostree: 'https://ota-lite.example:8443/treehub' } });
await http.start();
const run = (n: number): Promise<{ seconds: number; requests: number }> =>
  new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [join(import.meta.dirname, 'bench-http.js'), String(http.port), String(n), String(CLIENTS), config.station.factory], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.on('close', (code) => (code === 0 ? resolve(JSON.parse(out)) : reject(new Error(`clients exited ${code}`))));
  });
await run(Math.min(500, N)); // warm-up: JIT, worker start
const before = threadTicks();
const r = await run(N);
const after = threadTicks();
const hz = 100;
let total = 0;
const rows: string[] = [];
for (const [tid, a] of after) {
  const b = before.get(tid);
  const ms = ((a.ticks - (b?.ticks ?? 0)) / hz) * 1000;
  total += ms;
  if (ms / r.requests >= 0.005) rows.push(`${`${a.name} ${tid}`.padEnd(22)} ${fmt(ms / r.requests, 3).padStart(8)} ms/cert`);
}
console.log(`${CLIENTS} HTTP clients: ${fmt(r.requests / r.seconds)} certificates/s; station CPU per certificate ${fmt(total / r.requests, 3)} ms`);
for (const row of rows) console.log(row);
await http.stop();
await open.close();
