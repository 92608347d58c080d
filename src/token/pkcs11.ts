/**
 * The PKCS#11 token: open the module once per process, find the token by
 * label, log in, find or make EC keys, and sign without blocking the event
 * loop. One long-lived session; signs are queued on it because a PKCS#11
 * session runs one operation at a time (CKR_OPERATION_ACTIVE otherwise).
 */
import { createHash, createPublicKey, randomBytes, verify, type KeyObject } from 'node:crypto';
import { accessSync, constants } from 'node:fs';
import { isMainThread } from 'node:worker_threads';
import pkcs11js from 'pkcs11js';
import { LineSignerError } from '../errors.js';
import { quote } from '../text.js';
import { EC_PARAMS_P256, rawEcdsaToDer, spkiFromEcPoint } from './der.js';
import { signerIdentity, type Signer } from './signer.js';

type Handle = Buffer;

export interface TokenOptions {
  module: string;
  tokenLabel: string;
  pin: string;
  /** Development: SoftHSM2's config file, which it reads at C_Initialize. */
  softhsm2Conf?: string | undefined;
  /** This session may start the module afresh after a token fault (process-wide: one signing worker of a process). */
  mayReinitialize?: boolean | undefined;
}

// C_Initialize may run once per process and module.
const modules = new Map<string, pkcs11js.PKCS11>();

/**
 * How many times each module was started afresh (C_Finalize, C_Initialize)
 * in this process. Every session and object handle from before is void
 * then, and the numbers come back meaning other things: a key handle kept
 * across a restart made C_Sign succeed with another key (the station key)
 * and every certificate was refused until the station was restarted. The
 * count is shared with the signing workers (shareModuleEpoch): the module
 * is one per process, whichever thread starts it afresh.
 */
const epochs = new Map<string, Int32Array>();
function epochCell(module: string): Int32Array {
  let cell = epochs.get(module);
  if (!cell) epochs.set(module, (cell = new Int32Array(new SharedArrayBuffer(4))));
  return cell;
}
function moduleEpoch(module: string): number {
  return Atomics.load(epochCell(module), 0);
}
/** This thread's count for `module`, to hand to a worker (adoptModuleEpoch there). */
export function shareModuleEpoch(module: string): SharedArrayBuffer {
  return epochCell(module).buffer as SharedArrayBuffer;
}
/** In a worker: count with the thread that started it. */
export function adoptModuleEpoch(module: string, shared: SharedArrayBuffer): void {
  epochs.set(module, new Int32Array(shared));
}

function loadModule(path: string): pkcs11js.PKCS11 {
  let p11 = modules.get(path);
  if (p11) return p11;
  p11 = new pkcs11js.PKCS11();
  try {
    p11.load(path);
  } catch (err) {
    throw new LineSignerError('TOKEN_UNAVAILABLE', `cannot load PKCS#11 module ${path}: ${(err as Error).message}`);
  }
  try {
    p11.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
  } catch (err) {
    if (ckr(err) !== pkcs11js.CKR_CRYPTOKI_ALREADY_INITIALIZED) {
      const e = tokenError('C_Initialize', err);
      // SoftHSM2 answers a config file it cannot read with a bare CKR_GENERAL_ERROR.
      const conf = process.env.SOFTHSM2_CONF;
      const unreadable = conf !== undefined ? whyUnreadable(conf) : null;
      throw unreadable ? new LineSignerError(e.code, `${e.message}: SoftHSM2's config ${conf} (token.softhsm2_conf or SOFTHSM2_CONF) cannot be read (${unreadable})`, { cause: err }) : e;
    }
  }
  modules.set(path, p11);
  return p11;
}

/** An EC public key object as found: its handle, its key as SubjectPublicKeyInfo DER, its curve. */
interface EcPublicKey {
  handle: Handle;
  spki: Uint8Array;
  curve: 'P-256' | 'P-384';
}

/** Public key objects looked at for one label: enough for the real one beside a few strays, bounded against a flood. */
const MAX_PUBLIC_KEYS = 64;

/** Modules this thread has opened a session on: starting such a module again would pull its sessions away. */
const inUse = new Set<string>();

function whyUnreadable(path: string): string | null {
  try {
    accessSync(path, constants.R_OK);
    return null;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code ?? 'error';
  }
}

/** More than one token carries the configured label: none is used (findSlot). */
export class AmbiguousTokenError extends LineSignerError {
  constructor(message: string) {
    super('TOKEN_UNAVAILABLE', message);
  }
}

/** The CKR_ value of a pkcs11js error, or undefined for anything else. */
function ckr(err: unknown): number | undefined {
  return err instanceof pkcs11js.Pkcs11Error ? err.code : undefined;
}

/**
 * Holds this thread for `ms`: PKCS#11 calls are synchronous, so a retry
 * waits where it stands (a token thread, or a short-lived command).
 */
