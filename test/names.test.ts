/**
 * Names that pass for others: a device name (or a device id, under a
 * factory's own id pattern) that only looks like an ASCII one is refused,
 * and names in a factory's own language and script are not. Examples,
 * properties over the real check, and one station end to end.
 */
import test from 'ava';
import fc from 'fast-check';
import Database from 'better-sqlite3';
import { randomUUID } from 'node:crypto';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SqliteLedger } from '../src/ledger/index.js';
import { MIGRATIONS } from '../src/ledger/schema.js';
import unhomoglyph from 'unhomoglyph';
import { deviceNameProblem, lookAlikeProblem, nameSkeleton } from '../src/text.js';
import { deviceSubject, makeDeviceCsr } from '../src/x509/device-csr.js';
import { FACTORY, testStation } from './helpers/pki.js';

/** Letters, digits and punctuation of other scripts, phonetic letters and compatibility forms that an ASCII reader takes for ASCII. */
const DISGUISES = ['\u0430', '\u0435', '\u043e', '\u0440', '\u0441', '\u0445', '\u0410', '\u0412', '\u039f', '\u03bf', '\u0391', '\uff21', '\uff44', '\uff17', '\ufb01', '\u13a0', '\u0406', '\u217c', '\u2010', '\u2212', '\uff0d', '\u01c0', '\u0261'];

