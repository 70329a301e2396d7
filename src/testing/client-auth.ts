/**
 * Client authentication at the test authorization server's endpoints (RFC 6749 §2.3): `client_secret_basic`
 * (credentials form-encoded before Base64, §2.3.1), `client_secret_post`, `client_secret_jwt` (RFC 7523 §2.2
 * with the client secret as HMAC key) and `private_key_jwt` (the client's registered public keys); an
 * assertion is good for one use (`jti`). Exactly one method per request.
 *
 * @module
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { type JWK, createLocalJWKSet, decodeJwt, decodeProtectedHeader, jwtVerify } from 'jose';
import { ReplayCache } from '../server/dpop.js';
import { ASYMMETRIC_ALGORITHMS } from '../server/jwt.js';

/** A client registered at the test authorization server: a secret, and public keys for `private_key_jwt`. */
export interface RegisteredClient {
  readonly clientId: string;
  readonly clientSecret: string;
  readonly keys: ReturnType<typeof createLocalJWKSet> | undefined;
  readonly grantTypes: ReadonlySet<string>;
}

/** The public keys of a `private_key_jwt` client, checked: asymmetric, no private part. */
export function clientKeys(jwks: readonly JWK[]): ReturnType<typeof createLocalJWKSet> {
  const keys = jwks.map((jwk) => {
    const { d: _d, p: _p, q: _q, dp: _dp, dq: _dq, qi: _qi, k: _k, ...pub } = jwk;
    return pub;
  });
  return createLocalJWKSet({ keys });
}

/** An OAuth error answer (RFC 6749 §5.2). */
export interface OAuthError {
  readonly status: number;
  readonly error: string;
  readonly description: string;
  readonly headers?: Readonly<Record<string, string>>;
}

/** Builds an {@link OAuthError}. */
export function oauthError(status: number, error: string, description: string): OAuthError {
  return { status, error, description };
}

const JWT_BEARER_ASSERTION = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer';
const BASIC_CHALLENGE = { 'www-authenticate': 'Basic realm="test-authorization-server"' };
const B64 = /^[A-Za-z0-9+/]+={0,2}$/;

function invalidClient(description: string): OAuthError {
  // A 401 always carries a challenge (RFC 9110 §15.5.2); Basic is the scheme clients may retry with.
  return { status: 401, error: 'invalid_client', description, headers: BASIC_CHALLENGE };
}

function sameSecret(given: string, expected: string): boolean {
  const a = createHash('sha256').update(given).digest();
  const b = createHash('sha256').update(expected).digest();
  return timingSafeEqual(a, b);
}

/** `application/x-www-form-urlencoded` decoding of one Basic credential part (RFC 6749 §2.3.1). */
function formDecode(part: string): string | undefined {
  try {
    return decodeURIComponent(part.replace(/\+/g, ' '));
  } catch {
    return undefined;
  }
}

/** The HMAC algorithms of `client_secret_jwt` assertions. */
const HMAC_ALGORITHMS = ['HS256', 'HS384', 'HS512'];

/**
 * The algorithms a client assertion may be signed with: HMAC with the secret (`client_secret_jwt`), or an
 * asymmetric key (`private_key_jwt`). The metadata's `*_auth_signing_alg_values_supported` lists exactly these,
 * so what the server advertises is what it enforces.
 */
export const ASSERTION_ALGORITHMS: readonly string[] = [...HMAC_ALGORITHMS, ...ASYMMETRIC_ALGORITHMS];

/** What {@link ClientAuthenticator} needs to know about the server. */
export interface ClientAuthContext {
  readonly clients: ReadonlyMap<string, RegisteredClient>;
  /** The issuer identifier: a client assertion's `aud` may name it at every endpoint. */
  readonly issuer: string;
  /** The token endpoint's URL: a client assertion's `aud` may name it at every endpoint. */
  readonly tokenEndpoint: string;
  now(): number;
}

/** Authenticates the client of one request; remembers assertion ids until they expire. */
export class ClientAuthenticator {
  readonly #context: ClientAuthContext;
  readonly #seenAssertions = new ReplayCache(100_000);

  constructor(context: ClientAuthContext) {
    this.#context = context;
  }

