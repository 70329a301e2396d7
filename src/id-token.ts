/**
 * Checks that an OpenID Connect ID token belongs to an issuer, a client and a subject — the checks a
 * token store needs before it files a login response under a subject. Used by `UserTokens.save()`.
 *
 * @module
 */
import { createHmac, timingSafeEqual } from 'node:crypto';
import {
  type JWTPayload,
  compactVerify,
  createRemoteJWKSet,
  customFetch,
  decodeJwt,
  decodeProtectedHeader,
} from 'jose';
import { TokenwardenError, isTokenwardenError, truncate } from './errors.js';

/**
 * The claims of a user: `sub` and whatever else the ID token (or the UserInfo response) said.
 *
 * @example
 * ```ts
 * const claims: UserClaims | undefined = await users.getClaims('alice');
 * console.log(claims?.sub, claims?.['email']);
 * ```
 */
export type UserClaims = Readonly<Record<string, unknown>> & { readonly sub: string };

/**
 * What {@link checkIdToken} compares an ID token with.
 *
 * @example
 * ```ts
 * const expected: IdTokenExpectations = { issuer: 'https://login.example.com', clientId: 'web', subject: 'alice' };
 * ```
 */
export interface IdTokenExpectations {
  /** The issuer identifier (`iss` must equal it exactly). */
  issuer: string;
  /** The client (`aud` must contain it; `azp`, when present or when there are several audiences, must equal it). */
  clientId: string;
  /** The subject (`sub` must equal it exactly). */
  subject: string;
  /**
   * Verifies the signature. `undefined`: not verified (the token came straight from the token endpoint
   * over TLS, OpenID Connect Core §3.1.3.7 step 6).
   */
  verify?: (idToken: string, alg: string) => Promise<void>;
}

/**
 * JWT claims that describe the ID token itself rather than the user; {@link userClaims} leaves them out
 * (the list oidc-client-ts and others use, plus `azp`, `jti` and `s_hash`).
 *
 * @example
 * ```ts
 * PROTOCOL_CLAIMS.has('nonce'); // true
 * ```
 */
export const PROTOCOL_CLAIMS: ReadonlySet<string> = new Set([
  'aud',
  'azp',
  'exp',
  'iat',
  'nbf',
  'jti',
  'nonce',
  'at_hash',
  'c_hash',
  's_hash',
  'iss',
]);

/**
 * Checks that `idToken` was issued by `issuer` to `clientId` about `subject`, and optionally its signature.
 * Resolves to its payload; rejects with `ERR_ID_TOKEN_INVALID` naming the failed check (never the token).
 *
 * What it deliberately does **not** check: `exp`, `iat` freshness and `nonce`. It decides whom a login
 * response belongs to, possibly after the ID token expired; authenticating the user (freshness, nonce,
 * `at_hash`) is the job of the login flow that received the response.
 *
 * @example
 * ```ts
 * const claims = await checkIdToken(json.id_token, { issuer, clientId: 'app', subject: 'alice' });
 * ```
 */
export async function checkIdToken(idToken: string, expected: IdTokenExpectations): Promise<JWTPayload> {
  const invalid = (why: string, cause?: unknown): TokenwardenError =>
    new TokenwardenError('ERR_ID_TOKEN_INVALID', `the ID token ${why}`, cause === undefined ? {} : { cause });
  let alg: string | undefined;
  let claims: JWTPayload;
  try {
    const header = decodeProtectedHeader(idToken);
    alg = header.alg;
    if ('enc' in header) throw invalid('is encrypted (JWE), which is not supported');
    if ('crit' in header) throw invalid('has critical header parameters, which are not supported');
    claims = decodeJwt(idToken);
  } catch (err) {
    if (isTokenwardenError(err)) throw err;
    throw invalid('is not a signed JWT', err);
  }
  if (typeof alg !== 'string' || alg === '' || alg.toLowerCase() === 'none') throw invalid('is not signed');
  if (claims.iss !== expected.issuer) throw invalid('was issued by another issuer (iss)');
  const aud = claims.aud;
  const audiences = typeof aud === 'string' ? [aud] : Array.isArray(aud) ? aud : [];
  if (!audiences.includes(expected.clientId)) throw invalid('was issued to another client (aud)');
  if (claims.azp !== undefined && claims.azp !== expected.clientId) {
    throw invalid('was issued to another client (azp)');
  }
  if (audiences.length > 1 && claims.azp === undefined) throw invalid('has several audiences and no azp');
  if (typeof claims.sub !== 'string' || claims.sub === '') throw invalid('has no subject (sub)');
  if (claims.sub !== expected.subject) throw invalid('is about another subject (sub)');
  if (typeof claims.exp !== 'number' || typeof claims.iat !== 'number') throw invalid('lacks exp or iat');
  if (expected.verify) await expected.verify(idToken, alg);
  return claims;
}

