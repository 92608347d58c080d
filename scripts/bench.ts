/**
 * line-signer's figures, measured side by side in one run on a throwaway
 * SoftHSM2 token. Prints a table; never asserts. Run with scripts/bench.
 *
 *   (a) raw token ECDSA signatures per second
 *   (b) full pipeline certificates per second: parse and verify the CSR,
 *       policy, build, token signature, verify, durable ledger commit
 *       (one transaction, synchronous FULL, per certificate)
 *   (d) the same steps on one thread, one after another: each step's cost
 *       and what two cores could do at best
 *   (c) the script a factory would write: `openssl x509 -req` with the same
 *       token key through OpenSSL's PKCS#11 engine, one process a certificate
 */
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { createHash, randomUUID } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { loadConfig, readPin } from '../src/config/index.js';
import { caShow, localCaFrom, openStation, openToken, readCertificateFile } from '../src/station/index.js';
import { SqliteLedger, type GroupWrite } from '../src/ledger/index.js';
import { WorkerSigner } from '../src/token/index.js';
import { buildTbs, canonicalSpki, csrPublicKey, finishCertificate, makeDeviceCsr, newSerial, OID, parseCsr, pemEncode, serialHex, verifyCsrSignature } from '../src/x509/index.js';
import { benchStation, fmt, percentile, pool } from './bench-lib.js';
import { SerialLink } from '../src/links/index.js';
import { HttpLink } from '../src/links/http.js';
import { referenceProblem, startReference } from './reference-server.js';

async function until(cond: () => boolean, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('bench: timed out waiting');
    await new Promise((r) => setTimeout(r, 20));
  }
}

const argv = process.argv.slice(2);
const args = new Set(argv);
const quick = args.has('--quick');
/**
 * A factory-registration-ref checkout: its server is measured beside the HTTP link (reference-server.ts).
 * Relative to where scripts/bench was started (it moves to the project's folder), checked before anything runs.
 */
const referenceArg = args.has('--reference') ? argv[argv.indexOf('--reference') + 1] : undefined;
if (args.has('--reference') && (!referenceArg || referenceArg.startsWith('--'))) {
  console.error('bench: --reference needs the folder of a factory-registration-ref checkout');
  process.exit(64);
}
const referenceDir = referenceArg === undefined ? undefined : resolve(process.env.LINE_SIGNER_BENCH_CWD ?? process.cwd(), referenceArg);
const referenceBad = referenceDir === undefined ? null : referenceProblem(referenceDir);
if (referenceBad) {
  console.error(`bench: ${referenceBad}`);
  process.exit(64);
}
const N = quick ? 1000 : 5000;
const OPENSSL_N = quick ? 30 : 100;

const rows: Array<[string, string]> = [];
const say = (label: string, value: string): void => {
  rows.push([label, value]);
  console.log(`  ${label.padEnd(58)} ${value}`);
};

console.log(`line-signer benchmark: node ${process.version}, ${(await import('node:os')).cpus().length} cores, SoftHSM2`);
const { dir, config } = await benchStation('', { keep: true });
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
  const cpu0 = process.cpuUsage();
  const par = await pool(N, 8, handle);
  const cpu = process.cpuUsage(cpu0);
  pipelineRate = N / par;
  say('(b) pipeline certificates/s, 8 requests in flight', fmt(pipelineRate));
  say('    CPU per certificate, all threads (ms)', fmt((cpu.user + cpu.system) / 1000 / N, 2));
  say('    of which issued and committed (group commit: one flush per group)', fmt(open.ledger.issuedCount()));
  await open.close();
}

