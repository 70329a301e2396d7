/**
 * A `fetch` that attaches a managed token and retries once when the API says the token is bad.
 *
 * @module
 */
import * as oauth from 'oauth4webapi';
import type { Token } from '../token.js';
import { answeredElsewhere, authorizationValue, checkRetryOn401, dpopHandle, isRetryable401 } from './authorize.js';
import type { FetchLike } from './transport.js';

/**
 * What {@link authFetch} needs: a `TokenManager` or anything shaped like one.
 *
 * @example
 * ```ts
 * const provider: TokenProvider = { getToken: () => manager.getToken(), invalidate: (t) => manager.invalidate(t) };
 * ```
 */
export interface TokenProvider {
  getToken(options?: { signal?: AbortSignal }): Promise<Token>;
  invalidate(accessToken?: string): Promise<void>;
  /** The DPoP handle that signs proofs for `DPoP` tokens (a `TokenManager` takes it from its source). */
  readonly dpop?: oauth.DPoPHandle | undefined;
}

/**
 * When a 401 response is retried with a new token (the same rule for `manager.fetch`, axios and undici).
 * A function receives a `Response` with the status and headers (for axios and undici, without the body).
 *
 * @example
 * ```ts
 * const retryOn401: RetryOn401 = (res) => res.headers.get('x-token-expired') === '1';
 * ```
 */
export type RetryOn401 = 'invalid_token' | 'always' | 'never' | ((response: Response) => boolean);

/**
 * Options for {@link authFetch}.
 *
 * @example
 * ```ts
 * const api = authFetch(manager, { retryOn401: 'always', fetch: (url, init) => fetch(url, { ...init, keepalive: true }) });
 * ```
 */
export interface AuthFetchOptions {
  /** The `fetch` that sends requests. Default: the global `fetch`. */
  fetch?: FetchLike;
  /**
   * Which 401 responses get one retry with a new token. Default `'invalid_token'`: when
   * `WWW-Authenticate` says `error="invalid_token"` (RFC 6750 §3.1). `'always'` retries any 401.
   */
  retryOn401?: RetryOn401;
}

/**
 * Wraps `fetch` so every request carries `Authorization: <type> <token>`. On a 401 that matches
 * `retryOn401`, the token is invalidated (here and in the shared store) and the request is sent once more
 * with a new token — only if its body can be sent again (no streamed bodies; such a 401 is returned, and
 * the next request gets a new token), and never more than once.
 *
 * For `DPoP` tokens (a source configured with `dpop`), each request also carries a DPoP proof signed for
 * its method and URL (RFC 9449, through `oauth4webapi`); a resource server's `use_dpop_nonce` challenge is
 * answered with one more request. DPoP requests do not follow redirects (a proof is bound to one URL), and
 * their body is read into memory first.
 *
 * @example
 * ```ts
 * import { TokenManager, authFetch, clientCredentials } from 'tokenwarden';
 * const manager = new TokenManager({ source: clientCredentials(options) });
 * const api = authFetch(manager, { retryOn401: 'always' });
 * const res = await api('https://api.example.com/orders', { method: 'POST', body: JSON.stringify(order) });
 * ```
 */
export function authFetch(provider: TokenProvider, options: AuthFetchOptions = {}): FetchLike {
  const retryOn = checkRetryOn401(options.retryOn401);
  return async (input, init) => {
    const fetchImpl = options.fetch ?? globalThis.fetch;
    const signal = init?.signal ?? (input instanceof Request ? input.signal : undefined);
    const token = await provider.getToken(signal ? { signal } : undefined);
    let send: (token: Token) => Promise<Response>;
    let replayable: boolean;
    if (token.tokenType === 'DPoP') {
      send = await dpopSender(provider, fetchImpl, input, init);
      replayable = true;
    } else {
      replayable = canReplay(input, init);
      // A Request's body can be read once: keep a copy for the retry.
      const spare = replayable && input instanceof Request ? input.clone() : undefined;
      let sent = 0;
      send = (t) => {
        const target = sent++ === 0 ? input : (spare ?? input);
        const headers = new Headers(init?.headers ?? (target instanceof Request ? target.headers : undefined));
        headers.set('authorization', authorizationValue(t));
        return fetchImpl(target, { ...init, headers });
      };
    }
    const response = await send(token);
    // The end of a redirect to another origin, to which fetch sent no token: its 401 is not about this token.
    // (`redirected`: a fetch that sends to a gateway or sidecar of another origin is not a redirect.)
    if (response.redirected && answeredElsewhere(input instanceof Request ? input.url : input, response.url)) {
      return response;
    }
    if (!isRetryable401(retryOn, response.status, response.headers, response)) return response;
    if (!replayable) {
      await provider.invalidate(token.accessToken).catch(() => undefined);
      return response;
    }
    await provider.invalidate(token.accessToken);
    const fresh = await provider.getToken(signal ? { signal } : undefined);
    // The provider kept the token (a forced refresh happened moments ago): the API's answer stands.
    if (fresh.accessToken === token.accessToken) return response;
    await response.body?.cancel().catch(() => undefined);
    return send(fresh);
  };
}

/** Sends with a DPoP proof per request through oauth4webapi; the body is buffered so it can be re-sent. */
async function dpopSender(
  provider: TokenProvider,
  fetchImpl: FetchLike,
  input: string | URL | Request,
  init: RequestInit | undefined,
): Promise<(token: Token) => Promise<Response>> {
  const handle = dpopHandle(provider);
  const request = new Request(input, init);
  const url = new URL(request.url);
  const headers = new Headers(request.headers);
  headers.delete('authorization');
  const body = request.body === null ? null : await request.arrayBuffer();
  const once = (token: Token): Promise<Response> =>
    oauth.protectedResourceRequest(token.accessToken, request.method, url, new Headers(headers), body, {
      DPoP: handle,
      signal: request.signal,
      [oauth.allowInsecureRequests]: true, // the URL is the caller's choice, as with any fetch
      [oauth.customFetch]: (target, options) => fetchImpl(target, options as RequestInit),
    });
  return async (token) => {
    try {
      return await once(token);
    } catch (err) {
      if (oauth.isDPoPNonceError(err)) {
        try {
          return await once(token); // the handle cached the nonce the server asked for
        } catch (again) {
          if (again instanceof oauth.WWWAuthenticateChallengeError) return again.response;
          throw again;
        }
      }
      // Any other challenge is an ordinary 401/403 for the caller (and for the retry decision).
      if (err instanceof oauth.WWWAuthenticateChallengeError) return err.response;
      throw err;
    }
  };
}

function canReplay(input: string | URL | Request, init: RequestInit | undefined): boolean {
  const body = init?.body;
  if (body !== undefined && body !== null) {
    return (
      !(body instanceof ReadableStream) &&
      typeof (body as unknown as AsyncIterable<unknown>)[Symbol.asyncIterator] !== 'function'
    );
  }
  if (input instanceof Request) return !input.bodyUsed;
  return true;
}
