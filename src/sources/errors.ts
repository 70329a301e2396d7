/**
 * Maps what `oauth4webapi` and `fetch` throw to {@link TokenwardenError}s with stable codes — and is the one
 * place where text from an authorization server is scrubbed of the credentials the client sent.
 *
 * @module
 */
import * as oauth from 'oauth4webapi';
import { type ErrorCode, TokenwardenError, sanitizeCause, truncate } from '../errors.js';
import { Redactor, redactUrlCredentials } from '../redact.js';

/** The secrets sent with the request that produced a response (see {@link rememberSecrets}). */
const sentWith = new WeakMap<object, Redactor>();

/**
 * Records which secrets went out with the request that produced `response` (or that failed with an
 * error), so that {@link toTokenwardenError} scrubs them out of whatever the server answered — also for
 * callers that did not pass a {@link Redactor} themselves.
 *
 * @example
 * ```ts
 * const response = await fetch(url, init);
 * rememberSecrets(response, client.redactor([refreshToken]));
 * ```
 */
export function rememberSecrets(target: object, redactor: Redactor): void {
  if (!redactor.isEmpty) sentWith.set(target, (sentWith.get(target) ?? Redactor.none).with(redactor));
}

/** The secrets remembered for `err`, its response, or its cause (a Response). */
function rememberedFor(err: unknown): Redactor {
  let found = Redactor.none;
  const candidates = [err, (err as { response?: unknown })?.response, (err as { cause?: unknown })?.cause];
  for (const c of candidates) {
    if (c !== null && typeof c === 'object') {
      const r = sentWith.get(c);
      if (r !== undefined) found = found.with(r);
    }
  }
  return found;
}

/**
 * Converts any error thrown while talking to an authorization server into a {@link TokenwardenError}.
 * `what` names the operation for the message ("token request", "discovery", …); `metadataCode` is used
 * for metadata problems (missing endpoints, issuer mismatch).
 *
 * Everything the server said (`error`, `error_description`, `WWW-Authenticate` parameters, field names,
 * headers) is scrubbed of every secret `redactor` knows — and of those remembered for the response (see
 * {@link rememberSecrets}) — in every form (raw, form- and percent-encoded, Basic), and of passwords in
 * URLs, before it reaches the message, `error_description`, `toJSON()`, `util.inspect()` or the cause.
 *
 * @example
 * ```ts
 * try {
 *   await oauth.processRevocationResponse(response);
 * } catch (err) {
 *   throw toTokenwardenError(err, 'revocation', 'ERR_DISCOVERY', undefined, client.redactor([token]));
 * }
 * ```
 */
