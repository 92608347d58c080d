/**
 * J1 frames (../shared/spec/jig-protocol.md section 1): one line of
 * printable ASCII, `J1 TYPE ID BODY CRC`. Pure functions: a line in, a
 * decoded request or a protocol error out; a reply in, bytes out.
 */
import { crc32 } from 'node:zlib';
import { LineSignerError } from '../../errors.js';

export const MAX_LINE = 16384;
export const REQUEST_TYPES = ['HELLO', 'SIGN', 'CA', 'PING'] as const;
export type RequestType = (typeof REQUEST_TYPES)[number];
export type ReplyType = 'HELLO' | 'CERT' | 'CA' | 'PONG' | 'ERR';

export interface Frame {
  type: string;
  id: string;
  /** Decoded body; null for `-`. */
  body: Uint8Array | null;
}

export interface J1Request extends Frame {
  type: RequestType;
}

const ID = /^[A-Za-z0-9_-]{1,16}$/;
const TYPE = /^[A-Z]{1,16}$/;
const CRC = /^[0-9a-f]{8}$/;
const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/** A frame fault, carrying the ID the reply must echo. */
export type FrameFault = 'BAD_CRC' | 'BAD_FRAME' | 'UNKNOWN_TYPE';

export class FrameError extends LineSignerError {
  constructor(
    readonly fault: FrameFault,
    message: string,
    readonly replyId: string,
  ) {
    super(fault, message);
  }
}

/** CRC-32 of the line's bytes; lines are held as latin1 strings, one char a byte. */
export function crcHex(text: string): string {
  return crc32(Buffer.from(text, 'latin1')).toString(16).padStart(8, '0');
}

export function isFrameLine(line: string): boolean {
  return line.startsWith('J1 ');
}

/** Standard padded base64 that re-encodes to itself (one text for one body). */
function canonicalBase64(text: string): Uint8Array | null {
  if (text.length === 0 || !BASE64.test(text)) return null;
  const bytes = Buffer.from(text, 'base64');
  return bytes.toString('base64') === text ? new Uint8Array(bytes) : null;
}

/**
 * Decodes one line (without its LF; a trailing CR already removed). Faults,
 * first one wins: CRC mismatch, then malformed frame, then a type the
 * station does not serve.
 */
export function decodeFrame(line: string): J1Request {
  const fields = line.split(' ');
  const replyId = fields.length >= 3 && ID.test(fields[2]!) ? fields[2]! : '-';
  const last = fields[fields.length - 1]!;
  if (CRC.test(last)) {
    const covered = line.slice(0, line.length - last.length);
    if (crcHex(covered) !== last) throw new FrameError('BAD_CRC', 'frame checksum mismatch', replyId);
  }
  if (fields.length !== 5) throw new FrameError('BAD_FRAME', `a frame has 5 fields, this line has ${fields.length}`, replyId);
  if (!/^[\x20-\x7e]*$/.test(line)) throw new FrameError('BAD_FRAME', 'a byte outside printable ASCII', replyId);
  const [, type, id, body, crc] = fields as [string, string, string, string, string];
  if (!CRC.test(crc)) throw new FrameError('BAD_FRAME', 'the checksum field is not 8 lowercase hex digits', replyId);
  if (!ID.test(id)) throw new FrameError('BAD_FRAME', 'bad ID: 1 to 16 of A-Z a-z 0-9 - _', '-');
  if (!TYPE.test(type)) throw new FrameError('BAD_FRAME', 'bad TYPE: 1 to 16 of A-Z', replyId);
  let decoded: Uint8Array | null = null;
  if (body !== '-') {
    decoded = canonicalBase64(body);
    if (!decoded) throw new FrameError('BAD_FRAME', 'the body is not canonical padded base64', replyId);
  }
  if (!(REQUEST_TYPES as readonly string[]).includes(type)) {
    throw new FrameError('UNKNOWN_TYPE', `the station does not serve ${type}`, replyId);
  }
  return { type: type as RequestType, id, body: decoded };
}

/** One reply line, LF-terminated. */
export function encodeFrame(type: ReplyType | string, id: string, body: Uint8Array | string | null): string {
  const b = body === null ? '-' : Buffer.from(typeof body === 'string' ? Buffer.from(body, 'utf8') : body).toString('base64') || '-';
  const head = `J1 ${type} ${id} ${b} `;
  return `${head}${crcHex(head)}\n`;
}

export function errorFrame(id: string, code: string, message: string): string {
  return encodeFrame('ERR', id, `${code} ${message}`);
}

const REPLY_TYPES = ['HELLO', 'CERT', 'CA', 'PONG', 'ERR'];

/** The jig's side: a reply line from the station, checked as strictly as a request. */
export function decodeReply(line: string): Frame & { type: ReplyType } {
  const fields = line.split(' ');
  if (fields.length !== 5 || fields[0] !== 'J1') throw new FrameError('BAD_FRAME', 'not a J1 reply', '-');
  const [, type, id, body, crc] = fields as [string, string, string, string, string];
  if (!CRC.test(crc) || crcHex(line.slice(0, line.length - crc.length)) !== crc) throw new FrameError('BAD_CRC', 'reply checksum mismatch', id);
  if (!REPLY_TYPES.includes(type)) throw new FrameError('UNKNOWN_TYPE', `unexpected reply type ${type}`, id);
  if (id !== '-' && !ID.test(id)) throw new FrameError('BAD_FRAME', 'bad reply ID', '-');
  const decoded = body === '-' ? null : canonicalBase64(body);
  if (body !== '-' && !decoded) throw new FrameError('BAD_FRAME', 'reply body is not canonical base64', id);
  return { type: type as ReplyType, id, body: decoded };
}
