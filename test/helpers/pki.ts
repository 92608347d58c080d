/**
 * Real parts for tests: a SoftHSM2 token in a temporary folder (one per
 * test process: SoftHSM reads its config once, at C_Initialize), a factory
 * root made by OpenSSL, and stations whose local-ca goes the way a real one
 * does: `ca init` in the token, `openssl x509 -req` by the root's holder,
 * `ca import`.
 */
import { execFileSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadConfig, type StationConfig } from '../../src/config/index.js';
import { caImport, caInit, openStation, type OpenOptions, type OpenStation } from '../../src/station/index.js';

export const TOKEN_LABEL = 'test-token';
export const PIN = '246810';
export const FACTORY = 'acme-factory';
export const SOFTHSM_MODULE = '/usr/lib/softhsm/libsofthsm2.so';

export interface TestPki {
  dir: string;
  conf: string;
  rootKey: string;
  rootPem: string;
  pinFile: string;
}

let pki: TestPki | undefined;

export function openssl(args: string[], input?: string | Uint8Array): Buffer {
  return execFileSync('openssl', args, { input, stdio: ['pipe', 'pipe', 'pipe'] });
}

/** A root CA made by OpenSSL, as a factory's PKI owner would. */
export function makeOpensslRoot(dir: string, base: string, cn = 'Factory-CA', ou = FACTORY): { key: string; pem: string } {
  const key = join(dir, `${base}.key`);
  const pem = join(dir, `${base}.pem`);
  openssl([
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
    '-keyout', key, '-out', pem, '-days', '3650', '-subj', `/CN=${cn}/OU=${ou}`,
    '-addext', 'basicConstraints=critical,CA:TRUE',
    '-addext', 'keyUsage=critical,keyCertSign,cRLSign',
  ]);
  return { key, pem };
}

/** One token and one root for this test process; sets SOFTHSM2_CONF. */
export function testPki(): TestPki {
  if (pki) return pki;
  const dir = mkdtempSync(join(tmpdir(), 'line-signer-test-'));
  const tokens = join(dir, 'tokens');
  mkdirSync(tokens);
  const conf = join(dir, 'softhsm2.conf');
  writeFileSync(conf, `directories.tokendir = ${tokens}\nobjectstore.backend = file\nlog.level = ERROR\n`);
  process.env.SOFTHSM2_CONF = conf;
  execFileSync('softhsm2-util', ['--init-token', '--free', '--label', TOKEN_LABEL, '--so-pin', '13579', '--pin', PIN], {
    env: { ...process.env, SOFTHSM2_CONF: conf },
    stdio: 'ignore',
  });
  // A token of its own for each station this process makes, made now: a process sees only the
  // tokens that existed when it loaded the module. Other tests' serve and sign processes then write
  // other token folders; SoftHSM2 marks its view of a token invalid for good when another process
  // changes that token's folder under it, and refuses every object it is asked to make after.
  for (let i = 0; i < stationTokens; i++) {
    execFileSync('softhsm2-util', ['--init-token', '--free', '--label', `${TOKEN_LABEL}-${i}`, '--so-pin', '13579', '--pin', PIN], {
      env: { ...process.env, SOFTHSM2_CONF: conf },
      stdio: 'ignore',
    });
  }
  const pinFile = join(dir, 'pin');
  writeFileSync(pinFile, PIN, { mode: 0o600 });
  const root = makeOpensslRoot(dir, 'root');
  pki = { dir, conf, rootKey: root.key, rootPem: root.pem, pinFile };
  return pki;
}

let stationTokens = 16;

/** A test file that makes more stations than that: call this at its top, before any station is made. */
export function reserveStationTokens(n: number): void {
  if (pki) throw new Error('reserveStationTokens: call it before the first station is made');
  stationTokens = n;
}

/**
 * The token for the n-th station of this process, its own. Never a shared one: stations of one
 * process writing one token at once (each station's checkpoints) once failed a checkpoint six
 * times over with CKR_GENERAL_ERROR in CI.
 */
function stationToken(n: number): string {
  if (n > stationTokens) throw new Error(`this test file made station ${n}, past the ${stationTokens} tokens made for it: call reserveStationTokens() at the file's top`);
  return `${TOKEN_LABEL}-${n - 1}`;
}

