/**
 * Signature and claims verification for `tokenwarden inspect --verify`.
 *
 * This is a stand-in, kept behind one function, until the resource-server verifier (`createVerifier` from
 * `tokenwarden/server`) lands: then {@link verifyJwt} becomes a call to it and nothing else changes.
 *
 * @module
 */
import { TokenwardenError, isTokenwardenError } from '../errors.js';
import { DEFAULT_MAX_RESPONSE_BYTES, DEFAULT_TIMEOUT_MS } from '../http/transport.js';
import { discover } from '../sources/discovery.js';

/** Options for {@link verifyJwt}. */
export interface VerifyJwtOptions {
  /** The expected issuer; its JWKS is found through discovery. */
  issuer: string;
  /** The expected audience(s). */
  audience: string | string[];
  /** Allow `http:` URLs (local development only). */
  allowInsecureRequests?: boolean;
  /** Time limit per request, milliseconds. Default 10 s. */
  timeoutMs?: number;
}

/** What a successful verification returns. */
export interface VerifiedJwt {
  header: Record<string, unknown>;
  claims: Record<string, unknown>;
}

/**
 * Verifies a JWT access token: signature against the issuer's JWKS (from its discovered metadata),
 * `iss`, `aud`, `exp` and `nbf` (jose's default clock tolerance: none). Throws `ERR_INVALID_TOKEN` when the
 * token fails a check; discovery and network problems keep their own codes. It does not check scopes,
 * `typ` or revocation.
 *
 * @example
 * ```ts
 * const { claims } = await verifyJwt(token, { issuer: 'https://login.example.com', audience: 'https://api.example.com' });
 * ```
 */
export async function verifyJwt(token: string, options: VerifyJwtOptions): Promise<VerifiedJwt> {
  const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const metadata = await discover(options.issuer, {
    timeoutMs,
    maxResponseBytes: DEFAULT_MAX_RESPONSE_BYTES,
    allowInsecureRequests: options.allowInsecureRequests === true,
  });
  if (typeof metadata.jwks_uri !== 'string') {
    throw new TokenwardenError('ERR_DISCOVERY', 'the issuer metadata has no jwks_uri: its JWTs cannot be verified');
  }
  const jwksUri = new URL(metadata.jwks_uri);
  if (jwksUri.protocol !== 'https:' && !(jwksUri.protocol === 'http:' && options.allowInsecureRequests)) {
    throw new TokenwardenError('ERR_INSECURE_ISSUER', 'the jwks_uri is not https:');
  }
  const { createRemoteJWKSet, jwtVerify, errors } = await import('jose');
  const jwks = createRemoteJWKSet(jwksUri, { timeoutDuration: timeoutMs });
  try {
    const { payload, protectedHeader } = await jwtVerify(token, jwks, {
      issuer: options.issuer,
      audience: options.audience,
    });
    return { header: protectedHeader as Record<string, unknown>, claims: payload as Record<string, unknown> };
  } catch (err) {
    if (isTokenwardenError(err)) throw err;
    if (err instanceof errors.JWKSTimeout) {
      throw new TokenwardenError('ERR_TIMEOUT', `fetching the JWKS timed out after ${timeoutMs} ms`, { cause: err });
    }
    if (err instanceof errors.JWKSInvalid || (err instanceof errors.JOSEError && err.code === 'ERR_JOSE_GENERIC')) {
      // The key set itself is unusable (not 200, not a JWKS): the server's problem, not the token's.
      throw new TokenwardenError('ERR_INVALID_RESPONSE', `the JWKS at ${jwksUri.href} is unusable: ${err.message}`, {
        cause: err,
      });
    }
    if (err instanceof errors.JOSEError) {
      throw new TokenwardenError('ERR_INVALID_TOKEN', `the token failed verification: ${describe(err)}`, {
        cause: err,
      });
    }
    throw new TokenwardenError('ERR_NETWORK', `fetching the JWKS at ${jwksUri.href} failed`, { cause: err });
  }
}

function describe(err: { code?: string; message: string; claim?: string }): string {
  // jose's messages name the failing check ("\"exp\" claim timestamp check failed"); they never quote the token.
  return `${err.message}${err.code ? ` (${err.code})` : ''}`;
}