export function toTokenwardenError(
  err: unknown,
  what: string,
  metadataCode: ErrorCode = 'ERR_DISCOVERY',
  retryAfterMs?: number,
  redactor: Redactor = Redactor.none,
): TokenwardenError {
  const r = redactor.with(rememberedFor(err));
  // Server text: secrets out, then control characters and length, then secrets out again (removing control
  // characters may join a secret's parts; secrets go before the cut, so a cut cannot leave half of one).
  const text = (value: string, max?: number): string => r.redact(truncate(redactUrlCredentials(r.redact(value)), max));
  if (err instanceof TokenwardenError) return rebuildIfLeaking(err, r);
  const retry = retryAfterMs === undefined ? {} : { retryAfterMs };
  if (err instanceof oauth.ResponseBodyError) {
    const error = text(String(err.error), 64);
    const description = typeof err.error_description === 'string' ? text(err.error_description) : undefined;
    // The parsed body stays as a summary: the OAuth fields (scrubbed) and the names of the others.
    const body: unknown = err.cause;
    const uri = uriOf((body as { error_uri?: unknown } | null)?.error_uri, r);
    Object.assign(err, { error, error_description: description });
    Object.defineProperty(err, 'cause', {
      value: {
        error,
        ...(description !== undefined && { error_description: description }),
        fields:
          body !== null && typeof body === 'object'
            ? Object.keys(body)
                .slice(0, 20)
                .map((k) => text(k, 64))
            : [],
      },
      enumerable: true,
      configurable: true,
      writable: true,
    });
    return new TokenwardenError(
      'ERR_OAUTH',
      `${what} failed: the server answered ${err.status} ${error}${description ? ` (${description})` : ''}`,
      {
        cause: scrub(err, r),
        error,
        ...(description !== undefined && { error_description: description }),
        ...(uri !== undefined && { error_uri: uri }),
        status: err.status,
        ...retry,
      },
    );
  }
  if (err instanceof oauth.WWWAuthenticateChallengeError) {
    const params = err.cause[0]?.parameters ?? {};
    const error = text(params.error ?? 'invalid_client', 64);
    const description = params.error_description === undefined ? undefined : text(params.error_description);
    const uri = uriOf(params.error_uri, r);
    return new TokenwardenError('ERR_OAUTH', `${what} failed: the server answered ${err.status} ${error}`, {
      cause: scrub(err, r),
      error,
      ...(description !== undefined && { error_description: description }),
      ...(uri !== undefined && { error_uri: uri }),
      status: err.status,
      ...retry,
    });
  }
  if (err instanceof oauth.UnsupportedOperationError) {
    return new TokenwardenError('ERR_UNSUPPORTED', `${what} failed: ${text(err.message)}`, {
      cause: scrub(sanitizeCause(err), r),
    });
  }
  if (err instanceof oauth.OperationProcessingError) {
    const cause = err.cause;
    switch (err.code) {
      case oauth.RESPONSE_IS_NOT_JSON:
      case oauth.RESPONSE_IS_NOT_CONFORM: {
        const status = cause instanceof Response ? cause.status : undefined;
        // A 4xx that is not JSON (a gateway's HTML 401, a text/plain 429) is a status without an OAuth body,
        // like a 5xx page; only a 200 that is not JSON is a malformed answer.
        if (err.code === oauth.RESPONSE_IS_NOT_JSON && (status === undefined || status === 200)) break;
        return new TokenwardenError('ERR_HTTP_STATUS', `${what} failed: ${statusWithoutBody(cause, text)}`, {
          cause: scrub(sanitizeResponseCause(err), r),
          ...(status !== undefined && { status }),
          ...retry,
        });
      }
      case oauth.HTTP_REQUEST_FORBIDDEN:
      case oauth.REQUEST_PROTOCOL_FORBIDDEN:
        return new TokenwardenError(
          'ERR_INSECURE_ISSUER',
          `${what} refused: only https: URLs are allowed (http: too with allowInsecureRequests: true, for local development)`,
          { cause: scrub(sanitizeResponseCause(err), r) },
        );
      case oauth.MISSING_SERVER_METADATA:
      case oauth.INVALID_SERVER_METADATA:
        return new TokenwardenError(metadataCode, `${what} failed: ${text(err.message)}`, {
          cause: scrub(sanitizeCause(err), r),
        });
      case oauth.JSON_ATTRIBUTE_COMPARISON:
        if (what === 'discovery') {
          const named = (cause as { body?: { issuer?: unknown } } | undefined)?.body?.issuer;
          return new TokenwardenError('ERR_DISCOVERY', `discovery failed: ${issuerNamed(named, text)}`, {
            cause: scrub(sanitizeCause(err), r),
          });
        }
        break;
      default:
        break;
    }
    return new TokenwardenError('ERR_INVALID_RESPONSE', `${what} failed: ${text(err.message)}`, {
      cause: scrub(sanitizeResponseCause(err), r),
      ...retry,
    });
  }
  if (err instanceof RangeError) {
    // JSON.parse of an answer nested deeper than the stack (V8 gives up with a RangeError): the answer is at
    // fault, not the network.
    return new TokenwardenError('ERR_INVALID_RESPONSE', `${what} failed: the answer is JSON nested too deeply`, {
      cause: scrub(err, r),
      ...retry,
    });
  }
  if (err instanceof TypeError && typeof (err as { code?: unknown }).code === 'string') {
    // oauth4webapi's argument checks (CodedTypeError): a configuration problem.
    return new TokenwardenError('ERR_CONFIG', `${what} failed: ${text(err.message)}`, { cause: scrub(err, r) });
  }
  return new TokenwardenError('ERR_NETWORK', `${what} failed: ${text(String((err as Error)?.message ?? err))}`, {
    cause: scrub(err, r),
  });
}

/**
 * Why discovery refused the metadata's `issuer`: the value it names (bounded), and for a multi-tenant endpoint —
 * Microsoft Entra ID's `common` or `organizations`, whose metadata names `…/{tenantid}/v2.0` — what to do.
 */
function issuerNamed(named: unknown, text: (value: string, max?: number) => string): string {
  if (typeof named !== 'string') return 'the metadata names a different issuer than the one configured';
  const said = `the metadata names its issuer ${JSON.stringify(text(named, 256))}, not the one configured`;
  if (!/\{tenant(?:id)?\}/i.test(named)) return said;
  return (
    `${said}: a multi-tenant endpoint (Microsoft Entra ID's common or organizations), whose tokens each carry ` +
    "their tenant's issuer. Name the tenant in issuer; or, for a client, set tokenEndpoint; for a resource server, " +
    'set issuer to a function of iss that accepts your tenants, with jwksUri'
  );
}

/**
 * Scrubs a cause: the Response it references is dropped, every string in it (own properties, nested
 * objects, its own cause) loses the secrets, and passwords in URLs.
 */
/**
 * A server's `error_uri`, unless it holds a secret (a server echoing the request into it): a URL is not cut
 * or masked into something else, so one that would need it is dropped (the constructor checks the rest).
 */
function uriOf(value: unknown, r: Redactor): string | undefined {
  return typeof value === 'string' && !r.contains(value) && redactUrlCredentials(value) === value ? value : undefined;
}

