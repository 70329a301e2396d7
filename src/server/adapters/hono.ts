/**
 * `tokenwarden/hono`: access token (bearer or DPoP) middleware for Hono. Sets `c.get('auth')`, or answers
 * 401/400/403/503 per RFC 6750 and RFC 9449.
 *
 * @module
 */
import type { Auth } from '../provider.js';
import { type BearerAuthOptions, authenticator } from './shared.js';

export type { BearerAuthOptions } from './shared.js';
export type { Auth } from '../provider.js';

/**
 * The context variables the middleware sets, for `new Hono<{ Variables: BearerAuthVariables }>()`.
 *
 * @example
 * ```ts
 * const app = new Hono<{ Variables: BearerAuthVariables }>();
 * app.get('/me', bearerAuth(options), (c) => c.json({ uid: c.get('auth').uid }));
 * ```
 */
export interface BearerAuthVariables {
  auth: Auth;
}

/**
 * The parts of a Hono context the middleware reads and writes.
 *
 * @example
 * ```ts
 * app.use('/api/*', bearerAuth(options)); // every Hono Context is a HonoContextLike
 * ```
 */
export interface HonoContextLike {
  req: { raw: Request };
  set(key: 'auth', value: Auth): void;
  /** Sets a header of the response (a new `DPoP-Nonce`). */
  header?(name: string, value: string): void;
}

/**
 * Hono middleware that verifies the access token (bearer, or DPoP with its proof, checked against the
 * `Request`'s method and URL) and sets the `auth` variable. Works on every runtime Hono runs on that has
 * `node:crypto`.
 *
 * @example
 * ```ts
 * import { Hono } from 'hono';
 * import { bearerAuth, type BearerAuthVariables } from 'tokenwarden/hono';
 * const app = new Hono<{ Variables: BearerAuthVariables }>();
 * app.get('/read', bearerAuth({ issuer, audience: 'https://api.example.com' }), (c) => c.json({ uid: c.get('auth').uid }));
 * ```
 */
export function bearerAuth(
  options: BearerAuthOptions,
): (c: HonoContextLike, next: () => Promise<void>) => Promise<Response | undefined> {
  const authenticate = authenticator(options);
  return async (c, next) => {
    const outcome = await authenticate(c.req.raw);
    if (outcome.response) {
      const { status, headers, body } = outcome.response;
      if (body === undefined) return new Response(null, { status, headers });
      return new Response(JSON.stringify(body), {
        status,
        headers: { ...headers, 'content-type': 'application/json; charset=utf-8' },
      });
    }
    if (outcome.headers !== undefined)
      for (const name in outcome.headers) c.header?.(name, outcome.headers[name] as string);
    if (outcome.auth !== undefined) c.set('auth', outcome.auth);
    await next();
    return undefined;
  };
}
