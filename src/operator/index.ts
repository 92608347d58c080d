/**
 * Operator actions: work orders, re-issue grants, revocations, clock
 * confirmations, backups, and the commands that write the ledger (sign,
 * export). One home for them, used by the CLI and by a serving station
 * alike: `operate()` sends the action to the process that owns the ledger
 * (a serving station, over the control channel), or, when none does, takes
 * the ledger's lock and performs it here. Either way the ledger has one
 * writer, and each action is an event with its operator in the hash chain,
 * followed by a signed checkpoint.
 */
import { accessSync, constants, existsSync, lstatSync, statSync } from 'node:fs';
import { userInfo } from 'node:os';
import { dirname, isAbsolute, resolve } from 'node:path';
import type { StationConfig } from '../config/index.js';
import { LineSignerError } from '../errors.js';
import { leaseProblem, LedgerLock, ledgerTokenProblem, missingLedgerProblem, notALedgerProblem, ownedLedgerProblem, stationIdProblem, SqliteLedger, takeCheckpoint, tokenCheckpoint, unsignedCheckpointsProblem, type Order, type TokenCheckpoint } from '../ledger/index.js';
import { Pkcs11Token } from '../token/index.js';
import { readPin } from '../config/index.js';
import { checkClientText, clipMessage, TEXT_LIMITS } from '../text.js';
import { backupLedger } from './backup.js';
import { callOwner } from './control.js';

export type OperatorRequest =
  | { op: 'allow-reissue'; device: string; reason: string; operator: string }
  | { op: 'revoke'; target: string; reason: string; operator: string }
  | { op: 'order-open'; id: string; quantity: number; hardwareId: string | null; operator: string }
  | { op: 'order-close'; id: string; operator: string }
  | { op: 'clock-confirm'; reason: string; operator: string }
  | { op: 'backup'; dest: string; operator: string }
  | { op: 'accept'; reason: string; operator: string; forgetNewer?: boolean };

/** What an action needs from the process that performs it. */
export interface OperatorContext {
  config: StationConfig;
  /** A write connection to the ledger, owned by this process. */
  ledger: SqliteLedger;
  /** A checkpoint after the action's event. */
  checkpoint(reason: string): Promise<unknown>;
  /**
   * Throws TOKEN_UNAVAILABLE when the token cannot sign now (a serving
   * station's probe); a process that opened the token for this action
   * knows it can and leaves this out.
   */
  tokenReady?(): Promise<void>;
  /**
   * A plain event through the ledger's writer (a serving station's writer
   * thread: the thread that serves the links never waits on a flush for it).
   */
  recordEvent(event: Parameters<SqliteLedger['appendEvent']>[0]): Promise<void>;
  /** A serving station's: while `work` writes a large file (a backup), no commit flushes on the links' thread. */
  whileDiskBusy?<T>(work: () => Promise<T>): Promise<T>;
  /** The token's newest checkpoint for this station, as the action began (null: none); only a process that opened the token has it. */
  tokenCheckpoint?: TokenCheckpoint | null;
}

/** The link a certificate signed by hand is recorded under: who signed it. */
export function cliLink(operator: string | undefined): string {
  return operator ? `cli:${operator}` : 'cli';
}

/** The operator's name: the flag, else [station] operator, else the login name (SUDO_USER under sudo). */
export function operatorName(config: StationConfig, flag?: string): string {
  // LINE_SIGNER_INVOKED_BY: set when root's command acts as the service user (cli/privileges.ts).
  let name = flag ?? config.station.operator ?? process.env.SUDO_USER ?? process.env.LINE_SIGNER_INVOKED_BY;
  if (!name) {
    try {
      name = userInfo().username;
    } catch {
      name = `uid ${process.getuid?.() ?? '?'}`;
    }
  }
  return checkClientText('--operator', name, 64);
}

/** Performs one action in the process that owns the ledger. */
/** The largest work order: more than a factory makes in years, small enough to stay an exact integer in every message. */
export const MAX_ORDER_QUANTITY = 10_000_000;

