/**
 * Shared by the benchmark's parts: a throwaway development station in a
 * temporary folder (made by `ca demo`'s code), and small timing helpers.
 */
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadConfig, type StationConfig } from '../src/config/index.js';
import { caDemo } from '../src/station/index.js';

/**
 * The throwaway station's folder goes when the process exits, unless `keep`
 * (the benchmark leaves its figures there): sixty profile runs had left
 * sixty tokens and ledgers in /tmp.
 */
export async function benchStation(extraToml = '', opts: { keep?: boolean } = {}): Promise<{ dir: string; config: StationConfig; configPath: string }> {
  const dir = mkdtempSync(join(tmpdir(), 'line-signer-bench-'));
  if (!opts.keep) process.on('exit', () => rmSync(dir, { recursive: true, force: true }));
  const configPath = join(dir, 'station.toml');
  writeFileSync(
    configPath,
    `[station]
id = "bench"
factory = "acme-factory"
production = true
ledger = "ledger.db"

[token]
module = "/usr/lib/softhsm/libsofthsm2.so"
token_label = "bench"
key_label = "local-ca"
pin_file = "pin"
softhsm2_conf = "softhsm2.conf"

[ca]
certificate = "local-ca.pem"
root = "factory_ca.pem"
owner = "fio-bench"
${extraToml}
`,
  );
  const config = loadConfig(configPath);
  process.env.SOFTHSM2_CONF = config.token.softhsm2_conf;
  await caDemo(config);
  return { dir, config, configPath };
}

export function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

/** Runs `task(i)` for i < n with `concurrency` in flight; returns seconds. */
export async function pool(n: number, concurrency: number, task: (i: number) => Promise<unknown>): Promise<number> {
  let next = 0;
  const t0 = process.hrtime.bigint();
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < n) await task(next++);
    }),
  );
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

export const fmt = (n: number, digits = 0): string => n.toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: digits });

/** A thread's (or process's) CPU ticks (user + system, USER_HZ 100) and context switches, from /proc. */
export interface CpuSample {
  name: string;
  cpuTicks: number;
  switches: number;
}

/** /proc/PID/stat or /proc/self/task/TID/stat read into a CpuSample; null when it has ended. */
export function cpuSample(procDir: string): CpuSample | null {
  try {
    const stat = readFileSync(`${procDir}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const status = readFileSync(`${procDir}/status`, 'utf8');
    const sw = (k: string): number => Number(new RegExp(`${k}:\\s+(\\d+)`).exec(status)?.[1] ?? 0);
    return {
      name: stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')')),
      cpuTicks: Number(fields[11]) + Number(fields[12]),
      switches: sw('voluntary_ctxt_switches') + sw('nonvoluntary_ctxt_switches'),
    };
  } catch {
    return null; // ended between the listing and the read
  }
}

/** Each thread of this process, by thread id. */
export function threadSamples(): Map<string, CpuSample> {
  const out = new Map<string, CpuSample>();
  for (const tid of readdirSync('/proc/self/task')) {
    const s = cpuSample(`/proc/self/task/${tid}`);
    if (s) out.set(tid, s);
  }
  return out;
}

/** Milliseconds of CPU per request of each thread between two samplings, the busiest first; threads under 5 µs left out. */
export function cpuPerRequest(before: Map<string, CpuSample>, after: Map<string, CpuSample>, requests: number): Array<{ label: string; ms: number; switches: number }> {
  const rows: Array<{ label: string; ms: number; switches: number }> = [];
  for (const [id, a] of after) {
    const b = before.get(id) ?? { cpuTicks: 0, switches: 0 };
    const ms = ((a.cpuTicks - b.cpuTicks) * 10) / requests;
    const switches = (a.switches - b.switches) / requests;
    if (ms >= 0.005 || switches >= 0.05) rows.push({ label: `${a.name} ${id}`, ms, switches });
  }
  return rows;
}
