/**
 * scripts/fuzz: the properties the normal suite runs a few hundred times,
 * run for minutes. A module in test/helpers named *-properties.ts joins by
 * exporting `properties()`, which returns the properties and a `finish()`
 * that checks what they left behind (a ledger) and closes it.
 */
import { readdirSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import fc from 'fast-check';
import { testPki } from '../test/helpers/pki.js';

interface NamedProperty {
  name: string;
  property: fc.IRawProperty<[unknown]>;
}
interface PropertyModule {
  properties(): Promise<{ properties: NamedProperty[]; finish(): Promise<string | null> }>;
}

const RUNS_PER_ROUND = 100;
const REPORT_EVERY_MS = 30_000;

function show(value: unknown): string {
  return JSON.stringify(value, (_k, v: unknown) => (v instanceof Uint8Array ? Buffer.from(v).toString('hex') : v));
}

async function main(): Promise<number> {
  const minutes = Number(process.argv[2] ?? 10);
  if (!(minutes > 0)) throw new Error(`usage: scripts/fuzz [minutes]; "${process.argv[2]}" is not a number of minutes`);
  const helpers = join(dirname(fileURLToPath(import.meta.url)), '..', 'test', 'helpers');
  const modules = readdirSync(helpers).filter((f) => f.endsWith('-properties.js'));
  const suites = [];
  for (const file of modules) suites.push(await ((await import(pathToFileURL(join(helpers, file)).href)) as PropertyModule).properties());
  const all = suites.flatMap((s) => s.properties).map((p) => ({ ...p, runs: 0, ms: 0, failures: 0 }));
  console.log(`fuzz: ${all.length} properties from ${modules.join(', ')}, ${minutes} min`);

  const end = Date.now() + minutes * 60_000;
  let nextReport = Date.now() + REPORT_EVERY_MS;
  const report = (): void => {
    for (const p of all) console.log(`  ${p.name}: ${p.runs} runs, ${((p.runs * 1000) / Math.max(p.ms, 1)).toFixed(0)}/s, ${p.failures} failures`);
  };
  while (Date.now() < end) {
    for (const p of all) {
      const seed = (Math.random() * 2 ** 31) | 0;
      const start = performance.now();
      const details = await fc.check(p.property, { numRuns: RUNS_PER_ROUND, seed });
      p.ms += performance.now() - start;
      p.runs += details.numRuns;
      if (details.failed) {
        p.failures++;
        console.log(`FAIL ${p.name}: seed ${details.seed}, path "${details.counterexamplePath}"`);
        console.log(`  counterexample: ${show(details.counterexample)}`);
        console.log(`  ${details.errorInstance instanceof Error ? details.errorInstance.stack : String(details.errorInstance)}`);
      }
    }
    if (Date.now() >= nextReport) {
      report();
      nextReport += REPORT_EVERY_MS;
    }
  }
  let failed = all.reduce((n, p) => n + p.failures, 0);
  for (const s of suites) {
    const problem = await s.finish();
    if (problem) {
      console.log(`FAIL afterwards: ${problem}`);
      failed++;
    }
  }
  console.log('fuzz: done');
  report();
  rmSync(testPki().dir, { recursive: true, force: true });
  return failed ? 1 : 0;
}

process.exitCode = await main();
