/** The live view as rendered text: widths, reasons, refusal details, and no client text reaching a terminal raw. */
import test from 'ava';
import { Writable } from 'node:stream';
import { JSON_LOG_PER_SECOND, jsonView, renderLiveView, REFUSAL_SHOWN_MS, type Frame } from '../src/cli/live-view.js';
import type { LinkStatus } from '../src/links/index.js';

const now = Date.parse('2026-11-30T12:03:10Z');
const evil = 'CN \x1b[2J\x1b[31mowned\ud800 \u009b6n';

function status(over: Partial<LinkStatus> & { name: string }): LinkStatus {
  return { kind: 'serial', state: 'open', reason: null, issued: 0, refused: 0, noise: 0, lastIssued: null, lastRefusal: null, ...over };
}

const rows: LinkStatus[] = [
  status({ name: 'serial:/dev/ttyACM0', issued: 1234, refused: 12, noise: 3, lastIssued: { at: now - 5000, deviceId: '3f2a5c1e-9b7d-4e21-8c55-0d1e2f3a4b5c' } }),
  status({ name: 'serial:/dev/ttyUSB7', state: 'waiting', reason: 'no such device' }),
  status({ name: 'serial:/dev/ttyUSB8', state: 'error', reason: 'held by pid 4242 (screen)' }),
  status({ name: 'http:127.0.0.1:8443', kind: 'http', state: 'listening', reason: '127.0.0.1:8443', issued: 7 }),
  status({
    name: 'spool:/media/technician/USB-STICK-WITH-A-VERY-LONG-LABEL-2',
    kind: 'spool',
    state: 'error',
    reason: 'read-only',
    issued: 9_876_543,
    refused: 1,
    lastIssued: { at: now - 60_000, deviceId: 'board-a' },
    lastRefusal: { at: now - 7000, code: 'POLICY_SUBJECT', message: `subject ${evil} is not the device id; ${'and more words '.repeat(12)}`, deviceId: `board-b${evil}` },
  }),
];

const frame: Frame = {
  title: 'line-signer serve: station st-1, factory acme',
  now,
  rate: 2.5,
  banner: { warnings: ['token PIN expires soon', `clock ${evil}`], order: { id: 'WO-17', issued: 25, quantity: 50 } },
  notes: ['12:00:00 serving'],
};

for (const width of [80, 120]) {
  test(`at ${width} columns every line fits, is printable ASCII, and says each link's state and reason`, (t) => {
    const lines = renderLiveView(rows, width, frame);
    for (const l of lines) {
      t.true(l.length <= width, `${l.length}: ${l}`);
      t.regex(l, /^[\x20-\x7e]*$/);
    }
    const text = lines.join('\n');
    t.true(text.includes('  waiting: no such device'));
    t.true(text.includes('  error: held by pid 4242 (screen)'));
    t.true(text.includes('  error: read-only'));
    t.true(lines.includes('! token PIN expires soon'));
    t.true(lines.some((l) => l.startsWith('! clock CN \\u001b[2J\\u001b[31mowned\\ud800 \\u009b6n')));
    // Numbers right-aligned under their headers.
    const header = lines.find((l) => l.startsWith('LINK'))!;
    const row = lines.find((l) => l.startsWith('serial:/dev/ttyACM0'))!;
    for (const [col, value] of [['ISSUED', '1234'], ['REFUSED', '12'], ['NOISE', '3']] as const) {
      const end = header.indexOf(col) + col.length;
      t.is(row.slice(end - value.length, end), value, col);
      t.is(row[end - value.length - 1], ' ', col);
    }
    t.true(lines.some((l) => / 9\.9M /.test(l) || / 9876543 /.test(l)), 'a big count stays in its column');
    // LAST ISSUED keeps its time whole and the end of the device id, however narrow.
    t.regex(row, / 12:03:05 (\.\.\.)?[0-9a-f-]*4b5c$/, row);
  });
}

test('the last refusal is on a detail line under its link with time, code, device and the whole message, escaped', (t) => {
  const lines = renderLiveView(rows, 120, frame);
  const at = lines.findIndex((l) => l.startsWith('spool:'));
  t.true(at > 0);
  const detail = lines.slice(at + 1).filter((l) => l.startsWith('  ') || l.startsWith('    '));
  const text = detail.map((l) => l.trim()).join(' ');
  t.true(detail[1]!.startsWith('  refused 12:03:03 POLICY_SUBJECT device "board-bCN \\u001b[2J\\u001b[31mowned\\ud800 \\u009b6n": subject'));
  t.true(text.includes('subject CN \\u001b[2J\\u001b[31mowned\\ud800 \\u009b6n is not the device id;'));
  t.true(text.includes('is not the device id;'));
  t.true(text.includes('and more words and more words'));
  t.false(text.includes('\x1b'));
  // The row's own column is the last issued device (another board), with its time.
  t.true(lines[at]!.includes('12:02:10 board-a'));
});

