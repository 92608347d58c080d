/**
 * What a hostile client sends to the HTTP link: names that are built-ins in
 * JavaScript, text that is not text, escapes for the technician's terminal,
 * connections that never finish, and an address that is not there yet.
 * Each reproduction of a past failure is a test here.
 */
import test from 'ava';
import Database from 'better-sqlite3';
import { request } from 'node:http';
import { connect, createServer, type Socket } from 'node:net';
import { HTTP_LIMITS, HttpLink } from '../src/links/http.js';
import type { StationPort } from '../src/links/types.js';
import type { Unhealthy } from '../src/station/types.js';
import { deviceFields, openSocket, ptreeJson, rawExchange, send, SOTA, type Res } from './helpers/http.js';
import { testStation, type TestStation } from './helpers/pki.js';
import { waitFor } from './helpers/served.js';

interface Served {
  s: TestStation;
  link: HttpLink;
}

let shared: Promise<Served>;
test.before(() => {
  shared = (async () => {
    const s = await testStation({ extra: SOTA });
    const link = new HttpLink(s.station, { listen: '127.0.0.1:0', sota: s.config.sota });
    await link.start();
    return { s, link };
  })();
});
test.after.always(async () => {
  const { s, link } = await shared;
  await link.stop();
  await s.close();
});

/** Text a terminal shows as it is: printable ASCII only. */
const PRINTABLE = /^[\x20-\x7e]*$/;

function refusal(t: { is: (a: unknown, b: unknown, m?: string) => void; regex: (a: string, r: RegExp, m?: string) => void }, res: Res, status: number, code: string): string {
  t.is(res.status, status, res.text);
  const j = JSON.parse(res.text) as { code: string; message: string };
  t.is(j.code, code, res.text);
  t.regex(j.message, PRINTABLE, 'the message reaches a terminal as printable ASCII');
  return j.message;
}

/** The messages of the refusals the station recorded, newest last. */
function recordedRefusals(s: TestStation): string[] {
  const db = new Database(s.config.station.ledger, { readonly: true });
  try {
    return db.prepare<[], { message: string }>("SELECT message FROM events WHERE kind = 'rejection' ORDER BY seq").all().map((r) => r.message);
  } finally {
    db.close();
  }
}

async function provisions(t: { is: (a: unknown, b: unknown, m?: string) => void }, port: number): Promise<void> {
  const device = deviceFields();
  const res = await send(port, 'POST', ptreeJson(device.fields));
  t.is(res.status, 201, `a valid request still gets its certificate: ${res.text}`);
}

test('reproduction 1: an override section named __proto__ is refused and poisons nothing; every later request still gets its certificate', async (t) => {
  const { link } = await shared;
  const before = Object.getOwnPropertyNames(Object.prototype).sort();
  const res = await send(link.port, 'POST', '{"csr":"x","overrides":{"__proto__":{"workOrder":"[1]"}}}');
  t.regex(refusal(t, res, 400, 'BAD_FRAME'), /section "__proto__" is reserved/);
  for (const body of [
    '{"csr":"x","overrides":{"constructor":{"prototype":"1"}}}',
    '{"csr":"x","overrides":{"pacman":{"__proto__":"1"}}}',
    '{"csr":"x","overrides":{"prototype":{"x":"1"}}}',
    '{"csr":"x","constructor":{"prototype":{"workOrder":"1"}}}',
    '{"csr":"x","__proto__":{"workOrder":"1"}}',
  ]) {
    refusal(t, await send(link.port, 'POST', body), 400, 'BAD_FRAME');
  }
  t.is(({} as Record<string, unknown>).workOrder, undefined);
  t.deepEqual(Object.getOwnPropertyNames(Object.prototype).sort(), before);
  await provisions(t, link.port);
});

