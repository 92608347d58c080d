/**
 * The local-ca: its own CSR (signed in the token), the checks a certificate
 * must pass before the station will issue under it, and what every device
 * certificate copies from it. pkijs does the work here; none of it is on
 * the per-certificate path.
 */
import { createHash, X509Certificate, webcrypto } from 'node:crypto';
import * as asn1js from 'asn1js';
import * as pkijs from 'pkijs';
import { LineSignerError } from '../errors.js';
import type { Signer } from '../token/signer.js';
import { subjectKeyIdentifier, type IssuerProfile } from './certificate.js';
import { OID } from '../oids.js';
import { pemDecodeAll } from './pem.js';
import { name as asn1Name, signed } from './asn1.js';

const ab = (b: Uint8Array): ArrayBuffer => b.slice().buffer as ArrayBuffer;

function caError(message: string): LineSignerError {
  return new LineSignerError('CA', message);
}

/** One certificate, DER, from PEM or DER file bytes. */
export function certificateDer(bytes: Uint8Array, what: string): Uint8Array {
  const text = Buffer.from(bytes).toString('latin1');
  if (text.includes('-----BEGIN ')) {
    const [first] = pemDecodeAll(text, 'CERTIFICATE');
    if (!first) throw caError(`${what}: no CERTIFICATE block in the PEM text`);
    return first;
  }
  return bytes;
}

function parseCertificate(der: Uint8Array, what: string): pkijs.Certificate {
  try {
    return pkijs.Certificate.fromBER(ab(der));
  } catch (err) {
    throw caError(`${what}: not an X.509 certificate (${(err as Error).message})`);
  }
}

function attribute(name: pkijs.RelativeDistinguishedNames, type: string): string | undefined {
  const tv = name.typesAndValues.find((t) => t.type === type);
  return tv ? String(tv.value.valueBlock.value) : undefined;
}

function extension<T>(cert: pkijs.Certificate, id: string): { critical: boolean; value: T } | undefined {
  const ext = cert.extensions?.find((e) => e.extnID === id);
  return ext ? { critical: ext.critical, value: ext.parsedValue as T } : undefined;
}

