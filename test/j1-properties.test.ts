/**
 * Property-based tests of the J1 decoder as the serial link runs it: bytes
 * through J1LineSplitter into J1Session, with a StationPort stub (the
 * station's own answers are tested over real ptys in serial.test.ts). The
 * expected replies come from an oracle written from the spec's section 1,
 * not from src/links/j1/frame.ts; replies are checked with the spec-only
 * parser of test/helpers/jig.ts (its CRC check included).
 */
import test from 'ava';
import fc from 'fast-check';
import { crc32 } from 'node:zlib';
import { J1LineSplitter, type LineEvent } from '../src/links/j1/line-splitter.js';
import { J1Session, MAX_QUEUED } from '../src/links/j1/session.js';
import { LinkReporter, type StationPort } from '../src/links/types.js';
import { parseReply } from './helpers/jig.js';

const MAX_LINE = 16384;
const SERVED = ['HELLO', 'SIGN', 'CA', 'PING'];
const REPLY_OF: Record<string, string> = { HELLO: 'HELLO', SIGN: 'CERT', CA: 'CA', PING: 'PONG' };

/** A station that answers at once: CERT for any non-empty CSR, BAD_CSR for none. */
function stubStation(gate?: () => Promise<void>): StationPort {
  return {
    async handle(req) {
      await gate?.();
      return req.csr.length === 0
        ? { ok: false, code: 'BAD_CSR', message: 'no CSR' }
        : { ok: true, chain: 'CHAIN\n', certificatePem: 'CERT\n', serial: '0a', deviceId: 'd', replayed: false };
    },
    hello: () => ({ protocol: 1, station: 's', factory: 'f', ca: '0'.repeat(64), max_frame: MAX_LINE, production: true }),
    rootPem: 'ROOT\n',
    recordRefusal: async () => undefined,
    health: () => null,
    checkHealth: async () => null,
  };
}

/** Feeds chunks through the splitter into a session; resolves with every reply written, in order. */
async function converse(chunks: Uint8Array[], station = stubStation()): Promise<string[]> {
  const out: string[] = [];
  const session = new J1Session(station, 'prop', async (text) => void out.push(text), new LinkReporter('prop', 'serial'));
  const splitter = new J1LineSplitter(60_000);
  const errors: Error[] = [];
  splitter.on('error', (e) => errors.push(e));
  session.input.on('error', (e) => errors.push(e));
  splitter.pipe(session.input);
  for (const c of chunks) splitter.write(Buffer.from(c));
  splitter.end();
  await new Promise<void>((resolve) => session.input.once('finish', resolve));
  await session.drain();
  if (errors.length) throw errors[0];
  return out;
}

const crcOf = (head: string): string => crc32(Buffer.from(head, 'latin1')).toString(16).padStart(8, '0');
const ID = /^[A-Za-z0-9_-]{1,16}$/;

/** What the spec says a station answers to one J1 line: [type, id, code?]. */
function oracle(line: string): [string, string, string?] {
  const fields = line.split(' ');
  const echo = fields.length >= 3 && ID.test(fields[2]!) ? fields[2]! : '-';
  const last = fields[fields.length - 1]!;
  if (/^[0-9a-f]{8}$/.test(last) && crcOf(line.slice(0, line.length - 8)) !== last) return ['ERR', echo, 'BAD_CRC'];
  const [, type, id, body, crc] = fields;
  const base64Ok = (b: string): boolean => b === '-' || (b.length > 0 && Buffer.from(b, 'base64').toString('base64') === b);
  if (fields.length !== 5 || !/^[\x20-\x7e]*$/.test(line) || !/^[0-9a-f]{8}$/.test(crc!) || !/^[A-Z]{1,16}$/.test(type!) || !base64Ok(body!)) {
    return ['ERR', echo, 'BAD_FRAME'];
  }
  if (!ID.test(id!)) return ['ERR', '-', 'BAD_FRAME'];
  if (!SERVED.includes(type!)) return ['ERR', id!, 'UNKNOWN_TYPE'];
  if (type === 'SIGN' && body === '-') return ['ERR', id!, 'BAD_CSR'];
  return [REPLY_OF[type!]!, id!];
}

