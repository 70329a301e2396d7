/**
 * Every failure a user of tokenwarden can meet is a {@link TokenwardenError} with a stable string `code`.
 *
 * Messages never contain a secret, a token or an unbounded response body: descriptions coming from the
 * network are truncated, and response bodies attached by `oauth4webapi` are replaced by a list of their
 * field names before they become a `cause`.
 *
 * @module
 */

/**
 * The stable error codes. Switch on these, not on messages.
 *
 * | code | meaning |
 * | --- | --- |
 * | `ERR_CONFIG` | an option is missing or invalid (thrown at construction) |
 * | `ERR_INSECURE_ISSUER` | an `http:` URL was given without `allowInsecureRequests: true` |
 * | `ERR_DISCOVERY` | the issuer's metadata is unusable (a network failure or an HTTP status fetching it has its own code) |
 * | `ERR_NETWORK` | connection refused, reset, DNS failure |
 * | `ERR_TIMEOUT` | the request took longer than its `timeout` |
 * | `ERR_ABORTED` | the caller's `AbortSignal` fired |
 * | `ERR_HTTP_STATUS` | an unexpected HTTP status without an OAuth error body (e.g. a 502 HTML page) |
 * | `ERR_INVALID_RESPONSE` | the body is not JSON, or is JSON of the wrong shape |
 * | `ERR_RESPONSE_TOO_LARGE` | the body exceeded `maxResponseBytes` |
 * | `ERR_OAUTH` | the server answered an OAuth error (`error`, `error_description`, `status`) |
 * | `ERR_LOGIN_REQUIRED` | no usable refresh token for a subject (UserTokens), or a refresh token whose lifetime the server gave has passed (the refresh token grant, without a fallback): sign in again |
 * | `ERR_ID_TOKEN_INVALID` | an ID token does not belong to this client or subject |
 * | `ERR_INVALID_TOKEN` | a token given to us is not a JWT, or failed verification (the `tokenwarden inspect` command) |
 * | `ERR_STORE` | a token store failed (the manager degrades to in-process behaviour) |
 * | `ERR_STORE_TIMEOUT` | a token store did not answer in time |
 * | `ERR_LOCK_TIMEOUT` | another process held the refresh lock for longer than we could wait |
 * | `ERR_DECRYPT` | a stored entry could not be decrypted with any configured key |
 * | `ERR_RETRY_LATER` | the server asked us to wait (`Retry-After`) and no valid token is available |
 * | `ERR_CLOSED` | the manager or store was closed |
 * | `ERR_UNSUPPORTED` | the server or token uses something tokenwarden does not support |
 * | `ERR_PROVIDER` | a resource-server provider (your code) threw while checking a token |
 * | `ERR_CREDENTIAL` | a credential read per request (a client assertion or subject token file, or the function giving it) was missing, empty, unreadable or failed |
 *
 * @example
 * ```ts
 * function hint(code: ErrorCode): string {
 *   return code === 'ERR_NETWORK' || code === 'ERR_TIMEOUT' ? 'is the authorization server reachable?' : 'see the message';
 * }
 * ```
 */
export type ErrorCode =
  | 'ERR_CONFIG'
  | 'ERR_INSECURE_ISSUER'
  | 'ERR_DISCOVERY'
  | 'ERR_NETWORK'
  | 'ERR_TIMEOUT'
  | 'ERR_ABORTED'
  | 'ERR_HTTP_STATUS'
  | 'ERR_INVALID_RESPONSE'
  | 'ERR_RESPONSE_TOO_LARGE'
  | 'ERR_OAUTH'
  | 'ERR_LOGIN_REQUIRED'
  | 'ERR_ID_TOKEN_INVALID'
  | 'ERR_INVALID_TOKEN'
  | 'ERR_STORE'
  | 'ERR_STORE_TIMEOUT'
  | 'ERR_LOCK_TIMEOUT'
  | 'ERR_DECRYPT'
  | 'ERR_RETRY_LATER'
  | 'ERR_CLOSED'
  | 'ERR_UNSUPPORTED'
  | 'ERR_PROVIDER'
  | 'ERR_CREDENTIAL';

/**
 * Options accepted by {@link TokenwardenError}'s constructor.
 *
 * @example
 * ```ts
 * throw new TokenwardenError('ERR_OAUTH', 'token request failed', { error: 'invalid_client', status: 401, cause: err });
 * ```
 */
export interface TokenwardenErrorOptions {
  /** The underlying error. Bodies that may hold tokens must be removed before (see {@link sanitizeCause}). */
  cause?: unknown;
  /** The OAuth `error` code returned by the server. */
  error?: string;
  /** The OAuth `error_description` (truncated to {@link MAX_DESCRIPTION} characters). */
  error_description?: string;
  /** The OAuth `error_uri`: kept only when it is an absolute `https:`/`http:` URL of RFC 6749's characters. */
  error_uri?: string;
  /** The HTTP status of the response that caused this error. */
  status?: number;
  /** How long the server asked us to wait (`Retry-After`), in milliseconds. */
  retryAfterMs?: number;
}

/** Longest `error_description` (and any server-provided text) kept in an error. */
export const MAX_DESCRIPTION = 256;

/**
 * The one error class of tokenwarden. Check `code`, never the message.
 *
 * @example
 * ```ts
 * import { TokenwardenError } from 'tokenwarden';
 * try {
 *   await manager.getToken();
 * } catch (err) {
 *   if (err instanceof TokenwardenError && err.code === 'ERR_OAUTH' && err.error === 'invalid_client') {
 *     console.error('check the client secret', err.status);
 *   }
 * }
 * ```
 */