export function holdThread(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

const PIN_CODES = new Set([
  pkcs11js.CKR_PIN_INCORRECT,
  pkcs11js.CKR_PIN_LOCKED,
  pkcs11js.CKR_PIN_EXPIRED,
  pkcs11js.CKR_PIN_INVALID,
  pkcs11js.CKR_PIN_LEN_RANGE,
]);

/** Errors after which a fresh session (and login) may well succeed. */
const SESSION_CODES = new Set([
  pkcs11js.CKR_SESSION_HANDLE_INVALID,
  pkcs11js.CKR_SESSION_CLOSED,
  pkcs11js.CKR_USER_NOT_LOGGED_IN,
  pkcs11js.CKR_DEVICE_ERROR,
  pkcs11js.CKR_DEVICE_REMOVED,
  pkcs11js.CKR_TOKEN_NOT_PRESENT,
  pkcs11js.CKR_OPERATION_ACTIVE,
  pkcs11js.CKR_OBJECT_HANDLE_INVALID,
  pkcs11js.CKR_KEY_HANDLE_INVALID,
  pkcs11js.CKR_GENERAL_ERROR,
  pkcs11js.CKR_CRYPTOKI_NOT_INITIALIZED,
]);

function tokenError(what: string, err: unknown): LineSignerError {
  const code = ckr(err);
  if (code !== undefined && PIN_CODES.has(code)) {
    const name = code === pkcs11js.CKR_PIN_LOCKED ? 'the PIN is locked' : 'the token refused the PIN';
    return new LineSignerError(
      'TOKEN_PIN',
      `${name} (${ckrName(code)}); not retried, since tokens lock after a few wrong tries`,
    );
  }
  const detail = code !== undefined ? ckrName(code) : (err as Error).message;
  return new LineSignerError('TOKEN_UNAVAILABLE', `token: ${what} failed: ${detail}`, { cause: err });
}

function ckrName(code: number): string {
  for (const [k, v] of Object.entries(pkcs11js)) if (k.startsWith('CKR_') && v === code) return k;
  return `CKR 0x${code.toString(16)}`;
}

export interface KeyInfo {
  label: string;
  privateKey: Handle;
  publicKey: Handle;
  spki: Uint8Array;
  curve: 'P-256' | 'P-384';
}

export class Pkcs11Token {
  private readonly p11: pkcs11js.PKCS11;
  private session: Handle | null = null;
  /** The module's epoch when the session was opened: another one voids it. */
  private sessionEpoch = -1;
  /** False for openPublic's token: its sessions never log in. */
  private loggedIn = true;
  private pinRefused = false;

  private constructor(private readonly opts: TokenOptions) {
    this.p11 = loadModule(opts.module);
  }

  /** Opens a session on the token labelled `tokenLabel` and logs in. */
  static open(opts: TokenOptions): Pkcs11Token {
    if (opts.softhsm2Conf !== undefined && process.env.SOFTHSM2_CONF === undefined) {
      process.env.SOFTHSM2_CONF = opts.softhsm2Conf;
    }
    const token = new Pkcs11Token(opts);
    token.openSession();
    return token;
  }

  /**
   * Initialises a token on a free slot, in this process, so that no PIN is
   * ever on a command line: C_InitToken with the SO PIN, then C_Login as SO
   * and C_InitPIN with the user PIN. Refuses when a token with this label
   * exists already. The files SoftHSM2 writes belong to whoever runs this.
   */
  static initToken(opts: TokenOptions & { soPin: string }): void {
    if (opts.softhsm2Conf !== undefined && process.env.SOFTHSM2_CONF === undefined) {
      process.env.SOFTHSM2_CONF = opts.softhsm2Conf;
    }
    const p11 = loadModule(opts.module);
    let free: Handle | undefined;
    let slots: Handle[];
    try {
      slots = p11.C_GetSlotList(true);
    } catch (err) {
      throw tokenError('C_GetSlotList', err);
    }
    for (const slot of slots) {
      const info = p11.C_GetTokenInfo(slot);
      if ((info.flags & pkcs11js.CKF_TOKEN_INITIALIZED) === 0) free ??= slot;
      else if (info.label.trim() === opts.tokenLabel) {
        throw new LineSignerError('CA', `a token labelled "${opts.tokenLabel}" exists already in ${opts.module}; refusing to make another`);
      }
    }
    if (free === undefined) {
      throw new LineSignerError('TOKEN_UNAVAILABLE', `${opts.module} has no free slot to initialise a token in`);
    }
    try {
      p11.C_InitToken(free, opts.soPin, opts.tokenLabel.padEnd(32, ' '));
    } catch (err) {
      throw tokenError('C_InitToken', err);
    }
    // SoftHSM2 moves a new token to a slot of its own: find it by its label.
    const token = new Pkcs11Token(opts);
    let session: Handle;
    // The module must not start again under the token just made: it is not in SoftHSM2's folder scan yet.
    inUse.add(opts.module);
    try {
      session = p11.C_OpenSession(token.findSlot(), pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION);
    } catch (err) {
      throw err instanceof LineSignerError ? err : tokenError('C_OpenSession', err);
    }
    try {
      p11.C_Login(session, pkcs11js.CKU_SO, opts.soPin);
      p11.C_InitPIN(session, opts.pin);
      p11.C_Logout(session);
    } catch (err) {
      throw tokenError('C_InitPIN', err);
    } finally {
      try {
        p11.C_CloseSession(session);
      } catch {
        /* gone */
      }
    }
  }

  /**
   * Opens a read-only session without logging in: the public objects (the
   * public keys) are visible, the private ones are not, and no PIN try is
   * spent. `login()` may follow.
   */
  static openPublic(opts: Omit<TokenOptions, 'pin'>): Pkcs11Token {
    if (opts.softhsm2Conf !== undefined && process.env.SOFTHSM2_CONF === undefined) {
      process.env.SOFTHSM2_CONF = opts.softhsm2Conf;
    }
    const token = new Pkcs11Token({ ...opts, pin: '' });
    token.loggedIn = false;
    token.openSession();
    return token;
  }

  /** The token's flags that tell about its PIN, read without logging in. */
  pinState(): { locked: boolean; finalTry: boolean } {
    const flags = this.p11.C_GetTokenInfo(this.findSlot()).flags;
    return {
      locked: (flags & pkcs11js.CKF_USER_PIN_LOCKED) !== 0,
      finalTry: (flags & pkcs11js.CKF_USER_PIN_FINAL_TRY) !== 0,
    };
  }

  /** Logs the open session in with `pin`: one PIN try. TOKEN_PIN when refused. */
  login(pin: string): void {
    try {
      this.p11.C_Login(this.s, pkcs11js.CKU_USER, pin);
    } catch (err) {
      if (ckr(err) !== pkcs11js.CKR_USER_ALREADY_LOGGED_IN) throw tokenError('C_Login', err);
    }
  }

  /**
   * The EC public key labelled `label` (SubjectPublicKeyInfo DER), read without login; null when
   * absent. Without login it cannot be paired with its private half (findKey), so when public
   * objects made by someone else sit beside it, the one equal to `expected` (the key's certificate)
   * is taken, and without that the answer is that the token cannot tell.
   */
  findPublicKey(label: string, expected?: Uint8Array | null): Uint8Array | null {
    let pubs: Array<{ spki: Uint8Array }>;
    try {
      pubs = this.ecPublicKeys(label);
    } catch (err) {
      if (err instanceof LineSignerError) throw err;
      throw tokenError('C_FindObjects', err);
    }
    if (pubs.length <= 1) return pubs[0]?.spki ?? null;
    const match = expected ? pubs.find((p) => Buffer.compare(p.spki, expected) === 0) : undefined;
    if (match) return match.spki;
    throw new LineSignerError(
      'TOKEN_UNAVAILABLE',
      `token: ${pubs.length} EC public keys labelled "${label}", none of them the certificate's (public objects anyone who can open a session may add, without the PIN); \`line-signer ca show --check-pin\` logs in and tells which is the private key's half`,
    );
  }

  /** Whether the private key labelled `label` is there; needs a logged-in session. */
  hasPrivateKey(label: string): boolean {
    try {
      return this.findObject(pkcs11js.CKO_PRIVATE_KEY, label, [{ type: pkcs11js.CKA_PRIVATE, value: true }]) !== null;
    } catch (err) {
      if (err instanceof LineSignerError) throw err;
      throw tokenError('C_FindObjects', err);
    }
  }

  /** The slot of the token with our label; a token that cannot be read now is passed over (see lookAgain). */
  private findSlot(): Handle {
    let slots: Handle[];
    try {
      slots = this.p11.C_GetSlotList(true);
    } catch (err) {
      throw tokenError('C_GetSlotList', err);
    }
    let unreadable: unknown = null;
    const found: Array<{ slot: Handle; serial: string }> = [];
    for (const slot of slots) {
      let info: { label: string; serialNumber: string };
      try {
        info = this.p11.C_GetTokenInfo(slot);
      } catch (err) {
        unreadable = err;
        continue;
      }
      if (info.label.trim() === this.opts.tokenLabel) found.push({ slot, serial: info.serialNumber.trim() });
    }
    // Whoever may make tokens (SoftHSM2's group) could add one of the same label that lists
    // first: the station would send it the PIN and then miss its keys. It never guesses.
    if (found.length > 1) {
      throw new AmbiguousTokenError(
        `${found.length} tokens are labelled "${this.opts.tokenLabel}" in ${this.opts.module} (serials ${found.map((f) => quote(f.serial)).join(', ')}): the station cannot tell which one holds its keys and logs in to none; remove or relabel the one that is not the station's (softhsm2-util --show-slots lists them)`,
      );
    }
    if (found.length === 1) return found[0]!.slot;
    if (unreadable) throw tokenError('C_GetTokenInfo', unreadable);
    throw new LineSignerError('TOKEN_UNAVAILABLE', `no token labelled "${this.opts.tokenLabel}" in ${this.opts.module}`);
  }

  /**
   * Opens a session, looking again when the token was caught being rewritten
   * by another process (a serving station stores its checkpoint object every
   * second): SoftHSM2 then fails C_GetTokenInfo or C_Login with
   * CKR_GENERAL_ERROR (about 1 open in 70 beside a process that writes the
   * token without pause), or left the token out of the folder scan it made
   * at C_Initialize, and keeps its view so until the module starts again.
   * So it looks again only where the module may start again: before this
   * process has a session on it, in its first thread (the workers start
   * after); never on a thread that serves, where a wait would hold the links.
   * A failed C_Login is looked at again only on SoftHSM2, which reads the
   * token before it checks the PIN (and can then report the user PIN not
   * initialized); another token may have counted the try.
   */
  private lookAgain(open: (phase: { loginTried: boolean }) => Handle): Handle {
    for (let attempt = 1; ; attempt++) {
      const phase = { loginTried: false };
      try {
        const session = open(phase);
        inUse.add(this.opts.module);
        return session;
      } catch (err) {
        if (attempt >= 4 || inUse.has(this.opts.module) || !isMainThread || !(err instanceof LineSignerError) || err.code !== 'TOKEN_UNAVAILABLE') throw err;
        const cause = ckr(err.cause);
        // SoftHSM2 reading a token file mid-rewrite can also find no user PIN in it (seen once in CI).
        const pinMidWrite = cause === pkcs11js.CKR_USER_PIN_NOT_INITIALIZED && phase.loginTried && this.isSoftHsm();
        const caughtMidWrite = cause === pkcs11js.CKR_GENERAL_ERROR || cause === pkcs11js.CKR_DEVICE_ERROR || pinMidWrite;
        const leftOut = err.cause === undefined;
        if (!(caughtMidWrite || leftOut) || (phase.loginTried && !this.isSoftHsm())) throw err;
        holdThread(50 * attempt);
        Pkcs11Token.reinitializeModule(this.opts.module);
      }
    }
  }

  private isSoftHsm(): boolean {
    try {
      return this.p11.C_GetInfo().manufacturerID.trim() === 'SoftHSM';
    } catch {
      return false;
    }
  }

  private openSession(): void {
    if (!this.loggedIn) {
      // openPublic's: read-only, no login, whenever it is opened again.
      this.session = this.lookAgain(() => {
        this.sessionEpoch = moduleEpoch(this.opts.module);
        const slot = this.findSlot();
        try {
          return this.p11.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION);
        } catch (err) {
          throw tokenError('C_OpenSession', err);
        }
      });
      return;
    }
    if (this.pinRefused) {
      throw new LineSignerError('TOKEN_PIN', 'the token refused the PIN earlier; fix the PIN and restart');
    }
    this.session = this.lookAgain((phase) => {
      // Read before the session is opened: a restart after it voids this one.
      this.sessionEpoch = moduleEpoch(this.opts.module);
      const slot = this.findSlot();
      let session: Handle;
      try {
        session = this.p11.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION);
      } catch (err) {
        throw tokenError('C_OpenSession', err);
      }
      try {
        phase.loginTried = true;
        this.p11.C_Login(session, pkcs11js.CKU_USER, this.opts.pin);
      } catch (err) {
        if (ckr(err) !== pkcs11js.CKR_USER_ALREADY_LOGGED_IN) {
          const e = tokenError('C_Login', err);
          if (e.code === 'TOKEN_PIN') this.pinRefused = true;
          try {
            this.p11.C_CloseSession(session);
          } catch {
            /* already unusable */
          }
          throw e;
        }
      }
      return session;
    });
  }

  get mayReinitialize(): boolean {
    return this.opts.mayReinitialize ?? false;
  }

  /**
   * Finalises and initialises the module again, then opens a new session:
   * for a token that went away and came back (SoftHSM2 keeps a vanished
   * token folder marked invalid until then). Process-wide: only the
   * signing worker calls it, and at most every few seconds.
   */
  reinitialize(): void {
    this.session = null;
    Pkcs11Token.reinitializeModule(this.opts.module);
    this.openSession();
  }

  /** C_Finalize, then C_Initialize, for the whole process (see reinitialize). */
  static reinitializeModule(module: string): void {
    const p11 = loadModule(module);
    Atomics.add(epochCell(module), 0, 1);
    try {
      p11.C_Finalize();
    } catch {
      /* not initialised, or already gone */
    }
    try {
      p11.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
    } catch (err) {
      if (ckr(err) !== pkcs11js.CKR_CRYPTOKI_ALREADY_INITIALIZED) {
      const e = tokenError('C_Initialize', err);
      // SoftHSM2 answers a config file it cannot read with a bare CKR_GENERAL_ERROR.
      const conf = process.env.SOFTHSM2_CONF;
      const unreadable = conf !== undefined ? whyUnreadable(conf) : null;
      throw unreadable ? new LineSignerError(e.code, `${e.message}: SoftHSM2's config ${conf} (token.softhsm2_conf or SOFTHSM2_CONF) cannot be read (${unreadable})`, { cause: err }) : e;
    }
    }
  }

  /** Drops the session and opens a new one (after a token or session fault). */
  reopen(): void {
    const old = this.sessionEpoch === moduleEpoch(this.opts.module) ? this.session : null;
    this.session = null;
    if (old) {
      try {
        this.p11.C_CloseSession(old);
      } catch {
        /* the old session is gone either way */
      }
    }
    this.openSession();
  }

  private get s(): Handle {
    // A session from before the module was started afresh is void; never closed: its number may be another's now.
    if (this.session !== null && this.sessionEpoch !== moduleEpoch(this.opts.module)) this.session = null;
    if (!this.session) this.openSession();
    return this.session!;
  }

  /** The module's epoch now: a key handle found in another is void (TokenSigner). */
  epoch(): number {
    return moduleEpoch(this.opts.module);
  }

  /** Up to `max` objects of class `cls` labelled `label`, with `extra` attributes too. */
  private findObjects(cls: number, label: string, max: number, extra: pkcs11js.Template = []): Handle[] {
    const s = this.s;
    this.p11.C_FindObjectsInit(s, [{ type: pkcs11js.CKA_CLASS, value: cls }, { type: pkcs11js.CKA_LABEL, value: label }, ...extra]);
    try {
      const found: Handle[] = [];
      while (found.length < max) {
        const more = this.p11.C_FindObjects(s, max - found.length);
        if (more.length === 0) break;
        found.push(...more);
      }
      return found;
    } finally {
      this.p11.C_FindObjectsFinal(s);
    }
  }

  /** The EC public keys labelled `label` as SubjectPublicKeyInfo DER (anything else with the label is passed over). */
  private ecPublicKeys(label: string): EcPublicKey[] {
    const out: EcPublicKey[] = [];
    for (const handle of this.findObjects(pkcs11js.CKO_PUBLIC_KEY, label, MAX_PUBLIC_KEYS, [{ type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_EC }])) {
      try {
        const [params, point] = this.p11.C_GetAttributeValue(this.s, handle, [{ type: pkcs11js.CKA_EC_PARAMS }, { type: pkcs11js.CKA_EC_POINT }]);
        const oidHex = (params!.value as Buffer).toString('hex');
        const curve = oidHex === '06082a8648ce3d030107' ? 'P-256' : oidHex === '06052b81040022' ? 'P-384' : null;
        if (curve) out.push({ handle, spki: spkiFromEcPoint(point!.value as Buffer, params!.value as Buffer), curve });
      } catch {
        // not a key this station could use, whoever made it
      }
    }
    return out;
  }

  private findObject(cls: number, label: string, extra: pkcs11js.Template = []): Handle | null {
    const found = this.findObjects(cls, label, 2, extra);
    if (found.length > 1) {
      throw new LineSignerError('TOKEN_UNAVAILABLE', `token: more than one object labelled "${label}"`);
    }
    return found[0] ?? null;
  }

  /**
   * The EC key pair labelled `label`, or null when the token has none.
   *
   * Only the private half is trusted as found: it is a private object, which
   * only a logged-in session can make. A public key object is public: any
   * process that can open a session (no PIN) may delete one or make another
   * with the same label. So the public half is the one that verifies a
   * signature the private half makes now; a public key that does not is
   * never taken for the station's (an attacker's key would make the
   * checkpoints they forge look signed).
   */
  findKey(label: string): KeyInfo | null {
    let priv: Handle | null;
    let pubs: EcPublicKey[];
    try {
      priv = this.findObject(pkcs11js.CKO_PRIVATE_KEY, label, [{ type: pkcs11js.CKA_PRIVATE, value: true }]);
      pubs = this.ecPublicKeys(label);
    } catch (err) {
      if (err instanceof LineSignerError) throw err;
      throw tokenError('C_FindObjects', err);
    }
    if (!priv && pubs.length === 0) return null;
    const putBack = `put it back from the key's certificate (its public key as DER: pkcs11-tool --write-object KEY.der --type pubkey --label "${label}")`;
    if (!priv) throw new LineSignerError('TOKEN_UNAVAILABLE', `token: key "${label}" has only its public half`);
    if (pubs.length === 0) throw new LineSignerError('TOKEN_UNAVAILABLE', `token: key "${label}" has only its private half: its public key object was removed; ${putBack}`);
    for (const pub of pubs) {
      if (this.isPublicHalf(priv, pub.spki, pub.curve)) return { label, privateKey: priv, publicKey: pub.handle, spki: pub.spki, curve: pub.curve };
    }
    throw new LineSignerError(
      'TOKEN_UNAVAILABLE',
      `token: no public key labelled "${label}" is the public half of the private key "${label}" (${pubs.length === MAX_PUBLIC_KEYS ? `the first ${MAX_PUBLIC_KEYS}` : pubs.length} EC keys looked at): a public key object can be removed or added by anyone who can open a session, without the PIN. ` +
        `Remove the others and ${putBack}`,
    );
  }

  /** Whether `spki` verifies a signature the private key `priv` makes now over a fresh random challenge. */
  private isPublicHalf(priv: Handle, spki: Uint8Array, curve: 'P-256' | 'P-384'): boolean {
    const challenge = randomBytes(32);
    let raw: Buffer;
    try {
      this.p11.C_SignInit(this.s, { mechanism: pkcs11js.CKM_ECDSA }, priv);
      raw = this.p11.C_Sign(this.s, createHash('sha256').update(challenge).digest(), Buffer.alloc(curve === 'P-256' ? 64 : 96));
    } catch (err) {
      throw tokenError('C_Sign (checking which public key is the private key\'s)', err);
    }
    try {
      return verify('sha256', challenge, { key: createPublicKey({ key: Buffer.from(spki), format: 'der', type: 'spki' }), dsaEncoding: 'ieee-p1363' }, raw);
    } catch {
      return false;
    }
  }

  /**
   * Makes a P-256 key pair that never leaves the token: sensitive, not
   * extractable, and good for signing only (SoftHSM's defaults would also
   * allow decrypt, unwrap and derive).
   */
  generateKey(label: string): KeyInfo {
    if (this.findKey(label)) {
      throw new LineSignerError('CA', `the token already holds a key labelled "${label}"; refusing to make another`);
    }
    const id = createHash('sha256').update(label).digest().subarray(0, 16);
    try {
      this.p11.C_GenerateKeyPair(
        this.s,
        { mechanism: pkcs11js.CKM_EC_KEY_PAIR_GEN },
        [
          { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PUBLIC_KEY },
          { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_EC },
          { type: pkcs11js.CKA_TOKEN, value: true },
          { type: pkcs11js.CKA_LABEL, value: label },
          { type: pkcs11js.CKA_ID, value: id },
          { type: pkcs11js.CKA_EC_PARAMS, value: EC_PARAMS_P256 },
          { type: pkcs11js.CKA_VERIFY, value: true },
          { type: pkcs11js.CKA_ENCRYPT, value: false },
          { type: pkcs11js.CKA_WRAP, value: false },
          { type: pkcs11js.CKA_DERIVE, value: false },
        ],
        [
          { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY },
          { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_EC },
          { type: pkcs11js.CKA_TOKEN, value: true },
          { type: pkcs11js.CKA_PRIVATE, value: true },
          { type: pkcs11js.CKA_LABEL, value: label },
          { type: pkcs11js.CKA_ID, value: id },
          { type: pkcs11js.CKA_SENSITIVE, value: true },
          { type: pkcs11js.CKA_EXTRACTABLE, value: false },
          { type: pkcs11js.CKA_SIGN, value: true },
          { type: pkcs11js.CKA_DECRYPT, value: false },
          { type: pkcs11js.CKA_UNWRAP, value: false },
          { type: pkcs11js.CKA_DERIVE, value: false },
        ],
      );
    } catch (err) {
      throw tokenError('C_GenerateKeyPair', err);
    }
    return this.findKey(label)!;
  }

  /** Reads boolean attributes of a private key (to show that it cannot leave). */
  keyFlags(key: KeyInfo): { sensitive: boolean; extractable: boolean } {
    const [sens, extr] = this.p11.C_GetAttributeValue(this.s, key.privateKey, [
      { type: pkcs11js.CKA_SENSITIVE },
      { type: pkcs11js.CKA_EXTRACTABLE },
    ]);
    return { sensitive: (sens!.value as Buffer)[0] === 1, extractable: (extr!.value as Buffer)[0] === 1 };
  }

  /**
   * Why the private key of `label` could leave the token, or null when it
   * cannot: it must be sensitive and not extractable, and never have been
   * extractable where the token reports CKA_NEVER_EXTRACTABLE.
   */
  keyLeakRisk(label: string): string | null {
    const key = this.findKey(label);
    if (!key) return `no key "${label}"`;
    const flag = (type: number): boolean | null => {
      try {
        const [a] = this.p11.C_GetAttributeValue(this.s, key.privateKey, [{ type }]);
        const v = a?.value as Buffer | undefined;
        return v && v.length ? v[0] === 1 : null;
      } catch {
        return null; // not reported by this token
      }
    };
    if (flag(pkcs11js.CKA_SENSITIVE) !== true) return `the private key "${label}" is not sensitive (CKA_SENSITIVE false): its value can be read out of the token`;
    if (flag(pkcs11js.CKA_EXTRACTABLE) !== false) return `the private key "${label}" is extractable (CKA_EXTRACTABLE true): it can be wrapped out of the token`;
    if (flag(pkcs11js.CKA_NEVER_EXTRACTABLE) === false) return `the private key "${label}" was extractable once (CKA_NEVER_EXTRACTABLE false): a copy may exist outside the token`;
    if (flag(pkcs11js.CKA_ALWAYS_SENSITIVE) === false) return `the private key "${label}" was not always sensitive (CKA_ALWAYS_SENSITIVE false): a copy may exist outside the token`;
    return null;
  }

  /**
   * The private data objects labelled `label`. A public one is passed over:
   * anyone who can open a session may make one without the PIN, and one
   * posing as the newest checkpoint would vouch for a rolled-back ledger.
   */
  private findData(label: string): Handle[] {
    return this.findObjects(pkcs11js.CKO_DATA, label, 16, [{ type: pkcs11js.CKA_PRIVATE, value: true }]);
  }

  /** The values of the private data objects labelled `label` (usually one). */
  readData(label: string): Buffer[] {
    // Another process that replaces the object (make the new one, destroy the old) can be
    // caught mid-way: a handle found here gone before its value is read, or, on SoftHSM2
    // while it re-reads the token's folder, no object found at all. Look again, briefly.
    for (let attempt = 1; ; attempt++) {
      try {
        const handles = this.findData(label);
        const values: Buffer[] = [];
        for (const h of handles) {
          try {
            values.push(this.p11.C_GetAttributeValue(this.s, h, [{ type: pkcs11js.CKA_VALUE }])[0]!.value as Buffer);
          } catch (err) {
            if (ckr(err) !== pkcs11js.CKR_OBJECT_HANDLE_INVALID) throw err;
          }
        }
        // Up to about 60 ms in all: on a loaded machine SoftHSM2's re-read of its folder took longer than 20 (one CI run).
        if ((values.length > 0 && values.length === handles.length) || attempt >= 8) return values;
      } catch (err) {
        throw err instanceof LineSignerError ? err : tokenError('reading a data object', err);
      }
      holdThread(2 * attempt);
    }
  }

  /**
   * Replaces the private token data object labelled `label`. Tokens may not
   * let CKA_VALUE change, so the new object is made first and the old ones
   * destroyed after: a crash in between leaves both, never neither.
   */
  writeData(label: string, value: Uint8Array): void {
    // A file-backed token (SoftHSM2) shared with another process can fail one write while that
    // process rewrites the token's index: try again, briefly, then on a fresh session, before
    // calling it a token fault. (Not a module restart: that is process-wide, and other
    // sessions may be signing at that moment.)
    for (let attempt = 1; ; attempt++) {
      try {
        const old = this.findData(label);
        this.p11.C_CreateObject(this.s, [
          { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_DATA },
          { type: pkcs11js.CKA_TOKEN, value: true },
          { type: pkcs11js.CKA_PRIVATE, value: true },
          { type: pkcs11js.CKA_LABEL, value: label },
          { type: pkcs11js.CKA_APPLICATION, value: 'line-signer' },
          { type: pkcs11js.CKA_VALUE, value: Buffer.from(value) },
        ]);
        for (const h of old) {
          try {
            this.p11.C_DestroyObject(this.s, h);
          } catch {
            /* already gone, or left for the next write: readers take the newest */
          }
        }
        return;
      } catch (err) {
        const code = ckr(err);
        if (attempt >= 6 || (code !== pkcs11js.CKR_GENERAL_ERROR && code !== pkcs11js.CKR_DEVICE_ERROR)) {
          throw err instanceof LineSignerError ? err : tokenError('writing a data object', err);
        }
        holdThread(25 * attempt);
        if (attempt === 3) this.reopen();
      }
    }
  }

  /** A Signer for the key labelled `label`; fails when the token lacks it. */
  signer(label: string, blocking = false): TokenSigner {
    const key = this.findKey(label);
    if (!key) throw new LineSignerError('TOKEN_UNAVAILABLE', `token "${this.opts.tokenLabel}" has no key labelled "${label}"`);
    return new TokenSigner(this, key, blocking);
  }

  /**
   * One raw ECDSA signature: on libuv's pool when `blocking` is false (the
   * event loop keeps serving); in this thread when true, for a thread that
   * does nothing but sign (sign-worker.ts), which saves two thread hops.
   */
  async signRaw(key: KeyInfo, digest: Uint8Array, blocking = false): Promise<Buffer> {
    const s = this.s;
    this.p11.C_SignInit(s, { mechanism: pkcs11js.CKM_ECDSA }, key.privateKey);
    const out = Buffer.alloc(key.curve === 'P-256' ? 64 : 96);
    return blocking ? this.p11.C_Sign(s, Buffer.from(digest), out) : this.p11.C_SignAsync(s, Buffer.from(digest), out);
  }

  /** A DER ECDSA signature by the key labelled `label`, made now on this thread (short-lived commands only). */
  signNow(label: string, digest: Uint8Array): Uint8Array {
    const key = this.findKey(label);
    if (!key) throw new LineSignerError('TOKEN_UNAVAILABLE', `token "${this.opts.tokenLabel}" has no key labelled "${label}"`);
    try {
      this.p11.C_SignInit(this.s, { mechanism: pkcs11js.CKM_ECDSA }, key.privateKey);
      return rawEcdsaToDer(this.p11.C_Sign(this.s, Buffer.from(digest), Buffer.alloc(key.curve === 'P-256' ? 64 : 96)));
    } catch (err) {
      throw tokenError('C_Sign', err);
    }
  }

  /**
   * Closes this session. No C_Logout: login state belongs to the process,
   * so a logout here would log out a signing worker's session too; the
   * token logs out by itself when the process's last session closes.
   */
  close(): void {
    if (!this.session) return;
    try {
      this.p11.C_CloseSession(this.session);
    } catch {
      /* gone */
    }
    this.session = null;
  }
}

