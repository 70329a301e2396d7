/**
 * The transport under every call tokenwarden makes to an authorization server: the injectable `fetch`,
 * a timeout, the caller's AbortSignal, and a cap on the response body. Failures become
 * {@link TokenwardenError}s with `ERR_NETWORK`, `ERR_TIMEOUT`, `ERR_ABORTED` or `ERR_RESPONSE_TOO_LARGE`.
 *
 * @module
 */
import { TokenwardenError, truncate } from '../errors.js';
import { NETWORK_CODES } from './network.js';
import { describeProxyFor } from './proxy.js';
import { originOf } from './authorize.js';

/**
 * A `fetch`-compatible function.
 *
 * @example
 * ```ts
 * const viaProxy: FetchLike = (input, init) => fetch(input, { ...init, dispatcher: proxyAgent } as RequestInit);
 * clientCredentials({ issuer, clientId, clientSecret, fetch: viaProxy });
 * ```
 */
export type FetchLike = (input: string | URL | Request, init?: RequestInit) => Promise<Response>;

/** Transport options shared by every network-facing part of tokenwarden. */
export interface TransportOptions {
  /** The `fetch` to use. Default: the global `fetch`. */
  fetch?: FetchLike;
  /** Time limit per request, in milliseconds. */
  timeoutMs: number;
  /** Largest response body accepted, in bytes. */
  maxResponseBytes: number;
}

/** Default time limit per request to an authorization server. */
export const DEFAULT_TIMEOUT_MS = 10_000;
/** Default cap on a response body from an authorization server (1 MiB). */
export const DEFAULT_MAX_RESPONSE_BYTES = 1024 * 1024;

/** What a request observed, for callers that need more than the body (e.g. `Retry-After`). */
export interface ResponseMeta {
  status?: number;
  retryAfter?: string | null;
}

/**
 * Returns a fetch that applies the timeout, the body cap and error mapping. `meta`, when given, is filled
 * with the status and `Retry-After` of the last response.
 */
export function boundedFetch(options: TransportOptions, meta?: ResponseMeta): FetchLike {
  const fetchImpl = options.fetch ?? globalThis.fetch;
  return async (input, init = {}) => {
    const target = describeUrl(input);
    const proxy = describeProxyFor(fetchImpl, target);
    const url = proxy === undefined ? target : `${target} through the proxy ${proxy}`;
    const timeout = AbortSignal.timeout(options.timeoutMs);
    const callerSignal = init.signal ?? undefined;
    const signal = callerSignal ? AbortSignal.any([callerSignal, timeout]) : timeout;
    const fail = (err: unknown): TokenwardenError => {
      if (err instanceof TokenwardenError) return err;
      if (callerSignal?.aborted) {
        return new TokenwardenError('ERR_ABORTED', `request to ${url} was aborted`, { cause: err });
      }
      if (timeout.aborted) {
        return new TokenwardenError('ERR_TIMEOUT', `request to ${url} timed out after ${options.timeoutMs} ms`, {
          cause: err,
        });
      }
      const code = networkCode(err);
      const detail = failureDetail(err, code, proxy !== undefined, target.startsWith('https:'));
      return new TokenwardenError(
        'ERR_NETWORK',
        `request to ${url} failed${code ? ` (${code})` : ''}${detail ? `: ${truncate(detail, 120)}` : ''}`,
        { cause: err },
      );
    };
    // The limit holds even for a `fetch` that does not honour its signal (a wrapper that drops it, a client
    // of another kind): the wait for the answer, and for each chunk of its body, ends when the signal does.
    const { stopped, release } = whenAborted(signal);
    try {
      let response: Response;
      let pending: Promise<Response> | undefined;
      try {
        pending = fetchImpl(input, { ...init, signal });
        response = await Promise.race([pending, stopped]);
      } catch (err) {
        // An answer that arrives after the limit is not read: its body is released.
        pending?.then(
          (late) => void late.body?.cancel().catch(() => undefined),
          () => undefined,
        );
        throw fail(err);
      }
      if (response.redirected && init.redirect === 'manual') {
        // The request asked not to follow redirects (every request to an authorization server does: its form
        // carries credentials), and the fetch followed one anyway — a wrapper that drops `redirect`. What the
        // other address answered is not the server's answer.
        void response.body?.cancel().catch(() => undefined);
        throw new TokenwardenError(
          'ERR_INVALID_RESPONSE',
          `request to ${url} was answered from ${originOf(response.url) ?? 'another address'} after a redirect the fetch followed; ` +
            "a custom fetch must pass on redirect: 'manual'",
        );
      }
      if (meta) {
        meta.status = response.status;
        meta.retryAfter = response.headers.get('retry-after');
      }
      let body: Uint8Array<ArrayBuffer> | null;
      try {
        body = await readCapped(response, options.maxResponseBytes, url, stopped);
      } catch (err) {
        throw fail(err);
      }
      const nullBody = [101, 103, 204, 205, 304].includes(response.status);
      const capped = new Response(nullBody ? null : body, {
        status: response.status,
        statusText: response.statusText,
        headers: response.headers,
      });
      // A built Response has no URL: keep the one answered (a relative redirect is read against it).
      const answered =
        response.url || (typeof input === 'string' ? input : input instanceof URL ? input.href : input.url);
      Object.defineProperty(capped, 'url', { value: answered, enumerable: false });
      return capped;
    } finally {
      release();
    }
  };
}

