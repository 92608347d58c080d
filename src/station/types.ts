import type { ProtocolCode } from '../errors.js';

/** What a link hands the station: CSR bytes (DER or PEM) and where they came from. */
export interface SignRequest {
  csr: Uint8Array;
  /** The link's name, recorded with the issuance ("serial:/dev/ttyACM0", "http", "spool:/media/usb", "cli"). */
  link: string;
  hardwareId?: string | undefined;
  workOrder?: string | undefined;
}

export interface Issued {
  ok: true;
  /** PEM: the device certificate, then the local-ca (a device's client.chained). */
  chain: string;
  /** PEM of the device certificate alone (client.pem). */
  certificatePem: string;
  /** Lowercase hex, no leading zeros. */
  serial: string;
  deviceId: string;
  /** True when this CSR was signed before and the stored certificate came back. */
  replayed: boolean;
}

export interface Refused {
  ok: false;
  code: ProtocolCode;
  message: string;
}

export type SignResult = Issued | Refused;

/** The HELLO body of the jig protocol. */
export interface StationHello {
  protocol: 1;
  station: string;
  factory: string;
  ca: string;
  max_frame: number;
  production: boolean;
}
