/**
 * The JWT strategy: JWT access tokens verified locally against the issuer's JWKS (RFC 9068, RFC 8725).
 *
 * Keys come from the `jwks_uri` of the issuer's discovered metadata (or an explicit `jwksUri`) through a
 * {@link KeySet}: last-known keys kept through an outage, refreshed ahead of `cacheMaxAge` in the
 * background, refetched for an unknown `kid` at most once per `cooldown`, every fetch backed off while the
 * authorization server fails.
 *
 * @module
 */
import { type JWSHeaderParameters, type JWTPayload, decodeJwt } from 'jose';
import { TokenwardenError } from '../errors.js';
import { audiencePresent, jwtRules } from './jws.js';
import { type KeySets, type VerifiedJwt, verifyJwt } from './keys.js';
import {
  type Claims,
  type PayloadResult,
  type ProviderContext,
  type VerifierProvider,
  expiresAtOf,
  infoOf,
  numericDatesValid,
  scopesOf,
  stringClaim,
  uidOf,
} from './provider.js';

/**
 * Asymmetric JWS algorithms: the default allow-list, and the only ones accepted. Frozen: the verifier reads it
 * at every verification, so a push (`'HS256'`, `'none'`) from any module would otherwise widen what it accepts.
 *
 * @example
 * ```ts
 * createVerifier({ issuer, audience, algorithms: ASYMMETRIC_ALGORITHMS.filter((a) => a.startsWith('ES')) });
 * ```
 */
export const ASYMMETRIC_ALGORITHMS = Object.freeze([
  'RS256',
  'RS384',
  'RS512',
  'PS256',
  'PS384',
  'PS512',
  'ES256',
  'ES384',
  'ES512',
  'EdDSA',
  'Ed25519',
] as const);

/**
 * Claims RFC 9068 §2.2 requires in a JWT access token (checked with `strict: true`).
 *
 * @example
 * ```ts
 * createVerifier({ issuer, audience, strict: true }); // typ at+jwt, and every claim of RFC9068_CLAIMS
 * ```
 */
export const RFC9068_CLAIMS = Object.freeze(['iss', 'exp', 'aud', 'sub', 'client_id', 'iat', 'jti'] as const);

/** Which issuers are trusted: a fixed list, or a function deciding for an `iss` it is shown. */
export type IssuerPolicy = { list: readonly string[] } | { resolve: (iss: string) => boolean | Promise<boolean> };

/**
 * Whether `issuers` trusts `iss`: it is listed, or the function answers exactly `true` (or a promise of
 * `true`). Any other answer refuses it — a truthy string or object is a function that forgot to decide, not a
 * yes. The one check of an issuer, for JWTs and for introspection responses.
 */
export async function trustsIssuer(issuers: IssuerPolicy, iss: string): Promise<boolean> {
  if ('list' in issuers) return issuers.list.includes(iss);
  return (await issuers.resolve(iss)) === true;
}

/** Resolved options of the JWT strategy (built by `createVerifier`). */
export interface JwtStrategyOptions {
  issuers: IssuerPolicy;
  /** The accepted `aud` values; empty when only {@link JwtStrategyOptions.clientIdsWithoutAudience} is set. */
  audience: string | string[];
  /**
   * Accept tokens without `aud` whose `client_id` is one of these (Amazon Cognito); then a `token_use` other
   * than `access` is refused too. See `VerifierOptions.clientIdsWithoutAudience`.
   */
  clientIdsWithoutAudience?: readonly string[] | undefined;
  jwksUri?: string | undefined;
  algorithms: string[];
  clockToleranceSec: number;
  maxTokenAgeSec?: number | undefined;
  strict: boolean;
  requiredClaims: string[];
  uidClaim?: string | undefined;
  /** How long a token whose signature is good but whose claims are not is remembered as bad. */
  negativeCacheMs: number;
  /** The verifier's key sets (shared with signed introspection responses). */
  keySets: KeySets;
}

/** The payload the JWT strategy hands the verifier. */
export interface JwtPayload {
  readonly claims: JWTPayload;
  readonly header: JWSHeaderParameters;
}

/**
 * The JWT strategy: a {@link VerifierProvider}, and `check()`, the same without a promise when the token's
 * keys are known (the verifier's miss path).
 *
 * @example
 * ```ts
 * const result = jwt.check(token, Date.now()); // a PayloadResult, or a promise of one
 * ```
 */
export interface JwtStrategy extends VerifierProvider<JwtPayload> {
  check(token: string, now: number): PayloadResult<JwtPayload> | Promise<PayloadResult<JwtPayload>>;
}

