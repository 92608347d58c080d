/**
 * Runs a set of links against one station until told to stop; then each
 * link stops taking requests and answers those in flight.
 */
import type { StationConfig } from '../config/index.js';
import { LineSignerError } from '../errors.js';
import { SerialLink } from './serial.js';
import type { Link, LinkObserver, StationPort } from './types.js';

export interface LinkPlan {
  serial: Array<{ path: string; baud: number }>;
  http: string | undefined;
  spool: string[];
}

/** `PATH[:BAUD]` as given to --serial. */
export function parseSerialFlag(flag: string): { path: string; baud: number } {
  const m = /^(.+?)(?::(\d+))?$/.exec(flag);
  const baud = m?.[2] ? Number(m[2]) : 115200;
  if (!m || !Number.isInteger(baud) || baud < 50 || baud > 4_000_000) {
    throw new LineSignerError('USAGE', `--serial ${flag}: expected PATH or PATH:BAUD`);
  }
  return { path: m[1]!, baud };
}

/** The config's [links] table plus the command line's flags. */
export function planLinks(config: StationConfig, flags: { serial?: string[]; http?: string; spool?: string[] }): LinkPlan {
  return {
    serial: [...config.links.serial, ...(flags.serial ?? []).map(parseSerialFlag)],
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
