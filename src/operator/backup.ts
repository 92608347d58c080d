/**
 * `ledger backup DEST`: a consistent copy of a live ledger. SQLite's
 * VACUUM INTO reads one snapshot (WAL readers never block the writer) and
 * writes a compact file; it runs in a worker thread so the station's links
 * never wait on it. (The page-by-page backup API restarts whenever another
 * connection writes, which on a busy line it always does.)
 */
import { existsSync } from 'node:fs';
import { Worker } from 'node:worker_threads';
import { LineSignerError } from '../errors.js';

export function backupLedger(ledger: string, dest: string): Promise<{ dest: string; bytes: number; ms: number }> {
  if (existsSync(dest)) return Promise.reject(new LineSignerError('USAGE', `${dest} exists; a backup never overwrites a file`));
  return new Promise((resolve, reject) => {
    const worker = new Worker(new URL('./backup-worker.js', import.meta.url), { workerData: { ledger, dest } });
    worker.once('message', (m: { ok: true; bytes: number; ms: number } | { ok: false; message: string }) => {
      if (m.ok) resolve({ dest, bytes: m.bytes, ms: m.ms });
      else reject(new LineSignerError('LEDGER', `backup to ${dest} failed: ${m.message}`));
    });
    worker.once('error', (err) => reject(new LineSignerError('LEDGER', `backup to ${dest} failed: ${err.message}`)));
  });
}
