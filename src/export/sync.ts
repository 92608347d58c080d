/**
 * `line-signer sync`, on a connected machine: makes the device API hold
 * what the ledger says, device by device, from batches that verify against
 * the pinned station key.
 *
 * The state (SQLite) records, per device, what the ledger wants (its newest
 * issuance, unless a revocation mark at or after it) and what the API holds
 * as far as sync knows (which issuance, absent, or unknown). A run sends
 * only the steps from one to the other: DELETE of a name held (only while
 * the API holds it with that device's key), PUT of the wanted certificate;
 * every DELETE of a run before any PUT, so a name a re-issue freed is free
 * when another device's registration asks for it. Both are recorded the
 * moment their answer arrives, and an intent is recorded before each is
 * sent, so a killed run resumes by asking (GET) instead of sending a step
 * twice. The wanted state depends only on which records were seen (the
 * newest issuance, the highest mark), never on the order batches arrive
 * in, so a rerun or a late batch cannot undo what is settled.
 */
import { createPublicKey, X509Certificate } from 'node:crypto';
import { basename, join } from 'node:path';
import { tmpdir } from 'node:os';
import { closeSync, constants, copyFileSync, fchmodSync, fstatSync, mkdtempSync, openSync, readFileSync, readSync, rmSync, statSync } from 'node:fs';
import Database from 'better-sqlite3';
import { parse as parseToml } from 'smol-toml';
import { readPrivateFile } from '../files.js';
import { LineSignerError } from '../errors.js';
import { printable } from '../text.js';
import { normalizePin, verifyBatches } from './verify.js';

export interface SyncOptions {
  files: string[];
  api: string;
  tokenFile: string;
  group?: string | undefined;
  dryRun?: boolean | undefined;
  statePath: string;
  /** Pin: SHA-256 of the station key's certificate or public key. */
  stationKey?: string | undefined;
  /** Pins file (TOML): station_key = "...", optionally factory_root = "...". */
  pinsFile?: string | undefined;
  /** Accept batch N+2 when N+1 was never synced. */
  allowGap?: boolean | undefined;
  /** Allow plain http:// to a host other than loopback. */
  insecureHttp?: boolean | undefined;
  concurrency?: number | undefined;
  timeoutMs?: number | undefined;
  /** Tries per step for 5xx, 429, time-outs and connection errors. */
  tries?: number | undefined;
  retryBaseMs?: number | undefined;
  /** Longest wait a Retry-After may impose (default 5 minutes). */
  maxRetryAfterMs?: number | undefined;
  /** The most a run waits on the API's throttles and outages in all; past it the run stops (the next resumes). */
  maxRunWaitMs?: number | undefined;
  /** Ends the run at once, recording nothing more (a kill, for tests). */
  signal?: AbortSignal | undefined;
  onProgress?: ((done: number, total: number) => void) | undefined;
  onStep?: ((step: StepReport) => void) | undefined;
}

export type StepOutcome = 'registered' | 'exists' | 'deleted' | 'failed' | 'planned';

export interface StepReport {
  device: string;
  name: string;
  action: 'register' | 'delete' | 'check';
  outcome: StepOutcome;
  detail: string;
}

export interface SyncSummary {
  /** Devices the state knows for this station key and API. */
  devices: number;
  /** Devices that needed something this run. */
  pending: number;
  registered: number;
  alreadyThere: number;
  deleted: number;
  failed: number;
  /** Devices the API already held as the ledger says: nothing sent. */
  upToDate: number;
  dryRun: boolean;
}

/** A response body is read up to this much; the rest is never fetched. */
export const MAX_BODY_BYTES = 64 * 1024;
/** What of a response body the state and messages keep. */
const DETAIL_CHARS = 500;

interface DeviceRow {
  device_id: string;
  best_seq: number | null;
  best_name: string | null;
  best_pem: string | null;
  revoked_upto: number;
  held: 'unknown' | 'absent' | 'present';
  held_seq: number | null;
  held_name: string | null;
  held_pem: string | null;
  /** A step sent whose answer was never recorded (a killed run): 'PUT' or 'DELETE', of this name (and seq). */
  intent: 'PUT' | 'DELETE' | null;
  intent_seq: number | null;
  intent_name: string | null;
  intent_pem: string | null;
}

/** The API token: one line of visible ASCII in a file only its owner can read; never in a message. */
export function readApiToken(path: string): string {
  const text = readPrivateFile(path, '--token-file', 'SYNC');
  const token = text.endsWith('\r\n') ? text.slice(0, -2) : text.endsWith('\n') ? text.slice(0, -1) : text;
  if (!token) throw new LineSignerError('SYNC', `--token-file: ${path} is empty`);
  if (!/^[\x21-\x7e]+$/.test(token)) {
    throw new LineSignerError('SYNC', `--token-file: ${path} must hold the token alone on one line, visible ASCII without spaces (it holds something else; its content is not shown)`);
  }
  return token;
}

