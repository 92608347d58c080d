import { closeSync, fsyncSync, openSync, readFileSync, renameSync, statSync, writeSync, mkdirSync } from 'node:fs';
import { LineSignerError, type ErrorCode } from './errors.js';
import { dirname, basename, join } from 'node:path';
import { userInfo } from 'node:os';

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
 * A secret's file (a PIN, an API token): refused when others can read it,
 * or a group other than the reading user's own private group (so
 * root:line-signer 0640 is fine for the service user, and root can still
 * edit it). `key` names it in messages; the content never enters one.
 */
export function readPrivateFile(path: string, key: string, code: ErrorCode): string {
  let st: { mode: number; gid: number };
  try {
    st = statSync(path);
  } catch (err) {
    throw new LineSignerError(code, `${key}: cannot read ${path} (${(err as NodeJS.ErrnoException).code ?? 'error'})`);
  }
  const mode = st.mode & 0o777;
  // Group-readable is private enough when the group is this user's own (root:line-signer 0640 for the service user).
  const groupOk = (mode & 0o070) === 0 || ((mode & 0o030) === 0 && groupIsPrivate(st.gid));
  if ((mode & 0o007) !== 0 || !groupOk) {
    throw new LineSignerError(
      code,
      `${key}: ${path} is readable by group or others (mode ${mode.toString(8)}), and the group is not the reading user's own; ` +
        'chmod 600 it, or make it 0640 in the own group of the one user that reads it (root:line-signer for the service)',
    );
  }
  try {
    return readFileSync(path, 'utf8');
  } catch (err) {
    const who = (err as NodeJS.ErrnoException).code === 'EACCES' ? ` as ${userInfo().username}` : '';
    throw new LineSignerError(code, `${key}: cannot read ${path} (${(err as NodeJS.ErrnoException).code ?? 'error'}${who})`);
  }
}

export interface PasswdEntry {
  name: string;
  uid: number;
  gid: number;
  home: string;
}

function passwdEntries(): PasswdEntry[] {
  return readFileSync('/etc/passwd', 'utf8')
    .split('\n')
    .map((l) => l.split(':'))
    .filter((f) => f.length >= 7)
    .map((f) => ({ name: f[0]!, uid: Number(f[2]), gid: Number(f[3]), home: f[5]! }));
}

export function passwdEntryByUid(uid: number): PasswdEntry | undefined {
  return passwdEntries().find((e) => e.uid === uid);
}

/**
 * Whether only this process's user is in group `gid`: it is the user's
 * primary group, no other account has it as theirs, and /etc/group lists
 * no other member.
 */
function groupIsPrivate(gid: number): boolean {
  if (process.getegid?.() !== gid) return false;
  const me = userInfo().username;
  try {
    if (passwdEntries().some((e) => e.gid === gid && e.name !== me)) return false;
    const entry = readFileSync('/etc/group', 'utf8')
      .split('\n')
      .map((l) => l.split(':'))
      .find((f) => f.length >= 4 && Number(f[2]) === gid);
    const members = entry?.[3] ? entry[3].split(',').filter((m) => m !== '') : [];
    return members.every((m) => m === me);
  } catch {
    return false;
  }
}
