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
import { LineSignerError } from '../errors.js';
import { WorkerRpc } from '../worker-rpc.js';
import { nameSkeleton } from '../text.js';
import { SeenFilter } from './seen.js';
import { SqliteLedger, UNKNOWN_DEVICE, type ChainProblem, type CommitGuard, type DeviceContext, type Issuance, type Ledger, type LedgerStats, type NewEvent, type NewIssuance, type StationContext, type Checkpoint, type TokenCheckpoint, type NameHolder } from './index.js';

export class ThreadedLedger implements Ledger {
  private readonly reader: SqliteLedger;
  private readonly writer: WorkerRpc;
  /** Null unless this process is the ledger's one writer and serves. */
  private readonly seen: { csrs: SeenFilter; devices: SeenFilter; names: SeenFilter } | null;

  /** `knownFromMemory`: only for the ledger's one writer, and worth its fill (about a second per million issuances) only for a station that serves. */
  constructor(path: string, stationId: string, opts: { knownFromMemory: boolean }) {
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

  async recordIssuance(entry: NewIssuance, hint?: { alone?: boolean; guard?: CommitGuard }): Promise<Issuance> {
    // Before the commit: a lookup made while it is on its way reads SQLite (and the station's in-flight overlay); one that fails leaves a harmless "maybe".
    this.seen?.csrs.add(entry.csrSha256);
    this.seen?.devices.add(entry.deviceId);
    this.seen?.names.add(nameSkeleton(entry.name ?? entry.deviceId));
    if (hint?.alone && this.writer.idle) return this.reader.appendIssuance(entry, hint.guard);
    const row = await this.writer.call<Issuance>({ op: 'issuance', entry, guard: hint?.guard });
    return { ...row, certificate: new Uint8Array(row.certificate) };
  }

  async recordEvent(event: NewEvent, hint?: { alone?: boolean }): Promise<void> {
    if (hint?.alone && this.writer.idle) {
      this.reader.appendEvent(event);
      return;
    }
    await this.writer.call<void>({ op: 'event', event });
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

  /** The next checkpoint to sign (reads on this thread). */
  prepareCheckpoint(reason: string, always = true): ReturnType<SqliteLedger['prepareCheckpoint']> {
    return this.reader.prepareCheckpoint(reason, always);
  }

  /** Stores a signed checkpoint through the writer, in order with the rows it covers. */
  recordCheckpoint(c: Checkpoint): Promise<TokenCheckpoint> {
    return this.writer.call<TokenCheckpoint>({ op: 'checkpoint', checkpoint: c });
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
}
