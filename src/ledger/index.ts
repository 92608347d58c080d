/**
 * The ledger: every issuance and every event, in SQLite (WAL, synchronous
 * FULL, so a commit is on disk before a certificate leaves the station).
 * No SQL lives outside this folder; callers use the named operations of
 * the Ledger interface.
 */
import { existsSync, statSync } from 'node:fs';
import { isMainThread } from 'node:worker_threads';
import Database from 'better-sqlite3';
import { createHash } from 'node:crypto';
import { LineSignerError } from '../errors.js';
import { eventHash, GENESIS_HASH, issuanceHash, ROW_FORMAT } from './chain.js';
import { serialKey } from '../serial.js';
import { nameSkeleton, nameTakenMessage, quote } from '../text.js';
import { whyNotWritable } from '../files.js';
import { checkpointStatement, sha256, type Checkpoint, type Heads, type TokenCheckpoint } from './checkpoint.js';
import { MIGRATIONS } from './schema.js';
import { batchProblems, projectionProblems, replayBase, type ProjectionProblem } from './projections.js';
import { shapeProblems, type ShapeProblem } from './shape.js';
export { shapeProblemsOfFile, type ShapeProblem } from './shape.js';

/** Each connection's page cache, KiB (see the constructor). */
const PAGE_CACHE_KIB = 500;

export { chainHash, eventHash, GENESIS_HASH, issuanceHash, ROW_FORMAT, type EventFields, type IssuanceFields } from './chain.js';
export { ThreadedLedger } from './threaded.js';
export type { ProjectionProblem } from './projections.js';
export { LedgerLock, leaseLabel, leaseProblem, leaseValue, realLedgerPath, refuseHardLinked, strayWalProblem } from './lock.js';
export { checkpointLabel, closesLedger, unsignedCheckpointsProblem, ledgerTokenProblem, missingLedgerProblem, stationIdProblem, tokenCheckpoint, checkpointStatement, splitHashes, decodeTokenCheckpoint, encodeTokenCheckpoint, takeCheckpoint, takeCheckpointSync, type Checkpoint, type CheckpointWriter, type Heads, type TokenCheckpoint } from './checkpoint.js';

export interface NewIssuance {
  serial: string;
  deviceId: string;
  subject: string;
  publicKeySha256: string;
  csrSha256: string;
  certificate: Uint8Array;
  notBefore: string;
  notAfter: string;
  issuedAt: string;
  link: string;
  hardwareId?: string | null | undefined;
  workOrder?: string | null | undefined;
  /** The device's name; the device id when it sent none. */
  name?: string | null | undefined;
  /** seq of the issuance this one replaces for the same device. */
  supersedes?: number | null | undefined;
}

export interface Issuance extends NewIssuance {
  /** Row format (chain.ts): 1 for rows of old ledgers, 2 now. */
  v: number;
  seq: number;
  stationId: string;
  hardwareId: string | null;
  workOrder: string | null;
  name: string | null;
  supersedes: number | null;
  entryHash: string;
}

/** A token failure is a rejection with code TOKEN_UNAVAILABLE: every refused request is one event. */
export type EventKind =
  | 'start'
  | 'stop'
  | 'rejection'
  | 'replay'
  | 'reissue_granted'
  | 'reissue_used'
  | 'replay_base'
  | 'ca_import'
  | 'revocation'
  | 'export'
  | 'order_open'
  | 'order_close'
  | 'clock_confirm'
  | 'backup'
  | 'ledger_accept';

/** The events only an operator action writes, each checkpointed as it is made. */
export const OPERATOR_KINDS: readonly EventKind[] = ['reissue_granted', 'ca_import', 'revocation', 'export', 'order_open', 'order_close', 'clock_confirm', 'backup', 'ledger_accept'];

export interface NewEvent {
  kind: EventKind;
  code?: string | null | undefined;
  message?: string | null | undefined;
  csrSha256?: string | null | undefined;
  deviceId?: string | null | undefined;
  link?: string | null | undefined;
  /** Identical refusals this event stands for (default 1). */
  count?: number | undefined;
  /** The operator who caused it. */
  operator?: string | null | undefined;
}

export interface LedgerEvent extends Required<{ [K in keyof NewEvent]: Exclude<NewEvent[K], undefined> }> {
  v: number;
  seq: number;
  at: string;
  stationId: string;
  entryHash: string;
}

export interface Batch {
  number: number;
  /** Issuance seq range, inclusive; first > last for a batch of revocation marks only. */
  firstSeq: number;
  lastSeq: number;
  /** Event seq range covered for revocation marks, inclusive. */
  firstEventSeq: number;
  lastEventSeq: number;
  createdAt: string;
  previousSha256: string;
  signature: Uint8Array;
  fileSha256: string;
}

export interface LogFilter {
  since?: string | undefined;
  until?: string | undefined;
  device?: string | undefined;
  order?: string | undefined;
  link?: string | undefined;
}

export interface LogRow {
  type: 'issuance' | 'event';
  at: string;
  seq: number;
  device: string | null;
  name: string | null;
  serial: string | null;
  link: string | null;
  work_order: string | null;
  kind: string | null;
  code: string | null;
  message: string | null;
  count: number;
  operator: string | null;
  supersedes: number | null;
}

export type GroupWrite =
  | { op: 'issuance'; entry: NewIssuance; guard?: CommitGuard | undefined }
  | { op: 'event'; event: NewEvent }
  | { op: 'checkpoint'; checkpoint: Checkpoint };

export type GroupResult = { ok: true; result: unknown } | { ok: false; error: LineSignerError };

export interface ChainProblem {
  table: 'issuances' | 'events';
  seq: number;
  reason: string;
}

/**
 * Rows this process wrote, by ledger path and table: seq → entry_hash. A
 * serving station's checkpoint vouches only for these (ThreadedLedger
 * foreignWrites): rows someone else added, changed or recomputed between
 * two checkpoints would otherwise be signed as the station's own. Entries
 * a checkpoint covers are dropped.
 */
const writtenHere = new Map<string, { issuances: Map<number, string>; events: Map<number, string> }>();
/** Forgets what is set in it: a worker thread's writes are noted by the thread it answers. */
class Discard<K, V> extends Map<K, V> {
  override set(): this {
    return this;
  }
}
const DISCARD = { issuances: new Discard<number, string>(), events: new Discard<number, string>() };

export function rowsWrittenHere(path: string): { issuances: Map<number, string>; events: Map<number, string> } {
  // Kept on the thread that checkpoints; the writer thread's rows come back to it with their answers.
  if (!isMainThread) return DISCARD;
  let w = writtenHere.get(path);
  if (!w) writtenHere.set(path, (w = { issuances: new Map(), events: new Map() }));
  return w;
}

/** SQLite's word that a file is not a database, or not a whole one. */
export function isDamagedFileError(err: unknown): boolean {
  return /^SQLITE_(CORRUPT|NOTADB)/.test(String((err as { code?: string } | null)?.code));
}

/** A LEDGER error for a ledger file SQLite finds damaged (anything else: null). */
export function damagedLedgerError(err: unknown, path: string): LineSignerError | null {
  if (!isDamagedFileError(err)) return null;
  return new LineSignerError('LEDGER', `the ledger file ${path} is damaged (SQLite: ${(err as Error).message}): restore the newest backup to ${path} (\`line-signer ledger accept --reason R\`)`);
}

/**
 * A WAL left beside the ledger (a crash; or another file moved or copied
 * to the path while a station had its own open there, killed before it
 * could move its WAL away) is played into the file by every opener, and
 * the first read-write close writes it in for good. So before one, the two
 * are read together read-only: a WAL that is not the file's makes a
 * damaged database, and is named while the file is still as it was.
 */
export function damagedWithWalProblem(path: string): string | null {
  const wal = `${path}-wal`;
  const bytes = statSync(wal, { throwIfNoEntry: false })?.size ?? 0;
  if (bytes === 0) return null;
  let said: string;
  let db: Database.Database | undefined;
  try {
    db = new Database(path, { readonly: true, fileMustExist: true });
    const rows = db.pragma('quick_check(5)') as Array<Record<string, string>>;
    const lines = rows.map((r) => Object.values(r)[0]!);
    if (lines.length === 1 && lines[0] === 'ok') return null;
    said = lines.join('; ');
  } catch (err) {
    if (!isDamagedFileError(err)) return null;
    said = (err as Error).message;
  } finally {
    db?.close();
  }
  return (
    `${path} with the WAL beside it (${wal}, ${bytes} bytes, which SQLite plays into the file) reads as a damaged database (SQLite: ${said}). ` +
    `If another file was moved or copied to ${path} while a station had its own open there, the WAL is that station's, not this file's: move ${wal} (and ${path}-shm) away, and the file reads as it is; ` +
    `else restore the newest backup (\`line-signer ledger accept --reason R\`). Nothing was written`
  );
}

/**
 * Why the file at `path` is not a ledger to take as it is, or null. Opening a file read-write gives it
 * the schema (a 0-byte file becomes a new, empty ledger; another SQLite file gets the ledger's tables
 * and WAL mode): a command that takes a file someone put there looks first, read-only.
 */
