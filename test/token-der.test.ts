import test from 'ava';
import fc from 'fast-check';
import * as asn1js from 'asn1js';
import { generateKeyPairSync, sign, verify } from 'node:crypto';
import { rawEcdsaToDer } from '../src/token/der.js';

/** The encoding as asn1js writes it: the reference the hand-written encoder must equal. */
function byAsn1js(raw: Uint8Array): Uint8Array {
  const half = raw.length / 2;
  const int = (b: Uint8Array): asn1js.Integer => asn1js.Integer.fromBigInt(BigInt('0x' + (Buffer.from(b).toString('hex') || '0')));
  return new Uint8Array(new asn1js.Sequence({ value: [int(raw.subarray(0, half)), int(raw.subarray(half))] }).toBER(false));
}

test('raw r||s becomes the DER asn1js writes, for any halves (leading zeros, top bit set, all zero)', (t) => {
  const half = (n: number) =>
    fc.oneof(
      fc.uint8Array({ minLength: n, maxLength: n }),
      // Leading zero bytes and a set top bit are the cases DER minimal form is about.
      fc.tuple(fc.integer({ min: 0, max: n }), fc.uint8Array({ minLength: n, maxLength: n })).map(([zeros, b]) => {
        const out = b.slice();
        out.fill(0, 0, zeros);
        return out;
      }),
    );
  for (const n of [32, 48]) {
    fc.assert(
      fc.property(half(n), half(n), (r, s) => {
        const raw = new Uint8Array([...r, ...s]);
        t.deepEqual(Buffer.from(rawEcdsaToDer(raw)).toString('hex'), Buffer.from(byAsn1js(raw)).toString('hex'));
      }),
      { numRuns: 2000 },
    );
  }
});

test('OpenSSL verifies a raw signature after conversion, and writes the same DER itself', (t) => {
  for (const namedCurve of ['P-256', 'P-384']) {
    const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve });
    for (let i = 0; i < 200; i++) {
      const msg = Buffer.from(`message ${i}`);
      const raw = sign('sha256', msg, { key: privateKey, dsaEncoding: 'ieee-p1363' });
      const der = rawEcdsaToDer(raw);
      t.true(verify('sha256', msg, publicKey, der));
      // OpenSSL's own DER of the same (r, s): converting back must give the same bytes.
      const back = sign('sha256', msg, privateKey);
      const backRaw = Buffer.from(verify('sha256', msg, publicKey, back) ? derToRaw(back, raw.length / 2) : []);
      t.is(Buffer.from(rawEcdsaToDer(backRaw)).toString('hex'), back.toString('hex'));
    }
  }
});

function derToRaw(der: Uint8Array, half: number): Uint8Array {
  const seq = asn1js.fromBER(der.slice().buffer).result as asn1js.Sequence;
  const part = (i: number): Buffer => {
    const hex = (seq.valueBlock.value[i] as asn1js.Integer).toBigInt().toString(16).padStart(2 * half, '0');
    return Buffer.from(hex, 'hex');
  };
  return Buffer.concat([part(0), part(1)]);
}