/**
 * Creates the JWT strategy as a {@link VerifierProvider}.
 *
 * @example
 * ```ts
 * // Usually through createVerifier({ issuer, audience }); directly:
 * const jwt = jwtStrategy({ issuers: { list: [issuer] }, audience: 'https://api.example.com', ...defaults });
 * const result = await jwt.getPayload(token, { now: Date.now(), clock: systemClock });
 * ```
 */
export function jwtStrategy(options: JwtStrategyOptions): JwtStrategy {
  const single = 'list' in options.issuers && options.issuers.list.length === 1 ? options.issuers.list[0] : undefined;
  const keySetFor = (issuer: string) =>
    options.jwksUri !== undefined ? options.keySets.forUri(options.jwksUri) : options.keySets.forIssuer(issuer);

  const trustedIssuer = async (token: string): Promise<string | undefined> => {
    const iss = decodeJwt(token).iss;
    if (typeof iss !== 'string') return undefined;
    return (await trustsIssuer(options.issuers, iss)) ? iss : undefined;
  };

  const clientIds = options.clientIdsWithoutAudience;
  const audience = typeof options.audience === 'string' ? [options.audience] : options.audience;
  const rules = jwtRules({
    algorithms: options.algorithms,
    // With client ids, `aud` is judged after the signature and dates (audienceOrClient): it may be absent.
    audience: clientIds === undefined ? options.audience : undefined,
    clockToleranceSec: options.clockToleranceSec,
    requiredClaims: options.strict
      ? [...RFC9068_CLAIMS, ...options.requiredClaims]
      : ['exp', ...options.requiredClaims],
    maxTokenAgeSec: options.maxTokenAgeSec,
    typ: options.strict ? 'at+jwt' : undefined,
  });
  /** The checks after jose's rules: numeric dates in range, explicit typing. */
  const judge = ({ payload, protectedHeader }: VerifiedJwt): PayloadResult<JwtPayload> => {
    // jose takes any number: 1e400 is Infinity after JSON parsing, an `exp` that never comes (RFC 7519 §2).
    if (!numericDatesValid(payload)) return bad('invalid numeric date', options.negativeCacheMs);
    // RFC 8725 §3.11 explicit typing: without `strict`, a typ other than JWT / at+jwt is another kind of JWT.
    if (!options.strict && protectedHeader.typ !== undefined && !isAccessTokenTyp(protectedHeader.typ as unknown)) {
      return bad('unexpected token type', options.negativeCacheMs);
    }
    // An OpenID Connect ID token signed like the access tokens, typ JWT, aud the client id (LemonLDAP::NG): its
    // hashes of the tokens issued with it (OIDC Core §3.1.3.6, §3.3.2.11; FAPI's s_hash) are in no access token.
    if (ID_TOKEN_CLAIMS.some((claim) => Object.hasOwn(payload, claim))) {
      return bad('unexpected token type', options.negativeCacheMs);
    }
    if (clientIds !== undefined) {
      const refused = audienceOrClient(payload, audience, clientIds);
      if (refused !== undefined) return bad(refused, options.negativeCacheMs);
    }
    return { ok: true, payload: { claims: payload, header: protectedHeader } };
  };
  const verify = (
    token: string,
    issuer: string,
    now: number,
  ): PayloadResult<JwtPayload> | Promise<PayloadResult<JwtPayload>> => {
    try {
      const verified = verifyJwt(token, keySetFor(issuer), rules, issuer, now);
      if (!(verified instanceof Promise)) return judge(verified);
      return verified.then(judge, (err: unknown) => classify(err, options.negativeCacheMs));
    } catch (err) {
      return classify(err, options.negativeCacheMs);
    }
  };

  const check = (token: string, now: number): PayloadResult<JwtPayload> | Promise<PayloadResult<JwtPayload>> => {
    // Fast path without a promise to wait on: one issuer.
    if (single !== undefined) return verify(token, single, now);
    return trustedIssuer(token).then(
      (issuer) =>
        issuer === undefined ? bad('unexpected issuer', options.negativeCacheMs) : verify(token, issuer, now),
      (err: unknown) => classify(err, options.negativeCacheMs),
    );
  };

  return {
    check,
    getPayload(token: string, context: ProviderContext): Promise<PayloadResult<JwtPayload>> {
      const result = check(token, context.now);
      return result instanceof Promise ? result : Promise.resolve(result);
    },
    isValid: () => true, // jose checked exp, nbf, iat with the clock tolerance
    getUid: (p) => uidOf(p.claims as Claims, options.uidClaim),
    getIssuer: (p) => stringClaim(p.claims as Claims, 'iss'),
    getCredentials: (p) => ({ scopes: scopesOf(p.claims as Claims), expiresAt: expiresAtOf(p.claims as Claims) }),
    getInfo: (p) => infoOf(p.claims as Claims),
    getExtra: (p) => ({ claims: p.claims as Claims, header: p.header as Readonly<Record<string, unknown>> }),
  };
}

