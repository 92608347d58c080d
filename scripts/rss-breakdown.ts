/**
 * Where a serving station's memory goes as it warms up: bench-rss's run
 * (8 in flight, CSRs made in chunks) with the process's RSS split by kind
 * of mapping every 9,000 issuances. V8 keeps its heaps in 256 KB pages, so
 * anonymous mappings under 1 MB are the isolates' heaps (the links' thread's
 * own is printed beside them); run it under MALLOC_ARENA_MAX=1 and "[heap]"
 * is all of malloc (SQLite's page caches, OpenSSL's objects).
 * `every` marks more often; the process's thread count shows when a
 * checking worker's successor runs beside it (one thread more).
 *   MALLOC_ARENA_MAX=1 node --single-threaded-gc --expose-gc dist/scripts/rss-breakdown.js [issuances] [every]
 */
import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { openStation } from '../src/station/index.js';
import { makeDeviceCsr } from '../src/x509/index.js';
import { benchStation, fmt, pool } from './bench-lib.js';

/** RSS in MB by kind of mapping: V8 pages, other anonymous memory, the brk heap, files. */
function breakdown(): Record<string, number> {
  const kb: Record<string, number> = {};
  let kind = '';
  for (const line of readFileSync('/proc/self/smaps', 'utf8').split('\n')) {
    const m = /^([0-9a-f]+)-([0-9a-f]+) \S+ \S+ \S+ \S+\s*(.*)$/.exec(line);
    if (m) {
      const size = parseInt(m[2]!, 16) - parseInt(m[1]!, 16);
      kind = m[3] === '[heap]' ? 'brk heap' : m[3] ? 'files' : size < 1 << 20 ? 'V8 pages' : 'other anon';
      continue;
    }
    const rss = /^Rss:\s+(\d+)/.exec(line);
    if (rss) kb[kind] = (kb[kind] ?? 0) + Number(rss[1]);
  }
  return Object.fromEntries(Object.entries(kb).map(([k, v]) => [k, Math.round(v / 1024)]));
}

const K = Number(process.argv[2] ?? 37_000);
const every = Number(process.argv[3] ?? 9000);
const threads = (): string => /Threads:\s+(\d+)/.exec(readFileSync('/proc/self/status', 'utf8'))?.[1] ?? '?';
const { config } = await benchStation();
const open = await openStation(config);
const mark = (done: number): void => {
  (globalThis as { gc?: () => void }).gc?.();
  const m = process.memoryUsage();
  const parts = Object.entries(breakdown()).map(([k, v]) => `${k} ${v}`).join(', ');
  console.log(`${fmt(done).padStart(7)}: ${threads()} threads, RSS ${fmt(m.rss / 2 ** 20)} MB (links' thread heap ${fmt(m.heapTotal / 2 ** 20)}; ${parts})`);
};
for (let done = 0; done < K; ) {
  const chunk = Array.from({ length: Math.min(done === 0 ? 1000 : 2000, K - done) }, () => makeDeviceCsr({ deviceId: randomUUID(), factory: config.station.factory, production: true }).der);
  let i = 0;
  await pool(chunk.length, 8, async () => {
    const r = await open.station.handle({ csr: chunk[i++]!, link: 'bench', hardwareId: 'imx8mm' });
    if (!r.ok) throw new Error(`rss-breakdown: ${r.message}`);
  });
  done += chunk.length;
  // Chunks end at 1,000 + 2,000 k: mark at the first chunk end at or past each multiple of `every`.
  if (done === 1000 || Math.floor(done / every) > Math.floor((done - chunk.length) / every) || done === K) mark(done);
}
await open.close();