// (d) The same steps on one thread, one after another, no station around
// them: what each costs in CPU, and so what two cores could do at best.
{
  const M = quick ? 1000 : 3000;
  const csrs = Array.from({ length: M + 200 }, device);
  const token = openToken(config);
  const signer = token.signer(config.token.key_label, true);
  const caDer = readCertificateFile(config.ca.certificate, 'local-ca certificate');
  const ca = localCaFrom(caDer, config.ca.validity_days);
  const caKey = signer.publicKey();
  const ledger = new SqliteLedger(join(dir, 'steps.db'), 'bench-steps');
  const steps = { parse: 0, proof: 0, build: 0, sign: 0, check: 0, commit: 0 };
  let group: GroupWrite[] = [];
  const run = async (i: number, count: boolean): Promise<void> => {
    let t = process.hrtime.bigint();
    const lap = (k: keyof typeof steps): void => {
      const now = process.hrtime.bigint();
      if (count) steps[k] += Number(now - t) / 1e3;
      t = now;
    };
    const der = csrs[i]!;
    const csr = parseCsr(der);
    lap('parse');
    verifyCsrSignature(csr, await csrPublicKey(csr));
    lap('proof');
    const now = new Date();
    const facts = { serial: newSerial(), notBefore: now, subject: csr.subject.map((a) => ({ type: a.type, value: a.value ?? '' })), spki: canonicalSpki(csr), publicKeyBits: csr.publicKeyBits };
    const tbs = buildTbs(ca.profile, facts);
    const digest = createHash(ca.profile.hash).update(tbs).digest();
    lap('build');
    const signature = await signer.sign(digest);
    lap('sign');
    const certificate = finishCertificate(tbs, signature, ca.profile, caKey, facts);
    lap('check');
    const deviceId = csr.subject.find((a) => a.type === OID.commonName)?.value ?? '';
    group.push({
      op: 'issuance',
      entry: {
        serial: serialHex(facts.serial), deviceId, subject: deviceId, publicKeySha256: createHash('sha256').update(facts.spki).digest('hex'),
        csrSha256: createHash('sha256').update(der).digest('hex'), certificate, notBefore: now.toISOString(), notAfter: now.toISOString(), issuedAt: now.toISOString(), link: 'bench', name: deviceId,
      },
    });
    if (group.length === 8) {
      for (const r of ledger.commitGroup(group)) if (!r.ok) throw r.error;
      group = [];
    }
    lap('commit');
  };
  for (let i = 0; i < 200; i++) await run(i, false);
  const cpu0 = process.cpuUsage();
  for (let i = 200; i < M + 200; i++) await run(i, true);
  const cpu = process.cpuUsage(cpu0);
  ledger.close();
  token.close();
  const total = Object.values(steps).reduce((a, b) => a + b, 0) / M;
  say('(d) one thread, step by step: µs per certificate', Object.entries(steps).map(([k, v]) => `${k} ${fmt(v / M)}`).join(', '));
  say('    total (wall / CPU), and two cores at best (certs/s)', `${fmt(total)} / ${fmt((cpu.user + cpu.system) / M)} µs, ${fmt(2e6 / total)}`);
}

