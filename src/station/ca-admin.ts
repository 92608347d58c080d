/**
 * The local-ca's lifecycle: make its key and CSR in the token, import the
 * certificate the factory root's holder signed, show what is installed,
 * and (development only) make a whole throwaway PKI.
 */
import { execFileSync } from 'node:child_process';
import { createPrivateKey, randomBytes, X509Certificate } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { readPin, type StationConfig } from '../config/index.js';
import { LineSignerError } from '../errors.js';
import { writeFileAtomic } from '../files.js';
import { SqliteLedger } from '../ledger/index.js';
import {
  certificateDer,
  checkLocalCa,
  makeCaCsr,
  makeThrowawayRoot,
  pemDecodeAll,
  pemEncode,
  sha256Hex,
  signCaCsrWithRoot,
  makeSelfSignedCertificate,
} from '../x509/index.js';
import type { Pkcs11Token } from '../token/index.js';
import { openToken, readCertificateFile } from './open.js';

/** `ca init`: the local-ca key, made inside the token, and its CSR (PEM); the station key too when missing. */
export async function caInit(config: StationConfig): Promise<string> {
  const token = openToken(config);
  try {
    token.generateKey(config.token.key_label);
    const csr = await makeCaCsr(token.signer(config.token.key_label), config.ca.owner, config.station.factory);
    await ensureStationKey(token, config);
    return pemEncode(csr, 'CERTIFICATE REQUEST');
  } finally {
    token.close();
  }
}

/**
 * The station key signs exports and nothing else (the local-ca key only
 * signs certificates). Makes the key when missing, and its self-signed
 * certificate when that file is missing. Returns what it made.
 */
async function ensureStationKey(token: Pkcs11Token, config: StationConfig): Promise<string[]> {
  const made: string[] = [];
  if (!token.findKey(config.token.station_key_label)) {
    token.generateKey(config.token.station_key_label);
    made.push(`station key "${config.token.station_key_label}" in the token`);
  }
  if (!existsSync(config.ca.station_certificate)) {
    const der = await makeSelfSignedCertificate(
      token.signer(config.token.station_key_label),
      `line-signer station ${config.station.id}`,
      config.station.factory,
    );
    writeFileAtomic(config.ca.station_certificate, pemEncode(der, 'CERTIFICATE'));
    made.push(`station key certificate ${config.ca.station_certificate}`);
  }
  return made;
}

/** `station-key init`: the export-signing key for a station whose local-ca exists already. */
export async function stationKeyInit(config: StationConfig): Promise<{ made: string[]; sha256: string }> {
  const token = openToken(config);
  try {
    if (token.findKey(config.token.station_key_label) && existsSync(config.ca.station_certificate)) {
      throw new LineSignerError('CA', `the station key "${config.token.station_key_label}" and its certificate exist already`);
    }
    const made = await ensureStationKey(token, config);
    return { made, sha256: sha256Hex(readCertificateFile(config.ca.station_certificate, 'station key certificate')) };
  } finally {
    token.close();
  }
}

/** `ca import`: checks a local-ca certificate against the profile and installs it. */
export function caImport(config: StationConfig, file: string): X509Certificate {
  let bytes: Buffer;
  try {
    bytes = readFileSync(file);
  } catch (err) {
    throw new LineSignerError('CA', `cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? 'error'}`);
  }
  const der = certificateDer(new Uint8Array(bytes), file);
  const rootDer = readCertificateFile(config.ca.root, 'factory root');
  const token = openToken(config);
  let checked: X509Certificate;
  try {
    const key = token.findKey(config.token.key_label);
    if (!key) throw new LineSignerError('CA', `the token has no key "${config.token.key_label}"; run \`line-signer ca init\` first`);
    checked = checkLocalCa(der, { tokenSpki: key.spki, rootDer, factory: config.station.factory, now: new Date() });
  } finally {
    token.close();
  }
  writeFileAtomic(config.ca.certificate, pemEncode(der, 'CERTIFICATE'));
  const ledger = new SqliteLedger(config.station.ledger, config.station.id);
  try {
    ledger.appendEvent({ kind: 'ca_import', message: `local-ca ${sha256Hex(der)} ${checked.subject.replace(/\n/g, ',')}` });
  } finally {
    ledger.close();
  }
  return checked;
}

