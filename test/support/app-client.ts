/**
 * The test authorization server's `app` client as a refresh-token source, and a fetch that breaks something
 * right after a token endpoint answer arrives (the server has rotated the refresh token; the process has not
 * written it yet): the two pieces of every "a refresh meets a fault" test.
 */
import { type FetchLike, type RefreshTokenOptions, refreshToken } from '../../src/index.js';
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
