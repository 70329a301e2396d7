/**
 * A TokenSource driven by the test: each fetch is answered by the next scripted outcome. This is the
 * seam itself (no HTTP is faked); protocol behaviour is tested against the real authorization server.
 */
import type { Clock } from '../../src/clock.js';
import { TokenwardenError } from '../../src/errors.js';
import type { FetchTokenContext, TokenSource } from '../../src/sources/source.js';
import type { Token } from '../../src/token.js';

export type Outcome = { lifetimeMs?: number; refreshToken?: string } | TokenwardenError;

export class ScriptedSource implements TokenSource {
  readonly key: string;
  /** Set to act as a refresh-token source (single-use credentials). */
  exclusive = false;
  calls: FetchTokenContext[] = [];
  #queue: Outcome[] = [];
  #pending: { resolve: () => void }[] = [];
  #gated = false;
  #n = 0;

  constructor(
    readonly clock: Clock,
    readonly defaultLifetimeMs = 60_000,
    key = 'scripted',
  ) {
    this.key = key;
  }

  /** Queues outcomes for the next fetches (default: a token with the default lifetime). */
  then(...outcomes: Outcome[]): this {
    this.#queue.push(...outcomes);
    return this;
  }

  /** Forgets queued outcomes: every fetch succeeds again. */
  clear(): void {
    this.#queue.length = 0;
  }

  /** Holds fetches until `release()`. */
  gate(): void {
    this.#gated = true;
  }

  release(): void {
    this.#gated = false;
    for (const p of this.#pending.splice(0)) p.resolve();
  }

  async fetchToken(context: FetchTokenContext): Promise<Token> {
    this.calls.push(context);
    if (this.#gated) await new Promise<void>((resolve) => this.#pending.push({ resolve }));
    const outcome = this.#queue.shift() ?? {};
    if (outcome instanceof TokenwardenError) throw outcome;
    const n = ++this.#n;
    const now = this.clock.now();
    return Object.freeze({
      accessToken: `access-${n}`,
      tokenType: 'Bearer',
      issuedAt: now,
      expiresAt: now + (outcome.lifetimeMs ?? this.defaultLifetimeMs),
      refreshToken: outcome.refreshToken ?? `refresh-${n}`,
      raw: {},
    });
  }
}

export const networkError = (): TokenwardenError =>
  new TokenwardenError('ERR_NETWORK', 'request failed (ECONNREFUSED)');
export const oauthError = (error: string, status = 400): TokenwardenError =>
  new TokenwardenError('ERR_OAUTH', `token request failed: ${error}`, { error, status });
