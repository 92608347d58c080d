/**
 * A USB stick carried between a jig and the station: `DIR/inbox/*.csr`
 * (PEM or DER) in; `DIR/outbox/<name>.pem` (the chain) or
 * `DIR/outbox/<name>.error` (one line `<CODE> <message>`) out, plus
 * `DIR/outbox/root.crt`; each request is moved to `DIR/done/` once
 * answered. The folder is polled: vfat sticks give no reliable change
 * events, and fs.watch sees nothing after a remount.
 *
 * Everything on the stick is the client's, including its folder tree:
 * - The spool folder, inbox, outbox and done are opened once per pass
 *   with O_DIRECTORY | O_NOFOLLOW and then reached only through their
 *   descriptors (/proc/self/fd/N/...), so a symlink or a folder swapped
 *   mid-pass never leads the station elsewhere.
 * - Requests are opened with O_NOFOLLOW | O_NONBLOCK and fstat'ed: only a
 *   regular file is read, at most MAX_CSR_FILE bytes. Anything else named
 *   *.csr (symlink, FIFO, device, folder) is answered with an .error and
 *   moved to done/, never read through.
 * - Answers are written to a fresh O_EXCL | O_NOFOLLOW temporary file in
 *   outbox, flushed, then renamed over the final name (a rename replaces a
 *   symlink there, never writes through it).
 * - A file is read only after its size and mtime have stood still for two
 *   polls and at least the quiet period, whatever its mtime says, so a
 *   writer that does not rename into place is not read half-way.
 * - A file name must be acceptable client text (src/text.ts) and short
 *   enough for every name derived from it; otherwise the file is never
 *   read, and is answered under a name derived from a hash of its bytes
 *   (`badname-<16 hex>.error`, request moved to `done/badname-<16 hex>.csr`).
 * - Writes, flushes and renames of answers go through libuv's thread pool
 *   (fs/promises), never on the links' thread: a flush of a slow stick
 *   takes milliseconds, and the serial and HTTP links share that thread.
 *   A wedged stick holds one pool thread (the link works one file at a
 *   time); stop() waits for it at most SPOOL_LIMITS.stopMs.
 * - A request is moved to done/ only while its name still holds the file
 *   that was answered: a jig that drops its next request under the same
 *   name as soon as it sees the answer gets that one answered too.
 * - Once the station has answered a file, that answer is kept until it is
 *   on the stick: a write that fails (stick full, read-only, a folder in
 *   the way) is retried with back-off without asking the station again,
 *   so no new ledger event, while the other files keep flowing.
 */
import {
  accessSync,
  closeSync,
  constants,
  fstatSync,
  fsync,
  lstatSync,
  mkdirSync,
  openSync,
  readSync,
  type Stats,
} from 'node:fs';
import { open, opendir, rename, unlink } from 'node:fs/promises';
import { promisify } from 'node:util';
import { createHash, randomBytes } from 'node:crypto';
import { resolve } from 'node:path';
import type { ProtocolCode } from '../errors.js';
import { printable, quote, textProblem, TEXT_LIMITS } from '../text.js';
import { LinkReporter, within, type Link, type LinkObserver, type StationPort } from './types.js';

export interface SpoolLinkOptions {
  dir: string;
  pollMs: number;
  /** How long a file must stand still before it is read (default: 2 polls, at least 1 s). */
  quietMs?: number;
  /** First back-off after a failed answer write (default 1 s); doubles up to retryMaxMs. */
  retryMs?: number;
  retryMaxMs?: number;
}

export const SPOOL_LIMITS = {
  /** Bytes: a request file larger than this is answered TOO_LARGE without being read. */
  maxCsrFile: 64 * 1024,
  /** UTF-8 bytes of a name's stem, so that `<stem>.error.old-<ms>` fits every filesystem's 255. */
  maxStemBytes: 200,
  /** Unchanged observations a file needs before it is read. */
  stablePolls: 2,
  /** A failed answer write is retried after 1 s, doubling to 60 s. */
  retryMs: 1000,
  retryMaxMs: 60_000,
  /** A missing, read-only or symlinked folder is looked at again after a poll, doubling to 5 s (never faster than the poll). */
  folderRetryMaxMs: 5000,
  /** Files answered in one pass; a fuller inbox is worked through over the following passes. */
  answersPerPass: 50,
  /** Files looked at (lstat) in one pass, from where the last pass stopped; the links' thread is yielded every `yieldEvery`. */
  examinedPerPass: 256,
  yieldEvery: 32,
  /** The inbox's listing is read again when the folder changed, and at least this often (longer for a listing that costs more: ten times its own cost). */
  relistMs: 1000,
  /** Request names taken from one listing: sorting and indexing a hundred thousand held the links' thread 370 ms. The rest come as these are answered. */
  listedMax: 8192,
  /** stop() waits this long for the answer being written, then lets it go. */
  stopMs: 1500,
} as const;

