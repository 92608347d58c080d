/**
 * A second writer, in a process of its own, for the race test: opens the
 * station WITHOUT the ledger's owner lock (as two processes sharing a file
 * would) and signs the CSRs it is given, all at once. Prints one JSON line:
 * how many were signed, and the refusals by code.
 *   node racer.js CONFIG CSR_DIR
 */
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { loadConfig } from '../../src/config/index.js';
import { openStation } from '../../src/station/index.js';

const [configPath, dir] = process.argv.slice(2) as [string, string];
const open = await openStation(loadConfig(configPath), { lock: 'none', command: 'racer' });
const csrs = readdirSync(dir).sort().map((f) => new Uint8Array(readFileSync(join(dir, f))));
const results = await Promise.all(csrs.map((csr) => open.station.handle({ csr, link: `racer-${process.pid}` })));
await open.close();
const refused: Record<string, number> = {};
for (const r of results) if (!r.ok) refused[r.code] = (refused[r.code] ?? 0) + 1;
process.stdout.write(JSON.stringify({ signed: results.filter((r) => r.ok).length, refused }) + '\n');
