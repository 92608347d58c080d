/**
 * A strict, allocation-light DER reader for the one structure on the hot
 * path, the device CSR. asn1js decodes into an object model and converts
 * buffers at every step: about 0.2 ms a CSR, a fifth of the station's
 * budget per certificate. This reads tags and lengths only and hands back
 * offsets into the caller's bytes. No crypto here: signatures are checked
 * by node:crypto.
 */
import { LineSignerError } from '../errors.js';

export interface Tlv {
  tag: number;
  /** Offset of the tag byte. */
  start: number;
  /** Offset of the first content byte. */
  contentStart: number;
  /** Offset just past the content. */
  end: number;
}

function bad(message: string): never {
  throw new LineSignerError('BAD_CSR', `not DER: ${message}`);
}

/** The TLV at `offset`, which must end at or before `limit`. */
export function readTlv(buf: Uint8Array, offset: number, limit = buf.length): Tlv {
  if (offset + 2 > limit) bad('truncated');
  const tag = buf[offset]!;
  if ((tag & 0x1f) === 0x1f) bad('multi-byte tags are not used in a CSR');
  let len = buf[offset + 1]!;
  let at = offset + 2;
  if (len & 0x80) {
    const n = len & 0x7f;
    if (n === 0) bad('indefinite length');
    if (n > 3) bad('length too large');
    if (at + n > limit) bad('truncated length');
    len = 0;
    for (let i = 0; i < n; i++) len = (len << 8) | buf[at + i]!;
    if (len < 0x80 || (n > 1 && buf[at] === 0)) bad('length not in its shortest form');
    at += n;
  }
  if (at + len > limit) bad('truncated');
  return { tag, start: offset, contentStart: at, end: at + len };
}

/** The TLVs inside a constructed one, in order. */
export function childrenOf(buf: Uint8Array, parent: Tlv): Tlv[] {
  if ((parent.tag & 0x20) === 0) bad(`tag 0x${parent.tag.toString(16)} is not constructed`);
  const out: Tlv[] = [];
  for (let at = parent.contentStart; at < parent.end; ) {
    const t = readTlv(buf, at, parent.end);
    out.push(t);
    at = t.end;
  }
  return out;
}

export const content = (buf: Uint8Array, t: Tlv): Uint8Array => buf.subarray(t.contentStart, t.end);
export const whole = (buf: Uint8Array, t: Tlv): Uint8Array => buf.subarray(t.start, t.end);

/** Dotted form of an OBJECT IDENTIFIER's contents. */
/** The longest OBJECT IDENTIFIER read, in content bytes: at most a few hundred characters of text. */
export const OID_MAX_BYTES = 64;

export function oidText(bytes: Uint8Array): string {
  if (bytes.length === 0) bad('empty OBJECT IDENTIFIER');
  // Real OIDs are a few dozen bytes; the text of a longer one would land in refusals, logs and the ledger.
  if (bytes.length > OID_MAX_BYTES) bad(`OBJECT IDENTIFIER of ${bytes.length} bytes (more than ${OID_MAX_BYTES})`);
  const parts: number[] = [];
  let value = 0;
  for (let i = 0; i < bytes.length; i++) {
    const b = bytes[i]!;
    if (value === 0 && b === 0x80) bad('OBJECT IDENTIFIER not in its shortest form');
    value = value * 128 + (b & 0x7f);
    if (value > Number.MAX_SAFE_INTEGER) bad('OBJECT IDENTIFIER arc too large');
    if ((b & 0x80) === 0) {
      if (parts.length === 0) parts.push(value < 80 ? Math.floor(value / 40) : 2, value < 80 ? value % 40 : value - 80);
      else parts.push(value);
      value = 0;
    } else if (i === bytes.length - 1) bad('OBJECT IDENTIFIER ends mid-arc');
  }
  return parts.join('.');
}

// ignoreBOM: a leading U+FEFF stays in the text, where the text rules refuse it (stripped, it let "\uFEFFname" pass as "name").
const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/** The text of a directory string value, or null for other types or invalid encodings. */
export function directoryString(buf: Uint8Array, t: Tlv): string | null {
  const bytes = content(buf, t);
  try {
    switch (t.tag) {
      case 0x0c: // UTF8String
        return utf8.decode(bytes);
      case 0x13: // PrintableString
      case 0x16: // IA5String
      case 0x1a: // VisibleString
      case 0x14: // TeletexString (read as Latin-1, as OpenSSL does)
        return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length).toString('latin1');
      case 0x1e: {
        // BMPString: UTF-16 big-endian
        if (bytes.length % 2) return null;
        const swapped = Buffer.from(bytes);
        swapped.swap16();
        return swapped.toString('utf16le');
      }
      default:
        return null;
    }
  } catch {
    return null;
  }
}
