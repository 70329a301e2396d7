/**
 * Tokens on undici requests — `fetch(url, { dispatcher })`, `request()`, `setGlobalDispatcher()`, and SDKs
 * that take a dispatcher — through an interceptor for `Dispatcher.compose()` (undici 7). undici is only a
 * type here: the interceptor works with the undici your application imports.
 *
 * @module
 */
import type { IncomingHttpHeaders } from 'node:http';
import type { Dispatcher } from 'undici';
import { TokenwardenError } from '../errors.js';
import type { Token } from '../token.js';
import type { RetryOn401, TokenProvider } from './auth-fetch.js';
import {
  authorizationHeaders,
  checkOrigins,
  checkRetryOn401,
  isDpopNonceChallenge,
  isRetryable401,
  originOf,
  rememberDpopNonce,
} from './authorize.js';

/**
 * Options for {@link authInterceptor}.
 *
 * @example
 * ```ts
 * const options: AuthInterceptorOptions = { origins: ['https://api.example.com', 'https://files.example.com:8443'] };
 * ```
 */
export interface AuthInterceptorOptions {
  /**
   * The origins that get the token (`scheme://host[:port]`; a URL's path is ignored). Requests to any other
   * origin pass through untouched. Required: a dispatcher may be shared by code calling any host.
   */
  origins: readonly (string | URL)[];
  /** Which 401 responses get one retry with a new token. Default `'invalid_token'` (as `manager.fetch`). */
  retryOn401?: RetryOn401;
}

/**
 * An undici interceptor that attaches `Authorization: <type> <token>` from a `TokenManager` (or any
 * {@link TokenProvider}) to requests for the listed origins — and only those: never to another host, and
 * never to the target of a redirect to another origin (undici's redirect interceptor drops the header; a
 * hop that comes back through this interceptor is judged by the origin the request started at).
 *
 * On a 401 that matches `retryOn401` (default: `WWW-Authenticate` with `error="invalid_token"`), the token
 * is invalidated (here and in the shared store) and the request is sent once more with a new one — when its
 * body can be sent again (none, a string, a buffer, a Blob, a FormData); a streamed body is never replayed
 * and that 401 is handed back (`fetch()` always streams a body, so only its body-less requests are
 * retried). Never more than one retry. A `DPoP` token (a source configured with `dpop`) gets a proof per
 * request, and a server's `use_dpop_nonce` challenge one more request.
 *
 * @example
 * ```ts
 * import { Agent, fetch, request, setGlobalDispatcher } from 'undici';
 * import { authInterceptor } from 'tokenwarden/undici';
 *
 * const dispatcher = new Agent().compose(authInterceptor(manager, { origins: ['https://api.example.com'] }));
 * await fetch('https://api.example.com/orders', { dispatcher });
 * await request('https://api.example.com/orders', { dispatcher });
 * setGlobalDispatcher(dispatcher); // every fetch() of the process, Node's own included
 * ```
 */
export function authInterceptor(
  provider: TokenProvider,
  options: AuthInterceptorOptions,
): Dispatcher.DispatcherComposeInterceptor {
  if (provider === null || typeof provider !== 'object' || typeof provider.getToken !== 'function') {
    throw new TokenwardenError('ERR_CONFIG', 'authInterceptor needs a TokenManager (or anything with getToken())');
  }
  const origins = checkOrigins(options?.origins);
  const retryOn = checkRetryOn401(options.retryOn401);
  // A handler seen again is the same request dispatched again: a retry, or a redirect hop followed by an
  // interceptor outside this one. It keeps the origin it started at.
  const started = new WeakMap<object, string>();
  return (dispatch) =>
    function authDispatch(opts, handler) {
      const origin = originOf(opts.origin);
      const first = started.get(handler);
      if (first === undefined && origin !== undefined) started.set(handler, origin);
      if (first !== undefined && first !== origin) {
        // A redirect to another origin: no token, and no credential left over from the first hop.
        return dispatch({ ...opts, headers: withoutCredentials(opts.headers, true) }, handler);
      }
      if (origin === undefined || !origins.has(origin)) return dispatch(opts, handler);
      new AuthenticatedRequest(provider, retryOn, dispatch, opts, handler as Dispatcher.DispatchHandler).start();
      return true;
    };
}

type Headers = Record<string, string | string[]>;

