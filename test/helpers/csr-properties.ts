/**
 * Properties of the hostile-input boundary for device CSRs, shared by the
 * normal suite (test/csr-property.test.ts, a few hundred runs each) and
 * scripts/fuzz (the same properties for as long as one likes).
 *
 * Inputs are valid CSRs (makeDeviceCsr and `openssl req`, P-256 and P-384,
 * with and without requested extensions) with one change: a byte, a
 * truncation, a length field, or an element added or taken away (lengths
 * made right again, as the reproduction's NULL was); half of them re-signed by the device key
 * after the change, so that the change reaches the checks behind the
 * signature. Whatever comes in, the answer is a typed refusal or a
 * certificate that OpenSSL reads.
 */
import { createPrivateKey, generateKeyPairSync, sign, X509Certificate, type KeyObject } from 'node:crypto';
import { readFileSync } from 'node:fs';
import fc from 'fast-check';
import { isProtocolCode, LineSignerError, type ProtocolCode } from '../../src/errors.js';
import { OID } from '../../src/oids.js';
import { checkExtensions, checkKey, checkSubject, type PolicyRules } from '../../src/policy/index.js';
import { verifyLedger } from '../../src/station/index.js';
import { name, der, signed, tlv } from '../../src/x509/asn1.js';
import { buildTbs, assembleCertificate, checkAssembled, newSerial, type IssuerProfile } from '../../src/x509/certificate.js';
import { canonicalSpki, csrPublicKey, parseCsr, verifyCsrSignature, type ParsedCsr } from '../../src/x509/csr.js';
import { childrenOf, readTlv, type Tlv } from '../../src/x509/der-reader.js';
import { makeDeviceCsr } from '../../src/x509/device-csr.js';
import { FACTORY, openssl, opensslCsr, testStation, uuid, type TestStation } from './pki.js';

export interface CsrSample {
  name: string;
  der: Uint8Array;
  key: KeyObject;
}

/** Valid CSRs of every kind the station signs, each for a new device. */
export function csrSamples(dir: string): CsrSample[] {
  const subject = { factory: FACTORY, production: true };
  const p384 = (): KeyObject => generateKeyPairSync('ec', { namedCurve: 'P-384' }).privateKey;
  const fromOpenssl = (label: string, curve: string, addext: string[] = []): CsrSample => {
    const { csr, keyPath } = opensslCsr(dir, { newkey: ['-newkey', 'ec', '-pkeyopt', `ec_paramgen_curve:${curve}`], addext });
    return { name: label, der: csr, key: createPrivateKey(readFileSync(keyPath)) };
  };
  const extensions = ['subjectAltName=DNS:device.example,IP:10.0.0.1', 'keyUsage=critical,digitalSignature', 'extendedKeyUsage=clientAuth'];
  const made = makeDeviceCsr({ ...subject, deviceId: uuid() });
  const made384 = makeDeviceCsr({ ...subject, deviceId: uuid() }, p384());
  return [
    { name: 'makeDeviceCsr P-256', der: made.der, key: made.privateKey },
    { name: 'makeDeviceCsr P-384', der: made384.der, key: made384.privateKey },
    fromOpenssl('openssl req P-256', 'prime256v1'),
    fromOpenssl('openssl req P-384', 'secp384r1'),
    fromOpenssl('openssl req P-256 with extensions', 'prime256v1', extensions),
    fromOpenssl('openssl req P-384 with extensions', 'secp384r1', extensions),
  ];
}

export type Mutation =
  | { kind: 'byte'; at: number; xor: number }
  | { kind: 'truncate'; length: number }
  | { kind: 'length'; at: number; value: number }
  /** An element added to, or taken from, the `node`-th constructed TLV (in preorder), enclosing lengths made right again. */
  | { kind: 'insert'; node: number; at: number; element: Uint8Array }
  | { kind: 'remove'; node: number; at: number };

