/**
 * Floods cost nothing durable. The first refusal (or replay) of a kind is
 * recorded at once; identical ones from the same link within the next
 * second are counted, and their count becomes one more event when that
 * second is over. So a jig that sends the same bad frame a thousand times
 * a second costs two ledger writes a second, and the count is in the hash
 * chain. Identical means the same link, code, message and CSR; past
 * PER_MESSAGE different CSRs with the same link, code and message in one
 * second (a flood of garbage that all gets "BAD_CSR not DER: truncated"),
 * the rest count in one window for that message. Past MAX_OPEN windows on
 * one link (a flood of varied messages), that link's refusals are
 * coalesced per code alone; other links keep theirs whole.
 */
import type { NewEvent } from '../ledger/index.js';

const MAX_OPEN = 64;
const PER_MESSAGE = 8;

interface Window {
  event: NewEvent;
  repeats: number;
  /** Its link, code and message. */
  message: string;
}

export class EventCoalescer {
  private readonly open = new Map<string, Window>();
  /** Open windows per link, and per link, code and message. */
  private readonly perLink = new Map<string, number>();
  private readonly perMessage = new Map<string, number>();
  private readonly timers = new Set<NodeJS.Timeout>();

  constructor(
    private readonly write: (event: NewEvent) => Promise<void>,
    private readonly windowMs = 1000,
  ) {}

  /** Records `event` now, or counts it when an identical one was recorded within the window. */
  record(event: NewEvent): Promise<void> {
    const link = event.link ?? '';
    const message = JSON.stringify([event.kind, link, event.code ?? null, event.message ?? null]);
    let key = JSON.stringify([message, event.csrSha256 ?? null, event.deviceId ?? null]);
    let w = this.open.get(key);
    if (!w && (this.perMessage.get(message) ?? 0) >= PER_MESSAGE) {
      key = message;
      event = { ...event, csrSha256: null, deviceId: null };
      w = this.open.get(key);
    }
    if (!w && (this.perLink.get(link) ?? 0) >= MAX_OPEN) {
      key = JSON.stringify([event.kind, event.link ?? null, event.code ?? null]);
      event = { kind: event.kind, link: event.link ?? null, code: event.code ?? null, message: 'various messages (a flood; see the link)' };
      w = this.open.get(key);
    }
    if (w) {
      w.repeats++;
      return Promise.resolve();
    }
    const win: Window = { event, repeats: 0, message };
    this.open.set(key, win);
    this.perLink.set(link, (this.perLink.get(link) ?? 0) + 1);
    this.perMessage.set(message, (this.perMessage.get(message) ?? 0) + 1);
    const timer = setTimeout(() => {
      this.timers.delete(timer);
      this.close(key, win);
    }, this.windowMs);
    timer.unref();
    this.timers.add(timer);
    return this.write(event);
  }

  private close(key: string, win: Window): Promise<void> {
    if (this.open.get(key) === win) {
      this.open.delete(key);
      const link = win.event.link ?? '';
      const n = (this.perLink.get(link) ?? 1) - 1;
      if (n > 0) this.perLink.set(link, n);
      else this.perLink.delete(link);
      const m = (this.perMessage.get(win.message) ?? 1) - 1;
      if (m > 0) this.perMessage.set(win.message, m);
      else this.perMessage.delete(win.message);
    }
    if (win.repeats === 0) return Promise.resolve();
    const { event } = win;
    return this.write({ ...event, csrSha256: null, deviceId: null, count: win.repeats, message: `${event.message ?? ''} (repeated ${win.repeats} more times within ${this.windowMs / 1000} s)`.trim() });
  }

  /** Writes the counts still open (at stop). */
  async flush(): Promise<void> {
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    const pending = [...this.open.entries()];
    await Promise.all(pending.map(([k, w]) => this.close(k, w)));
  }
}