export interface CaShow {
  config: string;
  station_key: { label: string; key_found: boolean; certificate: string; sha256: string | null; public_key_sha256: string | null };
  token: { module: string; label: string; found: boolean; key_label: string; key_found: boolean; error?: string };
  local_ca:
    | {
        path: string;
        subject: string;
        issuer: string;
        sha256: string;
        not_before: string;
        not_after: string;
        matches_token_key: boolean | null;
      }
    | { path: string; error: string };
}

/** `ca show`: what is installed, and whether the token and its key are there. */
export function caShow(config: StationConfig): CaShow {
  const token: CaShow['token'] = {
    module: config.token.module,
    label: config.token.token_label,
    found: false,
    key_label: config.token.key_label,
    key_found: false,
  };
  let tokenSpki: Uint8Array | null = null;
  const stationKey: CaShow['station_key'] = {
    label: config.token.station_key_label,
    key_found: false,
    certificate: config.ca.station_certificate,
    sha256: null,
    public_key_sha256: null,
  };
  try {
    const der = readCertificateFile(config.ca.station_certificate, 'station key certificate');
    stationKey.sha256 = sha256Hex(der);
    stationKey.public_key_sha256 = sha256Hex(new Uint8Array(new X509Certificate(Buffer.from(der)).publicKey.export({ type: 'spki', format: 'der' })));
  } catch {
    /* not made yet */
  }
  try {
    const t = openToken(config);
    token.found = true;
    try {
      const key = t.findKey(config.token.key_label);
      token.key_found = key !== null;
      tokenSpki = key?.spki ?? null;
      stationKey.key_found = t.findKey(config.token.station_key_label) !== null;
    } finally {
      t.close();
    }
  } catch (err) {
    token.error = (err as Error).message;
  }
  let localCa: CaShow['local_ca'];
  try {
    const der = readCertificateFile(config.ca.certificate, 'local-ca certificate');
    const x = new X509Certificate(Buffer.from(der));
    const spki = new Uint8Array(x.publicKey.export({ type: 'spki', format: 'der' }));
    localCa = {
      path: config.ca.certificate,
      subject: x.subject.replace(/\n/g, ', '),
      issuer: x.issuer.replace(/\n/g, ', '),
      sha256: sha256Hex(der),
      not_before: new Date(x.validFrom).toISOString(),
      not_after: new Date(x.validTo).toISOString(),
      matches_token_key: tokenSpki ? Buffer.compare(Buffer.from(spki), Buffer.from(tokenSpki)) === 0 : null,
    };
  } catch (err) {
    localCa = { path: config.ca.certificate, error: (err as Error).message };
  }
  return { config: config.path, station_key: stationKey, token, local_ca: localCa };
}

// ---- development: `ca demo` ---------------------------------------------

export interface DemoReport {
  created: string[];
  rootPath: string;
}

/**
 * Creates whatever is missing for a development station: SoftHSM2's config
 * and token, the PIN file, the local-ca key, a throwaway software factory
 * root and the local-ca certificate it signs. Idempotent: what exists is
 * kept.
 */
