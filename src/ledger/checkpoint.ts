/**
 * Signed checkpoints: what makes the ledger's history one only the token
 * can write. The SHA-256 chains alone can be recomputed by anyone who can
 * edit the file; a checkpoint is a statement of both chains' heads, and of
 * every entry_hash since the previous checkpoint, signed by the station key
 * inside the token. `ledger verify` then knows, for every checkpointed row,
 * the hash the station wrote, so an edited row is named even when every
 * later hash was recomputed. The newest checkpoint is also kept inside the
 * token (checkpointStore in token/), so deleting the newest rows or
 * restoring an older copy of the file is caught too.
 */
import { createHash, createPublicKey, verify as verifySignature } from 'node:crypto';
import { existsSync } from 'node:fs';
import { LineSignerError } from '../errors.js';

export interface Heads {
  issuanceSeq: number;
  issuanceHash: string;
  eventSeq: number;
  eventHash: string;
}

export interface Checkpoint extends Heads {
  n: number;
  at: string;
  /** Why it was taken: issuing (at most once a second), start, stop, export, operator, backup. */
  reason: string;
  /** entry_hash (32 bytes each) of the issuances after the previous checkpoint, up to issuanceSeq. */
  issuanceHashes: Uint8Array;
  eventHashes: Uint8Array;
  /** SHA-256 of the previous checkpoint's statement (64 zeros for the first). */
  previous: string;
  /** DER ECDSA signature by the station key over the statement's SHA-256. */
  signature: Uint8Array;
}

/** What the token keeps: enough to find and check the newest checkpoint in a file. */
export interface TokenCheckpoint extends Heads {
  /** The station it belongs to: the token object is found by it (not by anything the file says). */
  stationId: string;
  ledgerId: string;
  n: number;
  at: string;
  reason: string;
  /** SHA-256 of the checkpoint's statement. */
  statement: string;
}

/**
 * The file's checkpoints the station key did not sign, said in a sentence, or null. `ledger accept`
 * takes a file the token does not vouch for: its signed checkpoints are then what says that this
 * station wrote it (a file whose chains were edited and recomputed, its checkpoints signed again with
 * another key, reads as an older copy otherwise).
 */
export function unsignedCheckpointsProblem(ledger: { ledgerId(): string; checkpoints(): Iterable<Checkpoint> }, stationKeySpki: Uint8Array): string | null {
  const key = createPublicKey({ key: Buffer.from(stationKeySpki), format: 'der', type: 'spki' });
  const id = ledger.ledgerId();
  let total = 0;
  let unsigned = 0;
  let first = 0;
  for (const c of ledger.checkpoints()) {
    total++;
    let ok = false;
    try {
      ok = verifySignature('sha256', checkpointStatement(id, c), key, c.signature);
    } catch {
      // an unreadable signature is not the station's
    }
    if (!ok && unsigned++ === 0) first = c.n;
  }
  if (unsigned === 0) return null;
  return `${unsigned} of the file's ${total} checkpoints (the first: n ${first}) are not signed by this station's key: this station did not write the file as it is (its rows edited and checkpoints signed again by another key, or another station's ledger under the same id); \`line-signer ledger verify\` names them`;
}

/** The exact bytes a checkpoint signature covers. */
export function checkpointStatement(ledgerId: string, c: Omit<Checkpoint, 'signature'>): Buffer {
  return Buffer.from(
    [
      'line-signer checkpoint 1',
      `ledger ${ledgerId}`,
      `n ${c.n}`,
      `at ${c.at}`,
      `reason ${c.reason}`,
      `issuances ${c.issuanceSeq} ${c.issuanceHash} ${sha256(c.issuanceHashes)}`,
      `events ${c.eventSeq} ${c.eventHash} ${sha256(c.eventHashes)}`,
      `previous ${c.previous}`,
      '',
    ].join('\n'),
  );
}

export function sha256(bytes: Uint8Array | string): string {
  return createHash('sha256').update(bytes).digest('hex');
}

/** The 32-byte hashes of a blob, as hex, in order. */
export function splitHashes(blob: Uint8Array): string[] {
  if (blob.length % 32) throw new LineSignerError('LEDGER', 'a checkpoint hash list is not whole hashes');
  const out: string[] = [];
  for (let i = 0; i < blob.length; i += 32) out.push(Buffer.from(blob.subarray(i, i + 32)).toString('hex'));
  return out;
}

