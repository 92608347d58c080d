/**
 * Properties of the HTTP body and overrides parser, through a real HttpLink
 * on a real station: whatever the body, the answer is a 201 or a JSON
 * refusal with a protocol code and a printable message; nothing reaches
 * Object.prototype; and afterwards a valid request gets its certificate and
 * exactly its ledger row.
 */
import test from 'ava';
import fc from 'fast-check';
import { createHash } from 'node:crypto';
import { REFUSAL_CODES } from '../src/errors.js';
import { HttpLink } from '../src/links/http.js';
import { verifyLedger } from '../src/station/index.js';
import { deviceFields, ptreeJson, send, SOTA, type Res } from './helpers/http.js';
import { openssl, testStation, type TestStation } from './helpers/pki.js';

const RESERVED = ['__proto__', 'constructor', 'prototype', 'toString', 'hasOwnProperty', 'valueOf'];
const KNOWN = ['csr', 'overrides', 'name', 'uuid', 'hardware-id', 'sota-config-dir', 'use-ostree-server', 'group', 'pacman', 'tags', 'tls'];

/** Strings with what text must not hold: lone surrogates, C0, DEL, C1, plus ordinary and astral characters. */
const hostileString = fc
  .array(
    fc.oneof(
      fc.constantFrom('\ud800', '\udfff', '\ud83d', '\u0000', '\u001b', '\n', '\u007f', '\u0085', '\u009b', '"', '\\', '[', ']', '=', '.'),
      fc.integer({ min: 0, max: 0xffff }).map((c) => String.fromCharCode(c)),
      fc.constantFrom('a', 'Z', '0', '-', '_', ' ', 'é', '😀'),
    ),
    { maxLength: 24 },
  )
  .map((parts) => parts.join(''));

const key = fc.oneof(fc.constantFrom(...RESERVED, ...KNOWN), hostileString);

/** Objects whose keys are reserved names, known field names or hostile strings, at every depth. */
const { tree } = fc.letrec((tie) => ({
  tree: fc.oneof(
    { depthSize: 'small', maxDepth: 4 },
    hostileString,
    fc.jsonValue({ maxDepth: 1 }),
    fc.dictionary(key, tie('tree'), { maxKeys: 5 }),
  ),
}));

/** A body the stock client would send, with one place made hostile. */
const oneHostileField = fc
  .record({
    where: fc.constantFrom('name', 'hardware-id', 'sota-config-dir', 'uuid', 'use-ostree-server', 'section', 'key', 'value', 'new field'),
    text: fc.oneof(hostileString, fc.constantFrom(...RESERVED)),
  })
  .map(({ where, text }) => {
    const { fields, deviceId } = deviceFields();
    if (where === 'section') fields.overrides = { [text]: { tags: '"main"' } };
    else if (where === 'key') fields.overrides = { pacman: { [text]: '"main"' } };
    else if (where === 'value') fields.overrides = { pacman: { tags: text } };
    else if (where === 'new field') fields[text] = 'x';
    else fields[where] = text;
    return { fields, deviceId, where, text };
  });

let served: Promise<{ s: TestStation; link: HttpLink }>;
const prototypeBefore = Object.getOwnPropertyNames(Object.prototype).sort();
test.before(() => {
  served = (async () => {
    const s = await testStation({ extra: SOTA });
    const link = new HttpLink(s.station, { listen: '127.0.0.1:0', sota: s.config.sota });
    await link.start();
    return { s, link };
  })();
});
test.after.always(async () => {
  const { s, link } = await served;
  await link.stop();
  await s.close();
});

/** A 201 with the four files, or a refusal the link meant to give. */
function wellFormedAnswer(res: Res): boolean {
  if (res.status === 201) {
    const files = JSON.parse(res.text) as Record<string, unknown>;
    return Object.keys(files).sort().join() === 'client.chained,client.pem,root.crt,sota.toml';
  }
  const j = JSON.parse(res.text) as { code?: unknown; message?: unknown };
  return (
    res.status >= 400 &&
    res.status < 500 &&
    typeof j.code === 'string' &&
    (REFUSAL_CODES as readonly string[]).includes(j.code) &&
    typeof j.message === 'string' &&
    /^[\x20-\x7e]*$/.test(j.message)
  );
}

