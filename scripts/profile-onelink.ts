/**
 * One J1 link, one request at a time: the station time of each SIGN (last
 * request byte in to first reply byte out) and certificates/s, the jig in
 * a process of its own (bench-jig). What issue 10's "J1 station time, one
 * link" line measures, alone, so that variants can be run side by side.
 *   node --single-threaded-gc dist/scripts/profile-onelink.js [requests] [rounds]
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { SerialLink } from '../src/links/index.js';
import { openStation } from '../src/station/index.js';
import { benchStation, fmt } from './bench-lib.js';

const N = Number(process.argv[2] ?? 1000);
const rounds = Number(process.argv[3] ?? 1);
const { dir, config } = await benchStation();
const open = await openStation(config);
const station = join(dir, 'tty-station');
const jigPath = join(dir, 'tty-jig');
const socat = spawn('socat', [`pty,raw,echo=0,link=${station}`, `pty,raw,echo=0,link=${jigPath}`], { stdio: 'ignore' });
while (!existsSync(station) || !existsSync(jigPath)) await new Promise((r) => setTimeout(r, 20));
const times: number[] = [];
const link = new SerialLink(open.station, { path: station, baud: 115200, idleTimeoutMs: 10_000, onServiceTime: (ms) => times.push(ms) });
await link.start();
while (link.status.state !== 'open') await new Promise((r) => setTimeout(r, 20));
const pct = (a: number[], p: number): number => a[Math.min(a.length - 1, Math.floor((a.length * p) / 100))]!;
for (let r = 0; r < rounds; r++) {
  times.length = 0;
  const rate = await new Promise<number>((resolve, reject) => {
    const child = spawn(process.execPath, [join(import.meta.dirname, 'bench-jig.js'), 'sign', String(N), config.station.factory, jigPath], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.on('close', (code) => (code === 0 ? resolve(N / (JSON.parse(out) as { seconds: number }).seconds) : reject(new Error(`jig exit ${code}`))));
  });
  const s = [...times].sort((a, b) => a - b);
  console.log(`one link: ${fmt(rate)} certificates/s; station time p50 ${fmt(pct(s, 50), 2)} ms, p99 ${fmt(pct(s, 99), 2)} ms, max ${fmt(s[s.length - 1]!, 1)} ms`);
}
await link.stop();
socat.kill();
await open.close();
