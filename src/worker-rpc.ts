/**
 * Calls into a worker thread, each answered once by ID: what the signing
 * worker, the checking worker and the ledger writer share. The worker does
 * not keep the process alive while nothing is pending; when it dies, every
 * call in flight fails with the error the owner chooses, and `dead` says why.
 *
 * Calls made in the same turn travel as one message, and the worker's
 * answers made in one turn come back as one (serveRpc): under load a
 * thread is woken once for several requests, not once for each, and on a
 * two-core machine those wake-ups cost as much as the work.
 */
import { parentPort, Worker } from 'node:worker_threads';
import { asLineSignerError, LineSignerError, type ErrorCode } from './errors.js';

export type RpcReply = { id: number; result?: unknown } | { id: number; error: { code: string; message: string } };

export class WorkerRpc {
  private worker: Worker | null = null;
  private nextId = 1;
  private readonly pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  /** Calls of this turn, not yet posted (to the current worker). */
  private outbox: Array<Record<string, unknown>> = [];
  /** The calls posted to each live worker and not answered yet. */
  private readonly posted = new Map<Worker, Set<number>>();
  /** Calls the current worker was given. */
  private given = 0;
  /** The worker that takes over once it has loaded, started a tenth of `replaceAfter` calls before. */
  private successor: Worker | null = null;
  /** The successor has loaded (its first, empty message came). */
  private successorLoaded = false;
  dead: string | null = null;

  constructor(
    private readonly url: URL,
    private readonly workerData: unknown,
    private readonly onDeath: (why: string) => LineSignerError,
    /** Start again on the next call after a death (the signer), or stay dead (the ledger). */
    private readonly restart: boolean,
    /**
     * A stateless worker (a checking worker) is replaced by a fresh one
     * after this many calls; the old one ends once it has answered its
     * own. Each check leaves OpenSSL objects (a certificate, keys) behind
     * JavaScript wrappers that V8 counts as a few bytes: they outlive the
     * young generation and wait for a full collection that nothing
     * prompts. The station grew by 46 MB over 30,000 certificates, all of
     * it given back when its two checking workers ended. The fresh worker
     * is started a tenth of the way before (at most 1,000 calls) and takes
     * over at the first call after it has loaded (at the latest after
     * `replaceAfter` calls): no call waits for it to load (100-150 ms; the
     * calls in flight at a switch once did), and the two run side by side
     * only while it loads (they had for the whole tenth, 13-17 MB more RSS
     * for about 2 s of every 20 under load).
     */
    private readonly replaceAfter = 0,
  ) {}

  get idle(): boolean {
    return this.pending.size === 0 && this.dead === null;
  }

  /** Calls waiting for their answer. */
  get waiting(): number {
    return this.pending.size;
  }

  /** A fresh worker, the current one from now on (the ledger writer starts its own at once). */
  start(): Worker {
    const worker = this.spawn();
    this.worker = worker;
    this.given = 0;
    this.dead = null;
    return worker;
  }

  private spawn(): Worker {
    // A small young generation: a worker's garbage is short-lived messages. With
    // V8's default (16 MB semi-spaces) each of the four workers' heaps grew by
    // 10-20 MB over 30,000 issuances; with 4 MB the station's RSS grew by 49 MB
    // instead of 68, at the same certificates/s or more in paired runs (the
    // young generation stays in a core's cache). It takes effect only while no
    // --max-semi-space-size is given: that V8 flag overrides it in every isolate.
    const worker = new Worker(this.url, { workerData: this.workerData, resourceLimits: { maxYoungGenerationSizeMb: 4 } });
    const mine = new Set<number>();
    this.posted.set(worker, mine);
    worker.on('message', (replies: RpcReply[]) => {
      if (replies.length === 0) {
        if (worker === this.successor) this.successorLoaded = true;
        return;
      }
      for (const reply of replies) {
        mine.delete(reply.id);
        const p = this.pending.get(reply.id);
        if (!p) continue;
        this.pending.delete(reply.id);
        if ('error' in reply) p.reject(new LineSignerError(reply.error.code as ErrorCode, reply.error.message));
        else p.resolve(reply.result);
      }
      if (mine.size > 0) return;
      if (worker === this.worker) worker.unref();
      else this.end(worker);
    });
    const fail = (why: string): void => {
      if (this.successor === worker) {
        this.successor = null;
        this.successorLoaded = false;
      }
      if (!this.posted.has(worker)) return; // ended on purpose
      const ids = [...mine];
      this.posted.delete(worker);
      if (this.worker === worker) {
        this.worker = null;
        if (!this.restart) this.dead = why;
        // The calls of this turn were the current worker's too.
        for (const call of this.outbox) ids.push(call.id as number);
        this.outbox = [];
      }
      for (const id of ids) {
        this.pending.get(id)?.reject(this.onDeath(why));
        this.pending.delete(id);
      }
    };
    worker.on('error', (err) => fail(err.message));
    worker.on('exit', (code) => fail(`exit ${code}`));
    worker.unref();
    return worker;
  }

