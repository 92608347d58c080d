/**
 * Issue 11: a batch has exactly one valid form, every byte of it; input is
 * bounded; exports never disagree with the ledger; verify-export says `ok`
 * only for a set that passes.
 */
import test from 'ava';
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as asn1js from 'asn1js';
import fc from 'fast-check';
import * as pkijs from 'pkijs';
import { exportBatch, verifyBatch, verifyBatches } from '../src/export/index.js';
import { lines, MAX_LINE_BYTES } from '../src/export/verify.js';
import { SqliteLedger } from '../src/ledger/index.js';
import { caShow } from '../src/station/index.js';
import { issue, stationWithBatches } from './helpers/batches.js';
import { BIN, cli } from './helpers/cli.js';
import { uuid } from './helpers/pki.js';

const P256_N = 0xffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551n;

// A copy: Buffer.slice() is a view into a shared pool, whose .buffer holds other bytes too.
const ab = (b: Uint8Array): ArrayBuffer => new Uint8Array(b).buffer as ArrayBuffer;

function signatureOf(cmsDer: Buffer): { r: bigint; s: bigint; signedData: pkijs.SignedData } {
  const signedData = new pkijs.SignedData({ schema: pkijs.ContentInfo.fromBER(ab(cmsDer)).content });
  const seq = asn1js.fromBER(ab(new Uint8Array(signedData.signerInfos[0]!.signature.valueBlock.valueHexView))).result as asn1js.Sequence;
  const [r, s] = seq.valueBlock.value as asn1js.Integer[];
  const big = (i: asn1js.Integer): bigint => BigInt('0x' + Buffer.from(i.valueBlock.valueHexView).toString('hex'));
  return { r: big(r!), s: big(s!), signedData };
}

/** The same CMS with the signature's other valid twin, (r, n - s). */
function highSTwin(cmsDer: Buffer): Buffer {
  const { r, s, signedData } = signatureOf(cmsDer);
  const int = (v: bigint): asn1js.Integer => {
    let hex = v.toString(16);
    if (hex.length % 2) hex = '0' + hex;
    if (parseInt(hex.slice(0, 2), 16) & 0x80) hex = '00' + hex;
    return new asn1js.Integer({ valueHex: ab(Buffer.from(hex, 'hex')) });
  };
  const twin = new asn1js.Sequence({ value: [int(r), int(P256_N - s)] }).toBER(false);
  signedData.signerInfos[0]!.signature = new asn1js.OctetString({ valueHex: twin });
  return Buffer.from(new pkijs.ContentInfo({ contentType: '1.2.840.113549.1.7.2', content: signedData.toSchema(true) }).toSchema().toBER(false));
}

test('export signs low-S, and the high-S twin of its signature is refused although OpenSSL accepts it', async (t) => {
  const { s, files } = await stationWithBatches([1, 1, 1, 1, 1, 1, 1, 1, 1, 1]);
  t.teardown(() => s.close());
  for (const f of files) {
    const last = readFileSync(f, 'utf8').trimEnd().split('\n').pop()!;
    const { s: sv } = signatureOf(Buffer.from(JSON.parse(last).cms, 'base64'));
    t.true(sv <= P256_N / 2n, `${f}: high S`);
  }
  const text = readFileSync(files[1]!);
  const cut = text.lastIndexOf('\n', text.length - 2) + 1;
  const cms = Buffer.from(JSON.parse(text.subarray(cut).toString()).cms, 'base64');
  const twin = highSTwin(cms);
  // A genuine twin: OpenSSL, on its own, verifies it.
  const dir = mkdtempSync(join(tmpdir(), 'twin-'));
  writeFileSync(join(dir, 'content'), text.subarray(0, cut));
  writeFileSync(join(dir, 'sig.der'), twin);
  execFileSync('openssl', ['cms', '-verify', '-binary', '-inform', 'DER', '-in', join(dir, 'sig.der'), '-content', join(dir, 'content'), '-CAfile', s.config.ca.station_certificate, '-purpose', 'any', '-out', '/dev/null'], { stdio: 'ignore' });
  const malleated = join(dir, 'batch-2.lsbatch');
  writeFileSync(malleated, Buffer.concat([text.subarray(0, cut), Buffer.from(`{"type":"signature","cms":"${twin.toString('base64')}"}\n`)]));
  const { problems } = await verifyBatches([files[0]!, malleated, files[2]!], { stationKey: caShow(s.config).station_key.sha256! });
  t.true(problems.some((p) => /batch-2\.lsbatch: .*low-S/.test(p)), problems.join('\n'));
});

