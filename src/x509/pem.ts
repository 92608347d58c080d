import { LineSignerError } from '../errors.js';

export function pemEncode(der: Uint8Array, label: string): string {
  const b64 = Buffer.from(der.buffer, der.byteOffset, der.byteLength).toString('base64');
  let body = '';
  for (let i = 0; i < b64.length; i += 64) body += b64.slice(i, i + 64) + '\n';
  return `-----BEGIN ${label}-----\n${body}-----END ${label}-----\n`;
}

const BLOCK = /-----BEGIN ([A-Z0-9 ]+)-----\r?\n([\s\S]*?)-----END \1-----/g;

/** Every PEM block with the given label, in order. */
export function pemDecodeAll(text: string, label: string): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (const m of text.matchAll(BLOCK)) {
    if (m[1] !== label) continue;
    const b64 = m[2]!.replace(/\s+/g, '');
    if (!/^[A-Za-z0-9+/]*={0,2}$/.test(b64) || b64.length % 4 !== 0) continue;
    out.push(new Uint8Array(Buffer.from(b64, 'base64')));
  }
  return out;
}

export function looksLikePem(bytes: Uint8Array): boolean {
  return Buffer.from(bytes.buffer, bytes.byteOffset, Math.min(bytes.byteLength, 64)).toString('latin1').includes('-----BEGIN ');
}

/** A CSR as DER, from DER or PEM bytes. */
export function csrDer(bytes: Uint8Array): Uint8Array {
  if (!looksLikePem(bytes)) return bytes;
  const text = Buffer.from(bytes).toString('utf8');
  const [der] = [...pemDecodeAll(text, 'CERTIFICATE REQUEST'), ...pemDecodeAll(text, 'NEW CERTIFICATE REQUEST')];
  if (!der) throw new LineSignerError('BAD_CSR', 'no readable CERTIFICATE REQUEST block in the PEM text');
  return der;
}
