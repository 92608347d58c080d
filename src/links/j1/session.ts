/**
 * One jig conversation on a byte stream: J1 frames and plain PEM mode
 * (../shared/spec/jig-protocol.md sections 2 to 4). Line events in, reply
 * text out, strictly one request at a time and in order. Knows nothing of
 * ports: the serial link pipes its line splitter into `input`, a test can too.
 *
 * Back-pressure: `input` takes no further event while more than MAX_QUEUED
 * requests wait, so a jig that sends faster than the station answers is
 * slowed down by its own port (the stream stops reading) instead of growing
 * a queue here.
 */
import { Writable } from 'node:stream';
import type { LinkReporter, StationPort } from '../types.js';
import { FrameError, decodeFrame, encodeFrame, errorFrame, isFrameLine, MAX_LINE, type J1Request } from './frame.js';
import type { LineEnd, LineEvent } from './line-splitter.js';

const PEM_LABELS = ['CERTIFICATE REQUEST', 'NEW CERTIFICATE REQUEST'];
/** A CSR is a few hundred bytes; a "block" past this is not one. */
export const MAX_PEM_BLOCK = 4 * MAX_LINE;
/** Requests waiting for their reply before the session stops taking input. */
export const MAX_QUEUED = 8;

interface PemBlock {
  lines: string[];
  bytes: number;
  end: string;
  /** How the BEGIN line ended: the answer's lines end the same way. */
  eol: '\r\n' | '\n';
}

export class J1Session {
  /** Feed the line splitter's events here; honours back-pressure. */
  readonly input: Writable;
  private pem: PemBlock | null = null;
  private tail: Promise<void> = Promise.resolve();
  private queued = 0;
  private resume: (() => void) | null = null;
  private abandoned = false;

  constructor(
    private readonly station: StationPort,
    private readonly link: string,
    private readonly write: (text: string) => Promise<void>,
    private readonly report: LinkReporter,
    /** Time from a request's last line in to its reply going out, in ms (the benchmark's probe). */
    private readonly onServiceTime?: (ms: number) => void,
  ) {
    this.input = new Writable({
      objectMode: true,
      highWaterMark: 1,
      write: (ev: LineEvent, _enc, done) => {
        this.onEvent(ev);
        if (this.queued <= MAX_QUEUED) done();
        else this.resume = () => done();
      },
    });
  }

  /** Requests taken and not yet answered. */
  get pending(): number {
    return this.queued;
  }

  /** Handles one event from the line splitter (without back-pressure: `input` adds it). */
  onEvent(ev: LineEvent): void {
    if ('idle' in ev) {
      if (this.pem) this.report.noise(this.pem.bytes); // an unfinished block, dropped silently but counted
      this.pem = null;
      return;
    }
    if ('tooLarge' in ev) {
      const block = this.pem;
      this.pem = null;
      // Inside a PEM block the sender is in PEM mode: it reads an ERROR line, not a J1 frame.
      if (block) this.enqueue((at) => this.refusePem(at, 'TOO_LARGE', `line over ${MAX_LINE} bytes inside a PEM block`, block.eol));
      else this.enqueue((at) => this.refuseFrame(at, '-', 'TOO_LARGE', `line over ${MAX_LINE} bytes`));
      return;
    }
    const { line, end } = ev;
    if (isFrameLine(line)) {
      this.pem = null; // a J1 line abandons an open block
      this.enqueue((at) => this.frame(at, line));
      return;
    }
    this.pemLine(trimBlanks(line), line.length + 1, end);
  }

  private pemLine(text: string, bytes: number, end: LineEnd): void {
    const label = dashed(text, 'BEGIN');
    if (label !== null && PEM_LABELS.includes(label)) {
      this.pem = { lines: [text], bytes, end: `-----END ${label}-----`, eol: end === 'cr' ? '\r\n' : '\n' };
      return;
    }
    const block = this.pem;
    if (!block) {
      if (text !== '') this.report.noise(bytes);
      return;
    }
    block.lines.push(text);
    block.bytes += bytes;
    if (text === block.end) {
      this.pem = null;
      const pemText = block.lines.join('\n') + '\n';
      this.enqueue((at) => this.signPem(at, pemText, block.eol));
    } else if (block.bytes > MAX_PEM_BLOCK) {
      this.pem = null;
      this.enqueue((at) => this.refusePem(at, 'BAD_CSR', `PEM block over ${MAX_PEM_BLOCK} bytes`, block.eol));
    }
  }