/**
 * What an action takes, checked wherever it came from (the CLI, or the
 * control socket, where any process of the service user may write): text
 * by the client-text rules, the quantity a whole number in range.
 */
function checkRequest(req: OperatorRequest): void {
  const r = req as Record<string, unknown>;
  const limits: Record<string, number> = { reason: TEXT_LIMITS.field, operator: 64, target: TEXT_LIMITS.name, device: TEXT_LIMITS.name, id: TEXT_LIMITS.workOrder, hardwareId: TEXT_LIMITS.hardwareId, dest: 4096 };
  // As the CLI names them: positional arguments in capitals.
  const label: Record<string, string> = { target: 'DEVICE', device: 'DEVICE', id: 'ORDER', dest: 'DEST', hardwareId: '--hardware-id' };
  for (const [field, max] of Object.entries(limits)) {
    if (typeof r[field] !== 'string') continue;
    try {
      checkClientText(label[field] ?? `--${field}`, r[field] as string, max);
    } catch (err) {
      throw new LineSignerError('USAGE', (err as Error).message);
    }
  }
  // The audit trail says why: an empty reason says nothing.
  if (typeof r.reason === 'string' && r.reason.trim() === '') throw new LineSignerError('USAGE', '--reason: say why, in words');
  if (req.op === 'order-open' && (!Number.isSafeInteger(req.quantity) || req.quantity < 1 || req.quantity > MAX_ORDER_QUANTITY)) {
    throw new LineSignerError('USAGE', `--quantity: a whole number of certificates from 1 to ${MAX_ORDER_QUANTITY.toLocaleString('en-US')}`);
  }
}

export async function perform(ctx: OperatorContext, req: OperatorRequest): Promise<unknown> {
  checkRequest(req);
  const { ledger } = ctx;
  // An action is checkpointed as it is made (a start refuses one past the token's checkpoint): with
  // the token away, nothing is written rather than an action the token cannot vouch for.
  await ctx.tokenReady?.();
  let result: unknown;
  switch (req.op) {
    case 'allow-reissue':
      ledger.grantReissue(req.device, req.reason, req.operator);
      result = { device: req.device };
      break;
    case 'revoke':
      result = { device: ledger.revoke(req.target, req.reason, req.operator) };
      break;
    case 'order-open':
      result = ledger.openOrder({ id: req.id, quantity: req.quantity, hardwareId: req.hardwareId, operator: req.operator });
      break;
    case 'order-close':
      result = ledger.closeOrder(req.id, req.operator);
      break;
    case 'clock-confirm':
      ledger.confirmClock(req.operator, req.reason, new Date());
      result = { at: new Date().toISOString() };
      break;
    case 'backup': {
      checkBackupDestination(req.dest);
      await ctx.recordEvent({ kind: 'backup', message: `backup to ${req.dest}`, operator: req.operator });
      // The copy then holds a signed checkpoint covering everything before it started.
      await ctx.checkpoint('backup');
      try {
        const copy = (): ReturnType<typeof backupLedger> => backupLedger(ctx.config.station.ledger, req.dest);
        return await (ctx.whileDiskBusy ? ctx.whileDiskBusy(copy) : copy());
      } catch (err) {
        // The log must not show a backup that is not there.
        await ctx.recordEvent({ kind: 'backup', message: clipMessage(`backup to ${req.dest} failed: ${(err as Error).message}`), operator: req.operator });
        await ctx.checkpoint('backup').catch(() => undefined); // an operator event is checkpointed as it is made
        throw err;
      }
    }
    case 'accept': {
      const h = ledger.heads();
      const kept = ctx.tokenCheckpoint;
      const branch = kept ? ledger.branchFromToken(kept) : null;
      // Another branch of the ledger lacks what was written after the two parted, whatever its seqs say.
      const forgotten = !kept
        ? null
        : branch
          ? `the token's newest checkpoint (n ${kept.n}, ${kept.at}) vouches for ledger ${kept.ledgerId} up to issuance seq ${kept.issuanceSeq} and event seq ${kept.eventSeq}, and this file's ${branch} differs from it: the file is another branch of the ledger (an older copy, accepted and written to since), and the rows written after the two parted are not in it`
          : rowsLeftBehind(ledger.ledgerId(), h, kept);
      if (forgotten && !req.forgetNewer) {
        throw new LineSignerError(
          'LEDGER',
          `nothing written: ${forgotten}. What they recorded (revocations, re-issue grants used, orders' counts) would be forgotten, and the certificates they hold stay valid in no ledger: look for a newer copy of the ledger first; \`ledger accept --forget-newer\` accepts this one anyway`,
        );
      }
      ledger.appendEvent({
        kind: 'ledger_accept',
        message: clipMessage(`ledger ${ledger.ledgerId()} accepted as station ${ctx.config.station.id}'s, at issuance seq ${h.issuanceSeq} and event seq ${h.eventSeq}${forgotten ? `; forgotten (--forget-newer): ${forgotten}` : ''}: ${req.reason}`),
        operator: req.operator,
      });
      result = { ledgerId: ledger.ledgerId(), ...h, forgotten };
      break;
    }
  }
  try {
    await ctx.checkpoint('operator');
  } catch (err) {
    const e = err instanceof LineSignerError ? err : new LineSignerError('TOKEN_UNAVAILABLE', (err as Error).message);
    throw new LineSignerError(e.code, `${req.op} is recorded, but the token could not sign its checkpoint (${e.message}): until a checkpoint covers it (a serving station takes one every second), a start refuses the ledger and asks for \`line-signer ledger accept\``);
  }
  return result;
}

