/**
 * Names that pass for others: a device name (or a device id, under a
 * factory's own id pattern) that only looks like an ASCII one is refused,
 * and names in a factory's own language and script are not. Examples,
 * properties over the real check, and one station end to end.
 */
import test from 'ava';
import fc from 'fast-check';
import { deviceNameProblem, lookAlikeProblem } from '../src/text.js';
import { makeDeviceCsr } from '../src/x509/device-csr.js';
import { FACTORY, testStation } from './helpers/pki.js';

/** Letters and digits of other scripts and compatibility forms that an ASCII reader takes for ASCII. */
const DISGUISES = ['\u0430', '\u0435', '\u043e', '\u0440', '\u0441', '\u0445', '\u0410', '\u0412', '\u039f', '\u03bf', '\u0391', '\uff21', '\uff44', '\uff17', '\ufb01', '\u13a0', '\u0406', '\u217c'];

test('names that only look like ASCII ones are refused, naming the character and what it looks like; dashes and spaces of their own are typography', (t) => {
  const refused: Array<[string, RegExp]> = [
    ['d\u0435v-1', /mixes ASCII letters with a character that only looks like ASCII \(U\+0435, which looks like "e"\)/],
    ['\u0416\u0430vod', /U\+0430, which looks like "a"/],
    ['Line\uff17', /U\+FF17, which looks like "7"/],
    ['\ufb01lter', /U\+FB01, which looks like "fi"/],
    ['\u041a\u043e\u0441', /reads as ASCII but is not \(U\+041A, which looks like "K"\)/],
    ['\u0410\u0412-12', /reads as ASCII but is not/],
    ['\uff44\uff45\uff56', /reads as ASCII but is not/],
  ];
  for (const [name, why] of refused) t.regex(deviceNameProblem(name) ?? 'accepted', why, JSON.stringify(name));
  for (const name of ['dev-1', 'line 7', 'caf\u00e9 line 7', 'S\u00e6by-1', 'K\u0131r\u0131kkale-3', 'G\u00e4rtringen', '\u0416\u0430\u0432\u043e\u0434-7', '\u30e9\u30a4\u30f3\u3000\uff17', '\uf900-line', 'R\u2126-7', '\u5de5\u5834 1', 'Line 7 \u2013 \u00dcnit 42', 'dev\u30001', '\u0394\u03b9\u03ac\u03bd\u03bf\u03b9\u03b1-2']) {
    t.is(deviceNameProblem(name), null, JSON.stringify(name));
  }
});

test('property: printable ASCII never looks like something else; one disguise among ASCII letters is always refused', (t) => {
  fc.assert(fc.property(fc.string({ unit: fc.integer({ min: 0x20, max: 0x7e }).map((c) => String.fromCharCode(c)), maxLength: 64 }), (s) => lookAlikeProblem(s) === null));
  fc.assert(
    fc.property(
      fc.string({ unit: fc.constantFrom(...'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.'), minLength: 1, maxLength: 40 }).filter((s) => /[A-Za-z]/.test(s)),
      fc.constantFrom(...DISGUISES),
      fc.nat(),
      (ascii, disguise, at) => {
        const i = at % (ascii.length + 1);
        const name = ascii.slice(0, i) + disguise + ascii.slice(i);
        const why = lookAlikeProblem(name);
        return why !== null && why.includes(`U+${disguise.codePointAt(0)!.toString(16).toUpperCase().padStart(4, '0')}`);
      },
    ),
  );
  t.pass();
});

test('property: Latin letters of a language (any NFC letter of the Latin script) beside ASCII are never look-alikes', (t) => {
  const latin = fc
    .integer({ min: 0xc0, max: 0x24f })
    .map((c) => String.fromCodePoint(c))
    .filter((ch) => /^\p{Script=Latin}$/u.test(ch) && /^\p{L}$/u.test(ch) && ch.normalize('NFC') === ch && ch.normalize('NFKC') === ch);
  fc.assert(fc.property(fc.array(fc.oneof(latin, fc.constantFrom('a', 'Z', '0', '-', ' ')), { minLength: 1, maxLength: 30 }), (parts) => lookAlikeProblem(parts.join('')) === null));
  t.pass();
});

test('a station whose device id pattern lets any text in refuses a look-alike CN with POLICY_SUBJECT and issues the plain one', async (t) => {
  const s = await testStation({ policy: 'device_id = "[^/]{1,64}"' });
  t.teardown(() => s.close());
  const csr = (deviceId: string): Uint8Array => makeDeviceCsr({ deviceId, factory: FACTORY, production: true }).der;
  const disguised = await s.station.handle({ csr: csr('press-\u0430-17'), link: 'test' });
  t.false(disguised.ok);
  t.is(!disguised.ok && disguised.code, 'POLICY_SUBJECT');
  t.regex(!disguised.ok ? disguised.message : '', /CN as a device name: "press-\\u0430-17" mixes ASCII letters/);
  const control = await s.station.handle({ csr: csr('press\u001b[2J'), link: 'test' });
  t.is(!control.ok && control.code, 'POLICY_SUBJECT', 'control characters in a CN, which a factory pattern may allow, are refused as in any name');
  const plain = await s.station.handle({ csr: csr('press-a-17'), link: 'test' });
  t.true(plain.ok, plain.ok ? '' : plain.message);
  t.deepEqual([...s.ledger.since(0)].map((r) => r.name), ['press-a-17']);
});
