/**
 * Runs in a worker thread: its own PKCS#11 session on the token, signing
 * digests the main thread sends. C_SignInit and C_Sign (and SoftHSM's
 * unwrapping of the key on every init) then never run on the thread that
 * serves the links. It also signs the ledger's checkpoints with the
 * station key and keeps the newest one in a token object, so that those
 * token writes (milliseconds on SoftHSM) never hold up a link either.
 */
import { workerData } from 'node:worker_threads';
import { LineSignerError } from '../errors.js';
import { adoptModuleEpoch, holdThread, Pkcs11Token, type TokenOptions, type TokenSigner } from './pkcs11.js';
import { serveRpc } from '../worker-rpc.js';

export interface SignWorkerData extends TokenOptions {
  keyLabel: string;
  /** The station key's label, for checkpoint signatures. */
  stationKeyLabel?: string | undefined;
  /** This session may start the module afresh after a token fault (only one session of a process does). */
  mayReinitialize?: boolean | undefined;
  /**
   * Tests and the benchmark: hold this session for so many ms per signature,
   * as a session of a real HSM is held while it signs (10 to 40 a second).
   */
  slowSessionMs?: number | undefined;
  /** The starting thread's count of module restarts (pkcs11.ts shareModuleEpoch). */
  moduleEpoch?: SharedArrayBuffer | undefined;
}

export type SignWorkerRequest =
  | { id: number; op?: undefined; digest: Uint8Array }
  | { id: number; op: 'open' }
  | { id: number; op: 'station-sign'; digest: Uint8Array }
  | { id: number; op: 'store'; label: string; value: Uint8Array };

const data = workerData as SignWorkerData;
if (data.moduleEpoch) adoptModuleEpoch(data.module, data.moduleEpoch);
let token: Pkcs11Token | null = null;
const signers = new Map<string, TokenSigner>();
let reinitAt = 0;

function make(label: string): TokenSigner {
  token ??= Pkcs11Token.open(data);
  const s = token.signer(label, true);
  signers.set(label, s);
  return s;
}

function signer(label: string): TokenSigner {
  const made = signers.get(label);
  if (made) return made;
  try {
    return make(label);
  } catch (err) {
    // A token that went away and came back: start the module afresh (at most every 2 s) and look again.
    if (!(err instanceof LineSignerError) || err.code !== 'TOKEN_UNAVAILABLE' || !data.mayReinitialize || Date.now() - reinitAt < 2000) throw err;
    reinitAt = Date.now();
    token?.close();
    token = null;
    signers.clear();
    Pkcs11Token.reinitializeModule(data.module);
    return make(label);
  }
}

async function run(req: SignWorkerRequest): Promise<unknown> {
  switch (req.op) {
    case undefined:
      if (data.slowSessionMs) holdThread(data.slowSessionMs);
      return signer(data.keyLabel).sign(req.digest);
    case 'open': // the session opened and logged in before the first signature needs it
      signer(data.keyLabel);
      return null;
    case 'station-sign':
      if (!data.stationKeyLabel) throw new LineSignerError('TOKEN_UNAVAILABLE', 'no station key configured');
      return signer(data.stationKeyLabel).sign(req.digest);
    case 'store':
      signer(data.stationKeyLabel ?? data.keyLabel); // the session, recovered if need be
      token!.writeData(req.label, req.value);
      return null;
  }
}

serveRpc<SignWorkerRequest>(run);