test('the signature line has exactly one form, and nothing follows it', async (t) => {
  const { s, files } = await stationWithBatches([1]);
  t.teardown(() => s.close());
  const text = readFileSync(files[0]!, 'utf8');
  const cut = text.lastIndexOf('\n', text.length - 2) + 1;
  const content = text.slice(0, cut);
  const b64 = JSON.parse(text.slice(cut)).cms as string;
  const escaped = b64.replace(/[A-Za-z]/, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
  const variants: Record<string, string> = {
    spaces: `{"type": "signature", "cms": "${b64}"}\n`,
    'key order': `{"cms":"${b64}","type":"signature"}\n`,
    'extra field': `{"type":"signature","cms":"${b64}","note":"x"}\n`,
    'duplicate keys': `{"type":"signature","cms":"AAAA","cms":"${b64}"}\n`,
    'a \\u escape inside cms': `{"type":"signature","cms":"${escaped}"}\n`,
    'no final newline': `{"type":"signature","cms":"${b64}"}`,
    'CRLF': `{"type":"signature","cms":"${b64}"}\r\n`,
    'an empty line after it': `{"type":"signature","cms":"${b64}"}\n\n`,
    'a record after it': `{"type":"signature","cms":"${b64}"}\n{"type":"revocation"}\n`,
  };
  const dir = mkdtempSync(join(tmpdir(), 'sigline-'));
  const good = await verifyBatches([files[0]!]);
  t.deepEqual(good.problems, []);
  for (const [what, line] of Object.entries(variants)) {
    const f = join(dir, 'b.lsbatch');
    writeFileSync(f, content + line);
    const { problems } = await verifyBatches([f]);
    t.true(problems.length > 0, `${what}: accepted`);
  }
});

/** Runs verify-export in its own process; null when it did not finish within `ms`. */
function verifyExportWithin(args: string[], ms: number): Promise<{ status: number | null; stderr: string } | null> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [BIN, 'verify-export', ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      resolve(null);
    }, ms);
    child.on('close', (status) => {
      clearTimeout(timer);
      resolve({ status, stderr });
    });
  });
}

test('verify-export refuses /dev/zero, a FIFO and a line over 1 MiB at once', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'bounded-'));
  const fifo = join(dir, 'fifo');
  execFileSync('mkfifo', [fifo]);
  const long = join(dir, 'long.lsbatch');
  writeFileSync(long, Buffer.alloc(3 * MAX_LINE_BYTES, 0x41));
  for (const [f, why] of [['/dev/zero', /not a regular file/], [fifo, /not a regular file/], [long, /longer than 1048576 bytes/]] as const) {
    const r = await verifyExportWithin([f], 10_000);
    t.not(r, null, `${f}: still reading after 10 s`);
    t.is(r?.status, 1, f);
    t.regex(r?.stderr ?? '', why);
  }
});

