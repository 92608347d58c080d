/**
 * Runs a set of links against one station until told to stop; then each
 * link stops taking requests and answers those in flight.
 */
import { existsSync } from 'node:fs';
import type { StationConfig } from '../config/index.js';
import { LineSignerError } from '../errors.js';
import { printable } from '../text.js';
import { SerialLink } from './serial.js';
import type { Link, LinkObserver, StationPort } from './types.js';

export interface LinkPlan {
  serial: Array<{ path: string; baud: number }>;
  http: string | undefined;
  spool: string[];
}

export const DEFAULT_BAUD = 115200;

/**
 * `PATH[:BAUD]` as given to --serial. Real paths hold colons
 * (/dev/serial/by-path/pci-0000:00:14.0-usb-0:1:1.0-port0), so only a final
 * `:suffix` starting with a digit is read as a baud rate, and such a suffix
 * that is not a valid one (`:9600x`, `:0`) is a usage error at once rather
 * than a port name to wait for forever. A path that exists as given is a
 * path; one whose last part looks like `:<digit>…` and is not plugged in
 * yet needs its baud spelt out (`…-port0:115200`).
 */
export function parseSerialFlag(flag: string, exists: (path: string) => boolean = existsSync): { path: string; baud: number } {
  const usage = (why: string): LineSignerError => new LineSignerError('USAGE', `--serial ${printable(flag)}: ${why}; expected PATH or PATH:BAUD`);
  const colon = flag.lastIndexOf(':');
  const suffix = colon === -1 ? '' : flag.slice(colon + 1);
  if (colon === -1 || !/^[0-9]/.test(suffix)) {
    if (flag === '' || flag.endsWith(':')) throw usage('no path');
    return { path: flag, baud: DEFAULT_BAUD };
  }
  const path = flag.slice(0, colon);
  if (/^[0-9]{1,7}$/.test(suffix)) {
    const baud = Number(suffix);
    if (baud >= 50 && baud <= 4_000_000 && path !== '') return { path, baud };
  }
  if (exists(flag)) return { path: flag, baud: DEFAULT_BAUD };
  throw usage(path === '' ? 'no path' : `${printable(suffix)} is not a baud rate (50 to 4000000)`);
}

/** The config's [links] table plus the command line's flags. */
export function planLinks(config: StationConfig, flags: { serial?: string[]; http?: string; spool?: string[] }): LinkPlan {
  return {
    serial: [...config.links.serial, ...(flags.serial ?? []).map((f) => parseSerialFlag(f))],
    http: flags.http ?? config.links.http,
    spool: [...config.links.spool, ...(flags.spool ?? [])],
  };
}

export type LinkFactory = (station: StationPort, plan: LinkPlan, config: StationConfig, observer: LinkObserver) => Link[];

export const serialLinks: LinkFactory = (station, plan, config, observer) =>
  plan.serial.map((s) => new SerialLink(station, { path: s.path, baud: s.baud, idleTimeoutMs: config.links.idle_timeout_ms }, observer));

export class LinkRunner {
  constructor(readonly links: Link[]) {}

  async start(): Promise<void> {
    await Promise.all(this.links.map((l) => l.start()));
  }

  async stop(): Promise<void> {
    await Promise.all(this.links.map((l) => l.stop()));
  }
}