export async function caDemo(config: StationConfig): Promise<DemoReport> {
  if (!/softhsm/i.test(config.token.module)) {
    throw new LineSignerError('CA', `ca demo is for SoftHSM2 development tokens only; token.module is ${config.token.module}`);
  }
  const created: string[] = [];
  const conf = config.token.softhsm2_conf ?? process.env.SOFTHSM2_CONF;
  if (!conf) throw new LineSignerError('CONFIG', 'token.softhsm2_conf: needed by ca demo to keep the development token in its own folder');
  if (!existsSync(conf)) {
    const tokens = join(dirname(conf), 'tokens');
    mkdirSync(tokens, { recursive: true, mode: 0o700 });
    writeFileSync(conf, `directories.tokendir = ${tokens}\nobjectstore.backend = file\nlog.level = ERROR\n`);
    created.push(`SoftHSM2 config ${conf}`);
  }
  if (config.token.pin_file && !existsSync(config.token.pin_file)) {
    mkdirSync(dirname(config.token.pin_file), { recursive: true });
    writeFileSync(config.token.pin_file, randomBytes(6).toString('hex') + '\n', { mode: 0o600 });
    created.push(`PIN file ${config.token.pin_file}`);
  }
  const pin = readPin(config.token);
  const env = { ...process.env, SOFTHSM2_CONF: conf };
  const slots = execFileSync('softhsm2-util', ['--show-slots'], { env, encoding: 'utf8' });
  const hasToken = slots.split('\n').some((l) => l.replace(/\s+/g, ' ').trim() === `Label: ${config.token.token_label}`);
  if (!hasToken) {
    const soPin = randomBytes(8).toString('hex');
    execFileSync(
      'softhsm2-util',
      ['--init-token', '--free', '--label', config.token.token_label, '--so-pin', soPin, '--pin', pin],
      { env, stdio: 'ignore' },
    );
    created.push(`SoftHSM2 token "${config.token.token_label}"`);
  }

  const token = openToken({ ...config, token: { ...config.token, softhsm2_conf: conf } });
  try {
    let key = token.findKey(config.token.key_label);
    if (!key) {
      key = token.generateKey(config.token.key_label);
      created.push(`local-ca key "${config.token.key_label}" in the token`);
    }
    const rootKeyPath = config.ca.root.replace(/(\.pem|\.crt)?$/, '.key');
    if (!existsSync(config.ca.root)) {
      const root = await makeThrowawayRoot(config.station.factory);
      writeFileAtomic(rootKeyPath, pemEncode(root.privateKeyPkcs8, 'PRIVATE KEY'), 0o600);
      writeFileAtomic(config.ca.root, pemEncode(root.der, 'CERTIFICATE'));
      created.push(`THROWAWAY factory root ${config.ca.root} (key ${rootKeyPath})`);
    }
    const rootDer = readCertificateFile(config.ca.root, 'factory root');
    let installed = false;
    if (existsSync(config.ca.certificate)) {
      try {
        checkLocalCa(readCertificateFile(config.ca.certificate, 'local-ca certificate'), {
          tokenSpki: key.spki,
          rootDer,
          factory: config.station.factory,
          now: new Date(),
        });
        installed = true;
      } catch {
        installed = false;
      }
    }
    if (!installed) {
      if (!existsSync(rootKeyPath)) {
        throw new LineSignerError('CA', `cannot sign a local-ca: the factory root's key ${rootKeyPath} is not here (only a throwaway root made by ca demo has one)`);
      }
      const [pkcs8] = pemDecodeAll(readFileSync(rootKeyPath, 'utf8'), 'PRIVATE KEY');
      if (!pkcs8) throw new LineSignerError('CA', `${rootKeyPath}: no PRIVATE KEY block`);
      createPrivateKey({ key: Buffer.from(pkcs8), format: 'der', type: 'pkcs8' }); // fails early on a broken key
      const csr = await makeCaCsr(token.signer(config.token.key_label), config.ca.owner, config.station.factory);
      const der = await signCaCsrWithRoot(csr, { der: rootDer, privateKeyPkcs8: pkcs8 });
      checkLocalCa(der, { tokenSpki: key.spki, rootDer, factory: config.station.factory, now: new Date() });
      writeFileAtomic(config.ca.certificate, pemEncode(der, 'CERTIFICATE'));
      created.push(`local-ca certificate ${config.ca.certificate}`);
    }
    created.push(...(await ensureStationKey(token, config)));
  } finally {
    token.close();
  }
  return { created, rootPath: config.ca.root };
}
