import { closeSync, fsyncSync, openSync, readFileSync, renameSync, statSync, writeSync, mkdirSync } from 'node:fs';
import { LineSignerError, type ErrorCode } from './errors.js';
import { dirname, basename, join } from 'node:path';

/**
 * Writes a file so that no reader (or a stick pulled mid-write) ever sees
 * half of it: a temporary name in the same folder, flushed, then renamed,
 * then the folder flushed so the rename itself is durable.
 */
export function writeFileAtomic(path: string, data: string | Uint8Array, mode = 0o644): void {
  const dir = dirname(path);
  mkdirSync(dir, { recursive: true });
  const tmp = join(dir, `.${basename(path)}.${process.pid}.${Date.now()}.tmp`);
  const fd = openSync(tmp, 'w', mode);
  try {
    writeSync(fd, typeof data === 'string' ? Buffer.from(data) : data);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameIntoPlace(tmp, path);
}

/** Renames a flushed temporary file to its final name, then flushes the folder so the rename is durable. */
export function renameIntoPlace(tmp: string, path: string): void {
  renameSync(tmp, path);
  try {
    const dfd = openSync(dirname(path), 'r');
    try {
      fsyncSync(dfd);
    } finally {
      closeSync(dfd);
    }
  } catch {
    // Some filesystems (vfat on some kernels) refuse fsync on a folder; the rename still happened.
  }
}

/**
 * A secret's file (a PIN, an API token): refused when group or others can
 * read it. `key` names it in messages; the content never enters one.
 */
export function readPrivateFile(path: string, key: string, code: ErrorCode): string {
  let mode: number;
  try {
    mode = statSync(path).mode;
  } catch (err) {
    throw new LineSignerError(code, `${key}: cannot read ${path} (${(err as NodeJS.ErrnoException).code ?? 'error'})`);
  }
  if ((mode & 0o077) !== 0) {
    throw new LineSignerError(code, `${key}: ${path} is readable by group or others (mode ${(mode & 0o777).toString(8)}); chmod 600 it`);
  }
  return readFileSync(path, 'utf8');
}
