/**
 * A serving station's checkpoints (ledger/checkpoint.ts): at start, at
 * least once a second while the chains grow, after operator actions and
 * exports, and at stop. One at a time: each follows the one before.
 */
import { takeCheckpoint, type CheckpointWriter, type TokenCheckpoint } from '../ledger/index.js';

export interface CheckpointKeys {
  sign(digest: Uint8Array): Promise<Uint8Array>;
  store(label: string, value: Uint8Array): Promise<void>;
}

export class Checkpointer {
  private tail: Promise<unknown> = Promise.resolve();
  private timer: NodeJS.Timeout | null = null;
  /** The last failure, for status and the live view; cleared by a success. */
  failure: string | null = null;

  constructor(
    private readonly ledger: CheckpointWriter,
    private readonly keys: CheckpointKeys,
    private readonly everyMs = 1000,
    /** Only the ledger's owner signs checkpoints; a process that shares the file without the lock (tests) does not. */
    private readonly enabled = true,
  ) {}

  start(): void {
    if (!this.enabled) return;
    this.timer = setInterval(() => void this.take('issuing', false).catch(() => undefined), this.everyMs);
    this.timer.unref();
  }

  /** Takes a checkpoint after the ones already asked for; `always` false skips it when nothing changed. */
  take(reason: string, always = true): Promise<TokenCheckpoint | null> {
    if (!this.enabled) return Promise.resolve(null);
    const run = this.tail.then(() => takeCheckpoint(this.ledger, (d) => this.keys.sign(d), (l, v) => this.keys.store(l, v), reason, always));
    this.tail = run.then(
      () => {
        this.failure = null;
      },
      (err: Error) => {
        this.failure = err.message;
      },
    );
    return run;
  }

  /** No more checkpoints (the ledger is another process's now). */
  pause(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  /** The final checkpoint. */
  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    await this.take('stop');
  }
}
