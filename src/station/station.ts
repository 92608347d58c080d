/**
 * The one path a request takes. Reading `handle` tells how a certificate
 * is made: replay lookup → parse → policy → build → sign → verify →
 * commit → reply. Links call it; nothing else orders these steps.
 */
import { createHash, randomBytes, verify, type KeyObject } from 'node:crypto';
import { asLineSignerError, isProtocolCode, LineSignerError, type ProtocolCode } from '../errors.js';
import type { CommitGuard, Issuance, Ledger, NewIssuance, StationContext } from '../ledger/index.js';
import {
  checkExtensions,
  checkNameForm,
  checkIssuance,
  checkKey,
  checkStation,
  checkSubject,
  deviceIdMatcher,
  type IssuanceFacts,
  type PolicyRules,
  type Refusal,
  type StationFacts,
} from '../policy/index.js';
import type { Signer } from '../token/signer.js';
import {
  buildTbs,
  canonicalSpki,
  finishAndProve,
  finishCertificate,
  csrDer,
  looksLikePem,
  newSerial,
  notAfterFor,
  parseCsr,
  proveKeyPossession,
  signatureTwin,
  pemEncode,
  serialHex,
  ATTRIBUTE_NAMES,
  type CertificateRequestFacts,
  type IssuerProfile,
  type ParsedCsr,
} from '../x509/index.js';
import type { Issued, SignRequest, SignResult, StationHello, Unhealthy } from './types.js';
import { EventCoalescer } from './coalesce.js';
import type { WorkerRpc } from '../worker-rpc.js';
import { checkClientText, checkDeviceName, clipMessage, nameSkeleton, nameTakenMessage, quote, TEXT_LIMITS } from '../text.js';

export const MAX_FRAME = 16384;
/** How long after a failed proof of possession the proofs come before the signature again. */
export const PROOF_FIRST_MS = 10_000;
/**
 * At most this many requests wait for the token with their proof of
 * possession not yet made; the next ones prove first. A burst of forged
 * CSRs then costs the token at most this many signatures, whatever its
 * size (1,000 at once had cost 1,000), and 8 in flight keep the one trip.
 */
export const MAX_UNPROVEN = 8;
/**
 * A request is served as a lone one (its OpenSSL steps and the commit on
 * the links' thread, the token's signature on libuv's pool, no hand-overs)
 * only when no two requests were on their way to the token at once for
 * this long. A gap between requests of a busy station is not quiet: the
 * lone path there put a millisecond of OpenSSL work on the thread every
 * other request waits for (15 % of requests under eight HTTP clients took
 * it; +6 % certificates/s on average in paired runs without that). One
 * link sending one request after another never overlaps, and keeps the
 * lone path; requests refused before the token (a flood of bad ones) do
 * not count, so they cannot take it away.
 */
export const ALONE_AFTER_MS = 20;

export interface LocalCa {
  der: Uint8Array;
  pem: string;
  /** SHA-256 of the DER, lowercase hex. */
  fingerprint: string;
  notBefore: Date;
  notAfter: Date;
  profile: IssuerProfile;
}

export interface StationParts {
  stationId: string;
  signer: Signer;
  ledger: Ledger;
  localCa: LocalCa;
  rootPem: string;
  rules: PolicyRules;
  /** The station's clock; tests set it to check CLOCK. */
  clock?: () => Date;
  /** Where the OpenSSL checks run under load (check-worker.ts), each request to the least busy; none: here. */
  checkers?: WorkerRpc[];
  /** ALONE_AFTER_MS unless given: a test lengthens it so that its "right after" cannot drift out of the window on a loaded machine. */
  aloneAfterMs?: number;
}