export function notALedgerProblem(path: string): string | null {
  let size: number;
  try {
    const st = statSync(path);
    if (!st.isFile()) return `${path} is not a file`;
    size = st.size;
  } catch {
    return `no file at ${path}`;
  }
  if (size === 0) return `${path} is empty (a copy that did not finish?)`;
  // SQLite would take a journal beside the file as the file's own and play it into it (a crashed
  // station's -wal beside a copied backup corrupted the copy, and was deleted).
  // An empty one holds nothing to play (a reader such as \`ledger verify\` leaves an empty -wal behind).
  const leftover = ['-wal', '-journal'].map((x) => `${path}${x}`).filter((f) => (statSync(f, { throwIfNoEntry: false })?.size ?? 0) > 0);
  if (leftover.length > 0) {
    return `${leftover.join(' and ')} ${leftover.length > 1 ? 'are' : 'is'} beside it: SQLite would play it into the file as the file's own; if the file was copied there, it belongs to the file that was there before: move it away (and ${path}-shm); if this is the station's own ledger after a crash, it holds the last commits: keep it and start the station, which needs no accept`;
  }
  let db: Database.Database | undefined;
  try {
    db = new Database(path, { readonly: true, fileMustExist: true });
    const { n } = db.prepare("SELECT count(*) AS n FROM sqlite_master WHERE type = 'table' AND name IN ('issuances', 'events', 'settings')").get() as { n: number };
    if (n !== 3) return `${path} is an SQLite file, but not a line-signer ledger (it lacks the ledger's tables)`;
    const version = db.pragma('user_version', { simple: true }) as number;
    if (version < 1 || version > MIGRATIONS.length) return `${path} is not a line-signer ledger this version knows (schema version ${version})`;
    // Tables of the right names and the wrong shape once reached the migration and its INTERNAL error, changed.
    const shape = shapeProblems(db);
    if (shape.length > 0) return `${path} is not a line-signer ledger as line-signer writes one: ${shape[0]!.what}: ${shape[0]!.reason}${shape.length > 1 ? ` (and ${shape.length - 1} more)` : ''}`;
    if (!db.prepare("SELECT value FROM settings WHERE key = 'ledger_id'").get()) return `${path} has no ledger id (settings ledger_id)`;
    return null;
  } catch (err) {
    return `${path} is not a line-signer ledger (${(err as Error).message})`;
  } finally {
    db?.close();
  }
}

/**
 * The file's own checks before a process writes it as the ledger's owner
 * (after the token's and the lease's): a trigger or a changed table (it
 * would run inside the owner's own writes, and the token would then sign
 * what it wrote), a row changed below the chain's head (it kept its stored
 * hash), and a table kept beside the events (orders, revocations, grants,
 * the clock, batches) edited to differ from them. `history: false` (ledger
 * accept, which takes a file as it is) checks the shape only. The first
 * problem, as text naming the file, or null.
 */
export function ownedLedgerProblem(
  ledger: { shapeProblems(opts: { values: boolean }): ShapeProblem[]; verifyChain(): ChainProblem | null; projectionProblems(): ProjectionProblem[] },
  path: string,
  opts: { history?: boolean } = {},
): { kind: 'shape' | 'chain' | 'table'; text: string } | null {
  const more = (n: number): string => (n > 1 ? ` (and ${n - 1} more)` : '');
  const reshaped = ledger.shapeProblems({ values: false });
  if (reshaped.length > 0) {
    return { kind: 'shape', text: `${path}: ${reshaped[0]!.what}: ${reshaped[0]!.reason}${more(reshaped.length)}; the file was changed outside line-signer. \`line-signer ledger verify\` lists every difference` };
  }
  if (opts.history === false) return null;
  const broken = ledger.verifyChain();
  if (broken) return { kind: 'chain', text: chainProblemText(path, broken) };
  const edited = ledger.projectionProblems();
  if (edited.length > 0) {
    return { kind: 'table', text: `${path}: ${edited[0]!.table} ${quote(String(edited[0]!.key))}: ${edited[0]!.reason}${more(edited.length)}; the table was edited outside line-signer. \`line-signer ledger verify\` lists every difference` };
  }
  return null;
}

/** A chain problem as a refusal to write says it. */
export function chainProblemText(path: string, p: ChainProblem): string {
  return `${p.table === 'issuances' ? 'issuance' : 'event'} seq ${p.seq} does not match the ledger's hash chain (${p.reason}): ${path} was changed outside line-signer; \`line-signer ledger verify\` lists every difference`;
}

export interface LedgerStats {
  issued: number;
  rejectedByCode: Record<string, number>;
  replays: number;
  lastIssuance: Issuance | undefined;
}

/** What the ledger knows that bears on issuing to one device, read at once. */
export interface DeviceContext {
  /** public_key_sha256 of this device's newest certificate: the one key it may use without a re-issue grant. */
  currentKey: string | undefined;
  /** The device was revoked (and no re-issue since). */
  revoked: { reason: string; at: string } | undefined;
  reissueAllowed: boolean;
  /** seq of this device's newest issuance, which a new one for it supersedes. */
  newestSeq: number | undefined;
  /** seq of this device's newest issuance for the key asked about, if it ever had that key. */
  keySeq?: number | undefined;
}

/** What a device with no issuance in the ledger has: no key, no revocation (both need an issuance), no grant. */
export const UNKNOWN_DEVICE: DeviceContext = Object.freeze({ currentKey: undefined, revoked: undefined, reissueAllowed: false, newestSeq: undefined });

/** The open work order, if any. */
export interface OpenOrder {
  id: string;
  quantity: number;
  issued: number;
  hardwareId: string | null;
  operator: string;
  openedAt: string;
}

export interface Order extends OpenOrder {
  closedAt: string | null;
  closedBy: string | null;
}

/** What the station-wide checks need, read at once. */
export interface StationContext {
  order: OpenOrder | undefined;
  issuedCount: number;
  /** Issuances in the minute before `now`. */
  issuedLastMinute: number;
  lastIssuedAt: Date | undefined;
  /** The operator's word that the clock was right at this time, when given after the newest issuance. */
  clockConfirmedAt: Date | undefined;
}

/**
 * What a policy decision relied on, re-checked inside the write
 * transaction, so that no second writer (another process, or a decision
 * made on stale facts) can ever commit a violation.
 */
export interface CommitGuard {
  maxCertificates?: number | undefined;
  maxPerMinute?: number | undefined;
  /** The open order's quantity (entry.workOrder names it). */
  orderQuantity?: number | undefined;
  /** The station requires an open order to issue. */
  requireOrder?: boolean | undefined;
}

export interface Ledger {
  findByCsrHash(csrSha256: string): Issuance | undefined;
  /** One read for the issuance checks (one read transaction instead of four). */
  deviceContext(deviceId: string, publicKeySha256?: string): DeviceContext;
  grantReissue(deviceId: string, reason: string): void;
  issuedCount(): number;
  /**
   * Appends to the chain and commits; the row is durable when this resolves.
   * `alone`: no other request is in flight, so latency matters more than throughput.
   */
  recordIssuance(entry: NewIssuance, hint?: { alone?: boolean; guard?: CommitGuard }): Promise<Issuance>;
  /** Another device that has `name` as its name or id. */
  nameHolder(name: string, deviceId: string, skeleton?: string): NameHolder | undefined;
  /** The open order, counts, and the clock's reference, for the station-wide checks (the minute's count up to `minuteCap`). */
  stationContext(now: Date, minuteCap?: number): StationContext;
  /** Appends an event; durable when this resolves. */
  recordEvent(event: NewEvent, hint?: { alone?: boolean }): Promise<void>;
  /** Issuances with seq > `seq`, in order, without loading them all at once. */
  since(seq: number): IterableIterator<Issuance>;
  /** Walks both chains; `check` adds per-issuance checks (the certificate's signature). */
  verifyChain(check?: (row: Issuance) => string | null): ChainProblem | null;
  stats(): LedgerStats;
  close(): void | Promise<void>;
}

/** The device that holds a name, and its name as the ledger has it (the same text, or one that looks the same). */
export interface NameHolder {
  deviceId: string;
  name: string;
}

interface IssuanceRow {
  seq: number;
  serial: string;
  device_id: string;
  subject: string;
  public_key_sha256: string;
  csr_sha256: string;
  certificate: Buffer;
  not_before: string;
  not_after: string;
  issued_at: string;
  station_id: string;
  link: string;
  hardware_id: string | null;
  work_order: string | null;
  v: number;
  name: string | null;
  supersedes: number | null;
  entry_hash: string;
}

interface EventRow {
  v: number;
  seq: number;
  at: string;
  kind: string;
  code: string | null;
  message: string | null;
  csr_sha256: string | null;
  device_id: string | null;
  link: string | null;
  station_id: string;
  count: number;
  operator: string | null;
  entry_hash: string;
}

interface CheckpointRow {
  n: number;
  at: string;
  reason: string;
  issuance_seq: number;
  issuance_hash: string;
  event_seq: number;
  event_hash: string;
  issuance_hashes: Buffer;
  event_hashes: Buffer;
  previous: string;
  signature: Buffer;
}

function toCheckpoint(r: CheckpointRow): Checkpoint {
  return {
    n: r.n,
    at: r.at,
    reason: r.reason,
    issuanceSeq: r.issuance_seq,
    issuanceHash: r.issuance_hash,
    eventSeq: r.event_seq,
    eventHash: r.event_hash,
    issuanceHashes: new Uint8Array(r.issuance_hashes),
    eventHashes: new Uint8Array(r.event_hashes),
    previous: r.previous,
    signature: new Uint8Array(r.signature),
  };
}

interface OrderRow {
  id: string;
  quantity: number;
  hardware_id: string | null;
  operator: string;
  opened_at: string;
  issued: number;
  closed_at: string | null;
  closed_by: string | null;
}

function toOrder(r: OrderRow): Order {
  return {
    id: r.id,
    quantity: r.quantity,
    issued: r.issued,
    hardwareId: r.hardware_id,
    operator: r.operator,
    openedAt: r.opened_at,
    closedAt: r.closed_at,
    closedBy: r.closed_by,
  };
}

