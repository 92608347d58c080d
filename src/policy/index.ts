/**
 * The factory's rules, as pure functions: facts in, a refusal (code and
 * message) or null out. No I/O, no clock of its own; the station gathers
 * the facts. The order of the profile's "signed only if" table is kept by
 * the station calling these in turn: key, (signature), subject, extensions,
 * then the issuance checks that need the ledger.
 */
import type { ProtocolCode } from '../errors.js';
import type { ParsedCsr } from '../x509/csr.js';
import { ATTRIBUTE_NAMES, OID } from '../oids.js';
import { deviceNameProblem, nameSkeleton, quote } from '../text.js';

export interface Refusal {
  code: ProtocolCode;
  message: string;
}

export interface PolicyRules {
  factory: string;
  production: boolean;
  /** "uuid" or a regular expression the whole CN must match. */
  deviceId: string;
  allowP384: boolean;
  maxCertificates?: number | undefined;
  /** Certificates per minute, all links together; absent = no limit (stops a runaway jig). */
  maxPerMinute?: number | undefined;
  /** Issue only while a work order is open. */
  requireOrder: boolean;
  clockSkewSeconds: number;
  /** Refuse when the clock is this far ahead of the newest issuance (or clock confirmation). */
  clockGapDays: number;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

const refuse = (code: ProtocolCode, message: string): Refusal => ({ code, message });

function attrName(oid: string): string {
  return ATTRIBUTE_NAMES[oid] ?? oid;
}

const EC_POINT_SIZE: Record<string, number> = { [OID.p256]: 32, [OID.p384]: 48 };

/**
 * Key: EC P-256, and P-384 where the station allows it, named by its curve
 * OID (no explicit parameters), as an uncompressed point of the curve's
 * size; nothing else. (Whether the point is on the curve is checked where
 * the key is imported, x509 csrPublicKey, still before the signature.)
 */
export function checkKey(csr: ParsedCsr, rules: PolicyRules): Refusal | null {
  if (csr.keyAlgorithm !== OID.ecPublicKey) {
    const kind = csr.keyAlgorithm === '1.2.840.113549.1.1.1' ? 'RSA' : csr.keyAlgorithm === '1.3.101.112' ? 'Ed25519' : csr.keyAlgorithm;
    return refuse('POLICY_KEY', `key type ${kind} is not allowed; use EC P-256`);
  }
  const allowed = `use P-256${rules.allowP384 ? ' or P-384' : ''}`;
  if (csr.keyParameters !== 'namedCurve') {
    const what = csr.keyParameters === 'explicit' ? 'explicit curve parameters' : csr.keyParameters === 'null' ? 'NULL parameters' : csr.keyParameters === 'absent' ? 'no curve' : 'unknown parameters';
    return refuse('POLICY_KEY', `EC key with ${what} is not allowed; name the curve: ${allowed}`);
  }
  if (csr.curve !== OID.p256 && !(csr.curve === OID.p384 && rules.allowP384)) {
    return refuse('POLICY_KEY', `EC curve ${csr.curve === OID.p384 ? 'P-384' : csr.curve} is not allowed; ${allowed}`);
  }
  const point = csr.publicKeyBits;
  const size = EC_POINT_SIZE[csr.curve]!;
  if (point[0] === 0x02 || point[0] === 0x03) return refuse('POLICY_KEY', 'compressed EC points are not allowed; send the uncompressed point (04 || X || Y)');
  if (point[0] === 0x06 || point[0] === 0x07) return refuse('POLICY_KEY', 'hybrid EC points are not allowed; send the uncompressed point (04 || X || Y)');
  if (point[0] !== 0x04 || point.length !== 1 + 2 * size) {
    return refuse('POLICY_KEY', `the EC point is not an uncompressed point of ${1 + 2 * size} bytes (04 || X || Y)`);
  }
  return null;
}

export function deviceIdMatcher(pattern: string): (cn: string) => boolean {
  if (pattern === 'uuid') return (cn) => UUID.test(cn);
  const re = new RegExp(`^(?:${pattern})$`, 'u');
  return (cn) => re.test(cn);
}

/**
 * Under the default device ids (UUIDs), a name the device asked for (the
 * HTTP link's `name`) that is a UUID must be the device's own id: otherwise
 * one device could take, as names, the ids of devices not made yet, and
 * each would be refused its own name when it came. A factory's own id
 * pattern may match ordinary names (`[A-Za-z0-9-]+`), so there the naming
 * scheme keeps names and ids apart.
 */
export function checkNameForm(name: string, deviceId: string, rules: Pick<PolicyRules, 'deviceId'>): Refusal | null {
  if (rules.deviceId !== 'uuid' || name === deviceId) return null;
  // As it reads, not only as it is spelt: in upper case, or with letters that look like digits
  // (Ʒ for 3, Ƽ for 5), a UUID still blocks the device whose id it reads as.
  if (!UUID.test(nameSkeleton(name).toLowerCase())) return null;
  return refuse('POLICY_SUBJECT', `name ${quote(name)} reads as a UUID, the form of a device id, and is not this device's (${quote(deviceId)}): a device id is only its own device's name`);
}

export interface SubjectDecision {
  refusal: Refusal | null;
  /** The CN when the subject passed. */
  deviceId: string;
  /** The subject to put in the certificate: the CSR's attributes in order. */
  subject: Array<{ type: string; value: string }>;
}

/** Subject: exactly CN, OU and (only on a production station) businessCategory=production. */
export function checkSubject(csr: ParsedCsr, rules: PolicyRules, isDeviceId = deviceIdMatcher(rules.deviceId)): SubjectDecision {
  const no = (message: string): SubjectDecision => ({ refusal: refuse('POLICY_SUBJECT', message), deviceId: '', subject: [] });
  const seen = new Map<string, string>();
  const subject: Array<{ type: string; value: string }> = [];
  if (csr.rdnCount !== csr.subject.length) return no('subject has a multi-valued RDN; one attribute per RDN');
  for (const a of csr.subject) {
    const allowed = a.type === OID.commonName || a.type === OID.organizationalUnit || (a.type === OID.businessCategory && rules.production);
    if (!allowed) {
      return no(
        a.type === OID.businessCategory
          ? 'businessCategory is not allowed on a non-production station'
          : `subject attribute ${attrName(a.type)} is not allowed; only CN and OU${rules.production ? ' and businessCategory' : ''}`,
      );
    }
    if (seen.has(a.type)) return no(`subject has ${attrName(a.type)} more than once`);
    if (a.value === null) return no(`subject ${attrName(a.type)} is not a text string`);
    seen.set(a.type, a.value);
    subject.push({ type: a.type, value: a.value });
  }
  const cn = seen.get(OID.commonName);
  if (cn === undefined) return no('subject has no CN (the device id)');
  if (!isDeviceId(cn)) {
    return no(
      rules.deviceId === 'uuid'
        ? `CN "${clip(cn)}" is not a device id (a lowercase UUID, 8-4-4-4-12 hex digits)`
        : `CN "${clip(cn)}" does not match the station's device id pattern`,
    );
  }
  // The id is the device's name in the device cloud when no other is given; a factory's own pattern may let any text in.
  const asName = rules.deviceId === 'uuid' ? null : deviceNameProblem(cn);
  if (asName) return no(`CN as a device name: ${asName}`);
  const ou = seen.get(OID.organizationalUnit);
  if (ou === undefined) return no('subject has no OU (the factory name)');
  if (ou !== rules.factory) return no(`OU "${clip(ou)}" is not this factory ("${rules.factory}")`);
  if (rules.production) {
    const bc = seen.get(OID.businessCategory);
    if (bc === undefined) return no('a production station requires businessCategory=production');
    if (bc !== 'production') return no(`businessCategory "${clip(bc)}" must be "production"`);
  }
  return { refusal: null, deviceId: cn, subject };
}

/** Requested extensions: a CA request is refused; everything else is ignored, never copied. */
export function checkExtensions(csr: ParsedCsr): Refusal | null {
  for (const ext of csr.extensions) {
    const why = ext.asksForCa;
    if (why) return refuse('POLICY_EXTENSION', `the CSR asks for ${why}; the station issues device certificates only`);
  }
  return null;
}

/** What the ledger, the open order and the clock say, gathered by the station. */
export interface StationFacts {
  /** The open work order, with what is issued under it (in flight included). */
  order: { id: string; quantity: number; issued: number; hardwareId: string | null } | undefined;
  issuedCount: number;
  issuedLastMinute: number;
  now: Date;
  lastIssuedAt: Date | undefined;
  /** The operator confirmed the clock after the newest issuance, at this time. */
  clockConfirmedAt: Date | undefined;
  caNotBefore: Date;
  caNotAfter: Date;
}

/** One device's facts, for one request. */
export interface IssuanceFacts extends StationFacts {
  deviceId: string;
  publicKeySha256: string;
  /** The hardware id the request carries (HTTP), if any. */
  hardwareId: string | undefined;
  /** public_key_sha256 of the device's newest certificate, if it has one. */
  currentKey: string | undefined;
  revoked: { reason: string; at: string } | undefined;
  /** The operator allowed this device one certificate for a new key (or after a revocation). */
  reissueAllowed: boolean;
  /** The key was this device's before its current one (replaced by a re-issue, or revoked with it). */
  formerKey?: boolean;
}

/** The clock's checks: inside the local-ca's validity, not behind, not far ahead. */
export function checkClock(f: StationFacts, rules: PolicyRules): Refusal | null {
  const t = f.now.getTime();
  if (t < f.caNotBefore.getTime() || t > f.caNotAfter.getTime()) {
    return refuse(
      'CLOCK',
      `station clock ${f.now.toISOString()} is outside the local-ca validity (${f.caNotBefore.toISOString()} to ${f.caNotAfter.toISOString()})`,
    );
  }
  // The reference: the operator's confirmation when it came after the newest issuance, else that issuance.
  const ref = f.clockConfirmedAt ?? f.lastIssuedAt;
  const what = f.clockConfirmedAt ? 'the clock confirmation' : 'the last issuance';
  const fix = 'if the clock is right now: line-signer clock confirm --operator NAME --reason R';
  if (ref && t + rules.clockSkewSeconds * 1000 < ref.getTime()) {
    return refuse('CLOCK', `station clock ${f.now.toISOString()} is behind ${what} (${ref.toISOString()}); ${fix}`);
  }
  if (ref && t > ref.getTime() + rules.clockGapDays * 86_400_000) {
    return refuse('CLOCK', `station clock ${f.now.toISOString()} is more than ${rules.clockGapDays} days ahead of ${what} (${ref.toISOString()}); ${fix}`);
  }
  return null;
}

/** Station-wide reasons to refuse every request now: limits, the work order, the clock. */
export function checkStation(f: StationFacts, rules: PolicyRules): Refusal | null {
  // The clock first: with a wrong clock the counts that depend on it say nothing.
  const clock = checkClock(f, rules);
  if (clock) return clock;
  if (f.order && f.order.issued >= f.order.quantity) {
    return refuse('QUOTA_EXCEEDED', `work order ${f.order.id} is used up (${f.order.issued} of ${f.order.quantity}); an operator opens the next: line-signer order open ORDER --quantity N`);
  }
  if (!f.order && rules.requireOrder) {
    return refuse('QUOTA_EXCEEDED', 'no open work order, and this station issues only under one: line-signer order open ORDER --quantity N');
  }
  if (rules.maxCertificates !== undefined && f.issuedCount >= rules.maxCertificates) {
    return refuse('QUOTA_EXCEEDED', `the station's limit of ${rules.maxCertificates} certificates is used up`);
  }
  if (rules.maxPerMinute !== undefined && f.issuedLastMinute >= rules.maxPerMinute) {
    return refuse('QUOTA_EXCEEDED', `more than ${rules.maxPerMinute} certificates in the last minute ([policy] max_per_minute): a runaway jig? wait, or raise the limit`);
  }
  return null;
}

/** The checks that need the ledger, in order: the order's hardware id, the device, then the station-wide ones. */
export function checkIssuance(f: IssuanceFacts, rules: PolicyRules): Refusal | null {
  if (f.order?.hardwareId && f.hardwareId !== undefined && f.hardwareId !== f.order.hardwareId) {
    return refuse('POLICY_SUBJECT', `hardware id ${clip(f.hardwareId, true)} is not work order ${f.order.id}'s (${clip(f.order.hardwareId, true)})`);
  }
  if (f.revoked && !f.reissueAllowed) {
    return refuse(
      'DUPLICATE_DEVICE',
      `device ${f.deviceId} was revoked (${clip(f.revoked.reason)}); if it may come back: line-signer ledger allow-reissue ${f.deviceId} --reason ...`,
    );
  }
  if (f.formerKey) {
    return refuse('DUPLICATE_DEVICE', `this key was device ${f.deviceId}'s before a re-issue replaced it: an old key is refused for good`);
  }
  // A grant is for a new key, after a revocation too: a device is most often revoked because its key
  // leaked or its board was scrapped, and the revoked key must not come back with the grant.
  if (f.reissueAllowed && f.currentKey === f.publicKeySha256) {
    return refuse(
      'DUPLICATE_DEVICE',
      f.revoked
        ? `device ${f.deviceId} was revoked (${clip(f.revoked.reason)}): its re-issue is for a new key, and the revoked one is refused`
        : `a re-issue for a new key is pending for device ${f.deviceId}: its old key is refused (the reworked board sends a CSR for its new key)`,
    );
  }
  if (f.currentKey !== undefined && f.currentKey !== f.publicKeySha256 && !f.reissueAllowed) {
    return refuse(
      'DUPLICATE_DEVICE',
      `device ${f.deviceId} already has a certificate for another key; if the board was reworked: line-signer ledger allow-reissue ${f.deviceId} --reason ...`,
    );
  }
  return checkStation(f, rules);
}

/** Client text inside a message: escaped and clipped (src/text.ts), optionally quoted. */
function clip(s: string, quoted = false): string {
  const q = quote(s);
  return quoted ? q : q.slice(1, -1);
}