/**
 * Signs with one token key. Calls are queued (one operation per session);
 * after a session fault the session is reopened and the sign tried once
 * more, and only then reported as TOKEN_UNAVAILABLE.
 */
export class TokenSigner implements Signer {
  readonly hash: 'sha256' | 'sha384';
  readonly signatureAlgorithm: string;
  private readonly key: KeyObject;
  private tail: Promise<unknown> = Promise.resolve();
  /** When the module was last initialised again (see Pkcs11Token.reinitialize). */
  private reinitAt = 0;
  /** The module's epoch when `info`'s handles were found. */
  private infoEpoch: number;

  constructor(
    private readonly token: Pkcs11Token,
    private info: KeyInfo,
    /** Sign in the calling thread (only for a thread that does nothing else: the signing worker). */
    private readonly blocking = false,
  ) {
    ({ hash: this.hash, signatureAlgorithm: this.signatureAlgorithm, key: this.key } = signerIdentity(info));
    this.infoEpoch = token.epoch();
  }

  /** The key's handles again after the module was started afresh (by this signer or any other in the process). */
  private refind(): void {
    const epoch = this.token.epoch();
    const again = this.token.findKey(this.info.label);
    if (!again) throw new LineSignerError('TOKEN_UNAVAILABLE', `token: key "${this.info.label}" is gone`);
    this.info = again;
    this.infoEpoch = epoch;
  }

