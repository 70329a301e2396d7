/**
 * What every HTTP integration (authenticated fetch, axios, undici) decides the same way: the headers that
 * carry a token — `Authorization`, and for a `DPoP` token a proof signed by oauth4webapi — which 401s are
 * retried with a new token, and which are a DPoP nonce challenge. One place, so a fix lands once.
 *
 * @module
 */
import * as oauth from 'oauth4webapi';
import { TokenwardenError } from '../errors.js';
import type { Token } from '../token.js';
import type { RetryOn401, TokenProvider } from './auth-fetch.js';

/**
 * The headers that send `token` with a request: `authorization: <type> <token>`, and for a `DPoP` token a
 * `dpop` proof for this method and URL (RFC 9449 §7), signed by oauth4webapi with the provider's DPoP
 * handle (and the server's last nonce). Nothing is sent.
 */
export async function authorizationHeaders(
  provider: TokenProvider,
  token: Token,
  method: string,
  url: URL,
): Promise<Record<string, string>> {
  if (token.tokenType !== 'DPoP') return { authorization: authorizationValue(token) };
  const handle = dpopHandle(provider);
  let headers: Record<string, string> | undefined;
  // oauth4webapi builds the proof as part of a request: hand it a fetch that keeps the headers and sends nothing.
  await oauth.protectedResourceRequest(token.accessToken, method.toUpperCase(), proofUrl(url), new Headers(), null, {
    DPoP: handle,
    [oauth.allowInsecureRequests]: true, // the URL is the caller's, as with any request they make
    [oauth.customFetch]: async (_url, init) => {
      headers = init.headers as Record<string, string>;
      return new Response(null, { status: 204 });
    },
  });
  const { authorization, dpop } = headers ?? {};
  if (authorization === undefined || dpop === undefined) {
    throw new TokenwardenError('ERR_UNSUPPORTED', 'the DPoP proof could not be made');
  }
  return { authorization, dpop };
}

/**
 * The `Authorization` value of a token that needs no proof: `<type> <token>`. A token exchange's `N_A` token
 * (RFC 8693 §2.2.1: not an access token — an ID token, a SAML assertion) is no credential for an API: sent, it
 * would reach the API as `Authorization: N_A …`; it is `ERR_UNSUPPORTED` instead, and the caller takes it from
 * `getToken()` to send it the way the API expects.
 */
export function authorizationValue(token: Token): string {
  if (token.tokenType.toLowerCase() === 'n_a') {
    throw new TokenwardenError(
      'ERR_UNSUPPORTED',
      'the token is not an access token (token_type N_A, from a token exchange): it is not sent as Authorization; take it from getToken() and send it as the API expects',
    );
  }
  return `${token.tokenType} ${token.accessToken}`;
}

/**
 * Remembers a resource server's `DPoP-Nonce` (RFC 9449 §9) in the provider's DPoP handle, for the next
 * proof to that origin. A no-op without a nonce or a handle.
 */
export async function rememberDpopNonce(
  provider: TokenProvider,
  url: URL,
  nonce: string | null | undefined,
): Promise<void> {
  const handle = provider.dpop;
  if (handle === undefined || !nonce) return;
  // The handle caches the nonce of any response it sees; show it one carrying this nonce.
  await oauth
    .protectedResourceRequest('-', 'GET', proofUrl(url), new Headers(), null, {
      DPoP: handle,
      [oauth.allowInsecureRequests]: true,
      [oauth.customFetch]: async () => new Response(null, { status: 204, headers: { 'dpop-nonce': nonce } }),
    })
    .catch(() => undefined);
}

/** True for a 401 that asks for a DPoP proof with a (new) server nonce: a `DPoP` challenge with `error="use_dpop_nonce"`. */
export function isDpopNonceChallenge(status: number, wwwAuthenticate: string | null | undefined): boolean {
  if (status !== 401 || !wwwAuthenticate) return false;
  return challengeErrors(wwwAuthenticate).some((c) => c.scheme === 'dpop' && c.error === 'use_dpop_nonce');
}

