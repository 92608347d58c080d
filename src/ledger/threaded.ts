/**
 * The ledger a serving station uses: reads on this thread's connection
 * (WAL lets them run beside a writer). A write for a lone request (the
 * `alone` hint) while the writer thread is idle is committed right here: it
 * should not pay two thread hops for its disk flush. Under load, writes go to the writer thread
 * (writer-worker.ts) in the order they were asked for, so the flush of one
 * certificate never holds up the next one's parsing. An idle writer holds
 * no lock, and an inline commit finishes before anything more is posted.
 *
 * A CSR hash or device id this ledger never held is known from memory
 * (SeenFilter): a new device's request reads nothing from SQLite. That is
 * safe only while this process is the ledger's one writer (the serve lock):
 * every issuance goes through recordIssuance here, and a revocation or a
 * re-issue grant needs an issuance of the device first.
 */
import { constants, copyFileSync, renameSync, rmSync, statSync, type Stats } from 'node:fs';
import Database from 'better-sqlite3';
import { LineSignerError } from '../errors.js';
import { WorkerRpc } from '../worker-rpc.js';
import { nameSkeleton, quote } from '../text.js';
import { SeenFilter } from './seen.js';
import { chainProblemText, isDamagedFileError, rowsWrittenHere, SqliteLedger, UNKNOWN_DEVICE, type Heads, type ChainProblem, type CommitGuard, type DeviceContext, type Issuance, type Ledger, type LedgerStats, type NewEvent, type NewIssuance, type StationContext, type Checkpoint, type TokenCheckpoint, type NameHolder } from './index.js';

const sameHeads = (a: Heads, b: Heads): boolean =>
  a.issuanceSeq === b.issuanceSeq && a.issuanceHash === b.issuanceHash && a.eventSeq === b.eventSeq && a.eventHash === b.eventHash;

/**
 * An inline commit slower than this means the disk is busy: most of the 20 ms a PING may take. (At 5 ms,
 * one of two one-link profile runs on this VM tripped it on a 5.7 ms commit and lost its inline commits.)
 */
const SLOW_COMMIT_HERE_MS = 15;
/** Then, and after a backup or export, commits go through the writer thread for this long. */
const WRITER_ONLY_MS = 10_000;

export class ThreadedLedger implements Ledger {
  private readonly reader: SqliteLedger;
  private readonly writer: WorkerRpc;
  /** Null unless this process is the ledger's one writer and serves. */
  private readonly seen: { csrs: SeenFilter; devices: SeenFilter; names: SeenFilter } | null;

  /**
   * The heads this station vouches for: the file's as its start accepted them, then each checkpoint
   * it signed; every row after them must be its own. Null until acceptFile() (a process sharing the
   * file without the lock, tests racing two writers, checks nothing).
   */
  private vouched: Heads | null = null;
  /** The file's newest checkpoint as this station last left it: n and heads. */
  private newestCheckpoint: (Heads & { n: number }) | null = null;
  /** Why the file is no longer this station's alone, once found: sticky, nothing more is issued or checkpointed. */
  private foreign: string | null = null;
  /** When (performance.now()) foreignWrites last ran: a checkpoint's, or fileProblem's. */
  private ownRowsLookedAt = 0;
  /** The file the path named when the start accepted it (acceptFile). */
  private identity: { dev: number; ino: number; ledgerId: string } | null = null;
  /** Large files being written beside the ledger now (whileDiskBusy). */
  private bulkWrites = 0;
  /** Until then (performance.now()) no commit flushes on this thread: the disk was slow or busy. */
  private hereOffUntil = 0;
  private readonly slowCommitHereMs: number;

