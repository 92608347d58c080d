/**
 * The policy state tables (orders, revoked, reissue_grants, the clock
 * confirmation in settings) are projections of hash-chained events, kept
 * so that a request reads one row instead of replaying history. The
 * station decides on them, so a projection edited behind its back (undo a
 * revocation, forge a re-issue grant, reset an order's count) would change
 * what it issues while every chain still verifies. These checks replay
 * the events and issuances and name each projection that differs: `ledger
 * verify` lists them, and a station does not start on them.
 *
 * The replay orders by the events' seq, never by time (a clock may jump):
 * a certificate that needed a re-issue grant records the grant it used in
 * a `reissue_used` event in its own transaction, so grants and revocations
 * replay exactly. Ledgers from before that event are read leniently (a
 * revocation followed by a grant may have been cleared).
 */
import type Database from 'better-sqlite3';

export interface ProjectionProblem {
  table: 'orders' | 'revoked' | 'reissue_grants' | 'settings' | 'batches';
  key: string;
  reason: string;
}

interface EventRow {
  seq: number;
  at: string;
  kind: string;
  device_id: string | null;
  message: string | null;
  operator: string | null;
}

const ORDER_OPEN = /^work order (.+?): (\d+) certificates(?:, hardware id (.+))?$/s;
const ORDER_CLOSE = /^work order (.+?): (\d+) of \d+ issued; /s;
const CLOCK = /^clock confirmed as (\S+?)(?: after issuance seq (\d+))?: /s;

/** The revocations and grants standing now, as the replay_base event's message. */
export function replayBase(db: Database.Database): string {
  const revoked = db.prepare<[], { device_id: string; event_seq: number }>('SELECT device_id, event_seq FROM revoked ORDER BY device_id').all().map((r) => [r.device_id, r.event_seq]);
  const grants = db.prepare<[], { device_id: string }>('SELECT device_id FROM reissue_grants ORDER BY device_id').all().map((r) => r.device_id);
  return JSON.stringify({ revoked, grants });
}

/**
 * The batches table against the export events that recorded each batch:
 * contiguous, each as its event says, its events ending before that event.
 * Export reads where the next batch starts from this table, which no hash
 * covers: a row deleted made a second "batch 1", a range stretched past a
 * revocation left the revocation out of every batch.
 */
export function batchProblems(db: Database.Database): ProjectionProblem[] {
  const problems: ProjectionProblem[] = [];
  const exports = new Map<number, { message: string; seq: number }>();
  for (const e of db.prepare<[], { seq: number; message: string | null }>("SELECT seq, message FROM events WHERE kind = 'export' ORDER BY seq").all()) {
    const m = /^batch (\d+): /.exec(e.message ?? '');
    if (m) exports.set(Number(m[1]), { message: e.message!, seq: e.seq });
  }
  const rows = db
    .prepare<[], { number: number; first_seq: number; last_seq: number; first_event_seq: number; last_event_seq: number; file_sha256: string }>(
      'SELECT number, first_seq, last_seq, first_event_seq, last_event_seq, file_sha256 FROM batches ORDER BY number',
    )
    .all();
  let prev: (typeof rows)[number] | null = null;
  for (const b of rows) {
    const key = String(b.number);
    if (b.number !== (prev?.number ?? 0) + 1) problems.push({ table: 'batches', key, reason: `batch ${(prev?.number ?? 0) + 1} is missing` });
    if (b.first_seq !== (prev?.last_seq ?? 0) + 1) problems.push({ table: 'batches', key, reason: `its issuances start at seq ${b.first_seq}, not right after the previous batch` });
    if (b.first_event_seq !== (prev?.last_event_seq ?? 0) + 1) problems.push({ table: 'batches', key, reason: 'its events do not start right after the previous batch' });
    const said = exports.get(b.number);
    if (!said) problems.push({ table: 'batches', key, reason: 'no export event records it' });
    else {
      const base = `batch ${b.number}: seq ${b.first_seq}-${b.last_seq}, sha256 ${b.file_sha256}`;
      // Batches from this version on also name their certificates line's SHA-256.
      const same = said.message === base || (said.message.startsWith(base) && /^, certificates sha256 [0-9a-f]{64}$/.test(said.message.slice(base.length)));
      if (!same) problems.push({ table: 'batches', key, reason: 'differs from its export event (range or file hash changed)' });
      // Its events end before the export event that recorded it: a range stretched past it would skip
      // later events (a revocation) from every batch.
      if (b.last_event_seq >= said.seq || b.first_event_seq > b.last_event_seq + 1) {
        problems.push({ table: 'batches', key, reason: `its events (seq ${b.first_event_seq}-${b.last_event_seq}) do not end before its export event (seq ${said.seq})` });
      }
    }
    prev = b;
    exports.delete(b.number);
  }
  for (const n of exports.keys()) problems.push({ table: 'batches', key: String(n), reason: 'the chain records its export, but its row in the batches table is gone' });
  return problems;
}

