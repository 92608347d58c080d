/**
 * Floods cost nothing durable. The first refusal (or replay) of a kind is
 * recorded at once; identical ones from the same link within the next
 * second are counted, and their count becomes one more event when that
 * second is over. So a jig that sends the same bad frame a thousand times
 * a second costs two ledger writes a second, and the count is in the hash
 * chain. Past MAX_OPEN windows (a flood of varied messages), refusals are
 * coalesced per link and code alone.
 */
import type { NewEvent } from '../ledger/index.js';

const MAX_OPEN = 256;

interface Window {
  event: NewEvent;
  repeats: number;
}

export class EventCoalescer {
  private readonly open = new Map<string, Window>();
  private readonly timers = new Set<NodeJS.Timeout>();

  constructor(
    private readonly write: (event: NewEvent) => Promise<void>,
    private readonly windowMs = 1000,
  ) {}

  /** Records `event` now, or counts it when an identical one was recorded within the window. */
  record(event: NewEvent): Promise<void> {
    let key = JSON.stringify([event.kind, event.link ?? null, event.code ?? null, event.message ?? null, event.csrSha256 ?? null, event.deviceId ?? null]);
    let w = this.open.get(key);
    if (!w && this.open.size >= MAX_OPEN) {
      key = JSON.stringify([event.kind, event.link ?? null, event.code ?? null]);
      event = { kind: event.kind, link: event.link ?? null, code: event.code ?? null, message: 'various messages (a flood; see the link)' };
      w = this.open.get(key);
    }
    if (w) {
      w.repeats++;
      return Promise.resolve();
    }
    const win: Window = { event, repeats: 0 };
    this.open.set(key, win);
    const timer = setTimeout(() => {
      this.timers.delete(timer);
      this.close(key, win);
    }, this.windowMs);
    timer.unref();
    this.timers.add(timer);
    return this.write(event);
  }

  private close(key: string, win: Window): Promise<void> {
    if (this.open.get(key) === win) this.open.delete(key);
    if (win.repeats === 0) return Promise.resolve();
    const { event } = win;
    return this.write({ ...event, count: win.repeats, message: `${event.message ?? ''} (repeated ${win.repeats} more times within ${this.windowMs / 1000} s)`.trim() });
  }

  /** Writes the counts still open (at stop). */
  async flush(): Promise<void> {
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    const pending = [...this.open.entries()];
    await Promise.all(pending.map(([k, w]) => this.close(k, w)));
  }
}