/** Prefix of the stem a file with an unacceptable name is answered under. */
export const BAD_NAME_PREFIX = 'badname-';

const O_DIR = constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW;
const O_READ = constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK;
const O_NEW = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW;
// ignoreBOM: a leading U+FEFF stays in the text, where the text rules refuse it (stripped, it let "\uFEFFname" pass as "name").
const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/** A folder held open by descriptor; paths under it never re-resolve the folder's own path. */
class Dir {
  constructor(
    readonly fd: number,
    /** The folder's path for messages (operator config plus a fixed name). */
    readonly shown: string,
  ) {}
  child(name: string | Buffer): Buffer {
    return Buffer.concat([Buffer.from(`/proc/self/fd/${this.fd}/`), typeof name === 'string' ? Buffer.from(name) : name]);
  }
  async sync(): Promise<void> {
    try {
      await fsyncFd(this.fd);
    } catch {
      // Some filesystems (vfat on some kernels) refuse fsync on a folder; the rename still happened.
    }
  }
}

/** Why the folder tree cannot be served now: the link's state and reason. */
class FolderProblem extends Error {
  constructor(
    readonly state: 'waiting' | 'error',
    readonly reason: string,
  ) {
    super(reason);
  }
}

/** What a request is answered with; kept until it is on the stick. */
interface Answer {
  stem: string;
  ext: 'pem' | 'error';
  content: string;
  /** Name the request gets in done/. */
  doneName: string;
}

interface Pending {
  answer: Answer;
  identity: string;
  written: boolean;
  nextAt: number;
  delayMs: number;
  reason: string;
}

interface Watched {
  identity: string;
  firstAt: number;
  stablePolls: number;
}

export class SpoolLink implements Link {
  private readonly reporter: LinkReporter;
  private readonly dir: string;
  private timer: NodeJS.Timeout | null = null;
  private scanning: Promise<void> | null = null;
  private stopping = false;
  /** The last pass stopped at its cap with files left. */
  private more = false;
  private folderDelayMs = 0;
  private readonly watched = new Map<string, Watched>();
  /** The inbox's `.csr` names (latin1: one character a byte), sorted, as of the folder state `version`. */
  private listing: { version: string; at: number; names: string[]; costMs: number } | null = null;
  /** Where the next pass goes on: the first name after this one. */
  private cursor = '';
  /** Whether the round of passes under way (from the top of the listing to its end) answered anything. */
  private roundProgress = false;
  private readonly pending = new Map<string, Pending>();

  constructor(
    private readonly station: StationPort,
    private readonly opts: SpoolLinkOptions,
    observer?: LinkObserver,
  ) {
    this.reporter = new LinkReporter(`spool:${opts.dir}`, 'spool', observer);
    // Without a trailing slash, O_NOFOLLOW applies to the folder's own name.
    this.dir = resolve(opts.dir);
  }

  get status() {
    return this.reporter.status;
  }

  private get quietMs(): number {
    return this.opts.quietMs ?? Math.max(1000, 2 * this.opts.pollMs);
  }

  async start(): Promise<void> {
    this.schedule(0);
  }

  private schedule(ms: number): void {
    if (this.stopping) return;
    this.timer = setTimeout(() => {
      this.scanning = this.scan()
        .catch((err) => this.reporter.state('error', `unexpected: ${printable((err as Error).message)}`))
        .finally(() => {
          this.scanning = null;
          // A pass that stopped at its cap goes on at once (after the other links had their turn).
          this.schedule(this.more ? 0 : this.folderDelayMs || this.opts.pollMs);
        });
    }, ms);
  }