/**
 * The user claims of an ID token payload: everything but {@link PROTOCOL_CLAIMS}.
 *
 * @example
 * ```ts
 * userClaims({ sub: 'alice', email: 'a@example.com', aud: 'app', exp: 1 }); // { sub: 'alice', email: 'a@example.com' }
 * ```
 */
export function userClaims(payload: JWTPayload): UserClaims {
  const out: Record<string, unknown> = {};
  for (const [name, value] of Object.entries(payload)) if (!PROTOCOL_CLAIMS.has(name)) out[name] = value;
  return out as UserClaims;
}

/**
 * How {@link signatureVerifier} reaches the issuer's keys.
 *
 * @example
 * ```ts
 * const options: SignatureVerifierOptions = { jwksUri: async () => as.jwks_uri, clientSecret, fetch, timeoutMs: 5000 };
 * ```
 */
export interface SignatureVerifierOptions {
  /** The issuer's `jwks_uri`, resolved lazily (discovery). */
  jwksUri: () => Promise<string | undefined>;
  /** The client secret: the key of `HS256`/`HS384`/`HS512` ID tokens (OpenID Connect Core §10.1). */
  clientSecret?: string | undefined;
  /** The fetch used for the JWKS (timeouts, body cap, injected transport). */
  fetch: (url: string, init: RequestInit) => Promise<Response>;
  /** Time limit for a JWKS request, ms. */
  timeoutMs: number;
}

/**
 * A signature check for {@link checkIdToken}: asymmetric algorithms against the issuer's JWKS (fetched
 * once and cached by `jose`, refetched for an unknown `kid`), `HS*` with the client secret.
 *
 * @example
 * ```ts
 * const verify = signatureVerifier({ jwksUri: async () => as.jwks_uri, fetch, timeoutMs: 5000 });
 * await checkIdToken(idToken, { issuer, clientId, subject, verify });
 * ```
 */
export function signatureVerifier(options: SignatureVerifierOptions): (idToken: string, alg: string) => Promise<void> {
  let jwks: ReturnType<typeof createRemoteJWKSet> | undefined;
  return async (idToken, alg) => {
    try {
      const hmac = /^HS(256|384|512)$/.exec(alg);
      if (hmac) {
        const secret = options.clientSecret;
        if (!secret) {
          throw new TokenwardenError(
            'ERR_ID_TOKEN_INVALID',
            `the ID token is signed with ${alg} and no clientSecret is configured`,
          );
        }
        // Synchronous HMAC and a constant-time compare: WebCrypto's asynchronous round trip costs ~40× more.
        const [header, payload, signature] = idToken.split('.');
        const expected = createHmac(`sha${hmac[1]}`, secret).update(`${header}.${payload}`).digest();
        const actual = Buffer.from(signature ?? '', 'base64url');
        if (actual.length !== expected.length || !timingSafeEqual(actual, expected)) {
          throw new TokenwardenError(
            'ERR_ID_TOKEN_INVALID',
            'the ID token signature does not verify with the client secret',
          );
        }
        return;
      }
      if (jwks === undefined) {
        const uri = await options.jwksUri();
        if (uri === undefined) {
          throw new TokenwardenError(
            'ERR_DISCOVERY',
            'the issuer publishes no jwks_uri: cannot verify ID token signatures',
          );
        }
        jwks = createRemoteJWKSet(new URL(uri), {
          timeoutDuration: options.timeoutMs,
          [customFetch]: (url, init) => options.fetch(url, init as RequestInit),
        });
      }
      await compactVerify(idToken, jwks);
    } catch (err) {
      if (isTokenwardenError(err)) throw err;
      const code = (err as { code?: unknown }).code;
      if (code === 'ERR_JWKS_TIMEOUT') {
        throw new TokenwardenError('ERR_TIMEOUT', 'fetching the issuer JWKS timed out', { cause: err });
      }
      if (code === 'ERR_JWKS_INVALID' || code === 'ERR_JOSE_GENERIC') {
        throw new TokenwardenError(
          'ERR_INVALID_RESPONSE',
          `the issuer JWKS is unusable: ${truncate(String((err as Error).message))}`,
          {
            cause: err,
          },
        );
      }
      throw new TokenwardenError(
        'ERR_ID_TOKEN_INVALID',
        'the ID token signature does not verify with the issuer keys',
        {
          cause: err,
        },
      );
    }
  };
}
