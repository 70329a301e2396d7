/**
 * Verification failures and how they are answered over HTTP (RFC 6750 §3, RFC 9449 §7.1): the one place
 * that turns a {@link VerifyFailure} into a status, a `WWW-Authenticate` challenge and a JSON body. Every
 * framework adapter calls {@link failureResponse}; none formats a challenge of its own.
 *
 * @module
 */

/**
 * Why a request was refused.
 *
 * | error | status | when |
 * | --- | --- | --- |
 * | `missing_token` | 401 | no token in the request, or one with a scheme the verifier does not take (the challenge then carries no `error`, RFC 6750 §3.1) |
 * | `invalid_request` | 400 | malformed `Authorization` header, an empty `access_token` parameter (query or form body), or a token sent in more than one place |
 * | `invalid_token` | 401 | the token is malformed, expired, not yet valid, badly signed, inactive, for another audience, bound to a key (`cnf`) but presented as `Bearer`, or not bound to the key of its DPoP proof… |
 * | `invalid_dpop_proof` | 401 | a `DPoP` token without its proof, or with a bad one: signature, `typ`, `alg`, key, `htm`, `htu`, `iat`, `ath`, a replayed `jti` (RFC 9449 §7.1) |
 * | `use_dpop_nonce` | 401 | the verifier wants a server nonce in the proof; the answer carries it in `DPoP-Nonce` (RFC 9449 §9) |
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
  | 'missing_token'
  | 'invalid_request'
  | 'invalid_token'
  | 'invalid_dpop_proof'
  | 'use_dpop_nonce'
  | 'insufficient_scope'
  | 'temporarily_unavailable';

/**
 * What a challenge says about DPoP (RFC 9449 §7.1): the proof algorithms the verifier accepts (`algs`),
 * whether it refuses bearer tokens, and the server nonce to send in `DPoP-Nonce`. The verifier attaches
 * it to failures whose challenge mentions DPoP.
 *
 * @example
 * ```ts
 * const dpop: DPoPChallenge = { algs: ['ES256', 'EdDSA'], required: true };
 * challenge({ ...failure('missing_token', 'DPoP token required'), dpop }); // 'DPoP realm="api", algs="ES256 EdDSA"'
 * ```
 */
export interface DPoPChallenge {
  readonly algs: readonly string[];
  /** Bearer tokens are refused: challenges name only `DPoP`. */
  readonly required?: boolean;
  /** The nonce the client must put in its next proofs, sent as `DPoP-Nonce`. */
  readonly nonce?: string;
}

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
  /** `'DPoP'` when the token came with the DPoP scheme: the challenge answers in that scheme. */
  readonly scheme?: 'Bearer' | 'DPoP';
  /** The verifier's DPoP support, when the challenge should mention it. */
  readonly dpop?: DPoPChallenge;
  /**
   * For `temporarily_unavailable`: seconds until the verifier next tries the authorization server (its
   * backoff), sent as `Retry-After`. Default 5.
   */
  readonly retryAfter?: number;
}

const STATUS: Record<VerifyErrorCode, VerifyFailure['status']> = {
  missing_token: 401,
  invalid_request: 400,
  invalid_token: 401,
  invalid_dpop_proof: 401,
  use_dpop_nonce: 401,
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
  const scopes = scope === undefined ? '' : safeScope(scope);
  if (scopes !== '') result.scope = scopes;
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
  /**
   * The URL of the resource's metadata document (RFC 9728 §5.1), added as `resource_metadata="…"` to every
   * challenge. `bearerAuth({ protectedResource })` sets it from the configured resource.
   */
  resourceMetadata?: string;
}

/**
 * The `WWW-Authenticate` value for a failure (RFC 6750 §3, RFC 9449 §7.1): `Bearer realm="api"` when no
 * token was sent, `Bearer realm="api", error="invalid_token", error_description="token expired"` for a bad
 * one, and `scope="…"` added for `insufficient_scope`. A failure of a token presented with `DPoP` is
 * answered in that scheme, with the accepted proof algorithms: `DPoP realm="api", error="invalid_dpop_proof",
 * error_description="…", algs="ES256 …"`. When the verifier is configured with a `dpop` option, a request
 * without a token is offered both schemes, `Bearer realm="api", DPoP realm="api", algs="…"` (only `DPoP` when
 * it is required). With `resourceMetadata`, each challenge ends with `resource_metadata="…"` (RFC 9728 §5.1).
 * Returns `undefined` for `temporarily_unavailable`, which is not a challenge.
 *
 * @example
 * ```ts
 * challenge(failure('insufficient_scope', 'insufficient scope', 'write'));
 * // 'Bearer realm="api", error="insufficient_scope", error_description="insufficient scope", scope="write"'
 * ```
 */