test('a refusal clears once a later issuance is a minute old; the order shows as a progress bar', (t) => {
  const later = { ...rows[4]!, lastIssued: { at: now - 1000, deviceId: 'board-c' } };
  t.true(renderLiveView([later], 80, frame).some((l) => l.includes('refused ')), 'still shown right after');
  t.false(renderLiveView([later], 80, { ...frame, now: now + REFUSAL_SHOWN_MS }).some((l) => l.includes('refused ')));
  const bar = renderLiveView([], 80, frame).find((l) => l.startsWith('WO-17'))!;
  const m = /^WO-17 \[(#+)(\.+)\] 25\/50$/.exec(bar);
  t.truthy(m, bar);
  t.is(m![1]!.length, m![2]!.length);
  t.false(renderLiveView([], 80, { ...frame, banner: { warnings: [], order: null } }).some((l) => l.startsWith('WO-')));
});

/** A stream that keeps what the JSON view writes. */
function captured(): { dest: Writable; text: () => string } {
  let out = '';
  const dest = new Writable({
    write(chunk, _enc, done) {
      out += chunk;
      done();
    },
  });
  return { dest, text: () => out };
}

test('the JSON view carries client text escaped: no control character, no lone surrogate in any field', async (t) => {
  const { dest, text } = captured();
  const view = jsonView(dest);
  view.event({ kind: 'refused', link: 'spool:/media/usb', code: 'BAD_CSR', message: evil });
  view.event({ kind: 'state', link: `serial:/dev/tty${evil}`, state: 'waiting', detail: evil });
  view.stop();
  await new Promise((r) => setImmediate(r));
  const lines = text().trim().split('\n');
  t.is(lines.length, 2);
  for (const l of lines) {
    t.regex(l, /^[\x20-\x7e]*$/, 'printable ASCII on the wire');
    const rec = JSON.parse(l) as Record<string, string>;
    for (const v of Object.values(rec)) if (typeof v === 'string') t.regex(v, /^[\x20-\x7e]*$/);
  }
  t.is(JSON.parse(lines[0]!).message, 'CN \\u001b[2J\\u001b[31mowned\\ud800 \\u009b6n');
});

test('two ports whose names differ only where they are shortened each get their full name on a line', (t) => {
  const port = (name: string): LinkStatus => ({ name, kind: 'serial', state: 'open', reason: null, issued: 0, refused: 0, noise: 0, lastIssued: null, lastRefusal: null });
  const a = 'serial:/dev/serial/by-id/usb-FTDI_FT232R_USB_UART_A50285BI-if00-port0';
  const b = 'serial:/dev/serial/by-id/usb-FTDI_FT232R_USB_UART_A50285BJ-if00-port0';
  const lines = renderLiveView([port(a), port(b)], 80, { title: 't', now: Date.now(), rate: 0 });
  const text = lines.join('\n');
  t.true(text.includes('A50285BI-if00-port0') && text.includes('A50285BJ-if00-port0'), text);
  for (const l of lines) t.true(l.length <= 80);
});

test('the JSON view coalesces a flood: a link logs a few refusals a second and then one line with the rest counted by code; another link keeps its own lines', async (t) => {
  const { dest, text } = captured();
  const view = jsonView(dest);
  for (let i = 0; i < 1000; i++) view.event({ kind: 'refused', link: 'serial:/dev/ttyA', code: i % 2 ? 'BAD_CRC' : 'BAD_FRAME', message: `junk ${i}` });
  for (let i = 0; i < 3; i++) view.event({ kind: 'refused', link: 'serial:/dev/ttyB', code: 'BAD_CSR', message: `b ${i}` });
  view.event({ kind: 'issued', link: 'serial:/dev/ttyA', deviceId: 'd', serial: '01', replayed: false });
  for (let i = 0; i < 500; i++) view.event({ kind: 'issued', link: 'http:c', deviceId: 'd', serial: '01', replayed: true });
  view.stop();
  await new Promise((r) => setImmediate(r));
  const recs = text().trim().split('\n').map((l) => JSON.parse(l) as { msg: string; link: string; suppressed?: number; byCode?: Record<string, number> });
  const a = recs.filter((r) => r.link === 'serial:/dev/ttyA');
  t.is(a.filter((r) => r.msg === 'refused').length, JSON_LOG_PER_SECOND);
  const more = a.find((r) => r.msg === 'coalesced');
  t.is(more?.suppressed, 1000 - JSON_LOG_PER_SECOND);
  t.deepEqual(more?.byCode, { BAD_FRAME: 496, BAD_CRC: 496 });
  t.is(recs.filter((r) => r.link === 'serial:/dev/ttyB' && r.msg === 'refused').length, 3);
  t.true(a.some((r) => r.msg === 'issued'), 'an issuance is always logged');
  // A replay flood (one CSR sent again and again) is bounded the same way.
  const c = recs.filter((r) => r.link === 'http:c');
  t.is(c.filter((r) => r.msg === 'issued').length, JSON_LOG_PER_SECOND);
  t.deepEqual(c.find((r) => r.msg === 'coalesced')?.byCode, { replay: 500 - JSON_LOG_PER_SECOND });
  t.true(recs.length <= 2 * JSON_LOG_PER_SECOND + 6, `${recs.length} lines`);
});