/** Small elements to slip in anywhere: NULL (as in the reproduction), INTEGER, OID, empty SEQUENCE, OCTET STRING, UTF8String, BOOLEAN. */
const ELEMENTS = ['0500', '020100', '06032a0304', '3000', '0400', '0c0141', '0101ff'].map((h) => new Uint8Array(Buffer.from(h, 'hex')));

interface Node {
  tag: number;
  /** Children of a constructed TLV. */
  children?: Node[];
  /** The whole TLV of a primitive one. */
  bytes?: Uint8Array;
}

function tree(buf: Uint8Array, t: Tlv): Node {
  if (t.tag & 0x20) return { tag: t.tag, children: childrenOf(buf, t).map((c) => tree(buf, c)) };
  return { tag: t.tag, bytes: buf.subarray(t.start, t.end) };
}

function constructedNodes(n: Node, out: Node[] = []): Node[] {
  if (n.children) {
    out.push(n);
    for (const c of n.children) constructedNodes(c, out);
  }
  return out;
}

const encode = (n: Node): Uint8Array => (n.children ? tlv(n.tag, ...n.children.map(encode)) : n.bytes!);

function restructure(bytes: Uint8Array, m: Extract<Mutation, { kind: 'insert' | 'remove' }>): Uint8Array {
  const root = tree(bytes, readTlv(bytes, 0));
  const node = constructedNodes(root)[m.node]!;
  const children = node.children!;
  if (m.kind === 'insert') children.splice(Math.min(m.at, children.length), 0, { tag: m.element[0]!, bytes: m.element });
  else children.splice(m.at % Math.max(children.length, 1), 1);
  return encode(root);
}

export interface MutatedCsr {
  sample: string;
  /** The change was made in certificationRequestInfo and the result signed again by the device key. */
  resigned: boolean;
  mutation: Mutation;
  der: Uint8Array;
}

/** Offsets of every length byte of every TLV in a DER structure, descending into constructed ones. */
export function lengthOffsets(buf: Uint8Array): number[] {
  const out: number[] = [];
  const walk = (t: Tlv): void => {
    for (let i = t.start + 1; i < t.contentStart; i++) out.push(i);
    if (t.tag & 0x20) for (const c of childrenOf(buf, t)) walk(c);
  };
  walk(readTlv(buf, 0));
  return out;
}

export function mutate(bytes: Uint8Array, m: Mutation): Uint8Array {
  if (m.kind === 'truncate') return bytes.slice(0, m.length);
  if (m.kind === 'insert' || m.kind === 'remove') return restructure(bytes, m);
  const copy = bytes.slice();
  if (m.kind === 'byte') copy[m.at]! ^= m.xor;
  else copy[m.at] = m.value;
  return copy;
}

const info = (der: Uint8Array): Uint8Array => {
  const top = readTlv(der, 0);
  const first = readTlv(der, top.contentStart, top.end);
  return der.slice(first.start, first.end);
};

function resign(infoBytes: Uint8Array, key: KeyObject): Uint8Array {
  return signed(infoBytes, OID.ecdsaSha256, new Uint8Array(sign('sha256', infoBytes, key)));
}

function mutationOf(target: Uint8Array): fc.Arbitrary<Mutation> {
  const lengths = lengthOffsets(target);
  const nodes = constructedNodes(tree(target, readTlv(target, 0))).length;
  return fc.oneof(
    {
      weight: 1,
      arbitrary: fc.record({ kind: fc.constant('insert' as const), node: fc.nat(nodes - 1), at: fc.nat(8), element: fc.constantFrom(...ELEMENTS) }),
    },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant('remove' as const), node: fc.nat(nodes - 1), at: fc.nat(8) }) },
    { weight: 3, arbitrary: fc.record({ kind: fc.constant('byte' as const), at: fc.noBias(fc.nat(target.length - 1)), xor: fc.noBias(fc.integer({ min: 1, max: 255 })) }) },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant('truncate' as const), length: fc.noBias(fc.nat(target.length - 1)) }) },
    {
      weight: 2,
      arbitrary: fc
        .record({
          at: fc.constantFrom(...lengths),
          // A small step either way, or any value at all.
          change: fc.oneof(fc.integer({ min: -3, max: 3 }).filter((d) => d !== 0).map((d) => ({ delta: d })), fc.nat(255).map((v) => ({ value: v }))),
        })
        .map(({ at, change }) => ({
          kind: 'length' as const,
          at,
          value: 'delta' in change ? (target[at]! + change.delta + 256) % 256 : change.value,
        }))
        .filter((m) => m.value !== target[m.at]),
    },
  );
}