/** A backup never overwrites anything, nor writes through a symlink, nor lands in a folder that is not there. */
function checkBackupDestination(dest: string): void {
  try {
    lstatSync(dest);
    throw new LineSignerError('USAGE', `${dest} exists; a backup never overwrites a file`);
  } catch (err) {
    if (err instanceof LineSignerError) throw err;
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw new LineSignerError('USAGE', `${dest}: ${(err as Error).message}`);
  }
  if (!existsSync(dirname(dest)) || !statSync(dirname(dest)).isDirectory()) throw new LineSignerError('USAGE', `${dirname(dest)} is not a folder`);
  try {
    accessSync(dirname(dest), constants.W_OK);
  } catch {
    throw new LineSignerError('USAGE', `${dirname(dest)} is not writable by the process that writes the ledger (uid ${process.getuid?.() ?? '?'}); nothing recorded`);
  }
}

/**
 * Runs `req` wherever the ledger's owner is: through the serving station's
 * control channel, or here under the ledger's lock (waiting up to a minute
 * for another command to finish, and saying so).
 */
export async function operate<T>(config: StationConfig, req: OperatorRequest, onWait?: (holder: string) => void): Promise<T> {
  if (req.op === 'backup' && !isAbsolute(req.dest)) req = { ...req, dest: resolve(req.dest) };
  // Only a start over (accept --forget-newer) makes a ledger where none is, and not at a path other than
  // the one a serving station holds (the lease): nothing is made there, not even the lock file.
  if (req.op !== 'accept') refuseMissingLedger(config);
  else if (!existsSync(config.station.ledger)) {
    if (!req.forgetNewer) throw nothingToAccept(notALedgerProblem(config.station.ledger)!);
    refuseBeforeLock(config, (t) => {
      const busy = leaseProblem((l) => t.readData(l), config.station.id, config.station.ledger);
      return busy ? new LineSignerError('LEDGER_BUSY', `nothing written: ${busy}`) : null;
    });
  }
  // The serving station does it, if one serves; else this process takes the lock. A station that is
  // starting holds the lock before its socket listens: keep asking it while waiting for the lock.
  let remote: { result: unknown } | undefined;
  const lock = await LedgerLock.wait(config.station.ledger, req.op, 60_000, onWait, async () => (remote = await callOwner(config.station.ledger, req)) !== undefined);
  if (!lock) return remote!.result as T;
  return withOwnedLedger(config, req.op, onWait, (ctx) => perform(ctx, req), lock, { startOver: req.op === 'accept' && req.forgetNewer === true }) as Promise<T>;
}

