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
 * Only what an edit could gain from is checked one way: a revocation
 * missing, a grant or a clock confirmation no event made. Event and
 * issuance times come from one clock, but an issuance's time is taken when
 * its request starts, so the replay orders by time only where a request
 * in flight cannot overtake an operator action (see each check).
 */
import type Database from 'better-sqlite3';

export interface ProjectionProblem {
  table: 'orders' | 'revoked' | 'reissue_grants' | 'settings';
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
const ORDER_CLOSE = /^work order (.+?): \d+ of \d+ issued; /s;
const CLOCK = /^clock confirmed as (\S+?)(?: after issuance seq (\d+))?: /s;

export function projectionProblems(db: Database.Database): ProjectionProblem[] {
  const problems: ProjectionProblem[] = [];
  const events = db
    .prepare<[], EventRow>("SELECT seq, at, kind, device_id, message, operator FROM events WHERE kind IN ('order_open', 'order_close', 'revocation', 'reissue_granted', 'clock_confirm') ORDER BY seq")
    .all();
  const issued = db.prepare<[], { n: number | null }>('SELECT max(seq) AS n FROM issuances').get()?.n ?? 0;
  const newestIssuance = db.prepare<[string], { at: string | null }>('SELECT max(issued_at) AS at FROM issuances WHERE device_id = ?');

  // Orders: each row as its order_open and order_close events made it, its count the issuances that name it.
  const opened = new Map<string, { quantity: number; hardwareId: string | null; operator: string | null; seq: number }>();
  const closed = new Map<string, string | null>();
  for (const e of events) {
    if (e.kind === 'order_open') {
      const m = ORDER_OPEN.exec(e.message ?? '');
      if (m) opened.set(m[1]!, { quantity: Number(m[2]), hardwareId: m[3] ?? null, operator: e.operator, seq: e.seq });
    } else if (e.kind === 'order_close') {
      const m = ORDER_CLOSE.exec(e.message ?? '');
      if (m) closed.set(m[1]!, e.operator);
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
    if (close !== undefined && (o.closed_at === null || o.closed_by !== close)) problems.push({ table: 'orders', key: o.id, reason: 'open, or closed by someone else, though an order_close event closed it' });
    if (close === undefined && o.closed_at !== null) problems.push({ table: 'orders', key: o.id, reason: 'closed, though no order_close event closed it' });
  }
  for (const [id, ev] of opened) if (!seen.has(id)) problems.push({ table: 'orders', key: id, reason: `opened by event seq ${ev.seq}, but its row is gone` });

  // Revocations: a device revoked by an event stays revoked until a certificate issued after it
  // (a re-issue, which needs a grant made after the revocation).
  const revokedRows = new Map(db.prepare<[], { device_id: string; event_seq: number }>('SELECT device_id, event_seq FROM revoked').all().map((r) => [r.device_id, r.event_seq]));
  const revocations = new Map<string, EventRow>();
  const grants = new Map<string, EventRow>();
  for (const e of events) {
    if (!e.device_id) continue;
    if (e.kind === 'revocation') {
      revocations.set(e.device_id, e);
      grants.delete(e.device_id); // a revocation cancels a pending grant
    } else if (e.kind === 'reissue_granted') grants.set(e.device_id, e);
  }
  for (const [device, e] of revocations) {
    const newest = newestIssuance.get(device)?.at ?? null;
    const reissued = newest !== null && newest > e.at;
    if (!reissued && !revokedRows.has(device)) problems.push({ table: 'revoked', key: device, reason: `revoked by event seq ${e.seq} and not re-issued since, but not in the revoked table: it would be served again` });
  }
  for (const [device, seq] of revokedRows) {
    const e = revocations.get(device);
    if (!e || e.seq !== seq) problems.push({ table: 'revoked', key: device, reason: `names event seq ${seq}, which is not this device's newest revocation` });
  }

  // Grants: a row needs a reissue_granted event newer than the device's newest certificate and any revocation.
  // (A grant is checked before the request it allows is signed, so that certificate's time is after the grant's.)
  for (const { device_id: device } of db.prepare<[], { device_id: string }>('SELECT device_id FROM reissue_grants').all()) {
    const e = grants.get(device);
    const newest = newestIssuance.get(device)?.at ?? null;
    if (!e) problems.push({ table: 'reissue_grants', key: device, reason: 'a re-issue grant no reissue_granted event made' });
    else if (newest !== null && newest > e.at) problems.push({ table: 'reissue_grants', key: device, reason: `a re-issue grant (event seq ${e.seq}) already used by the certificate issued at ${newest}` });
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
