/**
 * `line-signer sync`, on a connected machine: verifies the batches, then
 * registers each device with the device API (PUT /ota/devices/) and
 * deletes revoked ones (DELETE /ota/devices/<name>/). Its own SQLite state
 * makes a rerun skip what is done and an interrupted run resume; an item is
 * marked done in the same moment its answer arrives.
 */
import { readPrivateFile } from '../files.js';
import Database from 'better-sqlite3';
import { LineSignerError } from '../errors.js';
import { verifyBatches } from './verify.js';

export interface SyncOptions {
  files: string[];
  api: string;
  tokenFile: string;
  group?: string | undefined;
  dryRun?: boolean | undefined;
  statePath: string;
  stationKey?: string | undefined;
  concurrency?: number | undefined;
  timeoutMs?: number | undefined;
  /** Tries per item for 5xx, time-outs and connection errors. */
  tries?: number | undefined;
  retryBaseMs?: number | undefined;
  onProgress?: ((done: number, total: number) => void) | undefined;
  onItem?: ((item: { device: string; kind: string; outcome: Outcome; detail: string }) => void) | undefined;
}

export type Outcome = 'done' | 'exists' | 'deleted' | 'failed';

export interface SyncSummary {
  total: number;
  done: number;
  alreadyThere: number;
  deleted: number;
  failed: number;
  skipped: number;
  dryRun: boolean;
}

interface Item {
  station: string;
  kind: 'issuance' | 'revocation';
  key: number;
  device: string;
  client_pem: string | null;
  status: string;
  attempts: number;
}

/** The API token: from a file that only its owner can read; never in a message. */
export function readApiToken(path: string): string {
  const token = readPrivateFile(path, '--token-file', 'SYNC').trim();
  if (!token) throw new LineSignerError('SYNC', `--token-file: ${path} is empty`);
  return token;
}

function openState(path: string): Database.Database {
  const db = new Database(path);
  db.pragma('journal_mode = WAL');
  db.pragma('synchronous = FULL');
  db.exec(`CREATE TABLE IF NOT EXISTS items (
    station TEXT NOT NULL, kind TEXT NOT NULL, key INTEGER NOT NULL, device TEXT NOT NULL,
    client_pem TEXT, status TEXT NOT NULL DEFAULT 'pending', attempts INTEGER NOT NULL DEFAULT 0,
    http_status INTEGER, detail TEXT, updated_at TEXT,
    PRIMARY KEY (station, kind, key))`);
  return db;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export async function sync(opts: SyncOptions): Promise<SyncSummary> {
  const token = readApiToken(opts.tokenFile);
  const api = opts.api.replace(/\/+$/, '');
  if (!/^https?:\/\//.test(api)) throw new LineSignerError('SYNC', `--api ${opts.api}: expected an http(s) URL`);
  const db = openState(opts.statePath);
  try {
    // Verify everything first; the items go in only if every batch checks out.
    const insert = db.prepare('INSERT OR IGNORE INTO items (station, kind, key, device, client_pem) VALUES (?, ?, ?, ?, ?)');
    db.exec('BEGIN');
    const { problems } = await verifyBatches(opts.files, {
      stationKey: opts.stationKey,
      onRecord: (line, m) => {
        if (line.type === 'issuance') insert.run(m.station, 'issuance', line.seq, line.device_id, line.client_pem);
        else insert.run(m.station, 'revocation', line.event_seq, line.device_id, null);
      },
    });
    if (problems.length) {
      db.exec('ROLLBACK');
      throw new LineSignerError('SYNC', `nothing synced: the batches do not verify:\n  ${problems.join('\n  ')}`);
    }
    db.exec('COMMIT');

    const all = db.prepare<[], Item>("SELECT * FROM items ORDER BY station, kind = 'revocation', key").all();
    const todo = all.filter((i) => i.status === 'pending' || i.status === 'failed');
    const summary: SyncSummary = { total: all.length, done: 0, alreadyThere: 0, deleted: 0, failed: 0, skipped: all.length - todo.length, dryRun: !!opts.dryRun };
    if (opts.dryRun) {
      for (const i of todo) opts.onItem?.({ device: i.device, kind: i.kind, outcome: 'done', detail: i.kind === 'issuance' ? 'would register' : 'would delete' });
      return summary;
    }
    const mark = db.prepare('UPDATE items SET status = ?, attempts = attempts + ?, http_status = ?, detail = ?, updated_at = ? WHERE station = ? AND kind = ? AND key = ?');
    const tries = opts.tries ?? 6;
    const base = opts.retryBaseMs ?? 500;
    const timeoutMs = opts.timeoutMs ?? 15_000;
    let next = 0;
    let finished = 0;

    const call = async (item: Item): Promise<{ status: number; body: string } | { error: string }> => {
      const isPut = item.kind === 'issuance';
      const url = isPut ? `${api}/ota/devices/` : `${api}/ota/devices/${encodeURIComponent(item.device)}/`;
      const body = isPut ? JSON.stringify({ 'client.pem': item.client_pem, name: item.device, ...(opts.group ? { group: opts.group } : {}) }) : undefined;
      try {
        const res = await fetch(url, {
          method: isPut ? 'PUT' : 'DELETE',
          headers: { 'OSF-TOKEN': token, ...(body ? { 'content-type': 'application/json' } : {}) },
          body,
          signal: AbortSignal.timeout(timeoutMs),
        });
        return { status: res.status, body: (await res.text()).slice(0, 500) };
      } catch (err) {
        const e = err as Error & { cause?: { code?: string } };
        return { error: e.name === 'TimeoutError' ? `no answer within ${timeoutMs} ms` : (e.cause?.code ?? e.message) };
      }
    };

    const work = async (queue: Item[]): Promise<void> => {
      while (next < queue.length) {
        const item = queue[next++]!;
        let outcome: Outcome = 'failed';
        let detail = '';
        let httpStatus: number | null = null;
        let attempts = 0;
        for (;;) {
          attempts++;
          const r = await call(item);
          const retriable = 'error' in r || r.status >= 500;
          if (!retriable) {
            httpStatus = r.status;
            if (r.status >= 200 && r.status < 300) outcome = item.kind === 'issuance' ? 'done' : 'deleted';
            else if (r.status === 409 && item.kind === 'issuance') outcome = 'exists';
            else if (r.status === 404 && item.kind === 'revocation') outcome = 'deleted';
            else detail = `HTTP ${r.status}: ${r.body}`;
            break;
          }
          detail = 'error' in r ? r.error : `HTTP ${r.status}: ${r.body}`;
          httpStatus = 'error' in r ? null : r.status;
          if (attempts >= tries) break;
          await sleep(base * 2 ** (attempts - 1) * (0.75 + Math.random() / 2));
        }
        mark.run(outcome, attempts, httpStatus, detail || null, new Date().toISOString(), item.station, item.kind, item.key);
        if (outcome === 'done') summary.done++;
        else if (outcome === 'exists') summary.alreadyThere++;
        else if (outcome === 'deleted') summary.deleted++;
        else summary.failed++;
        opts.onItem?.({ device: item.device, kind: item.kind, outcome, detail });
        opts.onProgress?.(++finished, todo.length);
      }
    };
    // Registrations first, all settled, then deletions: a revocation must not
    // overtake the registration of the same device running beside it.
    const workers = Math.max(1, opts.concurrency ?? 4);
    for (const kind of ['issuance', 'revocation'] as const) {
      const queue = todo.filter((i) => i.kind === kind);
      next = 0;
      await Promise.all(Array.from({ length: workers }, () => work(queue)));
    }
    return summary;
  } finally {
    db.close();
  }
}
