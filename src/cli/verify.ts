/**
 * Signature and claims verification for `tokenwarden inspect --verify`, through the resource-server
 * verifier (`createVerifier` from `tokenwarden/server`): the same checks an API using tokenwarden makes.
 *
 * @module
 */
import { TokenwardenError } from '../errors.js';
import { DEFAULT_TIMEOUT_MS } from '../http/transport.js';
import { createVerifier } from '../server/verifier.js';

/**
 * Options for {@link verifyJwt}.
 *
 * @example
 * ```ts
 * const options: VerifyJwtOptions = { issuer: 'https://login.example.com', audience: 'https://api.example.com' };
 * ```
 */
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

/**
 * What a successful verification returns.
 *
 * @example
 * ```ts
 * const { header, claims }: VerifiedJwt = await verifyJwt(token, options);
 * ```
 */
export interface VerifiedJwt {
  header: Record<string, unknown>;
  claims: Record<string, unknown>;
}

/**
 * Verifies a JWT access token as a resource server would: signature against the issuer's JWKS (from its
 * discovered metadata), an asymmetric algorithm, `iss`, `aud`, `exp`, `nbf`, `crit`, `typ`. Throws
 * `ERR_INVALID_TOKEN` (with the verifier's short reason) when the token fails a check; when the issuer or
 * its JWKS cannot be reached, the underlying error (`ERR_NETWORK`, `ERR_TIMEOUT`, `ERR_DISCOVERY`…). It
 * does not check scopes or revocation.
 *
 * @example
 * ```ts
 * const { claims } = await verifyJwt(token, { issuer: 'https://login.example.com', audience: 'https://api.example.com' });
 * ```
 */
export async function verifyJwt(token: string, options: VerifyJwtOptions): Promise<VerifiedJwt> {
  let unavailable: TokenwardenError | undefined;
  const verify = createVerifier({
    issuer: options.issuer,
    audience: options.audience,
    allowInsecureRequests: options.allowInsecureRequests === true,
    proxy: 'env', // HTTPS_PROXY/HTTP_PROXY/NO_PROXY, as curl
    timeout: options.timeoutMs ?? DEFAULT_TIMEOUT_MS,
    cache: false,
    onError: (err) => {
      unavailable = err;
    },
  });
  const result = await verify(token);
  if (result.ok) {
    const extra = result.auth.extra as { header?: Record<string, unknown>; claims?: Record<string, unknown> };
    return { header: extra.header ?? {}, claims: extra.claims ?? {} };
  }
  const { failure } = result;
  if (failure.status === 503) {
    throw (
      unavailable ??
      new TokenwardenError('ERR_NETWORK', 'the issuer or its JWKS could not be reached to verify the token')
    );
  }
  throw new TokenwardenError('ERR_INVALID_TOKEN', `the token failed verification: ${failure.description}`);
}
