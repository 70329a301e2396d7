import { type ClientOptions, GrantSource, OAuthClient } from './client.js';

/**
 * Options for {@link clientCredentials}: the common {@link ClientOptions}. `scope`, `resource`,
 * `audience` and `extraParams` are sent with every request.
 *
 * @example
 * ```ts
 * const options: ClientCredentialsOptions = { issuer, clientId: 'svc', clientSecret, audience: 'https://api.example.com' };
 * ```
 */
export type ClientCredentialsOptions = ClientOptions;

/**
 * The client credentials grant (RFC 6749 §4.4): a service's own token.
 *
 * @example
 * ```ts
 * import { TokenManager, clientCredentials } from 'tokenwarden';
 * const manager = new TokenManager({
 *   source: clientCredentials({ issuer: 'https://login.example.com', clientId: 'svc', clientSecret: process.env.SECRET, scope: 'read' }),
 * });
 * const token = await manager.getAccessToken();
 * ```
 */
export function clientCredentials(options: ClientCredentialsOptions): GrantSource {
  const client = new OAuthClient(options);
  return new GrantSource('client_credentials', client, client.keyFor('client_credentials'), ({ signal }) =>
    client.tokenRequest('client_credentials', new URLSearchParams(), { signal }),
  );
}
