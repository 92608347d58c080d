import test from 'ava';
import { execFileSync } from 'node:child_process';
import { copyFileSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { exportBatch, verifyBatch, verifyBatches } from '../src/export/index.js';
import { SqliteLedger } from '../src/ledger/index.js';
import { caShow } from '../src/station/index.js';
import { stationWithBatches } from './helpers/batches.js';
import { cli } from './helpers/cli.js';

test('export then verify-export passes; batches are named <station>-<number>; nothing new writes no file', async (t) => {
  const { s, stick, files } = await stationWithBatches([3, 2]);
  t.teardown(() => s.close());
  t.deepEqual(files.map((f) => basename(f)), [`${s.config.station.id}-000001.lsbatch`, `${s.config.station.id}-000002.lsbatch`]);
  const { batches, problems } = await verifyBatches(files);
  t.deepEqual(problems, []);
  t.deepEqual(batches.map((b) => [b.manifest!.first_seq, b.manifest!.last_seq, b.issuances]), [[1, 3, 3], [4, 5, 2]]);
  t.is(await exportBatch(s.config, { outDir: stick }), null);
  const out = cli(['verify-export', ...files, '--station-key', caShow(s.config).station_key.sha256!]);
  t.is(out.status, 0, out.stderr);
  t.regex(out.stdout, /^ok .*000001\.lsbatch: batch 1/m);
  await s.close(); // the CLI takes the ledger when no serving station owns it
  const none = cli(['export', '--out', stick, '--config', s.configPath]);
  t.regex(none.stdout, /nothing to export/);
});

test('a batch carries what sync needs, and the CMS signature verifies with openssl cms', async (t) => {
  const { s, files, devices } = await stationWithBatches([2]);
  t.teardown(() => s.close());
  const lines = readFileSync(files[0]!, 'utf8').trimEnd().split('\n').map((l) => JSON.parse(l));
  t.deepEqual(lines.map((l) => l.type), ['manifest', 'certificates', 'issuance', 'issuance', 'signature']);
  const m = lines[0];
  for (const k of ['format', 'station', 'factory', 'batch', 'first_seq', 'last_seq', 'count', 'chain_before', 'chain_after', 'previous_batch_sha256', 'created_at']) t.true(k in m, k);
  const rec = lines[2];
  t.is(rec.device_id, devices[0]);
  t.is(rec.hardware_id, 'imx8mm');
  t.is(rec.work_order, null); // the station attributes orders; a client never picks one
  t.is(rec.name, rec.device_id);
  t.regex(rec.client_pem, /^-----BEGIN CERTIFICATE-----/);
  for (const k of ['serial', 'not_before', 'not_after', 'issued_at', 'seq', 'entry_hash']) t.true(k in rec, k);
  // OpenSSL, on its own, agrees the signature covers every byte before the last line.
  const text = readFileSync(files[0]!);
  const cut = text.lastIndexOf('\n', text.length - 2) + 1;
  writeFileSync(join(s.dir, 'content'), text.subarray(0, cut));
  writeFileSync(join(s.dir, 'sig.der'), Buffer.from(lines[4].cms, 'base64'));
  const r = execFileSync('openssl', ['cms', '-verify', '-binary', '-inform', 'DER', '-in', join(s.dir, 'sig.der'), '-content', join(s.dir, 'content'), '-CAfile', s.config.ca.station_certificate, '-purpose', 'any', '-out', '/dev/null'], { stdio: ['ignore', 'pipe', 'pipe'] });
  t.is(r.length, 0);
});

test('export --batch N twice gives identical files', async (t) => {
  const { s, stick, files } = await stationWithBatches([2, 2]);
  t.teardown(() => s.close());
  const original = readFileSync(files[0]!);
  rmSync(files[0]!);
  const a = await exportBatch(s.config, { outDir: stick, batch: 1 });
  const first = readFileSync(a!.path);
  const b = await exportBatch(s.config, { outDir: stick, batch: 1 });
  t.deepEqual(readFileSync(b!.path), first);
  t.deepEqual(first, original);
  const err = await t.throwsAsync(exportBatch(s.config, { outDir: stick, batch: 9 }));
  t.regex(err!.message, /no batch 9/);
});

test('changing any byte of a batch makes verify-export fail with a reason', async (t) => {
  const { s, files } = await stationWithBatches([2]);
  t.teardown(() => s.close());
  const original = readFileSync(files[0]!);
  const copy = join(s.dir, 'tampered.lsbatch');
  // Every byte position of a small batch, in steps that visit every line and field.
  const positions = new Set<number>([0, original.length - 1, original.length - 2]);
  for (let i = 0; i < original.length; i += 13) positions.add(i);
  let caught = 0;
  for (const i of positions) {
    const b = Buffer.from(original);
    b[i] = b[i] === 0x41 ? 0x42 : 0x41; // any other byte
    writeFileSync(copy, b);
    const { problems } = await verifyBatches([copy]);
    if (problems.length > 0) caught++;
    else t.fail(`byte ${i} (${JSON.stringify(original.subarray(Math.max(0, i - 20), i + 20).toString())}) changed and nothing noticed`);
    for (const p of problems) t.regex(p, /^tampered\.lsbatch: \S/);
  }
  t.is(caught, positions.size);
  // Truncated: the signature line lost.
  const lines = original.toString().split('\n');
  writeFileSync(copy, lines.slice(0, -2).join('\n') + '\n');
  t.true((await verifyBatches([copy])).problems.some((p) => /no signature/.test(p)));
});

test('a missing batch between two others is a gap; a batch given twice and a wrong pin are reported', async (t) => {
  const { s, files } = await stationWithBatches([1, 1, 1]);
  t.teardown(() => s.close());
  const gap = await verifyBatches([files[0]!, files[2]!]);
  t.true(gap.problems.some((p) => /gap: batch 2 missing between 1 and 3/.test(p)), gap.problems.join('\n'));
  const cliGap = cli(['verify-export', files[0]!, files[2]!]);
  t.is(cliGap.status, 1);
  t.regex(cliGap.stderr, /^ERROR EXPORT .*gap: batch 2 missing/m);
  const twice = join(s.dir, 'copy-of-1.lsbatch');
  copyFileSync(files[0]!, twice);
  t.true((await verifyBatches([files[0]!, twice])).problems.some((p) => /given twice/.test(p)));
  const pinned = await verifyBatches([files[0]!], { stationKey: 'ab'.repeat(32) });
  t.true(pinned.problems.some((p) => /not the pinned one/.test(p)));
  // Another station's batch is refused at its certificates line: none of its records is read (a 300 MB one took 76 s).
  let read = 0;
  const refused = await verifyBatch(files[0]!, { stationKey: 'ab'.repeat(32), onRecord: () => read++ });
  t.true(refused.problems.some((p) => /not the pinned one/.test(p)));
  t.is(read, 0, 'no record read past the unpinned station key');
  const right = await verifyBatches(files, { stationKey: caShow(s.config).station_key.public_key_sha256! });
  t.deepEqual(right.problems, []);
});

test('revocation marks go into the next batch', async (t) => {
  const { s, stick, devices } = await stationWithBatches([2]);
  t.teardown(() => s.close());
  const ledger = new SqliteLedger(s.config.station.ledger, s.config.station.id);
  ledger.revoke(devices[0]!, 'returned to the factory, RMA 12');
  ledger.close();
  const e = await exportBatch(s.config, { outDir: stick });
  t.is(e!.revocations, 1);
  t.is(e!.issuances, 0);
  const lines = readFileSync(e!.path, 'utf8').trimEnd().split('\n').map((l) => JSON.parse(l));
  const rev = lines.find((l) => l.type === 'revocation');
  t.is(rev.device_id, devices[0]);
  t.is(rev.reason, 'returned to the factory, RMA 12');
  t.deepEqual((await verifyBatches([join(stick, `${s.config.station.id}-000001.lsbatch`), e!.path])).problems, []);
});

test("a batch of one genuine record repeated behind its pinned certificates line stops being read once its problems fill the list", async (t) => {
  const { s, files } = await stationWithBatches([2]);
  t.teardown(() => s.close());
  const lines = readFileSync(files[0]!, 'utf8').split('\n');
  const record = lines.find((l) => l.includes('"type":"issuance"'))!;
  const big = join(s.dir, 'copies.lsbatch');
  writeFileSync(big, [lines[0], lines[1], ...Array(5000).fill(record), ''].join('\n'));
  let read = 0;
  const r = await verifyBatch(big, { stationKey: caShow(s.config).station_key.public_key_sha256!, onRecord: () => read++ });
  t.is(r.problems.length, 20);
  t.true(read < 40, `${read} records read of 5,000`);
});
