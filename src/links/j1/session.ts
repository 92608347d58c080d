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
  ) {}

  /** Feeds one event from the line splitter. */
  onEvent(ev: LineEvent): void {
    if ('idle' in ev) {
      this.pem = null; // silently, as an unfinished line is
      return;
    }
    if ('tooLarge' in ev) {
      this.pem = null;
      this.enqueue(() => this.refuseFrame('-', 'TOO_LARGE', `line over ${MAX_LINE} bytes`));
      return;
    }
    const { line } = ev;
    if (this.pem !== null && !isFrameLine(line)) {
      this.pem.push(line);
      this.pemBytes += line.length + 1;
      if (line === PEM_END) {
        const block = this.pem.join('\n') + '\n';
        this.pem = null;
        this.enqueue(() => this.signPem(block));
      } else if (this.pemBytes > MAX_PEM_BLOCK) {
        this.pem = null;
        this.enqueue(() => this.refusePem('BAD_CSR', `PEM block over ${MAX_PEM_BLOCK} bytes`));
      }
      return;
    }
    this.pem = null; // a J1 line abandons an open block
    if (line === PEM_BEGIN) {
      this.pem = [line];
      this.pemBytes = line.length + 1;
    } else if (isFrameLine(line)) {
      this.enqueue(() => this.frame(line));
    } else this.report.noise(line.length);
  }

  /** Resolves when every request received so far has been answered. */
  drain(): Promise<void> {
    return this.tail;
  }

  get busy(): boolean {
    return this.inFlight > 0;
  }

  private enqueue(work: () => Promise<void>): void {
    this.inFlight++;
    this.tail = this.tail
      .then(work)
      .catch((err) => this.report.refused('INTERNAL', (err as Error).message))
      .finally(() => {
        this.inFlight--;
      });
  }

  private async frame(line: string): Promise<void> {
    let req: J1Request;
    try {
      req = decodeFrame(line);
    } catch (err) {
      if (err instanceof FrameError) return this.refuseFrame(err.replyId, err.fault, err.message);
      throw err;
    }
    switch (req.type) {
      case 'HELLO':
        return this.write(encodeFrame('HELLO', req.id, JSON.stringify(this.station.hello())));
      case 'CA':
        return this.write(encodeFrame('CA', req.id, this.station.rootPem));
      case 'PING':
        return this.write(encodeFrame('PONG', req.id, null));
      case 'SIGN': {
        const r = await this.station.handle({ csr: req.body ?? new Uint8Array(), link: this.link });
        this.report.result(r);
        return this.write(r.ok ? encodeFrame('CERT', req.id, r.chain) : errorFrame(req.id, r.code, oneLine(r.message)));
      }
    }
  }

  private async signPem(block: string): Promise<void> {
    const r = await this.station.handle({ csr: Buffer.from(block, 'latin1'), link: this.link });
    this.report.result(r);
    return this.write(r.ok ? `${r.chain}OK ${r.serial}\n` : `ERROR ${r.code} ${oneLine(r.message)}\n`);
  }

  private async refuseFrame(id: string, code: 'BAD_FRAME' | 'BAD_CRC' | 'UNKNOWN_TYPE' | 'TOO_LARGE', message: string): Promise<void> {
    this.report.refused(code, message);
    await this.station.recordRefusal(this.link, code, message);
    return this.write(errorFrame(id, code, message));
  }

  private async refusePem(code: 'BAD_CSR', message: string): Promise<void> {
    this.report.refused(code, message);
    await this.station.recordRefusal(this.link, code, message);
    return this.write(`ERROR ${code} ${message}\n`);
  }
}

function oneLine(s: string): string {
  return s.replace(/[\r\n]+/g, ' ');
}
