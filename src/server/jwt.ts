/**
 * The JWT strategy: JWT access tokens verified locally against the issuer's JWKS (RFC 9068, RFC 8725).
 *
 * Keys come from the `jwks_uri` of the issuer's discovered metadata (or an explicit `jwksUri`) through
 * jose's remote key set: cached for `cacheMaxAge`, refetched for an unknown `kid` at most once per
 * `cooldown`, so tokens with random `kid`s cannot make us hammer the authorization server. Fetches go
 * through tokenwarden's transport (injectable `fetch`, timeout, body cap).
 *
 * @module
 */
import {
  type JWSHeaderParameters,
  type JWTPayload,
  type JWTVerifyOptions,
  type RemoteJWKSet,
  createRemoteJWKSet,
  customFetch,
  decodeJwt,
  jwtVerify,
} from 'jose';
import type { Clock } from '../clock.js';
import { TokenwardenError } from '../errors.js';
import { type FetchLike, boundedFetch, describeUrl } from '../http/transport.js';
import { checkUrl } from '../sources/client.js';
import { type DiscoveryAlgorithm, discover } from '../sources/discovery.js';
import {
  type Claims,
  type PayloadResult,
  type ProviderContext,
  type VerifierProvider,
  expiresAtOf,
  infoOf,
  scopesOf,
  stringClaim,
  uidOf,
} from './provider.js';

/**
 * Asymmetric JWS algorithms: the default allow-list, and the only ones accepted.
 *
 * @example
 * ```ts
 * createVerifier({ issuer, audience, algorithms: ASYMMETRIC_ALGORITHMS.filter((a) => a.startsWith('ES')) });
 * ```
 */
export const ASYMMETRIC_ALGORITHMS = [
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
] as const;

/**
 * Claims RFC 9068 §2.2 requires in a JWT access token (checked with `strict: true`).
 *
 * @example
 * ```ts
 * createVerifier({ issuer, audience, strict: true }); // typ at+jwt, and every claim of RFC9068_CLAIMS
 * ```
 */
export const RFC9068_CLAIMS = ['iss', 'exp', 'aud', 'sub', 'client_id', 'iat', 'jti'] as const;

/** Which issuers are trusted: a fixed list, or a function deciding for an `iss` it is shown. */
export type IssuerPolicy = { list: readonly string[] } | { resolve: (iss: string) => boolean | Promise<boolean> };

/** Resolved options of the JWT strategy (built by `createVerifier`). */
export interface JwtStrategyOptions {
  issuers: IssuerPolicy;
  audience: string | string[];
  jwksUri?: string | undefined;
  algorithms: string[];
  clockToleranceSec: number;
  maxTokenAgeSec?: number | undefined;
  strict: boolean;
  requiredClaims: string[];
  uidClaim?: string | undefined;
  cooldownMs: number;
  jwksCacheMaxAgeMs: number;
  /** How long a token whose signature is good but whose claims are not is remembered as bad. */
  negativeCacheMs: number;
  fetch?: FetchLike | undefined;
  timeoutMs: number;
  maxResponseBytes: number;
  allowInsecureRequests: boolean;
  discovery: DiscoveryAlgorithm;
  clock: Clock;
}

/** The payload the JWT strategy hands the verifier. */
export interface JwtPayload {
  readonly claims: JWTPayload;
  readonly header: JWSHeaderParameters;
}

