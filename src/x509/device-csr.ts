/**
 * A device's side: a fresh key and its CSR, as lmp-device-register makes
 * them. The reference jig, the benchmark and the tests use it. Keys and
 * signatures come from node:crypto (OpenSSL).
 */
import { createPublicKey, generateKeyPairSync, sign, type KeyObject } from 'node:crypto';
import * as asn1js from 'asn1js';
import { der, name, raw, seq, signed } from './asn1.js';
import { OID } from '../oids.js';

export interface DeviceCsr {
  der: Uint8Array;
  privateKey: KeyObject;
}

export interface DeviceSubject {
  deviceId: string;
  factory: string;
  production: boolean;
}

export function deviceSubject(s: DeviceSubject): Array<{ type: string; value: string }> {
  return [
    { type: OID.commonName, value: s.deviceId },
    { type: OID.organizationalUnit, value: s.factory },
    ...(s.production ? [{ type: OID.businessCategory, value: 'production' }] : []),
  ];
}

/** A CSR for `privateKey` (a new P-256 key when absent); a list of attributes overrides the subject. */
export function makeDeviceCsr(
  subject: DeviceSubject | ReadonlyArray<{ type: string; value: string }>,
  privateKey: KeyObject = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey,
): DeviceCsr {
  const spki = new Uint8Array(createPublicKey(privateKey).export({ type: 'spki', format: 'der' }));
  const attributes = 'deviceId' in subject ? deviceSubject(subject) : subject;
  const info = der(
    seq(
      new asn1js.Integer({ value: 0 }),
      name(attributes),
      raw(spki),
      new asn1js.Constructed({ idBlock: { tagClass: 3, tagNumber: 0 }, value: [] }),
    ),
  );
  const signature = new Uint8Array(sign('sha256', info, privateKey));
  return { der: signed(info, OID.ecdsaSha256, signature), privateKey };
}