  /** `knownFromMemory`: only for the ledger's one writer, and worth its fill (about a second per million issuances) only for a station that serves. */
  constructor(
    private readonly path: string,
    private readonly stationId: string,
    opts: { knownFromMemory: boolean; slowCommitHereMs?: number | undefined },
  ) {
    this.slowCommitHereMs = opts.slowCommitHereMs ?? SLOW_COMMIT_HERE_MS;
    // Opening here first runs the migrations before the writer starts.
    this.reader = new SqliteLedger(path, stationId);
    this.seen = opts.knownFromMemory ? { csrs: new SeenFilter(), devices: new SeenFilter(), names: new SeenFilter() } : null;
    if (this.seen) {
      for (const [csrSha256, deviceId, skeleton] of this.reader.issuanceKeys()) {
        this.seen.csrs.add(csrSha256);
        this.seen.devices.add(deviceId);
        if (skeleton !== null) this.seen.names.add(skeleton);
      }
    }
    this.writer = new WorkerRpc(
      new URL('./writer-worker.js', import.meta.url),
      { path, stationId },
      (why) => new LineSignerError('INTERNAL', `ledger writer stopped (${why}); nothing issued`),
      false,
    );
    this.writer.start();
  }

  /**
   * Whether a lone request's commit may flush on this thread (the links'):
   * the writer idle, and the disk not busy. A flush waits behind whatever
   * else the disk is writing: during a 26 MB backup a lone commit here
   * took 20-45 ms, and every PING on every link waited with it.
   */
  private mayCommitHere(): boolean {
    return this.writer.idle && this.bulkWrites === 0 && performance.now() >= this.hereOffUntil;
  }

  /** Runs an inline commit; one that was slow sends the next ones through the writer for a while. */
  private timedHere<T>(commit: () => T): T {
    const t0 = performance.now();
    try {
      return commit();
    } finally {
      if (performance.now() - t0 > this.slowCommitHereMs) this.hereOffUntil = performance.now() + WRITER_ONLY_MS;
    }
  }

  /**
   * While `work` writes a large file beside the ledger (a backup, an
   * export), and for a while after it (the kernel still flushes its pages),
   * every commit goes through the writer thread.
   */
  async whileDiskBusy<T>(work: () => Promise<T>): Promise<T> {
    this.bulkWrites++;
    try {
      return await work();
    } finally {
      this.bulkWrites--;
      this.hereOffUntil = Math.max(this.hereOffUntil, performance.now() + WRITER_ONLY_MS);
    }
  }

  async recordIssuance(entry: NewIssuance, hint?: { alone?: boolean; guard?: CommitGuard }): Promise<Issuance> {
    // Before the commit: a lookup made while it is on its way reads SQLite (and the station's in-flight overlay); one that fails leaves a harmless "maybe".
    this.seen?.csrs.add(entry.csrSha256);
    this.seen?.devices.add(entry.deviceId);
    this.seen?.names.add(nameSkeleton(entry.name ?? entry.deviceId));
    if (this.foreign) throw new LineSignerError('LEDGER', `${this.foreign}; nothing issued: stop the station and run \`line-signer ledger verify\``);
    if (hint?.alone && this.mayCommitHere()) return this.timedHere(() => this.reader.appendIssuance(entry, hint.guard));
    const { sideEvent, ...row } = await this.writer.call<Issuance & { sideEvent?: { seq: number; hash: string } }>({ op: 'issuance', entry, guard: hint?.guard });
    // Written in the writer thread: noted here, where the checkpoint looks (rowsWrittenHere).
    const written = rowsWrittenHere(this.path);
    written.issuances.set(row.seq, row.entryHash);
    if (sideEvent) written.events.set(sideEvent.seq, sideEvent.hash);
    return { ...row, certificate: new Uint8Array(row.certificate) };
  }

  async recordEvent(event: NewEvent, hint?: { alone?: boolean }): Promise<void> {
    if (hint?.alone && this.mayCommitHere()) {
      this.timedHere(() => this.reader.appendEvent(event));
      return;
    }
    const e = await this.writer.call<{ seq: number; hash: string }>({ op: 'event', event });
    rowsWrittenHere(this.path).events.set(e.seq, e.hash);
  }

