/**
 * Where the HTTP link's CPU goes, thread by thread: the station serving
 * `/sign` to clients in a process of their own (bench-http.js), with each
 * station thread's CPU per certificate read from /proc, as
 * profile-pipeline.ts does for the pipeline alone.
 *   node dist/scripts/profile-http.js [requests] [clients]
 */
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { HttpLink } from '../src/links/http.js';
import { openStation } from '../src/station/index.js';
import { benchStation, cpuPerRequest, fmt, threadSamples } from './bench-lib.js';

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
const before = threadSamples();
const r = await run(N);
const rows = cpuPerRequest(before, threadSamples(), r.requests);
console.log(`${CLIENTS} HTTP clients: ${fmt(r.requests / r.seconds)} certificates/s; station CPU per certificate ${fmt(rows.reduce((t, x) => t + x.ms, 0), 3)} ms`);
for (const row of rows) console.log(`${row.label.padEnd(22)} ${fmt(row.ms, 3).padStart(8)} ms/cert`);
await http.stop();
await open.close();
