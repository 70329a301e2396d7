/**
 * A token endpoint's answer as real authorization servers send it, read once and brought to the shape
 * RFC 6749 §5 describes before `oauth4webapi` judges it. What is accepted beyond the letter of the RFC is
 * what golang/oauth2 accepts, and only where no RFC forbids it and nothing is lost in safety.
 *
 * @module
 */
import * as oauth from 'oauth4webapi';
import { TokenwardenError } from '../errors.js';
import { isTokenString } from '../token.js';

/** A token endpoint answer read by {@link readTokenResponse}. */
export interface TokenAnswer {
  /** The answer to give `oauth4webapi`: the original, or a JSON copy of its normalised body. */
  readonly response: Response;
  /** The body as a JSON object (a form-encoded body converted), when it is one. */
  readonly body?: Record<string, unknown>;
  /** A problem to report once the caller has noted what it must keep from the body (a rotated refresh token). */
  readonly failure?: Error;
}

/** A JSON number of seconds as a string (`"3600"`, `"3599.5"`), as Azure AD v1 and others send `expires_in`. */
const SECONDS = /^\s*\d+(?:\.\d+)?\s*$/;

/**
 * Reads a token endpoint answer (whose body `boundedFetch` has already capped):
 *
 * - a body with a non-empty string `error` is an OAuth error whatever its status (golang/oauth2: GitHub
 *   answers `200 {"error":"bad_refresh_token"}`) or content type (`text/plain`, none): it becomes
 *   `oauth4webapi`'s `ResponseBodyError`, so it is reported, scrubbed and retried like any other — and it
 *   wins over a `WWW-Authenticate` challenge without parameters (`401` + `Basic realm=…`), whose body says more;
 * - an `application/x-www-form-urlencoded` body (what GitHub sends when `Accept: application/json` is not
 *   honoured) is read as the JSON object it encodes;
 * - a member whose value is `null` is absent (as golang/oauth2 reads it);
 * - `token_type` absent is `Bearer` (golang/oauth2; LinkedIn and Slack omit it) — except when the request
 *   carried a DPoP proof, where the server may have bound the token, so it is refused;
 * - `token_type` `DPoP` when the request carried no DPoP proof is refused: no key of this client is bound, so
 *   the token could not be sent (`Bearer` after a proof is accepted: the server did not bind it, RFC 9449 §5);
 * - a token exchange answer (`exchange`) is judged by its `issued_token_type` too (see `issuedTokenTypeFailure`);
 * - `expires_in` must be a number or a string holding one: `"3600abc"` is refused (`oauth4webapi` alone
 *   would read it as 3600);
 * - `scope` as a JSON array of scope tokens (Twitch: `["user:read:email", "chat:read"]`) is the RFC 6749 §3.3
 *   space-delimited list of the same tokens; an array holding anything else (a space, a quote, a number) is
 *   refused.
 *
 * Everything else — status, content type of a body that is not JSON, each member's type — is left to
 * `oauth4webapi`.
 */
export async function readTokenResponse(
  response: Response,
  options: { dpop: boolean; exchange?: boolean },
): Promise<TokenAnswer> {
  if (response.body === null) return { response };
  const text = await response.clone().text();
  const body = parseBody(text, mediaType(response));
  if (body === undefined) return { response };
  const error = body['error'];
  if (typeof error === 'string' && error !== '') {
    throw new oauth.ResponseBodyError('server responded with an error in the response body', {
      cause: body as unknown as oauth.OAuth2Error,
      response,
    });
  }
  if (response.status !== 200) return { response, body };
  const { fields: fixed, failure: unfit } = normaliseTokenFields(body, options);
  let failure = unfit;
  const type = fixed['token_type'];
  if (!options.dpop && typeof type === 'string' && type.toLowerCase() === 'dpop') {
    // No proof was sent, so no key was bound: such a token can be sent by no one (RFC 9449 §7 wants a proof
    // with it; RFC 6749 §7.1: a token the client cannot use as its type says is not used). Kept, it would be
    // stored and shared, and every request with it would fail until it expires.
    failure ??= new TokenwardenError(
      'ERR_INVALID_RESPONSE',
      'the token response has token_type DPoP although the request carried no DPoP proof: the token is bound to no key of this client; refused (configure dpop if the server demands DPoP)',
    );
  }
  if (options.exchange === true) failure ??= issuedTokenTypeFailure(fixed);
  const headers = new Headers(response.headers);
  headers.set('content-type', 'application/json');
  return {
    response: new Response(JSON.stringify(fixed), { status: 200, statusText: response.statusText, headers }),
    body: fixed,
    ...(failure !== undefined && { failure }),
  };
}

