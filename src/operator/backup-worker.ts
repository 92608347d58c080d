/**
 * Runs VACUUM INTO on a connection of its own into the private folder, then
 * gives the copy DEST's name (a hard link, on the same file system) or
 * copies it into DEST, a file it makes, and flushes it (see backup.ts):
 * every disk wait here, none on the thread that serves the links.
 */
import Database from 'better-sqlite3';
import { closeSync, constants, fchmodSync, fstatSync, fsyncSync, linkSync, openSync, readFileSync, readSync, rmSync, writeSync } from 'node:fs';
import { setPriority } from 'node:os';
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

/**
 * On the ledger's file system, DEST is the copy itself under a second name: link() makes it only
 * where nothing is (EEXIST otherwise, a symlink included, never followed) and writes no byte again,
 * which halves what a backup asks of the disk the station commits to. Elsewhere (a stick), a copy.
 */
function linkOrWriteInto(copy: string, dest: string): number {
  const fd = openSync(copy, 'r');
  let bytes: number;
  try {
    fchmodSync(fd, 0o600);
    fsyncSync(fd);
    bytes = fstatSync(fd).size;
  } finally {
    closeSync(fd);
  }
  try {
    linkSync(copy, dest);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EXDEV') return writeInto(copy, dest);
    throw err;
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
      bytes = linkOrWriteInto(copy, dest);
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

/**
 * A backup is background work: this thread yields the CPU to the links' thread. With a core kept busy
 * by another process, the backup test's PING p99 was 4.5-19.5 ms at the default priority and 4.8-8.0 ms
 * at nice 10 (six runs each). Linux sets a thread's nice by its thread id, read from /proc.
 */
function yieldTheCpu(): void {
  try {
    setPriority(Number(readFileSync('/proc/thread-self/stat', 'utf8').split(' ')[0]), BACKUP_NICE);
  } catch {
    // Elsewhere than Linux the backup runs at the station's priority.
  }
}
const BACKUP_NICE = 10;

yieldTheCpu();
const { ledger, folder, dest } = workerData as { ledger: string; folder: string; dest: string };
parentPort!.postMessage(reply(ledger, folder, dest));