  /** One pass over the inbox; also what a test calls to avoid waiting. */
  async scan(): Promise<void> {
    const opened: Dir[] = [];
    try {
      const spool = openFolder(this.dir, this.dir, opened, false);
      const inbox = openFolder(spool.child('inbox'), `${this.dir}/inbox`, opened, false);
      const outbox = openFolder(spool.child('outbox'), `${this.dir}/outbox`, opened, true);
      const done = openFolder(spool.child('done'), `${this.dir}/done`, opened, true);
      for (const d of [inbox, outbox, done]) writable(d);
      // A root.crt that cannot be written (a folder of that name on a hostile stick) is shown, and the
      // requests are still answered: it once stopped the whole stick.
      const rootProblem = await this.ensureRoot(outbox);
      this.folderDelayMs = 0;
      await this.serve(inbox, outbox, done);
      const stuck = this.pending.values().next();
      if (rootProblem) this.reporter.state('error', `${rootProblem}; requests are answered still`);
      else if (stuck.done) this.reporter.state('polling');
      else this.reporter.state('error', stuck.value.reason);
    } catch (err) {
      if (!(err instanceof FolderProblem)) throw err;
      this.watched.clear();
      this.folderDelayMs = Math.max(this.opts.pollMs, Math.min(SPOOL_LIMITS.folderRetryMaxMs, this.folderDelayMs * 2));
      this.reporter.state(err.state, err.reason);
    } finally {
      for (const d of opened) closeSync(d.fd);
    }
  }

  /** Writes outbox/root.crt when it is not the root already; why it could not, or null. */
  private async ensureRoot(outbox: Dir): Promise<string | null> {
    const path = outbox.child('root.crt');
    if (readRegular(path, this.station.rootPem.length + 1)?.toString('utf8') === this.station.rootPem) return null;
    try {
      await writeAtomic(outbox, 'root.crt', this.station.rootPem);
      return null;
    } catch (err) {
      return `cannot write ${outbox.shown}/root.crt: ${fsReason(err)}`;
    }
  }

  /**
   * The inbox's request names, sorted. A stick of 60,000 junk files once held
   * the links' thread for half a second a pass (the listing, its sort, an
   * lstat of every file): the listing is read in batches on libuv's pool,
   * kept while the folder is unchanged (its own moves are taken out as they
   * happen), and read again at least every second (ten times its own cost
   * for a big one: vfat's mtime moves in 2 s steps).
   */
  private async names(inbox: Dir): Promise<string[]> {
    const st = fstatSync(inbox.fd, { bigint: true });
    const version = `${st.dev}:${st.ino}:${st.mtimeNs}`;
    const now = Date.now();
    const l0 = this.listing;
    if (l0 && l0.version === version && now - l0.at < Math.max(SPOOL_LIMITS.relistMs, 10 * l0.costMs)) return l0.names;
    const t0 = performance.now();
    // Read in batches on libuv's pool, the links' thread let go between them: a folder of a million
    // entries once held it 2.5 s in one piece.
    const dir = await opendir(inbox.child('').toString('latin1'), { encoding: 'buffer' as BufferEncoding, bufferSize: 256 });
    const names: string[] = [];
    let seen = 0;
    for await (const entry of dir) {
      const n = entry.name as unknown as Buffer;
      const l = n.length;
      // Not hidden, and ending in ".csr" (bytes 2e 63 73 72).
      if (l > 4 && n[0] !== 0x2e && n[l - 4] === 0x2e && n[l - 3] === 0x63 && n[l - 2] === 0x73 && n[l - 1] === 0x72) names.push(n.toString('latin1'));
      if (++seen % 4096 === 0) await new Promise((r) => setImmediate(r));
      if (this.stopping || names.length >= SPOOL_LIMITS.listedMax) break;
    }
    names.sort(); // latin1 strings sort as their bytes do
    const present = new Set(names);
    for (const map of [this.watched, this.pending]) for (const key of map.keys()) if (!present.has(key)) map.delete(key);
    this.listing = { version, at: now, names, costMs: performance.now() - t0 };
    return names;
  }

  /** After this pass's own moves: the listing stands for the folder as it is now, less the files moved. */
  private keepListing(inbox: Dir, moved: Set<string>): void {
    if (!this.listing) return;
    const st = fstatSync(inbox.fd, { bigint: true });
    this.listing.version = `${st.dev}:${st.ino}:${st.mtimeNs}`;
    if (moved.size) this.listing.names = this.listing.names.filter((n) => !moved.has(n));
  }

