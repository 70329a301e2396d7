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

/** What {@link ClientAuthenticator} needs to know about the server. */
export interface ClientAuthContext {
  readonly clients: ReadonlyMap<string, RegisteredClient>;
  /** The values a client assertion's `aud` may name: the issuer and the endpoint URLs. */
  readonly audiences: readonly string[];
  now(): number;
}

/** Authenticates the client of one request; remembers assertion ids until they expire. */
export class ClientAuthenticator {
  readonly #context: ClientAuthContext;
  readonly #seenAssertions = new ReplayCache(100_000);

  constructor(context: ClientAuthContext) {
    this.#context = context;
  }

  async authenticate(
    authorization: string | undefined,
    params: URLSearchParams,
  ): Promise<{ client: RegisteredClient } | { error: OAuthError }> {
    const basic = authorization !== undefined && /^basic /i.test(authorization.trimStart());
    const post = params.has('client_secret');
    const jwt = params.has('client_assertion') || params.has('client_assertion_type');
    if (Number(basic) + Number(post) + Number(jwt) > 1) {
      return { error: oauthError(400, 'invalid_request', 'more than one client authentication method') };
    }
    const named = params.get('client_id') ?? undefined;
    if (basic) return this.#basic(authorization as string, named);
    if (post) return this.#secret(named, params.get('client_secret') as string);
    if (jwt) return this.#assertion(params, named);
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
      const hmac = typeof alg === 'string' && alg.startsWith('HS');
      if (!hmac && client.keys === undefined) throw new Error('no public key registered');
      const options = {
        algorithms: hmac ? ['HS256', 'HS384', 'HS512'] : [...ASYMMETRIC_ALGORITHMS],
        issuer: client.clientId,
        subject: client.clientId,
        audience: [...this.#context.audiences],
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
