/**
 * The test authorization server's clients as sources: `app` from a refresh token, `svc` with DPoP-bound
 * client credentials; and a fetch that breaks something right after a token endpoint answer arrives (the
 * server has rotated the refresh token; the process has not written it yet): the pieces of every "a refresh
 * meets a fault" test and every DPoP round trip.
 */
import { type FetchLike, type RefreshTokenOptions, clientCredentials, refreshToken } from '../../src/index.js';
import type { GrantSource } from '../../src/sources/client.js';
import type { TestAuthorizationServer } from './authorization-server.js';

/** `refreshToken()` for the `app` client of `as`, from `rt`, over plain HTTP; `options` add to it. */
export function appRefreshToken(
  as: TestAuthorizationServer,
  rt: string,
  options: Partial<RefreshTokenOptions> = {},
): GrantSource {
  return refreshToken({
    issuer: as.issuer,
    clientId: as.clients.app.clientId,
    clientSecret: as.clients.app.clientSecret,
    refreshToken: rt,
    allowInsecureRequests: true,
    ...options,
  });
}

/**
 * A fetch that, once armed, runs `action` right after the next token endpoint answer has arrived (and before
 * the caller sees it), then disarms.
 */
export function afterNextTokenResponse(action: () => unknown): { fetch: FetchLike; arm(): void } {
  let armed = false;
  return {
    arm: () => {
      armed = true;
    },
    fetch: async (input, init) => {
      const response = await fetch(input, init);
      const url = input instanceof Request ? input.url : String(input);
      if (armed && new URL(url).pathname.endsWith('/token')) {
        armed = false;
        await action();
      }
      return response;
    },
  };
}

/** Client credentials for the `svc` client of `as` (scope `read`), its tokens bound to `keyPair` (DPoP). */
export function svcDpopSource(as: TestAuthorizationServer, keyPair: CryptoKeyPair): GrantSource {
  return clientCredentials({
    issuer: as.issuer,
    clientId: as.clients.svc.clientId,
    clientSecret: as.clients.svc.clientSecret,
    scope: 'read',
    allowInsecureRequests: true,
    dpop: keyPair,
  });
}
