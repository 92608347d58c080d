import { createHash } from 'node:crypto';

export const GENESIS_HASH = '0'.repeat(64);

/**
 * entry_hash = SHA-256(previous entry_hash ‖ "\n" ‖ JSON of this row's
 * content). JSON of an array of strings, numbers and nulls is canonical
 * enough: one value per field, in a fixed order, no whitespace.
 */
export function chainHash(prev: string, content: ReadonlyArray<string | number | null>): string {
  return createHash('sha256').update(prev).update('\n').update(JSON.stringify(content)).digest('hex');
}