/** One request through the interceptor: token, send, perhaps one retry; the caller's handler sees one answer. */
class AuthenticatedRequest implements Dispatcher.DispatchHandler {
  readonly #provider: TokenProvider;
  readonly #retryOn: RetryOn401;
  readonly #dispatch: Dispatcher.Dispatch;
  readonly #opts: Dispatcher.DispatchOptions;
  readonly #handler: Dispatcher.DispatchHandler;
  readonly #controller = new StableController();
  readonly #url: URL;
  readonly #replayable: boolean;
  #token: Token | undefined;
  #requestStarted = false;
  #tokenRetried = false;
  #nonceRetried = false;
  /** Set while a response is being swallowed because the request goes again. */
  #again: 'token' | 'nonce' | undefined;
  #nonce: Promise<void> = Promise.resolve();

  constructor(
    provider: TokenProvider,
    retryOn: RetryOn401,
    dispatch: Dispatcher.Dispatch,
    opts: Dispatcher.DispatchOptions,
    handler: Dispatcher.DispatchHandler,
  ) {
    this.#provider = provider;
    this.#retryOn = retryOn;
    this.#dispatch = dispatch;
    this.#opts = opts;
    this.#handler = handler;
    // The origin and the path as sent: a path like `//a/b` is a path, not a network-path reference to host `a`.
    this.#url = new URL(`${originOf(opts.origin)}${opts.path.startsWith('/') ? '' : '/'}${opts.path}`);
    this.#replayable = isReplayable(opts) && !opts.upgrade && opts.method !== 'CONNECT';
  }

  start(): void {
    void this.#send(false);
  }

