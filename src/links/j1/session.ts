/**
 * One jig conversation on a byte stream: J1 frames and plain PEM mode
 * (../shared/spec/jig-protocol.md sections 2 to 4). Line events in, reply
 * text out, strictly one request at a time and in order. Knows nothing of
 * ports: the serial link feeds it, a test can too.
 */
import type { LinkReporter, StationPort } from '../types.js';
import { FrameError, decodeFrame, encodeFrame, errorFrame, isFrameLine, MAX_LINE, type J1Request } from './frame.js';
import type { LineEvent } from './line-splitter.js';

const PEM_BEGIN = '-----BEGIN CERTIFICATE REQUEST-----';
const PEM_END = '-----END CERTIFICATE REQUEST-----';
/** A CSR is a few hundred bytes; a "block" past this is not one. */
const MAX_PEM_BLOCK = 4 * MAX_LINE;

export class J1Session {
  private pem: string[] | null = null;
  private pemBytes = 0;
  private tail: Promise<void> = Promise.resolve();
  private inFlight = 0;

  constructor(
    private readonly station: StationPort,
    private readonly link: string,
    private readonly write: (text: string) => Promise<void>,
    private readonly report: LinkReporter,
    /** Time from a request's last line in to its reply going out, in ms (the benchmark's probe). */
    private readonly onServiceTime?: (ms: number) => void,
  ) {}

  /** Feeds one event from the line splitter. */
  onEvent(ev: LineEvent): void {
    if ('idle' in ev) {
      this.pem = null; // silently, as an unfinished line is
      return;
    }
    if ('tooLarge' in ev) {
      this.pem = null;
      this.enqueue((at) => this.refuseFrame(at, '-', 'TOO_LARGE', `line over ${MAX_LINE} bytes`));
      return;
    }
    const { line } = ev;
    if (this.pem !== null && !isFrameLine(line)) {
      this.pem.push(line);
      this.pemBytes += line.length + 1;
      if (line === PEM_END) {
        const block = this.pem.join('\n') + '\n';
        this.pem = null;
        this.enqueue((at) => this.signPem(at, block));
      } else if (this.pemBytes > MAX_PEM_BLOCK) {
        this.pem = null;
        this.enqueue((at) => this.refusePem(at, 'BAD_CSR', `PEM block over ${MAX_PEM_BLOCK} bytes`));
      }
      return;
    }
    this.pem = null; // a J1 line abandons an open block
    if (line === PEM_BEGIN) {
      this.pem = [line];
      this.pemBytes = line.length + 1;
    } else if (isFrameLine(line)) {
      this.enqueue((at) => this.frame(at, line));
    } else this.report.noise(line.length);
  }

  /** Resolves when every request received so far has been answered. */
  drain(): Promise<void> {
    return this.tail;
  }

  get busy(): boolean {
    return this.inFlight > 0;
  }

  private enqueue(work: (arrived: number) => Promise<void>): void {
    this.inFlight++;
    const arrived = this.onServiceTime ? performance.now() : 0;
    this.tail = this.tail
      .then(() => work(arrived))
      .catch((err) => this.report.refused('INTERNAL', (err as Error).message))
      .finally(() => {
        this.inFlight--;
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
        const r = await this.station.handle({ csr: req.body ?? new Uint8Array(), link: this.link });
        this.report.result(r);
        return this.reply(r.ok ? encodeFrame('CERT', req.id, r.chain) : errorFrame(req.id, r.code, oneLine(r.message)), arrived);
      }
    }
  }

  private async signPem(arrived: number, block: string): Promise<void> {
    const r = await this.station.handle({ csr: Buffer.from(block, 'latin1'), link: this.link });
    this.report.result(r);
    return this.reply(r.ok ? `${r.chain}OK ${r.serial}\n` : `ERROR ${r.code} ${oneLine(r.message)}\n`, arrived);
  }

  private async refuseFrame(arrived: number, id: string, code: 'BAD_FRAME' | 'BAD_CRC' | 'UNKNOWN_TYPE' | 'TOO_LARGE', message: string): Promise<void> {
    this.report.refused(code, message);
    await this.station.recordRefusal(this.link, code, message);
    return this.reply(errorFrame(id, code, message), arrived);
  }

  private async refusePem(arrived: number, code: 'BAD_CSR', message: string): Promise<void> {
    this.report.refused(code, message);
    await this.station.recordRefusal(this.link, code, message);
    return this.reply(`ERROR ${code} ${message}\n`, arrived);
  }
}

function oneLine(s: string): string {
  return s.replace(/[\r\n]+/g, ' ');
}
