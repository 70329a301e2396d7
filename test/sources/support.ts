/**
 * Shared by the grant suites under test/sources/: the real server's `exchanger` client (token exchange, JWT
 * bearer), the `robot@example.test` assertion it signs with, and a fetch that keeps what reached the token endpoint.
 */
import type { FetchLike } from '../../src/http/transport.js';
import type { JwtAssertionOptions } from '../../src/sources/jwt-bearer.js';
import type { TestAuthorizationServer } from '../support/authorization-server.js';

/** The real server's `exchanger` client: what every grant of these suites is sent as. */
export function exchanger(as: TestAuthorizationServer) {
  return {
    issuer: as.issuer,
    allowInsecureRequests: true,
    clientId: 'exchanger',
    clientSecret: as.clients.exchanger.clientSecret,
  } as const;
}

/** The assertion `jwtBearer()` signs for `robot@example.test` with the `jwt` client's key, with `extra` over it. */
export function robotAssertion(as: TestAuthorizationServer, extra: Partial<JwtAssertionOptions> = {}) {
  return { privateKey: as.clients.jwt.privateJwk, subject: 'robot@example.test', ...extra };
}

/** The error a socket closed under a request gives (undici's shape: `fetch failed` caused by ECONNRESET). */
function connectionReset(): Error {
  return new TypeError('fetch failed', { cause: Object.assign(new Error('read ECONNRESET'), { code: 'ECONNRESET' }) });
}

/**
 * A fetch to the real server that keeps the form of every request to its token endpoint and, once armed, loses
 * the answer to the next one: the server has read the request and answered, the client sees a reset.
 */
export function tokenEndpointFetch(): { fetch: FetchLike; forms: URLSearchParams[]; arm(): void } {
  const forms: URLSearchParams[] = [];
  let armed = false;
  return {
    forms,
    arm: () => {
      armed = true;
    },
    fetch: async (input, init) => {
      const url = input instanceof Request ? input.url : String(input);
      const token = new URL(url).pathname.endsWith('/token');
      if (token) forms.push(new URLSearchParams(String(init?.body)));
      const response = await fetch(input, init);
      if (token && armed) {
        armed = false;
        await response.body?.cancel();
        throw connectionReset();
      }
      return response;
    },
  };
}