interface BatchRow {
  number: number;
  first_seq: number;
  last_seq: number;
  first_event_seq: number;
  last_event_seq: number;
  created_at: string;
  previous_sha256: string;
  signature: Buffer;
  file_sha256: string;
}

function toBatch(r: BatchRow): Batch {
  return {
    number: r.number,
    firstSeq: r.first_seq,
    lastSeq: r.last_seq,
    firstEventSeq: r.first_event_seq,
    lastEventSeq: r.last_event_seq,
    createdAt: r.created_at,
    previousSha256: r.previous_sha256,
    signature: new Uint8Array(r.signature),
    fileSha256: r.file_sha256,
  };
}

function toEvent(r: EventRow): LedgerEvent {
  return {
    v: r.v,
    seq: r.seq,
    at: r.at,
    kind: r.kind as EventKind,
    code: r.code,
    message: r.message,
    csrSha256: r.csr_sha256,
    deviceId: r.device_id,
    link: r.link,
    stationId: r.station_id,
    count: r.count,
    operator: r.operator,
    entryHash: r.entry_hash,
  };
}

function toIssuance(r: IssuanceRow): Issuance {
  return {
    v: r.v,
    seq: r.seq,
    serial: r.serial,
    deviceId: r.device_id,
    subject: r.subject,
    publicKeySha256: r.public_key_sha256,
    csrSha256: r.csr_sha256,
    certificate: new Uint8Array(r.certificate),
    notBefore: r.not_before,
    notAfter: r.not_after,
    issuedAt: r.issued_at,
    stationId: r.station_id,
    link: r.link,
    hardwareId: r.hardware_id,
    workOrder: r.work_order,
    name: r.name,
    supersedes: r.supersedes,
    entryHash: r.entry_hash,
  };
}

/**
 * The last gate before text is hashed and stored: a lone surrogate would be
 * hashed as one string and stored by SQLite as another (U+FFFD), and the
 * chain would break at that row. Links refuse such text first (src/text.ts);
 * this keeps any path that forgot from poisoning the ledger.
 */
function wellFormed(row: object): void {
  for (const [k, v] of Object.entries(row)) {
    if (typeof v === 'string' && !v.isWellFormed()) throw new LineSignerError('BAD_FRAME', `${k} is not well-formed Unicode; not recorded`);
  }
}

export class SqliteLedger implements Ledger {
  private readonly db: Database.Database;
  /** SQLite's schema cookie as this process found the file: any change to the schema bumps it. */
  private schemaVersion: number;
  private devicePolicyEvents: Database.Statement<[string, number], { seq: number; kind: string }> | null = null;
  /** Rows written by the transaction under way: this process's (rowsWrittenHere) once it commits. */
  private pendingRows: Array<['issuances' | 'events', number, string]> = [];
  /** The newest event this connection wrote (what the writer thread reports back for an event). */
  lastEvent: { seq: number; hash: string } | null = null;
  /** The ledger's replay base (projections.ts), read once: it is written once, at the first start under this version. */
  private replayBase: { seq: number; revoked: Map<string, number>; grants: Set<string> } | null = null;
  private readonly q;
  private readonly insertIssuance: (entry: NewIssuance, guard: CommitGuard | undefined) => Issuance;
  private readonly insertEvent: (event: NewEvent) => number;

