/**
 * "Never seen" answered from memory: a Bloom filter over the keys a ledger
 * holds (CSR hashes, device ids). Most requests on a production line are a
 * new device with a new CSR; for them the serving ledger can say "not in
 * the ledger" without a SQLite read on the links' thread, which otherwise
 * costs two or three reads a request. A "maybe" is looked up as before, so
 * a false positive (about 1 in 50 at a million keys, far fewer below) costs
 * only the read it would have cost anyway; there are no false negatives.
 *
 * The size is fixed (1 MiB of bits), so memory stays flat however long the
 * station serves. A small bit array and FNV-1a are simpler to read than a
 * dependency, and nothing here is security: the filter only ever skips a
 * read whose answer is certain to be "none".
 */
const BITS = 1 << 23;
const PROBES = 4;

export class SeenFilter {
  private readonly bits = new Uint32Array(BITS / 32);

  add(key: string): void {
    const [h1, h2] = hashes(key);
    for (let i = 0; i < PROBES; i++) {
      const bit = (h1 + i * h2) >>> 0 & (BITS - 1);
      this.bits[bit >>> 5]! |= 1 << (bit & 31);
    }
  }

  /** False only when `key` was never added. */
  mayHave(key: string): boolean {
    const [h1, h2] = hashes(key);
    for (let i = 0; i < PROBES; i++) {
      const bit = (h1 + i * h2) >>> 0 & (BITS - 1);
      if ((this.bits[bit >>> 5]! & (1 << (bit & 31))) === 0) return false;
    }
    return true;
  }
}

/** Two 32-bit FNV-1a hashes of the key's UTF-16 code units (different offset bases); the probes are h1 + i·h2. */
function hashes(key: string): [number, number] {
  let a = 0x811c9dc5;
  let b = 0x050c5d1f;
  for (let i = 0; i < key.length; i++) {
    const c = key.charCodeAt(i);
    a = Math.imul(a ^ c, 0x01000193);
    b = Math.imul(b ^ c, 0x01000193);
  }
  // An odd step visits distinct bits for every probe.
  return [a >>> 0, (b | 1) >>> 0];
}
