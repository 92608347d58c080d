/**
 * `ledger verify`: everything the ledger's own history and the token can
 * say about it, every problem listed (not only the first).
 *
 * - Each row against its entry_hash and the row before (SHA-256 chains),
 *   and each certificate against the local-ca, its serial and device id.
 * - Each checkpoint's signature by the station key (the token's public key,
 *   not a file anyone could swap), their own chain, and every row they
 *   cover: a row whose content differs from the hash the station signed is
 *   named, even when every later hash was recomputed.
 * - The token's newest checkpoint against the file: deleted newest rows, an
 *   older copy put back, or rows added after a clean stop are caught.
 * - The batches table against the export events in the chain.
 */
import { createHash, createPublicKey, verify as verifySignature, X509Certificate, type KeyObject } from 'node:crypto';
import type { StationConfig } from '../config/index.js';
import { LineSignerError } from '../errors.js';
import {
  checkpointStatement,
  eventHash,
  GENESIS_HASH,
  isDamagedFileError,
  issuanceHash,
  ledgerTokenProblem,
  missingLedgerProblem,
  shapeProblemsOfFile,
  splitHashes,
  SqliteLedger,
  tokenCheckpoint,
  type Checkpoint,
  type TokenCheckpoint,
} from '../ledger/index.js';
import { serialKey } from '../serial.js';
import { quote } from '../text.js';
import type { Pkcs11Token } from '../token/index.js';
import { openToken, readCertificateFile } from './open.js';
import { replacedLocalCaPath } from './ca-admin.js';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { sha256Hex } from '../x509/index.js';
import { resolve } from 'node:path';

export interface LedgerProblem {
  table: 'issuances' | 'events' | 'checkpoints' | 'batches' | 'token' | 'state' | 'file';
  seq: number;
  reason: string;
}

export interface LedgerReport {
  checked: number;
  events: number;
  checkpoints: number;
  problems: LedgerProblem[];
  /** The first problem, or null. */
  problem: LedgerProblem | null;
  /** Facts worth saying that are not problems (rows not yet checkpointed, a copy behind the token). */
  notes: string[];
}

export interface VerifyLedgerOptions {
  /** Verify this file (a backup) instead of the configured ledger; the token's checkpoint may be newer. */
  file?: string | undefined;
  /** Check without the token (no PIN here): signatures against the station certificate file, no token checkpoint. */
  noToken?: boolean | undefined;
}

const MAX_PROBLEMS = 200;