test('__proto__, constructor and prototype as top-level string fields are ordinary data: the request is served', async (t) => {
  const { s, link } = await shared;
  const device = deviceFields();
  const body = ptreeJson(device.fields).replace(/^\{/, '{"__proto__": "x", "constructor": "y", "prototype": "z", "toString": "w",');
  const res = await send(link.port, 'POST', body);
  t.is(res.status, 201, res.text);
  t.is([...s.ledger.since(0)].filter((r) => r.deviceId === device.deviceId).length, 1);
});

test('reproduction 2: a lone surrogate in a field or in a field name is refused BAD_FRAME naming the field, and recorded as well-formed text', async (t) => {
  const { s, link } = await shared;
  for (const [field, value] of [
    ['hardware-id', '\ud800'],
    ['name', 'dev\udfff'],
    ['sota-config-dir', '/var/\ud83d'],
    ['uuid', '\udc00'],
  ] as const) {
    const device = deviceFields({ [field]: value });
    const message = refusal(t, await send(link.port, 'POST', ptreeJson(device.fields)), 400, 'BAD_FRAME');
    t.true(message.includes(`"${field}"`) && message.includes('well-formed'), message);
    t.is([...s.ledger.since(0)].filter((r) => r.deviceId === device.deviceId).length, 0, 'no certificate');
  }
  const message = refusal(t, await send(link.port, 'POST', '{"csr": "x", "\\ud800": 5}'), 400, 'BAD_FRAME');
  t.true(message.includes('"\\ud800"'), message);
  const override = refusal(t, await send(link.port, 'POST', ptreeJson(deviceFields({ overrides: { pacman: { tags: '"\ud800"' } } }).fields)), 400, 'BAD_FRAME');
  t.regex(override, /overrides\.pacman\.tags is not well-formed/);
  for (const m of recordedRefusals(s)) t.true(m.isWellFormed(), m);
  await provisions(t, link.port);
});

test('reproduction 3: terminal escapes in a field name, a name or an override never reach a message raw', async (t) => {
  const { s, link } = await shared;
  const esc = '\u001b]0;owned\u0007\u001b[2J\u009b31m';
  const bodies = [
    `{"csr": "x", ${JSON.stringify(esc)}: 5}`,
    `{"csr": "x", ${JSON.stringify(esc)}: "text"}`,
    ptreeJson(deviceFields({ name: esc }).fields),
    ptreeJson(deviceFields({ 'hardware-id': `imx8${esc}` }).fields),
    ptreeJson(deviceFields({ overrides: { [esc]: { tags: '"main"' } } }).fields),
    ptreeJson(deviceFields({ overrides: { pacman: { [esc]: '"main"' } } }).fields),
    ptreeJson(deviceFields({ overrides: { pacman: { tags: JSON.stringify(esc) } } }).fields),
    ptreeJson(deviceFields({ overrides: { pacman: { tags: `not toml ${esc}` } } }).fields),
  ];
  for (const body of bodies) {
    const message = refusal(t, await send(link.port, 'POST', body), 400, 'BAD_FRAME');
    t.false(message.includes('\u001b'));
    t.regex(link.status.lastRefusal!.message, PRINTABLE);
  }
  for (const m of recordedRefusals(s)) t.regex(m, PRINTABLE);
});

test('the device name is passed on to the ledger; an empty one leaves the device id standing in', async (t) => {
  const { s, link } = await shared;
  const named = deviceFields({ name: 'Line 7 · Ünit 42' });
  t.is((await send(link.port, 'POST', ptreeJson(named.fields))).status, 201);
  const unnamed = deviceFields({ name: '' });
  t.is((await send(link.port, 'POST', ptreeJson(unnamed.fields))).status, 201);
  const rows = [...s.ledger.since(0)];
  t.is(rows.find((r) => r.deviceId === named.deviceId)?.name, 'Line 7 · Ünit 42');
  t.is(rows.find((r) => r.deviceId === unnamed.deviceId)?.name, unnamed.deviceId);
  const long = deviceFields({ name: 'n'.repeat(129) });
  t.regex(refusal(t, await send(link.port, 'POST', ptreeJson(long.fields)), 400, 'BAD_FRAME'), /"name" is longer than 128/);
  // Names that look like another, or read backwards, in the device cloud and on a stick.
  for (const [name, cp] of [['dev1\u200b', '200B'], ['\u202etxt.exe', '202E'], ['a\u2066b', '2066'], ['a\u2028b', '2028'], ['\ufeffdev', 'FEFF'], ['dev1\u3164', '3164'], ['dev1\u034f', '034F']] as const) {
    t.regex(refusal(t, await send(link.port, 'POST', ptreeJson(deviceFields({ name }).fields)), 400, 'BAD_FRAME'), new RegExp(`"name" contains an invisible format character \\(U\\+${cp}\\)`));
  }
  for (const [name, why] of [['cafe\u0301', /not in Unicode NFC form/], ['dev1 ', /begins or ends with a space/], [' dev1', /begins or ends with a space/], ['dev\u00a01', /a space other than U\+0020 \(U\+00A0\)/], ['d\u0435v1', /only looks like ASCII \(U\+0435, which looks like "e"\)/], ['\uff44\uff45\uff56', /reads as ASCII but is not/], ['\uf900-line', /not in Unicode NFC form/], ['R\u2126-7', /not in Unicode NFC form/]] as const) {
    t.regex(refusal(t, await send(link.port, 'POST', ptreeJson(deviceFields({ name }).fields)), 400, 'BAD_FRAME'), why);
  }
  t.is((await send(link.port, 'POST', ptreeJson(deviceFields({ name: 'caf\u00e9 line 7' }).fields))).status, 201, 'NFC text with plain spaces is a name');
});

test('text rules everywhere: a body that is not UTF-8, a csr that is not PEM text, override values that are tables or hold control characters', async (t) => {
  const { link } = await shared;
  const notUtf8 = Buffer.concat([Buffer.from('{"csr": "'), Buffer.from([0xc3, 0x28]), Buffer.from('"}')]);
  t.regex(refusal(t, await send(link.port, 'POST', notUtf8), 400, 'BAD_FRAME'), /not UTF-8/);
  t.regex(refusal(t, await send(link.port, 'POST', '{"csr": "-----BEGIN\\u001b"}'), 400, 'BAD_FRAME'), /"csr" is not PEM text/);
  for (const tags of ['{ evil = 1 }', '[{ a = 1 }]', '"a\\u001bb"', '"a\\nb"']) {
    const message = refusal(t, await send(link.port, 'POST', ptreeJson(deviceFields({ overrides: { pacman: { tags } } }).fields)), 400, 'BAD_FRAME');
    t.regex(message, /overrides\.pacman\.tags/);
  }
  const ok = await send(link.port, 'POST', ptreeJson(deviceFields({ overrides: { pacman: { tags: '["a", "b"]', interval: '60', on: 'true' } } }).fields));
  t.is(ok.status, 201, 'arrays of strings, integers and booleans are values');
});

test('a body of a thousand overrides (each parsed as TOML and written out again on the links\' thread) is refused before any is parsed; 64 are served', async (t) => {
  const { link } = await shared;
  const many = (n: number, per = 500): Record<string, Record<string, string>> => {
    const out: Record<string, Record<string, string>> = {};
    for (let i = 0; i < n; i++) (out[`s${Math.floor(i / per)}`] ??= {})[`k${i}`] = '[1,2,3,4]';
    return out;
  };
  const flood = await send(link.port, 'POST', ptreeJson(deviceFields({ overrides: many(1000) }).fields));
  t.regex(refusal(t, flood, 413, 'TOO_LARGE'), /overrides: more than 64 keys in all/);
  const spread = await send(link.port, 'POST', ptreeJson(deviceFields({ overrides: many(65, 5) }).fields));
  t.regex(refusal(t, spread, 413, 'TOO_LARGE'), /more than 64 keys/, 'counted over every section');
  const ok = await send(link.port, 'POST', ptreeJson(deviceFields({ overrides: many(64, 8) }).fields));
  t.is(ok.status, 201, ok.text);
});

test('HEAD /sign answers 503 with the station-wide reason when the station is unhealthy, 200 when it is healthy', async (t) => {
  const { s, link } = await shared;
  t.is((await send(link.port, 'HEAD')).status, 200, 'the real station');
  let unhealthy: Unhealthy | null = { code: 'TOKEN_UNAVAILABLE', message: 'token not present' };
  const port: StationPort = {
    handle: (req) => s.station.handle(req),
    hello: () => s.station.hello(),
    rootPem: s.station.rootPem,
    recordRefusal: (...a) => s.station.recordRefusal(...a),
    health: () => unhealthy,
    checkHealth: async () => unhealthy,
  };
  const wrapped = new HttpLink(port, { listen: '127.0.0.1:0', sota: s.config.sota });
  await wrapped.start();
  t.teardown(() => wrapped.stop());
  const head = await send(wrapped.port, 'HEAD');
  t.is(head.status, 503);
  t.is(head.headers['content-type'], 'application/json');
  t.is(Number(head.headers['content-length']), JSON.stringify(unhealthy).length, 'the {code, message} a GET would carry');
  unhealthy = null;
  t.is((await send(wrapped.port, 'HEAD')).status, 200);
});

test('HTTP that is not a request: headers over 8 KiB get 431, garbage gets 400, each as JSON and recorded', async (t) => {
  const { s } = await shared;
  const link = new HttpLink(s.station, { listen: '127.0.0.1:0', sota: s.config.sota });
  await link.start();
  t.teardown(() => link.stop());
  const before = link.status.refused;
  const big = await rawExchange(link.port, `POST /sign HTTP/1.1\r\nHost: x\r\nX-Fill: ${'a'.repeat(10_000)}\r\n\r\n`);
  t.regex(big.answer, /^HTTP\/1\.1 431 /);
  t.is(JSON.parse(big.answer.split('\r\n\r\n')[1]!).code, 'TOO_LARGE');
  const garbage = await rawExchange(link.port, '\u0016\u0003\u0001 not http at all\r\n\r\n');
  t.regex(garbage.answer, /^HTTP\/1\.1 400 /);
  t.is(JSON.parse(garbage.answer.split('\r\n\r\n')[1]!).code, 'BAD_FRAME');
  t.is(link.status.refused, before + 2);
  await waitFor(() => recordedRefusals(s).some((m) => m.startsWith('headers over')));
  await provisions(t, link.port);
});

test('a connection that sends nothing is answered 408 once the headers are 5 s late', async (t) => {
  const { link } = await shared;
  const { answer, ms } = await rawExchange(link.port, '');
  t.regex(answer, /^HTTP\/1\.1 408 /);
  t.true(ms >= 4_500 && ms < 9_000, `closed after ${ms} ms`);
});

test('64 connections that have not sent a request: a new client still gets in, the oldest of them makes room', async (t) => {
  const { s } = await shared;
  const link = new HttpLink(s.station, { listen: '127.0.0.1:0', sota: s.config.sota });
  await link.start();
  t.teardown(() => link.stop());
  const held: Socket[] = [];
  for (let i = 0; i < 64; i++) held.push(await openSocket(link.port));
  t.teardown(() => held.forEach((socket) => socket.destroy()));
  const closed = held.map((socket) => new Promise<boolean>((resolve) => socket.once('close', () => resolve(true))));
  await new Promise((r) => setTimeout(r, 100)); // the server has accepted them all
  await provisions(t, link.port);
  t.true(await Promise.race([closed[0]!, new Promise<boolean>((r) => setTimeout(() => r(false), 1_000))]), 'the oldest was closed');
  const stillOpen = await Promise.all(closed.slice(1).map((c) => Promise.race([c, Promise.resolve(false)])));
  t.deepEqual(stillOpen, Array(63).fill(false), 'the other 63 are still open');
});

test('64 whole requests being answered: a 65th connection is closed at once, and the 64 are answered', async (t) => {
  const { s } = await shared;
  let open!: () => void;
  const gate = new Promise<void>((r) => (open = r));
  let waiting = 0;
  const port: StationPort = {
    handle: async (req) => {
      waiting++;
      await gate;
      return s.station.handle(req);
    },
    hello: () => s.station.hello(),
    rootPem: s.station.rootPem,
    recordRefusal: (...a) => s.station.recordRefusal(...a),
    health: () => null,
    checkHealth: async () => null,
  };
  const link = new HttpLink(port, { listen: '127.0.0.1:0', sota: s.config.sota });
  await link.start();
  t.teardown(() => link.stop());
  const answers = Array.from({ length: 64 }, () => send(link.port, 'POST', '{"csr": "x"}'));
  await waitFor(() => waiting === 64);
  const over = await rawExchange(link.port, 'POST /sign HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\n\r\n{"csr": "x"}');
  t.is(over.answer, '', 'closed without an answer');
  t.true(over.ms < 1_000, `closed after ${over.ms} ms`);
  open();
  for (const res of await Promise.all(answers)) t.is(JSON.parse(res.text).code, 'BAD_CSR');
});

test('an address that is not on this machine: start() resolves with the link waiting, and stop() ends the retries', async (t) => {
  const { s } = await shared;
  const link = new HttpLink(s.station, { listen: '192.0.2.1:8080', sota: s.config.sota });
  await link.start();
  t.is(link.status.state, 'waiting');
  t.is(link.status.reason, 'address not available (192.0.2.1)');
  await link.stop();
  t.is(link.status.state, 'stopped');
  await new Promise((r) => setTimeout(r, 800)); // past the first retry
  t.is(link.status.state, 'stopped', 'no retry after stop');
});

test('a port held by another program: the link waits, then listens and serves once the port is free', async (t) => {
  const { s } = await shared;
  const holder = createServer();
  await new Promise<void>((r) => holder.listen(0, '127.0.0.1', r));
  const port = (holder.address() as { port: number }).port;
  const states: string[] = [];
  const link = new HttpLink(s.station, { listen: `127.0.0.1:${port}`, sota: s.config.sota }, (e) => {
    if (e.kind === 'state') states.push(`${e.state} ${e.detail ?? ''}`.trim());
  });
  await link.start();
  t.teardown(() => link.stop());
  t.is(link.status.state, 'waiting');
  t.is(link.status.reason, `address in use (127.0.0.1:${port})`);
  await new Promise((r) => setTimeout(r, 1_200)); // two retries while still held
  t.is(link.status.state, 'waiting');
  await new Promise<void>((r) => holder.close(() => r()));
  await waitFor(() => link.status.state === 'listening', 6_000);
  t.is(link.port, port);
  await provisions(t, port);
  t.deepEqual(states, [`waiting address in use (127.0.0.1:${port})`, `listening 127.0.0.1:${port}`]);
});

test('a chunked body that keeps coming past 64 KiB is answered 413 at once, not when the request times out', async (t) => {
  const { link } = await shared;
  const t0 = Date.now();
  const res = await new Promise<{ status: number; text: string }>((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port: link.port, path: '/sign', method: 'POST', agent: false }, (r) => {
      let text = '';
      r.on('data', (d) => (text += d));
      r.on('end', () => resolve({ status: r.statusCode!, text }));
    });
    req.on('error', reject);
    req.write(`{"csr": "${'A'.repeat(70_000)}`); // chunked, never ended
  });
  t.regex(refusal(t, res as Res, 413, 'TOO_LARGE'), /body over 65536 bytes/);
  t.true(Date.now() - t0 < 3_000, `answered after ${Date.now() - t0} ms`);
});

