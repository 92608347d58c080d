export { parseCsr, signatureTwin, canonicalSpki, csrPublicKey, verifyCsrSignature, proveKeyPossession, type ParsedCsr, type NameAttribute, type KeyParameters } from './csr.js';
export {
  buildTbs,
  assembleCertificate,
  finishCertificate,
  finishAndProve,
  checkIssuedSignature,
  checkAssembled,
  newSerial,
  serialHex,
  notAfterFor,
  type IssuerProfile,
  type CertificateRequestFacts,
} from './certificate.js';
export {
  issuerProfile,
  makeCaCsr,
  checkLocalCa,
  certificateDer,
  sha256Hex,
  makeThrowawayRoot,
  signCaCsrWithRoot,
  makeSelfSignedCertificate,
  certificateKeyMismatch,
  type SoftwareRoot,
} from './ca.js';
export { pemEncode, pemDecodeAll, csrDer, looksLikePem } from './pem.js';
export { OID, ATTRIBUTE_NAMES } from '../oids.js';
export { makeDeviceCsr, deviceSubject, type DeviceCsr, type DeviceSubject } from './device-csr.js';