  /** `walLooked`: another connection of this process opened the file just before (the writer thread's, after the station's). */
  constructor(
    private readonly path: string,
    private readonly stationId: string,
    opts: { readonly?: boolean; walLooked?: boolean } = {},
  ) {
    // SQLite would open a FIFO and wait for a writer for ever, and call a folder a disk I/O error.
    if (path !== ':memory:') {
      const st = statSync(path, { throwIfNoEntry: false });
      if (st && !st.isFile()) throw new LineSignerError('LEDGER', `${path} is not a file (${st.isDirectory() ? 'a folder' : st.isFIFO() ? 'a FIFO' : 'not a regular file'}): [station] ledger names the ledger's file`);
      if (st && !opts.readonly && !opts.walLooked) {
        const left = damagedWithWalProblem(path);
        if (left) throw new LineSignerError('LEDGER', left);
      }
    }
    try {
      this.db = new Database(path, { readonly: opts.readonly ?? false, fileMustExist: opts.readonly ?? false });
    } catch (err) {
      if (opts.readonly && !existsSync(path)) throw new LineSignerError('LEDGER', `no ledger at ${path}: a new station makes it at its first serve or sign; if this station has issued, [station] ledger names the wrong file, or the file was moved or deleted`);
      const why = whyNotWritable(path);
      throw damagedLedgerError(err, path) ?? new LineSignerError('LEDGER', `cannot open ledger ${path}: ${(err as Error).message}${why ? `: ${why}` : ''}`);
    }
    if (!opts.readonly) {
      try {
        this.db.pragma('journal_mode = WAL');
      } catch (err) {
        const why = whyNotWritable(path);
        this.db.close();
        throw damagedLedgerError(err, path) ?? new LineSignerError('LEDGER', `cannot write ledger ${path}: ${(err as Error).message}${why ? `: ${why}` : ''}`);
      }
    }
    try {
      this.db.pragma('synchronous = FULL');
      this.db.pragma('busy_timeout = 5000');
      // A small page cache. better-sqlite3 builds SQLite with 16 MB a connection, which a serving
      // station's connections filled as the file grew: 17 of the 41 MB its RSS grew by over 30,000
      // issuances. The pages the station reads again (the chains' heads, the upper index pages) fit in
      // 500 KiB; the rest comes from the OS's file cache. 2 MB (SQLite's default) grew 3 MB more over
      // 100,000 issuances at the same certificates/s.
      this.db.pragma(`cache_size = -${PAGE_CACHE_KIB}`);
      this.db.pragma('foreign_keys = ON');
      if (!opts.readonly) this.migrate();
      this.schemaVersion = this.db.pragma('schema_version', { simple: true }) as number;
      // The schema read now, where a damaged file gets its LEDGER error, rather than at the first query.
      this.db.prepare('SELECT count(*) FROM sqlite_master').get();
    } catch (err) {
      this.db.close();
      throw damagedLedgerError(err, path) ?? err;
    }
    const db = this.db;
    this.q = {
      byCsr: db.prepare<[string], IssuanceRow>('SELECT * FROM issuances WHERE csr_sha256 = ?'),
      bySerial: db.prepare<[string], IssuanceRow>("SELECT * FROM issuances WHERE ltrim(serial, '0') = ?"),
      byDevice: db.prepare<[string], IssuanceRow>('SELECT * FROM issuances WHERE device_id = ? ORDER BY seq'),
      lastIssuance: db.prepare<[], IssuanceRow>('SELECT * FROM issuances ORDER BY seq DESC LIMIT 1'),
      lastIssuanceHash: db.prepare<[], { seq: number; entry_hash: string }>('SELECT seq, entry_hash FROM issuances ORDER BY seq DESC LIMIT 1'),
      lastEventHash: db.prepare<[], { seq: number; entry_hash: string }>('SELECT seq, entry_hash FROM events ORDER BY seq DESC LIMIT 1'),
      // seq is gap-free from 1 (verifyChain checks it), so max(seq) is the count without a table scan.
      context: db.prepare<[{ id: string; k: string | null }], { key: string | null; newest: number | null; key_seq: number | null; revoked_reason: string | null; revoked_at: string | null; granted: number }>(
        `SELECT (SELECT public_key_sha256 FROM issuances WHERE device_id = @id ORDER BY seq DESC LIMIT 1) AS key,
                (SELECT max(seq) FROM issuances WHERE device_id = @id) AS newest,
                (SELECT max(seq) FROM issuances WHERE device_id = @id AND public_key_sha256 = @k) AS key_seq,
                (SELECT reason FROM revoked WHERE device_id = @id) AS revoked_reason,
                (SELECT at FROM revoked WHERE device_id = @id) AS revoked_at,
                EXISTS (SELECT 1 FROM reissue_grants WHERE device_id = @id) AS granted`,
      ),
      keys: db.prepare<[], [string, string, string | null]>('SELECT csr_sha256, device_id, name_skeleton FROM issuances').raw(),
      count: db.prepare<[], { n: number | null }>('SELECT max(seq) AS n FROM issuances'),
      stationContext: db.prepare<[{ since: string; now: string; cap: number }], { order_json: string | null; n: number | null; minute: number; last: string | null; confirmed: string | null; confirmed_seq: string | null }>(
        `SELECT (SELECT json_object('id', id, 'quantity', quantity, 'issued', issued, 'hardwareId', hardware_id, 'operator', operator, 'openedAt', opened_at)
                   FROM orders WHERE closed_at IS NULL) AS order_json,
                (SELECT max(seq) FROM issuances) AS n,
                (SELECT count(*) FROM (SELECT 1 FROM issuances WHERE issued_at > @since AND issued_at <= @now LIMIT @cap)) AS minute,
                (SELECT issued_at FROM issuances ORDER BY seq DESC LIMIT 1) AS last,
                (SELECT value FROM settings WHERE key = 'clock_confirmed_at') AS confirmed,
                (SELECT value FROM settings WHERE key = 'clock_confirmed_after_seq') AS confirmed_seq`,
      ),
      orderById: db.prepare<[string], OrderRow>('SELECT * FROM orders WHERE id = ?'),
      openOrder: db.prepare<[], OrderRow>('SELECT * FROM orders WHERE closed_at IS NULL'),
      allOrders: db.prepare<[], OrderRow>('SELECT * FROM orders ORDER BY opened_at, id'),
      insertOrder: db.prepare('INSERT INTO orders (id, quantity, hardware_id, operator, opened_at) VALUES (@id, @quantity, @hardware_id, @operator, @opened_at)'),
      closeOrder: db.prepare<[string, string, string]>('UPDATE orders SET closed_at = ?, closed_by = ? WHERE id = ? AND closed_at IS NULL'),
      countOrder: db.prepare<[string]>('UPDATE orders SET issued = issued + 1 WHERE id = ?'),
      revokedRow: db.prepare<[string], { device_id: string }>('SELECT device_id FROM revoked WHERE device_id = ?'),
      replayBaseEvent: db.prepare<[], { seq: number; message: string | null }>("SELECT seq, message FROM events WHERE kind = 'replay_base' ORDER BY seq LIMIT 1"),
      insertRevoked: db.prepare('INSERT OR REPLACE INTO revoked (device_id, event_seq, reason, at) VALUES (@device_id, @event_seq, @reason, @at)'),
      deleteRevoked: db.prepare<[string]>('DELETE FROM revoked WHERE device_id = ?'),
      setting: db.prepare<[string], { value: string }>('SELECT value FROM settings WHERE key = ?'),
      setSetting: db.prepare<[string, string]>('INSERT OR REPLACE INTO settings (key, value) VALUES (?, ?)'),
      keyOfDevice: db.prepare<[string, string], { seq: number }>('SELECT seq FROM issuances WHERE device_id = ? AND public_key_sha256 = ? LIMIT 1'),
      newestOfDevice: db.prepare<[string], { seq: number; public_key_sha256: string }>('SELECT seq, public_key_sha256 FROM issuances WHERE device_id = ? ORDER BY seq DESC LIMIT 1'),
      // A row stamped in the future (a clock that was wrong) is not "in the last minute".
      minuteCount: db.prepare<[string, string], { n: number }>('SELECT count(*) AS n FROM issuances WHERE issued_at > ? AND issued_at <= ?'),
      lastCheckpoint: db.prepare<[], CheckpointRow>('SELECT * FROM checkpoints ORDER BY n DESC LIMIT 1'),
      allCheckpoints: db.prepare<[], CheckpointRow>('SELECT * FROM checkpoints ORDER BY n'),
      checkpointN: db.prepare<[number], CheckpointRow>('SELECT * FROM checkpoints WHERE n = ?'),
      insertCheckpoint: db.prepare(
        `INSERT INTO checkpoints (n, at, reason, issuance_seq, issuance_hash, event_seq, event_hash, issuance_hashes, event_hashes, previous, signature)
         VALUES (@n, @at, @reason, @issuance_seq, @issuance_hash, @event_seq, @event_hash, @issuance_hashes, @event_hashes, @previous, @signature)`,
      ),
      issuanceHashesAfter: db.prepare<[number, number], { entry_hash: string }>('SELECT entry_hash FROM issuances WHERE seq > ? AND seq <= ? ORDER BY seq'),
      eventHashesAfter: db.prepare<[number, number], { entry_hash: string }>('SELECT entry_hash FROM events WHERE seq > ? AND seq <= ? ORDER BY seq'),
      allBatches: db.prepare<[], BatchRow>('SELECT * FROM batches ORDER BY number'),
      perLink: db.prepare<[string, string], { link: string; n: number }>('SELECT link, count(*) AS n FROM issuances WHERE issued_at >= ? AND issued_at < ? GROUP BY link ORDER BY link'),
      log: db.prepare<[Record<string, string | null>], LogRow>(
        `SELECT * FROM (
           SELECT 'issuance' AS type, i.issued_at AS at, i.seq, i.device_id AS device, i.name, i.serial, i.link, i.work_order AS work_order,
                  NULL AS kind, NULL AS code, NULL AS message, 1 AS count, o.operator AS operator, i.supersedes
             FROM issuances i LEFT JOIN orders o ON o.id = i.work_order
            WHERE (@since IS NULL OR i.issued_at >= @since) AND (@until IS NULL OR i.issued_at < @until)
              AND (@device IS NULL OR i.device_id = @device) AND (@order IS NULL OR i.work_order = @order)
              AND (@link IS NULL OR i.link = @link)
           UNION ALL
           SELECT 'event', e.at, e.seq, e.device_id, NULL, NULL, e.link, NULL, e.kind, e.code, e.message, e.count, e.operator, NULL
             FROM events e
            WHERE (@since IS NULL OR e.at >= @since) AND (@until IS NULL OR e.at < @until)
              AND (@device IS NULL OR e.device_id = @device)
              AND (@order IS NULL OR (e.kind IN ('order_open', 'order_close') AND substr(e.message, 1, length('work order ' || @order || ':')) = 'work order ' || @order || ':'))
              AND (@link IS NULL OR e.link = @link)
         ) ORDER BY at, type DESC, seq`,
      ),
      eventsSince: db.prepare<[number], EventRow>('SELECT * FROM events WHERE seq > ? ORDER BY seq'),
      insertIssuance: db.prepare(
        `INSERT INTO issuances (v, seq, serial, device_id, subject, public_key_sha256, csr_sha256, certificate, not_before,
           not_after, issued_at, station_id, link, hardware_id, work_order, name, supersedes, entry_hash, name_skeleton)
         VALUES (@v, @seq, @serial, @device_id, @subject, @public_key_sha256, @csr_sha256, @certificate, @not_before,
           @not_after, @issued_at, @station_id, @link, @hardware_id, @work_order, @name, @supersedes, @entry_hash, @name_skeleton)`,
      ),
      insertEvent: db.prepare(
        `INSERT INTO events (v, seq, at, kind, code, message, csr_sha256, device_id, link, station_id, count, operator, entry_hash)
         VALUES (@v, @seq, @at, @kind, @code, @message, @csr_sha256, @device_id, @link, @station_id, @count, @operator, @entry_hash)`,
      ),
      deleteGrant: db.prepare<[string]>('DELETE FROM reissue_grants WHERE device_id = ?'),
      grantOf: db.prepare<[string], { device_id: string }>('SELECT device_id FROM reissue_grants WHERE device_id = ?'),
      // Another device whose id is this name; or whose current name (its newest issuance's) is this one or
      // looks the same (its skeleton), unless this device had this very name already (two look-alikes
      // issued before skeletons were kept go on being their own devices' names). A name a device had
      // before a re-issue renamed it is free again: a device cannot collect names, one certificate each.
      nameTaken: db.prepare<[{ n: string; s: string; d: string }], { device_id: string; name: string }>(
        `SELECT device_id, coalesce(name, device_id) AS name FROM issuances AS i
          WHERE device_id != @d
            AND (device_id = @n
                 OR ((name = @n OR (name_skeleton = @s AND NOT EXISTS (SELECT 1 FROM issuances WHERE device_id = @d AND coalesce(name, device_id) = @n)))
                     AND seq = (SELECT max(seq) FROM issuances WHERE device_id = i.device_id)))
          LIMIT 1`,
      ),
      insertGrant: db.prepare<[string, string, string]>(
        'INSERT OR REPLACE INTO reissue_grants (device_id, granted_at, reason) VALUES (?, ?, ?)',
      ),
      since: db.prepare<[number], IssuanceRow>('SELECT * FROM issuances WHERE seq > ? ORDER BY seq'),
      allEvents: db.prepare<[], EventRow>('SELECT * FROM events ORDER BY seq'),
      range: db.prepare<[number, number], IssuanceRow>('SELECT * FROM issuances WHERE seq BETWEEN ? AND ? ORDER BY seq'),
      eventsOfKind: db.prepare<[string, number, number], EventRow>('SELECT * FROM events WHERE kind = ? AND seq BETWEEN ? AND ? ORDER BY seq'),
      anyEventOfKind: db.prepare<[string, number, number], { n: number }>(
        'SELECT EXISTS (SELECT 1 FROM events WHERE kind = ? AND seq BETWEEN ? AND ?) AS n',
      ),
      maxEventSeq: db.prepare<[], { n: number | null }>('SELECT max(seq) AS n FROM events'),
      hashAt: db.prepare<[number], { entry_hash: string }>('SELECT entry_hash FROM issuances WHERE seq = ?'),
      eventHashAt: db.prepare<[number], { entry_hash: string }>('SELECT entry_hash FROM events WHERE seq = ?'),
      lastBatch: db.prepare<[], BatchRow>('SELECT * FROM batches ORDER BY number DESC LIMIT 1'),
      batch: db.prepare<[number], BatchRow>('SELECT * FROM batches WHERE number = ?'),
      insertBatch: db.prepare(
        `INSERT INTO batches (number, first_seq, last_seq, first_event_seq, last_event_seq, created_at, previous_sha256, signature, file_sha256)
         VALUES (@number, @first_seq, @last_seq, @first_event_seq, @last_event_seq, @created_at, @previous_sha256, @signature, @file_sha256)`,
      ),
      // An event stands for `count` identical refusals or replays (a flood coalesced).
      rejected: db.prepare<[], { code: string; n: number }>(
        "SELECT code, sum(count) AS n FROM events WHERE kind = 'rejection' GROUP BY code ORDER BY code",
      ),
      replays: db.prepare<[], { n: number }>("SELECT coalesce(sum(count), 0) AS n FROM events WHERE kind = 'replay'"),
    };
    // Read the chain's tail inside the write transaction, so two processes
    // sharing a ledger file still build one chain.
    const issue = db
      .transaction((entry: NewIssuance, guard: CommitGuard | undefined): Issuance => {
        this.guardSchema();
        const tail = this.q.lastIssuanceHash.get();
        const supersedes = this.recheck(entry, guard ?? {}, tail?.seq ?? 0);
        const row: IssuanceRow = {
          v: ROW_FORMAT,
          seq: (tail?.seq ?? 0) + 1,
          serial: entry.serial,
          device_id: entry.deviceId,
          subject: entry.subject,
          public_key_sha256: entry.publicKeySha256,
          csr_sha256: entry.csrSha256,
          certificate: Buffer.from(entry.certificate),
          not_before: entry.notBefore,
          not_after: entry.notAfter,
          issued_at: entry.issuedAt,
          station_id: this.stationId,
          link: entry.link,
          hardware_id: entry.hardwareId ?? null,
          work_order: entry.workOrder ?? null,
          name: entry.name ?? null,
          supersedes,
          entry_hash: '',
        };
        wellFormed(row);
        row.entry_hash = issuanceHash(tail?.entry_hash ?? GENESIS_HASH, toIssuance(row));
        this.q.insertIssuance.run({ ...row, name_skeleton: nameSkeleton(entry.name ?? entry.deviceId) });
        this.pendingRows.push(['issuances', row.seq, row.entry_hash]);
        if (entry.workOrder) this.q.countOrder.run(entry.workOrder);
        return toIssuance(row);
      })
      .immediate.bind(null);
    const append = db
      .transaction((event: NewEvent) => {
        this.guardSchema();
        const tail = this.q.lastEventHash.get();
        const row: EventRow = {
          v: ROW_FORMAT,
          seq: (tail?.seq ?? 0) + 1,
          at: new Date().toISOString(),
          kind: event.kind,
          code: event.code ?? null,
          message: event.message ?? null,
          csr_sha256: event.csrSha256 ?? null,
          device_id: event.deviceId ?? null,
          link: event.link ?? null,
          station_id: this.stationId,
          count: event.count ?? 1,
          operator: event.operator ?? null,
          entry_hash: '',
        };
        wellFormed(row);
        row.entry_hash = eventHash(tail?.entry_hash ?? GENESIS_HASH, toEvent(row));
        this.q.insertEvent.run(row);
        this.pendingRows.push(['events', row.seq, row.entry_hash]);
        this.lastEvent = { seq: row.seq, hash: row.entry_hash };
        return row.seq;
      })
      .immediate.bind(null);
    this.insertIssuance = (entry, guard) => this.committed(() => issue(entry, guard));
    this.insertEvent = (event) => this.committed(() => append(event));
  }

