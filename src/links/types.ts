import type { SignRequest, SignResult, StationHello, Unhealthy } from '../station/types.js';
import type { ProtocolCode } from '../errors.js';

/** What a link may ask of the station: links never see the token or the ledger. */
export interface StationPort {
  handle(req: SignRequest): Promise<SignResult>;
  hello(): StationHello;
  readonly rootPem: string;
  /** Records a request refused before it reached the station (a bad frame, an oversized line). */
  recordRefusal(link: string, code: ProtocolCode, message: string): Promise<void>;
  /** Null when the station would issue now; else the station-wide reason it would not. */
  health(): Unhealthy | null;
  /** The same, after asking the token whether it still signs when it has not for a while (HEAD /sign). */
  checkHealth(): Promise<Unhealthy | null>;
}

export type LinkKind = 'serial' | 'http' | 'spool';

export interface LinkStatus {
  name: string;
  kind: LinkKind;
  /** open, listening, polling, waiting, error, stopped, ... */
  state: string;
  /** Why the link is in that state ("no such device", "permission denied", "held by pid 123", "read-only"), or null. */
  reason: string | null;
  issued: number;
  refused: number;
  noise: number;
  lastIssued: { at: number; deviceId: string } | null;
  /** The last refusal on this link; message and device are client-influenced text: escape before showing. */
  lastRefusal: { at: number; code: string; message: string; deviceId: string | null } | null;
}

export type LinkEvent =
  | { kind: 'issued'; link: string; deviceId: string; serial: string; replayed: boolean }
  | { kind: 'refused'; link: string; code: string; message: string }
  | { kind: 'state'; link: string; state: string; detail?: string }
  | { kind: 'noise'; link: string; bytes: number };

export type LinkObserver = (event: LinkEvent) => void;

export interface Link {
  readonly status: LinkStatus;
  start(): Promise<void>;
  /** Stops taking requests and resolves when those in flight are answered. */
  stop(): Promise<void>;
}

/** Shared bookkeeping: a link's status and the events it reports. */
export class LinkReporter {
  readonly status: LinkStatus;
  constructor(
    name: string,
    kind: LinkKind,
    private readonly observer: LinkObserver = () => undefined,
  ) {
    this.status = { name, kind, state: 'starting', reason: null, issued: 0, refused: 0, noise: 0, lastIssued: null, lastRefusal: null };
  }
  state(state: string, detail?: string): void {
    const reason = detail ?? null;
    if (this.status.state === state && this.status.reason === reason) return;
    this.status.state = state;
    this.status.reason = reason;
    this.observer({ kind: 'state', link: this.status.name, state, ...(detail ? { detail } : {}) });
  }
  result(r: SignResult): void {
    if (r.ok) {
      this.status.issued += r.replayed ? 0 : 1;
      this.status.lastIssued = { at: Date.now(), deviceId: r.deviceId };
      this.observer({ kind: 'issued', link: this.status.name, deviceId: r.deviceId, serial: r.serial, replayed: r.replayed });
    } else this.refused(r.code, r.message, r.deviceId ?? null);
  }
  refused(code: string, message: string, deviceId: string | null = null): void {
    this.status.refused++;
    this.status.lastRefusal = { at: Date.now(), code, message, deviceId };
    this.observer({ kind: 'refused', link: this.status.name, code, message });
  }
  noise(bytes: number): void {
    this.status.noise++;
    this.observer({ kind: 'noise', link: this.status.name, bytes });
  }
}

/** Waits for `p` (settled either way), but no longer than `ms`: a link's stop never hangs on a wedged device. */
export function within(p: Promise<unknown>, ms: number): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    p.then(
      () => undefined,
      () => undefined,
    ).finally(() => {
      clearTimeout(timer);
      resolve();
    });
  });
}