test('a client trickling its body does not hold the station\'s stop: the link stops within its bound and the client is cut off', async (t) => {
  const { s } = await shared;
  const link = new HttpLink(s.station, { listen: '127.0.0.1:0', sota: s.config.sota });
  await link.start();
  const socket = await openSocket(link.port);
  const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
  socket.on('error', () => undefined);
  socket.write('POST /sign HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{');
  // One byte a second, as a slow attacker would, for longer than the stop may take.
  const drip = setInterval(() => socket.write(' '), 1000);
  t.teardown(() => clearInterval(drip));
  await new Promise((r) => setTimeout(r, 300));
  const t0 = Date.now();
  await link.stop();
  const took = Date.now() - t0;
  t.true(took < HTTP_LIMITS.stopMs + 1000, `stop took ${took} ms`);
  await closed;
  t.pass();
});

test('a client that half-closes after its body still reads its certificate; CONNECT and an unknown Expect get the link\'s JSON and an event', async (t) => {
  const { s, link } = await shared;
  const device = deviceFields();
  const body = Buffer.from(ptreeJson(device.fields));
  const answer = await new Promise<string>((resolve, reject) => {
    const socket = connect({ port: link.port, host: '127.0.0.1', allowHalfOpen: true });
    let got = '';
    socket.on('connect', () => {
      socket.write(`POST /sign HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n`);
      socket.end(body); // the FIN right after the body: shutdown(SHUT_WR)
    });
    socket.on('data', (d) => (got += d.toString('latin1')));
    socket.on('error', reject);
    socket.on('close', () => resolve(got));
  });
  t.regex(answer, /^HTTP\/1\.1 201 /, answer.slice(0, 200));
  t.true([...s.ledger.since(0)].some((r) => r.deviceId === device.deviceId));

  const tunnel = await rawExchange(link.port, 'CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n');
  t.regex(tunnel.answer, /^HTTP\/1\.1 405 [^]*"code":"BAD_FRAME"/);
  const expect = await rawExchange(link.port, `POST /sign HTTP/1.1\r\nHost: x\r\nExpect: foo\r\nContent-Length: ${body.length}\r\n\r\n`);
  t.regex(expect.answer, /^HTTP\/1\.1 417 [^]*"code":"BAD_FRAME"/);
  await s.station.flushEvents();
  const recorded = recordedRefusals(s);
  t.true(recorded.some((m) => /CONNECT is not served/.test(m)));
  t.true(recorded.some((m) => /Expect: "foo" is not served/.test(m)));
});