  /**
   * Runs a write. Inside another transaction it is that one's; at the top,
   * the rows it wrote are noted as this process's once it committed. A
   * write that failed (a full disk) wrote nothing: noted, its rows read as
   * this station's rows gone, and the station stopped for good.
   */
  private committed<T>(write: () => T): T {
    if (this.db.inTransaction) return write();
    try {
      const result = write();
      const mine = rowsWrittenHere(this.path);
      for (const [table, seq, hash] of this.pendingRows) mine[table].set(seq, hash);
      return result;
    } finally {
      this.pendingRows = [];
    }
  }

  /**
   * A device's standing revocation and re-issue grant as its hash-chained
   * events say (the replay of projections.ts, for one device): from the
   * replay base on, through its revocation, reissue_granted and
   * reissue_used events. Null for a ledger without a replay base.
   */
  private policyOfDevice(deviceId: string): { revokedBy: number | null; grantBy: number | null } | null {
    if (!this.replayBase) {
      const e = this.q.replayBaseEvent.get();
      if (!e) return null;
      try {
        const base = JSON.parse(e.message ?? '') as { revoked: Array<[string, number]>; grants: string[] };
        this.replayBase = { seq: e.seq, revoked: new Map(base.revoked), grants: new Set(base.grants) };
      } catch {
        throw new LineSignerError('LEDGER', `the ledger's replay base (event seq ${e.seq}) is not readable: the file was changed outside line-signer; nothing issued: stop the station and run \`line-signer ledger verify\``);
      }
    }
    const base = this.replayBase;
    let revokedBy = base.revoked.get(deviceId) ?? null;
    let grantBy = base.grants.has(deviceId) ? base.seq : null;
    // Prepared when first needed: a read-only look at a file from before migration 6 never needs it.
    this.devicePolicyEvents ??= this.db.prepare<[string, number], { seq: number; kind: string }>(
      "SELECT seq, kind FROM events INDEXED BY events_device_kind WHERE device_id = ? AND kind IN ('revocation', 'reissue_granted', 'reissue_used') AND seq > ? ORDER BY seq",
    );
    for (const e of this.devicePolicyEvents.iterate(deviceId, base.seq)) {
      if (e.kind === 'revocation') {
        revokedBy = e.seq;
        grantBy = null;
      } else if (e.kind === 'reissue_granted') grantBy = e.seq;
      else {
        revokedBy = null;
        grantBy = null;
      }
    }
    return { revokedBy, grantBy };
  }

  /**
   * The revoked and reissue_grants rows a decision (and the commit's
   * re-check) reads for a device must be what its events say. A start
   * checks the whole of both tables against the events; this keeps a row
   * deleted or added while the station serves (one SQL statement from
   * anyone who can write the file) from letting a revoked key through.
   */
  private checkDevicePolicy(deviceId: string, revoked: boolean, granted: boolean): void {
    const p = this.policyOfDevice(deviceId);
    if (!p || (p.revokedBy !== null) === revoked && (p.grantBy !== null) === granted) return;
    const table = (p.revokedBy !== null) !== revoked ? 'revoked' : 'reissue_grants';
    throw new LineSignerError(
      'LEDGER',
      `the ledger's ${table} table disagrees with its hash-chained events for device ${quote(deviceId)}: the file was changed outside line-signer while the station had it open; nothing issued: stop the station and run \`line-signer ledger verify\``,
    );
  }

  /**
   * Inside each write transaction: the schema is still the one this process
   * opened (and, at a start, checked). A trigger planted while the station
   * serves would run inside its next write; SQLite bumps the schema cookie
   * on any schema change, so nothing is written once it moved.
   */
  private guardSchema(): void {
    const now = this.db.pragma('schema_version', { simple: true }) as number;
    if (now !== this.schemaVersion) {
      throw new LineSignerError('LEDGER', `the ledger's schema was changed outside line-signer while this process had it open (schema version ${this.schemaVersion}, now ${now}); nothing written: stop the station and run \`line-signer ledger verify\``);
    }
  }

  private migrate(): void {
    const version = this.db.pragma('user_version', { simple: true }) as number;
    if (version > MIGRATIONS.length) {
      throw new LineSignerError('LEDGER', `ledger schema version ${version} is newer than this line-signer (${MIGRATIONS.length})`);
    }
    if (version === MIGRATIONS.length) return;
    // All of them or none: a version number lowered outside line-signer once had the first
    // migrations write to the file before a later one failed (INTERNAL, duplicate column).
    try {
      this.db.transaction(() => {
        for (let v = version; v < MIGRATIONS.length; v++) {
          this.db.exec(MIGRATIONS[v]!);
          // 4 and 5: the skeletons of the names already there.
          if (v + 1 === 4 || v + 1 === 5) {
            const set = this.db.prepare<[string, number]>('UPDATE issuances SET name_skeleton = ? WHERE seq = ?');
            const rows = this.db.prepare<[], { seq: number; name: string }>('SELECT seq, coalesce(name, device_id) AS name FROM issuances').all();
            for (const r of rows) set.run(nameSkeleton(r.name), r.seq);
          }
          this.db.pragma(`user_version = ${v + 1}`);
        }
      }).immediate();
    } catch (err) {
      if (err instanceof LineSignerError) throw err;
      throw new LineSignerError(
        'LEDGER',
        `${this.path}: migrating the ledger from schema version ${version} to ${MIGRATIONS.length} failed (${(err as Error).message}); nothing was changed. ` +
          'A ledger line-signer wrote migrates cleanly; one whose version number was changed outside line-signer does not: `line-signer ledger verify` lists what differs; restore the ledger from a backup',
      );
    }
  }

  findByCsrHash(csrSha256: string): Issuance | undefined {
    const row = this.q.byCsr.get(csrSha256);
    return row ? toIssuance(row) : undefined;
  }

