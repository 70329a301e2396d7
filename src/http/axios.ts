/**
 * Tokens on an axios instance: a request interceptor that attaches them and a response interceptor that
 * retries once on a 401 — the same rule as `manager.fetch`. axios is only a type here (an optional peer):
 * this module loads without it.
 *
 * @module
 */
import type { AxiosInstance, AxiosResponse, InternalAxiosRequestConfig } from 'axios';
import { TokenwardenError } from '../errors.js';
import type { Token } from '../token.js';
import type { RetryOn401, TokenProvider } from './auth-fetch.js';
import {
  answeredElsewhere,
  authorizationHeaders,
  checkOrigins,
  checkRetryOn401,
  isDpopNonceChallenge,
  isRetryable401,
  originOf,
  rememberDpopNonce,
} from './authorize.js';

/**
 * Options for {@link axiosAuth}.
 *
 * @example
 * ```ts
 * const options: AxiosAuthOptions = { origins: ['https://api.example.com'], retryOn401: 'always' };
 * ```
 */
export interface AxiosAuthOptions {
  /**
   * The origins that get the token (`scheme://host[:port]`; a URL's path is ignored). Default: the origin of
   * the instance's `baseURL`; with no absolute `baseURL`, every request of the instance gets it.
   */
  origins?: readonly (string | URL)[];
  /** Which 401 responses get one retry with a new token. Default `'invalid_token'` (as `manager.fetch`). */
  retryOn401?: RetryOn401;
}

/** Marks a retried request (a string key: axios copies configs without their symbols). */
const RETRIED = 'tokenwardenRetried';

interface Retried {
  token?: boolean;
  nonce?: boolean;
}

/**
 * Installs two interceptors on an axios instance: requests to its origins (the `baseURL`'s, or `origins`)
 * carry `Authorization: <type> <token>` from a `TokenManager` (or any {@link TokenProvider}) — with a DPoP
 * proof when the source is DPoP-bound — and a 401 that matches `retryOn401` (default: `WWW-Authenticate`
 * with `error="invalid_token"`) invalidates the token (here and in the shared store) and sends the request
 * once more with a new one. Never more than one retry; a streamed body (a `Readable`, a `form-data`
 * instance) is not replayed, and that 401 is handed back (the next request gets a new token). Redirects are
 * axios's (follow-redirects drops `Authorization` on a redirect to another host).
 *
 * Returns a function that removes both interceptors.
 *
 * @example
 * ```ts
 * import axios from 'axios';
 * import { axiosAuth } from 'tokenwarden/axios';
 *
 * const api = axios.create({ baseURL: 'https://api.example.com' });
 * const remove = axiosAuth(api, manager);
 * const { data } = await api.get('/orders');
 * remove(); // back to plain axios
 * ```
 */
export function axiosAuth(
  instance: AxiosInstance,
  provider: TokenProvider,
  options: AxiosAuthOptions = {},
): () => void {
  if (instance === null || typeof instance !== 'function' || typeof instance.interceptors !== 'object') {
    throw new TokenwardenError('ERR_CONFIG', 'axiosAuth needs an axios instance (axios.create())');
  }
  if (provider === null || typeof provider !== 'object' || typeof provider.getToken !== 'function') {
    throw new TokenwardenError('ERR_CONFIG', 'axiosAuth needs a TokenManager (or anything with getToken())');
  }
  const listed = options.origins === undefined ? undefined : checkOrigins(options.origins);
  const retryOn = checkRetryOn401(options.retryOn401);
  /** The token each request was sent with, for the 401 decision. */
  const sentWith = new WeakMap<object, { token: Token; url: URL }>();

  const allowed = (url: URL): boolean => {
    if (listed !== undefined) return listed.has(url.origin);
    const base = originOf(instance.defaults.baseURL);
    return base === undefined || base === url.origin;
  };

  const requestId = instance.interceptors.request.use(async (config) => {
    const url = requestUrl(instance, config);
    if (url === undefined || !allowed(url)) return config;
    const signal = config.signal instanceof AbortSignal ? config.signal : undefined;
    const token = await provider.getToken(signal ? { signal } : undefined);
    const headers = await authorizationHeaders(provider, token, config.method ?? 'get', url);
    for (const [name, value] of Object.entries(headers)) config.headers.set(name, value);
    config.beforeRedirect = keepCredentialsAt(url.origin, config.beforeRedirect);
    sentWith.set(config, { token, url });
    return config;
  });

  const answered = async (response: AxiosResponse): Promise<AxiosResponse | undefined> => {
    const config = response.config as InternalAxiosRequestConfig & { [RETRIED]?: Retried };
    const sent = config === undefined ? undefined : sentWith.get(config);
    if (sent === undefined) return undefined;
    const { token, url } = sent;
    // The end of a redirect to another origin (which got no token): its 401 and nonce are not about this token.
    if (redirectedElsewhere(url, response)) return undefined;
    const headers = toFetchHeaders(response.headers);
    if (token.tokenType === 'DPoP') await rememberDpopNonce(provider, url, headers.get('dpop-nonce'));
    if (response.status !== 401) return undefined;
    const retried: Retried = config[RETRIED] ?? {};
    const replayable = isReplayable(config.data);
    if (token.tokenType === 'DPoP' && !retried.nonce && replayable) {
      if (isDpopNonceChallenge(response.status, headers.get('www-authenticate'))) {
        return instance.request({ ...config, [RETRIED]: { ...retried, nonce: true } } as InternalAxiosRequestConfig);
      }
    }
    if (retried.token || !isRetryable401(retryOn, response.status, headers)) return undefined;
    if (!replayable) {
      await provider.invalidate(token.accessToken).catch(() => undefined);
      return undefined;
    }
    await provider.invalidate(token.accessToken);
    // The provider kept the token (a forced refresh happened moments ago): the API's answer stands.
    if ((await provider.getToken()).accessToken === token.accessToken) return undefined;
    return instance.request({ ...config, [RETRIED]: { ...retried, token: true } } as InternalAxiosRequestConfig);
  };

  const responseId = instance.interceptors.response.use(
    async (response) => (await answered(response)) ?? response,
    async (error: unknown) => {
      const response = (error as { isAxiosError?: boolean; response?: AxiosResponse }).response;
      if ((error as { isAxiosError?: boolean }).isAxiosError === true && response !== undefined) {
        const again = await answered(response);
        if (again !== undefined) return again;
      }
      throw error;
    },
  );

  return () => {
    instance.interceptors.request.eject(requestId);
    instance.interceptors.response.eject(responseId);
  };
}