export interface StationOptions {
  production?: boolean;
  factory?: string;
  /** Extra lines for the [policy] table. */
  policy?: string;
  validityDays?: number;
  /** Extra TOML appended at the end ([links], [sota]). */
  extra?: string;
  /** The ledger's path (default: ledger.db in the station's folder). */
  ledger?: string;
  /** Extra lines for the [token] table. */
  token?: string;
}

let stations = 0;

/** Writes a station folder and config whose local-ca key does not exist yet. */
export function stationConfig(opts: StationOptions = {}): { dir: string; configPath: string; config: StationConfig } {
  const p = testPki();
  const n = ++stations;
  const dir = join(p.dir, `station-${n}-${process.pid}`);
  mkdirSync(dir, { recursive: true });
  const configPath = join(dir, 'station.toml');
  writeFileSync(
    configPath,
    `[station]
id = "test-${n}"
factory = "${opts.factory ?? FACTORY}"
production = ${opts.production ?? true}
ledger = "${opts.ledger ?? 'ledger.db'}"

[token]
module = "${SOFTHSM_MODULE}"
token_label = "${stationToken(n)}"
key_label = "ca-${n}-${randomUUID().slice(0, 8)}"
pin_file = "${p.pinFile}"
${opts.token ?? ''}

[ca]
certificate = "local-ca.pem"
root = "${p.rootPem}"
owner = "fio-test${n}"
validity_days = ${opts.validityDays ?? 7300}

[policy]
${opts.policy?.includes('device_id') ? '' : 'device_id = "uuid"'}
${opts.policy ?? ''}
${opts.extra ?? ''}
`,
  );
  return { dir, configPath, config: loadConfig(configPath) };
}

/** The root holder's step: `openssl x509 -req` on the local-ca CSR. */
export function signCaCsrWithOpenssl(
  csrPem: string,
  dir: string,
  root: { key: string; pem: string },
  extensions = 'basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\n',
  days = 3650,
): string {
  const csrPath = join(dir, `ca-${randomUUID()}.csr`);
  const extPath = `${csrPath}.ext`;
  const out = `${csrPath}.pem`;
  writeFileSync(csrPath, csrPem);
  writeFileSync(extPath, `[v3]\n${extensions}subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n`);
  openssl([
    'x509', '-req', '-in', csrPath, '-CA', root.pem, '-CAkey', root.key, '-set_serial', `0x${randomUUID().replace(/-/g, '')}`,
    '-days', String(days), '-extfile', extPath, '-extensions', 'v3', '-out', out,
  ]);
  return out;
}

export interface TestStation extends OpenStation {
  dir: string;
  configPath: string;
  config: StationConfig;
}

/** A station with its local-ca made in the token, signed by OpenSSL, imported, and opened. */
export async function testStation(opts: StationOptions = {}, open: OpenOptions = {}): Promise<TestStation> {
  const p = testPki();
  const s = stationConfig(opts);
  const csr = await caInit(s.config);
  const caPem = signCaCsrWithOpenssl(csr, s.dir, { key: p.rootKey, pem: p.rootPem });
  caImport(s.config, caPem);
  return { ...(await openStation(s.config, open)), ...s };
}

export const uuid = (): string => randomUUID();

export interface OpensslCsrOptions {
  subject?: string;
  newkey?: string[];
  addext?: string[];
  outform?: 'DER' | 'PEM';
}

/** A device CSR made by `openssl req`, as the acceptance test says. */
export function opensslCsr(dir: string, opts: OpensslCsrOptions = {}): { csr: Uint8Array; keyPath: string } {
  const keyPath = join(dir, `dev-${randomUUID()}.key`);
  const args = [
    'req', '-new', ...(opts.newkey ?? ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1']), '-nodes',
    '-keyout', keyPath, '-subj', opts.subject ?? `/CN=${uuid()}/OU=${FACTORY}/businessCategory=production`,
    '-outform', opts.outform ?? 'DER',
  ];
  for (const e of opts.addext ?? []) args.push('-addext', e);
  return { csr: new Uint8Array(openssl(args)), keyPath };
}
