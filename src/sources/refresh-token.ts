import { TokenwardenError } from '../errors.js';
import { refreshExpiry } from '../token.js';
import { type ClientOptions, GrantSource, OAuthClient, hashSecret, rotatedRefreshToken } from './client.js';
import { isRefreshTokenRejected } from './errors.js';
import type { TokenSource } from './source.js';

/**
 * Options for {@link refreshToken}.
 *
 * @example
 * ```ts
 * const options: RefreshTokenOptions = { issuer, clientId: 'app', clientSecret, refreshToken: rt, scope: 'openid read' };
 * ```
 */
export interface RefreshTokenOptions extends ClientOptions {
  /**
   * The refresh token to start from. Once a store holds a newer (rotated) one, that one is used: a
   * restart continues with the newest, never with this one again.
   */
  refreshToken: string;
  /**
   * Used when the refresh token is rejected with `invalid_grant` (expired, revoked, already spent; GitHub:
   * `bad_refresh_token`, with status 200): for
   * example the client credentials grant, or a source that signs the user in again. Its token replaces
   * the dead one. Without a fallback the `invalid_grant` error is returned and not retried in the
   * background.
   */
  fallback?: TokenSource;
}

/**
 * The refresh token grant (RFC 6749 §6), with rotation: each response's new refresh token is kept (and
 * written to the manager's store) and is the one spent next. When the server does not rotate, the same
 * refresh token is carried over. Scope down-scoping: pass a narrower `scope`.
 *
 * @example
 * ```ts
 * import { TokenManager, refreshToken, FileStore } from 'tokenwarden';
 * const manager = new TokenManager({
 *   source: refreshToken({ issuer, clientId: 'app', clientSecret, refreshToken: process.env.RT! }),
 *   store: new FileStore({ path: '.tokens' }), // a restart continues with the newest rotated refresh token
 * });
 * ```
 */
export function refreshToken(options: RefreshTokenOptions): GrantSource {
  if (typeof options.refreshToken !== 'string' || options.refreshToken === '') {
    throw new TokenwardenError('ERR_CONFIG', 'refreshToken is required');
  }
  const client = new OAuthClient(options);
  let latest = options.refreshToken;
  /** The fallback source's token, whose refresh token (if any) is the one spent next. */
  const useFallback = async (signal: AbortSignal | undefined) => {
    const token = await (options.fallback as TokenSource).fetchToken({ ...(signal && { signal }) });
    if (token.refreshToken !== undefined) latest = token.refreshToken;
    return token;
  };
  return new GrantSource(
    'refresh_token',
    client,
    client.keyFor('refresh_token', { refreshToken: hashSecret(options.refreshToken) }),
    async ({ signal, previous }) => {
      const spend = previous?.refreshToken ?? latest;
      // The server said how long this refresh token lives (Keycloak's refresh_expires_in; Entra ID's and
      // GitHub Apps' refresh_token_expires_in): run out, it is not spent — the server would refuse it.
      const expiresAt =
        previous?.refreshToken !== undefined && previous.raw['refresh_token'] === previous.refreshToken
          ? refreshExpiry(previous.raw, previous.issuedAt).refreshExpiresAt
          : undefined;
      if (expiresAt !== undefined && expiresAt <= client.clock.now()) {
        if (options.fallback) return useFallback(signal);
        throw new TokenwardenError(
          'ERR_LOGIN_REQUIRED',
          'the refresh token has expired (the lifetime the server gave it has passed); obtain a new one',
        );
      }
      try {
        const token = await client.tokenRequest('refresh_token', new URLSearchParams({ refresh_token: spend }), {
          signal,
          refreshToken: spend,
        });
        if (token.refreshToken !== undefined) latest = token.refreshToken;
        return token;
      } catch (err) {
        latest = rotatedRefreshToken(err) ?? latest; // the server rotated it before a later check failed
        if (options.fallback && isRefreshTokenRejected(err)) return useFallback(signal);
        throw err;
      }
    },
  );
}