  publicKeySpki(): Uint8Array {
    return this.info.spki;
  }

  publicKey(): KeyObject {
    return this.key;
  }

  /** `hold`: sign in the calling thread this once (see HoldGate), as a blocking signer always does. */
  sign(digest: Uint8Array, hint?: { alone?: boolean; hold?: boolean }): Promise<Uint8Array> {
    const blocking = this.blocking || hint?.hold === true;
    const run = this.tail.then(
      () => this.signOnce(digest, blocking),
      () => this.signOnce(digest, blocking),
    );
    this.tail = run.catch(() => undefined);
    return run;
  }

  private async signOnce(digest: Uint8Array, blocking: boolean): Promise<Uint8Array> {
    try {
      if (this.infoEpoch !== this.token.epoch()) this.refind();
      return rawEcdsaToDer(await this.token.signRaw(this.info, digest, blocking));
    } catch (err) {
      const code = ckr(err);
      // A session that could not even be opened (TOKEN_UNAVAILABLE) is a fault to recover from too; a refused PIN is not.
      const recoverable = err instanceof LineSignerError ? err.code === 'TOKEN_UNAVAILABLE' : code !== undefined && SESSION_CODES.has(code);
      if (!recoverable) throw err instanceof LineSignerError ? err : tokenError('C_Sign', err);
    }
    // A session or device fault: one fresh session, one more try. The
    // signing worker (blocking) may also start the module afresh, at most
    // every 2 s: a token that went away and came back needs it.
    const reinit = this.blocking && this.token.mayReinitialize && Date.now() - this.reinitAt > 2000;
    try {
      if (reinit) {
        this.reinitAt = Date.now();
        this.token.reinitialize();
      } else this.token.reopen();
      this.refind();
      // Only a thread that does nothing but sign retries in place: a held signature that failed
      // (a token timing out) must not hold the links' thread a second time.
      return rawEcdsaToDer(await this.token.signRaw(this.info, digest, this.blocking));
    } catch (err) {
      throw err instanceof LineSignerError ? err : tokenError('C_Sign', err);
    }
  }
}

