/**
 * Runs in a worker thread: the checks made after the token signs, which
 * cost the thread that serves the links about half a millisecond a
 * certificate (OpenSSL's read-back of the whole certificate above all):
 * the token's signature against the local-ca key, the assembly, and the
 * read-back gate. Under load they run here, on the other core.
 */
import { createPublicKey } from 'node:crypto';
import { parentPort, workerData } from 'node:worker_threads';
import { asLineSignerError } from '../errors.js';
import type { RpcReply } from '../worker-rpc.js';
import { finishCertificate, type CertificateRequestFacts, type IssuerProfile } from '../x509/index.js';

export interface CheckRequest {
  id: number;
  tbs: Uint8Array;
  signature: Uint8Array;
  facts: CertificateRequestFacts;
}

const { caSpki, profile } = workerData as { caSpki: Uint8Array; profile: IssuerProfile };
const caKey = createPublicKey({ key: Buffer.from(caSpki), format: 'der', type: 'spki' });

parentPort!.on('message', (req: CheckRequest) => {
  try {
    parentPort!.postMessage({ id: req.id, result: finishCertificate(req.tbs, req.signature, profile, caKey, req.facts) } satisfies RpcReply);
  } catch (err) {
    const e = asLineSignerError(err);
    parentPort!.postMessage({ id: req.id, error: { code: e.code, message: e.message } } satisfies RpcReply);
  }
});