/**
 * The members of a successful token response brought to RFC 6749 §5.1's shape, by the rules of
 * {@link readTokenResponse}: `null` members dropped, a missing `token_type` read as `bearer` (refused after a
 * DPoP proof), `expires_in` as a numeric string made a number (any other string refused), `scope` as an array
 * of scope tokens made the space-delimited string (any other array refused). One place for
 * these rules: token endpoint answers and the responses `UserTokens.save()` is given.
 *
 * @example
 * ```ts
 * const { fields, failure } = normaliseTokenFields({ access_token: 'at', expires_in: '3600' }, { dpop: false });
 * // fields: { access_token: 'at', expires_in: 3600, token_type: 'bearer' }
 * ```
 */
export function normaliseTokenFields(
  body: Record<string, unknown>,
  options: { dpop: boolean },
): { fields: Record<string, unknown>; failure?: TokenwardenError } {
  const fields: Record<string, unknown> = {};
  for (const [name, value] of Object.entries(body)) if (value !== null) fields[name] = value;
  let failure: TokenwardenError | undefined;
  if (fields['token_type'] === undefined) {
    if (options.dpop) {
      failure = new TokenwardenError(
        'ERR_INVALID_RESPONSE',
        'the token response has no token_type although the request carried a DPoP proof: whether the token is DPoP-bound is unknown; refused',
      );
    } else {
      fields['token_type'] = 'bearer';
    }
  }
  const expiresIn = fields['expires_in'];
  if (typeof expiresIn === 'string') {
    if (SECONDS.test(expiresIn)) {
      fields['expires_in'] = Number(expiresIn);
    } else {
      failure ??= new TokenwardenError('ERR_INVALID_RESPONSE', "the token response's expires_in is not a number");
    }
  }
  const scope = fields['scope'];
  if (Array.isArray(scope)) {
    // A scope-token is `1*NQCHAR` (RFC 6749 §3.3): the characters of a token string.
    if (scope.every((token) => typeof token === 'string' && isTokenString(token))) {
      fields['scope'] = scope.join(' ');
    } else {
      failure ??= new TokenwardenError(
        'ERR_INVALID_RESPONSE',
        "the token response's scope is an array holding something other than scope tokens",
      );
    }
  }
  return failure === undefined ? { fields } : { fields, failure };
}

/** An absolute URI (RFC 8693 §3: token type identifiers are URIs) of printable ASCII but space, `"` and `\`. */
const TOKEN_TYPE_URI = /^[A-Za-z][A-Za-z0-9+.-]*:[\x21\x23-\x5B\x5D-\x7E]+$/;

/**
 * RFC 8693 §2.2.1's `issued_token_type` of a token exchange answer: when present, a URI (anything else —
 * a number, an object, control characters — is refused, as any other malformed member); when absent, accepted
 * if `token_type` says how to send the token (`Bearer`, `DPoP`: an access token, all a client needs — as
 * oauth4webapi, google-auth-library's STS client and golang/oauth2's accept it), refused with `N_A`, which says
 * only that it is not an access token: without `issued_token_type` nothing says what it is.
 */
function issuedTokenTypeFailure(fields: Record<string, unknown>): TokenwardenError | undefined {
  const issued = fields['issued_token_type'];
  if (issued === undefined) {
    const type = fields['token_type'];
    if (typeof type === 'string' && type.toLowerCase() === 'n_a') {
      return new TokenwardenError(
        'ERR_INVALID_RESPONSE',
        'the token exchange response has token_type N_A (not an access token) and no issued_token_type (RFC 8693 §2.2.1 requires it): what was issued is unknown; refused',
      );
    }
    return undefined;
  }
  if (typeof issued !== 'string' || !TOKEN_TYPE_URI.test(issued)) {
    return new TokenwardenError(
      'ERR_INVALID_RESPONSE',
      "the token exchange response's issued_token_type is not a URI (RFC 8693 §3); refused",
    );
  }
  return undefined;
}

/** The media type of a response, lower-case, without parameters. */
function mediaType(response: Response): string {
  return (response.headers.get('content-type') ?? '').split(';')[0]!.trim().toLowerCase();
}

/** The body as a JSON object: JSON whatever the content type, or a form-encoded body's fields. */
function parseBody(text: string, type: string): Record<string, unknown> | undefined {
  if (type === 'application/x-www-form-urlencoded') {
    const fields: Record<string, unknown> = {};
    for (const [name, value] of new URLSearchParams(text)) if (!(name in fields)) fields[name] = value;
    return fields;
  }
  try {
    // Response.text() has already dropped a UTF-8 byte order mark (the Fetch standard's UTF-8 decode).
    const data: unknown = JSON.parse(text);
    return data !== null && typeof data === 'object' && !Array.isArray(data)
      ? (data as Record<string, unknown>)
      : undefined;
  } catch {
    return undefined;
  }
}
