/** Runs VACUUM INTO on a connection of its own (see backup.ts). */
import Database from 'better-sqlite3';
import { statSync } from 'node:fs';
import { parentPort, workerData } from 'node:worker_threads';

const { ledger, dest } = workerData as { ledger: string; dest: string };
const t0 = performance.now();
try {
  const db = new Database(ledger, { readonly: true });
  try {
    db.prepare('VACUUM INTO ?').run(dest);
  } finally {
    db.close();
  }
  parentPort!.postMessage({ ok: true, bytes: statSync(dest).size, ms: performance.now() - t0 });
} catch (err) {
  parentPort!.postMessage({ ok: false, message: (err as Error).message });
}