type BeforeRedirect = NonNullable<InternalAxiosRequestConfig['beforeRedirect']>;

/** The caller's own `beforeRedirect` behind each of ours, so a retried config is not wrapped twice. */
const callerHooks = new WeakMap<BeforeRedirect, BeforeRedirect | undefined>();

/**
 * A `beforeRedirect` (axios's Node adapter, follow-redirects) that removes `Authorization` and `DPoP` from
 * a hop to any origin other than the one the token was sent to — whatever the axios version strips by
 * itself (follow-redirects alone keeps `Authorization` for a subdomain or an http→https hop, and never
 * drops `DPoP`) — then runs the caller's own hook.
 */
function keepCredentialsAt(origin: string, hook: BeforeRedirect | undefined): BeforeRedirect {
  const own = hook !== undefined && callerHooks.has(hook) ? callerHooks.get(hook) : hook;
  const guard: BeforeRedirect = (options, responseDetails, requestDetails) => {
    const target = originOf((options as { href?: unknown }).href);
    const headers = (options as { headers?: Record<string, unknown> }).headers;
    if (target !== origin && headers !== undefined && headers !== null) {
      for (const name of Object.keys(headers)) {
        if (/^(authorization|dpop)$/i.test(name)) delete headers[name];
      }
    }
    own?.(options, responseDetails, requestDetails);
  };
  callerHooks.set(guard, own);
  return guard;
}

/**
 * Whether follow-redirects (axios's Node adapter) took the request to another origin: the final response's
 * `responseUrl` (the request's own URL when nothing was followed). Other adapters say nothing, and count as
 * not redirected.
 */
function redirectedElsewhere(url: URL, response: AxiosResponse): boolean {
  const final = (response.request as { res?: { responseUrl?: unknown } } | undefined)?.res;
  return answeredElsewhere(url, final?.responseUrl);
}

function requestUrl(instance: AxiosInstance, config: InternalAxiosRequestConfig): URL | undefined {
  try {
    const url = new URL(instance.getUri(config));
    return url.protocol === 'http:' || url.protocol === 'https:' ? url : undefined;
  } catch {
    return undefined; // a relative URL: no origin to check, so no token
  }
}

/** After axios's transforms, a body is a string, a buffer, form data or a stream; only streams are read once. */
function isReplayable(data: unknown): boolean {
  if (data === undefined || data === null) return true;
  if (typeof data !== 'object') return true;
  const candidate = data as { pipe?: unknown; getReader?: unknown; [Symbol.asyncIterator]?: unknown };
  return (
    typeof candidate.pipe !== 'function' &&
    typeof candidate.getReader !== 'function' &&
    typeof candidate[Symbol.asyncIterator] !== 'function'
  );
}

function toFetchHeaders(headers: unknown): Headers {
  const out = new Headers();
  if (headers === null || typeof headers !== 'object') return out;
  const plain =
    typeof (headers as { toJSON?: unknown }).toJSON === 'function'
      ? (headers as { toJSON(): Record<string, unknown> }).toJSON()
      : (headers as Record<string, unknown>);
  for (const [name, value] of Object.entries(plain)) {
    if (value === undefined || value === null) continue;
    for (const v of Array.isArray(value) ? value : [value]) {
      try {
        out.append(name, String(v));
      } catch {
        // A header the fetch Headers class refuses is not one the 401 rule reads.
      }
    }
  }
  return out;
}
