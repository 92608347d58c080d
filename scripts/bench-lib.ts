/**
 * Shared by the benchmark's parts: a throwaway development station in a
 * temporary folder (made by `ca demo`'s code), and small timing helpers.
 */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadConfig, type StationConfig } from '../src/config/index.js';
import { caDemo } from '../src/station/index.js';

export async function benchStation(extraToml = ''): Promise<{ dir: string; config: StationConfig; configPath: string }> {
  const dir = mkdtempSync(join(tmpdir(), 'line-signer-bench-'));
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
