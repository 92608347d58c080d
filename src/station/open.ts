/**
 * Puts a station together from its configuration: the token and its
 * local-ca key, the installed local-ca certificate (checked again, so a
 * station never signs under a certificate that is not for its key), the
 * factory root, and the ledger.
 */
import { availableParallelism } from 'node:os';
import { existsSync, readFileSync } from 'node:fs';
import { X509Certificate } from 'node:crypto';
import { readPin, type StationConfig } from '../config/index.js';
import { LineSignerError } from '../errors.js';
import { damagedLedgerError, leaseLabel, leaseProblem, leaseValue, ledgerTokenProblem, LedgerLock, missingLedgerProblem, ownedLedgerProblem, strayWalProblem, ThreadedLedger, tokenCheckpoint } from '../ledger/index.js';
import { Checkpointer } from './checkpointer.js';
import { WorkerRpc } from '../worker-rpc.js';
import { Pkcs11Token, WorkerSigner } from '../token/index.js';
import type { Signer } from '../token/signer.js';
import { certificateDer, certificateKeyMismatch, checkLocalCa, issuerProfile, pemEncode, sha256Hex } from '../x509/index.js';
import { Station, type LocalCa } from './station.js';
import type { PolicyRules } from '../policy/index.js';
import { quote } from '../text.js';

export function readCertificateFile(path: string, what: string): Uint8Array {
  let bytes: Buffer;
  try {
    bytes = readFileSync(path);
  } catch (err) {
    const hint = what === 'local-ca certificate' ? '; run `line-signer ca import FILE` (or `ca demo` for development)' : '';
    throw new LineSignerError('CA', `no ${what} at ${path} (${(err as NodeJS.ErrnoException).code ?? 'unreadable'})${hint}`);
  }
  return certificateDer(new Uint8Array(bytes), what);
}

export function localCaFrom(der: Uint8Array, validityDays: number): LocalCa {
  const x = new X509Certificate(Buffer.from(der));
  return {
    der,
    pem: pemEncode(der, 'CERTIFICATE'),
    fingerprint: sha256Hex(der),
    notBefore: new Date(x.validFrom),
    notAfter: new Date(x.validTo),
    profile: issuerProfile(der, validityDays),
  };
}

export function rulesFrom(config: StationConfig): PolicyRules {
  return {
    factory: config.station.factory,
    production: config.station.production,
    deviceId: config.policy.device_id,
    allowP384: config.policy.allow_p384,
    maxCertificates: config.policy.max_certificates,
    maxPerMinute: config.policy.max_per_minute,
    requireOrder: config.policy.require_order,
    clockSkewSeconds: config.policy.clock_skew_seconds,
    clockGapDays: config.policy.clock_gap_days,
  };
}

export function openToken(config: StationConfig): Pkcs11Token {
  return Pkcs11Token.open({
    module: config.token.module,
    tokenLabel: config.token.token_label,
    pin: readPin(config.token),
    softhsm2Conf: config.token.softhsm2_conf,
  });
}

/**
 * Before the lock is taken and the file made: a [station] ledger naming no
 * file, on a station whose token vouches for a ledger, is refused with
 * nothing left at the path (a mistyped path once got an empty ledger and
 * its lock file there).
 */
export function refuseMissingLedger(config: StationConfig, prefix: string): void {
  if (existsSync(config.station.ledger)) return;
  const token = openToken(config);
  let problem: string | null;
  try {
    problem = missingLedgerProblem(config.station.ledger, tokenCheckpoint((l) => token.readData(l), config.station.id), config.station.id);
  } finally {
    token.close();
  }
  if (problem) throw new LineSignerError('LEDGER', `${prefix}: ${problem}`);
}