function openOperatorToken(config: StationConfig): Pkcs11Token {
  return Pkcs11Token.open({ module: config.token.module, tokenLabel: config.token.token_label, pin: readPin(config.token), softhsm2Conf: config.token.softhsm2_conf });
}

/**
 * Before the lock is taken: a [station] ledger naming no file, on a
 * station whose token vouches for a ledger, is refused with nothing made
 * at the path (see missingLedgerProblem).
 */
export function refuseMissingLedger(config: StationConfig, prefix = 'nothing written'): void {
  if (existsSync(config.station.ledger)) return;
  refuseBeforeLock(config, (t) => {
    const problem = missingLedgerProblem(config.station.ledger, tokenCheckpoint((l) => t.readData(l), config.station.id), config.station.id);
    return problem ? new LineSignerError('LEDGER', `${prefix}: ${problem}`) : null;
  });
}

function nothingToAccept(problem: string): LineSignerError {
  return new LineSignerError('LEDGER', `nothing to accept: ${problem} (the path [station] ledger names); put the ledger's copy there first`);
}

/** What the token says before anything is made at the ledger's path: `check`'s refusal, thrown. */
function refuseBeforeLock(config: StationConfig, check: (token: Pkcs11Token) => LineSignerError | null): void {
  const token = openOperatorToken(config);
  let refusal: LineSignerError | null;
  try {
    refusal = check(token);
  } finally {
    token.close();
  }
  if (refusal) throw refusal;
}

/** Takes the ledger's lock, opens it and the token for checkpoints, runs `work`, and lets go. */
export async function withOwnedLedger<T>(
  config: StationConfig,
  command: string,
  onWait: ((holder: string) => void) | undefined,
  work: (ctx: OperatorContext) => Promise<T>,
  held?: LedgerLock,
  /** accept --forget-newer: a missing file is made anew instead of refused. */
  opts: { startOver?: boolean } = {},
): Promise<T> {
  const lock = held ?? (await LedgerLock.wait(config.station.ledger, command, 60_000, onWait));
  try {
    // Accept takes a file someone put there: opening it read-write would make any file a ledger first.
    const startOver = command === 'accept' && opts.startOver === true && !existsSync(config.station.ledger);
    const notLedger = command === 'accept' && !startOver ? notALedgerProblem(config.station.ledger) : null;
    if (notLedger) throw nothingToAccept(notLedger);
    const ledger = new SqliteLedger(config.station.ledger, config.station.id);
    // One login per operator action: the token vouches for the file before anything is written, and signs after.
    let token: Pkcs11Token | null = null;
    try {
      const t = openOperatorToken(config);
      token = t;
      const kept = tokenCheckpoint((l) => t.readData(l), config.station.id);
      // accept takes a file the token does not vouch for; never one of another station id.
      const problem = command === 'accept' ? stationIdProblem(ledger, config.station.id, config.station.ledger) : ledgerTokenProblem(ledger, kept, config.station.id, config.station.ledger);
      if (problem) throw new LineSignerError('LEDGER', `nothing written: ${problem}`);
      const busy = leaseProblem((l) => t.readData(l), config.station.id, config.station.ledger);
      if (busy) throw new LineSignerError('LEDGER_BUSY', `nothing written: ${busy}`);
      // A trigger would run inside this command's own writes (an order's quantity rewritten as it opens), and
      // rows or tables edited below the chain's head keep their stored hashes: only recomputing finds them.
      const owned = ownedLedgerProblem(ledger, config.station.ledger, { history: command !== 'accept' });
      if (owned && command === 'export' && owned.kind !== 'shape') throw new LineSignerError('EXPORT', `${owned.text}; nothing exported`);
      if (owned?.kind === 'chain') throw new LineSignerError('LEDGER', `${owned.text}; nothing written`);
      if (owned) throw new LineSignerError('LEDGER', `nothing written: ${owned.text}`);
      const signer = t.signer(config.token.station_key_label);
      // The token does not vouch for a file to accept: its checkpoints' signatures must be this station's.
      const unsigned = command === 'accept' ? unsignedCheckpointsProblem(ledger, signer.publicKeySpki()) : null;
      if (unsigned) throw new LineSignerError('LEDGER', `nothing written: ${unsigned}`);
      const ctx: OperatorContext = {
        config,
        ledger,
        tokenCheckpoint: kept,
        // This process lets the ledger go right after: its checkpoints close it.
        checkpoint: (reason) => takeCheckpoint(ledger, (d) => signer.sign(d), (l, v) => t.writeData(l, v), `closing ${reason}`),
        recordEvent: async (e) => {
          ledger.appendEvent(e);
        },
      };
      const before = ledger.heads();
      try {
        return await work(ctx);
      } finally {
        // Whatever the work wrote, even if it then failed (an export whose file could not be
        // renamed into place), is closed by a checkpoint: else the next start refuses the ledger.
        // Only that: a refused accept on a file with no checkpoint of its own once had the
        // token vouch for it all the same.
        const h = ledger.heads();
        if (h.issuanceSeq !== before.issuanceSeq || h.eventSeq !== before.eventSeq) {
          await takeCheckpoint(ledger, (d) => signer.sign(d), (l, v) => t.writeData(l, v), `closing ${command}`, false).catch(() => undefined);
        }
      }
    } finally {
      token?.close();
      ledger.close();
    }
  } finally {
    lock.release();
  }
}

