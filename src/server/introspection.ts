/**
 * The introspection strategy (RFC 7662): asks the authorization server about each token, authenticating
 * as the resource server with the same client machinery as every grant ({@link OAuthClient}: discovery,
 * client auth methods, insecure-URL checks, bounded transport).
 *
 * The verifier around it shares one call among concurrent checks of a token and caches the answer until
 * the earlier of the token's `exp` and `cacheMaxAge`; inactive answers are remembered for
 * `inactiveCacheMaxAge`.
 *
 * @module
 */
import * as oauth from 'oauth4webapi';
import { TokenwardenError } from '../errors.js';
import { type ClientOptions, OAuthClient } from '../sources/client.js';
import { toTokenwardenError } from '../sources/errors.js';
import {
  type Claims,
  type PayloadResult,
  type VerifierProvider,
  expiresAtOf,
  infoOf,
  scopesOf,
  stringClaim,
  uidOf,
} from './provider.js';

/** Resolved options of the introspection strategy (built by `createVerifier`). */
export interface IntrospectionStrategyOptions {
  /** Client options for the resource server (issuer or explicit endpoint, credentials, transport). */
  client: ClientOptions;
  /** The introspection endpoint; discovered from the issuer when absent. */
  endpoint?: string | undefined;
  /** Issuers accepted in the response's `iss` (checked when the response has one). */
  issuerCheck: (iss: string) => boolean | Promise<boolean>;
  /** Audience(s) one of which the response's `aud` must name, when set. */
  audience?: string | string[] | undefined;
  uidClaim?: string | undefined;
  clockToleranceMs: number;
  cacheMaxAgeMs: number;
  inactiveCacheMaxAgeMs: number;
}

/**
 * Creates the introspection strategy as a {@link VerifierProvider}.
 *
 * @example
 * ```ts
 * // Usually through createVerifier({ issuer, introspection: { clientId, clientSecret } }); directly:
 * const introspect = introspectionStrategy({ client: { issuer, clientId, clientSecret }, ...defaults });
 * const result = await introspect.getPayload(token, { now: Date.now(), clock: systemClock });
 * ```
 */
export function introspectionStrategy(options: IntrospectionStrategyOptions): VerifierProvider<Claims> {
  const endpoint = options.endpoint;
  // With an explicit endpoint, the client needs no discovery: it is given the endpoint as its "token
  // endpoint" only so that OAuthClient validates the URL and skips discovery.
  const client = new OAuthClient(
    endpoint === undefined ? options.client : { ...options.client, tokenEndpoint: endpoint },
  );
  const audiences = options.audience === undefined ? undefined : ([] as string[]).concat(options.audience);

  const authorizationServer = async (): Promise<oauth.AuthorizationServer> => {
    const as = await client.authorizationServer();
    if (endpoint !== undefined) return { ...as, introspection_endpoint: endpoint };
    if (typeof as.introspection_endpoint !== 'string') {
      throw new TokenwardenError('ERR_UNSUPPORTED', 'the authorization server has no introspection endpoint');
    }
    return as;
  };

  return {
    async getPayload(token, context): Promise<PayloadResult<Claims>> {
      let claims: oauth.IntrospectionResponse;
      try {
        const as = await authorizationServer();
        const response = await oauth.introspectionRequest(
          as,
          client.client,
          await client.clientAuthentication(),
          token,
          {
            ...client.requestOptions(),
            additionalParameters: { token_type_hint: 'access_token' },
          },
        );
        claims = await oauth.processIntrospectionResponse(as, client.client, response);
      } catch (err) {
        // The server judged the token itself (RFC 7009 §2.2.1 code, which oidc-provider uses for JWTs).
        if (err instanceof oauth.ResponseBodyError && err.error === 'unsupported_token_type') {
          return {
            ok: false,
            error: 'invalid_token',
            description: 'token cannot be introspected',
            cacheForMs: options.inactiveCacheMaxAgeMs,
          };
        }
        // Anything else (network, timeout, 5xx, our own credentials refused): the token was not judged.
        return {
          ok: false,
          error: 'temporarily_unavailable',
          description: 'token could not be verified now',
          cause: toTokenwardenError(err, 'introspection'),
        };
      }
      const inactive = (description: string): PayloadResult<Claims> => ({
        ok: false,
        error: 'invalid_token',
        description,
        cacheForMs: options.inactiveCacheMaxAgeMs,
      });
      if (claims.active !== true) return inactive('token is not active');
      const tokenType = claims.token_type?.toLowerCase();
      if (tokenType !== undefined && !['bearer', 'access_token', 'dpop'].includes(tokenType)) {
        return inactive('not an access token');
      }
      // The verifier checks the key binding (`cnf`) per request; a DPoP token must have one to check.
      if (tokenType === 'dpop' && typeof (claims.cnf as { jkt?: unknown } | undefined)?.jkt !== 'string') {
        return inactive('DPoP token without key binding');
      }
      if (typeof claims.iss === 'string' && !(await options.issuerCheck(claims.iss))) {
        return inactive('unexpected issuer');
      }
      if (audiences !== undefined) {
        const aud = claims.aud;
        const named = typeof aud === 'string' ? [aud] : Array.isArray(aud) ? aud : [];
        if (!named.some((a) => audiences.includes(a))) return inactive('unexpected audience');
      }
      const exp = expiresAtOf(claims);
      if (exp !== undefined && exp + options.clockToleranceMs <= context.now) return inactive('token expired');
      const nbf = claims.nbf;
      if (typeof nbf === 'number' && nbf * 1000 - options.clockToleranceMs > context.now) {
        return { ok: false, error: 'invalid_token', description: 'token not yet valid' };
      }
      return { ok: true, payload: claims };
    },
    isValid: () => true, // checked above, with the clock tolerance
    getUid: (claims) => uidOf(claims, options.uidClaim),
    getIssuer: (claims) => stringClaim(claims, 'iss') ?? client.issuer,
    getCredentials: (claims) => ({ scopes: scopesOf(claims), expiresAt: expiresAtOf(claims) }),
    getInfo: (claims) => infoOf(claims),
    getExtra: (claims) => ({ claims }),
    getTtl: () => options.cacheMaxAgeMs,
  };
}
