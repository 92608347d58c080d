/** Whatever a stick names its files, each request is answered exactly once, under the right name, inside the stick. */
import test from 'ava';
import fc from 'fast-check';
import { createHash } from 'node:crypto';
import { lstatSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { BAD_NAME_PREFIX, SPOOL_LIMITS, SpoolLink } from '../src/links/spool.js';
import { textProblem, TEXT_LIMITS } from '../src/text.js';
import { makeDeviceCsr, pemDecodeAll, pemEncode } from '../src/x509/index.js';
import { FACTORY, testStation, uuid } from './helpers/pki.js';

// As the link reads names: a leading U+FEFF is part of the name (a decoder that drops it hid a BOM-led name behind another's).
const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/** The stem the answer must carry: the name's own when it is acceptable text, else one derived from its bytes. */
function expectedStem(name: Buffer): string {
  const stem = name.subarray(0, -4);
  try {
    const text = utf8.decode(name);
    if (textProblem(text, TEXT_LIMITS.name) === null && stem.length <= SPOOL_LIMITS.maxStemBytes) return utf8.decode(stem);
  } catch {
    // not UTF-8: falls through to the derived name
  }
  return `${BAD_NAME_PREFIX}${createHash('sha256').update(name).digest('hex').slice(0, 16)}`;
}

const stemBytes = fc.oneof(
  fc.string({ minLength: 1, maxLength: 20 }).map((s) => Buffer.from(s)),
  fc.string({ unit: 'grapheme', minLength: 1, maxLength: 30 }).map((s) => Buffer.from(s)),
  fc.string({ unit: 'binary', minLength: 1, maxLength: 12 }).map((s) => Buffer.from(s)),
  fc.constantFrom('root', 'root.crt', 'a.pem', 'a.error', 'x', 'x.csr', ' ', 'a b', '..x', 'x.', 'x..', '\u202etxt.exe', '\x1b[2J', '\ufeffx', '\ufeffa.pem').map((s) => Buffer.from(s)),
  fc.string({ minLength: 1, maxLength: 12 }).map((s) => Buffer.from(`\ufeff${s}`)),
  fc.uint8Array({ minLength: 1, maxLength: 16 }).map((a) => Buffer.from(a)),
  fc.integer({ min: 150, max: 251 }).map((n) => Buffer.alloc(n, 0x61)),
  fc.integer({ min: 40, max: 62 }).map((n) => Buffer.from('é'.repeat(n) + 'ab')),
);

/** A file name a Linux filesystem takes, not hidden (a leading dot marks a writer's temporary). */
const fileName = stemBytes
  .map((stem) => Buffer.concat([stem, Buffer.from('.csr')]))
  .filter((n) => n.length <= 255 && !n.includes(0x2f) && !n.includes(0) && n[0] !== 0x2e);

const dropped = fc.uniqueArray(
  fc.record({ name: fileName, content: fc.constantFrom('csr', 'garbage', 'empty'), staleAnswer: fc.constantFrom('none', 'pem', 'error') }),
  { minLength: 1, maxLength: 6, selector: (d) => d.name.toString('hex') },
);

test('any set of file names: each request is answered exactly once under the right stem, nothing is written outside outbox/ and done/, and the link keeps serving', async (t) => {
  const s = await testStation();
  t.teardown(() => s.close());
  const outside = join(s.dir, 'outside');
  mkdirSync(outside);
  writeFileSync(join(outside, 'keep'), 'untouched');
  let run = 0;

  await fc.assert(
    fc.asyncProperty(dropped, async (files) => {
      const dir = join(s.dir, `stick-${run++}`);
      const inbox = join(dir, 'inbox');
      const outbox = join(dir, 'outbox');
      mkdirSync(inbox, { recursive: true });
      mkdirSync(outbox);
      const expected = new Map<string, string>();
      for (const f of files) {
        const stem = expectedStem(f.name);
        // Two names can share a derived stem only by a hash collision; the property is about distinct answers.
        fc.pre(!expected.has(stem));
        expected.set(stem, f.content);
        const body = f.content === 'csr' ? pemEncode(makeDeviceCsr({ deviceId: uuid(), factory: FACTORY, production: true }).der, 'CERTIFICATE REQUEST') : f.content === 'garbage' ? 'not a CSR' : '';
        writeFileSync(Buffer.concat([Buffer.from(`${inbox}/`), f.name]), body);
        if (f.staleAnswer !== 'none') writeFileSync(join(outbox, `${stem}.${f.staleAnswer}`), 'stale');
      }

      const link = new SpoolLink(s.station, { dir, pollMs: 50, quietMs: 0 });
      for (let i = 0; i < 3; i++) await link.scan();
      await link.stop();

      if (readdirSync(inbox).length !== 0) return false;
      if (readdirSync(dir).sort().join() !== 'done,inbox,outbox') return false;
      const answers = readdirSync(outbox).filter((n) => n !== 'root.crt');
      if (answers.length !== expected.size) return false;
      for (const [stem, content] of expected) {
        const got = answers.filter((n) => n === `${stem}.pem` || n === `${stem}.error`);
        if (got.length !== 1) return false;
        const text = readFileSync(join(outbox, got[0]!), 'utf8');
        if (content === 'csr' && pemDecodeAll(text, 'CERTIFICATE').length !== 2 && !/^[A-Z_]+ /.test(text)) return false;
        if (content !== 'csr' && !/^(BAD_CSR|BAD_FRAME) [\x20-\x7e]*\n$/.test(text)) return false;
      }
      const done = readdirSync(join(dir, 'done'));
      if (done.filter((n) => n.endsWith('.csr')).length !== files.length) return false;
      if (done.some((n) => !lstatSync(join(dir, 'done', n)).isFile())) return false;
      return readdirSync(outside).join() === 'keep' && readFileSync(join(outside, 'keep'), 'utf8') === 'untouched';
    }),
    { numRuns: 150 },
  );

  // And it keeps serving.
  const dir = join(s.dir, 'stick-after');
  mkdirSync(join(dir, 'inbox'), { recursive: true });
  writeFileSync(join(dir, 'inbox', 'dev.csr'), pemEncode(makeDeviceCsr({ deviceId: uuid(), factory: FACTORY, production: true }).der, 'CERTIFICATE REQUEST'));
  const link = new SpoolLink(s.station, { dir, pollMs: 50, quietMs: 0 });
  for (let i = 0; i < 3; i++) await link.scan();
  t.is(link.status.state, 'polling');
  await link.stop();
  t.is(pemDecodeAll(readFileSync(join(dir, 'outbox', 'dev.pem'), 'utf8'), 'CERTIFICATE').length, 2);
});

test('a name led by a byte order mark is not the name without it: its answer never replaces another file\'s', async (t) => {
  const s = await testStation();
  t.teardown(() => s.close());
  const dir = join(s.dir, 'stick-bom');
  const inbox = join(dir, 'inbox');
  mkdirSync(inbox, { recursive: true });
  writeFileSync(join(inbox, 'victim.csr'), pemEncode(makeDeviceCsr({ deviceId: uuid(), factory: FACTORY, production: true }).der, 'CERTIFICATE REQUEST'));
  const link = new SpoolLink(s.station, { dir, pollMs: 50, quietMs: 0 });
  await link.scan();
  writeFileSync(join(inbox, '\ufeffvictim.csr'), 'garbage');
  for (let i = 0; i < 3; i++) await link.scan();
  await link.stop();
  const answers = readdirSync(join(dir, 'outbox')).filter((n) => n !== 'root.crt').sort();
  t.is(answers.length, 2, answers.join());
  t.true(answers.includes('victim.pem'));
  const other = answers.find((n) => n !== 'victim.pem')!;
  t.regex(other, new RegExp(`^${BAD_NAME_PREFIX}[0-9a-f]{16}\\.error$`));
  t.regex(readFileSync(join(dir, 'outbox', other), 'utf8'), /^BAD_FRAME .*U\+FEFF/);
  t.is(pemDecodeAll(readFileSync(join(dir, 'outbox', 'victim.pem'), 'utf8'), 'CERTIFICATE').length, 2);
});