  /**
   * Inside the write transaction: the facts the policy decision used, read
   * again. A grant is consumed here, when the certificate needs it (a new
   * key, or a revoked device). Returns the seq this issuance supersedes.
   */
  private recheck(entry: NewIssuance, guard: CommitGuard, issued: number): number | null {
    const refuse = (code: 'DUPLICATE_DEVICE' | 'QUOTA_EXCEEDED' | 'POLICY_SUBJECT', message: string): never => {
      throw new LineSignerError(code, `${message} (checked again at commit; nothing issued)`);
    };
    if (guard.maxCertificates !== undefined && issued >= guard.maxCertificates) {
      refuse('QUOTA_EXCEEDED', `the station's limit of ${guard.maxCertificates} certificates is used up`);
    }
    if (guard.maxPerMinute !== undefined) {
      const since = new Date(Date.parse(entry.issuedAt) - 60_000).toISOString();
      if (this.q.minuteCount.get(since, entry.issuedAt)!.n >= guard.maxPerMinute) refuse('QUOTA_EXCEEDED', `more than ${guard.maxPerMinute} certificates in a minute`);
    }
    if (entry.workOrder) {
      const o = this.q.orderById.get(entry.workOrder);
      if (!o || o.closed_at !== null) return refuse('QUOTA_EXCEEDED', `work order ${entry.workOrder} is not open`);
      if (o.issued >= o.quantity) refuse('QUOTA_EXCEEDED', `work order ${o.id} is used up (${o.issued} of ${o.quantity})`);
    } else if (guard.requireOrder) refuse('QUOTA_EXCEEDED', 'no open work order');
    // One name, one device: another writer (or a request that raced this one) may have taken it since the decision.
    const name = entry.name ?? entry.deviceId;
    const holder = this.q.nameTaken.get({ n: name, s: nameSkeleton(name), d: entry.deviceId });
    if (holder !== undefined) refuse('POLICY_SUBJECT', nameTakenMessage(name, holder.device_id, holder.name));
    const newest = this.q.newestOfDevice.get(entry.deviceId);
    const revoked = this.q.revokedRow.get(entry.deviceId) !== undefined;
    const granted = this.q.grantOf.get(entry.deviceId) !== undefined;
    this.checkDevicePolicy(entry.deviceId, revoked, granted);
    // A key the device had before its current one was replaced or revoked with it: refused for good.
    if (newest && newest.public_key_sha256 !== entry.publicKeySha256 && this.q.keyOfDevice.get(entry.deviceId, entry.publicKeySha256)) {
      refuse('DUPLICATE_DEVICE', `this key was device ${entry.deviceId}'s before a re-issue replaced it: an old key is refused for good`);
    }
    if (granted && newest && newest.public_key_sha256 === entry.publicKeySha256) {
      refuse('DUPLICATE_DEVICE', revoked ? `device ${entry.deviceId} was revoked: its re-issue is for a new key, and the revoked one is refused` : `a re-issue for a new key is pending for device ${entry.deviceId}: its old key is refused`);
    }
    if (revoked || (newest && newest.public_key_sha256 !== entry.publicKeySha256)) {
      if (this.q.deleteGrant.run(entry.deviceId).changes !== 1) {
        refuse('DUPLICATE_DEVICE', revoked ? `device ${entry.deviceId} is revoked` : `device ${entry.deviceId} already has a certificate for another key`);
      }
      if (revoked) this.q.deleteRevoked.run(entry.deviceId);
      // In the same transaction and in the events' own order: which grant this certificate used, so
      // that the grant and revocation tables can be replayed from the chain (projections.ts).
      this.insertEvent({ kind: 'reissue_used', deviceId: entry.deviceId, message: `seq ${issued + 1}: ${revoked ? 'after its revocation' : 'a new key'}` });
    }
    return newest?.seq ?? null;
  }

  /**
   * `minuteCap`: the per-minute count is needed only up to the cap it is
   * checked against (0 when there is none): counting a busy minute's
   * 40,000 rows for every request would cost more than the request.
   */
  stationContext(now: Date, minuteCap = Number.MAX_SAFE_INTEGER): StationContext {
    const r = this.q.stationContext.get({ since: new Date(now.getTime() - 60_000).toISOString(), now: now.toISOString(), cap: minuteCap })!;
    const confirmedAfter = r.confirmed_seq === null ? -1 : Number(r.confirmed_seq);
    return {
      order: r.order_json ? (JSON.parse(r.order_json) as OpenOrder) : undefined,
      issuedCount: r.n ?? 0,
      issuedLastMinute: r.minute,
      lastIssuedAt: r.last ? new Date(r.last) : undefined,
      // A confirmation counts until the next issuance, which then becomes the reference.
      clockConfirmedAt: r.confirmed && confirmedAfter >= (r.n ?? 0) ? new Date(r.confirmed) : undefined,
    };
  }

  // ---- operator actions (src/operator calls these; each is one transaction with its event)

  openOrder(o: { id: string; quantity: number; hardwareId: string | null; operator: string }): Order {
    return this.committed(() => this.db.transaction(() => {
      this.guardSchema();
      const open = this.q.openOrder.get();
      if (open) {
        if (open.issued < open.quantity) {
          throw new LineSignerError('USAGE', `work order ${open.id} is still open (${open.issued} of ${open.quantity}); close it first: line-signer order close ${open.id}`);
        }
        this.closeOrderIn(open.id, o.operator, 'quantity reached; another order opened');
      }
      if (this.q.orderById.get(o.id)) throw new LineSignerError('USAGE', `work order ${o.id} exists already; an order is opened once`);
      const at = new Date().toISOString();
      this.q.insertOrder.run({ id: o.id, quantity: o.quantity, hardware_id: o.hardwareId, operator: o.operator, opened_at: at });
      this.appendEvent({ kind: 'order_open', message: `work order ${o.id}: ${o.quantity} certificates${o.hardwareId ? `, hardware id ${o.hardwareId}` : ''}`, operator: o.operator });
      return toOrder(this.q.orderById.get(o.id)!);
    }).immediate());
  }

  closeOrder(id: string, operator: string, reason = 'closed by the operator'): Order {
    return this.committed(() => this.db.transaction(() => {
      this.guardSchema();
      const o = this.q.orderById.get(id);
      if (!o) throw new LineSignerError('USAGE', `no work order ${id}`);
      if (o.closed_at !== null) throw new LineSignerError('USAGE', `work order ${id} was closed at ${o.closed_at}`);
      this.closeOrderIn(id, operator, reason);
      return toOrder(this.q.orderById.get(id)!);
    }).immediate());
  }

  private closeOrderIn(id: string, operator: string, reason: string): void {
    this.q.closeOrder.run(new Date().toISOString(), operator, id);
    const o = this.q.orderById.get(id)!;
    this.appendEvent({ kind: 'order_close', message: `work order ${id}: ${o.issued} of ${o.quantity} issued; ${reason}`, operator });
  }

  orders(): Order[] {
    return this.q.allOrders.all().map(toOrder);
  }

  /** The operator's word that the clock is right now: the clock checks measure from this until the next issuance. */
  confirmClock(operator: string, reason: string, now: Date): void {
    this.committed(() => this.db.transaction(() => {
      this.guardSchema();
      const after = this.issuedCount();
      this.q.setSetting.run('clock_confirmed_at', now.toISOString());
      this.q.setSetting.run('clock_confirmed_after_seq', String(after));
      // The seq in the hashed event too: the settings row is checked against it (projections.ts).
      this.appendEvent({ kind: 'clock_confirm', message: `clock confirmed as ${now.toISOString()} after issuance seq ${after}: ${reason}`, operator });
    }).immediate());
  }

  // ---- checkpoints (checkpoint.ts)

  /** This ledger file's random id, made with its schema. */
  ledgerId(): string {
    const row = this.q.setting.get('ledger_id');
    if (!row) throw new LineSignerError('LEDGER', "the ledger's id (settings ledger_id) is gone: the file was edited outside line-signer; restore it from a backup");
    return row.value;
  }

  heads(): Heads {
    const i = this.q.lastIssuanceHash.get();
    const e = this.q.lastEventHash.get();
    return { issuanceSeq: i?.seq ?? 0, issuanceHash: i?.entry_hash ?? GENESIS_HASH, eventSeq: e?.seq ?? 0, eventHash: e?.entry_hash ?? GENESIS_HASH };
  }

  lastCheckpoint(): Checkpoint | undefined {
    const r = this.q.lastCheckpoint.get();
    return r ? toCheckpoint(r) : undefined;
  }

  *checkpoints(): IterableIterator<Checkpoint> {
    for (const r of this.q.allCheckpoints.iterate()) yield toCheckpoint(r);
  }

  /**
   * The next checkpoint, unsigned: both chains' heads and every entry hash
   * since the previous checkpoint, and the statement the station key signs
   * (its SHA-256). Null when nothing changed and `always` is false.
   * `upTo`: the heads to vouch for (a serving station's own rows so far), else the file's.
   */
  prepareCheckpoint(reason: string, always = true, upTo?: Heads): { unsigned: Omit<Checkpoint, 'signature'>; digest: Uint8Array } | null {
    const last = this.lastCheckpoint();
    const heads = upTo ?? this.heads();
    if (!always && last && last.issuanceSeq === heads.issuanceSeq && last.eventSeq === heads.eventSeq) return null;
    const from = { i: last?.issuanceSeq ?? 0, e: last?.eventSeq ?? 0 };
    const hashes = (rows: Array<{ entry_hash: string }>): Uint8Array => Buffer.concat(rows.map((r) => Buffer.from(r.entry_hash, 'hex')));
    const ledgerId = this.ledgerId();
    const unsigned = {
      n: (last?.n ?? 0) + 1,
      at: new Date().toISOString(),
      reason,
      ...heads,
      issuanceHashes: hashes(this.q.issuanceHashesAfter.all(from.i, heads.issuanceSeq)),
      eventHashes: hashes(this.q.eventHashesAfter.all(from.e, heads.eventSeq)),
      previous: last ? sha256(checkpointStatement(ledgerId, last)) : GENESIS_HASH,
    };
    return { unsigned, digest: createHash('sha256').update(checkpointStatement(ledgerId, unsigned)).digest() };
  }

  /** Stores a signed checkpoint; returns what the token keeps of it. */
  recordCheckpoint(c: Checkpoint): TokenCheckpoint {
    this.q.insertCheckpoint.run({
      n: c.n,
      at: c.at,
      reason: c.reason,
      issuance_seq: c.issuanceSeq,
      issuance_hash: c.issuanceHash,
      event_seq: c.eventSeq,
      event_hash: c.eventHash,
      issuance_hashes: Buffer.from(c.issuanceHashes),
      event_hashes: Buffer.from(c.eventHashes),
      previous: c.previous,
      signature: Buffer.from(c.signature),
    });
    const ledgerId = this.ledgerId();
    const { n, at, reason, issuanceSeq, issuanceHash, eventSeq, eventHash } = c;
    return { stationId: this.stationId, ledgerId, n, at, reason, issuanceSeq, issuanceHash, eventSeq, eventHash, statement: sha256(checkpointStatement(ledgerId, c)) };
  }

