import { randomUUID } from 'node:crypto';
import { TokenwardenError } from '../errors.js';
import { type ClientOptions, GrantSource, OAuthClient, hashSecret } from './client.js';
import { checkCredentialInput, isFileCredential, readCredential } from './credential.js';

/**
 * A token given to a token exchange: a string, a function returning one (called on every exchange),
 * `{ file }` — a file read on every exchange, such as a Kubernetes projected service-account token the
 * kubelet rotates — or anything with `getAccessToken()` — such as another `TokenManager`, whose token is
 * then always fresh. "Every exchange" includes the one resend a token request may make (a DPoP nonce
 * demanded, a connection reset before any answer): a function minting one-time tokens mints another.
 *
 * @example
 * ```ts
 * const subject: SubjectTokenInput = () => request.headers.authorization!.slice('Bearer '.length);
 * const projected: SubjectTokenInput = { file: '/var/run/secrets/tokens/exchange-token' };
 * ```
 */
export type SubjectTokenInput =
  | string
  | (() => string | Promise<string>)
  | { file: string }
  | { getAccessToken(): Promise<string>; readonly key?: string };

/**
 * URN of an OAuth access token (RFC 8693 §3).
 *
 * @example
 * ```ts
 * tokenExchange({ issuer, clientId, clientSecret, subjectToken, subjectTokenType: ACCESS_TOKEN_TYPE });
 * ```
 */
export const ACCESS_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:access_token';

/**
 * Options for {@link tokenExchange}.
 *
 * @example
 * ```ts
 * const options: TokenExchangeOptions = { issuer, clientId, clientSecret, subjectToken: userToken, audience: 'https://orders.example.com' };
 * ```
 */
export interface TokenExchangeOptions extends ClientOptions {
  /** The token to exchange. */
  subjectToken: SubjectTokenInput;
  /** Its type. Default: `urn:ietf:params:oauth:token-type:access_token`. */
  subjectTokenType?: string;
  /** The actor's token, for delegation. */
  actorToken?: SubjectTokenInput;
  /** The actor token's type. Default: access token. Only with `actorToken` (RFC 8693 §2.1). */
  actorTokenType?: string;
  /** The type of token wanted (`requested_token_type`). */
  requestedTokenType?: string;
}

/**
 * The token exchange grant (RFC 8693): trade a token (for example the caller's) for one meant for
 * another audience or resource.
 *
 * Store key: derived from the options and, for a static subject token, its hash; for `{ file }`, the path
 * (every process reading that file shares the token); for a function the key is unique to this instance (no sharing across processes) unless you pass `key` — do so only when
 * every process exchanges the same subject.
 *
 * @example
 * ```ts
 * import { TokenManager, clientCredentials, tokenExchange } from 'tokenwarden';
 * const own = new TokenManager({ source: clientCredentials({ issuer, clientId: 'gw', clientSecret }) });
 * const downstream = new TokenManager({
 *   source: tokenExchange({ issuer, clientId: 'gw', clientSecret, subjectToken: own, audience: 'https://orders.example.com' }),
 * });
 * ```
 */
export function tokenExchange(options: TokenExchangeOptions): GrantSource {
  if (options.subjectToken === undefined || options.subjectToken === '') {
    throw new TokenwardenError('ERR_CONFIG', 'subjectToken is required');
  }
  if (isFileCredential(options.subjectToken)) checkCredentialInput(options.subjectToken, 'subjectToken');
  if (isFileCredential(options.actorToken)) checkCredentialInput(options.actorToken, 'actorToken');
  if (options.actorTokenType !== undefined && options.actorToken === undefined) {
    // RFC 8693 §2.1: actor_token_type goes only with an actor_token; alone it says the actor token was forgotten.
    throw new TokenwardenError('ERR_CONFIG', 'actorTokenType is given without actorToken');
  }
  const client = new OAuthClient(options);
  const grant = 'urn:ietf:params:oauth:grant-type:token-exchange';
  return new GrantSource(
    'token_exchange',
    client,
    client.keyFor('token_exchange', {
      subject: identityOf(options.subjectToken),
      actor: options.actorToken === undefined ? null : identityOf(options.actorToken),
      subjectTokenType: options.subjectTokenType ?? ACCESS_TOKEN_TYPE,
      requestedTokenType: options.requestedTokenType ?? null,
    }),
    ({ signal }) =>
      // Resolved for each request sent, a resend included: a subject or actor token made for one use (a JWT whose
      // jti the server remembers) is made anew rather than sent twice.
      client.tokenRequest(
        grant,
        async () => {
          const params = new URLSearchParams({
            subject_token: await resolveToken(options.subjectToken, 'subjectToken'),
            subject_token_type: options.subjectTokenType ?? ACCESS_TOKEN_TYPE,
          });
          if (options.actorToken !== undefined) {
            params.set('actor_token', await resolveToken(options.actorToken, 'actorToken'));
            params.set('actor_token_type', options.actorTokenType ?? ACCESS_TOKEN_TYPE);
          }
          if (options.requestedTokenType) params.set('requested_token_type', options.requestedTokenType);
          return params;
        },
        { signal },
      ),
  );
}

/**
 * Resolves a {@link SubjectTokenInput} to the token string. A `{ file }` that is missing, empty or unreadable
 * is `ERR_CREDENTIAL` naming the path.
 */
export async function resolveToken(input: SubjectTokenInput, name: string): Promise<string> {
  if (isFileCredential(input)) return readCredential(input, name);
  const value =
    typeof input === 'string' ? input : typeof input === 'function' ? await input() : await input.getAccessToken();
  if (typeof value !== 'string' || value === '') {
    throw new TokenwardenError('ERR_CONFIG', `${name} did not produce a token`);
  }
  return value;
}

function identityOf(input: SubjectTokenInput): string {
  if (typeof input === 'string') return `static:${hashSecret(input)}`;
  // Processes reading the same file exchange the same (rotating) identity: they may share the token.
  if (isFileCredential(input)) return `file:${input.file}`;
  if (typeof input === 'object' && 'key' in input && typeof input.key === 'string') return `source:${input.key}`;
  return `instance:${randomUUID()}`;
}
