/**
 * Where J1's CPU goes with several links signing at once: the station
 * serving L pseudo-terminals, the jigs in a process of their own
 * (bench-jig), each station thread's CPU per certificate from /proc, and
 * beside them what the jigs and the socat relays took of the same two
 * cores. What the README's line on J1 with four links rests on.
 *   node --single-threaded-gc dist/scripts/profile-jig.js [certificates per link] [links]
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { SerialLink } from '../src/links/index.js';
import { openStation } from '../src/station/index.js';
import { benchStation, cpuPerRequest, cpuSample, fmt, threadSamples, type CpuSample } from './bench-lib.js';

const N = Number(process.argv[2] ?? 1000);
const L = Number(process.argv[3] ?? 4);
const { dir, config } = await benchStation();
const open = await openStation(config);
const ptys = Array.from({ length: L }, (_, i) => {
  const station = join(dir, `tty${i}-station`);
  const jig = join(dir, `tty${i}-jig`);
  const socat = spawn('socat', [`pty,raw,echo=0,link=${station}`, `pty,raw,echo=0,link=${jig}`], { stdio: 'ignore' });
  return { station, jig, socat };
});
while (!ptys.every((p) => existsSync(p.station) && existsSync(p.jig))) await new Promise((r) => setTimeout(r, 20));
const links = ptys.map((p) => new SerialLink(open.station, { path: p.station, baud: 115200, idleTimeoutMs: 10_000 }));
await Promise.all(links.map((l) => l.start()));
while (!links.every((l) => l.status.state === 'open')) await new Promise((r) => setTimeout(r, 20));
const run = (n: number): Promise<{ seconds: number; requests: number; cpuMs: number }> =>
  new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [join(import.meta.dirname, 'bench-jig.js'), 'sign', String(n), config.station.factory, ...ptys.map((p) => p.jig)], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.on('close', (code) => (code === 0 ? resolve(JSON.parse(out)) : reject(new Error(`jig exited ${code}`))));
  });
const relays = (): Map<string, CpuSample> => {
  const out = new Map<string, CpuSample>();
  for (const p of ptys) {
    const s = cpuSample(`/proc/${p.socat.pid}`);
    if (s) out.set(String(p.socat.pid), s);
  }
  return out;
};
await run(Math.min(200, N)); // warm-up: JIT
const before = threadSamples();
const relaysBefore = relays();
const r = await run(N);
const rows = cpuPerRequest(before, threadSamples(), r.requests);
const relayMs = cpuPerRequest(relaysBefore, relays(), r.requests).reduce((t, x) => t + x.ms, 0);
const stationMs = rows.reduce((t, x) => t + x.ms, 0);
const jigMs = r.cpuMs / r.requests;
console.log(`${L} J1 links: ${fmt(r.requests / r.seconds)} certificates/s; CPU per certificate: station ${fmt(stationMs, 3)} ms, jigs ${fmt(jigMs, 3)} ms, socat relays ${fmt(relayMs, 3)} ms; all ${fmt(stationMs + jigMs + relayMs, 3)} ms (two cores: at most ${fmt(2000 / (stationMs + jigMs + relayMs))}/s)`);
for (const row of rows) console.log(`${row.label.padEnd(22)} ${fmt(row.ms, 3).padStart(8)} ms/cert ${fmt(row.switches, 2).padStart(6)} switches/cert`);
await Promise.all(links.map((l) => l.stop()));
for (const p of ptys) p.socat.kill();
await open.close();
