/**
 * `ledger backup DEST`: a consistent copy of a live ledger. SQLite's
 * VACUUM INTO reads one snapshot (WAL readers never block the writer) and
 * writes a compact file; it runs in a worker thread so the station's links
 * never wait on it. (The page-by-page backup API restarts whenever another
 * connection writes, which on a busy line it always does.)
 *
 * VACUUM INTO follows a symlink and fills an existing empty file, so it
 * writes into a fresh private folder (mkdtemp, mode 0700) beside the
 * ledger, where only the station's user writes (one beside DEST was renamed
 * away and replaced by an attacker who owned DEST's folder). The copy then
 * takes DEST's name by link() on the same file system, or is written into
 * DEST, a file made exclusively (O_EXCL|O_NOFOLLOW), on another: either way
 * anything at DEST, a symlink swapped in meanwhile included, is refused,
 * never followed. A backup never overwrites anything nor writes through a
 * link.
 */
import { lstatSync, mkdtempSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { LineSignerError } from '../errors.js';
import type { BackupReply } from './backup-worker.js';

export function backupLedger(ledger: string, dest: string): Promise<{ dest: string; bytes: number; ms: number }> {
  let folder: string;
  try {
    refuseExisting(dest);
    folder = mkdtempSync(join(dirname(ledger), '.backup-'));
  } catch (err) {
    if (err instanceof LineSignerError) return Promise.reject(err);
    return Promise.reject(new LineSignerError('LEDGER', `backup to ${dest} failed: cannot make a private folder beside it (${(err as Error).message})`));
  }
  return new Promise((resolve, reject) => {
    const worker = new Worker(new URL('./backup-worker.js', import.meta.url), { workerData: { ledger, folder, dest } });
    worker.once('message', (m: BackupReply) => {
      if (m.ok) resolve({ dest, bytes: m.bytes, ms: m.ms });
      else reject(new LineSignerError(m.code, m.message));
    });
    worker.once('error', (err) => {
      // The worker removes its folder as it ends; one that died before that leaves it here.
      rmSync(folder, { recursive: true, force: true });
      reject(new LineSignerError('LEDGER', `backup to ${dest} failed: ${err.message}`));
    });
  });
}

function refuseExisting(dest: string): void {
  try {
    lstatSync(dest);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw new LineSignerError('USAGE', `${dest}: ${(err as Error).message}`);
  }
  throw new LineSignerError('USAGE', `${dest} exists (EEXIST); a backup never overwrites a file`);
}
