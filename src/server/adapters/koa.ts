/**
 * `tokenwarden/koa`: access token (bearer or DPoP) middleware for Koa. Sets `ctx.state.auth`, or answers
 * 401/400/403/503 per RFC 6750 and RFC 9449.
 *
 * @module
 */
import type { Auth } from '../provider.js';
import type { NodeRequestLike } from '../extract.js';
import { type AuthenticateOutcome, type BearerAuthOptions, authenticateNow } from './shared.js';

export type { BearerAuthOptions } from './shared.js';
export type { Auth } from '../provider.js';

/**
 * The parts of a Koa context the middleware reads and writes.
 *
 * @example
 * ```ts
 * app.use(bearerAuth(options)); // every Koa ctx is a KoaContextLike
 * app.use((ctx) => { ctx.body = ctx.state.auth?.uid; });
 * ```
 */
export interface KoaContextLike {
  req: NodeRequestLike;
  /** The request target before any middleware rewrote it (koa-mount, rewrites), for DPoP's `htu`. */
  originalUrl?: string;
  /** Koa's request; its `body`, when a body parser set one, is read for `tokenLocations: ['body']`. */
  request: object;
  state: { auth?: Auth | undefined } & Record<string, unknown>;
  status: number;
  body: unknown;
  set(headers: Record<string, string>): void;
}

/**
 * Koa middleware that verifies the access token (bearer, or DPoP with its proof, checked against the
 * method, `ctx.originalUrl` and `Host`) and sets `ctx.state.auth`.
 *
 * @example
 * ```ts
 * import Koa from 'koa';
 * import { bearerAuth } from 'tokenwarden/koa';
 * const app = new Koa();
 * app.use(bearerAuth({ issuer, audience: 'https://api.example.com', requiredScopes: ['read'] }));
 * app.use((ctx) => { ctx.body = { uid: ctx.state.auth.uid }; });
 * ```
 */
export function bearerAuth(
  options: BearerAuthOptions,
): (ctx: KoaContextLike, next: () => Promise<unknown>) => Promise<void> {
  const authenticate = authenticateNow(options);
  const apply = (ctx: KoaContextLike, next: () => Promise<unknown>, outcome: AuthenticateOutcome): Promise<void> => {
    if (outcome.response) {
      ctx.status = outcome.response.status;
      ctx.set(outcome.response.headers);
      if (outcome.response.body !== undefined) ctx.body = outcome.response.body;
      return Promise.resolve();
    }
    if (outcome.headers !== undefined) ctx.set({ ...outcome.headers });
    ctx.state.auth = outcome.auth;
    return next().then(ignore);
  };
  // Not an async function: a known token goes on to `next()` in the same tick.
  return (ctx, next) => {
    let outcome: AuthenticateOutcome | Promise<AuthenticateOutcome>;
    try {
      outcome = authenticate(ctx.req, (ctx.request as { body?: unknown }).body, ctx.originalUrl);
    } catch (err) {
      return Promise.reject(err as Error);
    }
    if (outcome instanceof Promise) return outcome.then((o) => apply(ctx, next, o));
    return apply(ctx, next, outcome);
  };
}

function ignore(): void {}