/** Issuers whose key sets are kept when issuers come from a resolver. */
const MAX_KEY_SETS = 100;

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
export function jwtStrategy(options: JwtStrategyOptions): VerifierProvider<JwtPayload> {
  const keySets = new Map<string, Promise<RemoteJWKSet>>();
  // The settled key sets, so that the common path does not wait on an already settled promise.
  const ready = new Map<string, RemoteJWKSet>();
  const single = 'list' in options.issuers && options.issuers.list.length === 1 ? options.issuers.list[0] : undefined;
  const jwksFetch = jwksTransport(options);

  const remoteSet = (jwksUri: string): RemoteJWKSet =>
    createRemoteJWKSet(new URL(checkUrl(jwksUri, 'jwks_uri', options.allowInsecureRequests)), {
      timeoutDuration: Math.ceil(options.timeoutMs),
      cooldownDuration: options.cooldownMs,
      cacheMaxAge: options.jwksCacheMaxAgeMs,
      [customFetch]: jwksFetch,
    });

  const keySetFor = (issuer: string): Promise<RemoteJWKSet> => {
    const id = options.jwksUri ?? issuer;
    let set = keySets.get(id);
    if (set === undefined) {
      set =
        options.jwksUri !== undefined
          ? Promise.resolve(remoteSet(options.jwksUri))
          : discover(issuer, {
              clock: options.clock,
              algorithm: options.discovery,
              allowInsecureRequests: options.allowInsecureRequests,
              timeoutMs: options.timeoutMs,
              maxResponseBytes: options.maxResponseBytes,
              ...(options.fetch && { fetch: options.fetch }),
            }).then((metadata) => {
              if (typeof metadata.jwks_uri !== 'string') {
                throw new TokenwardenError('ERR_DISCOVERY', 'the issuer metadata has no jwks_uri');
              }
              return remoteSet(metadata.jwks_uri);
            });
      // A failed discovery is not kept: the next request tries again.
      set.then(
        (value) => {
          if (keySets.get(id) === set) ready.set(id, value);
        },
        () => {
          if (keySets.get(id) === set) keySets.delete(id);
        },
      );
      if (keySets.size >= MAX_KEY_SETS) {
        const oldest = keySets.keys().next().value as string;
        keySets.delete(oldest);
        ready.delete(oldest);
      }
      keySets.set(id, set);
    }
    return set;
  };

  const trustedIssuer = async (token: string): Promise<string | undefined> => {
    const iss = decodeJwt(token).iss;
    if (typeof iss !== 'string') return undefined;
    const trusted = 'list' in options.issuers ? options.issuers.list.includes(iss) : await options.issuers.resolve(iss);
    return trusted === true ? iss : undefined;
  };

  const baseVerifyOptions: JWTVerifyOptions = {
    algorithms: options.algorithms,
    audience: options.audience,
    clockTolerance: options.clockToleranceSec,
    requiredClaims: options.strict
      ? [...RFC9068_CLAIMS, ...options.requiredClaims]
      : ['exp', ...options.requiredClaims],
    ...(options.maxTokenAgeSec !== undefined && { maxTokenAge: options.maxTokenAgeSec }),
    ...(options.strict && { typ: 'at+jwt' }),
  };

  return {
    async getPayload(token: string, context: ProviderContext): Promise<PayloadResult<JwtPayload>> {
      try {
        // Fast paths without a promise to wait on: one issuer, key set already fetched.
        const issuer = single ?? (await trustedIssuer(token));
        if (issuer === undefined) return bad('unexpected issuer', options.negativeCacheMs);
        const keySet = ready.get(options.jwksUri ?? issuer) ?? (await keySetFor(issuer));
        const { payload, protectedHeader } = await jwtVerify(token, keySet, {
          ...baseVerifyOptions,
          issuer,
          currentDate: new Date(context.now),
        });
        // RFC 8725 §3.11 explicit typing: without `strict`, a typ other than JWT / at+jwt is another kind of JWT.
        if (!options.strict && protectedHeader.typ !== undefined && !isAccessTokenTyp(protectedHeader.typ)) {
          return bad('unexpected token type', options.negativeCacheMs);
        }
        return { ok: true, payload: { claims: payload, header: protectedHeader } };
      } catch (err) {
        return classify(err, options.negativeCacheMs);
      }
    },
    isValid: () => true, // jose checked exp, nbf, iat with the clock tolerance
    getUid: (p) => uidOf(p.claims as Claims, options.uidClaim),
    getIssuer: (p) => stringClaim(p.claims as Claims, 'iss'),
    getCredentials: (p) => ({ scopes: scopesOf(p.claims as Claims), expiresAt: expiresAtOf(p.claims as Claims) }),
    getInfo: (p) => infoOf(p.claims as Claims),
    getExtra: (p) => ({ claims: p.claims as Claims, header: p.header as Readonly<Record<string, unknown>> }),
  };
}

function isAccessTokenTyp(typ: string): boolean {
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
    case 'ERR_JWKS_TIMEOUT':
      return unavailable(new TokenwardenError('ERR_TIMEOUT', 'JWKS request timed out', { cause: err }));
    case 'ERR_JWKS_INVALID':
      return unavailable(new TokenwardenError('ERR_INVALID_RESPONSE', 'the JWKS is not a JSON Web Key Set'));
    default:
      return unavailable(
        new TokenwardenError('ERR_UNSUPPORTED', 'JWT verification failed unexpectedly', { cause: err }),
      );
  }
}

function unavailable(cause: TokenwardenError): PayloadResult<never> {
  return { ok: false, error: 'temporarily_unavailable', description: 'token could not be verified now', cause };
}

/** The transport for JWKS requests: bounded, and strict about what counts as a key set response. */
function jwksTransport(options: JwtStrategyOptions) {
  const transport = boundedFetch({
    timeoutMs: options.timeoutMs,
    maxResponseBytes: options.maxResponseBytes,
    ...(options.fetch && { fetch: options.fetch }),
  });
  return async (url: string, init: RequestInit): Promise<Response> => {
    const response = await transport(url, init);
    if (response.status !== 200) {
      throw new TokenwardenError('ERR_HTTP_STATUS', `JWKS request to ${describeUrl(url)} answered ${response.status}`, {
        status: response.status,
      });
    }
    const text = await response.text();
    try {
      JSON.parse(text);
    } catch {
      throw new TokenwardenError('ERR_INVALID_RESPONSE', `JWKS from ${describeUrl(url)} is not JSON`);
    }
    return new Response(text, { status: 200, headers: { 'content-type': 'application/json' } });
  };
}
