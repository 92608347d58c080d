/**
 * What the technician sees while `serve` runs: on a terminal, a compact
 * table redrawn twice a second; elsewhere (systemd, a pipe), one JSON line
 * per event through pino.
 *
 * Link names, reasons and refusal messages carry client text (a CN, a
 * file name); every string reaches the terminal or the log only through
 * printable()/quote() from src/text.ts, so no escape sequence a client
 * sends is ever interpreted.
 */
import pino from 'pino';
import type { LinkEvent, LinkStatus } from '../links/index.js';
import { printable, quote } from '../text.js';

export interface View {
  event(e: LinkEvent): void;
  info(message: string, fields?: Record<string, unknown>): void;
  stop(): void;
}

/** What the station wants at the top of the screen: warnings and the open work order. */
export interface Banner {
  warnings: string[];
  order?: { id: string; issued: number; quantity: number } | null;
}

/** Everything on the screen besides the links' rows. */
export interface Frame {
  title: string;
  now: number;
  /** Certificates per second over the last 10 s. */
  rate: number;
  banner?: Banner | null;
  /** The last few `info` lines. */
  notes?: string[];
}

/** A refusal stays on screen while it is the link's latest outcome, and for this long after a later issuance. */
export const REFUSAL_SHOWN_MS = 60_000;
/** A refusal message is wrapped over at most this many lines: enough for a whole message with its next step. */
const MESSAGE_LINES = 8;

const MIN_WIDTH = 40;

/** One screen of the live view as lines, none longer than `width`. Pure: the tests call it. */
export function renderLiveView(rows: LinkStatus[], width: number, frame: Frame): string[] {
  const w = Math.max(MIN_WIDTH, Math.floor(width));
  const total = rows.reduce((n, s) => n + s.issued, 0);
  const lines: string[] = [
    clip(printable(frame.title), w),
    clip(`issued ${total}   ${frame.rate.toFixed(1)} certs/s over 10 s   ${clock(frame.now)} UTC   Ctrl-C stops`, w),
  ];
  for (const warning of frame.banner?.warnings ?? []) lines.push(...wrap(`! ${printable(warning)}`, w, 3));
  const order = frame.banner?.order;
  if (order) lines.push(orderLine(order, w));
  lines.push('');

  // Fixed columns: STATE 9, ISSUED 6, REFUSED 7, NOISE 5; LINK and LAST ISSUED share the rest.
  const fixed = 1 + 9 + 1 + 6 + 1 + 7 + 1 + 5 + 2;
  const names = rows.map((s) => printable(s.name));
  const nameW = Math.max(8, Math.min(Math.max(4, ...names.map((n) => n.length)), Math.floor((w - fixed) * 0.45)));
  const lastW = w - fixed - nameW;
  const row = (name: string, state: string, issued: string, refused: string, noise: string, last: string): string =>
    `${fit(name, nameW).padEnd(nameW)} ${fit(state, 9).padEnd(9)} ${issued.padStart(6)} ${refused.padStart(7)} ${noise.padStart(5)}  ${clip(last, lastW)}`.trimEnd();
  lines.push(row('LINK', 'STATE', 'ISSUED', 'REFUSED', 'NOISE', 'LAST ISSUED'));
  const shown = names.map((n) => fit(n, nameW));
  const ambiguous = new Set(shown.filter((n, i) => shown.indexOf(n) !== i));
  rows.forEach((s, i) => {
    // The time whole, the device id's end (where ids differ) as far as it fits: fit() would take `hh:` for a link's kind.
    const last = s.lastIssued ? `${clock(s.lastIssued.at)} ${tail(printable(s.lastIssued.deviceId), lastW - 9)}` : '-';
    lines.push(row(names[i]!, printable(s.state), count(s.issued, 6), count(s.refused, 7), count(s.noise, 5), last));
    // Two links whose shortened names look alike get their full names on a line of their own.
    if (ambiguous.has(fit(names[i]!, nameW))) lines.push(...wrap(`  = ${names[i]}`, w, 2));
    if (s.reason) lines.push(...wrap(`  ${printable(s.state)}: ${printable(s.reason)}`, w, 2));
    const r = s.lastRefusal;
    if (r && (!s.lastIssued || s.lastIssued.at < r.at || frame.now - r.at < REFUSAL_SHOWN_MS)) {
      const device = r.deviceId === null ? 'no device id' : `device ${quote(r.deviceId, 64)}`;
      lines.push(...wrap(`  refused ${clock(r.at)} ${printable(r.code)} ${device}: ${printable(r.message)}`, w, MESSAGE_LINES));
    }
  });
  const notes = frame.notes ?? [];
  if (notes.length) lines.push('', ...notes.map((n) => clip(printable(n), w)));
  return lines;
}