export class Station {
  readonly stationId: string;
  readonly rootPem: string;
  private readonly signer: Signer;
  private readonly ledger: Ledger;
  private readonly ca: LocalCa;
  private readonly caKey: KeyObject;
  private readonly rules: PolicyRules;
  private readonly isDeviceId: (cn: string) => boolean;
  private readonly clock: () => Date;
  private readonly checkers: WorkerRpc[];
  private readonly aloneAfterMs: number;
  /** Issuances handed to the ledger and not yet durable, by CSR hash. */
  private readonly inFlight = new Map<string, Promise<Issued>>();
  /** Their public keys, by device id, with a count each. */
  private readonly inFlightKeys = new Map<string, Map<string, number>>();
  /** Their names (a device's name, or its id), each with the device it is for. */
  /** Names of certificates on their way into the ledger, by what they look like (nameSkeleton). */
  private readonly inFlightNames = new Map<string, { deviceId: string; name: string; count: number }>();
  /** How many of them each work order has. */
  private readonly inFlightByOrder = new Map<string, number>();
  /** The ledger's station-wide facts as last read, and what this station committed since (see stationFacts). */
  private context: { readAt: number; known: StationContext; committed: number; byOrder: Map<string, number>; last: Date | undefined } | null = null;
  /** The token failed its last signature: HEAD /sign says so until a signature succeeds again. */
  private tokenDown: { message: string; probedAt: number } | null = null;
  /** When the token last signed (a request or a probe). */
  private tokenCheckedAt = 0;
  /** Requests inside handle() now. */
  private active = 0;
  /** Requests past their decision, on their way to the token or the ledger. */
  private signing = 0;
  /** The last moment two of those were in the station at once (performance.now()). */
  private overlappedAt = -Infinity;
  /**
   * When a CSR's proof of possession last failed. The proof is made after
   * the token signs, with the checks (see finish: here for a lone request,
   * in a checking worker under load); for a while after a
   * failed one it comes first again, so that a flood of forged CSRs costs
   * the token nothing (and a burst at most MAX_UNPROVEN signatures).
   */
  private proofFailedAt = -Infinity;
  /** Requests past their decision whose proof of possession is not made yet (see MAX_UNPROVEN). */
  private unproven = 0;
  /** Refusals and replays: identical ones within a second become one event with a count. */
  private readonly floods = new EventCoalescer((e) => this.safeEvent(e));

  constructor(parts: StationParts) {
    this.stationId = parts.stationId;
    this.signer = parts.signer;
    this.ledger = parts.ledger;
    this.ca = parts.localCa;
    this.caKey = parts.signer.publicKey();
    this.rootPem = parts.rootPem;
    this.rules = parts.rules;
    this.isDeviceId = deviceIdMatcher(parts.rules.deviceId);
    this.clock = parts.clock ?? (() => new Date());
    this.checkers = parts.checkers ?? [];
    this.aloneAfterMs = parts.aloneAfterMs ?? ALONE_AFTER_MS;
  }

  hello(): StationHello {
    return {
      protocol: 1,
      station: this.stationId,
      factory: this.rules.factory,
      ca: this.ca.fingerprint,
      max_frame: MAX_FRAME,
      production: this.rules.production,
    };
  }

  /** Null when a request would be served now; else the station-wide reason it would be refused. */
  health(): Unhealthy | null {
    if (this.tokenDown) {
      this.probeToken();
      return { code: 'TOKEN_UNAVAILABLE', message: this.tokenDown.message };
    }
    return checkStation(this.stationFacts(this.clock(), true), this.rules);
  }

  /**
   * The health as a probe should report it: when the token has not signed
   * for a while, a throwaway signature (bounded by 2 s) says first whether
   * it still can, so that a pulled token shows before a device posts.
   */
  async checkHealth(): Promise<Unhealthy | null> {
    if (Date.now() - this.tokenCheckedAt > 1000) {
      this.tokenCheckedAt = Date.now();
      const probe = this.probeSignature().then(
        () => {
          this.tokenDown = null;
        },
        (err: unknown) => {
          const e = asLineSignerError(err);
          this.tokenDown = { message: e.message, probedAt: Date.now() };
        },
      );
      await Promise.race([probe, new Promise((r) => setTimeout(r, 2000).unref())]);
    }
    return this.health();
  }

  /** While the token is down, a throwaway signature every 2 s tells when it is back, even with no request coming. */
  private probeToken(): void {
    const down = this.tokenDown;
    if (!down || Date.now() - down.probedAt < 2000) return;
    down.probedAt = Date.now();
    this.probeSignature().then(
      () => {
        if (this.tokenDown === down) this.tokenDown = null;
      },
      () => undefined,
    );
  }

  /**
   * A throwaway signature, checked with the local-ca key: a token that signs
   * with another key (a handle gone stale) is as down as one that does not sign.
   */
  private async probeSignature(): Promise<void> {
    const message = randomBytes(16);
    const signature = await this.signer.sign(createHash(this.ca.profile.hash).update(message).digest());
    if (!verify(this.ca.profile.hash, message, this.caKey, signature)) {
      throw new LineSignerError('TOKEN_UNAVAILABLE', 'the token returned a signature that does not verify with the local-ca key');
    }
  }