  /**
   * `endpoint` is the URL of the endpoint the request came to: besides the issuer and the token endpoint, the
   * only other value a client assertion's `aud` may name there (as oidc-provider accepts; an assertion meant
   * for another endpoint is refused, RFC 7523 §3 item 3).
   */
  async authenticate(
    authorization: string | undefined,
    params: URLSearchParams,
    endpoint: string,
  ): Promise<{ client: RegisteredClient } | { error: OAuthError }> {
    const basic = authorization !== undefined && /^basic /i.test(authorization.trimStart());
    const post = params.has('client_secret');
    const jwt = params.has('client_assertion') || params.has('client_assertion_type');
    if (Number(basic) + Number(post) + Number(jwt) > 1) {
      return { error: oauthError(400, 'invalid_request', 'more than one client authentication method') };
    }
    // RFC 6749 §3.1: a parameter sent without a value is treated as omitted.
    const named = params.get('client_id') || undefined;
    if (basic) return this.#basic(authorization as string, named);
    if (post) return this.#secret(named, params.get('client_secret') as string);
    if (jwt) return this.#assertion(params, named, endpoint);
    return { error: invalidClient('client authentication required') };
  }

  #secret(clientId: string | undefined, secret: string): { client: RegisteredClient } | { error: OAuthError } {
    if (clientId === undefined || clientId === '') return { error: invalidClient('client_id required') };
    const client = this.#context.clients.get(clientId);
    // Compare against something even for an unknown client, so that timing does not tell them apart.
    const ok = sameSecret(secret, client?.clientSecret ?? '\u0000unknown');
    if (client === undefined || !ok) return { error: invalidClient('client authentication failed') };
    return { client };
  }

  #basic(authorization: string, named: string | undefined): { client: RegisteredClient } | { error: OAuthError } {
    const encoded = authorization.trim().slice(6).trim();
    if (!B64.test(encoded)) return { error: invalidClient('malformed Basic credentials') };
    const decoded = Buffer.from(encoded, 'base64').toString('utf8');
    const colon = decoded.indexOf(':');
    if (colon < 0) return { error: invalidClient('malformed Basic credentials') };
    const clientId = formDecode(decoded.slice(0, colon));
    const secret = formDecode(decoded.slice(colon + 1));
    if (clientId === undefined || secret === undefined) return { error: invalidClient('malformed Basic credentials') };
    if (named !== undefined && named !== clientId) {
      return { error: oauthError(400, 'invalid_request', 'client_id does not match the authenticated client') };
    }
    return this.#secret(clientId, secret);
  }

  async #assertion(
    params: URLSearchParams,
    named: string | undefined,
    endpoint: string,
  ): Promise<{ client: RegisteredClient } | { error: OAuthError }> {
    if (params.get('client_assertion_type') !== JWT_BEARER_ASSERTION) {
      return { error: oauthError(400, 'invalid_request', 'unsupported client_assertion_type') };
    }
    const assertion = params.get('client_assertion') ?? '';
    let iss: unknown;
    let alg: unknown;
    try {
      iss = decodeJwt(assertion).iss;
      alg = decodeProtectedHeader(assertion).alg;
    } catch {
      return { error: invalidClient('malformed client assertion') };
    }
    const client = typeof iss === 'string' ? this.#context.clients.get(iss) : undefined;
    if (client === undefined) return { error: invalidClient('client authentication failed') };
    if (named !== undefined && named !== client.clientId) {
      return { error: oauthError(400, 'invalid_request', 'client_id does not match the client assertion') };
    }
    const now = this.#context.now();
    let jti: unknown;
    let exp: number;
    try {
      // client_secret_jwt with the secret, private_key_jwt with the registered public keys.
      const hmac = typeof alg === 'string' && HMAC_ALGORITHMS.includes(alg);
      if (!hmac && client.keys === undefined) throw new Error('no public key registered');
      const { issuer, tokenEndpoint } = this.#context;
      const options = {
        algorithms: ASSERTION_ALGORITHMS.filter((a) => HMAC_ALGORITHMS.includes(a) === hmac),
        issuer: client.clientId,
        subject: client.clientId,
        audience: [...new Set([issuer, tokenEndpoint, endpoint])],
        requiredClaims: ['exp', 'jti'],
        currentDate: new Date(now),
      };
      const { payload } = hmac
        ? await jwtVerify(assertion, new TextEncoder().encode(client.clientSecret), options)
        : await jwtVerify(assertion, client.keys!, options);
      jti = payload.jti;
      exp = payload.exp as number;
    } catch {
      return { error: invalidClient('client assertion is not valid') };
    }
    if (this.#seenAssertions.add(`${client.clientId}\u0000${String(jti)}`, exp * 1000, now) !== 'ok') {
      return { error: invalidClient('client assertion already used') };
    }
    return { client };
  }
}
