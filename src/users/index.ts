/**
 * `UserTokens` and its public types.
 *
 * @module
 */
export {
  type AccessTokenRequest,
  type ClaimsInfo,
  type GetClaimsOptions,
  MAX_SUBJECT_LENGTH,
  type RevokeResult,
  type SaveOptions,
  type StoredAccessToken,
  type UserTokensEvents,
  type UserTokensOptions,
} from './options.js';
export { UserTokens } from './user-tokens.js';