  /** The token is down for `message`; a probe already timed keeps its time. */
  private markTokenDown(message: string): void {
    this.tokenDown = { message, probedAt: this.tokenDown?.probedAt ?? Date.now() };
  }

  /** Signs a TBS digest, keeping track of whether the token works. */
  private async sign(digest: Uint8Array): Promise<Uint8Array> {
    try {
      const signature = await this.signer.sign(digest, this.alone);
      this.tokenDown = null;
      this.tokenCheckedAt = Date.now();
      return signature;
    } catch (err) {
      const e = asLineSignerError(err);
      if (e.code === 'TOKEN_UNAVAILABLE' || e.code === 'TOKEN_PIN') this.markTokenDown(e.message);
      throw err;
    }
  }

  /** A request a link refused before it could reach handle(): still in the event log. */
  async recordRefusal(link: string, code: ProtocolCode, message: string): Promise<void> {
    await this.floods.record({ kind: 'rejection', code, message: clipMessage(message), link });
  }

  /** Writes the flood counts still open; the station's owner calls it before closing the ledger. */
  flushEvents(): Promise<void> {
    return this.floods.flush();
  }

  /** Signs one CSR, or says why not. Never throws; every refusal is in the event log. */
  async handle(req: SignRequest): Promise<SignResult> {
    this.active++;
    try {
      return await this.handleOne(req);
    } finally {
      this.active--;
    }
  }

  /** No other request in flight, nor two signing lately (ALONE_AFTER_MS): the token and ledger may take their low-latency paths. */
  private get alone(): { alone: boolean } {
    return { alone: this.active === 1 && performance.now() - this.overlappedAt > this.aloneAfterMs };
  }