  async #send(newToken: boolean): Promise<void> {
    try {
      if (newToken && this.#token !== undefined) await this.#provider.invalidate(this.#token.accessToken);
      await this.#nonce;
      if (this.#token === undefined || newToken) this.#token = await this.#provider.getToken();
      if (this.#controller.aborted) throw this.#controller.reason ?? new Error('aborted');
      const credentials = await authorizationHeaders(this.#provider, this.#token, this.#opts.method, this.#url);
      this.#dispatch(
        { ...this.#opts, headers: { ...withoutCredentials(this.#opts.headers, true), ...credentials } },
        this,
      );
    } catch (err) {
      this.#fail(err);
    }
  }

  #fail(err: unknown): void {
    const error = err instanceof Error ? err : new Error(String(err));
    if (this.#handler.onResponseError) this.#handler.onResponseError(this.#controller, error);
    else throw error;
  }

  onRequestStart(controller: Dispatcher.DispatchController, context: unknown): void {
    this.#controller.target = controller;
    if (this.#requestStarted) return;
    this.#requestStarted = true;
    this.#handler.onRequestStart?.(this.#controller, context);
  }

  onRequestUpgrade(
    _controller: Dispatcher.DispatchController,
    statusCode: number,
    headers: IncomingHttpHeaders,
    socket: import('node:stream').Duplex,
  ): void {
    this.#handler.onRequestUpgrade?.(this.#controller, statusCode, headers, socket);
  }

  onResponseStart(
    _controller: Dispatcher.DispatchController,
    statusCode: number,
    headers: IncomingHttpHeaders,
    statusMessage?: string,
  ): void {
    this.#again = undefined;
    const isDpop = this.#token?.tokenType === 'DPoP';
    if (isDpop) this.#nonce = rememberDpopNonce(this.#provider, this.#url, first(headers['dpop-nonce']));
    if (statusCode === 401 && this.#token !== undefined) {
      const challenge = first(headers['www-authenticate']);
      if (isDpop && !this.#nonceRetried && this.#replayable && isDpopNonceChallenge(statusCode, challenge)) {
        this.#nonceRetried = true;
        this.#again = 'nonce';
      } else if (!this.#tokenRetried && isRetryable401(this.#retryOn, statusCode, toFetchHeaders(headers))) {
        this.#tokenRetried = true;
        if (this.#replayable) this.#again = 'token';
        // Not replayable: this 401 goes to the caller, and the next request gets a new token.
        else void this.#provider.invalidate(this.#token.accessToken).catch(() => undefined);
      }
    }
    // Going again: the 401's body is read to its end and dropped (the connection stays usable).
    if (this.#again !== undefined) return;
    this.#handler.onResponseStart?.(this.#controller, statusCode, headers, statusMessage);
  }

  onResponseData(_controller: Dispatcher.DispatchController, chunk: Buffer): void {
    if (this.#again === undefined) this.#handler.onResponseData?.(this.#controller, chunk);
  }

  onResponseEnd(_controller: Dispatcher.DispatchController, trailers: IncomingHttpHeaders): void {
    const again = this.#again;
    if (again === undefined) {
      this.#handler.onResponseEnd?.(this.#controller, trailers);
      return;
    }
    this.#again = undefined;
    void this.#send(again === 'token');
  }

  onResponseError(_controller: Dispatcher.DispatchController, error: Error): void {
    this.#again = undefined;
    this.#fail(error);
  }
}

/**
 * The controller the caller's handler holds for the whole request, across the attempts: it forwards to
 * the attempt in flight and remembers an abort or a pause made between two.
 */
class StableController implements Dispatcher.DispatchController {
  #target: Dispatcher.DispatchController | undefined;
  #paused = false;
  #reason: Error | null = null;

  set target(target: Dispatcher.DispatchController) {
    this.#target = target;
    if (this.#reason !== null) target.abort(this.#reason);
    else if (this.#paused) target.pause();
  }

  get aborted(): boolean {
    return this.#reason !== null || (this.#target?.aborted ?? false);
  }

  get paused(): boolean {
    return this.#paused;
  }

  get reason(): Error | null {
    return this.#reason ?? this.#target?.reason ?? null;
  }

  get rawHeaders(): Dispatcher.DispatchController['rawHeaders'] {
    return this.#target?.rawHeaders ?? null;
  }

  get rawTrailers(): Dispatcher.DispatchController['rawTrailers'] {
    return this.#target?.rawTrailers ?? null;
  }

  abort(reason: Error): void {
    this.#reason = reason;
    this.#target?.abort(reason);
  }

  pause(): void {
    this.#paused = true;
    this.#target?.pause();
  }

  resume(): void {
    this.#paused = false;
    this.#target?.resume();
  }
}

/**
 * The request's headers as a plain object. With `strip`, without `authorization`, `dpop` (ours from an
 * earlier attempt, or a hop to another origin) — the caller's own headers otherwise pass untouched.
 */
function withoutCredentials(headers: Dispatcher.DispatchOptions['headers'], strip: boolean): Headers {
  const out: Headers = {};
  const add = (name: unknown, value: unknown): void => {
    const key = String(name);
    if (strip && /^(authorization|dpop)$/i.test(key)) return;
    const text = Array.isArray(value) ? value.map(String) : String(value);
    const existing = out[key];
    out[key] = existing === undefined ? text : [...(Array.isArray(existing) ? existing : [existing]), ...[text].flat()];
  };
  if (headers === undefined || headers === null) return out;
  if (Array.isArray(headers)) {
    if (headers.length > 0 && Array.isArray(headers[0])) {
      for (const [name, value] of headers as unknown as [unknown, unknown][]) add(name, value);
    } else {
      for (let i = 0; i + 1 < headers.length; i += 2) add(headers[i], headers[i + 1]);
    }
  } else if (typeof (headers as Iterable<unknown>)[Symbol.iterator] === 'function') {
    for (const [name, value] of headers as Iterable<[unknown, unknown]>) add(name, value);
  } else {
    for (const [name, value] of Object.entries(headers as Record<string, unknown>)) {
      if (value !== undefined) add(name, value);
    }
  }
  return out;
}

/** Bodies that can be sent again as they are; streams and iterables are read once. */
function isReplayable(opts: Dispatcher.DispatchOptions): boolean {
  const body: unknown = opts.body;
  if (body === undefined || body === null) return true;
  if (typeof body === 'string' || ArrayBuffer.isView(body) || body instanceof ArrayBuffer) return true;
  if (typeof Blob !== 'undefined' && body instanceof Blob) return true;
  const tag = (body as { [Symbol.toStringTag]?: unknown })[Symbol.toStringTag];
  return tag === 'FormData' || tag === 'URLSearchParams';
}

function first(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value.join(', ') : value;
}

function toFetchHeaders(headers: IncomingHttpHeaders): globalThis.Headers {
  const out = new globalThis.Headers();
  for (const [name, value] of Object.entries(headers)) {
    if (value === undefined) continue;
    for (const v of Array.isArray(value) ? value : [value]) {
      try {
        out.append(name, v);
      } catch {
        // A header the fetch Headers class refuses is not one the 401 rule reads.
      }
    }
  }
  return out;
}