export function challenge(result: VerifyFailure, options: ChallengeOptions = {}): string | undefined {
  if (result.error === 'temporarily_unavailable') return undefined;
  const realm = `realm="${safeText(options.realm ?? 'api')}"`;
  const dpop = result.dpop;
  const algs = dpop === undefined ? [] : [`algs="${safeText(dpop.algs.join(' '))}"`];
  const metadata =
    options.resourceMetadata === undefined ? [] : [`resource_metadata="${safeUrl(options.resourceMetadata)}"`];
  if (result.error === 'missing_token') {
    // A scope here tells the client what to ask for (RFC 6750 §3; MCP's scope guidance).
    const scope = scopeParam(result.scope);
    const bearer = `Bearer ${[realm, ...scope, ...metadata].join(', ')}`;
    if (dpop === undefined)
      return result.scheme === 'DPoP' ? `DPoP ${[realm, ...scope, ...metadata].join(', ')}` : bearer;
    const offer = `DPoP ${[realm, ...algs, ...metadata].join(', ')}`;
    return dpop.required === true ? offer : `${bearer}, ${offer}`;
  }
  const parts = [realm, `error="${result.error}"`, `error_description="${safeText(result.description)}"`];
  parts.push(...scopeParam(result.scope));
  if (result.scheme === 'DPoP') return `DPoP ${[...parts, ...algs, ...metadata].join(', ')}`;
  const bearer = `Bearer ${[...parts, ...metadata].join(', ')}`;
  // A Bearer refusal that offers DPoP (a DPoP-bound token presented as Bearer): the scheme to use instead.
  return dpop === undefined ? bearer : `${bearer}, DPoP ${[realm, ...algs, ...metadata].join(', ')}`;
}

/**
 * Status, headers and JSON body for a failure: what every adapter sends. `Cache-Control: no-store` is
 * always set; `WWW-Authenticate` for 400/401/403; `Retry-After` for 503 (the failure's `retryAfter`, the time
 * until the verifier tries the authorization server again; 5 s when unknown); `DPoP-Nonce` when the failure
 * carries a server nonce (`use_dpop_nonce`).
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
  else headers['retry-after'] = String(retryAfterSeconds(result.retryAfter));
  if (result.dpop?.nonce !== undefined) headers['dpop-nonce'] = result.dpop.nonce;
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

/** A whole number of seconds from 1 to an hour; 5 when unknown. */
function retryAfterSeconds(value: number | undefined): number {
  if (typeof value !== 'number' || !Number.isFinite(value)) return 5;
  return Math.min(3600, Math.max(1, Math.ceil(value)));
}

/** A URL inside a quoted-string: only the characters RFC 6750 allows in its values, never truncated. */
function safeUrl(url: string): string {
  return url.replace(/[^\x21\x23-\x5b\x5d-\x7e]/g, '');
}

/** RFC 6749 §3.3 `scope-token`. */
const SCOPE_TOKEN = /^[\x21\x23-\x5b\x5d-\x7e]+$/;

/**
 * Whether `value` is one RFC 6749 §3.3 `scope-token` (`1*NQCHAR`: printable ASCII but `"` and `\`, no space):
 * the one check of a scope name, for the configuration (route scopes, `scopes_supported`) and the answers.
 *
 * @internal
 */
export function isScopeToken(value: unknown): value is string {
  return typeof value === 'string' && SCOPE_TOKEN.test(value);
}

/** The `scope="…"` auth-param of a challenge, when there is a scope to name. */
function scopeParam(scope: string | undefined): string[] {
  const scopes = scope === undefined ? '' : safeScope(scope);
  return scopes === '' ? [] : [`scope="${scopes}"`];
}

/**
 * RFC 6750 §3 (RFC 6749 §3.3): scope tokens of `1*NQCHAR`, separated by spaces. Never truncated — scopes come
 * from the route's configuration, not the network, and a list cut short would name a scope that does not exist
 * (`api://…/Orders.Wr`), which a client (an MCP client asks for the challenge's `scope`) would then request —
 * and a token outside that syntax is left out rather than altered into another scope's name.
 */
function safeScope(scope: string): string {
  return scope.split(' ').filter(isScopeToken).join(' ');
}

/** RFC 6750 §3: error_description uses %x20-21 / %x23-5B / %x5D-7E (no `"`, no `\`). */
function safeText(text: string): string {
  const clean = text.replace(/[^\x20\x21\x23-\x5b\x5d-\x7e]/g, '');
  return clean.length > 128 ? clean.slice(0, 128) : clean;
}