/** The pins sync trusts: from --station-key or a pins file. */
export function readPins(opts: Pick<SyncOptions, 'stationKey' | 'pinsFile'>): { stationKey: string; factoryRoot?: string } {
  if (opts.stationKey !== undefined && opts.pinsFile !== undefined) throw new LineSignerError('USAGE', 'give --station-key or --pins, not both');
  if (opts.stationKey !== undefined) return { stationKey: normalizePin(opts.stationKey) };
  if (opts.pinsFile === undefined) {
    throw new LineSignerError('USAGE', 'sync trusts only a pinned station key: give --station-key SHA256 (line-signer ca show prints it) or --pins FILE');
  }
  let doc: Record<string, unknown>;
  try {
    // Not a secret, but what it pins is all sync trusts: nobody but its owner may change it.
    if ((statSync(opts.pinsFile).mode & 0o022) !== 0) throw new LineSignerError('USAGE', `--pins ${opts.pinsFile}: group or others can write it; chmod go-w it`);
    doc = parseToml(readFileSync(opts.pinsFile, 'utf8').replace(/^\uFEFF/, '')) as Record<string, unknown>;
  } catch (err) {
    if (err instanceof LineSignerError) throw err;
    const code = (err as NodeJS.ErrnoException).code;
    throw new LineSignerError('USAGE', `--pins ${opts.pinsFile}: ${code ? `cannot read it (${code})` : `not TOML (${(err as Error).message.split('\n')[0]})`}`);
  }
  const unknown = Object.keys(doc).filter((k) => k !== 'station_key' && k !== 'factory_root');
  if (unknown.length) throw new LineSignerError('USAGE', `--pins ${opts.pinsFile}: unknown key ${unknown.join(', ')} (station_key, factory_root)`);
  if (typeof doc.station_key !== 'string') throw new LineSignerError('USAGE', `--pins ${opts.pinsFile}: station_key = "<SHA-256>" is required`);
  const pins: { stationKey: string; factoryRoot?: string } = { stationKey: normalizePin(doc.station_key, `--pins ${opts.pinsFile}: station_key`) };
  if (doc.factory_root !== undefined) {
    if (typeof doc.factory_root !== 'string') throw new LineSignerError('USAGE', `--pins ${opts.pinsFile}: factory_root must be a string`);
    pins.factoryRoot = normalizePin(doc.factory_root, `--pins ${opts.pinsFile}: factory_root`);
  }
  return pins;
}

const LOOPBACK = /^(localhost|127(\.\d{1,3}){3}|\[::1\])$/i;

/** The API base: https, or http to loopback only (unless insecure); no credentials, query or fragment. */
export function apiBase(raw: string, insecureHttp: boolean): { base: string } {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new LineSignerError('USAGE', `--api ${raw}: not a URL`);
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:') throw new LineSignerError('USAGE', `--api ${raw}: expected https://`);
  if (url.username || url.password || url.search || url.hash) throw new LineSignerError('USAGE', `--api ${raw}: no credentials, query or fragment in the URL`);
  if (url.protocol === 'http:' && !LOOPBACK.test(url.hostname) && !insecureHttp) {
    throw new LineSignerError('USAGE', `--api ${raw}: plain http sends the API token in the clear; use https, or --insecure-http if you mean it`);
  }
  return { base: url.origin + url.pathname.replace(/\/+$/, '') };
}

const SQLITE_HEADER = Buffer.from('SQLite format 3\0', 'latin1');

/**
 * Checks that `file` is a regular file, through a descriptor opened without
 * following a symlink (and without blocking on a FIFO), before anything is
 * done to it; `main`: empty or SQLite. Made private (0600) through that same
 * descriptor when `makePrivate`. False when there is no such file.
 */
function checkStateFile(path: string, file: string, main: boolean, makePrivate: boolean): boolean {
  const what = file === path ? '' : ` (its ${file.slice(path.length + 1)} file)`;
  let fd: number;
  try {
    fd = openSync(file, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return false;
    if (code === 'ELOOP') throw new LineSignerError('SYNC', `--state ${path}${what}: a symbolic link, not a state file; give the state file itself (nothing was changed)`);
    throw new LineSignerError('SYNC', `--state ${path}${what}: cannot open it (${code ?? (err as Error).message})`);
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) {
      const kind = st.isDirectory() ? 'a folder' : st.isCharacterDevice() || st.isBlockDevice() ? 'a device' : st.isFIFO() ? 'a FIFO' : 'not a regular file';
      throw new LineSignerError('SYNC', `--state ${path}${what}: ${kind}, not a state file (nothing was changed)`);
    }
    if (main && st.size > 0) {
      const head = Buffer.alloc(SQLITE_HEADER.length);
      if (readSync(fd, head, 0, head.length, 0) !== head.length || !head.equals(SQLITE_HEADER)) {
        throw new LineSignerError('SYNC', `--state ${path}: not a state file (not SQLite; nothing was changed): give a sync state file, or a new path`);
      }
    }
    // The state holds no secret, but it says which devices exist.
    if (makePrivate && (st.mode & 0o077) !== 0) fchmodSync(fd, 0o600);
    return true;
  } finally {
    closeSync(fd);
  }
}

