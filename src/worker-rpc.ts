/**
 * Calls into a worker thread, each answered once by ID: what the signing
 * worker and the ledger writer share. The worker does not keep the process
 * alive while nothing is pending; when it dies, every call in flight fails
 * with the error the owner chooses, and `dead` says why.
 */
import { Worker } from 'node:worker_threads';
import { LineSignerError, type ErrorCode } from './errors.js';

export type RpcReply = { id: number; result?: unknown } | { id: number; error: { code: string; message: string } };

export class WorkerRpc {
  private worker: Worker | null = null;
  private nextId = 1;
  private readonly pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  dead: string | null = null;

  constructor(
    private readonly url: URL,
    private readonly workerData: unknown,
    private readonly onDeath: (why: string) => LineSignerError,
    /** Start again on the next call after a death (the signer), or stay dead (the ledger). */
    private readonly restart: boolean,
  ) {}

  get idle(): boolean {
    return this.pending.size === 0 && this.dead === null;
  }

  /** Calls waiting for their answer. */
  get waiting(): number {
    return this.pending.size;
  }

  start(): Worker {
    const worker = new Worker(this.url, { workerData: this.workerData });
    worker.on('message', (reply: RpcReply) => {
      const p = this.pending.get(reply.id);
      if (!p) return;
      this.pending.delete(reply.id);
      if (this.pending.size === 0) worker.unref();
      if ('error' in reply) p.reject(new LineSignerError(reply.error.code as ErrorCode, reply.error.message));
      else p.resolve(reply.result);
    });
    const fail = (why: string): void => {
      if (this.worker !== worker) return;
      this.worker = null;
      if (!this.restart) this.dead = why;
      for (const p of this.pending.values()) p.reject(this.onDeath(why));
      this.pending.clear();
    };
    worker.on('error', (err) => fail(err.message));
    worker.on('exit', (code) => fail(`exit ${code}`));
    worker.unref();
    this.worker = worker;
    this.dead = null;
    return worker;
  }

  call<T>(msg: Record<string, unknown>): Promise<T> {
    if (this.dead) return Promise.reject(this.onDeath(this.dead));
    const worker = this.worker ?? this.start();
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject });
      if (this.pending.size === 1) worker.ref();
      worker.postMessage({ id, ...msg });
    });
  }

  async stop(): Promise<void> {
    const w = this.worker;
    this.worker = null;
    this.dead ??= 'stopped';
    if (w) await w.terminate();
  }
}
