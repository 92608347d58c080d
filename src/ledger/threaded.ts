/**
 * The ledger a serving station uses: reads on this thread's connection
 * (WAL lets them run beside a writer). A write for a lone request (the
 * `alone` hint) while the writer thread is idle is committed right here: it
 * should not pay two thread hops for its disk flush. Under load, writes go to the writer thread
 * (writer-worker.ts) in the order they were asked for, so the flush of one
 * certificate never holds up the next one's parsing. An idle writer holds
 * no lock, and an inline commit finishes before anything more is posted.
 */
import { Worker } from 'node:worker_threads';
import { LineSignerError, type ErrorCode } from '../errors.js';
import { SqliteLedger, type ChainProblem, type DeviceContext, type Issuance, type Ledger, type LedgerStats, type NewEvent, type NewIssuance } from './index.js';
import type { WriterReply } from './writer-worker.js';

export class ThreadedLedger implements Ledger {
  private readonly reader: SqliteLedger;
  private readonly worker: Worker;
  private nextId = 1;
  private readonly pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  private dead: string | null = null;

  constructor(path: string, stationId: string) {
    // Opening here first runs the migrations before the writer starts.
    this.reader = new SqliteLedger(path, stationId);
    this.worker = new Worker(new URL('./writer-worker.js', import.meta.url), { workerData: { path, stationId } });
    this.worker.on('message', (reply: WriterReply) => {
      const p = this.pending.get(reply.id);
      if (!p) return;
      this.pending.delete(reply.id);
      if (this.pending.size === 0) this.worker.unref();
      if ('error' in reply) p.reject(new LineSignerError(reply.error.code as ErrorCode, reply.error.message));
      else p.resolve(reply.result);
    });
    const fail = (why: string): void => {
      this.dead = why;
      for (const p of this.pending.values()) p.reject(new LineSignerError('INTERNAL', `ledger writer stopped (${why}); nothing issued`));
      this.pending.clear();
    };
    this.worker.on('error', (err) => fail(err.message));
    this.worker.on('exit', (code) => fail(`exit ${code}`));
    this.worker.unref();
  }

  private call<T>(msg: Record<string, unknown>): Promise<T> {
    if (this.dead) return Promise.reject(new LineSignerError('INTERNAL', `ledger writer stopped (${this.dead}); nothing issued`));
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject });
      if (this.pending.size === 1) this.worker.ref();
      this.worker.postMessage({ id, ...msg });
    });
  }

  private get writerIdle(): boolean {
    return this.pending.size === 0 && !this.dead;
  }

  async recordIssuance(entry: NewIssuance, hint?: { alone?: boolean }): Promise<Issuance> {
    if (hint?.alone && this.writerIdle) return this.reader.appendIssuance(entry);
    const row = await this.call<Issuance>({ op: 'issuance', entry });
    return { ...row, certificate: new Uint8Array(row.certificate) };
  }

  async recordEvent(event: NewEvent, hint?: { alone?: boolean }): Promise<void> {
    if (hint?.alone && this.writerIdle) return this.reader.appendEvent(event);
    return this.call<void>({ op: 'event', event });
  }

  findByCsrHash(csrSha256: string): Issuance | undefined {
    return this.reader.findByCsrHash(csrSha256);
  }
  deviceContext(deviceId: string): DeviceContext {
    return this.reader.deviceContext(deviceId);
  }
  deviceKeys(deviceId: string): string[] {
    return this.reader.deviceKeys(deviceId);
  }
  reissueAllowed(deviceId: string): boolean {
    return this.reader.reissueAllowed(deviceId);
  }
  grantReissue(deviceId: string, reason: string): void {
    this.reader.grantReissue(deviceId, reason);
  }
  issuedCount(): number {
    return this.reader.issuedCount();
  }
  lastIssuedAt(): Date | undefined {
    return this.reader.lastIssuedAt();
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
    if (!this.dead) await this.call({ op: 'close' }).catch(() => undefined);
    await this.worker.terminate();
    this.reader.close();
  }
}
