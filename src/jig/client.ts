/**
 * A J1 client on a serial port, as jig firmware would be: one request at a
 * time, each reply matched by ID, a resend on BAD_CRC, a time-out. A port
 * that closes or errors (the cable pulled, the pty gone) fails the request
 * waiting at once instead of at its time-out.
 */
import { SerialPort } from 'serialport';
import { decodeReply, encodeFrame, type Frame, type ReplyType } from '../links/j1/frame.js';
import { J1LineSplitter, type LineEvent } from '../links/j1/line-splitter.js';
import { LineSignerError } from '../errors.js';

export class J1Client {
  private nextId = 1;
  private waiting: { id: string; resolve: (f: Frame & { type: ReplyType }) => void; reject: (e: Error) => void } | null = null;
  private gone: string | null = null;

  private constructor(private readonly port: SerialPort) {
    const lose = (why: string): void => {
      this.gone ??= why;
      const w = this.waiting;
      this.waiting = null;
      w?.reject(new LineSignerError('INTERNAL', `the link is gone: ${this.gone}`));
    };
    port.on('close', () => lose('port closed'));
    port.on('error', (err) => lose(err.message));
    const splitter = new J1LineSplitter(60_000);
    port.on('data', (chunk: Buffer) => splitter.write(chunk));
    splitter.on('data', (ev: LineEvent) => {
      if (!('line' in ev) || !this.waiting) return;
      let reply;
      try {
        reply = decodeReply(ev.line);
      } catch {
        return; // noise on the line: keep waiting, the time-out resends
      }
      if (reply.id !== this.waiting.id && reply.id !== '-') return;
      const w = this.waiting;
      this.waiting = null;
      w.resolve(reply);
    });
  }

  static open(path: string, baudRate = 115200): Promise<J1Client> {
    return new Promise((resolve, reject) => {
      const port = new SerialPort({ path, baudRate, autoOpen: false });
      port.open((err) => (err ? reject(new LineSignerError('USAGE', `cannot open ${path}: ${err.message}`)) : resolve(new J1Client(port))));
    });
  }

  /** Sends one request and returns the reply; resends on BAD_CRC and on silence. */
  async request(type: string, body: Uint8Array | string | null, timeoutMs = 10_000, tries = 3): Promise<Frame & { type: ReplyType }> {
    const id = `j${this.nextId++}`;
    const line = encodeFrame(type, id, body);
    for (let attempt = 1; ; attempt++) {
      const reply = await new Promise<(Frame & { type: ReplyType }) | null>((resolve, reject) => {
        if (this.gone) return reject(new LineSignerError('INTERNAL', `the link is gone: ${this.gone}`));
        const timer = setTimeout(() => {
          this.waiting = null;
          resolve(null);
        }, timeoutMs);
        this.waiting = {
          id,
          resolve: (f) => {
            clearTimeout(timer);
            resolve(f);
          },
          reject: (e) => {
            clearTimeout(timer);
            reject(e);
          },
        };
        this.port.write(line, 'latin1');
      });
      const crcError = reply?.type === 'ERR' && Buffer.from(reply.body ?? new Uint8Array()).toString().startsWith('BAD_CRC ');
      if (reply && !crcError) return reply;
      if (attempt >= tries) {
        throw new LineSignerError('INTERNAL', reply ? 'the station kept answering BAD_CRC' : `no reply to ${type} in ${tries} tries of ${timeoutMs} ms`);
      }
    }
  }

  close(): Promise<void> {
    return new Promise((resolve) => (this.port.isOpen ? this.port.close(() => resolve()) : resolve()));
  }
}

/** `CODE message` of an ERR body. */
export function errOf(frame: Frame): { code: string; message: string } {
  const text = Buffer.from(frame.body ?? new Uint8Array()).toString('utf8');
  const sp = text.indexOf(' ');
  return sp === -1 ? { code: text, message: '' } : { code: text.slice(0, sp), message: text.slice(sp + 1) };
}
