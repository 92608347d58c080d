/**
 * line-signer's figures, measured side by side in one run on a throwaway
 * SoftHSM2 token. Prints a table; never asserts. Run with scripts/bench.
 *
 *   (a) raw token ECDSA signatures per second
 *   (b) full pipeline certificates per second: parse and verify the CSR,
 *       policy, build, token signature, verify, durable ledger commit
 *       (one transaction, synchronous FULL, per certificate)
 *   (c) the script a factory would write: `openssl x509 -req` with the same
 *       token key through OpenSSL's PKCS#11 engine, one process a certificate
 */
import { execFileSync } from 'node:child_process';
import { createHash, randomUUID } from 'node:crypto';
import { writeFileSync } from "node:fs";
import { join } from 'node:path';
import { readPin } from '../src/config/index.js';
import { openStation, openToken } from '../src/station/index.js';
import { WorkerSigner } from '../src/token/index.js';
import { makeDeviceCsr, pemEncode } from '../src/x509/index.js';
import { benchStation, fmt, pool } from './bench-lib.js';

const args = new Set(process.argv.slice(2));
const quick = args.has('--quick');
const N = quick ? 1000 : 5000;
const OPENSSL_N = quick ? 30 : 100;

const rows: Array<[string, string]> = [];
const say = (label: string, value: string): void => {
  rows.push([label, value]);
  console.log(`  ${label.padEnd(58)} ${value}`);
};

console.log(`line-signer benchmark: node ${process.version}, ${(await import('node:os')).cpus().length} cores, SoftHSM2`);
const { dir, config } = await benchStation();
const device = () => makeDeviceCsr({ deviceId: randomUUID(), factory: config.station.factory, production: true }).der;

// (a) raw token signatures
{
  const token = openToken(config);
  const signer = token.signer(config.token.key_label);
  const digest = createHash('sha256').update('bench').digest();
  for (let i = 0; i < 200; i++) await signer.sign(digest);
  const seq = await pool(N, 1, () => signer.sign(digest));
  say('(a) token signatures/s, one at a time (async C_Sign)', fmt(N / seq));
  const key = token.findKey(config.token.key_label)!;
  token.close();
  const worker = new WorkerSigner(
    { module: config.token.module, tokenLabel: config.token.token_label, pin: readPin(config.token), softhsm2Conf: config.token.softhsm2_conf, keyLabel: config.token.key_label },
    key,
  );
  for (let i = 0; i < 200; i++) await worker.sign(digest);
  const par = await pool(N, 8, () => worker.sign(digest));
  say('(a) token signatures/s, signing worker, 8 in flight', fmt(N / par));
  await worker.close();
}

// (b) the full pipeline
let pipelineRate = 0;
{
  const open = await openStation(config);
  const csrs = Array.from({ length: 2 * N + 400 }, device);
  let next = 0;
  const handle = async (): Promise<void> => {
    const r = await open.station.handle({ csr: csrs[next++]!, link: 'bench' });
    if (!r.ok || r.replayed) throw new Error(`bench: ${r.ok ? 'unexpected replay' : r.message}`);
  };
  await pool(400, 8, handle); // warm-up: JIT, WAL file, worker threads
  const seq = await pool(N, 1, handle);
  say('(b) pipeline certificates/s, one request at a time', fmt(N / seq));
  const par = await pool(N, 8, handle);
  pipelineRate = N / par;
  say('(b) pipeline certificates/s, 8 requests in flight', fmt(pipelineRate));
  say('    of which issued and committed, one durable commit each', fmt(open.ledger.issuedCount()));
  await open.close();
}

// (c) openssl x509 -req through the PKCS#11 engine, one process a certificate
let opensslRate = 0;
{
  const engineConf = join(dir, 'engine.cnf');
  writeFileSync(
    engineConf,
    `openssl_conf = openssl_init
[openssl_init]
engines = engine_section
[engine_section]
pkcs11 = pkcs11_section
[pkcs11_section]
engine_id = pkcs11
dynamic_path = /usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so
MODULE_PATH = ${config.token.module}
init = 0
`,
  );
  const ext = join(dir, 'device.ext');
  writeFileSync(ext, 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=critical,clientAuth\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n');
  const pin = readPin(config.token);
  const files = Array.from({ length: OPENSSL_N }, (_, i) => {
    const f = join(dir, `openssl-${i}.csr`);
    writeFileSync(f, pemEncode(device(), 'CERTIFICATE REQUEST'));
    return f;
  });
  const env = { ...process.env, OPENSSL_CONF: engineConf, SOFTHSM2_CONF: config.token.softhsm2_conf };
  const t0 = process.hrtime.bigint();
  for (const [i, f] of files.entries()) {
    execFileSync(
      'openssl',
      ['x509', '-req', '-in', f, '-CA', config.ca.certificate, '-CAkeyform', 'engine', '-engine', 'pkcs11',
        '-CAkey', `pkcs11:token=${config.token.token_label};object=${config.token.key_label};type=private;pin-value=${pin}`,
        '-set_serial', `0x${(i + 1).toString(16)}`, '-days', '7300', '-extfile', ext, '-out', `${f}.pem`],
      { env, stdio: ['ignore', 'ignore', 'ignore'] },
    );
  }
  opensslRate = OPENSSL_N / (Number(process.hrtime.bigint() - t0) / 1e9);
  const check = execFileSync('openssl', ['verify', '-CAfile', config.ca.root, '-untrusted', config.ca.certificate, `${files[0]}.pem`]).toString();
  if (!/: OK/.test(check)) throw new Error('bench: the openssl-signed certificate does not verify');
  say('(c) openssl x509 -req + PKCS#11 engine, certificates/s', fmt(opensslRate, 1));
  say('(b)/(c) ratio, 8 in flight', `${fmt(pipelineRate / opensslRate, 1)}x`);
}

const summary = JSON.stringify(Object.fromEntries(rows));
writeFileSync(join(dir, 'bench.json'), summary);
console.log(`\nfigures also in ${join(dir, 'bench.json')}`);

