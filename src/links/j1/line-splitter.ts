/**
 * Bytes in, lines out, as J1 and PEM mode want them
 * (../shared/spec/jig-protocol.md sections 1 and 4). A line that starts
 * `J1 ` is a frame line: it ends at LF, a CR right before the LF is
 * dropped, a CR elsewhere stays in the line. Any other line (PEM mode, a
 * terminal, noise) ends at LF, CR or CRLF, since a terminal's Enter key and
 * a paste send CR. Every line is at most MAX_LINE bytes counting its
 * ending (a CR counts); a longer one is discarded up to its end and
 * reported once as `{ tooLarge: true }`. An unfinished line is dropped
 * silently when no byte has come for the idle timeout, so a jig that died
 * mid-frame cannot wedge the link.
 * A Transform in object mode, in the way of node-serialport's parsers.
 */
import { Transform, type TransformCallback } from 'node:stream';
import { MAX_LINE } from './frame.js';

/** `cr`: the line ended with CR (or CRLF), as a terminal sends; `lf`: with a bare LF. */
export type LineEnd = 'cr' | 'lf';

export type LineEvent = { line: string; end: LineEnd } | { tooLarge: true } | { idle: true; unfinished: boolean };

const LF = 0x0a;
const CR = 0x0d;
const FRAME_START = [0x4a, 0x31, 0x20]; // "J1 "

export class J1LineSplitter extends Transform {
  private parts: Buffer[] = [];
  private size = 0;
  private discarding = false;
  /** A frame line (starts `J1 `) ends only at LF; until its third byte the kind is open. */
  private kind: 'undecided' | 'frame' | 'other' = 'undecided';
  private matched = 0;
  /** The last line ended with CR: an LF right after it is the rest of a CRLF. */
  private afterCr = false;
  /** Where next() last found LF and CR in the current chunk: -1 none left, -2 not looked yet. */
  private found: [number, number] = [-2, -2];
  private timer: NodeJS.Timeout | null = null;

  constructor(private readonly idleMs = 10_000) {
    super({ readableObjectMode: true });
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, done: TransformCallback): void {
    this.armIdle();
    this.found = [-2, -2];
    let start = 0;
    if (this.afterCr && chunk.length > 0) {
      this.afterCr = false;
      if (chunk[0] === LF) start = 1;
    }
    while (start < chunk.length) {
      const end = this.lineEnd(chunk, start);
      const piece = end === -1 ? chunk.subarray(start) : chunk.subarray(start, end + 1);
      this.collect(piece);
      if (end === -1) break;
      const byCr = chunk[end] === CR;
      this.finishLine(byCr ? 'cr' : 'lf');
      start = end + 1;
      if (byCr) {
        if (start < chunk.length) {
          if (chunk[start] === LF) start++;
        } else this.afterCr = true;
      }
    }
    done();
  }

  /**
   * Where the current line ends in chunk[from..]: the first LF, or the first
   * CR when the line is not a frame line. Whether it is one is known by its
   * third byte, so only a line's first bytes are looked at one by one.
   */
  private lineEnd(chunk: Buffer, from: number): number {
    let i = from;
    for (; this.kind === 'undecided' && i < chunk.length; i++) {
      const b = chunk[i]!;
      if (b === LF || b === CR) return i;
      if (b !== FRAME_START[this.matched]) this.kind = 'other';
      else if (++this.matched === FRAME_START.length) this.kind = 'frame';
    }
    if (this.kind === 'undecided') return -1;
    const lf = this.next(chunk, LF, i);
    if (this.kind === 'frame') return lf;
    const cr = this.next(chunk, CR, i);
    return cr === -1 || (lf !== -1 && lf < cr) ? lf : cr;
  }

  /**
   * The next `byte` in chunk at or after `from`, remembered per chunk so
   * that a chunk of many short lines without a CR is not searched to its
   * end once per line (quadratic on hostile input).
   */
  private next(chunk: Buffer, byte: number, from: number): number {
    const slot = byte === LF ? 0 : 1;
    const known = this.found[slot]!;
    if (known === -1 || known >= from) return known;
    return (this.found[slot] = chunk.indexOf(byte, from));
  }

  private collect(piece: Buffer): void {
    this.size += piece.length;
    if (this.discarding) return;
    if (this.size > MAX_LINE) {
      this.discarding = true;
      this.parts = [];
    } else this.parts.push(piece);
  }

  private finishLine(end: LineEnd): void {
    if (this.discarding) this.push({ tooLarge: true } satisfies LineEvent);
    else {
      let line = this.parts.length === 1 ? this.parts[0]! : Buffer.concat(this.parts);
      line = line.subarray(0, line.length - 1); // the LF or CR
      if (end === 'lf' && line.length > 0 && line[line.length - 1] === CR) line = line.subarray(0, line.length - 1);
      this.push({ line: line.toString('latin1'), end } satisfies LineEvent);
    }
    this.reset();
  }

  private reset(): void {
    this.parts = [];
    this.size = 0;
    this.discarding = false;
    this.kind = 'undecided';
    this.matched = 0;
  }

  private armIdle(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = null;
      const unfinished = this.size > 0;
      this.reset();
      this.afterCr = false;
      // Sent even with no partial line: the session may hold an open PEM block.
      this.push({ idle: true, unfinished } satisfies LineEvent);
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
