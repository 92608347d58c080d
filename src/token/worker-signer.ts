/**
 * A Signer whose signatures are made in a worker thread that owns its own
 * session (see sign-worker.ts), so that under load C_SignInit and C_Sign
 * never run on the thread that serves links. A lone signature, with
 * nothing else in flight (the `alone` hint), goes through `nearby` instead when one is given:
 * this thread's own session, signing on libuv's pool, which spares it two
 * thread hops. A worker that dies fails the signs in flight with
 * TOKEN_UNAVAILABLE and is started again on the next sign.
 */
import { createPublicKey, type KeyObject } from 'node:crypto';
import { Worker } from 'node:worker_threads';
import { LineSignerError, type ErrorCode } from '../errors.js';
import type { KeyInfo } from './pkcs11.js';
import type { SignWorkerData, SignWorkerReply } from './sign-worker.js';
import { OID_ECDSA_SHA256, OID_ECDSA_SHA384, type Signer } from './signer.js';

export class WorkerSigner implements Signer {
  readonly hash: 'sha256' | 'sha384';
  readonly signatureAlgorithm: string;
  private readonly key: KeyObject;
  private worker: Worker | null = null;
  private nextId = 1;
  private readonly pending = new Map<number, { resolve: (sig: Uint8Array) => void; reject: (err: Error) => void }>();

  private nearbyBusy = false;

  constructor(
    private readonly data: SignWorkerData,
    private readonly info: Pick<KeyInfo, 'spki' | 'curve'>,
    private readonly nearby?: Signer,
  ) {
    this.hash = info.curve === 'P-256' ? 'sha256' : 'sha384';
    this.signatureAlgorithm = info.curve === 'P-256' ? OID_ECDSA_SHA256 : OID_ECDSA_SHA384;
    this.key = createPublicKey({ key: Buffer.from(info.spki), format: 'der', type: 'spki' });
  }

  publicKeySpki(): Uint8Array {
    return this.info.spki;
  }

  publicKey(): KeyObject {
    return this.key;
  }

  sign(digest: Uint8Array, hint?: { alone?: boolean }): Promise<Uint8Array> {
    if (hint?.alone && this.nearby && !this.nearbyBusy && this.pending.size === 0) {
      this.nearbyBusy = true;
      return this.nearby.sign(digest).finally(() => {
        this.nearbyBusy = false;
      });
    }
    const worker = this.worker ?? this.start();
    const id = this.nextId++;
    return new Promise<Uint8Array>((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      if (this.pending.size === 1) worker.ref();
      worker.postMessage({ id, digest });
    });
  }

  private start(): Worker {
    const worker = new Worker(new URL('./sign-worker.js', import.meta.url), { workerData: this.data });
    worker.on('message', (reply: SignWorkerReply) => {
      const p = this.pending.get(reply.id);
      if (!p) return;
      this.pending.delete(reply.id);
      if (this.pending.size === 0) worker.unref();
      if ('signature' in reply) p.resolve(reply.signature);
      else p.reject(new LineSignerError(reply.error.code as ErrorCode, reply.error.message));
    });
    const fail = (why: string): void => {
      if (this.worker === worker) this.worker = null;
      for (const p of this.pending.values()) p.reject(new LineSignerError('TOKEN_UNAVAILABLE', `token signer stopped: ${why}`));
      this.pending.clear();
    };
    worker.on('error', (err) => fail(err.message));
    worker.on('exit', (code) => fail(`exit ${code}`));
    worker.unref();
    this.worker = worker;
    return worker;
  }

  async close(): Promise<void> {
    const w = this.worker;
    this.worker = null;
    if (w) await w.terminate();
  }
}