  private async serve(inbox: Dir, outbox: Dir, done: Dir): Promise<void> {
    const now = Date.now();
    const names = await this.names(inbox);
    const moved = new Set<string>();
    try {
      await this.servePass(names, now, moved, inbox, outbox, done);
    } finally {
      this.keepListing(inbox, moved);
    }
  }

  private async servePass(names: string[], now: number, moved: Set<string>, inbox: Dir, outbox: Dir, done: Dir): Promise<void> {
    let answered = 0;
    let examined = 0;
    this.more = false;
    // Go on from where the last pass stopped, and round to the start once the end is reached.
    let lo = 0;
    for (let hi = names.length; lo < hi; ) {
      const mid = (lo + hi) >> 1;
      if (names[mid]! <= this.cursor) lo = mid + 1;
      else hi = mid;
    }
    const from = this.cursor ? lo : 0;
    for (let i = from; i < names.length; i++) {
      if (this.stopping) return;
      // A stick full of files must not hold the other links or a stop: the
      // loop yields to the event loop after each answer and every few files,
      // and a pass answers and looks at so many; the rest wait for the next.
      if (answered >= SPOOL_LIMITS.answersPerPass || examined >= SPOOL_LIMITS.examinedPerPass) {
        // The round goes on at once; a round that only looked at files still waiting is not hurried (below).
        this.more = true;
        return;
      }
      const key = names[i]!;
      this.cursor = key;
      const raw = Buffer.from(key, 'latin1');
      if (++examined % SPOOL_LIMITS.yieldEvery === 0) await new Promise((r) => setImmediate(r));
      let st: Stats;
      try {
        st = lstatSync(inbox.child(raw));
      } catch {
        continue; // gone since the listing
      }
      const identity = identityOf(st);
      const pending = this.pending.get(key);
      if (pending && pending.identity === identity) {
        if (now >= pending.nextAt && (await this.deliver(key, raw, pending, inbox, outbox, done))) moved.add(key);
        continue;
      }
      this.pending.delete(key); // a different file under the same name: a new request

      const name = acceptableName(raw);
      let answer: Answer;
      if (typeof name !== 'string') {
        answer = await this.refuse('BAD_FRAME', `file name ${quote(raw.toString('utf8'))} ${name.why}`, name.stem, `${name.stem}.csr`);
      } else if (!st.isFile()) {
        answer = await this.refuse('BAD_CSR', `${quote(name)} is not a regular file (${kindOf(st)}); not read`, stemOf(name), name);
      } else {
        if (!this.stable(key, identity, now)) continue;
        this.watched.delete(key);
        const got = readRequest(inbox.child(raw), st);
        if (got === 'changed') continue;
        if (got === 'too-large') {
          answer = await this.refuse('TOO_LARGE', `${quote(name)} is over ${SPOOL_LIMITS.maxCsrFile} bytes; not read`, stemOf(name), name);
        } else if (typeof got === 'string') {
          answer = await this.refuse('BAD_CSR', `${quote(name)} is not a regular file (${got}); not read`, stemOf(name), name);
        } else {
          const r = await this.station.handle({ csr: new Uint8Array(got), link: this.reporter.status.name });
          this.reporter.result(r);
          answer = r.ok
            ? { stem: stemOf(name), ext: 'pem', content: r.chain, doneName: name }
            : { stem: stemOf(name), ext: 'error', content: `${r.code} ${printable(r.message)}\n`, doneName: name };
        }
      }
      if (await this.deliver(key, raw, { answer, identity, written: false, nextAt: 0, delayMs: 0, reason: '' }, inbox, outbox, done)) moved.add(key);
      answered++;
      this.roundProgress = true;
      await new Promise((r) => setImmediate(r));
    }
    // The end of the listing: the next round starts from the top, at once if this one answered, else
    // after the poll (files waiting out their quiet period or growing need polls, not passes: 300 of
    // them, or 300 answers stuck behind a full stick, once made a busy loop).
    this.cursor = '';
    this.more = this.roundProgress && from > 0;
    this.roundProgress = false;
  }

  /** True once the file has stood still for two polls and the quiet period, counted from when this link first saw it so. */
  private stable(key: string, identity: string, now: number): boolean {
    const w = this.watched.get(key);
    if (!w || w.identity !== identity) {
      this.watched.set(key, { identity, firstAt: now, stablePolls: 0 });
      return false;
    }
    w.stablePolls++;
    return w.stablePolls >= SPOOL_LIMITS.stablePolls && now - w.firstAt >= this.quietMs;
  }