test('names a factory may use stay names: an ideographic space inside, its own letters, one other script, a superscript', async (t) => {
  const { link } = await shared;
  for (const name of ['\u30e9\u30a4\u30f3\u3000\uff17', 'S\u00e6by-1', 'K\u0131r\u0131kkale-3', '\u0416\u0430\u0432\u043e\u0434-7', 'm\u00b2-press']) {
    const r = await send(link.port, 'POST', ptreeJson(deviceFields({ name }).fields));
    t.is(r.status, 201, `${JSON.stringify(name)}: ${r.text}`);
  }
});

test.serial('a client that resets its connection in the middle of its headers or of its body: each a refusal in the event log, once; a reset before any byte is none', async (t) => {
  const { s, link } = await shared;
  const reset = async (bytes: string): Promise<void> => {
    const sock = connect(link.port, '127.0.0.1');
    await new Promise<void>((r) => sock.once('connect', () => r()));
    if (bytes) await new Promise<void>((r) => sock.write(bytes, () => r()));
    await new Promise((r) => setTimeout(r, 100)); // the station has read them
    sock.resetAndDestroy();
  };
  const before = recordedRefusals(s).length;
  await reset('');
  await reset('POST /sign HTTP/1.1\r\nHost: x\r\nContent-Le');
  await reset(`POST /sign HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 4000\r\n\r\n{"csr": "-----BEGIN CERT`);
  await waitFor(() => recordedRefusals(s).length >= before + 2, 5000);
  await new Promise((r) => setTimeout(r, 300)); // nothing more comes
  const added = recordedRefusals(s).slice(before);
  t.deepEqual(
    added.filter((m) => /^the (connection was reset|request ended) before/.test(m)).sort(),
    ['the connection was reset before the request was complete', 'the request ended before its body was complete'],
    added.join('\n'),
  );
  await provisions(t, link.port);
});

