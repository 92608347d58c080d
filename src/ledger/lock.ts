/**
 * One owner per ledger. The owner holds a write lock on `<ledger>.lock`, a
 * small SQLite file kept in an open IMMEDIATE transaction for the owner's
 * whole life: SQLite's POSIX lock, so it is released by the kernel when the
 * owner dies, even by kill -9, and a stale lock cannot exist. Who holds it
 * is written to `<ledger>.owner` (pid, command, since) so that a refusal
 * names the holder. A serving station holds it while it serves; a command
 * that writes either asks that process (the control channel) or takes the
 * lock itself, waiting while another command holds it.
 */
import Database from 'better-sqlite3';
import { readFileSync, readlinkSync, realpathSync, rmSync, statSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { userInfo } from 'node:os';
import { createConnection } from 'node:net';
import { LineSignerError } from '../errors.js';
import { whyNotWritable, writeFileAtomic } from '../files.js';

export interface LockHolder {
  pid: number;
  command: string;
  user: string;
  since: string;
}

/**
 * The ledger's real path: the lock, the owner file and the control socket
 * are named after the file itself, so that a second name for it (a
 * symlink, another folder's link) finds the same lock.
 */
export function realLedgerPath(ledger: string): string {
  try {
    return realpathSync(ledger);
  } catch {
    // Not there yet. A symlink to a file not made yet resolves to the name that file will have: a
    // start over through the link once locked under the link's name, and every later command under
    // the target's, two locks for one file.
    let path = ledger;
    for (let hops = 0; hops < 40; hops++) {
      let target: string;
      try {
        target = readlinkSync(path);
      } catch {
        break;
      }
      path = resolve(dirname(path), target);
    }
    try {
      return join(realpathSync(dirname(path)), basename(path));
    } catch {
      return path;
    }
  }
}

export const lockPath = (ledger: string): string => `${realLedgerPath(ledger)}.lock`;
export const ownerPath = (ledger: string): string => `${realLedgerPath(ledger)}.owner`;

function inodeOf(path: string): number | null {
  try {
    return statSync(path).ino;
  } catch {
    return null;
  }
}

/**
 * A ledger file with a second hard link cannot be owned: the lock, the
 * control socket and SQLite's journal (`-wal`, `-shm`) are named after the
 * path, so a process opening it by the other name would take another lock
 * and write a journal the owner never reads (a certificate recorded
 * nowhere, a corrupted file). A symlink resolves to the same path; a hard
 * link does not, so none is accepted.
 */
export function refuseHardLinked(ledger: string): void {
  let links: number;
  try {
    const st = statSync(ledger);
    // A folder's link count is 2 and more: say what it is instead.
    if (!st.isFile()) throw new LineSignerError('LEDGER', `${ledger} is not a file: [station] ledger names the ledger's file`);
    links = st.nlink;
  } catch (err) {
    if (err instanceof LineSignerError) throw err;
    return; // not made yet
  }
  if (links > 1) {
    throw new LineSignerError(
      'LEDGER',
      `${ledger} has ${links} names (hard links): a process that opened it by another name would take another lock and keep its own journal, so nothing writes to it; remove the other names (\`find / -xdev -samefile ${ledger}\`)`,
    );
  }
}

function holderText(ledger: string): string {
  try {
    const h = JSON.parse(readFileSync(ownerPath(ledger), 'utf8')) as LockHolder;
    return `\`line-signer ${h.command}\` (pid ${h.pid}, user ${h.user}, since ${h.since})`;
  } catch {
    return 'another line-signer process';
  }
}

export class LedgerLock {
  /** The lock file's inode when it was taken: a deleted or replaced file no longer excludes anyone. */
  private inode: number;
  /** The last ownership check found the lock file replaced and held by another process: look again soon (stillOwned). */
  contested = false;
  /** The owner file this lock wrote (written anew, so a new inode, by each owner). */
  private ownerInode: number | null = null;

  private constructor(
    private db: Database.Database,
    private readonly ledger: string,
    private readonly command: string,
  ) {
    this.inode = statSync(lockPath(ledger)).ino;
  }

  /**
   * Whether this process still owns the ledger. When the lock file was
   * deleted or replaced (a cleanup of `ledger.db.*`), the lock is taken
   * again on the file now there; null when it is held (again), or held by
   * another process for the first check only; else why another process
   * may be writing: the owner should stop.
   */
  stillOwned(): string | null {
    try {
      if (statSync(lockPath(this.ledger)).ino === this.inode) return null;
    } catch {
      // deleted: take it again below
    }
    const fresh = LedgerLock.tryAcquire(this.ledger, this.command);
    if (!fresh) {
      // A process that acquireChecked refuses holds the fresh file for up to half a second while it
      // asks this station's socket, and then lets go: held at two checks in a row (the owner looks
      // again 0.7 s later), it is another writer.
      if (!this.contested) {
        this.contested = true;
        return null;
      }
      return `the ledger's lock file ${lockPath(this.ledger)} was deleted or replaced, and ${holderText(this.ledger)} holds it now: two processes may be writing the ledger`;
    }
    this.contested = false;
    // Ours again: keep the fresh lock, let the old (unlinked) one go.
    const old = this.db;
    this.db = fresh.db;
    this.inode = fresh.inode;
    try {
      old.exec('ROLLBACK');
    } finally {
      old.close();
    }
    return null;
  }

  /** The lock, or null when another process holds it now. */
  static tryAcquire(ledger: string, command: string, writeOwner = true): LedgerLock | null {
    let db: Database.Database;
    try {
      db = new Database(lockPath(ledger));
    } catch (err) {
      const why = whyNotWritable(lockPath(ledger));
      throw new LineSignerError('LEDGER', `cannot open the ledger lock ${lockPath(ledger)}: ${(err as Error).message}${why ? `: ${why}` : ''}`);
    }
    db.pragma('busy_timeout = 0');
    try {
      db.exec('BEGIN IMMEDIATE');
      db.exec('CREATE TABLE IF NOT EXISTS held (x)'); // a write, so the lock is really taken
    } catch (err) {
      db.close();
      if ((err as { code?: string }).code === 'SQLITE_BUSY') return null;
      const why = whyNotWritable(lockPath(ledger));
      throw new LineSignerError('LEDGER', `cannot take the ledger lock ${lockPath(ledger)}: ${(err as Error).message}${why ? `: ${why}` : ''}`);
    }
    const lock = new LedgerLock(db, ledger, command);
    if (writeOwner) lock.writeOwner();
    return lock;
  }

  /** Names this process in `<ledger>.owner`, for the LEDGER_BUSY message others get. */
  private writeOwner(): void {
    const holder: LockHolder = { pid: process.pid, command: this.command, user: safeUser(), since: new Date().toISOString() };
    writeFileAtomic(ownerPath(this.ledger), JSON.stringify(holder) + '\n', 0o644, { replaceSpecial: true });
    this.ownerInode = inodeOf(ownerPath(this.ledger));
  }

  /** The lock now, or LEDGER_BUSY naming the holder. */
  static acquire(ledger: string, command: string): LedgerLock {
    refuseHardLinked(ledger);
    const lock = LedgerLock.tryAcquire(ledger, command);
    if (!lock) throw busy(ledger);
    return lock;
  }

  /**
   * The lock, unless a process still answers on the ledger's control
   * socket: then someone deleted or replaced the lock file under a serving
   * owner, and taking it would make a second writer (LEDGER_BUSY).
   */
  static async acquireChecked(ledger: string, command: string): Promise<LedgerLock> {
    refuseHardLinked(ledger);
    // The owner file is written only once this process owns the ledger: a refusal leaves the serving station's.
    const lock = LedgerLock.tryAcquire(ledger, command, false);
    if (!lock) throw busy(ledger);
    if (await socketAnswers(`${realLedgerPath(ledger)}.sock`)) {
      lock.release(false);
      throw new LineSignerError('LEDGER_BUSY', `another process serves ${ledger} on ${realLedgerPath(ledger)}.sock, though its lock file was free: the lock file was deleted or replaced; stop that process first`);
    }
    lock.writeOwner();
    return lock;
  }

  /** Waits for the lock (saying once who holds it), up to `timeoutMs`. */
  static async wait(ledger: string, command: string, timeoutMs: number, onWait?: (holder: string) => void): Promise<LedgerLock>;
  /**
   * The same, asking `instead` before each try: when it answers true (a
   * station that was starting now serves on its socket and did the work),
   * null and no lock.
   */
  static async wait(ledger: string, command: string, timeoutMs: number, onWait: ((holder: string) => void) | undefined, instead: () => Promise<boolean>): Promise<LedgerLock | null>;
  static async wait(ledger: string, command: string, timeoutMs: number, onWait?: (holder: string) => void, instead?: () => Promise<boolean>): Promise<LedgerLock | null> {
    refuseHardLinked(ledger);
    const end = Date.now() + timeoutMs;
    let told = false;
    for (;;) {
      if (instead && (await instead())) return null;
      const lock = LedgerLock.tryAcquire(ledger, command);
      if (lock) return lock;
      if (!told) onWait?.(holderText(ledger));
      told = true;
      if (Date.now() > end) throw busy(ledger);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  /** `removeOwner` false: the owner file names another process (a refused acquireChecked). */
  release(removeOwner = true): void {
    if (!this.db.open) return;
    try {
      // Only the file this lock wrote: after the lock file was replaced, it may name the process that holds the lock now.
      if (removeOwner && this.ownerInode !== null && inodeOf(ownerPath(this.ledger)) === this.ownerInode) rmSync(ownerPath(this.ledger), { force: true });
      this.db.exec('ROLLBACK');
    } finally {
      this.db.close();
    }
  }
}

/** Whether a process accepts connections on the Unix socket at `path` (within half a second). */
export function socketAnswers(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = createConnection(path);
    const done = (alive: boolean): void => {
      socket.destroy();
      resolve(alive);
    };
    socket.setTimeout(500, () => done(false));
    socket.once('connect', () => done(true));
    socket.once('error', () => done(false));
  });
}

function busy(ledger: string): LineSignerError {
  return new LineSignerError('LEDGER_BUSY', `ledger ${ledger} is held by ${holderText(ledger)}; one process owns a ledger at a time`);
}

function safeUser(): string {
  try {
    return userInfo().username;
  } catch {
    return String(process.getuid?.() ?? '?');
  }
}

/**
 * The station's lease in the token: which ledger file a serving station
 * writes. The lock above is per file, so a copy of the ledger (a backup
 * given to another config, a `cp` of the file and its journal) is a file
 * of its own that nothing stopped a second process from signing into while
 * the station served: a certificate recorded in no ledger the station
 * keeps. The token is one per station, so the serving station names its
 * file there (a private object, which only a logged-in session can write),
 * and every other owner of a ledger of this station refuses while that
 * process lives and the file is another.
 */
export const leaseLabel = (stationId: string): string => `line-signer lease ${stationId}`;

interface Lease {
  pid: number;
  boot: string;
  /** The process's start time (clock ticks since boot, /proc/PID/stat): a pid used again is another process. */
  start: string;
  ledger: string;
  since: string;
  /** The file the station opened there (see strayWalProblem). */
  dev?: number;
  ino?: number;
}

function bootId(): string {
  try {
    return readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  } catch {
    return '';
  }
}

function processStart(pid: number): string | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19] ?? null;
  } catch {
    return null;
  }
}