  /** A request refused before it reached the station: counted, and in the ledger's event log once. */
  private async refuse(code: ProtocolCode, message: string, stem: string, doneName: string): Promise<Answer> {
    this.reporter.refused(code, message);
    await this.station.recordRefusal(this.reporter.status.name, code, message);
    return { stem, ext: 'error', content: `${code} ${message}\n`, doneName };
  }

  /** Puts an answer on the stick and the request in done/; on failure keeps both for a later pass. True when the request left the inbox. */
  private async deliver(key: string, raw: Buffer, p: Pending, inbox: Dir, outbox: Dir, done: Dir): Promise<boolean> {
    const { stem, ext, content, doneName } = p.answer;
    try {
      if (!p.written) {
        await writeAtomic(outbox, `${stem}.${ext}`, content);
        p.written = true;
      }
      // A stale answer from an earlier drop of the same name must not stand beside the new one.
      const staleExt = ext === 'pem' ? 'error' : 'pem';
      if (exists(outbox.child(`${stem}.${staleExt}`))) {
        await rename(outbox.child(`${stem}.${staleExt}`), done.child(`${stem}.${staleExt}.old-${Date.now()}`));
      }
      // A jig that saw the answer may already have dropped its next request under the same
      // name: that one is not answered yet and stays for the next pass (this answer stays too,
      // until the new one replaces it).
      if (!sameFile(inbox.child(raw), p.identity)) {
        this.pending.delete(key);
        return false;
      }
      await rename(inbox.child(raw), done.child(exists(done.child(doneName)) ? `${stemOf(doneName)}.${Date.now()}.csr` : doneName));
      await outbox.sync();
      await done.sync();
      this.pending.delete(key);
      return true;
    } catch (err) {
      const first = !this.pending.has(key);
      p.delayMs = first ? (this.opts.retryMs ?? SPOOL_LIMITS.retryMs) : Math.min(this.opts.retryMaxMs ?? SPOOL_LIMITS.retryMaxMs, p.delayMs * 2);
      p.nextAt = Date.now() + p.delayMs;
      p.reason = `cannot ${p.written ? `move ${quote(doneName)} to done` : `write ${quote(`${stem}.${ext}`)}`}: ${fsReason(err)}`;
      this.pending.set(key, p);
      return false;
    }
  }

  async stop(): Promise<void> {
    this.stopping = true;
    if (this.timer) clearTimeout(this.timer);
    // A stick whose flush never returns (a wedged hub) must not keep the station from stopping.
    if (this.scanning) await within(this.scanning, SPOOL_LIMITS.stopMs);
    this.reporter.state('stopped');
  }
}

/** Opens a folder without following a symlink; creates it first when asked to. */
function openFolder(path: string | Buffer, shown: string, opened: Dir[], create: boolean): Dir {
  if (create) {
    try {
      mkdirSync(path);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== 'EEXIST') throw new FolderProblem('error', `cannot create ${shown}: ${fsReason(err)}`);
    }
  }
  let fd: number;
  try {
    fd = openSync(path, O_DIR);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new FolderProblem('waiting', 'no inbox (stick not mounted?)');
    let st: Stats | null = null;
    try {
      st = lstatSync(path);
    } catch {
      // reported below from the open's own error
    }
    if (st?.isSymbolicLink()) throw new FolderProblem('error', `${shown} is a symlink, not a folder; not followed`);
    if (st && !st.isDirectory()) throw new FolderProblem('error', `${shown} is not a folder (${kindOf(st)})`);
    throw new FolderProblem('error', `cannot open ${shown}: ${fsReason(err)}`);
  }
  const dir = new Dir(fd, shown);
  opened.push(dir);
  return dir;
}

function writable(d: Dir): void {
  try {
    accessSync(d.child(''), constants.W_OK);
  } catch (err) {
    const reason = fsReason(err);
    throw new FolderProblem('error', reason === 'read-only' ? 'read-only' : `${d.shown}: ${reason}`);
  }
}

