import { randomBytes } from 'node:crypto';
import { accessSync, closeSync, constants, fsyncSync, lstatSync, openSync, readFileSync, renameSync, rmSync, statSync, writeFileSync, writeSync, mkdirSync } from 'node:fs';
import { LineSignerError, type ErrorCode } from './errors.js';
import { dirname, basename, join } from 'node:path';
import { userInfo } from 'node:os';

/**
 * Writes a file so that no reader (or a stick pulled mid-write) ever sees
 * half of it: a temporary name in the same folder, flushed, then renamed,
 * then the folder flushed so the rename itself is durable.
 */
export function writeFileAtomic(path: string, data: string | Uint8Array, mode = 0o644, opts: { replaceSpecial?: boolean } = {}): void {
  try {
    writeFileAtomicOrThrow(path, data, mode, opts.replaceSpecial ?? false);
  } catch (err) {
    if (err instanceof LineSignerError) throw err;
    const code = (err as NodeJS.ErrnoException).code ?? 'error';
    throw new LineSignerError('USAGE', `cannot write ${path} (${code})${whyNotWritable(path) ? `: ${whyNotWritable(path)}` : ''}`);
  }
}

/**
 * Why this process cannot write `path` (or make it in its folder): the
 * user, the owner and mode that stand in the way, or a read-only mount,
 * with what to do. Null when nothing visible stands in the way.
 */
export function whyNotWritable(path: string): string | null {
  const me = currentUserName();
  for (const p of [path, dirname(path)]) {
    try {
      accessSync(p, constants.W_OK);
      return null;
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') continue;
      if (code === 'EROFS') return `${p} is on a read-only file system; mount it read-write`;
      let st;
      try {
        st = statSync(p);
      } catch {
        return `${p} is not reachable by ${me}`;
      }
      const owner = passwdEntryByUid(st.uid)?.name ?? `uid ${st.uid}`;
      return `${p} is not writable by ${me} (owner ${owner}, mode ${(st.mode & 0o7777).toString(8)}); chown it to ${me} (on an installed station, scripts/install again fixes the state folder)`;
    }
  }
  return `${dirname(path)} does not exist`;
}

function currentUserName(): string {
  try {
    return userInfo().username;
  } catch {
    return `uid ${process.getuid?.() ?? '?'}`;
  }
}

function writeFileAtomicOrThrow(path: string, data: string | Uint8Array, mode: number, replaceSpecial: boolean): void {
  // Something that is not a plain file (/dev/null, /dev/stdout, a FIFO, a
  // symlink to one) named by the user is written to, never renamed over: a
  // rename would put a regular file in a device's place. A file of the
  // station's own (`replaceSpecial`) is always replaced: a symlink or FIFO
  // planted there is neither followed nor waited on.
  let existing: ReturnType<typeof lstatSync> | undefined;
  try {
    existing = lstatSync(path);
  } catch {
    existing = undefined;
  }
  if (existing && !existing.isFile()) {
    if (existing.isDirectory()) throw new LineSignerError('USAGE', `${path} is a folder; give a file name`);
    if (!replaceSpecial) {
      writeFileSync(path, data);
      return;
    }
  }
  const dir = dirname(path);
  mkdirSync(dir, { recursive: true });
  const { tmp, fd } = createTempFile(join(dir, `.${basename(path)}`), mode);
  try {
    try {
      writeSync(fd, typeof data === 'string' ? Buffer.from(data) : data);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameIntoPlace(tmp, path);
  } catch (err) {
    rmSync(tmp, { force: true });
    throw err;
  }
}

/**
 * A new file `<prefix>.<random>.tmp` open for writing. The name cannot be
 * guessed (a process id can), and it is created exclusively: whatever
 * someone planted at a name (a symlink to a victim, a FIFO whose open would
 * block until a reader comes) is refused, never opened or written through.
 */
export function createTempFile(prefix: string, mode = 0o644): { tmp: string; fd: number } {
  const tmp = `${prefix}.${randomBytes(12).toString('hex')}.tmp`;
  const fd = openSync(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW | constants.O_NONBLOCK, mode);
  return { tmp, fd };
}

/** Flushes a folder so a rename or link in it is durable. */
export function fsyncFolder(dir: string): void {
  try {
    // O_DIRECTORY: a FIFO swapped in for the folder is refused, not opened (an open for reading would block).
    const dfd = openSync(dir, constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NONBLOCK);
    try {
      fsyncSync(dfd);
    } finally {
      closeSync(dfd);
    }
  } catch {
    // Some filesystems (vfat on some kernels) refuse fsync on a folder; the rename or link still happened.
  }
}

/**
 * Renames a flushed temporary file to its final name (a symlink or FIFO
 * there is replaced, never followed), then flushes the folder so the rename
 * is durable.
 */
export function renameIntoPlace(tmp: string, path: string): void {
  renameSync(tmp, path);
  fsyncFolder(dirname(path));
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
