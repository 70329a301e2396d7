/**
 * The introspection strategy (RFC 7662): asks the authorization server about each token, authenticating
 * as the resource server with the same client machinery as every grant ({@link OAuthClient}: client auth
 * methods, insecure-URL checks, bounded transport).
 *
 * Requests go through the introspection endpoint's backoff ({@link Endpoint}): while it fails, at most one
 * request per backoff interval reaches it and every other token is answered 503 at once. The endpoint comes
 * from the issuer's metadata (kept through an outage) or from `introspectionEndpoint`.
 *
 * A JWT response (RFC 9701, `application/token-introspection+jwt`) is believed only once its signature
 * verifies against the issuer's JWKS, with `iss` the issuer, `aud` the resource server's client id and
 * `typ: token-introspection+jwt`; anything else about it is an invalid response (503), never trusted
 * unsigned.
 *
 * Errors never carry text from the server (an `error_description` may echo the token or our credentials):
 * only the status and an `error` code of the OAuth character set that contains no secret.
 *
 * The verifier around it shares one call among concurrent checks of a token and caches the answer until
 * the earlier of the token's `exp` and `cacheMaxAge`; inactive answers are remembered for
 * `inactiveCacheMaxAge`.
 *
 * @module
 */
import * as oauth from 'oauth4webapi';
import { TokenwardenError, truncate } from '../errors.js';
import { type ResponseMeta, describeUrl } from '../http/transport.js';
import { type ClientOptions, OAuthClient } from '../sources/client.js';
import { basicUserPass } from '../sources/client-secret-basic.js';
import { statusWithoutBody } from '../sources/errors.js';
import { Redactor } from '../redact.js';
import * as telemetry from '../telemetry/hooks.js';
import { jwtRules } from './jws.js';
import { type KeySets, verifyJwt } from './keys.js';
import {
  type Claims,
  type PayloadResult,
  type VerifierProvider,
  expiresAtOf,
  infoOf,
  numericDatesValid,
  scopesOf,
  stringClaim,
  uidOf,
} from './provider.js';
import type { Upstreams } from './upstream.js';

/** Resolved options of the introspection strategy (built by `createVerifier`). */
export interface IntrospectionStrategyOptions {
  /** Client options for the resource server (issuer or explicit endpoint, credentials, transport). */
  client: ClientOptions;
  /** The introspection endpoint; discovered from the issuer when absent. */
  endpoint?: string | undefined;
  /** The one issuer: where the endpoint is discovered, and the `iss` of a signed response. */
  issuer?: string | undefined;
  /** Issuers accepted in the response's `iss` (checked when the response has one): `trustsIssuer()` of the verifier's. */
  issuerCheck: (iss: string) => boolean | Promise<boolean>;
  /** Audience(s) one of which the response's `aud` must name, when set. */
  audience?: string | string[] | undefined;
  uidClaim?: string | undefined;
  clockToleranceMs: number;
  cacheMaxAgeMs: number;
  inactiveCacheMaxAgeMs: number;
  /** Ask for a signed response (RFC 9701). Signed responses are verified whether asked for or not. */
  jwtResponse: boolean;
  /** Algorithms a signed response may use. */
  algorithms: string[];
  /** The JWKS that signs responses, when not the issuer's discovered one. */
  jwksUri?: string | undefined;
  upstreams: Upstreams;
  keySets: KeySets;
}

/** The server would not introspect this kind of token (RFC 7009 §2.2.1 code, used by oidc-provider for JWTs). */
const UNSUPPORTED_TOKEN = Symbol('unsupported token type');
const SIGNED_RESPONSE = 'application/token-introspection+jwt';

/**
 * Creates the introspection strategy as a {@link VerifierProvider}.
 *
 * @example
 * ```ts
 * // Usually through createVerifier({ issuer, introspection: { clientId, clientSecret } }); directly:
 * const introspect = introspectionStrategy({ client: { issuer, clientId, clientSecret }, upstreams, keySets, ...defaults });
 * const result = await introspect.getPayload(token, { now: Date.now(), clock: systemClock });
 * ```
 */