/**
 * What the token vouched for that this file lacks, or null: an older copy
 * of the same ledger ends before the token's newest checkpoint; another
 * ledger leaves the one the token vouched for behind whole.
 */
function rowsLeftBehind(ledgerId: string, h: { issuanceSeq: number; eventSeq: number }, kept: TokenCheckpoint): string | null {
  const where = `the token's newest checkpoint (n ${kept.n}, ${kept.at}) vouches for ledger ${kept.ledgerId} up to issuance seq ${kept.issuanceSeq} and event seq ${kept.eventSeq}`;
  if (kept.ledgerId !== ledgerId) return kept.issuanceSeq + kept.eventSeq > 0 ? `${where}; this file is ledger ${ledgerId}: all ${kept.issuanceSeq} issuances and ${kept.eventSeq} events of the other are left behind` : null;
  const issuances = kept.issuanceSeq - h.issuanceSeq;
  const events = kept.eventSeq - h.eventSeq;
  if (issuances <= 0 && events <= 0) return null;
  return `${where}; this file ends at issuance seq ${h.issuanceSeq} and event seq ${h.eventSeq}: ${Math.max(0, issuances)} issuances and ${Math.max(0, events)} events written after it are not in it`;
}

export function orderSummary(o: Order): string {
  const state = o.closedAt ? `closed ${o.closedAt} by ${o.closedBy}` : o.issued >= o.quantity ? 'open, used up' : 'open';
  return `${o.id}: ${o.issued} of ${o.quantity}${o.hardwareId ? `, hardware id ${o.hardwareId}` : ''}; opened ${o.openedAt} by ${o.operator}; ${state}`;
}

/**
 * One line for what an operator's action did, as a serving station shows
 * it on its live view and in its log (the technician at the station sees
 * an order opened from another shell). Client text in it is shown through
 * printable() by the view.
 */
export function actionSummary(req: OperatorRequest, result: unknown): string {
  const who = req.operator;
  switch (req.op) {
    case 'order-open':
      return `${who} opened work order ${orderSummary(result as Order)}`;
    case 'order-close':
      return `${who} closed work order ${orderSummary(result as Order)}`;
    case 'allow-reissue':
      return `${who} allowed device ${req.device} one certificate for a new key: ${req.reason}`;
    case 'revoke':
      return `${who} revoked device ${(result as { device: string }).device}: ${req.reason}`;
    case 'clock-confirm':
      return `${who} confirmed the clock as ${(result as { at: string }).at}: ${req.reason}`;
    case 'backup':
      return `${who} backed the ledger up to ${req.dest}`;
    case 'accept':
      return `${who} accepted the ledger: ${req.reason}`;
  }
}

export function usage(message: string): never {
  throw new LineSignerError('USAGE', message);
}
