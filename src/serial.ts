/**
 * Certificate serials as text. Everything the station writes shows a serial
 * as `openssl x509 -serial` prints it: hex with an even count of digits
 * (`0a3f…`, not `a3f…`), here in lowercase. Lookups accept any form
 * (upper or lower case, colons, with or without leading zeros).
 */

/** Even-length lowercase hex of a serial given as hex text of any form. */
export function serialText(hex: string): string {
  const digits = serialKey(hex);
  return digits.length % 2 ? `0${digits}` : digits;
}

/** The comparable form: lowercase, no colons, no leading zeros ("0" for zero); `serial=` (openssl's output) and `0x` are allowed before it. */
export function serialKey(text: string): string {
  const t = text.trim().replace(/^serial=/i, '').replace(/^0x/i, '').replace(/:/g, '').toLowerCase().replace(/^0+/, '');
  return t === '' ? '0' : t;
}

/** Is this text a serial in any accepted form? */
export function looksLikeSerial(text: string): boolean {
  return /^(?:[0-9a-fA-F]{2}:)*[0-9a-fA-F]{1,2}$/.test(text) || /^[0-9a-fA-F]{1,64}$/.test(text);
}