/** The lease a serving station writes for `ledger`. */
export function leaseValue(ledger: string): Uint8Array {
  const st = statSync(ledger, { throwIfNoEntry: false });
  const lease: Lease = { pid: process.pid, boot: bootId(), start: processStart(process.pid) ?? '', ledger: realLedgerPath(ledger), since: new Date().toISOString(), ...(st ? { dev: st.dev, ino: st.ino } : {}) };
  return Buffer.from(JSON.stringify(lease));
}

/** The station's leases as the token holds them; one that does not read is skipped. */
function leases(readData: (label: string) => Buffer[], stationId: string): Lease[] {
  const out: Lease[] = [];
  for (const v of readData(leaseLabel(stationId))) {
    try {
      out.push(JSON.parse(v.toString('utf8')) as Lease);
    } catch {
      // not a lease this version wrote
    }
  }
  return out;
}

/**
 * A WAL at the ledger's path that the station which served there last left
 * when it was killed, while another file is at the path now (its own was
 * moved away or replaced first): SQLite would play that WAL into this file
 * and write it in for good at the close. Null when there is no such WAL.
 */
export function strayWalProblem(readData: (label: string) => Buffer[], stationId: string, ledger: string): string | null {
  const wal = `${ledger}-wal`;
  if ((statSync(wal, { throwIfNoEntry: false })?.size ?? 0) === 0) return null;
  const st = statSync(ledger, { throwIfNoEntry: false });
  if (!st) return null;
  const mine = realLedgerPath(ledger);
  for (const lease of leases(readData, stationId)) {
    // A lease let go at a clean stop has no pid; one without the file's identity is older than this check.
    if (typeof lease.pid !== 'number' || typeof lease.ino !== 'number' || lease.ledger !== mine) continue;
    if (lease.dev === st.dev && lease.ino === st.ino) continue;
    return (
      `${wal} is the WAL that pid ${lease.pid} (serving since ${lease.since}, then killed) left for the file it had open at ${ledger}, and another file is there now (moved there while it served): ` +
      `SQLite would play it into this one and damage it. Nothing was opened or written. Move ${wal} and ${ledger}-shm away, or put that station's file back at ${ledger}`
    );
  }
  return null;
}

/** Why this process may not write `ledger`: a living station serves another file of the same station. Null when none does. */
export function leaseProblem(readData: (label: string) => Buffer[], stationId: string, ledger: string): string | null {
  const mine = realLedgerPath(ledger);
  for (const lease of leases(readData, stationId)) {
    if (typeof lease.pid !== 'number' || lease.ledger === mine || lease.pid === process.pid) continue;
    const alive = lease.boot === bootId() && processStart(lease.pid) === lease.start;
    if (alive) {
      return `station ${stationId} is served from ${lease.ledger} by pid ${lease.pid} (since ${lease.since}); ${ledger} is another file, and a certificate signed into it would be in no ledger the station keeps. One ledger per station: give the serving station's ledger path, or stop it first`;
    }
  }
  return null;
}
