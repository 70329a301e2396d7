/**
 * Verification failures and how they are answered over HTTP (RFC 6750 §3): the one place that turns a
 * {@link VerifyFailure} into a status, a `WWW-Authenticate` challenge and a JSON body. Every framework
 * adapter calls {@link failureResponse}; none formats a challenge of its own.
 *
 * @module
 */

/**
 * Why a request was refused.
 *
 * | error | status | when |
 * | --- | --- | --- |
 * | `missing_token` | 401 | no bearer token in the request (the challenge then carries no `error`, RFC 6750 §3.1) |
 * | `invalid_request` | 400 | malformed `Authorization` header, or a token sent in more than one place |
 * | `invalid_token` | 401 | the token is malformed, expired, not yet valid, badly signed, inactive, for another audience… |
 * | `insufficient_scope` | 403 | the token is valid but lacks a required scope, or the claim check refused it |
 * | `temporarily_unavailable` | 503 | the token could not be checked: the authorization server, its JWKS or its introspection endpoint is unreachable, slow or broken |
 *
 * `temporarily_unavailable` is the OAuth 2.0 error code for "try again later" (RFC 6749 §4.1.2.1); it is
 * never cached and never means the token is bad, so clients must not discard their token on it.
 *
 * @example
 * ```ts
 * const result = await verify(req);
 * if (!result.ok && result.failure.error === 'missing_token') return serveAnonymous();
 * ```
 */
export type VerifyErrorCode =
  'missing_token' | 'invalid_request' | 'invalid_token' | 'insufficient_scope' | 'temporarily_unavailable';

/**
 * A refused verification. `description` is a short fixed string: never a token, a secret or text from
 * the network.
 *
 * @example
 * ```ts
 * const result = await verify(req);
 * if (!result.ok && result.failure.status === 503) console.warn('authorization server unreachable');
 * ```
 */
export interface VerifyFailure {
  readonly error: VerifyErrorCode;
  readonly description: string;
  readonly status: 400 | 401 | 403 | 503;
  /** For `insufficient_scope`: the scope(s) the request needs, space-separated. */
  readonly scope?: string;
}

const STATUS: Record<VerifyErrorCode, VerifyFailure['status']> = {
  missing_token: 401,
  invalid_request: 400,
  invalid_token: 401,
  insufficient_scope: 403,
  temporarily_unavailable: 503,
};

/**
 * Builds a {@link VerifyFailure} with the status that belongs to `error`. Descriptions are reduced to the
 * characters RFC 6750 allows in `error_description` and to 128 characters.
 *
 * @example
 * ```ts
 * failure('invalid_token', 'token expired'); // { error: 'invalid_token', description: 'token expired', status: 401 }
 * ```
 */
export function failure(error: VerifyErrorCode, description: string, scope?: string): VerifyFailure {
  const result: { -readonly [K in keyof VerifyFailure]: VerifyFailure[K] } = {
    error,
    description: safeText(description),
    status: STATUS[error],
  };
  if (scope !== undefined && scope !== '') result.scope = safeText(scope);
  return result;
}

/**
 * What an adapter sends for a failure: status, headers and a JSON body.
 *
 * @example
 * ```ts
 * const { status, headers, body }: FailureResponse = failureResponse(result.failure);
 * return new Response(JSON.stringify(body), { status, headers });
 * ```
 */
export interface FailureResponse {
  status: number;
  headers: Record<string, string>;
  body: { error: VerifyErrorCode; error_description: string; scope?: string };
}

/**
 * Options for {@link failureResponse} and {@link challenge}.
 *
 * @example
 * ```ts
 * challenge(result.failure, { realm: 'orders' }); // 'Bearer realm="orders", error="invalid_token", …'
 * ```
 */
export interface ChallengeOptions {
  /** The `realm` of the challenge. Default `'api'`. */
  realm?: string;
}

/**
 * The `WWW-Authenticate` value for a failure (RFC 6750 §3): `Bearer realm="api"` when no token was sent,
 * `Bearer realm="api", error="invalid_token", error_description="token expired"` for a bad one, and
 * `scope="…"` added for `insufficient_scope`. Returns `undefined` for `temporarily_unavailable`, which is
 * not a challenge.
 *
 * @example
 * ```ts
 * challenge(failure('insufficient_scope', 'insufficient scope', 'write'));
 * // 'Bearer realm="api", error="insufficient_scope", error_description="insufficient scope", scope="write"'
 * ```
 */
export function challenge(result: VerifyFailure, options: ChallengeOptions = {}): string | undefined {
  if (result.error === 'temporarily_unavailable') return undefined;
  const parts = [`realm="${safeText(options.realm ?? 'api')}"`];
  if (result.error !== 'missing_token') {
    parts.push(`error="${result.error}"`, `error_description="${safeText(result.description)}"`);
    if (result.scope !== undefined) parts.push(`scope="${safeText(result.scope)}"`);
  }
  return `Bearer ${parts.join(', ')}`;
}

/**
 * Status, headers and JSON body for a failure: what every adapter sends. `Cache-Control: no-store` is
 * always set; `WWW-Authenticate` for 400/401/403; `Retry-After` for 503.
 *
 * @example
 * ```ts
 * const { status, headers, body } = failureResponse(result.failure, { realm: 'orders' });
 * res.writeHead(status, { ...headers, 'content-type': 'application/json' }).end(JSON.stringify(body));
 * ```
 */
export function failureResponse(result: VerifyFailure, options: ChallengeOptions = {}): FailureResponse {
  const headers: Record<string, string> = { 'cache-control': 'no-store' };
  const value = challenge(result, options);
  if (value !== undefined) headers['www-authenticate'] = value;
  else headers['retry-after'] = '5';
  return {
    status: result.status,
    headers,
    body: {
      error: result.error,
      error_description: result.description,
      ...(result.scope !== undefined && { scope: result.scope }),
    },
  };
}

/** RFC 6750 §3: error_description and scope use %x20-21 / %x23-5B / %x5D-7E (no `"`, no `\`). */
function safeText(text: string): string {
  const clean = text.replace(/[^\x20\x21\x23-\x5b\x5d-\x7e]/g, '');
  return clean.length > 128 ? clean.slice(0, 128) : clean;
}