/**
 * The audience check with `clientIdsWithoutAudience` (Amazon Cognito's access tokens carry no `aud`, their
 * client in `client_id` and their kind in `token_use`): a token with `aud`, in any form, is judged by `aud`
 * alone, exactly as without the option; only a token without `aud` is judged by its `client_id` (RFC 9068
 * §2.2). A `token_use` other than `access` is refused first: Cognito's ID tokens carry `aud` = the client id
 * and `token_use: "id"`, and must not pass for access tokens whatever the configured audience. Returns why the
 * token is refused, or `undefined`.
 */
function audienceOrClient(
  claims: JWTPayload,
  audience: readonly string[],
  clientIds: readonly string[],
): string | undefined {
  const use = claims['token_use'];
  if (use !== undefined && use !== 'access') return 'unexpected token use';
  if (Object.hasOwn(claims, 'aud')) return audiencePresent(claims.aud, audience) ? undefined : 'unexpected audience';
  const clientId = claims['client_id'];
  if (clientId === undefined) return 'missing required claim';
  return typeof clientId === 'string' && clientIds.includes(clientId) ? undefined : 'unexpected client';
}

/** Claims only an ID token has: the hashes of the access token, code and state issued with it. */
const ID_TOKEN_CLAIMS = ['at_hash', 'c_hash', 's_hash'] as const;

function isAccessTokenTyp(typ: unknown): boolean {
  if (typeof typ !== 'string') return false;
  const t = typ.toLowerCase();
  return t === 'jwt' || t === 'at+jwt' || t === 'application/jwt' || t === 'application/at+jwt';
}

function bad(description: string, cacheForMs: number): PayloadResult<never> {
  return { ok: false, error: 'invalid_token', description, cacheForMs };
}

/**
 * Sorts what jose and the transport throw into "the token is bad" (401) and "the keys could not be had"
 * (503). Failures of claims checked after a good signature may be remembered; the rest are not (a new key
 * may appear, an `nbf` may pass).
 */
function classify(err: unknown, negativeCacheMs: number): PayloadResult<never> {
  const code = (err as { code?: unknown } | null)?.code;
  if (err instanceof TokenwardenError) return unavailable(err);
  switch (code) {
    case 'ERR_JWT_EXPIRED': {
      const claim = (err as { claim?: string }).claim;
      return bad(claim === 'iat' ? 'token too old' : 'token expired', negativeCacheMs);
    }
    case 'ERR_JWT_CLAIM_VALIDATION_FAILED': {
      const { claim, reason } = err as { claim?: string; reason?: string };
      if (claim === 'nbf') return bad('token not yet valid', 0);
      if (reason === 'missing') return bad('missing required claim', negativeCacheMs);
      if (claim === 'iss') return bad('unexpected issuer', negativeCacheMs);
      if (claim === 'aud') return bad('unexpected audience', negativeCacheMs);
      if (claim === 'typ') return bad('unexpected token type', negativeCacheMs);
      if (claim === 'iat') return bad('token issued in the future', 0);
      return bad('invalid claims', negativeCacheMs);
    }
    case 'ERR_JWS_SIGNATURE_VERIFICATION_FAILED':
      return bad('invalid signature', 0);
    case 'ERR_JOSE_ALG_NOT_ALLOWED':
      return bad('algorithm not allowed', 0);
    case 'ERR_JWKS_NO_MATCHING_KEY':
      return bad('unknown signing key', 0);
    case 'ERR_JWKS_MULTIPLE_MATCHING_KEYS':
      return bad('ambiguous signing key', 0);
    case 'ERR_JOSE_NOT_SUPPORTED':
      return bad('unsupported token', 0);
    case 'ERR_JWS_INVALID':
    case 'ERR_JWT_INVALID':
    case 'ERR_JWK_INVALID':
      return bad('malformed token', 0);
    case 'ERR_JWKS_INVALID': // a member of the set that is not a public key
      return unavailable(new TokenwardenError('ERR_INVALID_RESPONSE', 'the JWKS holds a key that is not a public key'));
    default:
      return unavailable(
        new TokenwardenError('ERR_UNSUPPORTED', 'JWT verification failed unexpectedly', { cause: err }),
      );
  }
}

function unavailable(cause: TokenwardenError): PayloadResult<never> {
  return { ok: false, error: 'temporarily_unavailable', description: 'token could not be verified now', cause };
}
