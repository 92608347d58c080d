import test from 'ava';
import { crcHex, decodeFrame, encodeFrame, FrameError, MAX_LINE } from '../src/links/j1/frame.js';
import { J1LineSplitter, type LineEvent } from '../src/links/j1/line-splitter.js';

const VECTORS = ['J1 HELLO 1 - 3116b9be', 'J1 CA 2 - a323dc1c', 'J1 PING a-1 - f128f405'];

test("the spec's test vectors decode, and encoding gives them back", (t) => {
  for (const line of VECTORS) {
    const f = decodeFrame(line);
    t.is(encodeFrame(f.type, f.id, f.body), line + '\n');
  }
  t.is(encodeFrame('ERR', '7', 'BAD_CRC frame checksum mismatch'), 'J1 ERR 7 QkFEX0NSQyBmcmFtZSBjaGVja3N1bSBtaXNtYXRjaA== ab2d2c3b\n');
});

function fault(line: string): { code: string; id: string } {
  try {
    decodeFrame(line);
  } catch (e) {
    if (e instanceof FrameError) return { code: e.fault, id: e.replyId };
    throw e;
  }
  throw new Error(`decoded: ${line}`);
}

test('faults come in the spec order: CRC, then form, then type', (t) => {
  t.deepEqual(fault('J1 PING a-1 - f128f406'), { code: 'BAD_CRC', id: 'a-1' });
  // CRC first even when the frame has other faults too
  t.deepEqual(fault('J1 PING a*1 extra - 00000000'), { code: 'BAD_CRC', id: '-' });
  const withCrc = (head: string): string => head + crcHex(head);
  t.deepEqual(fault(withCrc('J1 PING 1 ')), { code: 'BAD_FRAME', id: '1' }, 'four fields');
  t.deepEqual(fault(withCrc('J1 PING a*b - ')), { code: 'BAD_FRAME', id: '-' }, 'bad ID');
  t.deepEqual(fault(withCrc('J1 PING abcdefghijklmnopq - ')), { code: 'BAD_FRAME', id: '-' }, 'ID too long');
  t.deepEqual(fault(withCrc('J1 PING 1 QQ ')), { code: 'BAD_FRAME', id: '1' }, 'unpadded base64');
  t.deepEqual(fault(withCrc('J1 PING 1 QR== ')), { code: 'BAD_FRAME', id: '1' }, 'non-canonical base64');
  t.deepEqual(fault(withCrc('J1 PING 1 a\x01b= ')), { code: 'BAD_FRAME', id: '1' }, 'non-printable byte');
  t.deepEqual(fault(withCrc('J1 ping 1 - ')), { code: 'BAD_FRAME', id: '1' }, 'lowercase type');
  t.deepEqual(fault('J1 PING 1 - F128F405'), { code: 'BAD_FRAME', id: '1' }, 'upper-case CRC is not a CRC field');
  for (const type of ['CERT', 'PONG', 'ERR', 'FOO']) t.deepEqual(fault(withCrc(`J1 ${type} q - `)), { code: 'UNKNOWN_TYPE', id: 'q' });
});


async function split(chunks: Array<string | Buffer>, idleMs = 10_000, waitMs = 0): Promise<LineEvent[]> {
  const s = new J1LineSplitter(idleMs);
  const out: LineEvent[] = [];
  s.on('data', (e: LineEvent) => out.push(e));
  for (const c of chunks) s.write(typeof c === 'string' ? Buffer.from(c, 'latin1') : c);
  if (waitMs) await new Promise((r) => setTimeout(r, waitMs));
  s.destroy();
  return out;
}

test('lines: CR before LF dropped, lines split across chunks, the 16384-byte limit counts the LF and a CR', async (t) => {
  t.deepEqual(await split(['J1 ab\r\nJ1 cd', 'e\n']), [{ line: 'J1 ab', end: 'lf' }, { line: 'J1 cde', end: 'lf' }]);
  const exact = 'x'.repeat(MAX_LINE - 1) + '\n';
  t.deepEqual(await split([exact]), [{ line: 'x'.repeat(MAX_LINE - 1), end: 'lf' }]);
  // A frame line ends only at LF, so its CR counts towards the limit.
  const withCr = 'J1 ' + 'x'.repeat(MAX_LINE - 4) + '\r\n';
  t.deepEqual(await split([withCr]), [{ tooLarge: true }]);
  const over = 'y'.repeat(MAX_LINE) + '\n';
  t.deepEqual(await split([over.slice(0, 5000), over.slice(5000), 'next\n']), [{ tooLarge: true }, { line: 'next', end: 'lf' }]);
});

test('lines: an unfinished line is dropped after the idle time, silently', async (t) => {
  const events = await split(['J1 PING 1 - f1'], 50, 120);
  t.is(events.length, 1);
  t.true('idle' in events[0]!);
  const after = await split(['half', 'rest\n'], 1000);
  t.deepEqual(after, [{ line: 'halfrest', end: 'lf' }]);
});

test('lines: outside frames CR, LF and CRLF each end a line, even split across chunks; a CR inside a frame line stays in it', async (t) => {
  t.deepEqual(await split(['one\rtwo\nthree\r', '\nfour\r', 'five\n']), [
    { line: 'one', end: 'cr' },
    { line: 'two', end: 'lf' },
    { line: 'three', end: 'cr' },
    { line: 'four', end: 'cr' },
    { line: 'five', end: 'lf' },
  ]);
  t.deepEqual(await split(['J', '1', ' PING\rx - 0\r', '\n']), [{ line: 'J1 PING\rx - 0', end: 'lf' }]);
  t.deepEqual(await split(['J1\rJ1 x\n']), [{ line: 'J1', end: 'cr' }, { line: 'J1 x', end: 'lf' }]);
  // Only the byte right after a CR is part of its CRLF.
  t.deepEqual(await split(['a\r\n\nb\n']), [{ line: 'a', end: 'cr' }, { line: '', end: 'lf' }, { line: 'b', end: 'lf' }]);
});