const idArb = fc.oneof(
  { weight: 4, arbitrary: fc.stringMatching(/^[A-Za-z0-9_-]{1,16}$/) },
  { weight: 1, arbitrary: fc.constantFrom('', 'a*b', 'x'.repeat(17), 'é', 'a b') },
);
const typeArb = fc.oneof(
  { weight: 4, arbitrary: fc.constantFrom(...SERVED) },
  { weight: 1, arbitrary: fc.constantFrom('CERT', 'PONG', 'ERR', 'REBOOT', 'ping', '', 'A'.repeat(17)) },
);
const bodyArb = fc.oneof(
  fc.constant('-'),
  fc.uint8Array({ minLength: 1, maxLength: 40 }).map((b) => Buffer.from(b).toString('base64')),
  fc.constantFrom('QQ', 'QR==', 'a\x7fb=', '====', 'QUJD\r'),
);
/** A byte that is not LF: a CR or any other control or high byte. */
const oddByte = fc.integer({ min: 0, max: 255 }).filter((b) => b !== 0x0a).map((b) => String.fromCharCode(b));

/** One J1 line (no ending): well formed, or with CRC, form, type faults mixed in. */
const frameLineArb = fc
  .record({
    type: typeArb,
    id: idArb,
    body: bodyArb,
    crc: fc.constantFrom('right', 'right', 'right', 'wrong', 'upper', 'short'),
    extra: fc.constantFrom(0, 0, 0, 1, -1),
    odd: fc.option(fc.tuple(oddByte, fc.nat()), { freq: 5 }),
  })
  .map(({ type, id, body, crc, extra, odd }) => {
    const fields = ['J1', type, id, body];
    if (extra === 1) fields.push('x');
    if (extra === -1) fields.pop();
    let head = fields.join(' ') + ' ';
    if (odd) {
      const at = 3 + (odd[1] % Math.max(1, head.length - 3));
      head = head.slice(0, at) + odd[0] + head.slice(at);
    }
    const right = crcOf(head);
    const wrong = ((parseInt(right, 16) ^ 1) >>> 0).toString(16).padStart(8, '0');
    return head + { right, wrong, upper: right.toUpperCase(), short: right.slice(1) }[crc];
  })
  .filter((line) => !line.endsWith('\r'));

/** A line that is not a frame: boot log, prompt, random bytes (no LF, CR or PEM header in it). */
const noiseArb = fc
  .uint8Array({ minLength: 0, maxLength: 60 })
  .map((b) => Buffer.from(b).toString('latin1').replace(/[\r\n]/g, ''))
  .filter((s) => !s.startsWith('J1 ') && !s.includes('-----BEGIN') && s !== '');

type Item = { kind: 'frame'; line: string; end: string } | { kind: 'noise'; line: string; end: string } | { kind: 'huge'; size: number };

const itemArb: fc.Arbitrary<Item> = fc.oneof(
  { weight: 6, arbitrary: fc.record({ kind: fc.constant('frame' as const), line: frameLineArb, end: fc.constantFrom('\n', '\r\n') }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('noise' as const), line: noiseArb, end: fc.constantFrom('\n', '\r', '\r\n') }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('huge' as const), size: fc.integer({ min: MAX_LINE - 2, max: MAX_LINE + 300 }) }) },
);

function bytesOf(items: Item[]): Buffer {
  return Buffer.from(
    items.map((it) => (it.kind === 'huge' ? 'J1 ' + 'A'.repeat(it.size - 4) + '\n' : it.line + it.end)).join(''),
    'latin1',
  );
}

function expected(items: Item[]): Array<[string, string, string?]> {
  const out: Array<[string, string, string?]> = [];
  for (const it of items) {
    if (it.kind === 'frame') out.push(oracle(it.line));
    else if (it.kind === 'huge' && it.size > MAX_LINE) out.push(['ERR', '-', 'TOO_LARGE']);
    else if (it.kind === 'huge') out.push(oracle('J1 ' + 'A'.repeat(it.size - 4)));
  }
  return out;
}

/** Cuts bytes at the given offsets: the chunks a port might deliver. */
function cut(bytes: Buffer, at: number[]): Uint8Array[] {
  const points = [...new Set(at.map((a) => a % (bytes.length + 1)))].sort((a, b) => a - b);
  const chunks: Uint8Array[] = [];
  let from = 0;
  for (const p of [...points, bytes.length]) {
    if (p > from) chunks.push(bytes.subarray(from, p));
    from = Math.max(from, p);
  }
  return chunks;
}

