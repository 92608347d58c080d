/**
 * Runs VACUUM INTO on a connection of its own into the private folder, then
 * flushes the copy and gives it DEST's name (see backup.ts): every disk
 * wait here, none on the thread that serves the links.
 */
import Database from 'better-sqlite3';
import { closeSync, fstatSync, fsyncSync, linkSync, lstatSync, openSync, renameSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { parentPort, workerData } from 'node:worker_threads';
import { fsyncFolder } from '../files.js';

export type BackupReply = { ok: true; bytes: number; ms: number } | { ok: false; code: 'USAGE' | 'LEDGER'; message: string };

/** The flushed copy takes DEST's name only if nothing is there; link() neither replaces nor follows anything at DEST. */
function publish(copy: string, dest: string): void {
  try {
    linkSync(copy, dest);
  } catch (err) {
    // A stick's vfat has no hard links (nor symlinks): there the copy is renamed if DEST is still free.
    if (!['EPERM', 'ENOTSUP', 'EOPNOTSUPP'].includes((err as NodeJS.ErrnoException).code ?? '')) throw err;
    try {
      lstatSync(dest);
      throw Object.assign(new Error(`${dest} exists`), { code: 'EEXIST' });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
    renameSync(copy, dest);
  }
  fsyncFolder(dirname(dest));
}

function reply(ledger: string, folder: string, dest: string): BackupReply {
  const t0 = performance.now();
  const copy = join(folder, 'ledger.db');
  try {
    const db = new Database(ledger, { readonly: true });
    try {
      db.prepare('VACUUM INTO ?').run(copy);
    } finally {
      db.close();
    }
    const fd = openSync(copy, 'r');
    let bytes: number;
    try {
      fsyncSync(fd);
      bytes = fstatSync(fd).size;
    } finally {
      closeSync(fd);
    }
    try {
      publish(copy, dest);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code ?? 'error';
      if (code === 'EEXIST') return { ok: false, code: 'USAGE', message: `${dest} appeared while the copy was made (EEXIST); a backup never overwrites a file nor writes through a symlink; nothing written there` };
      throw new Error(`cannot give the copy its name (${(err as Error).message})`);
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
