/**
 * Runs VACUUM INTO on a connection of its own into the private folder, then
 * copies it into DEST, a file it makes, and flushes it (see backup.ts):
 * every disk wait here, none on the thread that serves the links.
 */
import Database from 'better-sqlite3';
import { closeSync, constants, fsyncSync, openSync, readSync, rmSync, writeSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { parentPort, workerData } from 'node:worker_threads';
import { fsyncFolder } from '../files.js';

export type BackupReply = { ok: true; bytes: number; ms: number } | { ok: false; code: 'USAGE' | 'LEDGER'; message: string };

/**
 * The copy written into DEST, a file made here and now: O_EXCL refuses anything already at that
 * name (a symlink included, dangling or not) and O_NOFOLLOW never follows one, so whatever someone
 * swaps in at DEST or renames in its folder, nothing but this new file is written.
 */
function writeInto(copy: string, dest: string): number {
  const out = openSync(dest, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW | constants.O_NONBLOCK, 0o600);
  let bytes = 0;
  try {
    const input = openSync(copy, 'r');
    try {
      const buf = Buffer.allocUnsafe(1 << 20);
      for (let n; (n = readSync(input, buf, 0, buf.length, null)) > 0; ) {
        for (let off = 0; off < n; ) off += writeSync(out, buf, off, n - off);
        bytes += n;
      }
    } finally {
      closeSync(input);
    }
    fsyncSync(out);
  } finally {
    closeSync(out);
  }
  fsyncFolder(dirname(dest));
  return bytes;
}

function reply(ledger: string, folder: string, dest: string): BackupReply {
  const t0 = performance.now();
  // The private folder is beside the ledger, where only the station's user writes: nothing there can be swapped.
  const copy = join(folder, 'ledger.db');
  try {
    const db = new Database(ledger, { readonly: true });
    try {
      db.prepare('VACUUM INTO ?').run(copy);
    } finally {
      db.close();
    }
    let bytes: number;
    try {
      bytes = writeInto(copy, dest);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code ?? 'error';
      if (code === 'EEXIST' || code === 'ELOOP') return { ok: false, code: 'USAGE', message: `${dest} appeared while the copy was made (${code}); a backup never overwrites a file nor writes through a symlink; nothing written there` };
      throw new Error(`cannot write ${dest} (${(err as Error).message})`);
    }
    return { ok: true, bytes, ms: performance.now() - t0 };
  } catch (err) {
    return { ok: false, code: 'LEDGER', message: `backup to ${dest} failed: ${(err as Error).message}` };
  } finally {
    rmSync(folder, { recursive: true, force: true });
  }
}

const { ledger, folder, dest } = workerData as { ledger: string; folder: string; dest: string };
parentPort!.postMessage(reply(ledger, folder, dest));
