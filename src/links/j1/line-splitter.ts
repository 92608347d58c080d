/**
 * Bytes in, lines out, as J1 wants them: at most MAX_LINE bytes counting
 * the LF (and a CR before it); a longer line is discarded up to its LF and
 * reported once as `{ tooLarge: true }`; a CR before the LF is dropped. An
 * unfinished line is dropped silently when no byte has come for the idle
 * timeout, so a jig that died mid-frame cannot wedge the link.
 * A Transform in object mode, in the way of node-serialport's parsers.
 */
import { Transform, type TransformCallback } from 'node:stream';
import { MAX_LINE } from './frame.js';

export type LineEvent = { line: string } | { tooLarge: true } | { idle: true };

export class J1LineSplitter extends Transform {
  private parts: Buffer[] = [];
  private size = 0;
  private discarding = false;
  private timer: NodeJS.Timeout | null = null;

  constructor(private readonly idleMs = 10_000) {
    super({ readableObjectMode: true });
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, done: TransformCallback): void {
    this.armIdle();
    let start = 0;
    for (;;) {
      const lf = chunk.indexOf(0x0a, start);
      const piece = lf === -1 ? chunk.subarray(start) : chunk.subarray(start, lf + 1);
      this.size += piece.length;
      if (!this.discarding) {
        if (this.size > MAX_LINE) {
          this.discarding = true;
          this.parts = [];
        } else this.parts.push(piece);
      }
      if (lf === -1) break;
      if (this.discarding) this.push({ tooLarge: true } satisfies LineEvent);
      else {
        let line = Buffer.concat(this.parts);
        line = line.subarray(0, line.length - 1); // LF
        if (line.length > 0 && line[line.length - 1] === 0x0d) line = line.subarray(0, line.length - 1);
        this.push({ line: line.toString('latin1') } satisfies LineEvent);
      }
      this.parts = [];
      this.size = 0;
      this.discarding = false;
      start = lf + 1;
      if (start >= chunk.length) break;
    }
    done();
  }

  private armIdle(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = null;
      const unfinished = this.size > 0;
      this.parts = [];
      this.size = 0;
      this.discarding = false;
      // Sent even with no partial line: the session may hold an open PEM block.
      this.push({ idle: true, unfinished } as LineEvent);
    }, this.idleMs);
    this.timer.unref();
  }

  override _flush(done: TransformCallback): void {
    if (this.timer) clearTimeout(this.timer);
    done();
  }

  override _destroy(err: Error | null, done: (error?: Error | null) => void): void {
    if (this.timer) clearTimeout(this.timer);
    done(err);
  }
}