  private async handleOne(req: SignRequest): Promise<SignResult> {
    let csrSha256: string | null = null;
    let deviceId: string | null = null;
    // The proof of possession not made first: made with the checks after the signature (see finish),
    // here when the request came alone, else in a checking worker.
    let proofLeft: ParsedCsr | null = null;
    let proofHere = false;
    let unproven = false; // counted in this.unproven
    let pastDecision = false; // counted in this.signing
    let decidedAt = 0;
    const proven = (): void => {
      if (unproven) this.unproven--;
      unproven = false;
    };
    try {
      // What the client said about itself is text, checked again whichever link it came by.
      if (req.name !== undefined) checkDeviceName('name', req.name);
      if (req.hardwareId !== undefined) checkClientText('hardware-id', req.hardwareId, TEXT_LIMITS.hardwareId);
      if (req.encoding === 'der' && looksLikePem(req.csr)) throw new LineSignerError('BAD_CSR', "a J1 SIGN body is the CSR's DER, not PEM text (PEM text is for PEM mode)");
      const der = csrDer(req.csr);
      csrSha256 = sha256(der);

      // A retry of a CSR already signed gets the very same certificate.
      const earlier = this.previousAnswer(csrSha256, req);
      if (earlier) return await earlier;

      const csr = parseCsr(der);
      // The CSR with its signature's other valid form, made without the key by anyone who saw it: the same request.
      const twin = signatureTwin(csr);
      const twinSha256 = twin ? sha256(twin) : null;
      const earlierTwin = twinSha256 ? this.previousAnswer(twinSha256, req) : null;
      if (earlierTwin) return await earlierTwin;
      refuseIf(checkKey(csr, this.rules));
      if (this.clock().getTime() - this.proofFailedAt > PROOF_FIRST_MS && this.unproven < MAX_UNPROVEN) {
        proofLeft = csr;
        proofHere = this.checker() === null;
        unproven = true;
        this.unproven++;
      } else await this.prove(csr);
      const subject = checkSubject(csr, this.rules, this.isDeviceId);
      refuseIf(subject.refusal);
      deviceId = subject.deviceId;
      refuseIf(checkExtensions(csr));
      // The device cloud knows a device by its name (its id when none is given): one name, one device.
      const name = req.name ?? deviceId;
      refuseIf(checkNameForm(name, deviceId, this.rules));
      this.refuseTakenName(name, deviceId);
      const publicKeySha256 = sha256(csr.spki);
      const now = this.clock();
      refuseIf(this.decide(deviceId, publicKeySha256, now, req).refusal);

      pastDecision = true;
      decidedAt = performance.now();
      if (++this.signing > 1) this.overlappedAt = decidedAt;
      const serial = newSerial();
      const request = {
        serial,
        notBefore: now,
        subject: subject.subject,
        spki: canonicalSpki(csr),
        publicKeyBits: csr.publicKeyBits.slice(), // its own bytes: it may travel to the checking worker
      };
      const tbs = buildTbs(this.ca.profile, request);
      const signature = await this.sign(createHash(this.ca.profile.hash).update(tbs).digest());
      // The token's signature checked, the certificate assembled, and read back by an independent parser, or nothing is issued.
      // From here the proof is finish's first step, whichever thread makes it.
      const proof = proofLeft;
      proofLeft = null;
      const certificate = await this.finish(tbs, signature, request, proof, proofHere);
      proven();

      // Other requests ran while the token signed. Look again, at the ledger
      // and at the commits still on their way to it, and hand this one to the
      // writer in the same synchronous step: nothing can slip in between.
      const meanwhile = this.previousAnswer(csrSha256, req) ?? (twinSha256 ? this.previousAnswer(twinSha256, req) : null);
      if (meanwhile) return await meanwhile;
      this.refuseTakenName(name, deviceId);
      const decision = this.decide(deviceId, publicKeySha256, now, req);
      refuseIf(decision.refusal);
      const workOrder = decision.facts.order?.id ?? null;
      return await this.commit(csrSha256, deviceId, publicKeySha256, workOrder, {
        serial: serialHex(serial),
        deviceId,
        subject: subjectText(subject.subject),
        publicKeySha256,
        csrSha256,
        certificate,
        notBefore: secondsIso(now),
        notAfter: notAfterFor(now, this.ca.profile.validityDays).toISOString(),
        issuedAt: now.toISOString(),
        link: req.link,
        hardwareId: req.hardwareId ?? null,
        workOrder,
        name,
      });
    } catch (err) {
      // The profile's order: a refusal by a later check is BAD_SIGNATURE when the proof fails too.
      const proofFailure = proofLeft ? await this.proofFailure(proofLeft) : null;
      const e = asLineSignerError(proofFailure ?? err);
      // A CSR that fails its proof says nothing about who sent it: its refusal names no device (the CSR's id may be a victim's).
      const proofFailed = e.code === 'BAD_SIGNATURE' || e.code === 'POLICY_KEY';
      return await this.refuse(e, req, csrSha256, proofFailed ? null : deviceId);
    } finally {
      proven();
      // Leaving others on their way: they overlapped until now, however long ago they came.
      // So does the last of them to leave: the station was busy until then.
      if (pastDecision && (this.signing-- > 1 || this.overlappedAt >= decidedAt)) this.overlappedAt = performance.now();
    }
  }

  /**
   * Hands an issuance to the ledger and remembers it until it is durable, so
   * that checks made meanwhile count it (see issuanceFacts) and a retry of
   * the same CSR waits for it instead of signing again.
   */
  private commit(csrSha256: string, deviceId: string, publicKeySha256: string, workOrder: string | null, entry: NewIssuance): Promise<Issued> {
    let keys = this.inFlightKeys.get(deviceId);
    if (!keys) this.inFlightKeys.set(deviceId, (keys = new Map()));
    keys.set(publicKeySha256, (keys.get(publicKeySha256) ?? 0) + 1);
    if (workOrder) this.inFlightByOrder.set(workOrder, (this.inFlightByOrder.get(workOrder) ?? 0) + 1);
    const skeleton = nameSkeleton(entry.name ?? deviceId);
    const named = this.inFlightNames.get(skeleton);
    this.inFlightNames.set(skeleton, { deviceId, name: entry.name ?? deviceId, count: (named?.count ?? 0) + 1 });
    const guard: CommitGuard = {
      maxCertificates: this.rules.maxCertificates,
      maxPerMinute: this.rules.maxPerMinute,
      requireOrder: this.rules.requireOrder,
    };
    const done = this.ledger.recordIssuance(entry, { ...this.alone, guard }).then((row) => {
      const c = this.context;
      if (c && c.readAt <= Date.now()) {
        c.committed++;
        if (row.workOrder) c.byOrder.set(row.workOrder, (c.byOrder.get(row.workOrder) ?? 0) + 1);
        const at = new Date(row.issuedAt);
        if (!c.last || at > c.last) c.last = at;
      }
      return this.issued(row, false);
    });
    const forget = (): void => {
      this.inFlight.delete(csrSha256);
      const n = this.inFlightNames.get(skeleton)!;
      if (n.count > 1) n.count--;
      else this.inFlightNames.delete(skeleton);
      if (workOrder) {
        const left = this.inFlightByOrder.get(workOrder)! - 1;
        if (left > 0) this.inFlightByOrder.set(workOrder, left);
        else this.inFlightByOrder.delete(workOrder);
      }
      const k = keys.get(publicKeySha256)! - 1;
      if (k > 0) keys.set(publicKeySha256, k);
      else keys.delete(publicKeySha256);
      if (keys.size === 0) this.inFlightKeys.delete(deviceId);
    };
    done.then(forget, forget);
    this.inFlight.set(csrSha256, done);
    return done;
  }