export function encodeTokenCheckpoint(c: TokenCheckpoint): Buffer {
  return Buffer.from(JSON.stringify(c));
}

export function decodeTokenCheckpoint(bytes: Uint8Array): TokenCheckpoint | null {
  try {
    const c = JSON.parse(Buffer.from(bytes).toString('utf8')) as TokenCheckpoint;
    return typeof c.n === 'number' && typeof c.ledgerId === 'string' && typeof c.stationId === 'string' ? c : null;
  } catch {
    return null;
  }
}

/**
 * The label of the token object that keeps a station's newest checkpoint.
 * By station id, from the configuration, never by anything the ledger file
 * says of itself: a file whose ledger id was changed is still compared.
 */
export function checkpointLabel(stationId: string): string {
  return `line-signer checkpoint ${stationId}`;
}

/** A checkpoint taken by a process that then lets the ledger go: nothing may follow it until the next owner starts. */
export function closesLedger(reason: string): boolean {
  return reason === 'stop' || reason.startsWith('closing ');
}

export interface CheckpointWriter {
  prepareCheckpoint(reason: string, always?: boolean): { unsigned: Omit<Checkpoint, 'signature'>; digest: Uint8Array } | null;
  recordCheckpoint(c: Checkpoint): TokenCheckpoint | Promise<TokenCheckpoint>;
}

/**
 * One checkpoint: prepared from the ledger, signed by the station key, stored
 * in the ledger, then kept in the token. The token's copy is written last,
 * so it is never ahead of what the file holds.
 */
export async function takeCheckpoint(
  ledger: CheckpointWriter,
  sign: (digest: Uint8Array) => Promise<Uint8Array>,
  store: (label: string, value: Uint8Array) => Promise<void> | void,
  reason: string,
  always = true,
): Promise<TokenCheckpoint | null> {
  const prepared = ledger.prepareCheckpoint(reason, always);
  if (!prepared) return null;
  const signature = await sign(prepared.digest);
  const kept = await ledger.recordCheckpoint({ ...prepared.unsigned, signature });
  await store(checkpointLabel(kept.stationId), encodeTokenCheckpoint(kept));
  return kept;
}

/** The same, for a short-lived command that signs synchronously (ca import): nothing else runs meanwhile. */
export function takeCheckpointSync(
  ledger: Pick<CheckpointWriter, 'prepareCheckpoint'> & { recordCheckpoint(c: Checkpoint): TokenCheckpoint },
  sign: (digest: Uint8Array) => Uint8Array,
  store: (label: string, value: Uint8Array) => void,
  reason: string,
): TokenCheckpoint | null {
  const prepared = ledger.prepareCheckpoint(reason, true);
  if (!prepared) return null;
  const kept = ledger.recordCheckpoint({ ...prepared.unsigned, signature: sign(prepared.digest) });
  store(checkpointLabel(kept.stationId), encodeTokenCheckpoint(kept));
  return kept;
}

/** The newest checkpoint the token keeps for station `stationId`, or null. */
export function tokenCheckpoint(readData: (label: string) => Buffer[], stationId: string): TokenCheckpoint | null {
  let newest: TokenCheckpoint | null = null;
  for (const v of readData(checkpointLabel(stationId))) {
    const c = decodeTokenCheckpoint(v);
    if (c && c.stationId === stationId && (!newest || c.n > newest.n)) newest = c;
  }
  return newest;
}

/**
 * A ledger written by another station id: `[station] id` changed, or
 * another station's file. Everything the station keeps in its token (the
 * newest checkpoint, the lease that keeps one file served at a time) is
 * filed under its id, so accepting the file under a new id would let two
 * copies of one history serve at once. Null when the ids agree (or the
 * file is new).
 */
export function stationIdProblem(ledger: Pick<LedgerFacts, 'newestStationId'>, stationId: string, path: string): string | null {
  const recorded = ledger.newestStationId();
  if (recorded === null || recorded === stationId) return null;
  return `${path} is station ${JSON.stringify(recorded)}'s ledger, and the config says station ${JSON.stringify(stationId)}: put [station] id back to ${JSON.stringify(recorded)} (the token keeps the station's checkpoints and lease under its id; a station's id does not change)`;
}

export interface LedgerFacts {
  /** The station id of the newest event row, or null for an empty file. */
  newestStationId(): string | null;
  ledgerId(): string;
  heads(): Heads;
  checkAgainstToken(tc: TokenCheckpoint): string | null;
  lastCheckpoint(): { n: number } | undefined;
  /** The first few events after `eventSeq` that only an operator action writes. */
  operatorEventsAfter(eventSeq: number): Array<{ seq: number; kind: string }>;
}

