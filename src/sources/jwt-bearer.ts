import { randomUUID } from 'node:crypto';
import { TokenwardenError } from '../errors.js';
import { type Duration, toMs } from '../duration.js';
import {
  type ClientOptions,
  GrantSource,
  OAuthClient,
  type PrivateKeyInput,
  hashSecret,
  importPrivateKey,
} from './client.js';

/**
 * How to build the JWT assertion of {@link jwtBearer} when you do not pass one.
 *
 * @example
 * ```ts
 * const assertion: JwtAssertionOptions = { privateKey: pem, subject: 'robot@example.com', lifetime: '2m', claims: { tenant: 'acme' } };
 * ```
 */
export interface JwtAssertionOptions {
  /** Key that signs the assertion. */
  privateKey: PrivateKeyInput;
  /** `iss` claim. Default: the client id. */
  issuer?: string;
  /** `sub` claim: the principal the token is for. */
  subject: string;
  /** `aud` claim. Default: the issuer URL, else the token endpoint. */
  audience?: string | string[];
  /** Assertion lifetime (`exp` − `iat`, rounded up to a second; more than 0). Default `'5m'`. */
  lifetime?: Duration;
  /** More claims. */
  claims?: Record<string, unknown>;
}

/**
 * Options for {@link jwtBearer}.
 *
 * @example
 * ```ts
 * const options: JwtBearerOptions = { tokenEndpoint, clientId: 'robot', assertion: () => signWithKms() };
 * ```
 */
export interface JwtBearerOptions extends ClientOptions {
  /**
   * The assertion: a signed JWT, a function returning one (called for every request), or
   * {@link JwtAssertionOptions} to have tokenwarden sign a fresh one (new `jti`) each time. "Every request"
   * includes the one resend a token request may make (a DPoP nonce demanded, a connection reset before any
   * answer), so a server that refuses a `jti` it has seen gets a new assertion; a string is sent as it is each
   * time, which such a server refuses the second time.
   */
  assertion: string | (() => string | Promise<string>) | JwtAssertionOptions;
}

/**
 * The JWT bearer grant (RFC 7523 §2.1): a signed assertion in exchange for an access token (service
 * accounts, workload identity).
 *
 * @example
 * ```ts
 * import { TokenManager, jwtBearer } from 'tokenwarden';
 * const manager = new TokenManager({
 *   source: jwtBearer({
 *     tokenEndpoint: 'https://oauth2.example.com/token',
 *     clientId: 'robot',
 *     assertion: { privateKey: process.env.ROBOT_KEY_PEM!, subject: 'robot@example.com' },
 *     scope: 'storage.read',
 *   }),
 * });
 * ```
 */
export function jwtBearer(options: JwtBearerOptions): GrantSource {
  const { assertion } = options;
  if (assertion === undefined || assertion === '' || assertion === null) {
    throw new TokenwardenError('ERR_CONFIG', 'assertion is required');
  }
  const client = new OAuthClient(options);
  const lifetimeMs = typeof assertion === 'object' ? toMs(assertion.lifetime ?? '5m', 'assertion.lifetime') : 0;
  if (typeof assertion === 'object' && lifetimeMs === 0) {
    // exp = iat: an assertion expired when signed (RFC 7523 §3: rejected), at every request.
    throw new TokenwardenError('ERR_CONFIG', 'assertion.lifetime must be more than 0');
  }
  const identity =
    typeof assertion === 'string'
      ? `static:${hashSecret(assertion)}`
      : typeof assertion === 'function'
        ? `instance:${randomUUID()}`
        : { iss: assertion.issuer ?? options.clientId, sub: assertion.subject, aud: assertion.audience ?? null };
  return new GrantSource('jwt_bearer', client, client.keyFor('jwt_bearer', { assertion: identity }), ({ signal }) =>
    // Made for each request sent, a resend included: a server that remembers each assertion's jti (RFC 7523
    // §3) refuses one it has already read, and a resend follows a request it may have read.
    client.tokenRequest(
      'urn:ietf:params:oauth:grant-type:jwt-bearer',
      async () => {
        let jwt: string;
        if (typeof assertion === 'string') jwt = assertion;
        else if (typeof assertion === 'function') jwt = await assertion();
        else {
          const as = await client.authorizationServer(signal);
          jwt = await signAssertion(assertion, options.clientId, as.issuer, lifetimeMs, client.clock.now());
        }
        return new URLSearchParams({ assertion: jwt });
      },
      { signal },
    ),
  );
}

async function signAssertion(
  options: JwtAssertionOptions,
  clientId: string,
  audience: string,
  lifetimeMs: number,
  now: number,
): Promise<string> {
  const { SignJWT } = await import('jose');
  const { key, kid } = await importPrivateKey(options.privateKey);
  const alg = (key.algorithm as { name: string; namedCurve?: string }).name;
  const iat = Math.floor(now / 1000);
  return new SignJWT({ ...options.claims })
    .setProtectedHeader({ alg: jwsAlg(alg, key), typ: 'JWT', ...(kid && { kid }) })
    .setIssuer(options.issuer ?? clientId)
    .setSubject(options.subject)
    .setAudience(options.audience ?? audience)
    .setIssuedAt(iat)
    .setExpirationTime(iat + Math.ceil(lifetimeMs / 1000))
    .setJti(randomUUID())
    .sign(key);
}

function jwsAlg(name: string, key: CryptoKey): string {
  const algorithm = key.algorithm as { name: string; namedCurve?: string; hash?: { name: string } };
  switch (name) {
    case 'RSASSA-PKCS1-v1_5':
      return `RS${algorithm.hash?.name.slice(4) ?? '256'}`;
    case 'RSA-PSS':
      return `PS${algorithm.hash?.name.slice(4) ?? '256'}`;
    case 'ECDSA':
      return algorithm.namedCurve === 'P-384' ? 'ES384' : algorithm.namedCurve === 'P-521' ? 'ES512' : 'ES256';
    case 'Ed25519':
      return 'EdDSA';
    default:
      throw new TokenwardenError('ERR_CONFIG', `unsupported assertion key algorithm ${name}`);
  }
}