  /**
   * The answer already given, or being given, to this very CSR; null for a
   * new one. A certificate since superseded (a re-issue) or of a revoked
   * device is not handed out again.
   */
  private previousAnswer(csrSha256: string, req: SignRequest): Promise<Issued> | null {
    const inFlight = this.inFlight.get(csrSha256);
    if (inFlight) return inFlight.then(() => this.replay(this.ledger.findByCsrHash(csrSha256)!, req));
    const earlier = this.ledger.findByCsrHash(csrSha256);
    if (!earlier) return null;
    const device = this.ledger.deviceContext(earlier.deviceId);
    if (device.revoked) {
      throw new LineSignerError('DUPLICATE_DEVICE', `device ${earlier.deviceId} was revoked (${quote(device.revoked.reason)}); its certificate is not handed out again`);
    }
    if (device.newestSeq !== undefined && device.newestSeq > earlier.seq) {
      // Superseded by a certificate for a new key, or for the same key from a newer CSR: say which.
      const sameKey = device.currentKey === earlier.publicKeySha256;
      throw new LineSignerError(
        'DUPLICATE_DEVICE',
        `this CSR's certificate (seq ${earlier.seq}) was superseded by seq ${device.newestSeq}${sameKey ? ', made for the same key from a newer CSR: send that CSR again' : "; the device's old key is no longer accepted"}`,
      );
    }
    return this.replay(earlier, req);
  }

  /** POLICY_SUBJECT when another device holds `name`, in the ledger or on its way into it. */
  private refuseTakenName(name: string, deviceId: string): void {
    const skeleton = nameSkeleton(name);
    const pending = this.inFlightNames.get(skeleton);
    const holder = pending && pending.deviceId !== deviceId ? pending : this.ledger.nameHolder(name, deviceId, skeleton);
    if (holder) throw new LineSignerError('POLICY_SUBJECT', nameTakenMessage(name, holder.deviceId, holder.name));
  }

  /** The station-wide facts: the ledger's, plus the issuances still on their way into it. */
  /**
   * The station-wide facts: the ledger's, read at most every 100 ms (a read
   * while the writer commits can wait on it), plus what this station
   * committed since and what is still on its way. A refusal made on these
   * is looked at again with `fresh` facts, and the commit re-checks the
   * ledger itself, so a cached fact can cost at most a wasted signature.
   */
  private stationFacts(now: Date, fresh = false): StationFacts {
    let c = this.context;
    if (fresh || !c || Date.now() - c.readAt > 100) {
      c = this.context = { readAt: Date.now(), known: this.ledger.stationContext(now, this.rules.maxPerMinute ?? 0), committed: 0, byOrder: new Map(), last: undefined };
    }
    const { known } = c;
    const order = known.order;
    const last = c.last && (!known.lastIssuedAt || c.last > known.lastIssuedAt) ? c.last : known.lastIssuedAt;
    return {
      order: order && { ...order, issued: order.issued + (c.byOrder.get(order.id) ?? 0) + (this.inFlightByOrder.get(order.id) ?? 0) },
      issuedCount: known.issuedCount + c.committed + this.inFlight.size,
      issuedLastMinute: known.issuedLastMinute + c.committed + this.inFlight.size,
      now,
      lastIssuedAt: last,
      // A confirmation counts until the next issuance.
      clockConfirmedAt: c.committed > 0 ? undefined : known.clockConfirmedAt,
      caNotBefore: this.ca.notBefore,
      caNotAfter: this.ca.notAfter,
    };
  }