test.serial('two requests pipelined on one connection: the first is answered and signed; the second is neither signed nor left unrecorded', async (t) => {
  const { s, link } = await shared;
  const post = (body: string): string =>
    `POST /sign HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`;
  const [a, b] = [deviceFields(), deviceFields()];
  const before = s.ledger.issuedCount();
  const refusalsBefore = recordedRefusals(s).length;
  const { answer } = await rawExchange(link.port, post(ptreeJson(a.fields)) + post(ptreeJson(b.fields)));
  t.is(answer.match(/^HTTP\/1\.1 /gm)?.length, 1, 'one answer');
  t.regex(answer, /^HTTP\/1\.1 201/);
  await waitFor(() => recordedRefusals(s).length > refusalsBefore, 5000);
  t.is(s.ledger.issuedCount(), before + 1, 'only the answered request was signed');
  t.true(recordedRefusals(s).slice(refusalsBefore).some((m) => /a second request on one connection \(HTTP pipelining\) is not served/.test(m)));
});

test('overrides that cost work without being many keys: empty sections count, and a value nested deeper than 4 is refused before it is parsed', async (t) => {
  const { link } = await shared;
  const sections: Record<string, Record<string, string>> = {};
  for (let i = 0; i < 17; i++) sections[`s${i}`] = {};
  t.regex(refusal(t, await send(link.port, 'POST', ptreeJson(deviceFields({ overrides: sections }).fields)), 413, 'TOO_LARGE'), /more than 16 sections/);
  const deep = `${'['.repeat(5)}1${']'.repeat(5)}`;
  t.regex(refusal(t, await send(link.port, 'POST', ptreeJson(deviceFields({ overrides: { pacman: { tags: deep } } }).fields)), 400, 'BAD_FRAME'), /nests arrays deeper than 4/);
  // Brackets inside a string are text, not nesting.
  const ok = await send(link.port, 'POST', ptreeJson(deviceFields({ overrides: { pacman: { tags: `[[["[[[[[[", "a"]]]`, note: '"]]]]]]"' } } }).fields));
  t.is(ok.status, 201, ok.text);
});