export interface OpenStation {
  station: Station;
  ledger: ThreadedLedger;
  checkpointer: Checkpointer;
  /** What the start-up checks found worth saying (a key that could leave a development token, rows after the last checkpoint). */
  warnings: string[];
  /** Null while this process still owns the ledger (its lock taken again if the file was deleted); else why it may not. */
  stillOwned(): string | null;
  /** The last stillOwned() found the lock file replaced and held by another process for the first time: look again within a second. */
  ownershipContested(): boolean;
  /** Null while the ledger's path still names the file this station opened; else why not (deleted, another moved over it, or its content overwritten). */
  ledgerFileProblem(): ReturnType<ThreadedLedger['fileProblem']>;
  /**
   * `{ write: false }`: another process owns the ledger now; nothing more is
   * written to it (no stop event or checkpoint). `beforeClose` runs after
   * the stop's checkpoint (or its failure) and before the connections
   * close: the ledger saved while they still hold it (its path deleted or
   * taken by another file). `leaveAsFound`: the path's file has another's
   * content (ledgerFileProblem 'overwritten'); it is left as found (see
   * ThreadedLedger.close), or the answer says why not.
   */
  close(opts?: { write?: boolean; beforeClose?: () => Promise<void>; leaveAsFound?: boolean }): Promise<string | null>;
}

/** A checking worker is replaced by a fresh one after this many calls (one a certificate under load): see WorkerRpc's replaceAfter. */
const CHECKER_CALLS = 10_000;

export interface OpenOptions {
  /** Stand in another signer (a deliberately slow one in tests); the token still provides the key check. */
  wrapSigner?: (signer: Signer) => Signer;
  clock?: () => Date;
  /** Tests only: see StationParts.aloneAfterMs. */
  aloneAfterMs?: number;
  /** Tests only: an inline commit slower than this sends the next ones through the ledger's writer (ThreadedLedger). */
  slowCommitHereMs?: number;
  /**
   * The ledger's owner lock: 'take' it (LEDGER_BUSY when another process
   * holds it; the default), the caller 'held' it already, or 'none' (tests
   * that race two writers on purpose).
   */
  lock?: 'take' | 'held' | 'none';
  /** The command that owns the ledger, named to anyone who finds it busy. */
  command?: string;
  /** Who started it, recorded on the start event. */
  operator?: string;
  /** One request and out (`sign` with no station serving): not worth reading every issuance's keys into memory first. */
  oneShot?: boolean;
  /** Tests and the benchmark: each token session held this long per signature, as a real HSM's is. */
  slowSessionMs?: number;
  /** Runs once the token has taken the PIN, before the ledger is opened: a throw stops the start there. */
  afterLogin?: () => void;
  /** Tests only: runs between the start's rows and the checkpoint that covers them (a crash there). */
  afterStartRows?: () => void;
}


/**
 * The main thread checks the token, its key and the local-ca, then signs
 * through a worker with its own session and writes the ledger through
 * another, so neither a token signature nor a disk flush holds up a link.
 */
export async function openStation(config: StationConfig, opts: OpenOptions = {}): Promise<OpenStation> {
  if ((opts.lock ?? 'take') === 'take') refuseMissingLedger(config, 'not serving');
  const lock = (opts.lock ?? 'take') === 'take' ? await LedgerLock.acquireChecked(config.station.ledger, opts.command ?? 'serve') : null;
  try {
    return await openOwned(config, opts, lock);
  } catch (err) {
    lock?.release();
    throw err;
  }
}

