import type { ProtocolCode } from '../errors.js';

/**
 * What a link hands the station: CSR bytes (DER or PEM), where they came
 * from, and what the client said about itself. Links build it field by
 * field from checked client text (src/text.ts); the station reads only
 * these own fields. The work order is never the client's to choose: the
 * station attributes each issuance to the open order.
 */
export interface SignRequest {
  csr: Uint8Array;
  /** The link's name, recorded with the issuance ("serial:/dev/ttyACM0", "http", "spool:/media/usb", "cli"). */
  link: string;
  /** The hardware id the device reports (HTTP `hardware-id`). */
  hardwareId?: string | undefined;
  /** The device's name (HTTP `name`); the device id stands in when absent. */
  name?: string | undefined;
  /** 'der': the CSR must be DER (a J1 SIGN body, as the protocol says); otherwise DER or PEM text. */
  encoding?: 'der' | undefined;
}

/** A station-wide reason why every request would be refused now (HEAD /sign answers 503 with it). */
export interface Unhealthy {
  code: ProtocolCode;
  message: string;
}

export interface Issued {
  ok: true;
  /** PEM: the device certificate, then the local-ca (a device's client.chained). */
  chain: string;
  /** PEM of the device certificate alone (client.pem). */
  certificatePem: string;
  /** As `openssl x509 -serial` prints it: hex, an even count of digits, here in lowercase. */
  serial: string;
  deviceId: string;
  /** True when this CSR was signed before and the stored certificate came back. */
  replayed: boolean;
}

export interface Refused {
  ok: false;
  code: ProtocolCode;
  message: string;
  /** The CSR's device id when it got that far. */
  deviceId?: string | null | undefined;
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
