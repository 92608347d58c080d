/**
 * PEM text as clients send it (PEM mode, HTTP, the spool): however it is
 * laid out, the CSR comes back; hostile text gets BAD_CSR, nothing else.
 */
import { HOSTILE_PEM } from './helpers/load.js';
import test from 'ava';
import fc from 'fast-check';
import { LineSignerError } from '../src/errors.js';
import { csrDer, pemDecodeAll, pemEncode } from '../src/x509/pem.js';

/** A PEM block as a terminal or an editor may mangle it: line ends, indentation, blanks, the older label. */
const laidOut = fc.record({
  der: fc.uint8Array({ minLength: 1, maxLength: 600 }),
  eol: fc.constantFrom('\n', '\r\n'),
  indent: fc.constantFrom('', '  ', '\t', ' \t '),
  trailing: fc.constantFrom('', ' ', '\t  '),
  label: fc.constantFrom('CERTIFICATE REQUEST', 'NEW CERTIFICATE REQUEST'),
  before: fc.constantFrom('', 'junk\n', '-----BEGIN CERTIFICATE REQUEST-----\nQUJD\n', '-----BEGIN CERTIFICATE-----\nQUJD\n-----END CERTIFICATE-----\n'),
});

test('csrDer reads a CSR however its PEM is laid out', (t) => {
  fc.assert(
    fc.property(laidOut, ({ der, eol, indent, trailing, label, before }) => {
      const pem = pemEncode(der, label)
        .trimEnd()
        .split('\n')
        .map((l) => indent + l + trailing)
        .join(eol);
      t.deepEqual(csrDer(Buffer.from(before + pem + eol)), der);
    }),
    { numRuns: 300 },
  );
});

test('pemDecodeAll keeps the order of blocks and skips broken ones', (t) => {
  const a = new Uint8Array([1, 2, 3]);
  const b = new Uint8Array([4, 5, 6, 7]);
  const text = pemEncode(a, 'CERTIFICATE') + '-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n' + pemEncode(b, 'CERTIFICATE');
  t.deepEqual(pemDecodeAll(text, 'CERTIFICATE'), [a, b]);
  t.deepEqual(pemDecodeAll(text.replace('-----END CERTIFICATE-----\n', ''), 'CERTIFICATE'), [b], 'a BEGIN inside an open block starts afresh');
});


test('hostile PEM bodies get BAD_CSR and nothing else', (t) => {
  for (const [name, text] of Object.entries(HOSTILE_PEM)) {
    const e = t.throws(() => csrDer(Buffer.from(text)), { instanceOf: LineSignerError }, name);
    t.is(e?.code, 'BAD_CSR', name);
  }
  fc.assert(
    fc.property(fc.array(fc.constantFrom('-----BEGIN ', 'CERTIFICATE REQUEST', '-----', '\n', '\r', ' ', 'QUJD', '=', '-----END '), { maxLength: 60 }), (parts) => {
      try {
        csrDer(Buffer.from('-----BEGIN ' + parts.join('')));
      } catch (e) {
        if (!(e instanceof LineSignerError) || e.code !== 'BAD_CSR') throw e;
      }
    }),
    { numRuns: 300 },
  );
});