/**
 * A promise rejected with the signal's reason once it aborts (never settled otherwise; never unhandled), and
 * `release()`, which stops listening: a listener left on a signal keeps it in memory until it aborts — and a
 * signal made with `AbortSignal.any()` from a long-lived one (a caller's process-wide signal) with it.
 *
 * @example
 * ```ts
 * const { stopped, release } = whenAborted(signal);
 * try {
 *   return await Promise.race([fetchImpl(url, { signal }), stopped]);
 * } finally {
 *   release();
 * }
 * ```
 */
export function whenAborted(signal: AbortSignal): { stopped: Promise<never>; release(): void } {
  let release = (): void => undefined;
  const stopped = new Promise<never>((_, reject) => {
    if (signal.aborted) return reject(signal.reason);
    const onAbort = (): void => reject(signal.reason);
    signal.addEventListener('abort', onAbort, { once: true });
    release = () => signal.removeEventListener('abort', onAbort);
  });
  stopped.catch(() => undefined);
  return { stopped, release };
}

async function readCapped(
  response: Response,
  max: number,
  url: string,
  stopped: Promise<never>,
): Promise<Uint8Array<ArrayBuffer> | null> {
  if (response.body === null) return null;
  const body = await readAtMost(response.body, max, response.headers.get('content-length'), stopped);
  if (body === undefined) {
    throw new TokenwardenError('ERR_RESPONSE_TOO_LARGE', `response from ${url} is larger than ${max} bytes`, {
      status: response.status,
    });
  }
  return body;
}

/**
 * Reads a body stream whole, or stops (cancelling the stream) and resolves to `undefined` as soon as it —
 * or its declared `Content-Length` — exceeds `max` bytes: an oversized body is never held in memory. When
 * `stopped` rejects first (a timeout, an abort), the stream is cancelled and that rejection is thrown.
 */
export async function readAtMost(
  stream: ReadableStream<Uint8Array>,
  max: number,
  contentLength?: string | null,
  stopped?: Promise<never>,
): Promise<Uint8Array<ArrayBuffer> | undefined> {
  const declared = Number(contentLength);
  if (contentLength != null && Number.isFinite(declared) && declared > max) {
    await stream.cancel().catch(() => undefined);
    return undefined;
  }
  const reader = stream.getReader();
  const chunks: Uint8Array[] = [];
  let size = 0;
  for (;;) {
    let chunk: ReadableStreamReadResult<Uint8Array>;
    try {
      chunk = await (stopped === undefined ? reader.read() : Promise.race([reader.read(), stopped]));
    } catch (err) {
      await reader.cancel().catch(() => undefined);
      throw err;
    }
    const { done, value } = chunk;
    if (done) break;
    size += value.byteLength;
    if (size > max) {
      await reader.cancel().catch(() => undefined);
      return undefined;
    }
    chunks.push(value);
  }
  const out = new Uint8Array(size);
  let offset = 0;
  for (const chunk of chunks) {
    out.set(chunk, offset);
    offset += chunk.byteLength;
  }
  return out;
}

/** Origin and path of a request target: never the query string, which could carry a secret. */
export function describeUrl(input: string | URL | Request): string {
  try {
    const url = new URL(typeof input === 'string' ? input : input instanceof URL ? input.href : input.url);
    return `${url.origin}${url.pathname}`;
  } catch {
    return '(invalid URL)';
  }
}

function innermostMessage(err: unknown): string | undefined {
  let message: string | undefined;
  for (let e: unknown = err, depth = 0; e && depth < 5; depth++) {
    const text = (e as { message?: unknown }).message;
    if (typeof text === 'string' && text !== '' && text !== 'fetch failed') message = text;
    e = (e as { cause?: unknown }).cause;
  }
  return message;
}

/**
 * What to say after the code: through a proxy, undici's own words for what the proxy did ("Proxy response (407)
 * !== 200 when HTTP Tunneling": they hold no credential, undici never sees the proxy URL's user-info);
 * otherwise the code in words, or for fetch's "bad port" (a port the Fetch standard blocks: 1, 9, 25…), which
 * has no code, what that means.
 */
function failureDetail(err: unknown, code: string | undefined, proxied: boolean, tls: boolean): string | undefined {
  if (proxied) return innermostMessage(err);
  if (code === undefined) {
    return innermostMessage(err) === 'bad port'
      ? 'the port is one fetch refuses to use (a blocked port of the Fetch standard)'
      : undefined;
  }
  // Over TLS, the likeliest cause of a bare close a user can mend: a server that requires a client certificate
  // (mutual TLS, tls_client_auth) and got none closes the connection after the handshake, and its alert does not
  // reach fetch's error.
  const mTls =
    tls && code === 'UND_ERR_SOCKET' ? ' (one that requires a TLS client certificate does so when given none)' : '';
  const words = NETWORK_CODES.get(code);
  return words === undefined ? undefined : `${words}${mTls}`;
}

function networkCode(err: unknown): string | undefined {
  for (let e: unknown = err, depth = 0; e && depth < 5; depth++) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === 'string') return code;
    e = (e as { cause?: unknown }).cause;
  }
  return undefined;
}
