/**
 * J1 and PEM mode on a serial port: a UART at any baud rate, a USB CDC-ACM
 * port or a pseudo-terminal. A port whose device node disappears (a USB
 * adapter pulled) is watched for and reopened when it returns, without
 * touching the other links.
 */
import { existsSync } from 'node:fs';
import { SerialPort } from 'serialport';
import { J1LineSplitter } from './j1/line-splitter.js';
import { J1Session } from './j1/session.js';
import { LinkReporter, type Link, type LinkObserver, type StationPort } from './types.js';

export interface SerialLinkOptions {
  path: string;
  baud: number;
  idleTimeoutMs: number;
  /** How often a missing port is looked for again. */
  reopenMs?: number;
  /** The benchmark's probe: each request's time in the station, in ms. */
  onServiceTime?: (ms: number) => void;
}

export class SerialLink implements Link {
  private readonly reporter: LinkReporter;
  private readonly session: J1Session;
  private port: SerialPort | null = null;
  private splitter: J1LineSplitter | null = null;
  private retry: NodeJS.Timeout | null = null;
  private stopping = false;

  constructor(
    station: StationPort,
    private readonly opts: SerialLinkOptions,
    observer?: LinkObserver,
  ) {
    const name = `serial:${opts.path}`;
    this.reporter = new LinkReporter(name, 'serial', observer);
    this.session = new J1Session(station, name, (text) => this.write(text), this.reporter, opts.onServiceTime);
  }

  get status() {
    return this.reporter.status;
  }

  async start(): Promise<void> {
    this.open();
  }

  private open(): void {
    if (this.stopping) return;
    if (!existsSync(this.opts.path)) return this.waitForPort('no such port');
    const port = new SerialPort({ path: this.opts.path, baudRate: this.opts.baud, autoOpen: false });
    port.open((err) => {
      if (err) return this.waitForPort(err.message);
      if (this.stopping) return void port.close();
      const splitter = new J1LineSplitter(this.opts.idleTimeoutMs);
      splitter.on('data', (ev) => this.session.onEvent(ev));
      port.on('data', (chunk: Buffer) => splitter.write(chunk));
      this.port = port;
      this.splitter = splitter;
      this.reporter.state('open');
    });
    const lost = (why: string): void => {
      if (this.port !== port) return;
      this.port = null;
      this.splitter?.destroy();
      this.splitter = null;
      if (!this.stopping) this.waitForPort(why);
    };
    port.on('close', () => lost('port closed'));
    port.on('error', (err) => {
      lost(err.message);
      if (port.isOpen) port.close(() => undefined);
    });
  }

  private waitForPort(why: string): void {
    this.reporter.state('waiting', why);
    if (this.retry || this.stopping) return;
    this.retry = setTimeout(() => {
      this.retry = null;
      this.open();
    }, this.opts.reopenMs ?? 500);
  }

  private write(text: string): Promise<void> {
    const port = this.port;
    if (!port) return Promise.resolve(); // the jig resends; retries are safe
    return new Promise((resolve) => {
      port.write(text, 'latin1', () => port.drain(() => resolve()));
    });
  }

  async stop(): Promise<void> {
    this.stopping = true;
    if (this.retry) clearTimeout(this.retry);
    await this.session.drain();
    const port = this.port;
    this.port = null;
    this.splitter?.destroy();
    if (port?.isOpen) await new Promise<void>((resolve) => port.close(() => resolve()));
    this.reporter.state('stopped');
  }
}
