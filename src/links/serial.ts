/**
 * J1 and PEM mode on a serial port: a UART at any baud rate, a USB CDC-ACM
 * port or a pseudo-terminal. The link survives its cable: a port that
 * disappears, errors or closes (mid-reply included) is reopened when it
 * returns, a jig that stops reading stalls only its own link, and nothing
 * here ever waits on the port without a deadline. Never port.drain(): it
 * is tcdrain() on libuv's thread pool, which a wedged USB device holds
 * forever (four of them stall every file read and signature).
 */
import { existsSync, type BigIntStats } from 'node:fs';
import { readFile, readdir, readlink, realpath, stat } from 'node:fs/promises';
import { SerialPortStream } from '@serialport/stream';
import { ReadyBinding } from './serial-binding.js';

type SerialPort = SerialPortStream<typeof ReadyBinding>;
import { printable } from '../text.js';
import { J1LineSplitter } from './j1/line-splitter.js';
import { J1Session } from './j1/session.js';
import { LinkReporter, within, type Link, type LinkObserver, type StationPort } from './types.js';

/**
 * A reply the port has not taken by then is abandoned and the port
 * reopened: 5 s, plus the time the reply and a full 4 KiB kernel buffer
 * ahead of it take on the wire at a slow baud rate.
 */
export const WRITE_DEADLINE_MS = 5000;
export function writeDeadlineMs(bytes: number, baud: number): number {
  return WRITE_DEADLINE_MS + Math.ceil(((bytes + 4096) * 10 * 1000) / baud);
}
/** stop(): time given to requests in flight, then to closing the port; together under 2 s. */
export const STOP_DRAIN_MS = 1200;
export const CLOSE_DEADLINE_MS = 500;
/** Longest wait between attempts to open a port that refuses (busy, no permission). */
export const MAX_REOPEN_BACKOFF_MS = 5000;

export interface SerialLinkOptions {
  path: string;
  baud: number;
  idleTimeoutMs: number;
  /** How often a missing port is looked for again; the first back-off step for one that refuses. */
  reopenMs?: number;
  /** The benchmark's probe: each request's time in the station, in ms. */
  onServiceTime?: (ms: number) => void;
}

interface Connection {
  port: SerialPort;
  splitter: J1LineSplitter;
  session: J1Session;
}

export class SerialLink implements Link {
  private readonly reporter: LinkReporter;
  private readonly name: string;
  private conn: Connection | null = null;
  /** Sessions of this and earlier connections whose requests are still in flight. */
  private readonly sessions = new Set<J1Session>();
  private retry: NodeJS.Timeout | null = null;
  private failures = 0;
  private stopping = false;
  /** Replies given to the port and not yet taken by it. */
  private writing = 0;
  /** The last connection was lost in the middle of a reply. */
  private lineCut = false;

  constructor(
    private readonly station: StationPort,
    private readonly opts: SerialLinkOptions,
    observer?: LinkObserver,
  ) {
    this.name = `serial:${opts.path}`;
    this.reporter = new LinkReporter(this.name, 'serial', observer);
  }

  get status() {
    return this.reporter.status;
  }

  /** Requests taken on the open connection and not yet answered (at most MAX_QUEUED + 1). */
  get pending(): number {
    return this.conn?.session.pending ?? 0;
  }

  async start(): Promise<void> {
    this.open();
  }

  private open(): void {
    if (this.stopping) return;
    if (!existsSync(this.opts.path)) return this.retryLater('no such device', false);
    const port: SerialPort = new SerialPortStream({ binding: ReadyBinding, path: this.opts.path, baudRate: this.opts.baud, autoOpen: false });
    port.on('error', (err) => this.lost(port, err.message));
    port.on('close', () => this.lost(port, 'port closed'));
    port.open((err) => {
      if (err) {
        void openProblem(err, this.opts.path).then((why) => this.retryLater(why, true));
        return;
      }
      if (this.stopping) return void closeWithin(port, CLOSE_DEADLINE_MS);
      this.failures = 0;
      const session = new J1Session(this.station, this.name, (text) => this.writeTo(port, text), this.reporter, this.opts.onServiceTime);
      const splitter = new J1LineSplitter(this.opts.idleTimeoutMs);
      // pipe(): when the session holds too many requests the port stops being read.
      port.pipe(splitter).pipe(session.input);
      this.conn = { port, splitter, session };
      this.sessions.add(session);
      // A reply cut off with the last connection left the jig half a line: end it, so that the next
      // reply is a line of its own (a blank line is ignored) rather than glued to that half.
      if (this.lineCut) port.write('\n', 'latin1');
      this.lineCut = false;
      this.reporter.state('open');
    });
  }

  /** The port errored, closed or stopped taking replies: drop this connection, reopen. */
  private lost(port: SerialPort, why: string): void {
    const conn = this.conn;
    if (!conn || conn.port !== port) return;
    this.conn = null;
    this.lineCut = this.writing > 0;
    this.dropConnection(conn);
    void closeWithin(port, CLOSE_DEADLINE_MS);
    if (!this.stopping) this.retryLater(printable(why), false);
  }