/** `WO-17 [#####.....] 25/50`, the bar as wide as the line allows. */
function orderLine(order: { id: string; issued: number; quantity: number }, w: number): string {
  const id = fit(printable(order.id), 24);
  const tally = `${order.issued}/${order.quantity}`;
  const barW = Math.max(5, Math.min(40, w - id.length - tally.length - 5));
  const share = order.quantity > 0 ? Math.min(1, Math.max(0, order.issued / order.quantity)) : 0;
  const filled = Math.round(share * barW);
  return clip(`${id} [${'#'.repeat(filled)}${'.'.repeat(barW - filled)}] ${tally}`, w);
}

/** hh:mm:ss, UTC like the JSON log's timestamps. */
function clock(at: number): string {
  return new Date(at).toISOString().slice(11, 19);
}

/** A count right-aligned in `w` characters, shortened (12k, 3.4M) when it would not fit. */
function count(n: number, w: number): string {
  const s = String(n);
  if (s.length <= w) return s;
  return n >= 1e6 ? `${(n / 1e6).toFixed(1)}M` : `${Math.floor(n / 1e3)}k`;
}

function clip(s: string, w: number): string {
  return s.length <= w ? s : `${s.slice(0, w - 3)}...`;
}

/**
 * Shortened keeping its kind and as much of its end as fits: ports differ
 * at the end (`...A50285BI-if00-port0`, `...usb-0:2:1.0-port0`).
 */
function fit(s: string, w: number): string {
  if (s.length <= w) return s;
  if (w < 10) return s.slice(0, w);
  const colon = s.indexOf(':');
  const head = colon > 0 && colon < 8 ? colon + 1 : 0;
  return `${s.slice(0, head)}...${s.slice(s.length - (w - 3 - head))}`;
}

/** The end of `s` in `w` characters, `...` in front when shortened. */
function tail(s: string, w: number): string {
  if (s.length <= w) return s;
  return w <= 3 ? s.slice(s.length - Math.max(0, w)) : `...${s.slice(s.length - (w - 3))}`;
}

/** `text` over at most `max` lines of `w`, continuation lines indented, the last one clipped. */
function wrap(text: string, w: number, max: number): string[] {
  const out: string[] = [];
  let rest = text;
  while (rest.length > 0 && out.length < max) {
    const room = out.length === 0 ? w : w - 4;
    const prefix = out.length === 0 ? '' : '    ';
    if (rest.length <= room || out.length === max - 1) {
      out.push(prefix + clip(rest, room));
      break;
    }
    const cut = rest.lastIndexOf(' ', room);
    const at = cut > room / 2 ? cut : room;
    out.push(prefix + rest.slice(0, at).trimEnd());
    rest = rest.slice(at).trimStart();
  }
  return out;
}

/** String fields of a log record as printable text, so a log viewer never meets a raw control character. */
function escapedFields(fields: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(fields)) {
    out[k] = typeof v === 'string' ? printable(v) : Array.isArray(v) ? v.map((x) => (typeof x === 'string' ? printable(x) : x)) : v;
  }
  return out;
}