test('the line reader splits any file exactly as split("\\n") does, across chunk boundaries', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'lines-'));
  await fc.assert(
    fc.asyncProperty(fc.array(fc.integer({ min: 0, max: 400_000 }), { minLength: 1, maxLength: 12 }), fc.boolean(), async (lengths, finalNewline) => {
      const parts = lengths.map((n, i) => Buffer.alloc(n, 0x61 + (i % 26)));
      const data = Buffer.concat(parts.flatMap((p, i) => (i < parts.length - 1 || finalNewline ? [p, Buffer.from('\n')] : [p])));
      const f = join(dir, 'f');
      writeFileSync(f, data);
      const got: Buffer[] = [];
      for await (const l of lines(f)) got.push(l);
      const expected: Buffer[] = [];
      let at = 0;
      while (at < data.length) {
        const lf = data.indexOf(0x0a, at);
        const end = lf === -1 ? data.length : lf + 1;
        expected.push(data.subarray(at, end));
        at = end;
      }
      return got.length === expected.length && got.every((g, i) => g.equals(expected[i]!));
    }),
    { numRuns: 30 },
  );
  t.pass();
});

test('an export that loses the race for its batch number leaves no file: disk and ledger agree', async (t) => {
  const { s, stick } = await stationWithBatches([1]);
  t.teardown(() => s.close());
  await issue(s, uuid());
  const err = await t.throwsAsync(
    exportBatch(s.config, {
      outDir: stick,
      // While this export writes batch 2, another one records batch 2 first.
      onProgress: () => {
        const other = new SqliteLedger(s.config.station.ledger, s.config.station.id);
        try {
          if (!other.batch(2)) other.recordBatch({ ...other.batch(1)!, number: 2, firstSeq: 2, lastSeq: 2, signature: new Uint8Array([1]), fileSha256: 'f'.repeat(64) });
        } finally {
          other.close();
        }
      },
    }),
  );
  t.regex(err!.message, /batch 2 was recorded by another export/);
  t.deepEqual(readdirSync(stick).sort(), [`${s.config.station.id}-000001.lsbatch`]);
  t.false(existsSync(join(stick, `${s.config.station.id}-000002.lsbatch`)));
});

test('verify-export prints ok only for files of a set that passes, and says so for the set', async (t) => {
  const { s, files } = await stationWithBatches([1, 1, 1]);
  t.teardown(() => s.close());
  const good = cli(['verify-export', ...files]);
  t.is(good.status, 0);
  t.is(good.stdout.match(/^ok /gm)!.length, 3);
  t.regex(good.stdout, /^set ok: 3 batches$/m);
  const gap = cli(['verify-export', files[0]!, files[2]!]);
  t.is(gap.status, 1);
  t.notRegex(gap.stdout, /^ok /m);
  t.regex(gap.stdout, /^FAILED .*000001\.lsbatch: passes on its own, but the set/m);
  t.regex(gap.stdout, /^set FAILED/m);
});

test('a signature re-encoded with a padded INTEGER (BER, not DER) is refused, though its signature still verifies', async (t) => {
  const { s, files } = await stationWithBatches([1]);
  t.teardown(() => s.close());
  const text = readFileSync(files[0]!, 'utf8');
  const lines = text.trimEnd().split('\n');
  const cms = Buffer.from((JSON.parse(lines.at(-1)!) as { cms: string }).cms, 'base64');
  const ci = pkijs.ContentInfo.fromBER(cms.buffer.slice(cms.byteOffset, cms.byteOffset + cms.length));
  const sd = ci.content as InstanceType<typeof asn1js.Sequence>;
  t.true(sd.valueBlock.value[0] instanceof asn1js.Integer, 'SignedData starts with its version');
  sd.valueBlock.value[0] = new asn1js.Integer({ valueHex: new Uint8Array([0x00, 0x01]).buffer }); // version 1 as 02 02 00 01
  const padded = Buffer.from(new pkijs.ContentInfo({ contentType: ci.contentType, content: sd }).toSchema().toBER(false));
  t.notDeepEqual(padded, cms);
  lines[lines.length - 1] = JSON.stringify({ type: 'signature', cms: padded.toString('base64') });
  const bad = join(s.dir, 'padded.lsbatch');
  writeFileSync(bad, lines.join('\n') + '\n');
  const r = await verifyBatch(bad, { stationKey: caShow(s.config).station_key.sha256! });
  t.true(r.problems.some((p) => /not encoded as line-signer writes it|not in DER/.test(p)), JSON.stringify(r.problems));
});