  /**
   * What in the file this station did not write since the newest checkpoint
   * it signed, or null. The next checkpoint would otherwise sign it as the
   * station's own: a chain edited and recomputed from a revocation on, the
   * newest rows deleted, the checkpoints table emptied (the next
   * checkpoint then covered the whole forged chain), a correctly hashed
   * re-issue grant appended with its table row.
   */
  foreignWrites(): string | null {
    const base = this.vouched;
    if (!base) return null;
    const last = this.reader.lastCheckpoint();
    const known = this.newestCheckpoint;
    if ((last?.n ?? 0) !== (known?.n ?? 0) || (last && known && !sameHeads(last, known))) return 'the newest checkpoint in the ledger file is not the one this station left there';
    if (this.reader.entryHashAtOrNull(base.issuanceSeq) !== base.issuanceHash || this.reader.eventHashAt(base.eventSeq) !== base.eventHash) {
      return 'rows this station had vouched for were changed or deleted';
    }
    const written = rowsWrittenHere(this.path);
    const newest = (m: Map<number, string>, from: number): number => {
      let n = from;
      for (const q of m.keys()) if (q > n) n = q;
      return n;
    };
    const to = { issuanceSeq: newest(written.issuances, base.issuanceSeq), eventSeq: newest(written.events, base.eventSeq) };
    const rows = this.reader.rowsBetween(base, to);
    // A row not noted yet may be the writer thread's, committed and its answer still on the way
    // (an operator's row written on this thread just after it is noted at once): foreign only
    // once no write of the station's is on the way. Never vouched for until then (frontier).
    const idle = this.writer.idle;
    for (const [table, list, mine] of [['issuance', rows.issuances, written.issuances], ['event', rows.events, written.events]] as const) {
      for (const r of list) {
        const h = mine.get(r.seq);
        if (h === undefined ? idle : h !== r.entry_hash) return `${table} seq ${r.seq} is not a row this station wrote`;
      }
    }
    // Seqs run without gaps: fewer rows than that is rows this station wrote, deleted.
    if (rows.issuances.length !== to.issuanceSeq - base.issuanceSeq || rows.events.length !== to.eventSeq - base.eventSeq) return 'rows this station wrote since its newest checkpoint are gone';
    // With no write of its own on the way, nothing may follow them.
    if (idle) {
      const h = this.reader.heads();
      if (h.issuanceSeq > to.issuanceSeq) return `issuance seq ${to.issuanceSeq + 1} is not a row this station wrote`;
      if (h.eventSeq > to.eventSeq) return `event seq ${to.eventSeq + 1} is not a row this station wrote`;
    }
    return null;
  }

  /**
   * The heads this station vouches for now: from its newest checkpoint, as far as every row is one it
   * noted as its own (a row whose answer is still on its way, or one not yet judged, ends it).
   */
  frontier(): Heads {
    const base = this.vouched!;
    const written = rowsWrittenHere(this.path);
    const run = (mine: Map<number, string>, seq: number, hash: string): [number, string] => {
      for (let next = mine.get(seq + 1); next !== undefined; next = mine.get(seq + 1)) {
        seq++;
        hash = next;
      }
      return [seq, hash];
    };
    const [issuanceSeq, issuanceHash] = run(written.issuances, base.issuanceSeq, base.issuanceHash);
    const [eventSeq, eventHash] = run(written.events, base.eventSeq, base.eventHash);
    return { issuanceSeq, issuanceHash, eventSeq, eventHash };
  }

  /** Everything in the file now is what a start checked and accepted: from here on, rows are this station's or foreign. */
  acceptFile(): void {
    const st = statSync(this.path);
    this.identity = { dev: st.dev, ino: st.ino, ledgerId: this.reader.ledgerId() };
    this.vouched = this.reader.heads();
    const last = this.reader.lastCheckpoint();
    this.newestCheckpoint = last ? { n: last.n, issuanceSeq: last.issuanceSeq, issuanceHash: last.issuanceHash, eventSeq: last.eventSeq, eventHash: last.eventHash } : null;
  }

