/**
 * One J1 link, one request at a time: the station time of each SIGN (last
 * request byte in to first reply byte out) and certificates/s, the jig in
 * a process of its own (bench-jig). What issue 10's "J1 station time, one
 * link" line measures, alone, so that variants can be run side by side.
 * With each round, where that time went (medians), timed at the station's
 * seams without touching its code: the link (frame in, reply out), the
 * station before the token (parse, checks, decision, TBS), the token's
 * signature (the signing call; code before this script's first stop made
 * the CSR's proof meanwhile), the checks after it (the proof, the
 * signature's check, assembly, OpenSSL's read-back), the durable commit,
 * and what follows it.
 *   node --single-threaded-gc --min-semi-space-size=16 dist/scripts/profile-onelink.js [requests] [rounds]
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
// Stamps of the request being served (one at a time), in performance.now() ms.
const at = { handle: 0, signStart: 0, signEnd: 0, commitStart: 0, commitEnd: 0, handleEnd: 0 };
const open = await openStation(config, {
  wrapSigner: (signer) =>
    Object.assign(Object.create(signer) as typeof signer, {
      async sign(digest: Uint8Array, hint?: { alone?: boolean }) {
        at.signStart = performance.now();
        const signature = await signer.sign(digest, hint);
        at.signEnd = performance.now();
        return signature;
      },
    }),
});
const { ledger, station: served } = open;
const record = ledger.recordIssuance.bind(ledger);
ledger.recordIssuance = async (...args: Parameters<typeof record>) => {
  at.commitStart = performance.now();
  const row = await record(...args);
  at.commitEnd = performance.now();
  return row;
};
const handle = served.handle.bind(served);
served.handle = async (req) => {
  at.handle = performance.now();
  const result = await handle(req);
  at.handleEnd = performance.now();
  return result;
};
const phases = { link: [] as number[], before: [] as number[], token: [] as number[], after: [] as number[], commit: [] as number[], reply: [] as number[] };
const station = join(dir, 'tty-station');
const jigPath = join(dir, 'tty-jig');
const socat = spawn('socat', [`pty,raw,echo=0,link=${station}`, `pty,raw,echo=0,link=${jigPath}`], { stdio: 'ignore' });
while (!existsSync(station) || !existsSync(jigPath)) await new Promise((r) => setTimeout(r, 20));
const times: number[] = [];
const link = new SerialLink(open.station, { path: station, baud: 115200, idleTimeoutMs: 10_000, onServiceTime: (ms) => {
  times.push(ms);
  phases.link.push(ms - (at.handleEnd - at.handle));
  phases.before.push(at.signStart - at.handle);
  phases.token.push(at.signEnd - at.signStart);
  phases.after.push(at.commitStart - at.signEnd);
  phases.commit.push(at.commitEnd - at.commitStart);
  phases.reply.push(at.handleEnd - at.commitEnd);
} });
await link.start();
while (link.status.state !== 'open') await new Promise((r) => setTimeout(r, 20));
const pct = (a: number[], p: number): number => a[Math.min(a.length - 1, Math.floor((a.length * p) / 100))]!;
for (let r = 0; r < rounds; r++) {
  times.length = 0;
  for (const p of Object.values(phases)) p.length = 0;
  const rate = await new Promise<number>((resolve, reject) => {
    const child = spawn(process.execPath, [join(import.meta.dirname, 'bench-jig.js'), 'sign', String(N), config.station.factory, jigPath], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.on('close', (code) => (code === 0 ? resolve(N / (JSON.parse(out) as { seconds: number }).seconds) : reject(new Error(`jig exit ${code}`))));
  });
  const s = [...times].sort((a, b) => a - b);
  console.log(`one link: ${fmt(rate)} certificates/s; station time p50 ${fmt(pct(s, 50), 2)} ms, p99 ${fmt(pct(s, 99), 2)} ms, max ${fmt(s[s.length - 1]!, 1)} ms`);
  const median = (a: number[]): string => fmt(pct([...a].sort((x, y) => x - y), 50), 2);
  console.log(
    `  medians: link ${median(phases.link)}, before the token ${median(phases.before)}, token signature ${median(phases.token)}, proof, checks and read-back ${median(phases.after)}, commit ${median(phases.commit)}, after the commit ${median(phases.reply)} ms`,
  );
}
await link.stop();
socat.kill();
await open.close();