test('J1 over random lines and random chunk splits: one valid, CRC-checked reply per line, in order, codes in the spec order', async (t) => {
  await fc.assert(
    fc.asyncProperty(fc.array(itemArb, { minLength: 1, maxLength: 12 }), fc.array(fc.nat(), { maxLength: 12 }), async (items, at) => {
      const replies = (await converse(cut(bytesOf(items), at))).map((text) => {
        if (!text.endsWith('\n') || text.indexOf('\n') !== text.length - 1) throw new Error(`not one line: ${JSON.stringify(text.slice(0, 80))}`);
        return parseReply(text.slice(0, -1)); // throws on a bad CRC
      });
      const got = replies.map((r) => (r.type === 'ERR' ? [r.type, r.id, r.code] : [r.type, r.id]));
      t.deepEqual(got, expected(items));
    }),
    { numRuns: 200 },
  );
});

test('J1 decoder over arbitrary bytes: never throws, at most one reply per line ending, every reply a frame whose CRC checks', async (t) => {
  await fc.assert(
    fc.asyncProperty(
      fc.array(fc.oneof(fc.uint8Array({ maxLength: 300 }), fc.constantFrom('J1 ', '\r', '\n', '\r\n', 'J1 PING a - ').map((s) => Buffer.from(s))), { maxLength: 20 }),
      async (chunks) => {
        const all = Buffer.concat(chunks.map((c) => Buffer.from(c)));
        const endings = all.reduce((n, b) => n + (b === 0x0a || b === 0x0d ? 1 : 0), 0);
        const replies = await converse(chunks);
        t.true(replies.length <= endings);
        for (const r of replies) t.is(parseReply(r.slice(0, -1)).line + '\n', r);
      },
    ),
    { numRuns: 300 },
  );
});

test('the line splitter gives the same lines however the bytes are cut', async (t) => {
  const events = async (chunks: Uint8Array[]): Promise<LineEvent[]> => {
    const s = new J1LineSplitter(60_000);
    const out: LineEvent[] = [];
    s.on('data', (e: LineEvent) => out.push(e));
    for (const c of chunks) s.write(Buffer.from(c));
    s.end();
    await new Promise((r) => s.once('end', r));
    return out;
  };
  await fc.assert(
    fc.asyncProperty(fc.array(itemArb, { maxLength: 8 }), fc.array(fc.nat(), { maxLength: 20 }), async (items, at) => {
      const bytes = bytesOf(items);
      t.deepEqual(await events(cut(bytes, at)), await events([bytes]));
    }),
    { numRuns: 200 },
  );
});

test('a jig faster than the station is held back: the session never holds more than MAX_QUEUED + 1 requests, and answers all in order', async (t) => {
  let open: () => void = () => undefined;
  let gate = new Promise<void>((r) => (open = r));
  const out: string[] = [];
  const session = new J1Session(stubStation(() => gate), 'flood', async (text) => void out.push(text), new LinkReporter('flood', 'serial'));
  const splitter = new J1LineSplitter(60_000);
  splitter.pipe(session.input);
  const head = (i: number): string => `J1 SIGN s${i} QUJD `;
  const n = 2000;
  let firstRefused = -1;
  for (let i = 0; i < n; i++) {
    // Written regardless, as bytes keep arriving in a pty; the stream says when to stop reading.
    const more = splitter.write(Buffer.from(head(i) + crcOf(head(i)) + '\n', 'latin1'));
    if (!more && firstRefused === -1) firstRefused = i;
  }
  t.true(firstRefused !== -1 && firstRefused < 1000, `back-pressure (16 KiB in the stream) from request ${firstRefused}`);
  await new Promise((r) => setTimeout(r, 50));
  t.true(session.pending <= MAX_QUEUED + 1, `pending ${session.pending}`);
  t.is(out.length, 0);
  open();
  gate = Promise.resolve();
  splitter.end();
  await new Promise<void>((resolve) => session.input.once('finish', resolve));
  await session.drain();
  t.deepEqual(
    out.map((l) => parseReply(l.slice(0, -1)).id),
    Array.from({ length: n }, (_, i) => `s${i}`),
  );
});