  /**
   * Whether the path still names the file this station opened, or why not:
   * the file deleted (its connections go on writing a file no path names,
   * lost at the stop), or another moved over it (the operator's commands
   * and a backup, which open the path, would read and write that one),
   * another's content copied into it ('overwritten'), or rows in it this
   * station did not write ('foreign', see foreignWrites: an older copy of
   * the same ledger copied over it, an edit). Null before acceptFile().
   */
  fileProblem(): { kind: 'deleted' | 'moved' | 'overwritten' | 'foreign'; text: string } | null {
    if (!this.identity) return null;
    if (this.foreign) return { kind: 'foreign', text: this.foreign };
    let st: Stats;
    try {
      st = statSync(this.path);
    } catch {
      return { kind: 'deleted', text: `the ledger file ${this.path} was deleted while this station had it open` };
    }
    if (st.dev !== this.identity.dev || st.ino !== this.identity.ino) {
      return { kind: 'moved', text: `the ledger file ${this.path} was replaced by another file while this station had it open (a file moved over it)` };
    }
    // cp writes another file's content into the same inode: the ledger's id, read through the path on a
    // connection of its own, says whose file it is now (a busy file is looked at again next time).
    const overwritten = { kind: 'overwritten' as const, text: `the ledger file ${this.path} was overwritten with another file's content while this station had it open (a file copied over it)` };
    let id: string | null;
    try {
      const look = new Database(this.path, { readonly: true, fileMustExist: true });
      try {
        id = (look.prepare("SELECT value FROM settings WHERE key = 'ledger_id'").get() as { value: string } | undefined)?.value ?? null;
      } finally {
        look.close();
      }
    } catch (err) {
      // Only a file SQLite finds is not this one (damaged: an older copy's pages beside this station's WAL);
      // anything else (busy, out of file handles) is looked at again next time.
      if (!isDamagedFileError(err)) return null;
      id = null;
    }
    if (id !== this.identity.ledgerId) return overwritten;
    // The same ledger's older copy copied over it reads with the same id: the rows this station vouches for tell.
    // Under load a checkpoint looks every second (assertOwn); an idle station, with none to take, looks here.
    if (performance.now() - this.ownRowsLookedAt < 1500) return null;
    try {
      this.ownRowsLookedAt = performance.now();
      const why = this.foreignWrites();
      if (why) this.foreign = `the ledger file was changed outside line-signer while this station had it: ${why}`;
    } catch (err) {
      if (isDamagedFileError(err)) return overwritten;
      return null;
    }
    return this.foreign ? { kind: 'foreign', text: this.foreign } : null;
  }

  /**
   * The ledger as this station wrote it, into `dest` (see SqliteLedger.copyTo);
   * then its WAL is emptied into the file it opened (see SqliteLedger.emptyWal).
   */
  async saveTo(dest: string): Promise<string | null> {
    await this.reader.copyTo(dest);
    let emptied = false;
    try {
      emptied = this.reader.emptyWal();
    } catch {
      // a full disk: the file cannot take the WAL's pages
    }
    if (emptied) return null;
    // Moved aside, so that no file at the path takes its pages; the copy holds everything in it.
    try {
      renameSync(`${this.path}-wal`, `${dest}-wal-left`);
      return `the station's WAL could not be emptied, so it was moved from ${this.path}-wal to ${dest}-wal-left (the saved copy holds everything in it)`;
    } catch (err) {
      return `the station's WAL could not be emptied or moved (${(err as Error).message}): move ${this.path}-wal away before the file at ${this.path} is opened, or SQLite plays it into that file`;
    }
  }

  /** Throws when the file holds what this station did not write (foreignWrites); sticky. */
  private assertOwn(): void {
    if (!this.foreign) {
      this.ownRowsLookedAt = performance.now();
      const why = this.foreignWrites();
      if (why) this.foreign = `the ledger file was changed outside line-signer while this station had it: ${why}`;
    }
    if (this.foreign) throw new LineSignerError('LEDGER', `${this.foreign}; no checkpoint signed, nothing more issued: stop the station and run \`line-signer ledger verify\``);
  }