export function projectionProblems(db: Database.Database): ProjectionProblem[] {
  const problems: ProjectionProblem[] = batchProblems(db);
  const events = db
    .prepare<[], EventRow>("SELECT seq, at, kind, device_id, message, operator FROM events WHERE kind IN ('order_open', 'order_close', 'revocation', 'reissue_granted', 'reissue_used', 'replay_base', 'clock_confirm') ORDER BY seq")
    .all();
  const issued = db.prepare<[], { n: number | null }>('SELECT max(seq) AS n FROM issuances').get()?.n ?? 0;

  // Orders: each row as its order_open and order_close events made it, its count the issuances that name it.
  const opened = new Map<string, { quantity: number; hardwareId: string | null; operator: string | null; seq: number }>();
  const closed = new Map<string, { operator: string | null; issued: number; seq: number }>();
  for (const e of events) {
    if (e.kind === 'order_open') {
      const m = ORDER_OPEN.exec(e.message ?? '');
      if (m) opened.set(m[1]!, { quantity: Number(m[2]), hardwareId: m[3] ?? null, operator: e.operator, seq: e.seq });
    } else if (e.kind === 'order_close') {
      const m = ORDER_CLOSE.exec(e.message ?? '');
      if (m) closed.set(m[1]!, { operator: e.operator, issued: Number(m[2]), seq: e.seq });
    }
  }
  const counts = new Map(db.prepare<[], { id: string; n: number }>('SELECT work_order AS id, count(*) AS n FROM issuances WHERE work_order IS NOT NULL GROUP BY work_order').all().map((r) => [r.id, r.n]));
  const rows = db.prepare<[], { id: string; quantity: number; hardware_id: string | null; operator: string; issued: number; closed_at: string | null; closed_by: string | null }>('SELECT * FROM orders').all();
  const seen = new Set<string>();
  for (const o of rows) {
    seen.add(o.id);
    const ev = opened.get(o.id);
    const n = counts.get(o.id) ?? 0;
    if (!ev) {
      problems.push({ table: 'orders', key: o.id, reason: 'no order_open event opened it' });
      continue;
    }
    if (o.quantity !== ev.quantity || o.hardware_id !== ev.hardwareId || o.operator !== ev.operator) {
      problems.push({ table: 'orders', key: o.id, reason: `differs from its order_open event (event seq ${ev.seq}: ${ev.quantity} certificates by ${ev.operator ?? 'nobody'})` });
    }
    if (o.issued !== n) problems.push({ table: 'orders', key: o.id, reason: `says ${o.issued} issued, the ledger holds ${n} certificates of it` });
    if (n > ev.quantity) problems.push({ table: 'orders', key: o.id, reason: `${n} certificates issued against an order of ${ev.quantity}` });
    const close = closed.get(o.id);
    if (close !== undefined && (o.closed_at === null || o.closed_by !== close.operator)) problems.push({ table: 'orders', key: o.id, reason: 'open, or closed by someone else, though an order_close event closed it' });
    // Nothing is issued against an order after it closed: the commit checks it is open.
    if (close !== undefined && n !== close.issued) problems.push({ table: 'orders', key: o.id, reason: `${n} certificates name it, but its order_close event (seq ${close.seq}) closed it at ${close.issued}` });
    if (close === undefined && o.closed_at !== null) problems.push({ table: 'orders', key: o.id, reason: 'closed, though no order_close event closed it' });
  }
  for (const [id, ev] of opened) if (!seen.has(id)) problems.push({ table: 'orders', key: id, reason: `opened by event seq ${ev.seq}, but its row is gone` });

  // Revocations and grants, replayed in the events' own order (never by time: a clock may jump).
  // A revocation cancels a pending grant; a certificate that needed a grant (a new key, or after a
  // revocation) records the grant it used in a reissue_used event, in its own transaction.
  const state = new Map<string, { revokedBy: number | null; grantBy: number | null; grantedSinceRevocation: boolean }>();
  const of = (device: string) => {
    let d = state.get(device);
    if (!d) state.set(device, (d = { revokedBy: null, grantBy: null, grantedSinceRevocation: false }));
    return d;
  };
  // From the ledger's replay base on (written at its first start under this version), the replay is
  // exact: the base says what stood then, and every later grant use has its reissue_used event.
  const baseEvent = events.find((e) => e.kind === 'replay_base');
  let exact = false;
  for (const e of events) {
    if (e === baseEvent) {
      state.clear();
      exact = true;
      try {
        const base = JSON.parse(e.message ?? '') as { revoked: Array<[string, number]>; grants: string[] };
        for (const [device, seq] of base.revoked) of(device).revokedBy = seq;
        for (const device of base.grants) of(device).grantBy = e.seq;
      } catch {
        problems.push({ table: 'revoked', key: `event ${e.seq}`, reason: 'the replay base event is not readable' });
      }
      continue;
    }
    if (!e.device_id) continue;
    const d = of(e.device_id);
    if (e.kind === 'revocation') {
      d.revokedBy = e.seq;
      d.grantBy = null;
      d.grantedSinceRevocation = false;
    } else if (e.kind === 'reissue_granted') {
      d.grantBy = e.seq;
      d.grantedSinceRevocation = true;
    } else if (e.kind === 'reissue_used') {
      if (d.grantBy === null) problems.push({ table: 'reissue_grants', key: e.device_id, reason: `the certificate of event seq ${e.seq} used a re-issue grant no reissue_granted event made` });
      d.grantBy = null;
      d.revokedBy = null;
    }
  }
  const revokedRows = new Map(db.prepare<[], { device_id: string; event_seq: number }>('SELECT device_id, event_seq FROM revoked').all().map((r) => [r.device_id, r.event_seq]));
  for (const [device, d] of state) {
    // Before a replay base, a re-issue cleared a revocation silently; a grant made after it is the sign of that.
    if (d.revokedBy !== null && (exact || !d.grantedSinceRevocation) && !revokedRows.has(device)) {
      problems.push({ table: 'revoked', key: device, reason: `revoked by event seq ${d.revokedBy}, ${exact ? 'not re-issued' : 'no re-issue granted'} since, but not in the revoked table: it would be served again` });
    }
  }
  for (const [device, seq] of revokedRows) {
    const d = state.get(device);
    if (!d || d.revokedBy !== seq) problems.push({ table: 'revoked', key: device, reason: `names event seq ${seq}, which is not this device's standing revocation` });
  }
  for (const { device_id: device } of db.prepare<[], { device_id: string }>('SELECT device_id FROM reissue_grants').all()) {
    if (state.get(device)?.grantBy == null) problems.push({ table: 'reissue_grants', key: device, reason: 'a re-issue grant that no reissue_granted event left standing (none made, or revoked or used since)' });
  }

  // The clock confirmation: as the newest clock_confirm event says, counting no issuance made after it.
  const setting = (key: string): string | null => db.prepare<[string], { value: string }>('SELECT value FROM settings WHERE key = ?').get(key)?.value ?? null;
  const confirmedAt = setting('clock_confirmed_at');
  const afterSeq = setting('clock_confirmed_after_seq');
  if (confirmedAt !== null || afterSeq !== null) {
    const e = [...events].reverse().find((x) => x.kind === 'clock_confirm');
    const said = e ? CLOCK.exec(e.message ?? '') : null;
    if (!e || said?.[1] !== confirmedAt) {
      problems.push({ table: 'settings', key: 'clock_confirmed_at', reason: e ? `${confirmedAt} is not what the newest clock_confirm event (seq ${e.seq}) says` : 'a clock confirmation no clock_confirm event made' });
    } else if (said[2] !== undefined ? afterSeq !== said[2] : afterSeq === null || !/^\d+$/.test(afterSeq) || Number(afterSeq) > issued) {
      // (Events written before the seq was in them say less: the setting must at least not run ahead of the ledger.)
      problems.push({ table: 'settings', key: 'clock_confirmed_after_seq', reason: `${afterSeq ?? 'missing'}: not the issuance count the clock_confirm event (seq ${e.seq}) was made after${said[2] !== undefined ? ` (${said[2]})` : ''}` });
    }
  }
  return problems;
}
