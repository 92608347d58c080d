/**
 * `ledger backup DEST`: a consistent copy of a live ledger. SQLite's
 * VACUUM INTO reads one snapshot (WAL readers never block the writer) and
 * writes a compact file; it runs in a worker thread so the station's links
 * never wait on it. (The page-by-page backup API restarts whenever another
 * connection writes, which on a busy line it always does.)
 *
 * VACUUM INTO follows a symlink and fills an existing empty file, so it
 * writes into a fresh private folder (mkdtemp, mode 0700) beside DEST, and
 * the flushed copy then takes DEST's name by link(): that fails when
 * anything is there, a symlink swapped in meanwhile included, and never
 * follows one. A backup never overwrites anything nor writes through a link.
 */
import { linkSync, lstatSync, mkdtempSync, renameSync, rmSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { LineSignerError } from '../errors.js';
import { fsyncFolder } from '../files.js';

export function backupLedger(ledger: string, dest: string): Promise<{ dest: string; bytes: number; ms: number }> {
  try {
    refuseExisting(dest);
  } catch (err) {
    return Promise.reject(err);
  }
  let folder: string;
  try {
    folder = mkdtempSync(join(dirname(dest), `.${basename(dest)}.`));
  } catch (err) {
    return Promise.reject(new LineSignerError('LEDGER', `backup to ${dest} failed: cannot make a private folder beside it (${(err as NodeJS.ErrnoException).code ?? 'error'}: ${(err as Error).message})`));
  }
  const copy = join(folder, 'ledger.db');
  return new Promise<{ dest: string; bytes: number; ms: number }>((resolve, reject) => {
    const worker = new Worker(new URL('./backup-worker.js', import.meta.url), { workerData: { ledger, dest: copy } });
    worker.once('message', (m: { ok: true; bytes: number; ms: number } | { ok: false; message: string }) => {
      if (!m.ok) return reject(new LineSignerError('LEDGER', `backup to ${dest} failed: ${m.message}`));
      try {
        publish(copy, dest);
        resolve({ dest, bytes: m.bytes, ms: m.ms });
      } catch (err) {
        reject(err);
      }
    });
    worker.once('error', (err) => reject(new LineSignerError('LEDGER', `backup to ${dest} failed: ${err.message}`)));
  }).finally(() => rmSync(folder, { recursive: true, force: true }));
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

/** The flushed copy takes DEST's name only if nothing is there. */
function publish(copy: string, dest: string): void {
  try {
    try {
      linkSync(copy, dest);
    } catch (err) {
      // A stick's vfat has no hard links (nor symlinks): there the copy is renamed if DEST is still free.
      if (!['EPERM', 'ENOTSUP', 'EOPNOTSUPP'].includes((err as NodeJS.ErrnoException).code ?? '')) throw err;
      refuseExisting(dest);
      renameSync(copy, dest);
    }
  } catch (err) {
    if (err instanceof LineSignerError) throw err;
    const code = (err as NodeJS.ErrnoException).code ?? 'error';
    if (code === 'EEXIST') throw new LineSignerError('USAGE', `${dest} appeared while the copy was made (EEXIST); a backup never overwrites a file nor writes through a symlink; nothing written there`);
    throw new LineSignerError('LEDGER', `backup to ${dest} failed: cannot give the copy its name (${code}: ${(err as Error).message})`);
  }
  fsyncFolder(dirname(dest));
}