  /**
   * Before an export through the serving station signs a batch: the rows are
   * all this station's since its last checkpoint, and the whole file is what
   * a start would accept (every chain recomputed, the policy tables as the
   * events say). Edits made while it serves would otherwise reach a signed
   * batch, and sync, before the next start refuses them.
   */
  /**
   * What an export through the serving station may take, and its last look before the batch is
   * recorded and named: the rows up to these heads are still the ones this station vouched for (an
   * edit made while the batch was written would otherwise go into it).
   */
  exportBound(): { upTo: Heads; stillOwn: () => void } {
    const upTo = this.frontier();
    return {
      upTo,
      stillOwn: () => {
        this.assertOwn();
        if (this.reader.entryHashAtOrNull(upTo.issuanceSeq) !== upTo.issuanceHash || this.reader.eventHashAt(upTo.eventSeq) !== upTo.eventHash) {
          this.foreign = 'the ledger file was changed outside line-signer while this station had it: rows of the batch being exported were changed';
          throw new LineSignerError('EXPORT', `${this.foreign}; nothing exported`);
        }
      },
    };
  }

  async checkBeforeExport(): Promise<void> {
    this.assertOwn();
    // On a read connection of its own, letting the links' thread go every 500 rows (1.7 s per 100,000 in one piece).
    const look = new SqliteLedger(this.path, this.stationId, { readonly: true });
    let broken: ChainProblem | null;
    try {
      broken = await look.verifyChainYielding();
    } finally {
      look.close();
    }
    if (broken) throw new LineSignerError('EXPORT', `${chainProblemText(this.path, broken)}; nothing exported`);
    const edited = this.reader.projectionProblems();
    if (edited.length > 0) throw new LineSignerError('EXPORT', `${this.path}: ${edited[0]!.table} ${quote(String(edited[0]!.key))}: ${edited[0]!.reason}; the file was changed outside line-signer; nothing exported`);
  }

  stationContext(now: Date, minuteCap?: number): StationContext {
    return this.reader.stationContext(now, minuteCap);
  }

  nameHolder(name: string, deviceId: string, skeleton = nameSkeleton(name)): NameHolder | undefined {
    // A name is held by a device whose name looks the same, or whose id it is: neither ever seen, nobody holds it.
    if (this.seen && !this.seen.names.mayHave(skeleton) && !this.seen.devices.mayHave(name)) return undefined;
    return this.reader.nameHolder(name, deviceId, skeleton);
  }

  checkAgainstToken(tc: TokenCheckpoint): string | null {
    return this.reader.checkAgainstToken(tc);
  }

  ledgerId(): string {
    return this.reader.ledgerId();
  }

  heads(): ReturnType<SqliteLedger['heads']> {
    return this.reader.heads();
  }

  replayBaseToWrite(): string | null {
    return this.reader.replayBaseToWrite();
  }

  newestStationId(): string | null {
    return this.reader.newestStationId();
  }

  operatorEventsAfter(eventSeq: number): ReturnType<SqliteLedger['operatorEventsAfter']> {
    return this.reader.operatorEventsAfter(eventSeq);
  }

  shapeProblems(opts?: { values?: boolean }): ReturnType<SqliteLedger['shapeProblems']> {
    return this.reader.shapeProblems(opts);
  }

  projectionProblems(): ReturnType<SqliteLedger['projectionProblems']> {
    return this.reader.projectionProblems();
  }

  lastCheckpoint(): ReturnType<SqliteLedger['lastCheckpoint']> {
    return this.reader.lastCheckpoint();
  }

  /** The next checkpoint to sign (reads on this thread): only over rows this station wrote. */
  prepareCheckpoint(reason: string, always = true): ReturnType<SqliteLedger['prepareCheckpoint']> {
    if (!this.vouched) return this.reader.prepareCheckpoint(reason, always);
    this.assertOwn();
    return this.reader.prepareCheckpoint(reason, always, this.frontier());
  }

