/**
 * Authorization server metadata discovery (OpenID Connect Discovery and RFC 8414), cached per issuer.
 *
 * @module
 */
import * as oauth from 'oauth4webapi';
import { abortable } from '../abort.js';
import { type Clock, systemClock } from '../clock.js';
import { TokenwardenError } from '../errors.js';
import {
  DEFAULT_MAX_RESPONSE_BYTES,
  DEFAULT_TIMEOUT_MS,
  type TransportOptions,
  boundedFetch,
} from '../http/transport.js';
import { redirectTarget, toTokenwardenError } from './errors.js';

/**
 * Which well-known document to read. `'auto'` tries OpenID Connect first, then RFC 8414.
 *
 * @example
 * ```ts
 * clientCredentials({ issuer: 'https://as.example.com/tenant', discovery: 'oauth2', clientId, clientSecret });
 * ```
 */
export type DiscoveryAlgorithm = 'oidc' | 'oauth2' | 'auto';

/** How long discovered metadata is reused before it is fetched again. */
export const DISCOVERY_TTL_MS = 60 * 60_000;

const cache = new Map<string, { at: number; metadata: Promise<oauth.AuthorizationServer> }>();

/**
 * Options for {@link discover}.
 *
 * @example
 * ```ts
 * const options: DiscoverOptions = { algorithm: 'oidc', timeoutMs: 5000, signal: AbortSignal.timeout(10_000) };
 * ```
 */
export interface DiscoverOptions extends Partial<TransportOptions> {
  algorithm?: DiscoveryAlgorithm;
  allowInsecureRequests?: boolean;
  signal?: AbortSignal;
  /** Skip the cache (and replace its entry). */
  force?: boolean;
  /** Clock for the cache's age. Default: the system clock. */
  clock?: Clock;
}

/**
 * Fetches (or returns the cached) metadata of `issuer`. Concurrent calls share one request; failures are
 * not cached. Each request is bounded by `timeoutMs` (default 10 s) and its body by `maxResponseBytes`
 * (default 1 MiB). A caller's `signal` ends that caller's wait (`ERR_ABORTED`), not the shared request.
 *
 * @example
 * ```ts
 * import { discover } from 'tokenwarden';
 * const as = await discover('https://login.example.com', { timeoutMs: 5000, maxResponseBytes: 1 << 20 });
 * console.log(as.token_endpoint);
 * ```
 */
export function discover(issuer: string, options: DiscoverOptions = {}): Promise<oauth.AuthorizationServer> {
  const algorithm = options.algorithm ?? 'auto';
  const cacheKey = `${algorithm} ${issuer}`;
  const now = (options.clock ?? systemClock).now();
  const hit = cache.get(cacheKey);
  if (!options.force && hit && now - hit.at < DISCOVERY_TTL_MS && now >= hit.at) {
    return untilAborted(hit.metadata, options.signal);
  }
  // The request is shared by every caller that asks meanwhile, so it is not stopped by one caller's signal
  // (another caller would fail with ERR_ABORTED it did not ask for); the timeout bounds it.
  const { signal, ...shared } = options;
  const metadata = fetchMetadata(issuer, algorithm, shared);
  cache.set(cacheKey, { at: now, metadata });
  metadata.catch(() => {
    if (cache.get(cacheKey)?.metadata === metadata) cache.delete(cacheKey);
  });
  return untilAborted(metadata, signal);
}

/**
 * `metadata`, or `ERR_ABORTED` as soon as this caller's `signal` aborts (the shared request goes on). The
 * listener goes when `metadata` settles: a signal that outlives the call (a process-wide one) does not grow.
 */
function untilAborted(
  metadata: Promise<oauth.AuthorizationServer>,
  signal: AbortSignal | undefined,
): Promise<oauth.AuthorizationServer> {
  return signal === undefined ? metadata : abortable(metadata, signal, 'discovery');
}

async function fetchMetadata(
  issuer: string,
  algorithm: DiscoveryAlgorithm,
  options: DiscoverOptions,
): Promise<oauth.AuthorizationServer> {
  let url: URL;
  try {
    url = new URL(issuer);
  } catch {
    throw new TokenwardenError('ERR_CONFIG', 'issuer must be an absolute URL');
  }
  const fetcher = boundedFetch({
    ...(options.fetch && { fetch: options.fetch }),
    timeoutMs: options.timeoutMs ?? DEFAULT_TIMEOUT_MS,
    maxResponseBytes: options.maxResponseBytes ?? DEFAULT_MAX_RESPONSE_BYTES,
  });
  const attempt = async (alg: 'oidc' | 'oauth2', trailingSlash = false): Promise<oauth.AuthorizationServer> => {
    const response = await oauth.discoveryRequest(url, {
      algorithm: alg,
      signal: options.signal,
      [oauth.customFetch]: trailingSlash
        ? (href: string, init: RequestInit) => fetcher(withSlash(href), init)
        : fetcher,
      [oauth.allowInsecureRequests]: options.allowInsecureRequests === true,
    });
    return oauth.processDiscoveryResponse(url, response);
  };
  // Django OAuth Toolkit before 2.0 serves `/.well-known/openid-configuration/` only, with the slash: the
  // address without it is a 404, or Django's redirect to it. That one retry, and only for that.
  const oidc = async (): Promise<oauth.AuthorizationServer> => {
    try {
      return await attempt('oidc');
    } catch (err) {
      if (!wantsTrailingSlash(err)) throw err;
      return await attempt('oidc', true);
    }
  };
  try {
    if (algorithm === 'oidc') return await oidc();
    if (algorithm === 'oauth2') return await attempt('oauth2');
    try {
      return await oidc();
    } catch (err) {
      // Only a missing document means "try the other one"; anything else is the answer.
      if (statusOf(err) !== 404) throw err;
      return await attempt('oauth2');
    }
  } catch (err) {
    throw toTokenwardenError(err, 'discovery', 'ERR_DISCOVERY');
  }
}

/** The HTTP status of a discovery answer that was not the document. */
function statusOf(err: unknown): unknown {
  return (err as { cause?: { status?: unknown } }).cause?.status;
}

/** `href` with a slash at the end of its path. */
function withSlash(href: string): string {
  const url = new URL(href);
  url.pathname += '/';
  return url.href;
}

/**
 * Whether a failed OpenID Connect discovery answer asks for the same address with a trailing slash: a 404, or
 * a redirect to exactly that address (Django's `APPEND_SLASH`). Any other redirect is not followed.
 */
function wantsTrailingSlash(err: unknown): boolean {
  const response = (err as { cause?: unknown }).cause;
  if (!(response instanceof Response)) return false;
  if (response.status === 404) return true;
  const redirect = response.status >= 300 && response.status < 400 && response.url !== '';
  return redirect && redirectTarget(response, (text) => text) === withSlash(response.url);
}

/**
 * Forgets cached metadata (all of it, or one issuer's), e.g. after the authorization server moved an endpoint.
 *
 * @example
 * ```ts
 * clearDiscoveryCache('https://login.example.com');
 * ```
 */
export function clearDiscoveryCache(issuer?: string): void {
  if (issuer === undefined) cache.clear();
  else for (const key of cache.keys()) if (key.endsWith(` ${issuer}`)) cache.delete(key);
}