function scrub(err: unknown, r: Redactor): unknown {
  if (!(err instanceof Error)) return r.redactValue(err);
  if ((err as { response?: unknown }).response !== undefined) {
    // Keep the error (for its stack and OAuth fields) but not the Response object it references.
    Object.defineProperty(err, 'response', { value: undefined, enumerable: false, configurable: true });
  }
  r.redactError(err);
  scrubUrls(err, 0);
  return err;
}

/** Passwords in URLs out of an error's message, stack and cause chain (they may come from `fetch`). */
function scrubUrls(err: unknown, depth: number): void {
  if (!(err instanceof Error) || depth > 5) return;
  for (const name of ['message', 'stack'] as const) {
    const value = err[name];
    if (typeof value === 'string' && redactUrlCredentials(value) !== value) {
      Object.defineProperty(err, name, { value: redactUrlCredentials(value), writable: true, configurable: true });
    }
  }
  scrubUrls((err as { cause?: unknown }).cause, depth + 1);
}

/** A TokenwardenError that passed through: rebuilt with its texts scrubbed when they hold a secret. */
function rebuildIfLeaking(err: TokenwardenError, r: Redactor): TokenwardenError {
  if (r.isEmpty) return err;
  const texts = [err.message, err.error ?? '', err.error_description ?? '', err.error_uri ?? ''];
  if (err.cause !== undefined) scrub(err.cause, r);
  if (!texts.some((t) => r.contains(t))) return err;
  const rebuilt = new TokenwardenError(err.code, r.redact(err.message), {
    cause: err.cause,
    ...(err.error !== undefined && { error: r.redact(err.error) }),
    ...(err.error_description !== undefined && { error_description: r.redact(err.error_description) }),
    ...(err.error_uri !== undefined && !r.contains(err.error_uri) && { error_uri: err.error_uri }),
    ...(err.status !== undefined && { status: err.status }),
    ...(err.retryAfterMs !== undefined && { retryAfterMs: err.retryAfterMs }),
  });
  return rebuilt;
}

function sanitizeResponseCause(err: Error): unknown {
  const cause = (err as { cause?: unknown }).cause;
  if (cause instanceof Response) {
    Object.defineProperty(err, 'cause', {
      value: { status: cause.status, contentType: cause.headers.get('content-type') },
      enumerable: false,
      configurable: true,
    });
    return err;
  }
  return sanitizeCause(err);
}

/**
 * Whether `err` is the authorization server refusing a refresh token for good (expired, revoked, already
 * spent): `invalid_grant` (RFC 6749 §5.2), or GitHub's `bad_refresh_token` (its answer, with status 200, for an
 * expired or used one). Trying that refresh token again cannot succeed.
 *
 * @example
 * ```ts
 * if (isRefreshTokenRejected(err)) return fallback.fetchToken({ signal });
 * ```
 */
export function isRefreshTokenRejected(err: unknown): err is TokenwardenError {
  return (
    err instanceof TokenwardenError &&
    err.code === 'ERR_OAUTH' &&
    (err.error === 'invalid_grant' || err.error === 'bad_refresh_token')
  );
}

/**
 * What an answer with a status and no OAuth body says, in words: where a redirect points (never followed), or
 * the status. `text` scrubs what the server chose.
 *
 * @example
 * ```ts
 * statusWithoutBody(response, (t) => redactor.redact(t)); // 'the server redirected (301) to https://as.example/o/token/, …'
 * ```
 */
export function statusWithoutBody(response: unknown, text: (value: string, max?: number) => string): string {
  const status = response instanceof Response ? response.status : undefined;
  const redirect = status !== undefined && status >= 300 && status < 400 ? redirectTarget(response, text) : undefined;
  if (redirect !== undefined) {
    return `the server redirected (${status}) to ${redirect}, which is not followed (a request with credentials is not sent on elsewhere): configure that address if it is the endpoint`;
  }
  return `unexpected HTTP status${status === undefined ? '' : ` ${status}`} without an OAuth error body`;
}

/**
 * Where a redirect answer points, as an address to show: an absolute `http:`/`https:` URL's origin and path
 * only (no query, fragment or user info), scrubbed; undefined when there is none or it is not such a URL.
 *
 * @example
 * ```ts
 * const target = redirectTarget(response, (text) => redactor.redact(text)); // 'https://as.example/o/token/'
 * ```
 */
export function redirectTarget(response: unknown, text: (value: string, max?: number) => string): string | undefined {
  if (!(response instanceof Response)) return undefined;
  const location = response.headers.get('location');
  if (location === null || location.trim() === '') return undefined;
  try {
    const url = new URL(location, response.url === '' ? undefined : response.url);
    if (url.protocol !== 'https:' && url.protocol !== 'http:') return undefined;
    return text(`${url.origin}${url.pathname}`, 200);
  } catch {
    return undefined;
  }
}