/** An errno as the technician should read it. */
function fsReason(err: unknown): string {
  const code = (err as NodeJS.ErrnoException).code;
  if (code === 'EROFS' || code === 'EACCES' || code === 'EPERM') return 'read-only';
  if (code === 'ENOSPC' || code === 'EDQUOT') return 'stick full';
  if (code === 'EISDIR' || code === 'ENOTEMPTY' || code === 'EEXIST') return 'a folder is in the way';
  return code ?? printable((err as Error).message);
}

const identityOf = (st: Stats): string => `${st.dev}:${st.ino}:${st.size}:${st.mtimeMs}:${st.mode}`;

/** The name still holds the very file that was answered. */
function sameFile(path: Buffer, identity: string): boolean {
  try {
    return identityOf(lstatSync(path)) === identity;
  } catch {
    return false;
  }
}

function exists(path: Buffer): boolean {
  try {
    lstatSync(path);
    return true;
  } catch {
    return false;
  }
}

function kindOf(st: Stats): string {
  if (st.isSymbolicLink()) return 'a symlink';
  if (st.isFIFO()) return 'a FIFO';
  if (st.isDirectory()) return 'a folder';
  if (st.isCharacterDevice() || st.isBlockDevice()) return 'a device';
  if (st.isSocket()) return 'a socket';
  return 'a regular file';
}

const stemOf = (name: string): string => name.slice(0, -'.csr'.length);

/** The name as text when it is acceptable client text, else why not and the stem to answer under. */
function acceptableName(raw: Buffer): string | { why: string; stem: string } {
  const stem = `${BAD_NAME_PREFIX}${createHash('sha256').update(raw).digest('hex').slice(0, 16)}`;
  let name: string;
  try {
    name = utf8.decode(raw);
  } catch {
    return { why: 'is not valid UTF-8', stem };
  }
  const why = textProblem(name, TEXT_LIMITS.name);
  if (why) return { why, stem };
  if (raw.length - 4 > SPOOL_LIMITS.maxStemBytes) return { why: `is longer than ${SPOOL_LIMITS.maxStemBytes + 4} bytes`, stem };
  return name;
}

/**
 * A request's bytes, read through a descriptor that is checked to be the
 * regular file we watched; 'changed' when it moved on since, 'too-large',
 * or what it turned out to be.
 */
function readRequest(path: Buffer, watched: Stats): Buffer | 'changed' | 'too-large' | string {
  let fd: number;
  try {
    fd = openSync(path, O_READ);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    return code === 'ELOOP' ? 'a symlink' : 'changed';
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) return kindOf(st);
    if (st.ino !== watched.ino || st.size !== watched.size || st.mtimeMs !== watched.mtimeMs) return 'changed';
    if (st.size > SPOOL_LIMITS.maxCsrFile) return 'too-large';
    const buf = readCapped(fd, SPOOL_LIMITS.maxCsrFile);
    return buf ?? 'too-large';
  } finally {
    closeSync(fd);
  }
}

/** Up to `max` bytes from fd; null when there are more. */
function readCapped(fd: number, max: number): Buffer | null {
  const buf = Buffer.alloc(max + 1);
  let n = 0;
  for (;;) {
    const got = readSync(fd, buf, n, buf.length - n, null);
    if (got === 0) break;
    n += got;
    if (n > max) return null;
  }
  return buf.subarray(0, n);
}

/** A regular file's bytes (at most `max`), or null for anything else, a missing file, or a longer one. */
function readRegular(path: Buffer, max: number): Buffer | null {
  let fd: number;
  try {
    fd = openSync(path, O_READ);
  } catch {
    return null;
  }
  try {
    return fstatSync(fd).isFile() ? readCapped(fd, max) : null;
  } finally {
    closeSync(fd);
  }
}

/** A fresh O_EXCL temporary file in `dir`, flushed, then renamed over `name`. */
async function writeAtomic(dir: Dir, name: string, content: string): Promise<void> {
  const tmp = dir.child(`.tmp-${randomBytes(8).toString('hex')}`);
  const file = await open(tmp, O_NEW, 0o644);
  try {
    try {
      await file.writeFile(content);
      await file.sync();
    } finally {
      await file.close();
    }
    await rename(tmp, dir.child(name));
  } catch (err) {
    try {
      await unlink(tmp);
    } catch {
      // already gone or the stick is gone; the original error is what matters
    }
    throw err;
  }
  await dir.sync();
}

const fsyncFd = promisify(fsync);
