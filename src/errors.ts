/**
 * The one error type of line-signer. It carries a protocol code from
 * ../shared/spec/jig-protocol.md (section 2) so that any link can turn it
 * into bytes (an ERR frame, an `ERROR` line, an HTTP status) without knowing
 * where it was raised.
 */
export const REFUSAL_CODES = [
  'BAD_FRAME',
  'BAD_CRC',
  'TOO_LARGE',
  'UNKNOWN_TYPE',
  'BAD_CSR',
  'BAD_SIGNATURE',
  'POLICY_KEY',
  'POLICY_SUBJECT',
  'POLICY_EXTENSION',
  'DUPLICATE_DEVICE',
  'QUOTA_EXCEEDED',
  'CLOCK',
  'TOKEN_UNAVAILABLE',
  'INTERNAL',
] as const;

export type ProtocolCode = (typeof REFUSAL_CODES)[number];

/** Codes that are not protocol replies but still deserve one clear CLI line. */
export type LocalCode = 'CONFIG' | 'CA' | 'TOKEN_PIN' | 'LEDGER' | 'LEDGER_BUSY' | 'USAGE' | 'EXPORT' | 'SYNC';

/**
 * Exit status for a PIN the token refused: distinct, so that the systemd unit
 * can list it in RestartPreventExitStatus= and never try a wrong PIN again.
 */
export const EXIT_TOKEN_PIN = 77;

export type ErrorCode = ProtocolCode | LocalCode;

export class LineSignerError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = 'LineSignerError';
  }
}

/** Any thrown value as a LineSignerError; unknown failures become INTERNAL. */
export function asLineSignerError(err: unknown): LineSignerError {
  if (err instanceof LineSignerError) return err;
  const message = err instanceof Error ? err.message : String(err);
  return new LineSignerError('INTERNAL', message, { cause: err });
}

export function isProtocolCode(code: string): code is ProtocolCode {
  return (REFUSAL_CODES as readonly string[]).includes(code);
}
