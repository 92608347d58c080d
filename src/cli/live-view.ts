/**
 * What the technician sees while `serve` runs: on a terminal, a compact
 * table redrawn twice a second; elsewhere (systemd, a pipe), one JSON line
 * per event through pino.
 */
import pino from 'pino';
import type { LinkEvent, LinkStatus } from '../links/index.js';

export interface View {
  event(e: LinkEvent): void;
  info(message: string, fields?: Record<string, unknown>): void;
  stop(): void;
}

export function jsonView(): View {
  const log = pino({ base: { app: 'line-signer' }, timestamp: pino.stdTimeFunctions.isoTime });
  return {
    event(e) {
      if (e.kind === 'refused') log.warn(e, 'refused');
      else if (e.kind === 'noise') log.debug(e, 'noise');
      else log.info(e, e.kind);
    },
    info(message, fields) {
      log.info(fields ?? {}, message);
    },
    stop() {
      log.flush();
    },
  };
}

export function liveView(title: string, statuses: () => LinkStatus[]): View {
  const issuedAt: number[] = [];
  const notes: string[] = [];
  const draw = (): void => {
    const now = Date.now();
    while (issuedAt.length && issuedAt[0]! < now - 10_000) issuedAt.shift();
    const rows = statuses();
    const total = rows.reduce((n, s) => n + s.issued, 0);
    const cut = (s: string | null, n: number): string => (s ?? '-').slice(0, n).padEnd(n);
    const lines = [
      `${title}   issued ${total}   ${(issuedAt.length / 10).toFixed(1)} certs/s over 10 s   (Ctrl-C to stop)`,
      '',
      `${'LINK'.padEnd(28)} ${'STATE'.padEnd(9)} ${'ISSUED'.padStart(7)} ${'REFUSED'.padStart(7)} ${'NOISE'.padStart(6)}  ${'LAST DEVICE'.padEnd(36)}  LAST ERROR`,
      ...rows.map(
        (s) =>
          `${cut(s.name, 28)} ${cut(s.state, 9)} ${String(s.issued).padStart(7)} ${String(s.refused).padStart(7)} ${String(s.noise).padStart(6)}  ${cut(s.lastIssued?.deviceId ?? null, 36)}  ${cut(s.lastRefusal ? `${s.lastRefusal.code} ${s.lastRefusal.message}` : null, 60)}`,
      ),
      '',
      ...notes.slice(-3),
    ];
    // Never wider than the terminal: a wrapped row would break the table.
    const width = Math.max(40, (process.stdout.columns ?? 120) - 1);
    process.stdout.write('\x1b[H\x1b[2J' + lines.map((l) => l.slice(0, width)).join('\n') + '\n');
  };
  const timer = setInterval(draw, 500);
  timer.unref();
  draw();
  return {
    event(e) {
      if (e.kind === 'issued' && !e.replayed) issuedAt.push(Date.now());
    },
    info(message) {
      notes.push(`${new Date().toISOString().slice(11, 19)} ${message}`);
    },
    stop() {
      clearInterval(timer);
      draw();
    },
  };
}