/**
 * A [station] ledger that names no file, on a station whose token vouches
 * for a ledger: the path is mistyped or the ledger was lost. Null when a
 * file is there or the token vouches for none (a first start makes it).
 * Asked before the lock is taken, so a refusal leaves nothing at the path.
 */
export function missingLedgerProblem(path: string, kept: TokenCheckpoint | null, stationId: string): string | null {
  if (!kept || existsSync(path)) return null;
  return (
    `no ledger at ${path}, but the token's newest checkpoint (${kept.n}, ${kept.at}) vouches for ` +
    `ledger ${kept.ledgerId} of station ${stationId}, up to issuance seq ${kept.issuanceSeq}: [station] ledger names the wrong file, or that ledger was lost. ` +
    `Point [station] ledger at it, or restore it from a backup there (\`line-signer ledger accept --reason R\` takes the restored copy); ` +
    `only to start over without its records, \`line-signer ledger accept --forget-newer --reason R\` makes a new, empty ledger there`
  );
}

/**
 * Before a process writes a ledger: is this file the one the token last
 * checkpointed for this station, holding at least what that checkpoint
 * says, and nothing added since a clean close? Null when it is; else why
 * not, with the way forward. Every owner runs it (serve, sign, the
 * operator commands, export, ca import), so none writes over a rolled-back
 * or forged file and signs it anew.
 */
export function ledgerTokenProblem(ledger: LedgerFacts, kept: TokenCheckpoint | null, stationId: string, path: string): string | null {
  const renamed = stationIdProblem(ledger, stationId, path);
  if (renamed) return renamed;
  const fix = `; \`line-signer ledger verify\` lists what differs, and \`line-signer ledger accept --reason R\` makes this file the station's ledger if it should be`;
  if (!kept) {
    const n = ledger.lastCheckpoint()?.n ?? 0;
    return n > 0 ? `${path} has ${n} signed checkpoints, but the token keeps none for station ${stationId}: the token object was removed, or this is another token${fix}` : null;
  }
  if (kept.ledgerId !== ledger.ledgerId()) {
    // A file with nothing in it was most likely made just now, at a path where no ledger was: a mistyped
    // [station] ledger, or a lost one. Accepting it is the last thing to suggest.
    const h = ledger.heads();
    if (h.issuanceSeq === 0 && h.eventSeq === 0) {
      return (
        `${path} holds nothing (a new ledger, made because no file was there), but the token's newest checkpoint (${kept.n}, ${kept.at}) vouches for ` +
        `ledger ${kept.ledgerId} of station ${stationId}, up to issuance seq ${kept.issuanceSeq}: [station] ledger names the wrong file, or that ledger was lost. ` +
        `Point [station] ledger at it, or restore it from a backup there (\`line-signer ledger accept --reason R\` takes the restored copy); ` +
        `only to start over without its records, \`line-signer ledger accept --forget-newer --reason R\` takes this empty one`
      );
    }
    return `${path} (ledger id ${ledger.ledgerId()}) is not the ledger the token last checkpointed for station ${stationId} (ledger id ${kept.ledgerId}, checkpoint ${kept.n}, ${kept.at})${fix}`;
  }
  const behind = ledger.checkAgainstToken(kept);
  if (behind) return `${path}: ${behind}${fix}`;
  const h = ledger.heads();
  if (closesLedger(kept.reason) && (h.issuanceSeq > kept.issuanceSeq || h.eventSeq > kept.eventSeq)) {
    return `${path}: rows were added after the station's last clean close (checkpoint ${kept.n}, ${kept.at}, ${kept.reason}), outside line-signer${fix}`;
  }
  // After an unclean stop rows past the checkpoint are expected (the last second's issuances and
  // refusals), but not an operator action's: each is checkpointed as it is made. A revocation
  // there would make sync delete a device on nobody's word.
  const late = ledger.operatorEventsAfter(kept.eventSeq);
  if (late.length > 0) {
    const which = late.map((e) => `event seq ${e.seq} (${e.kind})`).join(', ');
    return `${path}: ${which} after the token's newest checkpoint (${kept.n}, ${kept.at}), though an operator action is checkpointed as it is made: written outside line-signer, or the station died within milliseconds of the action${fix}`;
  }
  return null;
}
