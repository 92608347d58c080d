import { LineSignerError } from '../errors.js';

export function pemEncode(der: Uint8Array, label: string): string {
  const b64 = Buffer.from(der.buffer, der.byteOffset, der.byteLength).toString('base64');
  let body = '';
  for (let i = 0; i < b64.length; i += 64) body += b64.slice(i, i + 64) + '\n';
  return `-----BEGIN ${label}-----\n${body}-----END ${label}-----\n`;
}

/** Padded standard base64 (whitespace already removed); a plain character class, no backtracking. */
const BASE64_TEXT = /^[A-Za-z0-9+/]*={0,2}$/;

/**
 * Every well-formed PEM block in the text, in order, with its label. One
 * pass over the lines (each line trimmed, so CRLF and indented pastes
 * read): a client sends this text, so parsing must stay linear in its size.
 * A BEGIN line inside an unfinished block starts the block afresh.
 */
function pemBlocks(text: string): Array<{ label: string; der: Uint8Array }> {
  const out: Array<{ label: string; der: Uint8Array }> = [];
  let label: string | null = null;
  let body: string[] = [];
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line.charCodeAt(0) === DASH) {
      const begin = dashedLabel(line, 'BEGIN');
      if (begin !== null) {
        label = begin;
        body = [];
        continue;
      }
      if (label !== null && dashedLabel(line, 'END') === label) {
        const b64 = body.join('').replace(/[ \t\r]+/g, '');
        if (b64.length % 4 === 0 && BASE64_TEXT.test(b64)) out.push({ label, der: new Uint8Array(Buffer.from(b64, 'base64')) });
        label = null;
        continue;
      }
    }
    if (label !== null && line !== '') body.push(line);
  }
  return out;
}

const DASH = 0x2d;

/** `-----BEGIN LABEL-----` → LABEL (A-Z, 0-9, single spaces inside), else null. */
function dashedLabel(line: string, word: 'BEGIN' | 'END'): string | null {
  const head = `-----${word} `;
  if (!line.startsWith(head) || !line.endsWith('-----') || line.length < head.length + 6) return null;
  const label = line.slice(head.length, line.length - 5);
  return /^[A-Z0-9]+(?: [A-Z0-9]+)*$/.test(label) ? label : null;
}

/** Every PEM block with the given label, in order. */
export function pemDecodeAll(text: string, label: string): Uint8Array[] {
  return pemBlocks(text)
    .filter((b) => b.label === label)
    .map((b) => b.der);
}

export function looksLikePem(bytes: Uint8Array): boolean {
  // DER is one SEQUENCE whose length spans the input; text may say anything before its block (`openssl req
  // -text` prints the request as text first, over a kilobyte, and a text may start with "0", which is 0x30),
  // so the BEGIN line is looked for in the whole of it.
  if (bytes.byteLength === 0 || isOneDerSequence(bytes)) return false;
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('latin1').includes('-----BEGIN ');
}

/** The bytes are exactly one SEQUENCE (its tag, its length, that many bytes). */
function isOneDerSequence(b: Uint8Array): boolean {
  if (b.byteLength < 2 || b[0] !== 0x30) return false;
  let length = b[1]!;
  let header = 2;
  if (length & 0x80) {
    const n = length & 0x7f;
    if (n === 0 || n > 4 || b.byteLength < 2 + n) return false;
    length = 0;
    for (let i = 0; i < n; i++) length = length * 256 + b[2 + i]!;
    header += n;
  }
  return header + length === b.byteLength;
}

const CSR_LABELS = ['CERTIFICATE REQUEST', 'NEW CERTIFICATE REQUEST'];

/** A CSR as DER, from DER or PEM bytes (`CERTIFICATE REQUEST` or the older `NEW CERTIFICATE REQUEST`). */
export function csrDer(bytes: Uint8Array): Uint8Array {
  if (!looksLikePem(bytes)) return bytes;
  const blocks = pemBlocks(Buffer.from(bytes).toString('utf8')).filter((b) => CSR_LABELS.includes(b.label));
  if (blocks.length === 0) throw new LineSignerError('BAD_CSR', 'no readable CERTIFICATE REQUEST block in the PEM text');
  // Which one would be signed must not be a guess.
  if (blocks.length > 1) throw new LineSignerError('BAD_CSR', `${blocks.length} CERTIFICATE REQUEST blocks in the PEM text; send one`);
  return blocks[0]!.der;
}
