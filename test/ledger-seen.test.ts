/**
 * The serving ledger answers "never seen" from memory (src/ledger/seen.ts):
 * a new device reads nothing from SQLite. What that must never do is call a
 * known CSR or device new: not right after its commit, not after a restart.
 */
import test from 'ava';
import fc from 'fast-check';
import { randomUUID } from 'node:crypto';
import { SeenFilter } from '../src/ledger/seen.js';
import { openStation } from '../src/station/index.js';
import { ALONE_AFTER_MS } from '../src/station/station.js';
import { makeDeviceCsr } from '../src/x509/index.js';
import { cliAsync } from './helpers/cli.js';
import { FACTORY, testStation, uuid } from './helpers/pki.js';

test('a key once added is always "maybe": no false negatives, whatever the keys', (t) => {
  fc.assert(
    fc.property(fc.array(fc.string({ unit: 'binary', maxLength: 80 }), { maxLength: 200 }), (keys) => {
      const f = new SeenFilter();
      for (const k of keys) f.add(k);
      return keys.every((k) => f.mayHave(k));
    }),
    { numRuns: 300 },
  );
  t.pass();
});

test('100,000 device ids in: fewer than 1 in 2,000 others are taken for seen', (t) => {
  const f = new SeenFilter();
  for (let i = 0; i < 100_000; i++) f.add(randomUUID());
  let falsePositives = 0;
  for (let i = 0; i < 100_000; i++) if (f.mayHave(randomUUID())) falsePositives++;
  t.log(`false positives: ${falsePositives} in 100,000`);
  t.true(falsePositives < 50, `${falsePositives} false positives`);
});

test('a device and a CSR committed are known at once and after a restart: the same CSR is replayed, another key for the device refused', async (t) => {
  const s = await testStation();
  let open: Awaited<ReturnType<typeof openStation>> | null = null;
  t.teardown(async () => {
    await open?.close();
  });
  // Under load (the writer thread) and alone (inline commit): both paths must mark what they commit.
  const devices = Array.from({ length: 12 }, () => uuid());
  const csrs = devices.map((deviceId) => makeDeviceCsr({ deviceId, factory: FACTORY, production: true }).der);
  const first = await Promise.all(csrs.map((csr) => s.station.handle({ csr, link: 'test' })));
  const lone = makeDeviceCsr({ deviceId: uuid(), factory: FACTORY, production: true }).der;
  await new Promise((r) => setTimeout(r, ALONE_AFTER_MS + 5)); // quiet again: the lone path
  const loneFirst = await s.station.handle({ csr: lone, link: 'test' });
  for (const r of [...first, loneFirst]) if (!r.ok) return t.fail(`${r.code} ${r.message}`);

  const check = async (station: typeof s.station, when: string): Promise<void> => {
    for (const [i, csr] of [...csrs, lone].entries()) {
      const again = await station.handle({ csr, link: 'test' });
      const was = i < csrs.length ? first[i]! : loneFirst;
      t.true(again.ok && again.replayed && was.ok && again.certificatePem === was.certificatePem, `${when}: CSR ${i} replayed`);
    }
    for (const deviceId of devices) {
      const other = await station.handle({ csr: makeDeviceCsr({ deviceId, factory: FACTORY, production: true }).der, link: 'test' });
      t.is(other.ok ? 'issued' : other.code, 'DUPLICATE_DEVICE', `${when}: another key for ${deviceId}`);
      // Refused by the station's decision, before the token signed; not only by the commit's re-check.
      if (!other.ok) t.notRegex(other.message, /checked again at commit/, `${when}: ${deviceId} refused before signing`);
    }
  };
  await check(s.station, 'same run');
  await s.close();
  // Revoked while no station served: the restarted station's memory starts from the file.
  const revoked = devices[0]!;
  const r = await cliAsync(['ledger', 'revoke', revoked, '--reason', 'scrapped', '--config', s.configPath, '--operator', 'rita']);
  t.is(r.status, 0, r.stderr);
  open = await openStation(s.config);
  const replay = await open.station.handle({ csr: csrs[0]!, link: 'test' });
  t.is(replay.ok ? 'replayed' : replay.code, 'DUPLICATE_DEVICE', "a revoked device's CSR is not answered with its old certificate after a restart");
  csrs.shift();
  first.shift();
  devices.shift();
  await check(open.station, 'after a restart');
});
