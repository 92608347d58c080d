/**
 * The local-ca's lifecycle: make its key and CSR in the token, import the
 * certificate the factory root's holder signed, show what is installed,
 * and (development only) make a whole throwaway PKI.
 */
import { createPrivateKey, randomBytes, X509Certificate } from 'node:crypto';
import { userInfo } from 'node:os';
import { copyFileSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { readPin, type StationConfig } from '../config/index.js';
import { readPrivateFile } from '../files.js';
import { LineSignerError } from '../errors.js';
import { writeFileAtomic } from '../files.js';
import { leaseProblem, LedgerLock, ledgerTokenProblem, ownedLedgerProblem, refuseHardLinked, SqliteLedger, takeCheckpointSync, tokenCheckpoint } from '../ledger/index.js';
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
import { AmbiguousTokenError, Pkcs11Token } from '../token/index.js';
import { openToken, readCertificateFile, refuseMissingLedger } from './open.js';

/**
 * The token for an admin command, logged in. "No token" gets the next step
 * added: making one is `ca init-token` (SoftHSM2) or the HSM vendor's tool.
 */
function openAdminToken(config: StationConfig): Pkcs11Token {
  try {
    return openToken(config);
  } catch (err) {
    if (err instanceof LineSignerError && /^no token labelled/.test(err.message)) {
      throw new LineSignerError(
        err.code,
        `${err.message}; make it with \`line-signer ca init-token\` (SoftHSM2) or the HSM vendor's tool, or fix token.token_label in ${config.path}`,
      );
    }
    throw err;
  }
}

/** `ca init-token`: a new token on a free slot, its user PIN from the config's PIN source. Returns the SO PIN used. */
export function caInitToken(config: StationConfig, soPinFile?: string): { soPin: string; generated: boolean } {
  const pin = readPin(config.token);
  const generated = soPinFile === undefined;
  const soPin = generated ? randomBytes(8).toString('hex') : readPrivateFile(soPinFile, '--so-pin-file', 'TOKEN_PIN').replace(/\r?\n$/, '');
  if (soPin === '') throw new LineSignerError('TOKEN_PIN', `--so-pin-file: ${soPinFile} is empty`);
  Pkcs11Token.initToken({
    module: config.token.module,
    tokenLabel: config.token.token_label,
    pin,
    soPin,
    softhsm2Conf: config.token.softhsm2_conf,
  });
  return { soPin, generated };
}

/** `ca init`: the local-ca key, made inside the token, and its CSR (PEM); the station key too when missing. */
export async function caInit(config: StationConfig): Promise<string> {
  const token = openAdminToken(config);
  try {
    if (token.findKey(config.token.key_label)) {
      throw new LineSignerError(
        'CA',
        `the token already holds a key labelled "${config.token.key_label}"; refusing to make another. ` +
          'To write its CSR again (lost, or owner/factory corrected in the config), run `line-signer ca csr`',
      );
    }
    token.generateKey(config.token.key_label);
    const csr = await makeCaCsr(token.signer(config.token.key_label), config.ca.owner, config.station.factory);
    await ensureStationKey(token, config);
    return pemEncode(csr, 'CERTIFICATE REQUEST');
  } finally {
    token.close();
  }
}

/** `ca csr`: the local-ca CSR again, from the key already in the token, with the config's current owner and factory. */
export async function caCsr(config: StationConfig): Promise<string> {
  const token = openAdminToken(config);
  try {
    if (!token.findKey(config.token.key_label)) {
      throw new LineSignerError('CA', `the token has no key "${config.token.key_label}"; run \`line-signer ca init\` to make it and its CSR`);
    }
    const csr = await makeCaCsr(token.signer(config.token.key_label), config.ca.owner, config.station.factory);
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
  const token = openAdminToken(config);
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

export interface ImportOptions {
  /** Replace an installed local-ca that differs from this one (the replacement is recorded in the ledger). */
  replace?: boolean;
  /** Told what is allowed but worth a look (a local-ca that outlives its root). */
  warn?: (message: string) => void;
  /** Who imports, recorded on the event. */
  operator?: string;
}

/** `ca import`: checks a local-ca certificate against the profile and installs it. */
/** Where a replaced local-ca certificate is kept: beside the current one, named by its SHA-256. */
export function replacedLocalCaPath(certificate: string, sha256: string): string {
  return `${certificate}.${sha256}.replaced.pem`;
}

export function caImport(config: StationConfig, file: string, opts: ImportOptions = {}): X509Certificate {
  let bytes: Buffer;
  try {
    bytes = readFileSync(file);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? 'error';
    const as = code === 'EACCES' && process.getuid?.() !== 0 ? ` as ${userInfo().username}; put it where that user can read it` : '';
    throw new LineSignerError('CA', `cannot read ${file}: ${code}${as}`);
  }
  const der = certificateDer(new Uint8Array(bytes), file);
  const rootDer = readCertificateFile(config.ca.root, 'factory root');
  // The import is recorded in the ledger: this process must own it (a serving station has loaded the old local-ca anyway).
  refuseMissingLedger(config, 'not imported');
  // A second name would take a lock and a journal of its own (see refuseHardLinked), as every owner refuses.
  refuseHardLinked(config.station.ledger);
  const lock = LedgerLock.tryAcquire(config.station.ledger, 'ca import');
  if (!lock) {
    LedgerLock.acquire(config.station.ledger, 'ca import'); // throws LEDGER_BUSY naming the holder
  }
  const token = openAdminToken(config);
  let checked: X509Certificate;
  try {
    const key = token.findKey(config.token.key_label);
    if (!key) throw new LineSignerError('CA', `the token has no key "${config.token.key_label}"; run \`line-signer ca init\` first`);
    checked = checkLocalCa(der, { tokenSpki: key.spki, rootDer, factory: config.station.factory, now: new Date() });
    const risk = token.keyLeakRisk(config.token.key_label);
    if (risk && config.station.production) throw new LineSignerError('CA', `${risk}; a production station signs only with a key that cannot leave the token: make it with \`line-signer ca init\``);
  } catch (err) {
    token.close();
    lock?.release();
    if (err instanceof LineSignerError && /not a CA certificate|basicConstraints|keyUsage/.test(err.message)) {
      throw new LineSignerError(
        'CA',
        `${err.message}. The signer dropped the CSR's CA extensions: \`openssl x509 -req\` keeps none without -extfile ` +
          '(the recipe is in README, "Production station"); `fioctl keys ca sign` keeps them. Sign the same CSR again',
      );
    }
    throw err;
  }
  try {
    return installLocalCa(config, der, rootDer, checked, opts, token);
  } finally {
    token.close();
    lock?.release();
  }
}

function installLocalCa(config: StationConfig, der: Uint8Array, rootDer: Uint8Array, checked: X509Certificate, opts: ImportOptions, token: Pkcs11Token): X509Certificate {
  const installed = installedLocalCa(config.ca.certificate);
  const sha = sha256Hex(der);
  if (installed && installed.sha256 !== sha && !opts.replace) {
    throw new LineSignerError(
      'CA',
      `a local-ca is installed already at ${config.ca.certificate} (${installed.subject}, sha256 ${installed.sha256}, valid to ${installed.validTo}); ` +
        'devices signed under it chain to it. Give --replace to replace it (recorded in the ledger)',
    );
  }
  const root = new X509Certificate(Buffer.from(rootDer));
  if (Date.parse(checked.validTo) > Date.parse(root.validTo)) {
    opts.warn?.(
      `the local-ca is valid to ${checked.validTo}, after its factory root (valid to ${root.validTo}); ` +
        'devices will stop chaining when the root expires, so plan its renewal before then',
    );
  }
  const subject = checked.subject.replace(/\n/g, ',');
  const replaced = installed && installed.sha256 !== sha ? `; replaces local-ca ${installed.sha256} ${installed.subject}` : '';
  const ledger = new SqliteLedger(config.station.ledger, config.station.id);
  try {
    // The import is recorded in the ledger: the token must vouch for the file before it is written to.
    const problem = ledgerTokenProblem(ledger, tokenCheckpoint((l) => token.readData(l), config.station.id), config.station.id, config.station.ledger);
    if (problem) throw new LineSignerError('LEDGER', `nothing installed: ${problem}`);
    const busy = leaseProblem((l) => token.readData(l), config.station.id, config.station.ledger);
    if (busy) throw new LineSignerError('LEDGER_BUSY', `nothing installed: ${busy}`);
    // A trigger would run inside the import's own event, and the checkpoint after it would sign what it wrote.
    const owned = ownedLedgerProblem(ledger, config.station.ledger);
    if (owned) throw new LineSignerError('LEDGER', `nothing installed: ${owned.text}`);
    // The local-ca it replaces is kept beside it: `ledger verify` checks the certificates issued under it against it.
    if (installed && installed.sha256 !== sha) copyFileSync(config.ca.certificate, replacedLocalCaPath(config.ca.certificate, installed.sha256));
    writeFileAtomic(config.ca.certificate, pemEncode(der, 'CERTIFICATE'));
    ledger.appendEvent({ kind: 'ca_import', message: `local-ca ${sha} ${subject}${replaced}`, operator: opts.operator ?? null });
    // Signed at once, like every write to the ledger, when the station key exists (ca init makes it).
    if (token.findKey(config.token.station_key_label)) {
      takeCheckpointSync(ledger, (d) => token.signNow(config.token.station_key_label, d), (l, v) => token.writeData(l, v), 'closing ca import');
    }
  } finally {
    ledger.close();
  }
  return checked;
}

/** The installed local-ca's identity, or null when there is none (an unreadable file counts as one to replace). */
function installedLocalCa(path: string): { sha256: string; subject: string; validTo: string } | null {
  if (!existsSync(path)) return null;
  try {
    const der = readCertificateFile(path, 'local-ca certificate');
    const x = new X509Certificate(Buffer.from(der));
    return { sha256: sha256Hex(der), subject: x.subject.replace(/\n/g, ','), validTo: x.validTo };
  } catch {
    return { sha256: 'unreadable', subject: 'an unreadable file', validTo: 'unknown' };
  }
}

export interface CaShow {
  config: string;
  /** Everything a serving station needs is there and matches. */
  ready: boolean;
  /** What is missing or wrong, each with its next step; empty when ready. */
  problems: string[];
  /** `missing`: no PIN to give; `not tried`: present, no login made; `accepted`/`refused`: one login made (--check-pin). */
  pin: { source: string; state: 'missing' | 'not tried' | 'accepted' | 'refused' | 'locked'; error?: string };
  station_key: { label: string; key_found: boolean; certificate: string; sha256: string | null; public_key_sha256: string | null; matches_token_key: boolean | null };
  token: { module: string; label: string; found: boolean; key_label: string; key_found: boolean; error?: string; /** More than one token carries the label. */ ambiguous?: boolean };
  local_ca:
    | {
        path: string;
        subject: string;
        issuer: string;
        sha256: string;
        not_before: string;
        not_after: string;
        matches_token_key: boolean | null;
        /** Why the installed local-ca would not be used (another key, another root, expired), or null. */
        problem: string | null;
      }
    | { path: string; error: string };
}

function spkiOfCertificate(der: Uint8Array): Uint8Array {
  return new Uint8Array(new X509Certificate(Buffer.from(der)).publicKey.export({ type: 'spki', format: 'der' }));
}

const sameBytes = (a: Uint8Array, b: Uint8Array): boolean => Buffer.compare(Buffer.from(a), Buffer.from(b)) === 0;

/**
 * `ca show`: what is installed, and whether the token and its keys are there
 * and match. The keys are found as public objects, without logging in, so
 * showing spends no PIN try; `checkPin` makes exactly one login to tell an
 * accepted PIN from a refused one.
 */
export function caShow(config: StationConfig, opts: { checkPin?: boolean } = {}): CaShow {
  const problems: string[] = [];
  const token: CaShow['token'] = {
    module: config.token.module,
    label: config.token.token_label,
    found: false,
    key_label: config.token.key_label,
    key_found: false,
  };
  const pin: CaShow['pin'] = {
    source: config.token.pin_file !== undefined ? `file ${config.token.pin_file}` : `environment variable ${config.token.pin_env}`,
    state: 'not tried',
  };
  let pinValue: string | null = null;
  try {
    pinValue = readPin(config.token);
  } catch (err) {
    pin.state = 'missing';
    pin.error = (err as Error).message;
    problems.push(`PIN missing: ${pin.error}`);
  }
  const stationKey: CaShow['station_key'] = {
    label: config.token.station_key_label,
    key_found: false,
    certificate: config.ca.station_certificate,
    sha256: null,
    public_key_sha256: null,
    matches_token_key: null,
  };
  let stationCertSpki: Uint8Array | null = null;
  let stationCertProblem: string | null = null;
  try {
    const der = readCertificateFile(config.ca.station_certificate, 'station key certificate');
    stationKey.sha256 = sha256Hex(der);
    stationCertSpki = spkiOfCertificate(der);
    stationKey.public_key_sha256 = sha256Hex(stationCertSpki);
  } catch (err) {
    stationCertProblem = `station key certificate: ${(err as Error).message}; run \`line-signer station-key init\``;
  }
  let localCaCertSpki: Uint8Array | null = null;
  try {
    localCaCertSpki = spkiOfCertificate(readCertificateFile(config.ca.certificate, 'local-ca certificate'));
  } catch {
    // named below, with the local-ca
  }
  /** Labels whose public key objects could not be told apart without login. */
  const unclear = new Set<string>();
  let tokenSpki: Uint8Array | null = null;
  try {
    const t = Pkcs11Token.openPublic({ module: config.token.module, tokenLabel: config.token.token_label, softhsm2Conf: config.token.softhsm2_conf });
    token.found = true;
    /** A key's public half; stray public objects beside it are a problem of their own, not "token not found". */
    const publicKeyOf = (label: string, expected: Uint8Array | null): Uint8Array | null => {
      try {
        return t.findPublicKey(label, expected);
      } catch (err) {
        if (!(err instanceof LineSignerError) || err.code !== 'TOKEN_UNAVAILABLE') throw err;
        unclear.add(label);
        problems.push(err.message);
        return null;
      }
    };
    try {
      tokenSpki = publicKeyOf(config.token.key_label, localCaCertSpki);
      token.key_found = tokenSpki !== null;
      const stationSpki = publicKeyOf(config.token.station_key_label, stationCertSpki);
      stationKey.key_found = stationSpki !== null;
      if (stationSpki && stationCertSpki) stationKey.matches_token_key = sameBytes(stationSpki, stationCertSpki);
      const flags = t.pinState();
      if (flags.locked) {
        pin.state = 'locked';
        problems.push('PIN locked: the token refuses every login until its SO unlocks the user PIN');
      } else if (opts.checkPin && pinValue !== null && flags.finalTry) {
        // One more wrong PIN locks the token: a check is not worth that.
        pin.error = 'not tried: the token says the next wrong PIN locks it; make sure of the PIN first';
      } else if (opts.checkPin && pinValue !== null) {
        try {
          t.login(pinValue);
          pin.state = 'accepted';
          for (const label of [config.token.key_label, config.token.station_key_label]) {
            if (unclear.has(label)) continue;
            if (t.findPublicKey(label, label === config.token.key_label ? localCaCertSpki : stationCertSpki) && !t.hasPrivateKey(label)) problems.push(`key "${label}": the token has its public half only`);
            else if (t.hasPrivateKey(label)) {
              // Logged in now: the private key's protection can be read too.
              const risk = t.keyLeakRisk(label);
              if (risk) problems.push(`${risk}${config.station.production ? '; a production station refuses to serve with it: make the key with `line-signer ca init`' : ''}`);
            }
          }
        } catch (err) {
          if (!(err instanceof LineSignerError) || err.code !== 'TOKEN_PIN') throw err;
          pin.state = 'refused';
          pin.error = err.message;
          problems.push(`PIN refused: ${err.message}; put the right PIN in the ${pin.source}`);
        }
      }
    } finally {
      t.close();
    }
  } catch (err) {
    token.error = (err as Error).message;
    if (err instanceof AmbiguousTokenError) token.ambiguous = true;
    // SoftHSM2 makes a token's folder 0700 for whoever made it: root's token is invisible to the service user.
    const rootsToken =
      /softhsm/i.test(config.token.module) && process.getuid?.() !== 0
        ? `; a SoftHSM2 token made by root is invisible to ${userInfo().username}: chown -R ${userInfo().username} its folder in the token directory`
        : '';
    problems.push(
      token.ambiguous
        ? `token not used: ${token.error}`
        : `token not found: ${token.error}; make it with \`line-signer ca init-token\` (SoftHSM2) or the HSM vendor's tool, or fix [token] in ${config.path}${rootsToken}`,
    );
  }
  if (token.found && !token.key_found && !unclear.has(config.token.key_label)) problems.push(`key "${config.token.key_label}" not in the token; run \`line-signer ca init\``);
  if (token.found && !stationKey.key_found && !unclear.has(config.token.station_key_label)) problems.push(`station key "${config.token.station_key_label}" not in the token; run \`line-signer station-key init\``);
  if (stationCertProblem) problems.push(stationCertProblem);
  if (stationKey.matches_token_key === false) problems.push(`station key certificate ${config.ca.station_certificate} is not for the token's station key`);
  let localCa: CaShow['local_ca'];
  try {
    const der = readCertificateFile(config.ca.certificate, 'local-ca certificate');
    const x = new X509Certificate(Buffer.from(der));
    let problem: string | null = null;
    if (tokenSpki) {
      try {
        checkLocalCa(der, { tokenSpki, rootDer: readCertificateFile(config.ca.root, 'factory root'), factory: config.station.factory, now: new Date() });
      } catch (err) {
        problem = (err as Error).message;
        problems.push(`local-ca: ${problem}`);
      }
    }
    localCa = {
      path: config.ca.certificate,
      subject: x.subject.replace(/\n/g, ', '),
      issuer: x.issuer.replace(/\n/g, ', '),
      sha256: sha256Hex(der),
      not_before: new Date(x.validFrom).toISOString(),
      not_after: new Date(x.validTo).toISOString(),
      matches_token_key: tokenSpki ? sameBytes(spkiOfCertificate(der), tokenSpki) : null,
      problem,
    };
  } catch (err) {
    localCa = { path: config.ca.certificate, error: (err as Error).message };
    problems.push(`local-ca missing: ${localCa.error}`);
  }
  return { config: config.path, ready: problems.length === 0, problems, pin, station_key: stationKey, token, local_ca: localCa };
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
  const devToken = { module: config.token.module, tokenLabel: config.token.token_label, softhsm2Conf: conf };
  let hasToken = true;
  try {
    Pkcs11Token.openPublic(devToken).close();
  } catch (err) {
    if (!(err instanceof LineSignerError && /^no token labelled/.test(err.message))) throw err;
    hasToken = false;
  }
  if (!hasToken) {
    // The SO PIN is not kept: a development token is made again, not unlocked.
    Pkcs11Token.initToken({ ...devToken, pin, soPin: randomBytes(8).toString('hex') });
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