  /**
   * Does this file hold what the token's newest checkpoint says it held?
   * Null when it does; else why not (rows or checkpoints deleted, an older
   * copy restored, a checkpoint rewritten).
   */
  /**
   * Which row of this file differs from the one the token's checkpoint vouched for at the same seq
   * ("issuance seq 12"), or null: the file is then another branch of the ledger (an older copy
   * accepted and written to since). Rows the file lacks are not this method's.
   */
  branchFromToken(tc: TokenCheckpoint): string | null {
    if (tc.ledgerId !== this.ledgerId()) return null;
    const i = tc.issuanceSeq === 0 ? GENESIS_HASH : this.q.hashAt.get(tc.issuanceSeq)?.entry_hash;
    if (i !== undefined && i !== tc.issuanceHash) return `issuance seq ${tc.issuanceSeq}`;
    const e = tc.eventSeq === 0 ? GENESIS_HASH : this.q.eventHashAt.get(tc.eventSeq)?.entry_hash;
    if (e !== undefined && e !== tc.eventHash) return `event seq ${tc.eventSeq}`;
    return null;
  }

  checkAgainstToken(tc: TokenCheckpoint): string | null {
    const cp = this.q.checkpointN.get(tc.n);
    const where = `the token's newest checkpoint (n ${tc.n}, ${tc.at}, issuance seq ${tc.issuanceSeq}, event seq ${tc.eventSeq})`;
    if (!cp) return `${where} is not in this ledger: checkpoints or rows were deleted, or an older copy of the ledger was restored`;
    if (sha256(checkpointStatement(tc.ledgerId, toCheckpoint(cp))) !== tc.statement) return `${where} differs from checkpoint ${tc.n} in this ledger: it was rewritten`;
    const i = tc.issuanceSeq === 0 ? GENESIS_HASH : this.q.hashAt.get(tc.issuanceSeq)?.entry_hash;
    if (i !== tc.issuanceHash) return `${where}: issuance seq ${tc.issuanceSeq} is ${i ? 'changed' : 'missing'} in this ledger: rows were deleted or rewritten`;
    const e = tc.eventSeq === 0 ? GENESIS_HASH : this.q.eventHashAt.get(tc.eventSeq)?.entry_hash;
    if (e !== tc.eventHash) return `${where}: event seq ${tc.eventSeq} is ${e ? 'changed' : 'missing'} in this ledger: events were deleted or rewritten`;
    return null;
  }

  /**
   * The audit trail: issuances and events in time order, filtered, one row
   * at a time (a year of a busy line does not fit in memory). An issuance
   * names the operator who opened its work order.
   */
  *log(f: LogFilter): IterableIterator<LogRow> {
    const params = {
      since: f.since ?? null,
      until: f.until ?? null,
      device: f.device ?? null,
      order: f.order ?? null,
      link: f.link ?? null,
    };
    for (const r of this.q.log.iterate(params)) yield r;
  }

  /** Issuances from `since` up to `until` (ISO times), per link. */
  issuedPerLink(since: string, until: string): Record<string, number> {
    const out: Record<string, number> = {};
    for (const r of this.q.perLink.all(since, until)) out[r.link] = r.n;
    return out;
  }

  /** seq and entry_hash of the rows after `from` up to `to`, each table: what a checkpoint to `to` would cover. */
  rowsBetween(from: { issuanceSeq: number; eventSeq: number }, to: { issuanceSeq: number; eventSeq: number }): { issuances: Array<{ seq: number; entry_hash: string }>; events: Array<{ seq: number; entry_hash: string }> } {
    type Row = { seq: number; entry_hash: string };
    return {
      issuances: this.db.prepare<[number, number], Row>('SELECT seq, entry_hash FROM issuances WHERE seq > ? AND seq <= ? ORDER BY seq').all(from.issuanceSeq, to.issuanceSeq),
      events: this.db.prepare<[number, number], Row>('SELECT seq, entry_hash FROM events WHERE seq > ? AND seq <= ? ORDER BY seq').all(from.eventSeq, to.eventSeq),
    };
  }

  /** entry_hash of issuance `seq`; the genesis hash for seq 0; null when there is no such row. */
  entryHashAtOrNull(seq: number): string | null {
    if (seq === 0) return GENESIS_HASH;
    return this.q.hashAt.get(seq)?.entry_hash ?? null;
  }

  /** entry_hash of event `seq`; the genesis hash for seq 0; null when there is no such row. */
  eventHashAt(seq: number): string | null {
    if (seq === 0) return GENESIS_HASH;
    return this.q.eventHashAt.get(seq)?.entry_hash ?? null;
  }

  newestStationId(): string | null {
    return this.db.prepare<[], { station_id: string }>('SELECT station_id FROM events ORDER BY seq DESC LIMIT 1').get()?.station_id ?? null;
  }

  operatorEventsAfter(eventSeq: number): Array<{ seq: number; kind: string }> {
    return this.db
      .prepare<[number], { seq: number; kind: string }>(`SELECT seq, kind FROM events WHERE seq > ? AND kind IN (${OPERATOR_KINDS.map((k) => `'${k}'`).join(', ')}) ORDER BY seq LIMIT 5`)
      .all(eventSeq);
  }

  /** The message of the ledger's replay_base event when it has none yet, else null (projections.ts). */
  replayBaseToWrite(): string | null {
    return this.hasEventsOfKind('replay_base', 0, Number.MAX_SAFE_INTEGER) ? null : replayBase(this.db);
  }

  /** What of the file's shape line-signer did not make: triggers, changed tables, rows outside the chains (shape.ts). */
  shapeProblems(opts?: { values?: boolean }): ShapeProblem[] {
    return shapeProblems(this.db, opts);
  }

  /** Whether the names' skeletons are as this version computes them (a ledger opened read-only before migration 5 has older ones, or none). */
  private hasSkeletons(): boolean {
    return (this.db.pragma('user_version', { simple: true }) as number) >= 5;
  }

  /** Rows whose stored name skeleton is not what their name looks like: a look-alike would pass them (text.ts nameSkeleton). */
  *skeletonProblems(): IterableIterator<number> {
    if (!this.hasSkeletons()) return;
    for (const r of this.db.prepare<[], { seq: number; name: unknown; name_skeleton: unknown }>('SELECT seq, coalesce(name, device_id) AS name, name_skeleton FROM issuances ORDER BY seq').iterate()) {
      if (typeof r.name !== 'string' || r.name_skeleton !== nameSkeleton(r.name)) yield r.seq;
    }
  }

  /** Names of different devices that look the same (issued before skeletons were kept): each goes on being its device's. */
  lookAlikeNames(limit = 20): Array<{ names: string[]; devices: string[] }> {
    if (!this.hasSkeletons()) return [];
    return this.db
      .prepare<[number], { names: string; devices: string }>(
        `SELECT json_group_array(DISTINCT coalesce(name, device_id)) AS names, json_group_array(DISTINCT device_id) AS devices
           FROM issuances GROUP BY name_skeleton HAVING count(DISTINCT device_id) > 1 LIMIT ?`,
      )
      .all(limit)
      .map((r) => ({ names: JSON.parse(r.names) as string[], devices: JSON.parse(r.devices) as string[] }));
  }

  /** The batches table against its export events (part of projectionProblems too). */
  batchProblems(): ProjectionProblem[] {
    return batchProblems(this.db);
  }

  /** The policy state tables against the events they project (projections.ts). */
  projectionProblems(): ProjectionProblem[] {
    return projectionProblems(this.db);
  }

  allBatches(): Batch[] {
    return this.q.allBatches.all().map(toBatch);
  }

  *eventsSince(seq: number): IterableIterator<LedgerEvent> {
    for (const r of this.q.eventsSince.iterate(seq)) yield toEvent(r);
  }

  /** Another device that has `name` (or one that looks the same) as its name, or `name` as its id, if any: a name is one device's in the device cloud. */
  nameHolder(name: string, deviceId: string, skeleton = nameSkeleton(name)): NameHolder | undefined {
    const r = this.q.nameTaken.get({ n: name, s: skeleton, d: deviceId });
    return r && { deviceId: r.device_id, name: r.name };
  }

  /** The issuance with this serial, given in any form (case, colons, leading zeros). */
  findBySerial(serial: string): Issuance | undefined {
    const row = this.q.bySerial.get(serialKey(serial));
    return row ? toIssuance(row) : undefined;
  }

  /** Every issuance of one device id, oldest first. */
  issuancesOf(deviceId: string): Issuance[] {
    return this.q.byDevice.all(deviceId).map(toIssuance);
  }

  deviceContext(deviceId: string, publicKeySha256?: string): DeviceContext {
    const r = this.q.context.get({ id: deviceId, k: publicKeySha256 ?? null })!;
    this.checkDevicePolicy(deviceId, r.revoked_reason !== null, r.granted === 1);
    return {
      currentKey: r.key ?? undefined,
      revoked: r.revoked_reason !== null ? { reason: r.revoked_reason, at: r.revoked_at! } : undefined,
      reissueAllowed: r.granted === 1,
      newestSeq: r.newest ?? undefined,
      keySeq: r.key_seq ?? undefined,
    };
  }

  /** Every issuance's CSR hash and device id, one row at a time (what the serving ledger's SeenFilters start from). */
  *issuanceKeys(): IterableIterator<[csrSha256: string, deviceId: string, nameSkeleton: string | null]> {
    yield* this.q.keys.iterate();
  }