export class TokenwardenError extends Error {
  override readonly name = 'TokenwardenError';
  /** Stable machine-readable code. */
  readonly code: ErrorCode;
  /** OAuth `error` from the server, when the server sent one. */
  readonly error?: string;
  /** OAuth `error_description` from the server (truncated), when the server sent one. */
  readonly error_description?: string;
  /**
   * OAuth `error_uri` from the server (RFC 6749 §5.2: a page about the error), when it sent a well-formed
   * one: an absolute `https:` or `http:` URL of at most {@link MAX_DESCRIPTION} characters from RFC 6749's
   * set (no spaces, quotes or backslashes), without user info. Anything else is dropped, not repaired.
   */
  readonly error_uri?: string;
  /** HTTP status of the failing response, when there was one. */
  readonly status?: number;
  /** Milliseconds the server asked us to wait before trying again (`Retry-After`). */
  readonly retryAfterMs?: number;

  constructor(code: ErrorCode, message: string, options: TokenwardenErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    if (options.error !== undefined) this.error = truncate(options.error, 64);
    if (options.error_description !== undefined) {
      this.error_description = truncate(options.error_description, MAX_DESCRIPTION);
    }
    const uri = options.error_uri === undefined ? undefined : errorUri(options.error_uri);
    if (uri !== undefined) this.error_uri = uri;
    if (options.status !== undefined) this.status = options.status;
    if (options.retryAfterMs !== undefined) this.retryAfterMs = options.retryAfterMs;
  }

  /** Same as `error_description`, for camelCase code. */
  get errorDescription(): string | undefined {
    return this.error_description;
  }

  /** A JSON form safe to log: code, message and the OAuth fields; never the cause's payload. */
  toJSON(): Record<string, unknown> {
    return {
      name: this.name,
      code: this.code,
      message: this.message,
      ...(this.error !== undefined && { error: this.error }),
      ...(this.error_description !== undefined && { error_description: this.error_description }),
      ...(this.error_uri !== undefined && { error_uri: this.error_uri }),
      ...(this.status !== undefined && { status: this.status }),
      ...(this.retryAfterMs !== undefined && { retryAfterMs: this.retryAfterMs }),
    };
  }
}

/** RFC 6749 §5.2's `error_uri` characters: %x21 / %x23-5B / %x5D-7E. */
const ERROR_URI = /^[\x21\x23-\x5b\x5d-\x7e]+$/;

/** A server's `error_uri`, if well-formed (see {@link TokenwardenError.error_uri}); `undefined` otherwise. */
function errorUri(value: unknown): string | undefined {
  if (typeof value !== 'string' || value.length > MAX_DESCRIPTION || !ERROR_URI.test(value)) return undefined;
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    return undefined;
  }
  if ((url.protocol !== 'https:' && url.protocol !== 'http:') || url.username !== '' || url.password !== '') {
    return undefined;
  }
  return value;
}

/**
 * True when `err` is a {@link TokenwardenError}, optionally with one of the given codes.
 *
 * @example
 * ```ts
 * if (isTokenwardenError(err, 'ERR_NETWORK', 'ERR_TIMEOUT')) retryLater();
 * ```
 */
export function isTokenwardenError(err: unknown, ...codes: ErrorCode[]): err is TokenwardenError {
  return err instanceof TokenwardenError && (codes.length === 0 || codes.includes(err.code));
}

/**
 * `error` said again in other words: the same code and OAuth fields (`error`, `error_description`, `error_uri`,
 * `status`, `retryAfterMs`), a new message, `error` as the cause. `options` override the fields it keeps.
 *
 * @example
 * ```ts
 * throw restated(err, `${err.message} (this refresh token was refused before)`);
 * ```
 */
export function restated(
  error: TokenwardenError,
  message: string,
  options: Omit<TokenwardenErrorOptions, 'cause'> = {},
): TokenwardenError {
  const { error: code, error_description, error_uri, status, retryAfterMs } = error;
  return new TokenwardenError(error.code, message, {
    cause: error,
    ...(code !== undefined && { error: code }),
    ...(error_description !== undefined && { error_description }),
    ...(error_uri !== undefined && { error_uri }),
    ...(status !== undefined && { status }),
    ...(retryAfterMs !== undefined && { retryAfterMs }),
    ...options,
  });
}

// eslint-disable-next-line no-control-regex
const CONTROLS = /[\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]+/g;

/**
 * Cuts server-provided text to `max` characters and replaces control characters — C0, DEL, C1 (`\u009b`
 * starts a terminal escape sequence), line and paragraph separators, bidirectional overrides — with spaces,
 * so that it cannot forge log lines or act on a terminal.
 */
export function truncate(text: string, max = MAX_DESCRIPTION): string {
  const clean = text.replace(CONTROLS, ' ');
  return clean.length > max ? `${clean.slice(0, max)}…` : clean;
}

/**
 * Returns an error fit to be a `cause`: when it carries a response body (oauth4webapi attaches the parsed
 * body, which may hold tokens), the body is replaced by the list of its field names.
 */
export function sanitizeCause(err: unknown): unknown {
  if (!(err instanceof Error)) return err;
  const inner: unknown = (err as { cause?: unknown }).cause;
  if (inner !== null && typeof inner === 'object' && 'body' in inner) {
    const body = (inner as { body: unknown }).body;
    const fields = body !== null && typeof body === 'object' ? Object.keys(body as object).slice(0, 20) : [];
    Object.defineProperty(err, 'cause', {
      value: { body: `[redacted response body with fields: ${fields.join(', ')}]` },
      enumerable: false,
      configurable: true,
      writable: true,
    });
  }
  return err;
}
