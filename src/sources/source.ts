/**
 * The one seam for obtaining tokens: a {@link TokenSource} has a stable key and fetches a token.
 * Caching, sharing, scheduling and retries are added by wrapping it in a `TokenManager`.
 *
 * @module
 */
import type { Token } from '../token.js';

/**
 * What a source is given when asked for a token.
 *
 * @example
 * ```ts
 * const token = await source.fetchToken({ previous: manager.peek().token, signal: AbortSignal.timeout(10_000) });
 * ```
 */
export interface FetchTokenContext {
  /** Aborts the request (the manager's `close()`, or the caller's signal). */
  signal?: AbortSignal;
  /**
   * The newest token known for this key — from memory or from a shared store, possibly expired. A
   * refresh-token source takes the refresh token to spend from here, so that the newest rotated refresh
   * token is always the one used.
   */
  previous?: Token;
}

/**
 * Where tokens come from. Implement it to plug in anything (a cloud metadata server, a vault, a test).
 *
 * @example
 * ```ts
 * import { TokenManager, type TokenSource } from 'tokenwarden';
 * const source: TokenSource = {
 *   key: 'my-metadata-server',
 *   async fetchToken({ signal }) {
 *     const res = await fetch('http://169.254.169.254/token', { signal });
 *     const body = await res.json();
 *     return { accessToken: body.token, tokenType: 'Bearer', issuedAt: Date.now(), expiresAt: Date.now() + body.ttl * 1000, raw: {} };
 *   },
 * };
 * const manager = new TokenManager({ source });
 * ```
 */
export interface TokenSource {
  /**
   * Identifies the token this source produces, for stores and single-flight. Two sources with the same
   * key must produce interchangeable tokens. Never contains a secret.
   */
  readonly key: string;
  /**
   * True when a fetch spends something single-use (a rotating refresh token): the manager then never
   * fetches without the shared store's lock while it still holds a valid token (a store outage delays the
   * refresh instead of risking a second spend, which servers answer by revoking the grant).
   */
  readonly exclusive?: boolean;
  /** Obtains a new token. Throws a `TokenwardenError` on failure. */
  fetchToken(context: FetchTokenContext): Promise<Token>;
}