// A slow token, as a real HSM's sessions are (50 ms a signature each): 1 session against 4, side by side.
{
  const rate = async (sessions: number): Promise<number> => {
    const path = join(dir, `station-s${sessions}.toml`);
    writeFileSync(
      path,
      readFileSync(join(dir, 'station.toml'), 'utf8')
        .replace('ledger = "ledger.db"', `ledger = "ledger-s${sessions}.db"`)
        .replace(/^id = "(.*)"$/m, `id = "$1-s${sessions}"`)
        .replace(/^\[token\]$/m, `[token]\nsessions = ${sessions}`),
    );
    const open = await openStation(loadConfig(path), { slowSessionMs: 50 });
    const M = quick ? 40 : 120;
    const csrs = Array.from({ length: M + 8 }, device);
    let i = 0;
    const handle = async (): Promise<void> => {
      const r = await open.station.handle({ csr: csrs[i++]!, link: 'bench' });
      if (!r.ok) throw new Error(`bench: ${r.message}`);
    };
    await pool(8, 8, handle);
    const seconds = await pool(M, 8, handle);
    await open.close();
    return M / seconds;
  };
  const one = await rate(1);
  const four = await rate(4);
  say('slow token (50 ms/signature/session): certs/s with 1 / 4 sessions', `${fmt(one, 1)} / ${fmt(four, 1)}`);
  say('    4 sessions / 1 session', `${fmt(four / one, 2)}x`);
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

// Links: J1 over pseudo-terminals and HTTP as lmp-device-register uses it
{
  const open = await openStation(config);
  const serviceTimes: number[] = [];
  const ptys: Array<{ station: string; jig: string; kill: () => void }> = [];
  for (let i = 0; i < 8; i++) {
    const station = join(dir, `tty${i}-station`);
    const jig = join(dir, `tty${i}-jig`);
    const p = spawn('socat', [`pty,raw,echo=0,link=${station}`, `pty,raw,echo=0,link=${jig}`], { stdio: 'ignore' });
    ptys.push({ station, jig, kill: () => p.kill() });
  }
  await until(() => ptys.every((p) => existsSync(p.station) && existsSync(p.jig)));
  const links = ptys.map(
    (p) => new SerialLink(open.station, { path: p.station, baud: 115200, idleTimeoutMs: 10_000, onServiceTime: (ms) => serviceTimes.push(ms) }),
  );
  await Promise.all(links.map((l) => l.start()));
  await until(() => links.every((l) => l.status.state === 'open'));
  const M = quick ? 500 : 2000;
  // The jigs run in their own process: their CSR making and memory are not the station's.
  // Asynchronous: this process is the station those jigs talk to.
  const jig = (mode: 'ping' | 'sign', n: number, which: typeof ptys): Promise<number> =>
    new Promise((resolve, reject) => {
      const child = spawn(process.execPath, [join(import.meta.dirname, 'bench-jig.js'), mode, String(n), config.station.factory, ...which.map((p) => p.jig)], { stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '';
      let err = '';
      child.stdout.on('data', (d) => (out += d));
      child.stderr.on('data', (d) => (err += d));
      child.on('close', (code) => {
        if (code !== 0) return reject(new Error(`bench: jig failed: ${err}`));
        const r = JSON.parse(out) as { seconds: number; requests: number };
        resolve(r.requests / r.seconds);
      });
    });
  say('J1 PING round trips/s, one pseudo-terminal', fmt(await jig('ping', M, ptys.slice(0, 1))));
  serviceTimes.length = 0;
  say('J1 SIGN round trips/s (certificates), one pseudo-terminal', fmt(await jig('sign', M, ptys.slice(0, 1))));
  const one = [...serviceTimes].sort((a, b) => a - b);
  // Issue 10's target is for four links at once; eight show what more links add.
  say('J1 SIGN round trips/s (certificates), four at once', fmt(await jig('sign', M, ptys.slice(0, 4))));
  serviceTimes.length = 0;
  say('J1 SIGN round trips/s (certificates), eight at once', fmt(await jig('sign', M, ptys)));
  const eight = [...serviceTimes].sort((a, b) => a - b);
  say('station time per SIGN, one link: p50 / p99 (ms)', `${fmt(percentile(one, 50), 2)} / ${fmt(percentile(one, 99), 2)}`);
  say('station time per SIGN, eight links: p50 / p99 (ms)', `${fmt(percentile(eight, 50), 2)} / ${fmt(percentile(eight, 99), 2)}`);
  await Promise.all(links.map((l) => l.stop()));
  for (const p of ptys) p.kill();

  const http = new HttpLink(open.station, { listen: '127.0.0.1:0', sota: { gateway: 'https://ota-lite.example:8443', ostree: 'https://ota-lite.example:8443/treehub' } });
  await http.start();
  const H = quick ? 300 : 1000;
  // The clients run in a process of their own, as the jigs do: their work is not the station's.
  const clients = (count: number, n: number, port = http.port): Promise<number> =>
    new Promise((resolve, reject) => {
      const child = spawn(process.execPath, [join(import.meta.dirname, 'bench-http.js'), String(port), String(count), String(n), config.station.factory], { stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '';
      let err = '';
      child.stdout.on('data', (d) => (out += d));
      child.stderr.on('data', (d) => (err += d));
      child.on('close', (code) => {
        if (code !== 0) return reject(new Error(`bench: HTTP clients failed: ${err}`));
        const r = JSON.parse(out) as { seconds: number; requests: number };
        resolve(r.requests / r.seconds);
      });
    });
  say('HTTP /sign certificates/s, one client, new connection each', fmt(await clients(H, 1)));
  say('HTTP /sign certificates/s, eight such clients', fmt(await clients(8 * H, 8)));
  if (referenceDir) {
    // Issue 10's ratios, measured as its reference figures were: the same client, the two servers
    // taking turns, three rounds, so that the machine's mood of the moment is the same for both.
    const reference = await startReference(referenceDir, config.station.factory);
    try {
      await clients(200, 8, reference.port); // warm-up: gunicorn's workers import and cache the local-ca
      const R = quick ? 1 : 3;
      for (const n of [1, 8]) {
        const count = (n === 1 ? 1 : 4) * H;
        const ours: number[] = [];
        const theirs: number[] = [];
        // Server CPU a certificate, every thread and process: this one is the station's alone while its clients run.
        const oursCpu: number[] = [];
        const theirsCpu: number[] = [];
        const ourTurn = async (): Promise<void> => {
          const u = process.cpuUsage();
          ours.push(await clients(count, n));
          const used = process.cpuUsage(u);
          oursCpu.push((used.user + used.system) / 1000 / count);
        };
        const theirTurn = async (): Promise<void> => {
          const t = reference.cpuMs();
          theirs.push(await clients(count, n, reference.port));
          theirsCpu.push((reference.cpuMs() - t) / count);
        };
        // Each goes first in turn.
        for (let round = 0; round < R; round++) {
          if (round % 2 === 0) {
            await ourTurn();
            await theirTurn();
          } else {
            await theirTurn();
            await ourTurn();
          }
        }
        const ratios = ours.map((x, i) => x / theirs[i]!);
        const range = (xs: number[], digits = 0): string => (xs.length === 1 ? fmt(xs[0]!, digits) : `${fmt(Math.min(...xs), digits)}-${fmt(Math.max(...xs), digits)}`);
        const who = n === 1 ? 'one client' : 'eight clients';
        say(`HTTP side by side, ${who}, ${R} round${R === 1 ? '' : 's'}: station / reference / ratio`, `${range(ours)} / ${range(theirs)} / ${range(ratios, 2)}x`);
        say(`    server CPU a certificate (ms): station / reference`, `${range(oursCpu, 2)} / ${range(theirsCpu, 2)}`);
      }
    } finally {
      await reference.stop();
    }
  }
  await http.stop();
  await open.close();
}

// Export and verify at scale, each in its own process so its peak memory is its own
{
  const K = quick ? 10_000 : 100_000;
  // Same token and keys (SoftHSM is initialised once per process), a ledger of its own.
  const bigConfigPath = join(dir, 'station-big.toml');
  writeFileSync(bigConfigPath, readFileSync(join(dir, 'station.toml'), 'utf8').replace('ledger = "ledger.db"', 'ledger = "ledger-big.db"').replace(/^id = "(.*)"$/m, 'id = "$1-big"'));
  const big = { dir, configPath: bigConfigPath, config: loadConfig(bigConfigPath) };
  // In a process of its own with the station's Node flags: RSS is the whole process's,
  // and what this one did before (sections above) would count in it.
  const flags = /^#!.*node (.*)$/m.exec(readFileSync(join(import.meta.dirname, '../../bin/line-signer.js'), 'utf8'))![1]!.split(' ');
  const child = spawnSync(process.execPath, [...flags, '--expose-gc', join(import.meta.dirname, 'bench-rss.js'), bigConfigPath, String(K)], { encoding: 'utf8' });
  if (child.status !== 0) throw new Error(`bench: memory run failed: ${child.stderr}`);
  const mem = JSON.parse(child.stdout) as { at1k: number; atK: number };
  say(`station RSS after 1,000 / ${fmt(K)} issuances (MB), a process of its own`, `${fmt(mem.at1k)} / ${fmt(mem.atK)} (+${fmt(mem.atK - mem.at1k)})`);
  const stick = join(big.dir, 'stick');
  mkdirSync(stick, { recursive: true });
  const run = (args: string[]): { seconds: number; rssMb: number; out: string } => {
    const t0 = process.hrtime.bigint();
    const r = spawnSync(process.execPath, ['--require', join(import.meta.dirname, '../../scripts/rss-report.cjs'), join(import.meta.dirname, '../../bin/line-signer.js'), ...args], { encoding: 'utf8' });
    const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
    if (r.status !== 0) throw new Error(`bench: ${args[0]} failed: ${r.stderr}`);
    const kb = Number(/maxrss_kb=(\d+)/.exec(r.stderr)?.[1] ?? NaN);
    return { seconds, rssMb: kb / 1024, out: r.stdout };
  };
  const exp = run(['export', '--out', stick, '--config', big.configPath]);
  say(`export of ${fmt(K)} issuances: records/s, peak memory`, `${fmt(K / exp.seconds)}/s, ${fmt(exp.rssMb)} MB`);
  const file = /\n {2}(\/\S+\.lsbatch)\n/.exec(exp.out)![1]!;
  const ver = run(['verify-export', file, '--station-key', caShow(big.config).station_key.sha256!]);
  say(`verify-export of ${fmt(K)} issuances: records/s, peak memory`, `${fmt(K / ver.seconds)}/s, ${fmt(ver.rssMb)} MB`);
  say('    batch file size', `${fmt(statSync(file).size / 1e6, 1)} MB`);
}

const summary = JSON.stringify(Object.fromEntries(rows));
writeFileSync(join(dir, 'bench.json'), summary);
console.log(`\nfigures also in ${join(dir, 'bench.json')}`);