  /** Stores a signed checkpoint through the writer, in order with the rows it covers. */
  async recordCheckpoint(c: Checkpoint): Promise<TokenCheckpoint> {
    const kept = await this.writer.call<TokenCheckpoint>({ op: 'checkpoint', checkpoint: c });
    if (this.vouched) {
      this.vouched = { issuanceSeq: c.issuanceSeq, issuanceHash: c.issuanceHash, eventSeq: c.eventSeq, eventHash: c.eventHash };
      this.newestCheckpoint = { n: c.n, ...this.vouched };
    }
    // What it covers needs no remembering.
    const written = rowsWrittenHere(this.path);
    for (const q of written.issuances.keys()) if (q <= c.issuanceSeq) written.issuances.delete(q);
    for (const q of written.events.keys()) if (q <= c.eventSeq) written.events.delete(q);
    return kept;
  }

  findByCsrHash(csrSha256: string): Issuance | undefined {
    if (this.seen && !this.seen.csrs.mayHave(csrSha256)) return undefined;
    const row = this.reader.findByCsrHash(csrSha256);
    // A replay's revocation and supersession checks ask for this device next: it must never read as unknown.
    if (row) this.seen?.devices.add(row.deviceId);
    return row;
  }
  deviceContext(deviceId: string, publicKeySha256?: string): DeviceContext {
    return this.seen && !this.seen.devices.mayHave(deviceId) ? UNKNOWN_DEVICE : this.reader.deviceContext(deviceId, publicKeySha256);
  }
  grantReissue(deviceId: string, reason: string): void {
    this.reader.grantReissue(deviceId, reason);
  }
  issuedCount(): number {
    return this.reader.issuedCount();
  }
  since(seq: number): IterableIterator<Issuance> {
    return this.reader.since(seq);
  }
  verifyChain(check?: (row: Issuance) => string | null): ChainProblem | null {
    return this.reader.verifyChain(check);
  }
  stats(): LedgerStats {
    return this.reader.stats();
  }

  async close(): Promise<void> {
    if (!this.writer.dead) await this.writer.call({ op: 'close' }).catch(() => undefined);
    await this.writer.stop();
    this.reader.close();
  }

  /**
   * close(), when the path's file holds content copied over this station's
   * (fileProblem 'overwritten'). SQLite's last close writes its WAL into the
   * file it opened, this station's pages over the copied content, a mix that
   * is no ledger (the next start said "malformed"). So that content is kept
   * aside first and put back once the connections are closed. Returns what
   * could not be done so, or null.
   */
  async closeLeavingFileAsFound(): Promise<string | null> {
    const stamp = new Date().toISOString().replace(/[:.]/g, '-');
    const aside = `${this.path}.as-found-${stamp}`;
    try {
      copyFileSync(this.path, aside, constants.COPYFILE_EXCL);
    } catch (err) {
      rmSync(aside, { force: true });
      await this.close();
      return `it could not be kept as found (${(err as Error).message}), so SQLite wrote this station's last pages into it at the close: it is no ledger now`;
    }
    await this.close();
    try {
      renameSync(aside, this.path);
    } catch (err) {
      return `it holds this station's last pages now; what was copied over it is kept as ${aside} (${(err as Error).message})`;
    }
    // The close left its WAL at the path when another process had the file open (no checkpoint then):
    // the next opener would play this station's pages into the content put back.
    const wal = `${this.path}-wal`;
    if ((statSync(wal, { throwIfNoEntry: false })?.size ?? 0) > 0) {
      try {
        renameSync(wal, `${this.path}.wal-of-stopped-station-${stamp}`);
      } catch (err) {
        return `move ${wal} away before the file is opened (it is this station's, not the file's: ${(err as Error).message})`;
      }
    }
    return null;
  }
}
