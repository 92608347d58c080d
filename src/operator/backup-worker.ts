/** Runs VACUUM INTO on a connection of its own (see backup.ts), into a fresh private folder, and flushes the copy. */
import Database from 'better-sqlite3';
import { closeSync, fstatSync, fsyncSync, openSync } from 'node:fs';
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
  const fd = openSync(dest, 'r');
  let bytes: number;
  try {
    fsyncSync(fd);
    bytes = fstatSync(fd).size;
  } finally {
    closeSync(fd);
  }
  parentPort!.postMessage({ ok: true, bytes, ms: performance.now() - t0 });
} catch (err) {
  parentPort!.postMessage({ ok: false, message: (err as Error).message });
}