/**
 * The state, opened only once `path` is known to be a state file (or
 * missing: then created, exclusively, 0600). A dry run creates and changes
 * nothing: it works on a copy in memory.
 */
function openState(path: string, dryRun: boolean): Database.Database {
  const sidecars = [`${path}-wal`, `${path}-shm`];
  let exists = checkStateFile(path, path, true, !dryRun);
  if (!exists && !dryRun) {
    try {
      // O_EXCL: never through a symlink, never someone else's file.
      closeSync(openSync(path, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw new LineSignerError('SYNC', `--state ${path}: cannot create it (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
      // Made meanwhile: checked as any existing one.
      checkStateFile(path, path, true, true);
    }
    exists = true;
  }
  const present = sidecars.map((f) => checkStateFile(path, f, false, !dryRun));
  let db: Database.Database;
  try {
    if (!dryRun) db = new Database(path);
    else if (!exists || statSync(path).size === 0) db = new Database(':memory:');
    else {
      // Read as it is: the file alone when no run left a -wal beside it (a read-only
      // connection would create one), else through both. Bytes 18-19 say WAL (2):
      // the copy in memory is made a rollback-journal database (1) to open.
      let image: Buffer;
      if (!present[0]) image = readFileSync(path);
      else {
        // Through both, copied to a private folder first: a read-only connection beside them would
        // make the -shm a killed run may have left out.
        const scratch = mkdtempSync(join(tmpdir(), 'line-signer-dry-run-'));
        try {
          copyFileSync(path, join(scratch, 'state.db'));
          copyFileSync(`${path}-wal`, join(scratch, 'state.db-wal'));
          const original = new Database(join(scratch, 'state.db'), { readonly: true, fileMustExist: true });
          try {
            image = original.serialize();
          } finally {
            original.close();
          }
        } finally {
          rmSync(scratch, { recursive: true, force: true });
        }
      }
      image[18] = 1;
      image[19] = 1;
      db = new Database(image);
    }
  } catch (err) {
    throw new LineSignerError('SYNC', `--state ${path}: not a state file (${(err as Error).message})`);
  }
  try {
    db.pragma('journal_mode = WAL');
    db.pragma('synchronous = FULL');
    db.pragma('busy_timeout = 5000');
    if (db.prepare("SELECT 1 FROM sqlite_master WHERE name = 'items'").get()) {
      throw new LineSignerError('SYNC', `--state ${path}: a state file of an older line-signer (keyed by station id, not by key and API); give a new --state file`);
    }
    db.exec(`
      CREATE TABLE IF NOT EXISTS batches (
        station_key TEXT NOT NULL, api TEXT NOT NULL, station TEXT NOT NULL, number INTEGER NOT NULL,
        sha256 TEXT NOT NULL, synced_at TEXT NOT NULL,
        PRIMARY KEY (station_key, api, station, number));
      CREATE TABLE IF NOT EXISTS devices (
        station_key TEXT NOT NULL, api TEXT NOT NULL, device_id TEXT NOT NULL,
        best_seq INTEGER, best_name TEXT, best_pem TEXT,
        revoked_upto INTEGER NOT NULL DEFAULT -1,
        held TEXT NOT NULL DEFAULT 'unknown', held_seq INTEGER, held_name TEXT, held_pem TEXT,
        intent TEXT, intent_seq INTEGER, intent_name TEXT, intent_pem TEXT, attempts INTEGER NOT NULL DEFAULT 0, http_status INTEGER, detail TEXT, updated_at TEXT,
        PRIMARY KEY (station_key, api, device_id));`);
  } catch (err) {
    db.close();
    if (err instanceof LineSignerError) throw err;
    throw new LineSignerError('SYNC', `--state ${path}: not a state file (${(err as Error).message})`);
  }
  return db;
}

const sleep = (ms: number, signal?: AbortSignal): Promise<void> =>
  new Promise((resolve) => {
    if (ms <= 0) return resolve();
    const t = setTimeout(done, ms);
    function done(): void {
      clearTimeout(t);
      signal?.removeEventListener('abort', done);
      resolve();
    }
    signal?.addEventListener('abort', done, { once: true });
  });

/** Retry-After as milliseconds (delta-seconds or an HTTP date), or null. */
export function retryAfterMs(value: string | null, now = Date.now()): number | null {
  if (value === null) return null;
  const v = value.trim();
  if (/^\d+$/.test(v)) return Number(v) * 1000;
  const at = Date.parse(v);
  return Number.isNaN(at) ? null : Math.max(0, at - now);
}

function publicKeyDer(pem: string): Buffer | null {
  try {
    const key = pem.includes('CERTIFICATE') ? new X509Certificate(pem).publicKey : createPublicKey(pem);
    return key.export({ type: 'spki', format: 'der' });
  } catch {
    return null;
  }
}

class TokenRefused extends Error {}
class Killed extends Error {}

type Answer = { status: number; body: string; location: string | null; retryAfter: string | null } | { error: string };

export async function sync(opts: SyncOptions): Promise<SyncSummary> {
  const pins = readPins(opts);
  const { base } = apiBase(opts.api, !!opts.insecureHttp);
  const token = readApiToken(opts.tokenFile);
  const redact = (text: string): string => printable(text.split(token).join('[token]')).slice(0, DETAIL_CHARS);
  const db = openState(opts.statePath, !!opts.dryRun);
  try {
    // 1. Verify every batch against the pins and fold its records into the
    //    wanted state, in one transaction: nothing is kept unless all verify.
    const q = {
      batch: db.prepare<[string, string, string, number], { sha256: string }>('SELECT sha256 FROM batches WHERE station_key = ? AND api = ? AND station = ? AND number = ?'),
      addBatch: db.prepare('INSERT OR IGNORE INTO batches (station_key, api, station, number, sha256, synced_at) VALUES (?, ?, ?, ?, ?, ?)'),
      issuance: db.prepare(`INSERT INTO devices (station_key, api, device_id, best_seq, best_name, best_pem) VALUES (@key, @api, @device, @seq, @name, @pem)
        ON CONFLICT (station_key, api, device_id) DO UPDATE SET best_seq = excluded.best_seq, best_name = excluded.best_name, best_pem = excluded.best_pem
        WHERE devices.best_seq IS NULL OR excluded.best_seq > devices.best_seq`),
      revocation: db.prepare(`INSERT INTO devices (station_key, api, device_id, revoked_upto) VALUES (@key, @api, @device, @upto)
        ON CONFLICT (station_key, api, device_id) DO UPDATE SET revoked_upto = max(devices.revoked_upto, excluded.revoked_upto)`),
    };
    let stationKey = '';
    let devices: DeviceRow[] = [];
    db.exec('BEGIN IMMEDIATE');
    let open = true;
    try {
      const { batches, problems } = await verifyBatches(opts.files, {
        stationKey: pins.stationKey,
        factoryRoot: pins.factoryRoot,
        onRecord: (line, m, key) => {
          // Records of a batch that turns out not to verify are rolled back with it.
          if (!key) return;
          if (line.type === 'issuance') {
            q.issuance.run({ key, api: base, device: line.device_id, seq: line.seq, name: line.name ?? line.device_id, pem: line.client_pem });
          } else {
            // A mark without after_seq (format 1) revokes whatever its batch and the ones before it issued.
            q.revocation.run({ key, api: base, device: line.device_id, upto: line.after_seq ?? Math.max(m.last_seq, m.first_seq - 1) });
          }
        },
      });
      // A gap inside the given set is the gap a batch given alone leaves: allowed with --allow-gap, else refused as a gap.
      const given = batches.filter((b) => b.manifest).sort((x, y) => x.manifest!.batch - y.manifest!.batch);
      const holes = given.flatMap((b, i) => {
        const p = given[i - 1]?.manifest;
        const m = b.manifest!;
        return p && p.station === m.station && m.batch > p.batch + 1 ? [{ file: basename(b.file), from: p.batch, to: m.batch }] : [];
      });
      const isHole = (problem: string): boolean => holes.some((h) => problem.startsWith(`${h.file}: gap: batch`));
      const others = problems.filter((p) => !isHole(p));
      if (others.length) {
        throw new LineSignerError('SYNC', `nothing synced: the batches do not verify against the pinned key:\n  ${problems.join('\n  ')}`);
      }
      if (holes.length && !opts.allowGap) {
        const list = holes.map((h) => `batch${h.to - h.from > 2 ? `es ${h.from + 1}-${h.to - 1}` : ` ${h.from + 1}`} missing between ${h.from} and ${h.to}`).join('; ');
        throw new LineSignerError('SYNC', `nothing synced: gap inside the given batches: ${list} (give the missing batch${holes.length > 1 || holes[0]!.to - holes[0]!.from > 2 ? 'es' : ''} too, or --allow-gap to sync these without)`);
      }
      const keys = new Set(batches.map((b) => b.stationSpkiSha256));
      if (keys.size !== 1 || !batches[0]?.stationSpkiSha256) throw new LineSignerError('SYNC', 'nothing synced: the batches are not all signed by one station key');
      stationKey = batches[0].stationSpkiSha256;
      const station = batches[0].manifest!.station;

      // 2. The batches against what this state synced before (same key, same API).
      const givenNumbers = new Set(batches.map((b) => b.manifest!.batch));
      for (const b of [...batches].sort((x, y) => x.manifest!.batch - y.manifest!.batch)) {
        const n = b.manifest!.batch;
        const known = q.batch.get(stationKey, base, station, n);
        if (known) {
          if (known.sha256 !== b.sha256) {
            throw new LineSignerError('SYNC', `nothing synced: ${b.file} is batch ${n} of ${station}, but the batch ${n} synced earlier had other bytes (sha256 ${known.sha256}, this one ${b.sha256}): one number, two batches`);
          }
          continue;
        }
        const before = n > 1 ? q.batch.get(stationKey, base, station, n - 1) : undefined;
        if (before && before.sha256 !== b.manifest!.previous_batch_sha256) {
          throw new LineSignerError('SYNC', `nothing synced: ${b.file} (batch ${n}) does not follow the batch ${n - 1} synced earlier (previous batch hash differs)`);
        }
        if (n > 1 && !before && !givenNumbers.has(n - 1) && !opts.allowGap) {
          throw new LineSignerError('SYNC', `nothing synced: gap: batch ${n - 1} of ${station} was never synced to ${base} and is not given (give it, or --allow-gap)`);
        }
        q.addBatch.run(stationKey, base, station, n, b.sha256, new Date().toISOString());
      }
      devices = db.prepare<[string, string], DeviceRow>('SELECT * FROM devices WHERE station_key = ? AND api = ? ORDER BY device_id').all(stationKey, base);
      // A dry run plans from the folded state, then forgets it.
      db.exec(opts.dryRun ? 'ROLLBACK' : 'COMMIT');
      open = false;
    } finally {
      if (open) db.exec('ROLLBACK');
    }
    return await reconcile(db, devices, { ...opts, stationKey }, base, token, redact);
  } finally {
    db.close();
  }
}

const wanted = (d: DeviceRow): { seq: number; name: string; pem: string } | null =>
  d.best_seq !== null && d.best_seq > d.revoked_upto ? { seq: d.best_seq, name: d.best_name!, pem: d.best_pem! } : null;

/** Nothing to send: the API holds exactly what the ledger wants, and no step is in doubt. */
const settled = (d: DeviceRow): boolean => {
  if (d.intent) return false;
  const w = wanted(d);
  return w ? d.held === 'present' && d.held_seq === w.seq : d.held === 'absent';
};

/** The steps a device needs, as a dry run lists them. */
function plan(d: DeviceRow): Array<{ action: 'check' | 'delete' | 'register'; name: string }> {
  const steps: Array<{ action: 'check' | 'delete' | 'register'; name: string }> = [];
  if (d.intent) steps.push({ action: 'check', name: d.intent_name! });
  const want = wanted(d);
  if (d.held === 'present' && (!want || d.held_seq !== want.seq)) steps.push({ action: 'delete', name: d.held_name! });
  else if (!want && d.held === 'unknown') steps.push({ action: 'delete', name: d.best_name ?? d.device_id });
  if (want && !(d.held === 'present' && d.held_seq === want.seq)) steps.push({ action: 'register', name: want.name });
  return steps;
}

async function reconcile(
  db: Database.Database,
  all: DeviceRow[],
  opts: SyncOptions & { stationKey: string },
  base: string,
  token: string,
  redact: (text: string) => string,
): Promise<SyncSummary> {
  const todo = all.filter((d) => !settled(d));
  const summary: SyncSummary = { devices: all.length, pending: todo.length, registered: 0, alreadyThere: 0, deleted: 0, failed: 0, upToDate: all.length - todo.length, dryRun: !!opts.dryRun };
  if (opts.dryRun) {
    for (const d of todo) {
      for (const step of plan(d)) {
        const detail = step.action === 'check' ? 'would first ask the API (a stopped run sent a step) about' : `would ${step.action}`;
        opts.onStep?.({ device: d.device_id, name: step.name, action: step.action, outcome: 'planned', detail });
      }
    }
    return summary;
  }

  const save = db.prepare(`UPDATE devices SET held = @held, held_seq = @held_seq, held_name = @held_name, held_pem = @held_pem,
    intent = @intent, intent_seq = @intent_seq, intent_name = @intent_name, intent_pem = @intent_pem,
    attempts = attempts + @attempts, http_status = @http_status, detail = @detail, updated_at = @at
    WHERE station_key = @key AND api = @api AND device_id = @device`);
  type Change = Partial<Pick<DeviceRow, 'held' | 'held_seq' | 'held_name' | 'held_pem' | 'intent' | 'intent_seq' | 'intent_name' | 'intent_pem'>> & {
    attempts?: number;
    http_status?: number | null;
    detail?: string | null;
  };
  const record = (d: DeviceRow, change: Change): void => {
    // Once stopped (killed), nothing more is recorded: as if the process were gone.
    if (opts.signal?.aborted) throw new Killed('killed');
    const { attempts = 0, http_status = null, detail = null, ...held } = change;
    Object.assign(d, held);
    save.run({
      held: d.held, held_seq: d.held_seq, held_name: d.held_name, held_pem: d.held_pem,
      intent: d.intent, intent_seq: d.intent_seq, intent_name: d.intent_name, intent_pem: d.intent_pem,
      attempts, http_status, detail, at: new Date().toISOString(), key: opts.stationKey, api: base, device: d.device_id,
    });
  };
  const ABSENT = { held: 'absent' as const, held_seq: null, held_name: null, held_pem: null };
  const NO_INTENT = { intent: null, intent_seq: null, intent_name: null, intent_pem: null };

  const tries = Math.max(1, opts.tries ?? 6);
  const baseMs = opts.retryBaseMs ?? 500;
  const maxWait = opts.maxRetryAfterMs ?? 300_000;
  const timeoutMs = opts.timeoutMs ?? 15_000;
  // One gate for the whole run: a throttle or an outage slows every worker, not one request.
  let openAt = 0;
  let outage = 0;
  // And one budget: an API that throttles, then answers something final, then throttles again never
  // fails many in a row, yet could hold a run for days.
  const runWaitBudget = opts.maxRunWaitMs ?? 30 * 60_000;
  let waited = 0;
  let refused: string | null = null;
  const checkRunning = (): void => {
    if (opts.signal?.aborted) throw new Killed('killed');
    if (refused) throw new TokenRefused(refused);
  };

  const call = async (method: 'PUT' | 'DELETE' | 'GET', name: string | null, body?: string): Promise<Answer> => {
    checkRunning();
    while (openAt > Date.now()) {
      await sleep(openAt - Date.now(), opts.signal);
      checkRunning();
    }
    // "." and ".." are resolved away by any URL parser (encoded or not): such a name cannot be a path segment, and no request is sent for it.
    if (name !== null && /^(?:\.|%2e){1,2}$/i.test(name)) {
      return { status: 400, body: `not sent: the device name ${JSON.stringify(name)} cannot be a path segment of the device API`, location: null, retryAfter: null };
    }
    const url = name === null ? `${base}/ota/devices/` : `${base}/ota/devices/${encodeURIComponent(name)}/`;
    const signal = opts.signal ? AbortSignal.any([opts.signal, AbortSignal.timeout(timeoutMs)]) : AbortSignal.timeout(timeoutMs);
    try {
      const res = await fetch(url, {
        method,
        // Never followed: a redirect's target is another place, and only the API's own 2xx counts.
        redirect: 'manual',
        headers: { 'OSF-TOKEN': token, ...(body ? { 'content-type': 'application/json' } : {}) },
        body,
        signal,
      });
      return { status: res.status, body: await readCapped(res), location: res.headers.get('location'), retryAfter: res.headers.get('retry-after') };
    } catch (err) {
      if (opts.signal?.aborted) throw new Killed('killed');
      const e = err as Error & { cause?: { code?: string } };
      return { error: e.name === 'TimeoutError' ? `no answer within ${timeoutMs} ms` : redact(e.cause?.code ?? e.message) };
    }
  };

  /**
   * One request under the run's retry rules: a final answer, or the last
   * failure after `tries`. A PUT or DELETE whose answer was lost (a reset, a
   * time-out, a 5xx other than 503) may have taken effect: `inDoubt` asks
   * the API before it is sent again, and says 'done', 'resend', or
   * 'unknown' (then the step fails and its intent stays for the next run).
   */
  const attempt = async (
    method: 'PUT' | 'DELETE' | 'GET',
    name: string | null,
    body?: string,
    inDoubt?: () => Promise<'done' | 'resend' | 'unknown'>,
  ): Promise<{ answer: Answer; attempts: number; settled?: true }> => {
    for (let n = 1; ; n++) {
      const sentAt = Date.now();
      const answer = await call(method, name, body);
      if ('status' in answer && (answer.status === 401 || answer.status === 403)) {
        refused ??= `the API refused the token (HTTP ${answer.status}: ${redact(answer.body)}); stopped at once, nothing more sent: check --token-file`;
        throw new TokenRefused(refused);
      }
      const retriable = 'error' in answer || answer.status >= 500 || answer.status === 429;
      if (!retriable) {
        outage = 0;
        return { answer, attempts: n };
      }
      const hinted = 'status' in answer && (answer.status === 429 || answer.status === 503) ? retryAfterMs(answer.retryAfter) : null;
      const wait = Math.min(maxWait, hinted ?? baseMs * 2 ** Math.min(outage, 16) * (0.75 + Math.random() / 2));
      outage++;
      const before = openAt;
      openAt = Math.max(openAt, Date.now() + wait);
      // The time lost: the wait ahead, and a request that failed only after its time-out (a stall).
      waited += Math.max(0, openAt - Math.max(before, Date.now())) + ('error' in answer ? Date.now() - sentAt : 0);
      if (waited > runWaitBudget) {
        refused ??= `the API kept this run waiting ${Math.round(waited / 1000)} s in all (throttles and failures, last: ${describe(answer)}); stopped, nothing more sent: run sync again later, it resumes`;
        throw new TokenRefused(refused);
      }
      // An API that fails everything in a row is down (or throttling hard): the run stops, and the next one resumes.
      if (outage >= Math.max(8, 2 * tries)) {
        refused ??= `the API failed ${outage} requests in a row (last: ${describe(answer)}); stopped, nothing more sent: run sync again later, it resumes`;
        throw new TokenRefused(refused);
      }
      if (n >= tries) return { answer, attempts: n };
      const refusedUnprocessed = 'status' in answer && (answer.status === 429 || answer.status === 503);
      if (inDoubt && !refusedUnprocessed) {
        const found = await inDoubt();
        if (found === 'done') return { answer, attempts: n, settled: true };
        if (found === 'unknown') return { answer, attempts: n };
      }
    }
  };

  const describe = (a: Answer): string => {
    if ('error' in a) return a.error;
    if (a.status >= 300 && a.status < 400) return `HTTP ${a.status}: a redirect${a.location ? ` to ${redact(a.location)}` : ''}, not followed: only the API's own 2xx counts`;
    return `HTTP ${a.status}: ${redact(a.body)}`;
  };
  const statusOf = (a: Answer): number | null => ('status' in a ? a.status : null);
  const ok = (a: Answer): boolean => 'status' in a && a.status >= 200 && a.status < 300;
  const report = (d: DeviceRow, name: string, action: StepReport['action'], outcome: StepOutcome, detail = ''): void => {
    if (outcome === 'registered') summary.registered++;
    else if (outcome === 'exists') summary.alreadyThere++;
    else if (outcome === 'deleted') summary.deleted++;
    else if (outcome === 'failed') summary.failed++;
    opts.onStep?.({ device: d.device_id, name, action, outcome, detail });
  };
  const fail = (d: DeviceRow, name: string, action: StepReport['action'], detail: string, attempts: number, status: number | null = null): false => {
    record(d, { attempts, http_status: status, detail });
    report(d, name, action, 'failed', detail);
    return false;
  };

  /** What the API holds under `name`: absent, this certificate's key, or another key. */
  const lookUp = async (name: string, pem: string | null): Promise<{ present: boolean; ours: boolean; attempts: number } | { failed: string; attempts: number }> => {
    const { answer, attempts } = await attempt('GET', name);
    if ('status' in answer && answer.status === 404) return { present: false, ours: false, attempts };
    if (!ok(answer) || !('body' in answer)) return { failed: `GET ${name}: ${describe(answer)}`, attempts };
    let key: unknown;
    try {
      key = (JSON.parse(answer.body) as { 'public-key'?: unknown })['public-key'];
    } catch {
      key = undefined;
    }
    const theirs = typeof key === 'string' ? publicKeyDer(key) : null;
    const mine = pem ? publicKeyDer(pem) : null;
    return { present: true, ours: !!theirs && !!mine && theirs.equals(mine), attempts };
  };

  /**
   * A step a stopped run may have sent: ask the API what it did, instead of
   * sending it again. A DELETE took effect unless the name still holds the
   * key it was sent for (another key there is another device's registration).
   */
  const resolveIntent = async (d: DeviceRow): Promise<boolean> => {
    const name = d.intent_name!;
    // An intent recorded by an earlier line-signer carries no certificate for a DELETE: the one held then.
    const pem = d.intent_pem ?? (d.intent === 'DELETE' ? d.held_pem ?? d.best_pem : null);
    const h = await lookUp(name, pem);
    if ('failed' in h) return fail(d, name, d.intent === 'PUT' ? 'register' : 'delete', h.failed, h.attempts);
    if (d.intent === 'DELETE') record(d, { ...(h.present && h.ours ? {} : ABSENT), ...NO_INTENT });
    else if (h.present && h.ours) record(d, { held: 'present', held_seq: d.intent_seq, held_name: name, held_pem: d.intent_pem, ...NO_INTENT });
    else record(d, { ...(d.held === 'unknown' && !h.present ? ABSENT : {}), ...NO_INTENT });
    return true;
  };

  /**
   * This device's registration under `name` (certificate `pem`) gone: DELETE,
   * only while a GET shows the API holds the name with this key, before it is
   * sent and again before it is sent again. Absent is done; another key there
   * is another device's registration, never deleted (this device's is gone,
   * when this state saw it registered; when it never did, that is a failure).
   */
  const remove = async (d: DeviceRow, name: string, pem: string | null): Promise<boolean> => {
    const seen = d.held === 'present';
    const h = await lookUp(name, pem);
    if ('failed' in h) return fail(d, name, 'delete', h.failed, h.attempts);
    if (h.present && !h.ours) {
      const other = `the API holds ${name} with another key than this device's: not deleted (another device's registration)`;
      if (!seen) return fail(d, name, 'delete', other, h.attempts, 200);
      record(d, { ...ABSENT, ...NO_INTENT, attempts: h.attempts, http_status: 200, detail: `${other}; this device's is gone` });
      report(d, name, 'delete', 'deleted', other);
      return true;
    }
    if (!h.present) {
      record(d, { ...ABSENT, ...NO_INTENT, attempts: h.attempts, http_status: 404 });
      if (seen) report(d, name, 'delete', 'deleted', 'not there');
      return true;
    }
    record(d, { intent: 'DELETE', intent_name: name, intent_seq: null, intent_pem: pem });
    const { answer, attempts, settled } = await attempt('DELETE', name, undefined, async () => {
      const again = await lookUp(name, pem);
      return 'failed' in again ? 'unknown' : again.present && again.ours ? 'resend' : 'done';
    });
    if (settled || ok(answer) || statusOf(answer) === 404) {
      record(d, { ...ABSENT, ...NO_INTENT, attempts: h.attempts + attempts, http_status: settled ? 404 : statusOf(answer) });
      report(d, name, 'delete', 'deleted');
      return true;
    }
    return fail(d, name, 'delete', describe(answer), h.attempts + attempts, statusOf(answer));
  };

  const register = async (d: DeviceRow, want: { seq: number; name: string; pem: string }): Promise<boolean> => {
    const present = { held: 'present' as const, held_seq: want.seq, held_name: want.name, held_pem: want.pem, ...NO_INTENT };
    record(d, { intent: 'PUT', intent_seq: want.seq, intent_name: want.name, intent_pem: want.pem });
    const body = JSON.stringify({ 'client.pem': want.pem, name: want.name, ...(opts.group ? { group: opts.group } : {}) });
    let taken = false;
    const { answer, attempts, settled } = await attempt('PUT', null, body, async () => {
      const h = await lookUp(want.name, want.pem);
      if ('failed' in h) return 'unknown';
      if (h.present && !h.ours) taken = true;
      return h.present ? (h.ours ? 'done' : 'unknown') : 'resend';
    });
    if (taken) return fail(d, want.name, 'register', `the API holds ${want.name} with another key; not replaced (the ledger's certificate is seq ${want.seq})`, attempts, 409);
    if (settled || ok(answer)) {
      record(d, { ...present, attempts, http_status: settled ? 200 : statusOf(answer) });
      report(d, want.name, 'register', 'registered');
      return true;
    }
    if (statusOf(answer) === 409) {
      // The name exists there: done only when it holds this certificate's key, never assumed.
      const h = await lookUp(want.name, want.pem);
      if ('failed' in h) return fail(d, want.name, 'register', h.failed, attempts + h.attempts, 409);
      if (h.present && h.ours) {
        record(d, { ...present, attempts, http_status: 409 });
        report(d, want.name, 'register', 'exists');
        return true;
      }
      return fail(d, want.name, 'register', `HTTP 409: the API holds ${want.name} with another key; not replaced (the ledger's certificate is seq ${want.seq})`, attempts, 409);
    }
    return fail(d, want.name, 'register', describe(answer), attempts, statusOf(answer));
  };

  /**
   * A device's first steps: settle any step in doubt, leave what is held.
   * Its registration, if one is wanted, waits for the second pass (true: it is due).
   */
  const leave = async (d: DeviceRow): Promise<boolean> => {
    if (d.intent && !(await resolveIntent(d))) return false;
    const want = wanted(d);
    if (d.held === 'present' && (!want || d.held_seq !== want.seq)) {
      if (!(await remove(d, d.held_name!, d.held_pem))) return false;
    }
    // Not registered by this state (as far as it knows), but revoked: the API must not hold it. A name is
    // only the device's while the API holds it with the device's key: never delete another device's registration.
    if (!want) {
      if (d.held === 'unknown') await remove(d, d.best_name ?? d.device_id, d.best_pem);
      return false;
    }
    return d.held !== 'present';
  };

  let finished = 0;
  const inParallel = async (list: DeviceRow[], step: (d: DeviceRow) => Promise<void>): Promise<unknown[]> => {
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < list.length) await step(list[next++]!);
    };
    // Devices are independent: several at once; one device's steps never overlap.
    const results = await Promise.allSettled(Array.from({ length: Math.max(1, opts.concurrency ?? 4) }, () => worker()));
    return results.flatMap((r) => (r.status === 'rejected' ? [r.reason as unknown] : []));
  };
  // Every DELETE of the run before any PUT: a name a re-issue freed is free before
  // another device's registration asks for it (else a 409, and a rerun).
  const toRegister: DeviceRow[] = [];
  let errors = await inParallel(todo, async (d) => {
    if (await leave(d)) toRegister.push(d);
    else opts.onProgress?.(++finished, todo.length);
  });
  if (!errors.length) {
    errors = await inParallel(toRegister, async (d) => {
      await register(d, wanted(d)!);
      opts.onProgress?.(++finished, todo.length);
    });
  }
  if (errors.some((e) => e instanceof Killed)) throw new LineSignerError('SYNC', 'sync was stopped; run it again to resume');
  const refusal = errors.find((e) => e instanceof TokenRefused);
  if (refusal) throw new LineSignerError('SYNC', (refusal as Error).message);
  if (errors.length) throw errors[0];
  return summary;
}

/** The body as text, at most MAX_BODY_BYTES of it; the rest is never read. */
async function readCapped(res: Response): Promise<string> {
  if (!res.body) return '';
  const reader = res.body.getReader();
  const parts: Uint8Array[] = [];
  let size = 0;
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      parts.push(value.subarray(0, Math.max(0, MAX_BODY_BYTES - size)));
      size += value.length;
      if (size >= MAX_BODY_BYTES) break;
    }
  } finally {
    await reader.cancel().catch(() => undefined);
  }
  return Buffer.concat(parts).toString('utf8');
}