  /**
   * The checks after the token signed. A lone request makes them here; under
   * load the checking worker does (check-worker.ts), so that the thread that
   * serves the links keeps to parsing and deciding. The CSR's proof of
   * possession waits until here and goes with them (finishAndProve): under
   * load one trip to a checking worker a certificate instead of two, and
   * either way the device key OpenSSL read back is not imported again.
   * That is worth more than the token signature it may waste on a CSR
   * whose proof then fails (that signature is dropped; nothing is issued).
   */
  private async finish(tbs: Uint8Array, signature: Uint8Array, request: CertificateRequestFacts, proofLeft: ParsedCsr | null, proofHere: boolean): Promise<Uint8Array> {
    // A proof left for a worker (the request came under load) goes to one even if the request is alone by now;
    // a request that came alone goes to one too if others have come since.
    const checker = proofLeft && !proofHere ? this.leastBusyChecker() : this.checker();
    try {
      if (checker) return await checker.call<Uint8Array>({ op: 'finish', tbs, signature, facts: request, csr: proofLeft ? ownBytes(proofLeft.der) : undefined });
      if (proofLeft) return await finishAndProve(tbs, signature, this.ca.profile, this.caKey, request, proofLeft);
      return finishCertificate(tbs, signature, this.ca.profile, this.caKey, request);
    } catch (err) {
      // A signature that does not verify with the local-ca key is a token fault: the probe (HEAD /sign) says so too.
      const e = asLineSignerError(err);
      if (e.code === 'TOKEN_UNAVAILABLE') this.markTokenDown(e.message);
      throw err;
    }
  }

  /** The CSR's proof of possession before the signature: in a checking worker under load, else here. */
  private async prove(csr: ParsedCsr): Promise<void> {
    const checker = this.checker();
    if (checker) return checker.call<void>({ op: 'prove', csr: ownBytes(csr.der) });
    return proveKeyPossession(csr);
  }

  /** The refusal of a CSR whose proof of possession fails (BAD_SIGNATURE, or POLICY_KEY for a point off its curve), or null when it holds. */
  private async proofFailure(csr: ParsedCsr): Promise<LineSignerError | null> {
    try {
      // Where every proof is made: a flood of CSRs that later checks refuse must not load the links' thread.
      await this.prove(csr);
      return null;
    } catch (err) {
      const e = asLineSignerError(err);
      return e.code === 'BAD_SIGNATURE' || e.code === 'POLICY_KEY' ? e : null;
    }
  }

  /** The checking worker with the fewest calls waiting; null when the work is done here (a lone request, or no workers). */
  private checker(): WorkerRpc | null {
    if (this.checkers.length === 0 || this.alone.alone) return null;
    return this.leastBusyChecker();
  }

  private leastBusyChecker(): WorkerRpc {
    let best = this.checkers[0]!;
    for (const c of this.checkers) if (c.waiting < best.waiting) best = c;
    return best;
  }

  /** The issuance checks; a station-wide refusal made on cached facts is made again on fresh ones. */
  private decide(deviceId: string, publicKeySha256: string, now: Date, req: SignRequest): { facts: IssuanceFacts; refusal: Refusal | null } {
    let facts = this.issuanceFacts(deviceId, publicKeySha256, now, req);
    let refusal = checkIssuance(facts, this.rules);
    if (refusal && (refusal.code === 'QUOTA_EXCEEDED' || refusal.code === 'CLOCK')) {
      facts = this.issuanceFacts(deviceId, publicKeySha256, now, req, true);
      refusal = checkIssuance(facts, this.rules);
    }
    return { facts, refusal };
  }

  /** Operator actions change what the station decides: the next request reads the ledger again. */
  invalidate(): void {
    this.context = null;
  }