  grantReissue(deviceId: string, reason: string, operator?: string | null): void {
    this.committed(() => this.db.transaction(() => {
      this.guardSchema();
      if (!this.q.newestOfDevice.get(deviceId)) {
        throw new LineSignerError('USAGE', `device ${deviceId} has no certificate in this ledger; a re-issue is for a device that has one`);
      }
      this.q.insertGrant.run(deviceId, new Date().toISOString(), reason);
      this.appendEvent({ kind: 'reissue_granted', deviceId, message: reason, operator: operator ?? null });
    }).immediate());
  }

  issuedCount(): number {
    return this.q.count.get()!.n ?? 0;
  }

  /** The synchronous commit: on this thread, durable when it returns. */
  appendIssuance(entry: NewIssuance, guard?: CommitGuard): Issuance {
    try {
      return this.insertIssuance(entry, guard);
    } catch (err) {
      throw this.commitError(err);
    }
  }

  private commitError(err: unknown): LineSignerError {
    if (err instanceof LineSignerError) return err;
    const full = (err as { code?: string }).code === 'SQLITE_FULL';
    return new LineSignerError(
      'INTERNAL',
      full ? `the ledger's disk is full (${this.db.name}): nothing issued; free space there and the station goes on by itself` : `ledger commit failed, nothing issued: ${(err as Error).message}`,
      { cause: err },
    );
  }

  /**
   * Group commit: every write ready at the same moment in one transaction,
   * one disk flush. Each write runs in a savepoint of its own, so one that
   * its re-checks refuse takes nothing else with it; none is durable, and
   * none is answered, before the group's commit is.
   */
  commitGroup(writes: readonly GroupWrite[]): GroupResult[] {
    const run = (w: GroupWrite): unknown => {
      if (w.op === 'issuance') {
        // The events an issuance writes in its own transaction (reissue_used) go back with it: the serving
        // station's checkpoint vouches only for rows it knows it wrote.
        const before = this.lastEvent;
        const row = this.insertIssuance(w.entry, w.guard);
        return this.lastEvent !== before && this.lastEvent ? { ...row, sideEvent: this.lastEvent } : row;
      }
      if (w.op === 'event') {
        this.insertEvent(w.event);
        return this.lastEvent;
      }
      return this.recordCheckpoint(w.checkpoint);
    };
    try {
      return this.committed(() => this.db
        .transaction(() => {
          this.guardSchema();
          return writes.map((w): GroupResult => {
            try {
              return { ok: true, result: run(w) };
            } catch (err) {
              return { ok: false, error: this.commitError(err) };
            }
          });
        })
        .immediate());
    } catch (err) {
      const e = this.commitError(err);
      return writes.map(() => ({ ok: false, error: e }));
    }
  }

  /** Appends one event; returns its seq. */
  appendEvent(event: NewEvent): number {
    return this.insertEvent(event);
  }

  async recordIssuance(entry: NewIssuance, hint?: { guard?: CommitGuard }): Promise<Issuance> {
    return this.appendIssuance(entry, hint?.guard);
  }

  async recordEvent(event: NewEvent): Promise<void> {
    this.appendEvent(event);
  }

  *since(seq: number): IterableIterator<Issuance> {
    for (const row of this.q.since.iterate(seq)) yield toIssuance(row);
  }

  verifyChain(check?: (row: Issuance) => string | null): ChainProblem | null {
    for (const step of this.chainWalk(check)) if (step) return step;
    return null;
  }

  /**
   * The same walk, letting the thread go every `rowsAWhile` rows: for a
   * serving station's export, on a connection of its own, so that a
   * million rows do not hold the links' thread for seconds.
   */
  async verifyChainYielding(rowsAWhile = 500): Promise<ChainProblem | null> {
    let n = 0;
    for (const step of this.chainWalk()) {
      if (step) return step;
      if (++n % rowsAWhile === 0) await new Promise((r) => setImmediate(r));
    }
    return null;
  }

  /** Both chains row by row: null after each row that checks, the problem where one does not (and no further). */
  private *chainWalk(check?: (row: Issuance) => string | null): Generator<ChainProblem | null> {
    let prev = GENESIS_HASH;
    let expectSeq = 1;
    for (const row of this.q.since.iterate(0)) {
      if (row.seq !== expectSeq) return yield { table: 'issuances', seq: row.seq, reason: `seq ${expectSeq} is missing` };
      if (issuanceHash(prev, toIssuance(row)) !== row.entry_hash) {
        return yield { table: 'issuances', seq: row.seq, reason: 'entry_hash does not match the row and the previous hash' };
      }
      const why = check?.(toIssuance(row));
      if (why) return yield { table: 'issuances', seq: row.seq, reason: why };
      prev = row.entry_hash;
      expectSeq++;
      yield null;
    }
    prev = GENESIS_HASH;
    expectSeq = 1;
    for (const row of this.q.allEvents.iterate()) {
      if (row.seq !== expectSeq) return yield { table: 'events', seq: row.seq, reason: `event seq ${expectSeq} is missing` };
      if (eventHash(prev, toEvent(row)) !== row.entry_hash) {
        return yield { table: 'events', seq: row.seq, reason: 'entry_hash does not match the row and the previous hash' };
      }
      prev = row.entry_hash;
      expectSeq++;
      yield null;
    }
  }

  /** Issuances first..last, in order, one row in memory at a time. */
  *range(first: number, last: number): IterableIterator<Issuance> {
    for (const row of this.q.range.iterate(first, last)) yield toIssuance(row);
  }

  *eventsOfKind(kind: EventKind, first: number, last: number): IterableIterator<LedgerEvent> {
    for (const row of this.q.eventsOfKind.iterate(kind, first, last)) yield toEvent(row);
  }

  hasEventsOfKind(kind: EventKind, first: number, last: number): boolean {
    return this.q.anyEventOfKind.get(kind, first, last)!.n === 1;
  }

  maxEventSeq(): number {
    return this.q.maxEventSeq.get()!.n ?? 0;
  }

  /** entry_hash of issuance `seq`; the genesis hash for seq 0. */
  entryHashAt(seq: number): string {
    const hash = this.entryHashAtOrNull(seq);
    if (hash === null) throw new LineSignerError('LEDGER', `no issuance with seq ${seq}`);
    return hash;
  }

  lastBatch(): Batch | undefined {
    const r = this.q.lastBatch.get();
    return r ? toBatch(r) : undefined;
  }

  batch(n: number): Batch | undefined {
    const r = this.q.batch.get(n);
    return r ? toBatch(r) : undefined;
  }

  /** `certificatesSha256`: of the batch's certificates line, so that verify can tell a renewed certificate from a changed batch. */
  recordBatch(b: Batch, operator?: string | undefined, certificatesSha256?: string): void {
    this.q.insertBatch.run({
      number: b.number,
      first_seq: b.firstSeq,
      last_seq: b.lastSeq,
      first_event_seq: b.firstEventSeq,
      last_event_seq: b.lastEventSeq,
      created_at: b.createdAt,
      previous_sha256: b.previousSha256,
      signature: Buffer.from(b.signature),
      file_sha256: b.fileSha256,
    });
    const certificates = certificatesSha256 ? `, certificates sha256 ${certificatesSha256}` : '';
    this.appendEvent({ kind: 'export', message: `batch ${b.number}: seq ${b.firstSeq}-${b.lastSeq}, sha256 ${b.fileSha256}${certificates}`, operator: operator ?? null });
  }

  /**
   * A revocation: the device id (or the device of a serial) gets no
   * certificate until a re-issue grant, the next export carries the mark,
   * and sync deletes the device. Refused for an id the ledger never issued.
   */
  revoke(deviceOrSerial: string, reason: string, operator?: string | null): string {
    return this.committed(() => this.db.transaction(() => {
      this.guardSchema();
      let deviceId = deviceOrSerial;
      if (!this.q.newestOfDevice.get(deviceId)) {
        const bySerial = this.findBySerial(deviceOrSerial);
        if (!bySerial) throw new LineSignerError('USAGE', `no device id or serial ${deviceOrSerial} in this ledger; nothing revoked`);
        deviceId = bySerial.deviceId;
      }
      if (this.q.revokedRow.get(deviceId)) throw new LineSignerError('USAGE', `device ${deviceId} is revoked already`);
      const seq = this.appendEvent({ kind: 'revocation', deviceId, message: reason, operator: operator ?? null });
      this.q.insertRevoked.run({ device_id: deviceId, event_seq: seq, reason, at: new Date().toISOString() });
      this.q.deleteGrant.run(deviceId);
      return deviceId;
    }).immediate());
  }

  stats(): LedgerStats {
    const rejectedByCode: Record<string, number> = {};
    for (const r of this.q.rejected.all()) rejectedByCode[r.code] = r.n;

    const last = this.q.lastIssuance.get();
    return {
      issued: this.issuedCount(),
      rejectedByCode,
      replays: this.q.replays.get()!.n,
      lastIssuance: last ? toIssuance(last) : undefined,
    };
  }

  /**
   * A copy of the ledger as this connection sees it, into `dest` (which
   * must not exist): the file this connection opened, even after its path
   * was deleted or another file was moved over it.
   */
  async copyTo(dest: string): Promise<void> {
    if (existsSync(dest)) throw new LineSignerError('LEDGER', `${dest} exists; a copy never overwrites a file`);
    await this.db.backup(dest);
  }

  /**
   * Writes the WAL into the file this connection opened and empties it. At
   * a stop after the file was deleted or moved, SQLite leaves its WAL at the
   * path (it does not delete a moved file's WAL); a file moved in there
   * would take those pages as its own.
   */
  emptyWal(): boolean {
    const [r] = this.db.pragma('wal_checkpoint(TRUNCATE)') as Array<{ busy: number; log: number; checkpointed: number }>;
    return r !== undefined && r.busy === 0 && r.log === r.checkpointed;
  }

  close(): void {
    this.db.close();
  }
}
