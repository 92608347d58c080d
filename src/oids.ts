/** Object identifiers the station speaks: shared vocabulary, like errors.ts (policy may read it without importing x509). */
export const OID = {
  commonName: '2.5.4.3',
  organizationalUnit: '2.5.4.11',
  businessCategory: '2.5.4.15',
  ecPublicKey: '1.2.840.10045.2.1',
  p256: '1.2.840.10045.3.1.7',
  p384: '1.3.132.0.34',
  ecdsaSha256: '1.2.840.10045.4.3.2',
  ecdsaSha384: '1.2.840.10045.4.3.3',
  ecdsaSha512: '1.2.840.10045.4.3.4',
  extensionRequest: '1.2.840.113549.1.9.14',
  basicConstraints: '2.5.29.19',
  keyUsage: '2.5.29.15',
  extKeyUsage: '2.5.29.37',
  subjectKeyIdentifier: '2.5.29.14',
  authorityKeyIdentifier: '2.5.29.35',
  clientAuth: '1.3.6.1.5.5.7.3.2',
} as const;

export const ATTRIBUTE_NAMES: Record<string, string> = {
  [OID.commonName]: 'CN',
  [OID.organizationalUnit]: 'OU',
  [OID.businessCategory]: 'businessCategory',
  '2.5.4.10': 'O',
  '2.5.4.6': 'C',
  '2.5.4.7': 'L',
  '2.5.4.8': 'ST',
  '2.5.4.5': 'serialNumber',
  '1.2.840.113549.1.9.1': 'emailAddress',
};

/** ECDSA signature OIDs and the digest each one uses. */
export const ECDSA_HASH: Record<string, 'sha256' | 'sha384' | 'sha512'> = {
  [OID.ecdsaSha256]: 'sha256',
  [OID.ecdsaSha384]: 'sha384',
  [OID.ecdsaSha512]: 'sha512',
};
