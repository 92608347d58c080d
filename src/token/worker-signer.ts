/**
 * A Signer whose signatures are made in worker threads that each own a
 * session (see sign-worker.ts), so that under load C_SignInit and C_Sign
 * never run on the thread that serves links. With `sessions` > 1, each
 * signature goes to the least busy session: a real HSM signs in parallel
 * on several sessions, 10 to 40 times a second each. A lone signature, with
 * nothing else in flight (the `alone` hint), goes through `nearby` instead when one is given:
 * this thread's own session, signing on libuv's pool, which spares it two
 * thread hops, or in this thread itself once the token has shown it signs
 * in a few milliseconds (HoldGate), which spares it two more. A worker that dies fails the signs in flight with
 * TOKEN_UNAVAILABLE and is started again on the next sign.
 */
import type { KeyObject } from 'node:crypto';
import { LineSignerError } from '../errors.js';
import { WorkerRpc } from '../worker-rpc.js';
import { HoldGate } from './hold-gate.js';
import { shareModuleEpoch, type KeyInfo, type TokenSigner } from './pkcs11.js';
import type { SignWorkerData } from './sign-worker.js';
import { signerIdentity, type Signer } from './signer.js';

export class WorkerSigner implements Signer {
  readonly hash: 'sha256' | 'sha384';
  readonly signatureAlgorithm: string;
  private readonly key: KeyObject;
  private readonly rpcs: WorkerRpc[];
  private nearbyBusy = false;
  private nearbyBroken = false;
  /** A refused PIN sticks: the worker is never asked to log in again until an operator restarts the station. */
  private pinRefused: LineSignerError | null = null;

  constructor(
    data: SignWorkerData,
    private readonly info: Pick<KeyInfo, 'spki' | 'curve'>,
    private readonly nearby?: Pick<TokenSigner, 'sign'>,
    sessions = 1,
    /** When a lone signature may hold this thread (tests give their own limits). */
    private readonly hold = new HoldGate(),
  ) {
    ({ hash: this.hash, signatureAlgorithm: this.signatureAlgorithm, key: this.key } = signerIdentity(info));
    this.rpcs = Array.from(
      { length: Math.max(1, sessions) },
      (_, i) =>
        new WorkerRpc(
          new URL('./sign-worker.js', import.meta.url),
          // Only the first session may start the module afresh after a token fault (it is process-wide).
          // The module's restart count is the process's: a restart made in one thread voids the handles of all.
          { ...data, mayReinitialize: i === 0, moduleEpoch: shareModuleEpoch(data.module) },
          (why) => new LineSignerError('TOKEN_UNAVAILABLE', `token signer stopped: ${why}`),
          true,
        ),
    );
  }

  /** The first session: checkpoints and token objects go there, in order. */
  private get rpc(): WorkerRpc {
    return this.rpcs[0]!;
  }

  /** The session with the fewest signatures waiting. */
  private leastBusy(): WorkerRpc {
    let best = this.rpcs[0]!;
    for (const r of this.rpcs) if (r.waiting < best.waiting) best = r;
    return best;
  }

  publicKeySpki(): Uint8Array {
    return this.info.spki;
  }

  publicKey(): KeyObject {
    return this.key;
  }

  sign(digest: Uint8Array, hint?: { alone?: boolean }): Promise<Uint8Array> {
    if (hint?.alone && this.nearby && !this.nearbyBroken && !this.nearbyBusy && this.rpcs.every((r) => r.idle)) {
      this.nearbyBusy = true;
      const started = performance.now();
      return this.nearby.sign(digest, { hold: this.hold.allows }).then(
        (sig) => {
          this.nearbyBusy = false;
          this.hold.record(performance.now() - started);
          return sig;
        },
        (err) => {
          this.nearbyBusy = false;
          // After a token fault this thread's session stays unused: the worker alone recovers the token.
          this.nearbyBroken = true;
          throw err;
        },
      );
    }
    return this.call<Uint8Array>({ digest }, this.leastBusy());
  }

  /**
   * Opens every session's worker and its session now, the first one's
   * login having succeeded (one login attempt per start, whatever
   * `sessions` is), so that none of them loads and logs in under the first
   * load. A session that cannot open now is tried again when it is used.
   */
  async openSessions(): Promise<void> {
    await this.call<void>({ op: 'open' });
    await Promise.allSettled(this.rpcs.slice(1).map((r) => this.call<void>({ op: 'open' }, r)));
  }

  /** A signature by the station key (ledger checkpoints), made in the worker. */
  stationSign(digest: Uint8Array): Promise<Uint8Array> {
    return this.call<Uint8Array>({ op: 'station-sign', digest });
  }

  /** Keeps `value` in the token's private data object `label`, from the worker. */
  store(label: string, value: Uint8Array): Promise<void> {
    return this.call<void>({ op: 'store', label, value });
  }

  private async call<T>(msg: Record<string, unknown>, rpc: WorkerRpc = this.rpc): Promise<T> {
    if (this.pinRefused) throw this.pinRefused;
    try {
      return await rpc.call<T>(msg);
    } catch (err) {
      if (err instanceof LineSignerError && err.code === 'TOKEN_PIN') {
        this.pinRefused = new LineSignerError('TOKEN_PIN', `${err.message}; the station will not try again until it is restarted`);
      }
      throw err;
    }
  }

  async close(): Promise<void> {
    await Promise.all(this.rpcs.map((r) => r.stop()));
  }
}