  call<T>(msg: Record<string, unknown>): Promise<T> {
    if (this.dead) return Promise.reject(this.onDeath(this.dead));
    if (this.worker && this.replaceAfter > 0) {
      if (this.given >= this.replaceAfter || (this.successor && this.successorLoaded)) this.retire(this.worker);
      else if (!this.successor && this.given >= this.replaceAfter - Math.max(1, Math.min(1000, Math.floor(this.replaceAfter / 10)))) this.successor = this.spawn();
    }
    const worker = this.worker ?? this.adoptSuccessor() ?? this.start();
    this.given++;
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject });
      this.outbox.push({ id, ...msg });
      if (this.outbox.length === 1) {
        // At the end of this turn of the event loop, not of this microtask run: the
        // requests that a batch of answers set going together then leave together too
        // (3-4 % more certificates/s in paired runs with 8 in flight). A lone request
        // does not come here: it signs, checks and commits on the links' thread.
        setImmediate(() => {
          if (this.worker === worker) this.post(worker);
        });
      }
    });
  }

  /** Posts the calls of this turn; the worker keeps the process alive while it owes answers. */
  private post(worker: Worker): void {
    const batch = this.outbox;
    this.outbox = [];
    if (batch.length === 0) return;
    const mine = this.posted.get(worker)!;
    for (const call of batch) mine.add(call.id as number);
    worker.ref();
    worker.postMessage(batch);
  }

  /** The successor started early, now the current worker; null when there is none. */
  private adoptSuccessor(): Worker | null {
    const next = this.successor;
    if (!next) return null;
    this.successor = null;
    this.successorLoaded = false;
    this.worker = next;
    this.given = 0;
    this.dead = null;
    return next;
  }

  /** The next calls go to a fresh worker; this one gets the calls of this turn, and ends once it has answered. */
  private retire(worker: Worker): void {
    this.post(worker);
    this.worker = null;
    if (this.posted.get(worker)!.size === 0) this.end(worker);
  }

  private end(worker: Worker): void {
    this.posted.delete(worker);
    void worker.terminate();
  }

  async stop(): Promise<void> {
    this.worker = null;
    this.successor = null;
    this.successorLoaded = false;
    this.dead ??= 'stopped';
    // Calls still waiting (or not yet posted) fail now rather than hang: the workers will not answer them.
    for (const p of this.pending.values()) p.reject(this.onDeath('stopped'));
    this.pending.clear();
    this.outbox = [];
    // Every thread has ended when this resolves, the replaced ones included.
    const all = [...this.posted.keys()];
    this.posted.clear();
    await Promise.all(all.map((x) => x.terminate()));
  }
}

/**
 * The worker's side of WorkerRpc: requests arrive in batches and are
 * handled in order; the answers ready by the end of the turn leave as one
 * message. `handle` may answer now or later (a promise).
 */
export function serveRpc<Req extends { id: number }>(handle: (req: Req) => unknown): void {
  const port = parentPort!;
  let outbox: RpcReply[] = [];
  let scheduled = false;
  let flushedAt = performance.now();
  const flush = (): void => {
    scheduled = false;
    flushedAt = performance.now();
    if (outbox.length === 0) return;
    const batch = outbox;
    outbox = [];
    port.postMessage(batch);
  };
  const answer = (reply: RpcReply): void => {
    outbox.push(reply);
    // Answers ready within a millisecond leave together; a slow one (an HSM's
    // 25-100 ms signature) leaves at once, not after the rest of its batch.
    if (performance.now() - flushedAt > 1) flush();
    else if (!scheduled) {
      scheduled = true;
      setImmediate(flush);
    }
  };
  const failure = (id: number, err: unknown): RpcReply => {
    const e = asLineSignerError(err);
    return { id, error: { code: e.code, message: e.message } };
  };
  // One request after another, each answered before the next starts, in the order they came.
  let tail: Promise<void> = Promise.resolve();
  const run = async (batch: Req[]): Promise<void> => {
    for (const req of batch) {
      try {
        answer({ id: req.id, result: await handle(req) });
      } catch (err) {
        answer(failure(req.id, err));
      }
    }
  };
  port.on('message', (batch: Req[]) => {
    tail = tail.then(() => run(batch));
  });
  // Loaded: an empty batch of answers says so (a successor takes over on it).
  port.postMessage([]);
}