/** Refusals, noise and replays a link may log in one second before the rest of that second becomes one line with counts. */
export const JSON_LOG_PER_SECOND = 8;

/**
 * `dest`: where the lines go (stdout unless a test captures them). A flood
 * of junk would otherwise be a line a frame: past journald's rate limit
 * (which then drops the station's real lines too) and, on a pipe nobody
 * reads, memory. So a link's refusals, noise and replays past JSON_LOG_PER_SECOND in
 * a second are counted, by code, into one `coalesced` line when the
 * second is over, as the ledger's events are.
 */
export function jsonView(dest?: pino.DestinationStream): View {
  const options = { base: { app: 'line-signer' }, timestamp: pino.stdTimeFunctions.isoTime };
  const log = dest ? pino(options, dest) : pino(options);
  const windows = new Map<string, { logged: number; more: Record<string, number>; timer: NodeJS.Timeout }>();
  const close = (link: string): void => {
    const w = windows.get(link);
    if (!w) return;
    clearTimeout(w.timer);
    windows.delete(link);
    const total = Object.values(w.more).reduce((a, b) => a + b, 0);
    if (total > 0) log.warn(escapedFields({ kind: 'coalesced', link, suppressed: total, byCode: w.more }), 'coalesced');
  };
  const admit = (e: LinkEvent & { kind: 'refused' | 'noise' | 'issued' }): boolean => {
    let w = windows.get(e.link);
    if (!w) {
      const timer = setTimeout(() => close(e.link), 1000);
      timer.unref();
      windows.set(e.link, (w = { logged: 0, more: {}, timer }));
    }
    if (w.logged < JSON_LOG_PER_SECOND) {
      w.logged++;
      return true;
    }
    const key = e.kind === 'refused' ? e.code : e.kind === 'issued' ? 'replay' : 'noise';
    w.more[key] = (w.more[key] ?? 0) + 1;
    return false;
  };
  return {
    event(e) {
      // A replay is a certificate handed out again: any client holding one CSR can send it in a loop.
      if ((e.kind === 'refused' || e.kind === 'noise' || (e.kind === 'issued' && e.replayed)) && !admit(e)) return;
      const fields = escapedFields(e);
      if (e.kind === 'refused') log.warn(fields, 'refused');
      else if (e.kind === 'noise') log.debug(fields, 'noise');
      else log.info(fields, e.kind);
    },
    info(message, fields) {
      log.info(escapedFields(fields ?? {}), printable(message));
    },
    stop() {
      for (const link of [...windows.keys()]) close(link);
      log.flush();
    },
  };
}

export function liveView(title: string, statuses: () => LinkStatus[], banner?: () => Banner): View {
  const issuedAt: number[] = [];
  const notes: string[] = [];
  const draw = (): void => {
    const now = Date.now();
    while (issuedAt.length && issuedAt[0]! < now - 10_000) issuedAt.shift();
    // One column short of the terminal: a full-width row leaves the cursor in the wrap-pending state.
    const width = (process.stdout.columns || 80) - 1;
    const lines = renderLiveView(statuses(), width, { title, now, rate: issuedAt.length / 10, banner: banner?.() ?? null, notes: notes.slice(-3) });
    // Home, each line then erase-to-end-of-line, then erase below: no flicker from a full clear.
    process.stdout.write(`\x1b[H${lines.map((l) => `${l}\x1b[K`).join('\n')}\n\x1b[J`);
  };
  const timer = setInterval(draw, 500);
  timer.unref();
  process.stdout.on('resize', draw);
  process.stdout.write('\x1b[2J');
  draw();
  return {
    event(e) {
      if (e.kind === 'issued' && !e.replayed) issuedAt.push(Date.now());
    },
    info(message) {
      notes.push(`${clock(Date.now())} ${message}`);
    },
    stop() {
      clearInterval(timer);
      process.stdout.off('resize', draw);
      draw();
    },
  };
}