/** One valid CSR with one change, re-signed or not. */
export function mutatedCsr(samples: readonly CsrSample[]): fc.Arbitrary<MutatedCsr> {
  const perSample = samples.map((s) => {
    const infoBytes = info(s.der);
    return fc.oneof(
      mutationOf(s.der).map((mutation) => ({ sample: s.name, resigned: false, mutation, der: mutate(s.der, mutation) })),
      mutationOf(infoBytes).map((mutation) => ({ sample: s.name, resigned: true, mutation, der: resign(mutate(infoBytes, mutation), s.key) })),
    );
  });
  return fc.oneof(...perSample);
}

export const RULES: PolicyRules = { factory: FACTORY, production: true, deviceId: 'uuid', allowP384: true, requireOrder: false, clockSkewSeconds: 300, clockGapDays: 30 };

/** The station's checks that need no token and no ledger, in the station's order. Throws the refusal. */
export async function checkOffline(der: Uint8Array, rules: PolicyRules = RULES): Promise<{ csr: ParsedCsr; subject: Array<{ type: string; value: string }> }> {
  const csr = parseCsr(der);
  const refuse = (r: { code: ProtocolCode; message: string } | null): void => {
    if (r) throw new LineSignerError(r.code, r.message);
  };
  refuse(checkKey(csr, rules));
  verifyCsrSignature(csr, await csrPublicKey(csr));
  const subject = checkSubject(csr, rules);
  refuse(subject.refusal);
  refuse(checkExtensions(csr));
  return { csr, subject: subject.subject };
}

/** A typed refusal with a protocol code other than INTERNAL; anything else is rethrown for fast-check to report. */
export function expectTypedRefusal(err: unknown, allowed: readonly ProtocolCode[]): void {
  if (!(err instanceof LineSignerError) || !isProtocolCode(err.code) || !allowed.includes(err.code)) throw err;
}

const OFFLINE_CODES: ProtocolCode[] = ['BAD_CSR', 'POLICY_KEY', 'BAD_SIGNATURE', 'POLICY_SUBJECT', 'POLICY_EXTENSION'];

/** A software issuer: enough to build certificates from accepted CSRs without a token. */
export function softwareIssuer(): { profile: IssuerProfile; key: KeyObject } {
  const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const profile: IssuerProfile = {
    issuerName: der(name([{ type: OID.commonName, value: 'fio-property' }, { type: OID.organizationalUnit, value: FACTORY }])),
    authorityKeyId: new Uint8Array(20).fill(7),
    signatureAlgorithm: OID.ecdsaSha256,
    hash: 'sha256',
    validityDays: 7300,
  };
  return { profile, key: privateKey };
}

/**
 * Parser level: a mutated CSR is refused with one of the codes the checks
 * before issuance give, or accepted; an accepted one has a canonical key
 * block and makes a certificate that OpenSSL reads back as built.
 */
export function offlineProperty(samples: readonly CsrSample[]): fc.IAsyncProperty<[MutatedCsr]> {
  const issuer = softwareIssuer();
  return fc.asyncProperty(mutatedCsr(samples), async (m) => {
    let accepted;
    try {
      accepted = await checkOffline(m.der);
    } catch (err) {
      expectTypedRefusal(err, OFFLINE_CODES);
      return;
    }
    const request = {
      serial: newSerial(),
      notBefore: new Date(),
      subject: accepted.subject,
      spki: canonicalSpki(accepted.csr),
      publicKeyBits: accepted.csr.publicKeyBits,
    };
    // The profile: the certificate's key is the CSR's, byte for byte; only a canonical key block is accepted.
    if (!Buffer.from(request.spki).equals(accepted.csr.spki)) throw new Error('accepted a CSR whose key block is not canonical');
    const tbs = buildTbs(issuer.profile, request);
    const certificate = assembleCertificate(tbs, issuer.profile.signatureAlgorithm, new Uint8Array(sign('sha256', tbs, issuer.key)));
    checkAssembled(certificate, issuer.profile, request);
  });
}

