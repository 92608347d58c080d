/**
 * Runs in a worker thread: the OpenSSL work of a request, which would cost
 * the thread that serves the links most of a millisecond a certificate.
 * After the token signed, in one call: the CSR's proof of possession (its
 * signature checked with its own key) when the station left it for here
 * (`prove` makes it alone, before the signature, after a forged one), the token's
 * signature against the local-ca key, the assembly, and OpenSSL's
 * read-back of the whole certificate. Under load they run here, on the
 * other core.
 */
import { createPublicKey } from 'node:crypto';
import { workerData } from 'node:worker_threads';
import { serveRpc } from '../worker-rpc.js';
import { finishAndProve, finishCertificate, proveKeyPossession, type CertificateRequestFacts, type IssuerProfile } from '../x509/index.js';

export type CheckRequest =
  | { id: number; op: 'ready' }
  | { id: number; op: 'prove'; csr: Uint8Array }
  | { id: number; op: 'finish'; tbs: Uint8Array; signature: Uint8Array; facts: CertificateRequestFacts; csr?: Uint8Array };

const { caSpki, profile } = workerData as { caSpki: Uint8Array; profile: IssuerProfile };
const caKey = createPublicKey({ key: Buffer.from(caSpki), format: 'der', type: 'spki' });

serveRpc<CheckRequest>(async (req) => {
  switch (req.op) {
    case 'ready': // loaded: the station waits for this before it serves
      return null;
    case 'prove':
      return proveKeyPossession(req.csr);
    case 'finish':
      return req.csr ? finishAndProve(req.tbs, req.signature, profile, caKey, req.facts, req.csr) : finishCertificate(req.tbs, req.signature, profile, caKey, req.facts);
  }
});
