/**
 * The one path a request takes. Reading `handle` tells how a certificate
 * is made: replay lookup → parse → policy → build → sign → verify →
 * commit → reply. Links call it; nothing else orders these steps.
 */
import { createHash, type KeyObject } from 'node:crypto';
import { asLineSignerError, isProtocolCode, LineSignerError } from '../errors.js';
import type { Issuance, Ledger } from '../ledger/index.js';
import {
  checkExtensions,
  checkIssuance,
  checkKey,
  checkSubject,
  deviceIdMatcher,
  type IssuanceFacts,
  type PolicyRules,
  type Refusal,
} from '../policy/index.js';
import type { Signer } from '../token/signer.js';
import {
  assembleCertificate,
  buildTbs,
  checkIssuedSignature,
  csrDer,
  csrPublicKey,
  newSerial,
  notAfterFor,
  parseCsr,
  pemEncode,
  serialHex,
  verifyCsrSignature,
  ATTRIBUTE_NAMES,
  type IssuerProfile,
} from '../x509/index.js';
import type { Issued, SignRequest, SignResult, StationHello } from './types.js';

export const MAX_FRAME = 16384;

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

  /** Signs one CSR, or says why not. Never throws; every refusal is in the event log. */
  async handle(req: SignRequest): Promise<SignResult> {
    let csrSha256: string | null = null;
    let deviceId: string | null = null;
    try {
      const der = csrDer(req.csr);
      csrSha256 = sha256(der);

      // A retry of a CSR already signed gets the very same certificate.
      const earlier = this.ledger.findByCsrHash(csrSha256);
      if (earlier) return this.replay(earlier, req);

      const csr = parseCsr(der);
      refuseIf(checkKey(csr, this.rules));
      verifyCsrSignature(csr, csrPublicKey(csr));
      const subject = checkSubject(csr, this.rules, this.isDeviceId);
      refuseIf(subject.refusal);
      deviceId = subject.deviceId;
      refuseIf(checkExtensions(csr));
      const publicKeySha256 = sha256(csr.spki);
      const now = this.clock();
      refuseIf(checkIssuance(this.issuanceFacts(deviceId, publicKeySha256, now), this.rules));

      const serial = newSerial();
      const tbs = buildTbs(this.ca.profile, {
        serial,
        notBefore: now,
        subject: subject.subject,
        spki: csr.spki,
        publicKeyBits: csr.publicKeyBits,
      });
      const signature = await this.signer.sign(createHash(this.ca.profile.hash).update(tbs).digest());
      checkIssuedSignature(tbs, this.ca.profile.hash, signature, this.caKey);
      const certificate = assembleCertificate(tbs, this.ca.profile.signatureAlgorithm, signature);

      // Other requests ran while the token signed: look again, then commit in
      // the same tick, so no request can slip in between check and commit.
      const meanwhile = this.ledger.findByCsrHash(csrSha256);
      if (meanwhile) return this.replay(meanwhile, req);
      refuseIf(checkIssuance(this.issuanceFacts(deviceId, publicKeySha256, now), this.rules));
      const row = this.ledger.recordIssuance({
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
        hardwareId: req.hardwareId,
        workOrder: req.workOrder,
      });
      return this.issued(row, false);
    } catch (err) {
      return this.refuse(err, req, csrSha256, deviceId);
    }
  }

  private issuanceFacts(deviceId: string, publicKeySha256: string, now: Date): IssuanceFacts {
    return {
      deviceId,
      publicKeySha256,
      keysIssuedForDevice: this.ledger.deviceKeys(deviceId),
      reissueAllowed: this.ledger.reissueAllowed(deviceId),
      issuedCount: this.ledger.issuedCount(),
      now,
      lastIssuedAt: this.ledger.lastIssuedAt(),
      caNotBefore: this.ca.notBefore,
      caNotAfter: this.ca.notAfter,
    };
  }

  private replay(row: Issuance, req: SignRequest): Issued {
    this.safeEvent({ kind: 'replay', csrSha256: row.csrSha256, deviceId: row.deviceId, link: req.link, message: `seq ${row.seq}` });
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

  private refuse(err: unknown, req: SignRequest, csrSha256: string | null, deviceId: string | null): SignResult {
    const e = asLineSignerError(err);
    // Only protocol codes go back to a jig; a local code (a PIN problem) is a token problem to it.
    const code = isProtocolCode(e.code) ? e.code : e.code === 'TOKEN_PIN' ? 'TOKEN_UNAVAILABLE' : 'INTERNAL';
    this.safeEvent({ kind: 'rejection', code, message: e.message, csrSha256, deviceId, link: req.link });
    return { ok: false, code, message: e.message };
  }

  /** An event that cannot be written must not turn a reply into a crash. */
  private safeEvent(event: Parameters<Ledger['recordEvent']>[0]): void {
    try {
      this.ledger.recordEvent(event);
    } catch (err) {
      process.emitWarning(`ledger: event not recorded: ${(err as Error).message}`);
    }
  }
}

function refuseIf(refusal: Refusal | null): void {
  if (refusal) throw new LineSignerError(refusal.code, refusal.message);
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