export function verifyLedger(config: StationConfig, opts: VerifyLedgerOptions = {}): LedgerReport {
  const ca = new X509Certificate(Buffer.from(readCertificateFile(config.ca.certificate, 'local-ca certificate')));
  const problems: LedgerProblem[] = [];
  const notes: string[] = [];
  const problem = (table: LedgerProblem['table'], seq: number, reason: string): void => {
    if (problems.length < MAX_PROBLEMS) problems.push({ table, seq, reason });
  };

  // The token first: what it holds must already be in any later read of the file.
  let stationKey: KeyObject | null = null;
  let kept: TokenCheckpoint | null = null;
  let tokenRead: ((label: string) => Buffer[]) | null = null;
  if (!opts.noToken) {
    let token: Pkcs11Token;
    try {
      token = openToken(config);
    } catch (err) {
      throw new LineSignerError((err as LineSignerError).code ?? 'TOKEN_UNAVAILABLE', `${(err as Error).message}; the token holds the station key and the newest checkpoint (--without-token checks without it)`);
    }
    try {
      let key = null;
      try {
        key = token.findKey(config.token.station_key_label);
      } catch (err) {
        // A public half that is not the private key's (findKey): listed, and the checkpoints' signatures go unchecked.
        problem('token', 0, (err as Error).message);
      }
      if (key) stationKey = createPublicKey({ key: Buffer.from(key.spki), format: 'der', type: 'spki' });
      const cache = new Map<string, Buffer[]>();
      tokenRead = (label) => {
        if (!cache.has(label)) cache.set(label, token.readData(label));
        return cache.get(label)!;
      };
      // Read the checkpoint object now, before the file.
      kept = tokenCheckpoint(tokenRead, config.station.id);
    } finally {
      token.close();
    }
    if (!stationKey && problems.length === 0) problem('token', 0, `the token has no station key "${config.token.station_key_label}" to check the checkpoints with`);
  } else {
    try {
      stationKey = new X509Certificate(Buffer.from(readCertificateFile(config.ca.station_certificate, 'station key certificate'))).publicKey;
      notes.push('checked without the token: checkpoint signatures against the station certificate file, and no token checkpoint');
    } catch {
      notes.push('checked without the token and without a station certificate: checkpoint signatures not checked');
    }
  }

  const path = opts.file ?? config.station.ledger;
  // A missing ledger on a station whose token vouches for one: say which ledger to look for.
  const missing = opts.file === undefined ? missingLedgerProblem(path, kept, config.station.id) : existsSync(path) ? null : `no file at ${path}`;
  if (missing) throw new LineSignerError('LEDGER', missing);
  let ledger: SqliteLedger;
  try {
    ledger = new SqliteLedger(path, config.station.id, { readonly: true });
  } catch (err) {
    // A table dropped or rebuilt: the ledger's queries cannot be prepared. Say what of the file changed.
    let shape: Array<{ what: string; reason: string }> = [];
    try {
      if (statSync(path, { throwIfNoEntry: false })?.isFile()) shape = shapeProblemsOfFile(path);
    } catch (look) {
      // A damaged file: the ledger's own error (thrown below) says so.
      if (!isDamagedFileError(look)) throw look;
    }
    if (shape.length === 0) throw err;
    for (const p of shape) problem('file', 0, `${p.what}: ${p.reason}`);
    problem('file', 0, `cannot read the ledger: ${(err as Error).message}`);
    return { checked: 0, events: 0, checkpoints: 0, problems, problem: problems[0] ?? null, notes };
  }
  try {
    const ledgerId = ledger.ledgerId();
    // The file's shape first (triggers, changed tables, rows outside the chains, values of the wrong type):
    // none of it is in a hash. A part that cannot be read is named below, and the other parts still checked.
    for (const p of ledger.shapeProblems()) problem('file', 0, `${p.what}: ${p.reason}`);
    const section = (what: string, check: () => void): void => {
      try {
        check();
      } catch (err) {
        problem('file', 0, `cannot check the ${what}: ${(err as Error).message}`);
      }
    };
    /** Seqs from..to missing from a chain: one problem each for a few, one for the range past that (a seq set to 10^12 must not take 10^12 steps). */
    const missing = (table: 'issuances' | 'events', from: number, to: number, signed: Map<number, string>, what: (seq: number) => string): void => {
      if (to - from < 20) {
        for (let seq = from; seq <= to; seq++) problem(table, seq, what(seq));
        return;
      }
      let vouched = 0;
      for (const k of signed.keys()) if (k >= from && k <= to) vouched++;
      problem(table, from, `seq ${from}-${to} are missing (${to - from + 1} rows${vouched ? `, ${vouched} of them signed by a checkpoint` : ''})`);
    };
    // Checkpoints: signatures, their chain, and the hashes they vouch for.
    const signedIssuance = new Map<number, string>();
    const signedEvent = new Map<number, string>();
    let last: Checkpoint | undefined;
    let nCheckpoints = 0;
    section('checkpoints', () => {
    for (const c of ledger.checkpoints()) {
      nCheckpoints++;
      const statement = checkpointStatement(ledgerId, c);
      if (c.n !== (last?.n ?? 0) + 1) problem('checkpoints', c.n, `checkpoint ${(last?.n ?? 0) + 1} is missing`);
      const previous = last ? createHash('sha256').update(checkpointStatement(ledgerId, last)).digest('hex') : GENESIS_HASH;
      if (c.previous !== previous) problem('checkpoints', c.n, 'does not follow the checkpoint before it');
      if (stationKey && !safeVerify(statement, stationKey, c.signature)) problem('checkpoints', c.n, 'its signature is not by the station key: it was forged or changed');
      const fromI = last?.issuanceSeq ?? 0;
      const fromE = last?.eventSeq ?? 0;
      let ih: string[] = [];
      let eh: string[] = [];
      try {
        ih = splitHashes(c.issuanceHashes);
        eh = splitHashes(c.eventHashes);
      } catch (err) {
        problem('checkpoints', c.n, (err as Error).message);
      }
      if (ih.length !== c.issuanceSeq - fromI || eh.length !== c.eventSeq - fromE) problem('checkpoints', c.n, 'its hash lists do not cover its range');
      ih.forEach((h, i) => signedIssuance.set(fromI + 1 + i, h));
      eh.forEach((h, i) => signedEvent.set(fromE + 1 + i, h));
      last = c;
    }
    });

    // Every local-ca this ledger recorded and whose certificate is kept (a replaced one beside the
    // current file): a certificate issued before a replacement is checked against its own local-ca.
    const cas = [ca];
    section('local-ca imports', () => {
    for (const e of ledger.eventsOfKind('ca_import', 0, Number.MAX_SAFE_INTEGER)) {
      const sha = /^local-ca ([0-9a-f]{64}) /.exec(e.message ?? '')?.[1];
      if (!sha || sha === sha256Hex(new Uint8Array(ca.raw))) continue;
      try {
        const kept = new X509Certificate(readFileSync(replacedLocalCaPath(config.ca.certificate, sha)));
        if (sha256Hex(new Uint8Array(kept.raw)) === sha) cas.push(kept);
      } catch {
        // not kept (replaced before this version kept them): its certificates are named below
      }
    }
    });

    // Issuances: the chain, the certificates, and what the checkpoints vouch for.
    let checked = 0;
    let prev = GENESIS_HASH;
    let expect = 1;
    let rehashed: number[] = [];
    const flushRehashed = (table: 'issuances' | 'events'): void => {
      if (rehashed.length) {
        const a = rehashed[0]!;
        const b = rehashed[rehashed.length - 1]!;
        problem(table, a, `${a === b ? `seq ${a}` : `seq ${a}-${b}`}: entry_hash rewritten after a checkpoint (a chain recomputed to hide a change)`);
      }
      rehashed = [];
    };
    section('issuances', () => {
    for (const row of ledger.since(0)) {
      checked++;
      if (expect < row.seq) missing('issuances', expect, row.seq - 1, signedIssuance, (seq) => `seq ${seq} is missing${signedIssuance.has(seq) ? ' (deleted after a checkpoint signed it)' : ''}`);
      if (issuanceHash(prev, row) !== row.entryHash && !(signedIssuance.get(row.seq) && signedIssuance.get(row.seq) !== row.entryHash)) {
        problem('issuances', row.seq, 'entry_hash does not match the row and the previous hash');
      }
      const signed = signedIssuance.get(row.seq);
      if (signed && signed !== row.entryHash) {
        const signedPrev = row.seq === 1 ? GENESIS_HASH : signedIssuance.get(row.seq - 1);
        if (signedPrev && issuanceHash(signedPrev, row) === signed) rehashed.push(row.seq);
        else {
          flushRehashed('issuances');
          problem('issuances', row.seq, `the row was changed after a checkpoint signed it`);
        }
      } else flushRehashed('issuances');
      for (const why of certificateProblems(row, cas)) problem('issuances', row.seq, why);
      prev = row.entryHash;
      expect = row.seq + 1;
    }
    flushRehashed('issuances');
    });
    const lastI = last?.issuanceSeq ?? 0;
    if (expect <= lastI) missing('issuances', expect, lastI, signedIssuance, (seq) => `seq ${seq} is missing (deleted after checkpoint ${last!.n} signed it)`);

    // Events, the same way.
    let events = 0;
    prev = GENESIS_HASH;
    expect = 1;
    section('events', () => {
    for (const e of ledger.eventsSince(0)) {
      events++;
      if (expect < e.seq) missing('events', expect, e.seq - 1, signedEvent, (seq) => `event seq ${seq} is missing`);
      const signed = signedEvent.get(e.seq);
      if (eventHash(prev, e) !== e.entryHash && !(signed && signed !== e.entryHash)) problem('events', e.seq, 'entry_hash does not match the row and the previous hash');
      if (signed && signed !== e.entryHash) {
        const signedPrev = e.seq === 1 ? GENESIS_HASH : signedEvent.get(e.seq - 1);
        if (signedPrev && eventHash(signedPrev, e) === signed) rehashed.push(e.seq);
        else {
          flushRehashed('events');
          problem('events', e.seq, 'the event was changed after a checkpoint signed it');
        }
      } else flushRehashed('events');
      prev = e.entryHash;
      expect = e.seq + 1;
    }
    flushRehashed('events');
    });
    const lastE = last?.eventSeq ?? 0;
    if (expect <= lastE) missing('events', expect, lastE, signedEvent, (seq) => `event seq ${seq} is missing (deleted after checkpoint ${last!.n} signed it)`);

    // The batches table: contiguous, and each one as its export event says.
    section('batches', () => {
      for (const p of ledger.batchProblems()) problem('batches', Number(p.key), p.reason);
    });

    // What each name looks like, kept beside it for the one-name-one-device check: not hashed, so recomputed.
    section('name skeletons', () => {
      for (const seq of ledger.skeletonProblems()) problem('issuances', seq, 'name_skeleton is not what the name looks like: a name that looks the same would be let through');
      for (const pair of ledger.lookAlikeNames()) {
        notes.push(`the names ${pair.names.map((n) => quote(n)).join(', ')} of devices ${pair.devices.join(', ')} look the same in the device cloud (issued before line-signer kept what names look like): each stays its device's, and no other device gets one like them`);
      }
    });

    // The policy state tables against the events they project: an edit there changes what the station issues.
    section('policy state', () => {
      for (const p of ledger.projectionProblems()) if (p.table !== 'batches') problem('state', 0, `${p.table} ${quote(String(p.key))}: ${p.reason}`);
    });

    // The token's newest checkpoint against this file.
    if (tokenRead) {
      const copy = opts.file !== undefined && resolve(opts.file) !== resolve(config.station.ledger);
      const behind = kept && kept.ledgerId === ledgerId ? ledger.checkAgainstToken(kept) : null;
      if (copy && kept && kept.ledgerId === ledgerId && behind && (last?.n ?? 0) < kept.n) {
        notes.push(`this copy ends at checkpoint ${last?.n ?? 0}; the token's newest is ${kept.n} (${kept.at}): the station went on after the copy, as it does after a backup`);
      } else {
        const why = ledgerTokenProblem(ledger, kept, config.station.id, opts.file ?? config.station.ledger);
        if (why) problem('token', kept?.n ?? 0, why);
      }
    }
    const heads = ledger.heads();
    const uncovered = { i: heads.issuanceSeq - lastI, e: heads.eventSeq - lastE };
    if (uncovered.i > 0 || uncovered.e > 0) {
      notes.push(`${uncovered.i} issuances and ${uncovered.e} events after the newest checkpoint: covered by the SHA-256 chain only until the station signs its next checkpoint`);
    }
    // Rows first, each under its table and seq; what is wrong with the file as a whole after them.
    problems.sort((a, b) => Number(a.table === 'file') - Number(b.table === 'file') || a.table.localeCompare(b.table) || a.seq - b.seq);
    return { checked, events, checkpoints: nCheckpoints, problems, problem: problems[0] ?? null, notes };
  } finally {
    ledger.close();
  }
}

function safeVerify(statement: Uint8Array, key: KeyObject, signature: Uint8Array): boolean {
  try {
    return verifySignature('sha256', statement, key, signature);
  } catch {
    return false;
  }
}

/** Everything wrong between a row and its certificate (a wrong serial does not hide a wrong device id). */
function certificateProblems(row: { certificate: Uint8Array; serial: string; deviceId: string }, cas: X509Certificate[]): string[] {
  let cert: X509Certificate;
  try {
    cert = new X509Certificate(Buffer.from(row.certificate));
  } catch {
    return ['stored certificate is not readable'];
  }
  const out: string[] = [];
  if (!cas.some((ca) => cert.verify(ca.publicKey))) out.push(cas.length > 1 ? 'stored certificate is not signed by any local-ca this ledger recorded' : 'stored certificate is not signed by the local-ca');
  if (serialKey(cert.serialNumber) !== serialKey(row.serial)) out.push('serial does not match the certificate');
  if (!cert.subject.split('\n').includes(`CN=${row.deviceId}`)) out.push('device_id does not match the certificate');
  return out;
}
