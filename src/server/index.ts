/**
 * `tokenwarden/server`: validate access tokens on a resource server — JWT access tokens against the
 * issuer's JWKS, opaque tokens by introspection, or any scheme through a provider; bearer or DPoP-bound
 * (RFC 9449, the proof checked on every request) — with a bounded cache whose entries never outlive the
 * token. While the authorization server is down, the last known keys keep verifying JWTs and every endpoint
 * of it is backed off; `verify.health()` and events tell how it is going. Resources describe themselves to
 * clients (RFC 9728 Protected Resource Metadata). Framework middleware lives in `tokenwarden/express`,
 * `tokenwarden/fastify`, `tokenwarden/koa`, `tokenwarden/hono` and `tokenwarden/node`.
 *
 * @example
 * ```ts
 * import { createVerifier } from 'tokenwarden/server';
 * const verify = createVerifier({ issuer: 'https://login.example.com', audience: 'https://api.example.com' });
 * const result = await verify(request.headers.get('authorization'));
 * ```
 *
 * @module
 */
export { ValidationCache, cacheKey } from './cache.js';
export type { DPoPNonce, DPoPOptions } from './dpop.js';
export {
  type ChallengeOptions,
  type DPoPChallenge,
  type FailureResponse,
  type VerifyErrorCode,
  type VerifyFailure,
  challenge,
  failure,
  failureResponse,
} from './errors.js';
export { type NodeRequestLike, type TokenLocation, type VerifyInput, extractToken } from './extract.js';
export { ASYMMETRIC_ALGORITHMS, RFC9068_CLAIMS } from './jwt.js';
export type { KeySetEvents, KeySetHealth } from './keys.js';
export type { EndpointHealth, EndpointKind, UpstreamEvents } from './upstream.js';
export type {
  Auth,
  AuthExtra,
  AuthInfo,
  Claims,
  Credentials,
  PayloadResult,
  ProviderContext,
  ProviderExtra,
  VerifierProvider,
} from './provider.js';
export {
  type AuthorizationRequirements,
  type ClaimCheck,
  type IntrospectionOptions,
  type JwksOptions,
  type Strategy,
  type Verifier,
  type VerifierEvents,
  type VerifierHealth,
  type VerifierOptions,
  type VerifyCallOptions,
  type VerifyResult,
  createVerifier,
  requirements,
} from './verifier.js';
export {
  PROTECTED_RESOURCE_WELL_KNOWN,
  type MetadataResponse,
  type ProtectedResource,
  type ProtectedResourceMetadata,
  type ProtectedResourceOptions,
  protectedResource,
  protectedResourceMetadata,
  protectedResourceMetadataUrl,
} from './protected-resource.js';
export { type AuthenticateOutcome, type BearerAuthOptions, authenticator } from './adapters/shared.js';
export { TokenwardenError, isTokenwardenError, type ErrorCode } from '../errors.js';
export type { BackoffOptions } from '../policy.js';
export { ManualClock, systemClock, type Clock } from '../clock.js';