export function introspectionStrategy(options: IntrospectionStrategyOptions): VerifierProvider<Claims> {
  const { endpoint, issuer, upstreams } = options;
  // With an explicit endpoint, the client needs no discovery: it is given the endpoint as its "token
  // endpoint" only so that OAuthClient validates the URL.
  const client = new OAuthClient(
    endpoint === undefined ? options.client : { ...options.client, tokenEndpoint: endpoint },
  );
  const clientSecret = options.client.clientSecret;
  const audiences = options.audience === undefined ? undefined : ([] as string[]).concat(options.audience);
  const signedRules = jwtRules({
    audience: options.client.clientId,
    typ: 'token-introspection+jwt',
    algorithms: options.algorithms,
    requiredClaims: ['iat'],
    clockToleranceSec: options.clockToleranceMs / 1000,
  });

  const metadata = async (): Promise<oauth.AuthorizationServer> => {
    if (endpoint !== undefined) return { issuer: issuer ?? endpoint, introspection_endpoint: endpoint };
    const as = await upstreams.metadata(issuer as string);
    if (typeof as.introspection_endpoint !== 'string') {
      throw new TokenwardenError(
        'ERR_UNSUPPORTED',
        'the authorization server metadata has no introspection_endpoint: set introspectionEndpoint',
      );
    }
    return as;
  };

  /** One introspection request and its answer: claims, or "will not introspect", or a throw (not judged). */
  const introspect = async (
    as: oauth.AuthorizationServer,
    token: string,
    meta: ResponseMeta,
  ): Promise<Claims | typeof UNSUPPORTED_TOKEN> => {
    const where = describeUrl(as.introspection_endpoint as string);
    // Everything the server could echo back to us that must not reach an error, a log or an event.
    const secrets = secretForms(token, client.clientId, clientSecret);
    try {
      const response = await oauth.introspectionRequest(as, client.client, await client.clientAuthentication(), token, {
        ...client.requestOptions(meta),
        additionalParameters: { token_type_hint: 'access_token' },
        ...(options.jwtResponse && { requestJwtResponse: true }),
      });
      if (response.status === 200 && contentType(response) === SIGNED_RESPONSE) {
        return await verifySigned(as, await response.text(), where);
      }
      return (await oauth.processIntrospectionResponse(as, client.client, response)) as Claims;
    } catch (err) {
      if (err instanceof oauth.ResponseBodyError && err.error === 'unsupported_token_type') return UNSUPPORTED_TOKEN;
      throw introspectionError(err, where, secrets);
    }
  };

  /** RFC 9701 §5: a signed answer counts only when its signature, issuer, audience and type hold. */
  const verifySigned = async (as: oauth.AuthorizationServer, jwt: string, where: string): Promise<Claims> => {
    const refuse = (why: string) =>
      new TokenwardenError('ERR_INVALID_RESPONSE', `signed introspection response from ${where} refused: ${why}`);
    if (issuer === undefined) throw refuse('no issuer is configured to verify it against');
    const keys =
      options.jwksUri !== undefined ? options.keySets.forUri(options.jwksUri) : options.keySets.forIssuer(issuer);
    let claims: Claims;
    try {
      ({ payload: claims } = await verifyJwt(jwt, keys, signedRules, issuer, upstreams.clock.now()));
    } catch (err) {
      if (err instanceof TokenwardenError) throw err; // the keys could not be had
      throw refuse(signedFailure(err));
    }
    if (!numericDatesValid(claims)) throw refuse('invalid numeric date');
    const inner = claims['token_introspection'];
    if (inner === null || typeof inner !== 'object' || Array.isArray(inner)) {
      throw refuse('no token_introspection object');
    }
    if (typeof (inner as Claims)['active'] !== 'boolean') throw refuse('"active" is not a boolean');
    return inner as Claims;
  };

  return {
    async getPayload(token, context): Promise<PayloadResult<Claims>> {
      let answer: Claims | typeof UNSUPPORTED_TOKEN;
      try {
        const as = await metadata();
        answer = await upstreams
          .endpoint('introspection', as.introspection_endpoint as string)
          .request((meta) => telemetry.countRequest('introspection', () => introspect(as, token, meta)));
      } catch (err) {
        // Network, timeout, 5xx, garbage, our own credentials refused, backing off: the token was not judged.
        return {
          ok: false,
          error: 'temporarily_unavailable',
          description: 'token could not be verified now',
          cause: err,
        };
      }
      const inactive = (description: string): PayloadResult<Claims> => ({
        ok: false,
        error: 'invalid_token',
        description,
        cacheForMs: options.inactiveCacheMaxAgeMs,
      });
      if (answer === UNSUPPORTED_TOKEN) return inactive('token cannot be introspected');
      const claims = answer;
      if (claims['active'] !== true) return inactive('token is not active');
      const rawType = claims['token_type'];
      const tokenType = typeof rawType === 'string' ? rawType.toLowerCase() : rawType;
      if (tokenType !== undefined && !['bearer', 'access_token', 'dpop'].includes(tokenType as string)) {
        return inactive('not an access token');
      }
      // Servers that introspect refresh tokens too say so outside `token_type` (which they set to "Bearer"
      // for both): Ory Hydra and Authelia in `token_use`, Keycloak in the token's `typ` claim.
      if (!isAccessTokenUse(claims['token_use']) || isOtherKeycloakTyp(claims['typ'])) {
        return inactive('not an access token');
      }
      // The verifier checks the key binding (`cnf`) per request; a DPoP token must have one to check.
      if (tokenType === 'dpop' && typeof (claims['cnf'] as { jkt?: unknown } | undefined)?.jkt !== 'string') {
        return inactive('DPoP token without key binding');
      }
      if (!numericDatesValid(claims)) return inactive('invalid numeric date');
      const iss = claims['iss'];
      if (iss !== undefined && (typeof iss !== 'string' || !(await options.issuerCheck(iss)))) {
        return inactive('unexpected issuer');
      }
      if (audiences !== undefined) {
        const aud = claims['aud'];
        const named = typeof aud === 'string' ? [aud] : Array.isArray(aud) ? aud : [];
        if (!named.some((a) => audiences.includes(a as string))) return inactive('unexpected audience');
      }
      const exp = expiresAtOf(claims);
      if (exp !== undefined && exp + options.clockToleranceMs <= context.now) return inactive('token expired');
      const nbf = claims['nbf'];
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

/** `token_use` absent, or naming an access token (`access_token`: Ory Hydra, Authelia; `access`: Amazon Cognito). */
function isAccessTokenUse(value: unknown): boolean {
  return value === undefined || value === 'access_token' || value === 'access';
}

/** Keycloak's `typ` of a refresh, offline or ID token (its access tokens say `Bearer` or `DPoP`). */
function isOtherKeycloakTyp(value: unknown): boolean {
  return typeof value === 'string' && ['refresh', 'offline', 'id', 'logout'].includes(value.toLowerCase());
}

function contentType(response: Response): string | undefined {
  return response.headers.get('content-type')?.split(';')[0]?.trim().toLowerCase();
}

/** The token and credentials as they travel (raw, form-encoded, in a Basic header): none may be echoed into an error. */
function secretForms(token: string, clientId: string, clientSecret: string | undefined): string[] {
  const forms = [token, encodeURIComponent(token)];
  if (clientSecret !== undefined && clientSecret !== '') {
    const basic = Buffer.from(basicUserPass(clientId, clientSecret)).toString('base64'); // as client_secret_basic sends it
    forms.push(clientSecret, encodeURIComponent(clientSecret), basic);
  }
  return forms.filter((s) => s !== '');
}

/** An OAuth `error` code worth keeping: RFC 6749's usual shape, short, and none of our secrets in it. */
function safeCode(value: unknown, secrets: readonly string[]): string | undefined {
  if (typeof value !== 'string' || !/^[A-Za-z0-9_.-]{1,64}$/.test(value)) return undefined;
  return secrets.some((s) => value.includes(s) || s.includes(value)) ? undefined : value;
}

/**
 * What an introspection failure becomes: a {@link TokenwardenError} with the status and, at most, a safe
 * `error` code — never the server's `error_description`, body or headers, nor oauth4webapi's error (which
 * holds them) as `cause`.
 */
function introspectionError(err: unknown, where: string, secrets: readonly string[]): TokenwardenError {
  if (err instanceof TokenwardenError) return err; // transport errors and our own: they name the URL only
  const failed = `introspection request to ${where} failed`;
  if (err instanceof oauth.ResponseBodyError || err instanceof oauth.WWWAuthenticateChallengeError) {
    // A bare challenge (`WWW-Authenticate: Basic`, LemonLDAP::NG) answers our credentials: invalid_client, as
    // the token endpoint's is read (src/sources/errors.ts).
    const raw =
      err instanceof oauth.ResponseBodyError ? err.error : (err.cause[0]?.parameters.error ?? 'invalid_client');
    const code = safeCode(raw, secrets);
    return new TokenwardenError('ERR_OAUTH', `${failed}: the server answered ${err.status}${code ? ` ${code}` : ''}`, {
      ...(code !== undefined && { error: code }),
      status: err.status,
    });
  }
  if (err instanceof oauth.OperationProcessingError) {
    if (err.code === oauth.RESPONSE_IS_NOT_CONFORM) {
      const status = err.cause instanceof Response ? err.cause.status : undefined;
      const redactor = new Redactor(secrets);
      const text = (value: string, max?: number) => redactor.redact(truncate(value, max));
      return new TokenwardenError(
        'ERR_HTTP_STATUS',
        `${failed}: ${statusWithoutBody(err.cause, text)}`,
        status === undefined ? {} : { status },
      );
    }
    if (err.code === oauth.HTTP_REQUEST_FORBIDDEN || err.code === oauth.REQUEST_PROTOCOL_FORBIDDEN) {
      return new TokenwardenError(
        'ERR_INSECURE_ISSUER',
        `${failed}: only https: URLs are allowed (http: too with allowInsecureRequests: true, for local development)`,
      );
    }
  }
  if (err instanceof oauth.UnsupportedOperationError) {
    return new TokenwardenError('ERR_UNSUPPORTED', `${failed}: the response uses something not supported`);
  }
  return new TokenwardenError('ERR_INVALID_RESPONSE', `${failed}: the answer is not a valid introspection response`);
}

/** Why a signed introspection response did not verify, in a few fixed words. */
function signedFailure(err: unknown): string {
  const { code, claim } = err as { code?: unknown; claim?: unknown };
  switch (code) {
    case 'ERR_JOSE_ALG_NOT_ALLOWED':
      return 'algorithm not allowed';
    case 'ERR_JWS_SIGNATURE_VERIFICATION_FAILED':
      return 'invalid signature';
    case 'ERR_JWKS_NO_MATCHING_KEY':
    case 'ERR_JWKS_MULTIPLE_MATCHING_KEYS':
      return 'signed by a key the issuer does not publish';
    case 'ERR_JWT_CLAIM_VALIDATION_FAILED':
    case 'ERR_JWT_EXPIRED':
      return typeof claim === 'string' && /^[a-z_]{1,32}$/.test(claim) ? `unexpected "${claim}"` : 'invalid claims';
    default:
      return 'malformed';
  }
}