export function sha256Hex(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

/** What every device certificate takes from the local-ca. */
export function issuerProfile(caDer: Uint8Array, validityDays: number): IssuerProfile {
  const top = asn1js.fromBER(new Uint8Array(caDer));
  const tbs = (top.result as asn1js.Sequence).valueBlock.value[0] as asn1js.Sequence;
  const fields = tbs.valueBlock.value;
  // [0] version is present in every v3 certificate: subject is field 5.
  const hasVersion = fields[0]!.idBlock.tagClass === 3;
  const subject = fields[hasVersion ? 5 : 4]!;
  const cert = parseCertificate(caDer, 'local-ca');
  const ski = extension<asn1js.OctetString>(cert, OID.subjectKeyIdentifier)?.value;
  const authorityKeyId = ski
    ? new Uint8Array(ski.valueBlock.valueHexView)
    : subjectKeyIdentifier(cert.subjectPublicKeyInfo.subjectPublicKey.valueBlock.valueHexView);
  const curve = (cert.subjectPublicKeyInfo.algorithm.algorithmParams as asn1js.ObjectIdentifier | undefined)?.valueBlock.toString();
  const p384 = curve === OID.p384;
  return {
    issuerName: new Uint8Array((subject as unknown as { valueBeforeDecodeView: Uint8Array }).valueBeforeDecodeView),
    authorityKeyId,
    signatureAlgorithm: p384 ? OID.ecdsaSha384 : OID.ecdsaSha256,
    hash: p384 ? 'sha384' : 'sha256',
    validityDays,
  };
}

/** CN=cn, OU=ou as two RDNs (pkijs would put every attribute in one multi-valued RDN). */
function name(cn: string, ou: string): pkijs.RelativeDistinguishedNames {
  const der = asn1Name([
    { type: OID.commonName, value: cn },
    { type: OID.organizationalUnit, value: ou },
  ]).toBER(false);
  return pkijs.RelativeDistinguishedNames.fromBER(der);
}

function caExtensions(spkiBits: Uint8Array): pkijs.Extension[] {
  return [
    new pkijs.Extension({
      extnID: OID.basicConstraints,
      critical: true,
      extnValue: new pkijs.BasicConstraints({ cA: true, pathLenConstraint: 0 }).toSchema().toBER(false),
    }),
    new pkijs.Extension({
      extnID: OID.keyUsage,
      critical: true,
      // keyCertSign (bit 5) and cRLSign (bit 6): 0x06, one unused bit.
      extnValue: new asn1js.BitString({ valueHex: new Uint8Array([0x06]).buffer, unusedBits: 1 }).toBER(false),
    }),
    new pkijs.Extension({
      extnID: OID.subjectKeyIdentifier,
      critical: false,
      extnValue: new asn1js.OctetString({ valueHex: ab(subjectKeyIdentifier(spkiBits)) }).toBER(false),
    }),
  ];
}

/**
 * The local-ca's CSR, made by the station and signed by the token key:
 * CN=<owner>, OU=<factory> (UTF8String), asking for basicConstraints
 * critical CA:TRUE pathlen 0 and keyUsage critical keyCertSign.
 */
export async function makeCaCsr(signer: Signer, owner: string, factory: string): Promise<Uint8Array> {
  const spki = pkijs.PublicKeyInfo.fromBER(ab(signer.publicKeySpki()));
  const csr = new pkijs.CertificationRequest({ version: 0, subject: name(owner, factory), subjectPublicKeyInfo: spki });
  csr.attributes = [
    new pkijs.Attribute({
      type: OID.extensionRequest,
      values: [
        new pkijs.Extensions({
          extensions: [
            new pkijs.Extension({
              extnID: OID.basicConstraints,
              critical: true,
              extnValue: new pkijs.BasicConstraints({ cA: true, pathLenConstraint: 0 }).toSchema().toBER(false),
            }),
            new pkijs.Extension({
              extnID: OID.keyUsage,
              critical: true,
              extnValue: new asn1js.BitString({ valueHex: new Uint8Array([0x04]).buffer, unusedBits: 2 }).toBER(false),
            }),
          ],
        }).toSchema(),
      ],
    }),
  ];
  // encodeTBS is protected in pkijs's types but is the documented way to get the signed part.
  const tbs = new Uint8Array((csr as unknown as { encodeTBS(): asn1js.Sequence }).encodeTBS().toBER(false));
  const signature = await signer.sign(createHash(signer.hash).update(tbs).digest());
  return signed(tbs, signer.signatureAlgorithm, signature);
}

export interface LocalCaExpectations {
  /** The token key's SubjectPublicKeyInfo. */
  tokenSpki: Uint8Array;
  rootDer: Uint8Array;
  factory: string;
  /** When given, the certificate and the root must be valid at this time. */
  now?: Date | undefined;
}

/**
 * The profile's checks on a local-ca certificate, each with its own message.
 * Throws the first failure as a CA error; returns the parsed certificate.
 */
export function checkLocalCa(caDer: Uint8Array, want: LocalCaExpectations): X509Certificate {
  const cert = parseCertificate(caDer, 'local-ca certificate');
  let x509: X509Certificate;
  let root: X509Certificate;
  try {
    x509 = new X509Certificate(Buffer.from(caDer));
  } catch (err) {
    throw caError(`local-ca certificate: unreadable (${(err as Error).message})`);
  }
  try {
    root = new X509Certificate(Buffer.from(want.rootDer));
  } catch (err) {
    throw caError(`factory root: unreadable (${(err as Error).message})`);
  }
  const spki = new Uint8Array(cert.subjectPublicKeyInfo.toSchema().toBER(false));
  if (Buffer.compare(Buffer.from(spki), Buffer.from(want.tokenSpki)) !== 0) {
    throw caError('local-ca certificate is for another key: its public key is not the one in the token');
  }
  const bc = extension<pkijs.BasicConstraints>(cert, OID.basicConstraints);
  if (!bc || !bc.value.cA) throw caError('local-ca certificate is not a CA certificate (basicConstraints CA:TRUE missing)');
  if (!bc.critical) throw caError('local-ca certificate: basicConstraints must be critical');
  const ku = extension<asn1js.BitString>(cert, OID.keyUsage);
  if (!ku || !(((ku.value.valueBlock.valueHexView[0] ?? 0) & 0x04) !== 0)) {
    throw caError('local-ca certificate: keyUsage does not include keyCertSign');
  }
  if (!x509.checkIssued(root) || !x509.verify(root.publicKey)) {
    throw caError(`local-ca certificate does not chain to the factory root (${root.subject.replace(/\n/g, ', ')})`);
  }
  const t = want.now?.getTime() ?? Date.parse(x509.validFrom);
  if (t < Date.parse(x509.validFrom) || t > Date.parse(x509.validTo)) {
    throw caError(`local-ca certificate is not valid now (valid ${x509.validFrom} to ${x509.validTo})`);
  }
  if (t < Date.parse(root.validFrom) || t > Date.parse(root.validTo)) {
    throw caError(`factory root is not valid now (valid ${root.validFrom} to ${root.validTo})`);
  }
  const ou = attribute(cert.subject, OID.organizationalUnit);
  if (ou !== want.factory) {
    throw caError(`local-ca certificate OU is ${ou === undefined ? 'missing' : `"${ou}"`}, but station.factory is "${want.factory}"`);
  }
  return x509;
}

// ---- development only: a throwaway software factory root -----------------

const ECDSA = { name: 'ECDSA', namedCurve: 'P-256' } as const;

export interface SoftwareRoot {
  der: Uint8Array;
  privateKeyPkcs8: Uint8Array;
}

function serial(): asn1js.Integer {
  const b = webcrypto.getRandomValues(new Uint8Array(16));
  b[0] = (b[0]! & 0x7f) | 0x01;
  return new asn1js.Integer({ valueHex: b.buffer });
}

/** A self-signed factory root with a software key. Never for production. */
export async function makeThrowawayRoot(factory: string, days = 3650): Promise<SoftwareRoot> {
  const keys = (await webcrypto.subtle.generateKey(ECDSA, true, ['sign', 'verify'])) as webcrypto.CryptoKeyPair;
  const cert = new pkijs.Certificate();
  cert.version = 2;
  cert.serialNumber = serial();
  cert.issuer = name('Factory-CA', factory);
  cert.subject = name('Factory-CA', factory);
  const now = Date.now();
  cert.notBefore.value = new Date(now - 60_000);
  cert.notAfter.value = new Date(now + days * 86_400_000);
  await cert.subjectPublicKeyInfo.importKey(keys.publicKey as never);
  cert.extensions = caExtensions(cert.subjectPublicKeyInfo.subjectPublicKey.valueBlock.valueHexView).map((e) =>
    e.extnID === OID.basicConstraints
      ? new pkijs.Extension({ extnID: OID.basicConstraints, critical: true, extnValue: new pkijs.BasicConstraints({ cA: true }).toSchema().toBER(false) })
      : e,
  );
  await cert.sign(keys.privateKey as never, 'SHA-256');
  const pkcs8 = await webcrypto.subtle.exportKey('pkcs8', keys.privateKey);
  return { der: new Uint8Array(cert.toSchema().toBER(false)), privateKeyPkcs8: new Uint8Array(pkcs8) };
}

/** Signs a local-ca CSR with a software root, as the root's holder would with openssl. */
export async function signCaCsrWithRoot(csrDer: Uint8Array, root: SoftwareRoot, days = 3650): Promise<Uint8Array> {
  const csr = pkijs.CertificationRequest.fromBER(ab(csrDer));
  const rootCert = pkijs.Certificate.fromBER(ab(root.der));
  const key = await webcrypto.subtle.importKey('pkcs8', root.privateKeyPkcs8, ECDSA, false, ['sign']);
  const cert = new pkijs.Certificate();
  cert.version = 2;
  cert.serialNumber = serial();
  cert.issuer = rootCert.subject;
  cert.subject = csr.subject;
  const now = Date.now();
  cert.notBefore.value = new Date(now - 60_000);
  cert.notAfter.value = new Date(now + days * 86_400_000);
  cert.subjectPublicKeyInfo = csr.subjectPublicKeyInfo;
  const rootSki = extension<asn1js.OctetString>(rootCert, OID.subjectKeyIdentifier)!.value.valueBlock.valueHexView;
  cert.extensions = [
    ...caExtensions(csr.subjectPublicKeyInfo.subjectPublicKey.valueBlock.valueHexView),
    new pkijs.Extension({
      extnID: OID.authorityKeyIdentifier,
      critical: false,
      extnValue: new pkijs.AuthorityKeyIdentifier({ keyIdentifier: new asn1js.OctetString({ valueHex: ab(rootSki) }) })
        .toSchema()
        .toBER(false),
    }),
  ];
  await cert.sign(key as never, 'SHA-256');
  return new Uint8Array(cert.toSchema().toBER(false));
}

/**
 * A self-signed certificate for a token key, signed in the token: the
 * station key's identity, which the connected side pins by fingerprint.
 * digitalSignature only; never a CA.
 */
export async function makeSelfSignedCertificate(signer: Signer, cn: string, ou: string, days = 7300): Promise<Uint8Array> {
  const cert = new pkijs.Certificate();
  cert.version = 2;
  cert.serialNumber = serial();
  cert.issuer = name(cn, ou);
  cert.subject = name(cn, ou);
  const now = Date.now();
  cert.notBefore.value = new Date(Math.floor(now / 1000) * 1000 - 60_000);
  cert.notAfter.value = new Date(Math.floor(now / 1000) * 1000 + days * 86_400_000);
  cert.subjectPublicKeyInfo = pkijs.PublicKeyInfo.fromBER(ab(signer.publicKeySpki()));
  const algorithm = new pkijs.AlgorithmIdentifier({ algorithmId: signer.signatureAlgorithm });
  cert.signature = algorithm;
  cert.extensions = [
    new pkijs.Extension({ extnID: OID.basicConstraints, critical: true, extnValue: new pkijs.BasicConstraints({ cA: false }).toSchema().toBER(false) }),
    new pkijs.Extension({
      extnID: OID.keyUsage,
      critical: true,
      extnValue: new asn1js.BitString({ valueHex: new Uint8Array([0x80]).buffer, unusedBits: 7 }).toBER(false),
    }),
    new pkijs.Extension({
      extnID: OID.subjectKeyIdentifier,
      critical: false,
      extnValue: new asn1js.OctetString({ valueHex: ab(subjectKeyIdentifier(cert.subjectPublicKeyInfo.subjectPublicKey.valueBlock.valueHexView)) }).toBER(false),
    }),
  ];
  const tbs = new Uint8Array((cert as unknown as { encodeTBS(): asn1js.Sequence }).encodeTBS().toBER(false));
  const signature = await signer.sign(createHash(signer.hash).update(tbs).digest());
  return signed(tbs, signer.signatureAlgorithm, signature);
}

/**
 * Null when the certificate file is for this public key (SPKI DER), else why
 * not: a station certificate swapped for another key's would make every
 * export unverifiable against the pin.
 */
export function certificateKeyMismatch(certificateDer: Uint8Array, spki: Uint8Array, what: string): string | null {
  let key: Uint8Array;
  try {
    key = new Uint8Array(new X509Certificate(Buffer.from(certificateDer)).publicKey.export({ type: 'spki', format: 'der' }));
  } catch (err) {
    return `${what} is not readable (${(err as Error).message})`;
  }
  return Buffer.compare(Buffer.from(key), Buffer.from(spki)) === 0 ? null : `${what} is for another key than the token's`;
}