test('names that only look like ASCII ones are refused, naming the character and what it looks like; other spellings, invisible characters and piled marks too', (t) => {
  const refused: Array<[string, RegExp]> = [
    ['d\u0435v-1', /mixes ASCII letters with a character that only looks like ASCII \(U\+0435, which looks like "e"\)/],
    ['\u0416\u0430vod', /U\+0430, which looks like "a"/],
    ['Line\uff17', /U\+FF17, which looks like "7"/],
    ['\ufb01lter', /U\+FB01, which looks like "fi"/],
    ['\u041a\u043e\u0441', /reads as ASCII but is not \(U\+041A, which looks like "K"\)/],
    ['\u0410\u0412-12', /reads as ASCII but is not/],
    ['\uff44\uff45\uff56', /reads as ASCII but is not/],
    ['\uff44\uff45\uff56\u3000\uff11', /reads as ASCII but is not/],
    ['dev\u20109', /U\+2010, which looks like "-"/],
    ['dev\uff0e9', /U\+FF0E, which looks like "\."/],
    ['\u01c0ine-9', /U\+01C0, which looks like "l"/],
    ['Hall \u2161', /U\+2161/],
    // Other spellings of the same text (a review registered each pair as two devices): the Kelvin and
    // Angstrom signs, the Greek question mark, a CJK compatibility ideograph, the ohm sign, and
    // decomposed text after a precomposed letter.
    ['\u212aiosk-9', /not in Unicode NFC form/],
    ['\u212bsa-9', /not in Unicode NFC form/],
    ['dev\u037e9', /not in Unicode NFC form/],
    ['\uf900-9', /not in Unicode NFC form/],
    ['R\u2126-7', /not in Unicode NFC form/],
    ['\u00e4-cafe\u0301-9', /not in Unicode NFC form/],
    // Characters that draw nothing, and marks piled on one letter.
    ['dev9\ufe0f', /invisible format character \(U\+FE0F\)/],
    ['dev9\udb40\udd00', /invisible format character \(U\+E0100\)/],
    ['\u2800', /invisible format character \(U\+2800\)/],
    ['dev1\u17b4', /invisible format character \(U\+17B4\)/],
    ['x\u0300\u0301\u0302\u0303\u0304', /stacks more than four combining marks/],
    // Second review: no glyph at all, a dot that vanishes into i's own, a run of spaces a web page folds,
    // a Greek TEAM beside a Latin Ö, Cyrillic ABC made whole by a superscript, a fullwidth percent sign.
    ['press-7\ue000', /has a character with no glyph \(U\+E000: private use or unassigned\)/],
    ['press-7\u0378', /has a character with no glyph \(U\+0378/],
    ['press-7\u{10fffd}', /has a character with no glyph \(U\+10FFFD/],
    ['press-i\u03077', /puts a dot above a letter that has one/],
    ['Line 7  Unit 3', /has spaces in a row/],
    ['\u03a4\u0395\u0391\u039c-\u00d67', /U\+03A4, which looks like "T"/],
    ['\u0410\u0412\u0421-12\u00b2', /reads as ASCII but is not \(U\+0410/],
    ['Mix-50\uff05', /U\+FF05, which looks like "%"/],
  ];
  for (const [name, why] of refused) t.regex(deviceNameProblem(name) ?? 'accepted', why, JSON.stringify(name));
  for (const name of ['dev-1', 'line 7', 'caf\u00e9 line 7', 'S\u00e6by-1', 'K\u0131r\u0131kkale-3', 'G\u00e4rtringen', '\u0416\u0430\u0432\u043e\u0434-7', '\u30e9\u30a4\u30f3\u3000\uff17', '\u5de5\u5834 1', 'Line 7 \u00b7 \u00dcnit 42', 'dev\u30001', 'N\u00ba7', 'm\u00b2-press', 'Tank \u00bd', 'Vi\u1ec7t Nam', '\u0939\u093f\u0928\u094d\u0926\u0940-3', 'x\u0300\u0301', '\u0394\u03b9\u03ac\u03bd\u03bf\u03b9\u03b1-2']) {
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

test('property: Latin letters of a language (any NFC letter of the Latin script in Latin-1 and Extended-A/B but the click letters, which are drawn as | and !) beside ASCII are never look-alikes', (t) => {
  const latin = fc
    .integer({ min: 0xc0, max: 0x24f })
    .filter((c) => c < 0x1c0 || c > 0x1c3)
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

test('a byte order mark leading a subject value (CN, OU, businessCategory) is kept and refused, not dropped: the checks see what the CSR carries', async (t) => {
  const s = await testStation();
  t.teardown(() => s.close());
  const id = randomUUID();
  for (const subject of [
    { deviceId: `\ufeff${id}`, factory: FACTORY, production: true },
    { deviceId: id, factory: `\ufeff${FACTORY}`, production: true },
  ]) {
    const r = await s.station.handle({ csr: makeDeviceCsr(subject).der, link: 'test' });
    t.is(!r.ok && r.code, 'POLICY_SUBJECT', JSON.stringify(subject));
  }
  const category = makeDeviceCsr(deviceSubject({ deviceId: id, factory: FACTORY, production: true }).map((a) => (a.value === 'production' ? { ...a, value: '\ufeffproduction' } : a))).der;
  const r = await s.station.handle({ csr: category, link: 'test' });
  t.is(!r.ok && r.code, 'POLICY_SUBJECT');
  t.is([...s.ledger.since(0)].length, 0, 'nothing issued');
  t.true((await s.station.handle({ csr: makeDeviceCsr({ deviceId: id, factory: FACTORY, production: true }).der, link: 'test' })).ok);
});

test('one skeleton, one device: a name that looks the same as a device\'s name (another script) is refused, also while both are in flight; ASCII schemes are left as they are', async (t) => {
  const s = await testStation();
  t.teardown(() => s.close());
  const device = (name: string) => ({ csr: makeDeviceCsr({ deviceId: randomUUID(), factory: FACTORY, production: true }).der, link: 'test', name });
  const first = await s.station.handle(device('\u0417\u0430\u0432\u043e\u0434-\u0417'));
  t.true(first.ok, first.ok ? '' : first.message);
  const digit = await s.station.handle(device('\u0417\u0430\u0432\u043e\u0434-3'));
  t.is(!digit.ok && digit.code, 'POLICY_SUBJECT');
  t.regex(!digit.ok ? digit.message : '', /looks the same as "\\u0417\\u0430\\u0432\\u043e\\u0434-\\u0417", device [0-9a-f-]{36}'s name/);
  t.true((await s.station.handle(device('\u5de5\u5834-O7'))).ok);
  t.is(((await s.station.handle(device('\u5de5\u5834-\u041e7'))) as { code?: string }).code, 'POLICY_SUBJECT', 'a Cyrillic O for a Latin one');
  // A factory's uppercase base36 counter: SN-00000I and SN-000001 are two serials, not a disguise.
  for (const n of ['SN-00000I', 'SN-000001', 'SN-0000O0', 'SN-000000', 'press-m7', 'press-rn7']) t.true((await s.station.handle(device(n))).ok, n);
  // Eight look-alikes of one new name at once: one gets it.
  const racing = await Promise.all(['\u5de5\u5834-O9', '\u5de5\u5834-\u041e9', '\u5de5\u5834-\u039f9', '\u5de5\u5834-O9', '\u5de5\u5834-\u041e9', '\u5de5\u5834-O9', '\u5de5\u5834-\u039f9', '\u5de5\u5834-\u041e9'].map((n) => s.station.handle(device(n))));
  t.is(racing.filter((r) => r.ok).length, 1, JSON.stringify(racing.map((r) => (r.ok ? 'ok' : r.code))));
  t.true(racing.every((r) => r.ok || r.code === 'POLICY_SUBJECT' || r.code === 'BAD_FRAME'));
  t.deepEqual(new Set([...s.ledger.since(0)].map((r) => nameSkeleton(r.name ?? r.deviceId))).size, [...s.ledger.since(0)].length, 'no two names in the ledger look the same');
});

test("a name is a device's while it is the device's current name, and a name with the form of a device id only its own device's: no device collects names, one certificate each, or takes the id of a device not made yet", async (t) => {
  const s = await testStation();
  t.teardown(() => s.close());
  const [rogue, other] = [randomUUID(), randomUUID()];
  let victim = randomUUID();
  while (!victim.includes('3')) victim = randomUUID();
  const key = makeDeviceCsr({ deviceId: rogue, factory: FACTORY, production: true }).privateKey;
  const asRogue = (name: string) => s.station.handle({ csr: makeDeviceCsr({ deviceId: rogue, factory: FACTORY, production: true }, key).der, link: 'http', name });
  // The id of a device that has not come yet, as a name: refused, so the device gets its own name when it comes.
  const squat = await asRogue(victim);
  t.is(!squat.ok && squat.code, 'POLICY_SUBJECT');
  t.regex(!squat.ok ? squat.message : '', new RegExp(`name "${victim}" reads as a UUID, the form of a device id, and is not this device's`));
  // As it reads, not only as it is spelt: upper case, or a letter that looks like a digit.
  const lookAlike = victim.replace(/3/g, '\u01b7');
  for (const disguise of [victim.toUpperCase(), ...(lookAlike !== victim ? [lookAlike] : [])]) {
    const r = await asRogue(disguise);
    t.is(!r.ok && r.code, 'POLICY_SUBJECT', disguise);
  }
  t.true((await s.station.handle({ csr: makeDeviceCsr({ deviceId: victim, factory: FACTORY, production: true }).der, link: 'serial' })).ok, "the device's own id is its name");
  // A device renamed by a re-issue leaves its old name free: it holds one name, not every name it ever had.
  t.true((await asRogue('press-1')).ok);
  t.true((await asRogue('press-2')).ok);
  const taken = await s.station.handle({ csr: makeDeviceCsr({ deviceId: other, factory: FACTORY, production: true }).der, link: 'http', name: 'press-2' });
  t.is(!taken.ok && taken.code, 'POLICY_SUBJECT', 'the current name is still one device\'s');
  const freed = await s.station.handle({ csr: makeDeviceCsr({ deviceId: other, factory: FACTORY, production: true }).der, link: 'http', name: 'press-1' });
  t.true(freed.ok, freed.ok ? '' : freed.message);
});

/** A ledger file as line-signer left it before migration `version + 1`, holding one issuance row per device and name. */
function ledgerBeforeSkeletons(rows: Array<[deviceId: string, name: string | null]>, version = 3, skeleton?: (name: string) => string): string {
  const path = join(mkdtempSync(join(tmpdir(), 'ls-skeleton-')), 'old.db');
  const db = new Database(path);
  for (const m of MIGRATIONS.slice(0, version)) db.exec(m);
  db.pragma(`user_version = ${version}`);
  const insert = db.prepare(`INSERT INTO issuances (v, seq, serial, device_id, subject, public_key_sha256, csr_sha256, certificate, not_before, not_after, issued_at, station_id, link, entry_hash, name)
    VALUES (2, ?, ?, ?, 'CN=x', 'k', ?, X'00', 'a', 'b', 'c', 's', 't', 'h', ?)`);
  rows.forEach(([deviceId, name], i) => insert.run(i + 1, `0${i + 1}`, deviceId, `c${i + 1}`, name));
  if (skeleton) for (const [deviceId, name] of rows) db.prepare('UPDATE issuances SET name_skeleton = ? WHERE device_id = ?').run(skeleton(name ?? deviceId), deviceId);
  db.close();
  return path;
}

test('a ledger whose skeletons were computed with ASCII folded (migration 4 of an earlier build) gets them computed again', (t) => {
  const folded = (n: string): string => unhomoglyph(n.normalize('NFKD')).normalize('NFD');
  const ledger = new SqliteLedger(ledgerBeforeSkeletons([['dev-a', '\u0417\u0430\u0432\u043e\u0434-1']], 4, folded), 's');
  t.teardown(() => ledger.close());
  t.is(ledger.nameHolder('\u0417\u0430\u0432\u043e\u0434-\uff11', 'dev-b')?.deviceId, 'dev-a', 'the fullwidth look-alike is found');
  t.deepEqual([...ledger.skeletonProblems()], []);
});

test('a ledger from before name skeletons gets them when it is opened, and its schema is then what a new ledger has', (t) => {
  const ledger = new SqliteLedger(ledgerBeforeSkeletons([['dev-a', 'line-m1'], ['dev-b', null]]), 's');
  t.teardown(() => ledger.close());
  t.deepEqual(ledger.shapeProblems({ values: false }), []);
  t.is(ledger.nameHolder('line-m1', 'dev-z')?.deviceId, 'dev-a');
  t.is(ledger.nameHolder('line-rn1', 'dev-z'), undefined, 'ASCII is not folded');
  t.is(ledger.nameHolder('dev-b', 'dev-z')?.deviceId, 'dev-b');
  t.is(ledger.nameHolder('line-m2', 'dev-z'), undefined);
});

test('two look-alike names issued before skeletons were kept stay their devices\' names after the upgrade, are listed as such, and a third is refused', (t) => {
  const ledger = new SqliteLedger(ledgerBeforeSkeletons([['dev-a', '\u5de5\u5834-O1'], ['dev-b', '\u5de5\u5834-\u041e1']]), 's');
  t.teardown(() => ledger.close());
  t.is(ledger.nameHolder('\u5de5\u5834-O1', 'dev-a'), undefined, 'device a keeps its name');
  t.is(ledger.nameHolder('\u5de5\u5834-\u041e1', 'dev-b'), undefined, 'device b keeps its name');
  t.is(ledger.nameHolder('\u5de5\u5834-\u039f1', 'dev-c')?.deviceId !== undefined, true, 'a third look-alike is refused');
  t.is(ledger.nameHolder('\u5de5\u5834-\u041e1', 'dev-a')?.deviceId, 'dev-b', 'and neither takes the other one');
  t.deepEqual(ledger.lookAlikeNames().map((p) => p.devices.sort()), [['dev-a', 'dev-b']]);
});