/** Any bytes at all, whole or inside a valid CSR's outer SEQUENCE: the parser gives BAD_CSR or a parsed CSR, nothing else. */
export function arbitraryBytesProperty(): fc.IProperty<[Uint8Array]> {
  const bytes = fc.uint8Array({ maxLength: 600 });
  return fc.property(fc.oneof(bytes, bytes.map((b) => tlv(0x30, b))), (der) => {
    try {
      parseCsr(der);
    } catch (err) {
      expectTypedRefusal(err, ['BAD_CSR']);
    }
  });
}

export interface StationRun {
  station: TestStation;
  issued: number;
  refused: Map<string, number>;
}

/**
 * Station level, on a real station (SoftHSM token, SQLite ledger): every
 * answer is a certificate that X509Certificate reads and whose key block is
 * the CSR's, or a refusal with a protocol code that is not INTERNAL (an
 * unexpected exception inside the station surfaces as INTERNAL). Every
 * `opensslEvery`-th certificate also goes through `openssl x509 -text`.
 */
export function stationProperty(run: StationRun, samples: readonly CsrSample[], opensslEvery = 10): fc.IAsyncProperty<[MutatedCsr]> {
  return fc.asyncProperty(mutatedCsr(samples), async (m) => {
    const r = await run.station.station.handle({ csr: m.der, link: 'property' });
    if (!r.ok) {
      if (!isProtocolCode(r.code) || r.code === 'INTERNAL') throw new Error(`refused with ${r.code}: ${r.message}`);
      run.refused.set(r.code, (run.refused.get(r.code) ?? 0) + 1);
      return;
    }
    if (!r.replayed) run.issued++;
    const x = new X509Certificate(r.certificatePem);
    const spki = x.publicKey.export({ type: 'spki', format: 'der' });
    if (!spki.equals(parseCsr(m.der).spki)) throw new Error('the certificate key block is not the CSR key block');
    if (run.issued % opensslEvery === 0) {
      const text = openssl(['x509', '-noout', '-text'], r.certificatePem).toString();
      if (!text.includes('Public-Key:')) throw new Error(`openssl x509 -text did not show a key:\n${text}`);
    }
  });
}

/** After a station property: the ledger's chain and every stored certificate still verify. */
export function ledgerProblem(run: StationRun): string | null {
  const { checked, problem } = verifyLedger(run.station.config);
  if (problem) return `ledger verify: ${JSON.stringify(problem)}`;
  if (checked < run.issued) return `ledger verify checked ${checked} rows, ${run.issued} issued`;
  return null;
}

export interface NamedProperty {
  name: string;
  property: fc.IProperty<[MutatedCsr]> | fc.IAsyncProperty<[MutatedCsr]> | fc.IProperty<[Uint8Array]>;
}

/** What scripts/fuzz runs: the properties and what to check and close afterwards. */
export async function properties(): Promise<{ properties: NamedProperty[]; finish(): Promise<string | null> }> {
  const station = await testStation({ policy: 'allow_p384 = true' });
  const samples = csrSamples(station.dir);
  const run: StationRun = { station, issued: 0, refused: new Map() };
  return {
    properties: [
      { name: 'csr: arbitrary bytes through the parser', property: arbitraryBytesProperty() },
      { name: 'csr: mutated CSR through the offline checks', property: offlineProperty(samples) },
      { name: 'csr: mutated CSR through a real station', property: stationProperty(run, samples, 50) },
    ],
    async finish() {
      try {
        console.log(`  csr station: issued ${run.issued}, refused ${JSON.stringify(Object.fromEntries(run.refused))}`);
        return ledgerProblem(run);
      } finally {
        await station.close();
      }
    },
  };
}
