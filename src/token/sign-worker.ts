/**
 * Runs in a worker thread: its own PKCS#11 session on the token, signing
 * digests the main thread sends. C_SignInit and C_Sign (and SoftHSM's
 * unwrapping of the key on every init) then never run on the thread that
 * serves the links.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { asLineSignerError } from '../errors.js';
import { Pkcs11Token, type TokenOptions } from './pkcs11.js';
import type { RpcReply } from '../worker-rpc.js';

export interface SignWorkerData extends TokenOptions {
  keyLabel: string;
}

export type SignWorkerRequest = { id: number; digest: Uint8Array };

const data = workerData as SignWorkerData;
let signer: ReturnType<Pkcs11Token['signer']> | null = null;

function ready(): ReturnType<Pkcs11Token['signer']> {
  if (!signer) signer = Pkcs11Token.open(data).signer(data.keyLabel, true);
  return signer;
}

parentPort!.on('message', (req: SignWorkerRequest) => {
  let pending: Promise<Uint8Array>;
  try {
    pending = ready().sign(req.digest);
  } catch (err) {
    pending = Promise.reject(err);
  }
  pending.then(
    (signature) => parentPort!.postMessage({ id: req.id, result: signature } satisfies RpcReply),
    (err) => {
      const e = asLineSignerError(err);
      parentPort!.postMessage({ id: req.id, error: { code: e.code, message: e.message } } satisfies RpcReply);
    },
  );
});