test.serial('random JSON values as the body: every answer is a 4xx JSON refusal with a code and a printable message', async (t) => {
  const { link } = await served;
  await fc.assert(
    fc.asyncProperty(fc.jsonValue({ maxDepth: 4 }), async (value) => {
      const res = await send(link.port, 'POST', JSON.stringify(value));
      t.true(wellFormedAnswer(res), `${res.status} ${res.text}`);
      return wellFormedAnswer(res) && res.status !== 201;
    }),
    { numRuns: 150 },
  );
});

test.serial('objects with reserved and hostile names at every depth: a refusal or a certificate, never a crash', async (t) => {
  const { link } = await served;
  await fc.assert(
    fc.asyncProperty(fc.dictionary(key, tree, { maxKeys: 6 }), fc.boolean(), async (object, withCsr) => {
      const body = withCsr ? { ...deviceFields().fields, ...object } : object;
      const res = await send(link.port, 'POST', ptreeJson(body));
      return wellFormedAnswer(res);
    }),
    { numRuns: 150 },
  );
  t.deepEqual(Object.getOwnPropertyNames(Object.prototype).sort(), prototypeBefore);
});

test.serial('a valid body with one hostile field: refused BAD_FRAME unless the text is plain, then issued with that text recorded as sent', async (t) => {
  const { s, link } = await served;
  await fc.assert(
    fc.asyncProperty(oneHostileField, async ({ fields, deviceId, where, text }) => {
      const res = await send(link.port, 'POST', ptreeJson(fields));
      if (!wellFormedAnswer(res)) return false;
      const plain = text.isWellFormed() && !/[\u0000-\u001f\u007f-\u009f]/.test(text);
      if (!plain) return res.status === 400 && JSON.parse(res.text).code === 'BAD_FRAME';
      if (res.status !== 201) return true; // plain text can still be a bad TOML literal, key or path
      const row = [...s.ledger.since(0)].find((r) => r.deviceId === deviceId);
      if (!row) return false;
      if (where === 'name') return row.name === (text || row.deviceId);
      if (where === 'hardware-id') return row.hardwareId === (text || null);
      return true;
    }),
    { numRuns: 200 },
  );
  t.pass();
});

test.serial('raw bytes as the body: a JSON refusal every time', async (t) => {
  const { link } = await served;
  await fc.assert(
    fc.asyncProperty(fc.uint8Array({ maxLength: 200 }), async (bytes) => wellFormedAnswer(await send(link.port, 'POST', bytes))),
    { numRuns: 100 },
  );
  t.pass();
});

test.serial('afterwards: a valid request gets its certificate and exactly its ledger row; the ledger verifies; Object.prototype is untouched', async (t) => {
  const { s, link } = await served;
  const device = deviceFields({ name: 'after-the-storm', 'hardware-id': 'imx8mm' });
  const res = await send(link.port, 'POST', ptreeJson(device.fields));
  t.is(res.status, 201, res.text);
  const files = JSON.parse(res.text) as Record<string, string>;
  const row = s.ledger.findByCsrHash(createHash('sha256').update(device.der).digest('hex'));
  t.truthy(row);
  t.is(row!.deviceId, device.deviceId);
  t.is(row!.name, 'after-the-storm');
  t.is(row!.hardwareId, 'imx8mm');
  t.regex(row!.link, /^http:/);
  t.is([...s.ledger.since(0)].filter((r) => r.deviceId === device.deviceId).length, 1);
  const subject = openssl(['x509', '-noout', '-subject', '-serial'], files['client.pem']).toString();
  t.true(subject.includes(device.deviceId), subject);
  t.is(subject.match(/serial=([0-9A-F]+)/)![1]!.toLowerCase(), row!.serial);
  t.is(verifyLedger(s.config).problem, null);
  t.deepEqual(Object.getOwnPropertyNames(Object.prototype).sort(), prototypeBefore);
  t.is(({} as Record<string, unknown>).workOrder, undefined);
});