  /** Resolves when every request taken so far has been answered (or abandoned). */
  drain(): Promise<void> {
    return this.tail;
  }

  /**
   * The port is gone or the link stops: requests not yet started are
   * dropped unanswered (the jig resends; retries are safe), input ends.
   */
  abandon(): void {
    this.abandoned = true;
    this.pem = null;
    this.resume?.();
    this.resume = null;
  }

  private enqueue(work: (arrived: number) => Promise<void>): void {
    this.queued++;
    const arrived = this.onServiceTime ? performance.now() : 0;
    this.tail = this.tail
      .then(() => (this.abandoned ? undefined : work(arrived)))
      .catch((err) => this.report.refused('INTERNAL', (err as Error).message))
      .finally(() => {
        this.queued--;
        if (this.queued <= MAX_QUEUED && this.resume) {
          const resume = this.resume;
          this.resume = null;
          resume();
        }
      });
  }

  /** Writes a reply; with the probe on, the time since the request arrived is reported first. */
  private reply(text: string, arrived: number): Promise<void> {
    if (this.onServiceTime) this.onServiceTime(performance.now() - arrived);
    return this.write(text);
  }

  private async frame(arrived: number, line: string): Promise<void> {
    let req: J1Request;
    try {
      req = decodeFrame(line);
    } catch (err) {
      if (err instanceof FrameError) return this.refuseFrame(arrived, err.replyId, err.fault, err.message);
      throw err;
    }
    switch (req.type) {
      case 'HELLO':
        return this.reply(encodeFrame('HELLO', req.id, JSON.stringify(this.station.hello())), arrived);
      case 'CA':
        return this.reply(encodeFrame('CA', req.id, this.station.rootPem), arrived);
      case 'PING':
        return this.reply(encodeFrame('PONG', req.id, null), arrived);
      case 'SIGN': {
        const r = await this.station.handle({ csr: req.body ?? new Uint8Array(), link: this.link, encoding: 'der' });
        this.report.result(r);
        return this.reply(r.ok ? encodeFrame('CERT', req.id, r.chain) : errorFrame(req.id, r.code, oneLine(r.message)), arrived);
      }
    }
  }

  private async signPem(arrived: number, block: string, eol: string): Promise<void> {
    const r = await this.station.handle({ csr: Buffer.from(block, 'latin1'), link: this.link });
    this.report.result(r);
    const answer = r.ok ? `${r.chain}OK ${r.serial}\n` : `ERROR ${r.code} ${oneLine(r.message)}\n`;
    return this.reply(answer.replace(/\r?\n/g, eol), arrived);
  }

  private async refuseFrame(arrived: number, id: string, code: 'BAD_FRAME' | 'BAD_CRC' | 'UNKNOWN_TYPE' | 'TOO_LARGE', message: string): Promise<void> {
    this.report.refused(code, message);
    await this.station.recordRefusal(this.link, code, message);
    return this.reply(errorFrame(id, code, message), arrived);
  }

  private async refusePem(arrived: number, code: 'BAD_CSR' | 'TOO_LARGE', message: string, eol: string): Promise<void> {
    this.report.refused(code, message);
    await this.station.recordRefusal(this.link, code, message);
    return this.reply(`ERROR ${code} ${message}${eol}`, arrived);
  }
}

/** Spaces and tabs around a PEM-mode line are ignored (section 4). */
function trimBlanks(line: string): string {
  let a = 0;
  let b = line.length;
  while (a < b && (line[a] === ' ' || line[a] === '\t')) a++;
  while (b > a && (line[b - 1] === ' ' || line[b - 1] === '\t')) b--;
  return line.slice(a, b);
}

/** `-----BEGIN LABEL-----` → LABEL, else null. */
function dashed(text: string, word: 'BEGIN'): string | null {
  const head = `-----${word} `;
  return text.startsWith(head) && text.endsWith('-----') && text.length > head.length + 5 ? text.slice(head.length, -5) : null;
}

function oneLine(s: string): string {
  return s.replace(/[\r\n]+/g, ' ');
}
