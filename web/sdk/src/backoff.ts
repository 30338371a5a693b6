// Reconnect delays: exponential, capped, with jitter so that a thousand clients dropped by one
// server restart do not all come back in the same millisecond.

export interface BackoffOptions {
  minMs: number;
  maxMs: number;
  /** A source of numbers in [0, 1); injectable so tests are deterministic. */
  random?: () => number;
}

export class Backoff {
  private attempt = 0;
  constructor(private readonly options: BackoffOptions) {}

  /** The delay before the next attempt: half of the exponential step plus a random half. */
  next(): number {
    const { minMs, maxMs } = this.options;
    const random = this.options.random ?? Math.random;
    const step = Math.min(maxMs, minMs * 2 ** this.attempt);
    this.attempt = Math.min(this.attempt + 1, 30);
    return Math.round(step / 2 + (step / 2) * random());
  }

  reset(): void {
    this.attempt = 0;
  }
}