async function openOwned(config: StationConfig, opts: OpenOptions, lock: LedgerLock | null): Promise<OpenStation> {
  // `sign` with no station serving opens one for its CSR: its refusal says what was not done.
  const refused = opts.oneShot ? 'not signed' : 'not serving';
  const caDer = readCertificateFile(config.ca.certificate, 'local-ca certificate');
  const rootDer = readCertificateFile(config.ca.root, 'factory root');
  const pin = readPin(config.token);
  const tokenOptions = {
    module: config.token.module,
    tokenLabel: config.token.token_label,
    pin,
    softhsm2Conf: config.token.softhsm2_conf,
  };
  const token = Pkcs11Token.open(tokenOptions);
  const warnings: string[] = [];
  let nearby;
  let ledger: ThreadedLedger | null = null;
  try {
    opts.afterLogin?.();
    nearby = token.signer(config.token.key_label);
    // Validity in time is checked per request (CLOCK), so a wrong clock gets
    // the jigs a CLOCK answer instead of a station that will not start.
    checkLocalCa(caDer, { tokenSpki: nearby.publicKeySpki(), rootDer, factory: config.station.factory });
    const stationKey = token.findKey(config.token.station_key_label);
    if (!stationKey) {
      throw new LineSignerError('CA', `the token has no station key "${config.token.station_key_label}" (it signs exports and the ledger's checkpoints); run \`line-signer station-key init\``);
    }
    for (const label of [config.token.key_label, config.token.station_key_label]) {
      const risk = token.keyLeakRisk(label);
      if (!risk) continue;
      if (config.station.production) throw new LineSignerError('CA', `${risk}; a production station signs only with keys that cannot leave the token`);
      warnings.push(`${risk} (accepted only because this is not a production station)`);
    }
    const mismatch = certificateKeyMismatch(readCertificateFile(config.ca.station_certificate, 'station key certificate'), stationKey.spki, `the station certificate ${config.ca.station_certificate}`);
    if (mismatch) throw new LineSignerError('CA', `${mismatch}: exports would verify against no pin; restore the file`);
    // Without the owner lock (tests racing two writers) another process commits too: nothing may be known from memory.
    const stray = opts.lock === 'none' ? null : strayWalProblem((l) => token.readData(l), config.station.id, config.station.ledger);
    if (stray) throw new LineSignerError('LEDGER', `${refused}: ${stray}`);
    ledger = new ThreadedLedger(config.station.ledger, config.station.id, { knownFromMemory: opts.lock !== 'none' && !opts.oneShot, slowCommitHereMs: opts.slowCommitHereMs });
    const kept = tokenCheckpoint((l) => token.readData(l), config.station.id);
    const problem = opts.lock === 'none' ? null : ledgerTokenProblem(ledger, kept, config.station.id, config.station.ledger);
    if (problem) throw new LineSignerError('LEDGER', `${refused}: ${problem}`);
    const busy = opts.lock === 'none' ? null : leaseProblem((l) => token.readData(l), config.station.id, config.station.ledger);
    if (busy) throw new LineSignerError('LEDGER_BUSY', busy);
    // The file's own checks: a trigger, a row changed below the head, a table edited beside its events.
    const owned = opts.lock === 'none' ? null : ownedLedgerProblem(ledger, config.station.ledger);
    if (owned) throw new LineSignerError('LEDGER', `${refused}: ${owned.text}; restore the ledger from a backup`);
    // A serving station names its file in the token (see leaseProblem); a one-shot sign lives for milliseconds.
    if (opts.lock !== 'none' && !opts.oneShot) token.writeData(leaseLabel(config.station.id), leaseValue(config.station.ledger));
  } catch (err) {
    if (ledger) await ledger.close();
    token.close();
    const damaged = damagedLedgerError(err, config.station.ledger);
    if (damaged) throw new LineSignerError('LEDGER', `${refused}: ${damaged.message}`);
    throw err;
  }
  const key = { spki: nearby.publicKeySpki(), curve: nearby.hash === 'sha256' ? ('P-256' as const) : ('P-384' as const) };
  const workerSigner = new WorkerSigner(
    { ...tokenOptions, keyLabel: config.token.key_label, stationKeyLabel: config.token.station_key_label, slowSessionMs: opts.slowSessionMs },
    key,
    // A deliberately slow token has no fast path on this thread.
    opts.slowSessionMs ? undefined : nearby,
    config.token.sessions,
  );
  const signer = opts.wrapSigner ? opts.wrapSigner(workerSigner) : workerSigner;
  const localCa = localCaFrom(caDer, config.ca.validity_days);
  // One checking worker a core: measured on two cores, two keep both busy where one left the second idle at times.
  const checkers = Array.from(
    { length: Math.min(4, availableParallelism()) },
    () =>
      new WorkerRpc(
        new URL('./check-worker.js', import.meta.url),
        { caSpki: key.spki, profile: localCa.profile },
        (why) => new LineSignerError('INTERNAL', `certificate checker stopped (${why}); nothing issued`),
        true,
        CHECKER_CALLS,
      ),
  );
  const station = new Station({
    stationId: config.station.id,
    signer,
    ledger,
    checkers,
    localCa,
    rootPem: pemEncode(rootDer, 'CERTIFICATE'),
    rules: rulesFrom(config),
    ...(opts.clock ? { clock: opts.clock } : {}),
    ...(opts.aloneAfterMs !== undefined ? { aloneAfterMs: opts.aloneAfterMs } : {}),
  });
  // What the start checked is the station's; any row after it must be one this station writes.
  if (opts.lock !== 'none') ledger.acceptFile();
  const checkpointer = new Checkpointer(ledger, { sign: (d) => workerSigner.stationSign(d), store: (l, v) => workerSigner.store(l, v) }, 1000, opts.lock !== 'none');
  const owned = ledger;
  // Once per ledger: the revocations and grants standing now, from which the policy replay
  // (projections.ts) goes on exactly; ledgers from before reissue_used events need this base.
  const base = opts.lock === 'none' ? null : ledger.replayBaseToWrite();
  // The token first learns that the ledger is open again: its newest checkpoint may be a clean
  // close's, after which any row is refused as written outside line-signer. A start stopped
  // between its first row and the checkpoint after it (SIGTERM, a power cut: a few ms on
  // SoftHSM2, longer on an HSM) once left a ledger that every later start refused.
  await checkpointer.take('open');
  if (base) await owned.recordEvent({ kind: 'replay_base', message: base });
  await owned.recordEvent({ kind: 'start', message: `line-signer ${opts.command ?? 'serve'} pid ${process.pid}`, operator: opts.operator ?? null });
  opts.afterStartRows?.();
  await checkpointer.take('start');
  checkpointer.start();
  // Every thread loaded, every token session open, before the first request: loading them
  // under the first load (100-150 ms of CPU each on a two-core station) held the links'
  // thread's PINGs up to 20 ms and made the first requests wait. Best effort: a part that
  // cannot start now is started again when it is used, as after a fault.
  if (!opts.oneShot) await Promise.allSettled([workerSigner.openSessions(), ...checkers.map((c) => c.call({ op: 'ready' }))]);
  let closed = false;
  const leased = opts.lock !== 'none' && !opts.oneShot;
  return {
    station,
    ledger: owned,
    checkpointer,
    warnings,
    stillOwned: () => lock?.stillOwned() ?? null,
    ownershipContested: () => lock?.contested ?? false,
    ledgerFileProblem: () => owned.fileProblem(),
    async close(closeOpts?: { write?: boolean; beforeClose?: () => Promise<void>; leaveAsFound?: boolean }) {
      if (closed) return null;
      closed = true;
      let note: string | null = null;
      try {
        if (closeOpts?.write !== false) {
          await station.flushEvents();
          await owned.recordEvent({ kind: 'stop' });
          await checkpointer.stop();
        } else checkpointer.pause();
      } finally {
        await closeOpts?.beforeClose?.().catch(() => undefined);
        // The lease let go: a process that closes its station and lives on no longer holds the station's other files.
        if (leased) await workerSigner.store(leaseLabel(config.station.id), Buffer.from(JSON.stringify({ closed: new Date().toISOString() }))).catch(() => undefined);
        await Promise.all(checkers.map((c) => c.stop()));
        await workerSigner.close();
        token.close();
        if (closeOpts?.leaveAsFound) note = await owned.closeLeavingFileAsFound();
        else await owned.close();
        lock?.release();
      }
      return note;
    },
  };
}