/** RFC 9110 §5.6.2 `token`. */
const TOKEN = /[!#$%&'*+.^_`|~0-9A-Za-z-]+/y;
/** An auth-param: token BWS "=" BWS ( token / quoted-string ), with the whitespace around it. */
const AUTH_PARAM =
  /[ \t]*([!#$%&'*+.^_`|~0-9A-Za-z-]+)[ \t]*=[ \t]*(?:"((?:[^"\\]|\\[^])*)"|([!#$%&'*+.^_`|~0-9A-Za-z-]+))[ \t]*/y;
/** A token68 ending its challenge. */
const TOKEN68 = /[ \t]*[A-Za-z0-9._~+/-]+=*[ \t]*(?=,|$)/y;

/**
 * The scheme (lower case) and `error` parameter of each challenge in a `WWW-Authenticate` value (RFC 9110
 * §11.6.1), read by its grammar: a quoted `error_description` that mentions `error="invalid_token"`, a
 * parameter named `xerror` or a value `invalid_token_type` is not an `error` of `invalid_token`. Leniently: what
 * precedes the first part that does not parse is kept (`error=invalid_token, error_description=Token expired`
 * still says `invalid_token`). The `error` value is compared without regard to case.
 */
export function challengeErrors(value: string): { scheme: string; error: string | undefined }[] {
  const found: { scheme: string; error: string | undefined }[] = [];
  const at = (re: RegExp, i: number): RegExpExecArray | null => {
    re.lastIndex = i;
    return re.exec(value);
  };
  const n = value.length;
  let i = 0;
  for (;;) {
    while (i < n && (value[i] === ',' || value[i] === ' ' || value[i] === '\t')) i++;
    const scheme = at(TOKEN, i);
    if (scheme === null) return found;
    const challenge: { scheme: string; error: string | undefined } = {
      scheme: scheme[0].toLowerCase(),
      error: undefined,
    };
    found.push(challenge);
    i = TOKEN.lastIndex;
    if (i >= n || value[i] === ',') continue;
    if (value[i] !== ' ' && value[i] !== '\t') return found;
    if (at(AUTH_PARAM, i) === null) {
      if (at(TOKEN68, i) === null) return found;
      i = TOKEN68.lastIndex;
      continue;
    }
    for (;;) {
      const param = at(AUTH_PARAM, i);
      if (param === null) return found;
      i = AUTH_PARAM.lastIndex;
      // A parameter given twice is an error (RFC 9110 §11.2): the first is kept.
      if ((param[1] as string).toLowerCase() === 'error' && challenge.error === undefined) {
        challenge.error = (param[2]?.replace(/\\([^])/g, '$1') ?? param[3] ?? '').toLowerCase();
      }
      if (i >= n) return found;
      if (value[i] !== ',') return found;
      // After the comma: another parameter of this challenge, or the next challenge.
      let j = i;
      while (j < n && (value[j] === ',' || value[j] === ' ' || value[j] === '\t')) j++;
      if (at(AUTH_PARAM, j) === null) break;
      i = j;
    }
  }
}

/**
 * The 401 rule of {@link RetryOn401}, for every integration: `'invalid_token'` when `WWW-Authenticate` says
 * `error="invalid_token"` (RFC 6750 §3.1), `'always'`, `'never'`, or your function — which receives a
 * `Response` with the status and headers (for axios and undici, without the body).
 */
export function isRetryable401(retryOn: RetryOn401, status: number, headers: Headers, response?: Response): boolean {
  if (status !== 401 || retryOn === 'never') return false;
  if (retryOn === 'always') return true;
  if (typeof retryOn === 'function') return retryOn(response ?? new Response(null, { status, headers })) === true;
  const challenge = headers.get('www-authenticate');
  return challenge !== null && challengeErrors(challenge).some((c) => c.error === 'invalid_token');
}

/**
 * Checks a `retryOn401` option (`ERR_CONFIG` otherwise) and returns it with its default.
 */
export function checkRetryOn401(value: unknown): RetryOn401 {
  if (value === undefined) return 'invalid_token';
  if (value === 'invalid_token' || value === 'always' || value === 'never' || typeof value === 'function') {
    return value as RetryOn401;
  }
  throw new TokenwardenError('ERR_CONFIG', "retryOn401 must be 'invalid_token', 'always', 'never' or a function");
}

/**
 * The `origins` option of an integration: one URL or a non-empty list of absolute http(s) URLs, as a set of
 * origins (`ERR_CONFIG` otherwise). Tokens go to these origins only.
 */
export function checkOrigins(input: unknown): Set<string> {
  const value = typeof input === 'string' || input instanceof URL ? [input] : input;
  if (!Array.isArray(value) || value.length === 0) {
    throw new TokenwardenError(
      'ERR_CONFIG',
      "origins must list the origins that get the token, e.g. ['https://api.example.com']",
    );
  }
  const origins = new Set<string>();
  for (const entry of value) {
    const origin = typeof entry === 'string' || entry instanceof URL ? originOf(entry) : undefined;
    if (origin === undefined) {
      throw new TokenwardenError('ERR_CONFIG', 'origins must be absolute http(s) URLs, e.g. https://api.example.com');
    }
    origins.add(origin);
  }
  return origins;
}

/**
 * True when a response came from another origin than the request that carried the token: the end of a
 * redirect the client followed to another origin, which never received the token (the client dropped it).
 * Such a 401 or `DPoP-Nonce` says nothing about the token or its origin: it neither invalidates the token
 * nor triggers a retry. `false` when either URL is unknown or relative.
 */
export function answeredElsewhere(sent: unknown, answered: unknown): boolean {
  const from = originOf(sent);
  const at = originOf(answered);
  return from !== undefined && at !== undefined && from !== at;
}

/** The origin of an absolute http(s) URL, or `undefined` for anything else. */
export function originOf(value: unknown): string | undefined {
  if (value === undefined || value === null) return undefined;
  try {
    const url = value instanceof URL ? value : new URL(String(value));
    return url.protocol === 'http:' || url.protocol === 'https:' ? url.origin : undefined;
  } catch {
    return undefined;
  }
}

/** The provider's DPoP handle, which a `DPoP` token needs for its proofs; `ERR_CONFIG` without one. */
export function dpopHandle(provider: TokenProvider): oauth.DPoPHandle {
  const handle = provider.dpop;
  if (handle === undefined) {
    throw new TokenwardenError(
      'ERR_CONFIG',
      'a DPoP token needs the DPoP key pair: configure dpop on the source (or on UserTokens)',
    );
  }
  return handle;
}

/** A proof names the URL without query or fragment (`htu`, RFC 9449 §4.2); oauth4webapi strips them too. */
function proofUrl(url: URL): URL {
  return new URL(`${url.origin}${url.pathname}`);
}
