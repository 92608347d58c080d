/** Load shared by the responsiveness tests: a token made slow, hostile PEM bodies. */
import type { Signer } from '../../src/token/signer.js';

/** A token that signs one at a time, `ms` a signature, as a real HSM session does. */
export function slowToken(ms: number): (inner: Signer) => Signer {
  return (inner) => {
    let tail: Promise<unknown> = Promise.resolve();
    return {
      hash: inner.hash,
      signatureAlgorithm: inner.signatureAlgorithm,
      publicKeySpki: () => inner.publicKeySpki(),
      publicKey: () => inner.publicKey(),
      sign(digest) {
        const run = tail.then(() => new Promise((r) => setTimeout(r, ms))).then(() => inner.sign(digest));
        tail = run.catch(() => undefined);
        return run;
      },
    };
  };
}

/** 64 KiB bodies built to make a backtracking PEM parser crawl. */
export const HOSTILE_PEM: Record<string, string> = {
  'BEGIN lines, no END': '-----BEGIN CERTIFICATE REQUEST-----\n'.repeat(1820),
  'blocks with mismatched END': '-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUESX-----\n'.repeat(780),
  'BEGIN then blanks': '-----BEGIN CERTIFICATE REQUEST-----\n' + ' \t\n'.repeat(21_800),
  'BEGIN without line ends': '-----BEGIN '.repeat(5950),
  'many labels': Array.from({ length: 2200 }, (_, i) => `-----BEGIN A${i}-----\n`).join(''),
};
