/**
 * A jig written from ../shared/spec/jig-protocol.md alone: it shares no
 * code with src/links. It frames with its own CRC (zlib's CRC-32) and
 * reads raw lines, so it can also send what a broken jig would.
 */
import { crc32 } from 'node:zlib';
import { SerialPort } from 'serialport';

export interface Reply {
  line: string;
  type: string;
  id: string;
  body: Buffer | null;
  /** ERR bodies split. */
  code?: string;
  message?: string;
  at: number;
}

export function frame(type: string, id: string, body: Buffer | string | null): string {
  const b = body === null ? '-' : Buffer.from(body).toString('base64');
  const head = `J1 ${type} ${id} ${b} `;
  return head + crc32(Buffer.from(head, 'latin1')).toString(16).padStart(8, '0') + '\n';
}

export function parseReply(line: string): Reply {
  const [magic, type, id, body, crc, ...rest] = line.split(' ');
  if (magic !== 'J1' || rest.length || !crc) throw new Error(`not a frame: ${line.slice(0, 80)}`);
  const head = line.slice(0, line.length - crc.length);
  if (crc32(Buffer.from(head, 'latin1')).toString(16).padStart(8, '0') !== crc) throw new Error(`bad CRC from station: ${line.slice(0, 80)}`);
  const decoded = body === '-' ? null : Buffer.from(body!, 'base64');
  const r: Reply = { line, type: type!, id: id!, body: decoded, at: performance.now() };
  if (type === 'ERR' && decoded) {
    const text = decoded.toString('utf8');
    const sp = text.indexOf(' ');
    r.code = text.slice(0, sp);
    r.message = text.slice(sp + 1);
  }
  return r;
}

export class TestJig {
  private buf = '';
  private lines: string[] = [];
  private waiters: Array<(line: string) => void> = [];

  private constructor(readonly port: SerialPort) {
    port.on('data', (chunk: Buffer) => {
      this.buf += chunk.toString('latin1');
      let i;
      while ((i = this.buf.indexOf('\n')) !== -1) {
        const line = this.buf.slice(0, i);
        this.buf = this.buf.slice(i + 1);
        // Noise, as for any jig: the station ends a reply cut off with the last connection by a bare LF.
        if (line === '') continue;
        const w = this.waiters.shift();
        if (w) w(line);
        else this.lines.push(line);
      }
    });
  }

  static open(path: string): Promise<TestJig> {
    return new Promise((resolve, reject) => {
      const port = new SerialPort({ path, baudRate: 115200, autoOpen: false });
      port.open((err) => (err ? reject(err) : resolve(new TestJig(port))));
    });
  }

  send(raw: string | Buffer): Promise<void> {
    return new Promise((resolve, reject) => this.port.write(raw, (err) => (err ? reject(err) : this.port.drain(() => resolve()))));
  }

  /** The next line from the station, or null after `ms`. */
  nextLine(ms = 5000): Promise<string | null> {
    const queued = this.lines.shift();
    if (queued !== undefined) return Promise.resolve(queued);
    return new Promise((resolve) => {
      const w = (line: string): void => {
        clearTimeout(t);
        resolve(line);
      };
      const t = setTimeout(() => {
        this.waiters = this.waiters.filter((x) => x !== w);
        resolve(null);
      }, ms);
      this.waiters.push(w);
    });
  }

  async reply(ms = 5000): Promise<Reply> {
    const line = await this.nextLine(ms);
    if (line === null) throw new Error('no reply from the station');
    return parseReply(line);
  }

  async request(type: string, id: string, body: Buffer | string | null, ms = 5000): Promise<Reply> {
    await this.send(frame(type, id, body));
    return this.reply(ms);
  }

  /** Reads PEM-mode answer lines up to `OK <serial>` or `ERROR ...`. */
  async pemAnswer(ms = 5000): Promise<{ text: string; last: string }> {
    let text = '';
    for (;;) {
      const line = await this.nextLine(ms);
      if (line === null) throw new Error('no PEM-mode answer');
      if (line.startsWith('OK ') || line.startsWith('ERROR ')) return { text, last: line };
      text += line + '\n';
    }
  }

  close(): Promise<void> {
    return new Promise((resolve) => (this.port.isOpen ? this.port.close(() => resolve()) : resolve()));
  }
}
