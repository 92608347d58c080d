/**
 * Whether a lone signature may be made on the links' thread itself,
 * holding it, rather than on libuv's pool. On a two-core VM the pool's two
 * thread hops (a sleeping pool thread woken, then the links' thread woken
 * back) cost more than SoftHSM2's whole signature: in profile-onelink the
 * wait was 0.64 to 1.34 ms against 0.24 to 0.37 ms made in place. A slow
 * token (a USB HSM takes 25 to 100 ms a signature) must never hold the
 * thread every link shares, so the thread is held only once the token's
 * last `qualify` lone signatures each took under `limitMs`, the pool's hops
 * included; one that takes longer, held or not, sends the signatures back
 * to the pool until `qualify` more have been fast again. The worst a token
 * that turns slow can do is hold the thread for one signature each time it
 * does (a held one that fails is retried on the pool: TokenSigner.signOnce).
 * Signatures made by the signing worker under load are not counted.
 */
export class HoldGate {
  private fastInARow = 0;

  constructor(
    private readonly limitMs = 5,
    private readonly qualify = 16,
  ) {}

  /** The next lone signature may hold the thread. */
  get allows(): boolean {
    return this.fastInARow >= this.qualify;
  }

  /** A lone signature took `ms`, from the call to its answer. */
  record(ms: number): void {
    this.fastInARow = ms < this.limitMs ? this.fastInARow + 1 : 0;
  }
}
