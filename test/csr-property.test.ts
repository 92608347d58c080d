/**
 * The DER reader and the CSR parser against hostile input: every single-byte
 * change, truncation and length-field change of valid CSRs gives a typed
 * refusal or a certificate OpenSSL reads (test/helpers/csr-properties.ts;
 * scripts/fuzz runs the same properties for longer).
 */
import test from 'ava';
import fc from 'fast-check';
import { LineSignerError } from '../src/errors.js';
import { parseCsr } from '../src/x509/csr.js';
import { makeDeviceCsr } from '../src/x509/device-csr.js';
import {
  arbitraryBytesProperty,
  checkOffline,
  csrSamples,
  expectTypedRefusal,
  ledgerProblem,
  lengthOffsets,
  offlineProperty,
  stationProperty,
  type StationRun,
} from './helpers/csr-properties.js';
import { FACTORY, testPki, testStation, uuid } from './helpers/pki.js';

const samples = csrSamples(testPki().dir);

test('every sample CSR passes the offline checks unchanged (the properties start from valid input)', async (t) => {
  for (const s of samples) await t.notThrowsAsync(() => checkOffline(s.der), s.name);
  t.true(samples.some((s) => parseCsr(s.der).extensions.length > 0), 'some samples ask for extensions');
});

test('property: arbitrary bytes are BAD_CSR or a parsed CSR, nothing else', (t) => {
  fc.assert(arbitraryBytesProperty(), { numRuns: 500 });
  t.pass();
});

test('property: a mutated CSR gets a typed refusal, or makes a certificate that OpenSSL reads back as built', async (t) => {
  await fc.assert(offlineProperty(samples), { numRuns: 400 });
  t.pass();
});

test('property: a real station answers a mutated CSR with a typed refusal or a certificate that X509Certificate and openssl x509 read; the ledger verifies afterwards', async (t) => {
  const station = await testStation({ policy: 'allow_p384 = true' });
  t.teardown(() => station.close());
  const run: StationRun = { station, issued: 0, refused: new Map() };
  // The unchanged samples are signed: the property sees the success path too.
  for (const s of samples) {
    const r = await station.station.handle({ csr: s.der, link: 'property' });
    t.true(r.ok, `${s.name}: ${r.ok ? '' : `${r.code} ${r.message}`}`);
    run.issued++;
  }
  await fc.assert(stationProperty(run, samples, 1), { numRuns: 250 });
  t.is(ledgerProblem(run), null);
  t.is(station.ledger.issuedCount(), run.issued);
  t.log(`issued ${run.issued}; refused ${JSON.stringify(Object.fromEntries(run.refused))}`);
});

/**
 * Every value at every tag and length byte, and every single-bit flip at
 * every other byte. (All 255 values at all 281 bytes is 72,000 signature
 * checks, some 20 s on this machine; scripts/fuzz covers the rest at random.)
 */
test('exhaustive: every bit flip of one CSR, and every value of its tag and length bytes, is refused by parse, key and signature checks with a typed code', async (t) => {
  const { der } = makeDeviceCsr({ deviceId: uuid(), factory: FACTORY, production: true });
  const structural = new Set(lengthOffsets(der).flatMap((at) => [at, at - 1]));
  const codes = new Map<string, number>();
  let tried = 0;
  let accepted = 0;
  for (let at = 0; at < der.length; at++) {
    const xors = structural.has(at) ? Array.from({ length: 255 }, (_, i) => i + 1) : [1, 2, 4, 8, 16, 32, 64, 128];
    for (const xor of xors) {
      const copy = der.slice();
      copy[at]! ^= xor;
      tried++;
      try {
        await checkOffline(copy);
        accepted++;
      } catch (err) {
        expectTypedRefusal(err, ['BAD_CSR', 'POLICY_KEY', 'BAD_SIGNATURE']);
        const code = (err as LineSignerError).code;
        codes.set(code, (codes.get(code) ?? 0) + 1);
      }
    }
  }
  // The signature covers everything but itself, and OpenSSL takes only DER ECDSA signatures.
  t.is(accepted, 0);
  t.is([...codes.values()].reduce((a, b) => a + b, 0), tried);
  t.true(codes.has('BAD_CSR') && codes.has('POLICY_KEY') && codes.has('BAD_SIGNATURE'), 'each check refused some');
  t.log(tried, Object.fromEntries(codes));
});

test('exhaustive: every truncation of one CSR is BAD_CSR; every other value of each length field is a typed refusal', async (t) => {
  const { der } = makeDeviceCsr({ deviceId: uuid(), factory: FACTORY, production: true });
  const refusedAs = (bytes: Uint8Array): string => {
    try {
      parseCsr(bytes);
      return 'parsed';
    } catch (err) {
      expectTypedRefusal(err, ['BAD_CSR']);
      return 'BAD_CSR';
    }
  };
  for (let length = 0; length < der.length; length++) t.is(refusedAs(der.subarray(0, length)), 'BAD_CSR', `truncated to ${length}`);
  for (const at of lengthOffsets(der)) {
    for (let value = 0; value < 256; value++) {
      if (value === der[at]) continue;
      const copy = der.slice();
      copy[at] = value;
      // A changed length can still frame a readable structure only by luck; it must then fail later, typed.
      try {
        await checkOffline(copy);
        t.fail(`length byte ${at} = ${value} accepted`);
      } catch (err) {
        expectTypedRefusal(err, ['BAD_CSR', 'POLICY_KEY', 'BAD_SIGNATURE', 'POLICY_SUBJECT']);
      }
    }
  }
  t.pass();
});
