/**
 * `client_secret_basic` (RFC 6749 §2.3.1): the client id and secret form-encoded, joined by `:`, in Base64,
 * as an HTTP Basic credential.
 *
 * The encoding leaves RFC 3986's unreserved characters (`A–Z a–z 0–9 - . _ ~`) as they are and
 * percent-encodes every other byte, as golang/oauth2 (`url.QueryEscape`) and Python's `quote` do. A server
 * that decodes the credential, as §2.3.1 asks, reads the same id and secret either way (RFC 3986 §2.3: the
 * two forms are equivalent); a server that does not (`@node-oauth/oauth2-server`, and others built on a
 * plain Basic parser) still matches an id and a secret made of those characters — base64url secrets, and
 * Microsoft Entra ID's with `~` and `.`. oauth4webapi's `ClientSecretBasic` also encodes `- . _ ~`, which
 * such a server refuses as `invalid_client`.
 *
 * @module
 */
import type * as oauth from 'oauth4webapi';

/** One value of the credential: percent-encoded UTF-8, but for RFC 3986's unreserved characters. */
function encode(value: string): string {
  return encodeURIComponent(value).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
}

/**
 * `id:secret` as it is Base64-encoded into the Basic credential (both values encoded).
 *
 * @example
 * ```ts
 * basicUserPass('svc', 'a b_c~d'); // 'svc:a%20b_c~d'
 * ```
 */
export function basicUserPass(clientId: string, secret: string): string {
  return `${encode(clientId)}:${encode(secret)}`;
}

/**
 * The `client_secret_basic` method for `oauth4webapi`'s requests: sets `Authorization: Basic …`.
 *
 * @example
 * ```ts
 * const auth = clientSecretBasic(secret); // oauth4webapi.ClientAuth
 * ```
 */
export function clientSecretBasic(secret: string): oauth.ClientAuth {
  return (_as, client, _body, headers) => {
    const credential = Buffer.from(basicUserPass(client.client_id, secret), 'utf8').toString('base64');
    headers.set('authorization', `Basic ${credential}`);
  };
}