  /** One device's facts plus the station's, in flight included. */
  private issuanceFacts(deviceId: string, publicKeySha256: string, now: Date, req: SignRequest, fresh = false): IssuanceFacts {
    const known = this.ledger.deviceContext(deviceId, publicKeySha256);
    const pending = this.inFlightKeys.get(deviceId);
    // A certificate on its way for this device is its newest: its key is the current one.
    const pendingKey = pending ? [...pending.keys()].find((k) => k !== publicKeySha256) ?? publicKeySha256 : undefined;
    const currentKey = pendingKey ?? known.currentKey;
    return {
      ...this.stationFacts(now, fresh),
      deviceId,
      publicKeySha256,
      hardwareId: req.hardwareId,
      currentKey,
      formerKey: known.keySeq !== undefined && currentKey !== publicKeySha256,
      revoked: pending ? undefined : known.revoked,
      // A re-issue grant is used up by the first certificate that needs it.
      reissueAllowed: known.reissueAllowed && !pending,
    };
  }

  private async replay(row: Issuance, req: SignRequest): Promise<Issued> {
    // The certificate comes back as it was made, and the HTTP link's sota.toml from the request: a request naming
    // another hardware id or name than the one recorded with it would configure the device for what was never checked.
    if (req.hardwareId !== undefined && req.hardwareId !== row.hardwareId) {
      const recorded = row.hardwareId === null ? 'with no hardware id' : `for hardware id ${quote(row.hardwareId)}`;
      throw new LineSignerError(
        'POLICY_SUBJECT',
        `this CSR was signed before (seq ${row.seq}) ${recorded}; sent again with hardware id ${quote(req.hardwareId)}, it gets nothing: the device would be set up for a hardware id the station never checked`,
      );
    }
    const recordedName = row.name ?? row.deviceId;
    if (req.name !== undefined && req.name !== recordedName) {
      throw new LineSignerError(
        'POLICY_SUBJECT',
        `this CSR was signed before (seq ${row.seq}) under the name ${quote(recordedName)}; sent again with the name ${quote(req.name)}, it gets nothing: the device cloud knows the device by the name recorded with it`,
      );
    }
    await this.floods.record({ kind: 'replay', csrSha256: row.csrSha256, deviceId: row.deviceId, link: req.link, message: `seq ${row.seq}` });
    return this.issued(row, true);
  }

  private issued(row: Issuance, replayed: boolean): Issued {
    const certificatePem = pemEncode(row.certificate, 'CERTIFICATE');
    return {
      ok: true,
      chain: certificatePem + this.ca.pem,
      certificatePem,
      serial: row.serial,
      deviceId: row.deviceId,
      replayed,
    };
  }

  private async refuse(err: unknown, req: SignRequest, csrSha256: string | null, deviceId: string | null): Promise<SignResult> {
    const e = asLineSignerError(err);
    // Only protocol codes go back to a jig; a local code (a PIN problem) is a token problem to it.
    const code = isProtocolCode(e.code) ? e.code : e.code === 'TOKEN_PIN' ? 'TOKEN_UNAVAILABLE' : 'INTERNAL';
    // A message may carry what the request said (an OID, a name): bounded, it fits a J1 frame and a ledger row.
    const message = clipMessage(e.message);
    // POLICY_KEY too: a point off its curve is found in the proof.
    if (code === 'BAD_SIGNATURE' || code === 'POLICY_KEY') this.proofFailedAt = this.clock().getTime();
    await this.floods.record({ kind: 'rejection', code, message, csrSha256, deviceId, link: req.link });
    return { ok: false, code, message, deviceId };
  }

  /** An event that cannot be written must not turn a reply into a crash. */
  private async safeEvent(event: Parameters<Ledger['recordEvent']>[0]): Promise<void> {
    try {
      await this.ledger.recordEvent(event, this.alone);
    } catch (err) {
      process.emitWarning(`ledger: event not recorded: ${(err as Error).message}`);
    }
  }
}

function refuseIf(refusal: Refusal | null): void {
  if (refusal) throw new LineSignerError(refusal.code, refusal.message);
}

/** A link's bytes may be a view into Buffer's shared pool: a worker gets the CSR's own bytes, not the pool. */
function ownBytes(bytes: Uint8Array): Uint8Array {
  return bytes.byteLength === bytes.buffer.byteLength ? bytes : bytes.slice();
}

function sha256(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

/** Certificates carry whole seconds; the ledger says what the certificate says. */
function secondsIso(d: Date): string {
  return new Date(Math.floor(d.getTime() / 1000) * 1000).toISOString();
}

function subjectText(subject: ReadonlyArray<{ type: string; value: string }>): string {
  return subject.map((a) => `${ATTRIBUTE_NAMES[a.type] ?? a.type}=${a.value}`).join(',');
}