  private dropConnection(conn: Connection): void {
    conn.port.unpipe(conn.splitter);
    conn.splitter.destroy();
    conn.session.abandon();
    void conn.session.drain().then(() => this.sessions.delete(conn.session));
  }

  private retryLater(why: string, backOff: boolean): void {
    this.reporter.state('waiting', why);
    if (this.retry || this.stopping) return;
    const base = this.opts.reopenMs ?? 500;
    const delay = backOff ? Math.min(base * 2 ** this.failures++, MAX_REOPEN_BACKOFF_MS) : base;
    this.retry = setTimeout(() => {
      this.retry = null;
      this.open();
    }, delay);
  }

  /**
   * One reply out, waiting for the write's callback (the bytes are with the
   * kernel), never for tcdrain. It always settles: on the callback, on the
   * port closing, or at the deadline, when the link gives up on this port.
   * A reply that fails is lost; the jig resends and retries are safe.
   */
  private writeTo(port: SerialPort, text: string): Promise<void> {
    const deadline = writeDeadlineMs(text.length, this.opts.baud);
    return new Promise((resolve) => {
      if (!port.isOpen) return resolve();
      this.writing++;
      let done = false;
      const finish = (): void => {
        if (done) return;
        done = true;
        this.writing--;
        clearTimeout(timer);
        port.off('close', finish);
        resolve();
      };
      const timer = setTimeout(() => {
        this.lost(port, `reply not taken within ${(deadline / 1000).toFixed(1)} s (jig not reading)`);
        finish();
      }, deadline);
      port.once('close', finish);
      port.write(text, 'latin1', finish);
    });
  }

  async stop(): Promise<void> {
    this.stopping = true;
    if (this.retry) clearTimeout(this.retry);
    const conn = this.conn;
    if (conn) conn.port.unpipe(conn.splitter); // no new requests
    await within(Promise.all([...this.sessions].map((s) => s.drain())), STOP_DRAIN_MS);
    this.conn = null;
    if (conn) {
      this.dropConnection(conn);
      await closeWithin(conn.port, CLOSE_DEADLINE_MS);
    }
    this.reporter.state('stopped');
  }
}

/**
 * Closes a port, giving up waiting after `ms`. Output still queued is
 * flushed first: closing a real UART with unsent bytes waits for them
 * (closing_wait, 30 s) on a pool thread.
 */
function closeWithin(port: SerialPort, ms: number): Promise<void> {
  return within(
    new Promise<void>((resolve) => {
      if (!port.isOpen) return resolve();
      port.flush(() => (port.isOpen ? port.close(() => resolve()) : resolve()));
    }),
    ms,
  );
}

/** Why a port would not open, as the live view shows it. */
export async function openProblem(err: Error, path: string): Promise<string> {
  const m = err.message;
  if (/ENOENT|No such file or directory|No such device/i.test(m)) return 'no such device';
  if (/EACCES|Permission denied|Operation not permitted/i.test(m)) return 'permission denied';
  if (/Cannot lock port|EBUSY|Device or resource busy|Resource temporarily unavailable/i.test(m)) {
    const pid = await holderOf(path);
    return pid === null ? 'held by another program' : `held by pid ${pid}`;
  }
  return printable(m);
}

/**
 * Who holds the device: the owner of a lock on it in /proc/locks (serialport,
 * minicom and flock(1) lock the port), else the first other process with it
 * open in /proc/<pid>/fd. Null when none is visible.
 */
export async function holderOf(path: string): Promise<number | null> {
  let target: string;
  let st: BigIntStats;
  try {
    target = await realpath(path);
    st = await stat(target, { bigint: true });
  } catch {
    return null;
  }
  const major = ((st.dev >> 8n) & 0xfffn) | ((st.dev >> 32n) & ~0xfffn);
  const minor = (st.dev & 0xffn) | ((st.dev >> 12n) & ~0xffn);
  const locks = await readFile('/proc/locks', 'utf8').catch(() => '');
  for (const row of locks.split('\n')) {
    const fields = row.trim().split(/\s+/);
    const at = fields.findIndex((f) => /^[0-9a-f]+:[0-9a-f]+:\d+$/.test(f));
    if (at < 1) continue;
    const [maj, min, ino] = fields[at]!.split(':') as [string, string, string];
    if (BigInt(`0x${maj}`) === major && BigInt(`0x${min}`) === minor && BigInt(ino) === st.ino) return Number(fields[at - 1]);
  }
  const pids = (await readdir('/proc').catch(() => [] as string[]))
    .filter((d) => /^\d+$/.test(d) && Number(d) !== process.pid)
    .map(Number)
    .sort((a, b) => a - b);
  for (const pid of pids) {
    const fds = await readdir(`/proc/${pid}/fd`).catch(() => [] as string[]);
    for (const fd of fds) {
      if ((await readlink(`/proc/${pid}/fd/${fd}`).catch(() => '')) === target) return pid;
    }
  }
  return null;
}
