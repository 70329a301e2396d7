/**
 * tokenwarden — the whole OAuth 2.0 token lifecycle for Node.js.
 *
 * @example
 * ```ts
 * import { TokenManager, clientCredentials } from 'tokenwarden';
 * const manager = new TokenManager({ source: clientCredentials({ issuer, clientId, clientSecret, scope: 'read' }) });
 * const res = await manager.fetch('https://api.example.com/things');
 * ```
 *
 * @module
 */
export { type Clock, type Timer, ManualClock, systemClock } from './clock.js';
export { type Duration, toMs } from './duration.js';
export { type ErrorCode, TokenwardenError, type TokenwardenErrorOptions, isTokenwardenError } from './errors.js';
export { type AuthFetchOptions, type RetryOn401, type TokenProvider, authFetch } from './http/auth-fetch.js';
export type { FetchLike } from './http/transport.js';
export { type ProxyOption, proxyFetch, proxyForUrl, redactProxyUrl } from './http/proxy.js';
export {
  type GetTokenOptions,
  type TokenInfo,
  TokenManager,
  type TokenManagerEvents,
  type TokenManagerOptions,
  isTransient,
} from './manager.js';
export {
  type BackoffOptions,
  type RefreshPolicy,
  type RefreshPolicyOptions,
  backoffDelay,
  parseRetryAfter,
  resolvePolicy,
  staleAt,
  statusAt,
} from './policy.js';
export {
  type ClientAuthMethod,
  type ClientOptions,
  GrantSource,
  OAuthClient,
  type PrivateKeyInput,
  deriveKey,
  importPrivateKey,
} from './sources/client.js';
export { type ClientCredentialsOptions, clientCredentials } from './sources/client-credentials.js';
export { type CredentialInput, MAX_CREDENTIAL_FILE_BYTES } from './sources/credential.js';
export { type DiscoverOptions, type DiscoveryAlgorithm, clearDiscoveryCache, discover } from './sources/discovery.js';
export { type JwtAssertionOptions, type JwtBearerOptions, jwtBearer } from './sources/jwt-bearer.js';
export { type RefreshTokenOptions, refreshToken } from './sources/refresh-token.js';
export type { FetchTokenContext, TokenSource } from './sources/source.js';
export {
  ACCESS_TOKEN_TYPE,
  type SubjectTokenInput,
  type TokenExchangeOptions,
  tokenExchange,
} from './sources/token-exchange.js';
export { Codec, type EncryptionKeyInput, type EncryptionOption, type EncryptionSettings } from './stores/codec.js';
export { FileStore, type FileStoreOptions } from './stores/file.js';
export { MemoryStore, type MemoryStoreOptions } from './stores/memory.js';
export type { LockOptions, SetOptions, StoreEvents, StoreLock, StoreRecord, TokenStore } from './stores/store.js';
export {
  type AccessTokenRequest,
  type ClaimsInfo,
  type GetClaimsOptions,
  MAX_SUBJECT_LENGTH,
  type RevokeResult,
  type SaveOptions,
  type StoredAccessToken,
  UserTokens,
  type UserTokensEvents,
  type UserTokensOptions,
} from './users/index.js';
export type { UserClaims } from './id-token.js';
export {
  type Token,
  type TokenStatus,
  isValid,
  parseStoredToken,
  remainingMs,
  serializeToken,
  tokenFromResponse,
} from './token.js';
