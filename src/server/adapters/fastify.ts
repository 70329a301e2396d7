/**
 * `tokenwarden/fastify`: access token (bearer or DPoP) checks for Fastify. Sets `request.auth`, or answers
 * 401/400/403/503 per RFC 6750 and RFC 9449.
 *
 * The plugin is marked with `Symbol.for('skip-override')`, which is all `fastify-plugin` does that matters
 * here: its hook then applies to the context the plugin is registered in (and that context's children),
 * not to an empty child context. Register it inside an encapsulated context to protect only some routes,
 * or use {@link bearerAuthHook} per route. No dependency on fastify or fastify-plugin.
 *
 * @module
 */
import type { Auth } from '../provider.js';
import type { NodeRequestLike } from '../extract.js';
import { TokenwardenError } from '../../errors.js';
import { protectedResourceMetadataUrl } from '../protected-resource.js';
import { type AuthenticateOutcome, type BearerAuthOptions, authenticateNow } from './shared.js';

export type { BearerAuthOptions } from './shared.js';
export type { Auth } from '../provider.js';

/**
 * The parts of a Fastify request the hook reads and writes.
 *
 * @example
 * ```ts
 * declare module 'fastify' {
 *   interface FastifyRequest { auth?: Auth | null }
 * }
 * ```
 */
export interface FastifyRequestLike {
  raw: NodeRequestLike;
  /** `raw.headers`, or those merged with the ones a hook set (`request.headers = { … }`). */
  headers?: NodeRequestLike['headers'];
  body?: unknown;
  auth?: Auth | null | undefined;
}

/**
 * The parts of a Fastify reply the hook writes to.
 *
 * @example
 * ```ts
 * app.get('/me', { onRequest: bearerAuthHook(options) }, handler); // Fastify passes its request and reply
 * ```
 */
export interface FastifyReplyLike {
  code(status: number): FastifyReplyLike;
  header?(name: string, value: string): unknown;
  headers(headers: Record<string, string>): FastifyReplyLike;
  send(body: unknown): FastifyReplyLike;
}

/**
 * The parts of a Fastify instance the plugin uses. `addHook` is typed loosely on purpose: Fastify's own
 * overloads are generic, and all of them must be accepted without importing Fastify's types.
 *
 * @example
 * ```ts
 * await app.register(bearerAuth, options); // any FastifyInstance is a FastifyInstanceLike
 * ```
 */
export interface FastifyInstanceLike {
  addHook: (...args: never[]) => unknown;
  decorateRequest(name: 'auth', value: null): unknown;
  hasRequestDecorator(name: string): boolean;
  /** Used to add the RFC 9728 metadata route when `protectedResource` is set. */
  route?: (...args: never[]) => unknown;
  hasRoute?: (...args: never[]) => boolean;
  /** The context's route prefix (`register(plugin, { prefix })`): `''` where none applies. */
  prefix?: string;
}

type Hook = ReturnType<typeof bearerAuthHook>;
type Handler = (request: FastifyRequestLike, reply: FastifyReplyLike) => Promise<FastifyReplyLike | undefined>;
type AddHook = (name: 'onRequest' | 'preValidation', hook: Hook) => unknown;
type Route = (route: { method: string[]; url: string; handler: Handler }) => unknown;
type HasRoute = (route: { method: string; url: string }) => boolean;

/**
 * A Fastify hook (for `onRequest`, or `preValidation` when tokens may come in the body) that verifies
 * the access token (bearer, or DPoP with its proof, checked against the raw request's method, its
 * `originalUrl ?? url` and `Host`) and sets `request.auth`. Use it per route.
 *
 * It is a callback-style hook (`done` is its third argument): a token the verifier already knows is
 * answered in the same tick, without a promise; otherwise it returns a promise, which Fastify awaits.
 * Called without `done`, it always returns a promise.
 *
 * @example
 * ```ts
 * import { bearerAuthHook } from 'tokenwarden/fastify';
 * app.post('/write', { onRequest: bearerAuthHook({ issuer, audience, requiredScopes: ['write'] }) }, handler);
 * ```
 */
export function bearerAuthHook(
  options: BearerAuthOptions,
): (
  request: FastifyRequestLike,
  reply: FastifyReplyLike,
  done?: (err?: Error) => void,
) => Promise<FastifyReplyLike | undefined> | undefined {
  const authenticate = authenticateNow(options);
  /** Answers the request (returns the reply) or sets `auth` (returns `undefined`). */
  const apply = (
    request: FastifyRequestLike,
    reply: FastifyReplyLike,
    outcome: AuthenticateOutcome,
  ): FastifyReplyLike | undefined => {
    if (outcome.response) {
      const { status, headers, body } = outcome.response;
      return reply.code(status).headers(headers).send(body);
    }
    if (outcome.headers !== undefined)
      for (const name in outcome.headers) reply.header?.(name, outcome.headers[name] as string);
    request.auth = outcome.auth;
    return undefined;
  };
  return (request, reply, done) => {
    let outcome: AuthenticateOutcome | Promise<AuthenticateOutcome>;
    try {
      outcome = authenticate(nodeRequestOf(request), request.body);
    } catch (err) {
      if (done === undefined) return Promise.reject(err as Error);
      done(err as Error);
      return undefined;
    }
    if (outcome instanceof Promise) return outcome.then((o) => apply(request, reply, o));
    const sent = apply(request, reply, outcome);
    // Fastify goes on when `done` is called; after a reply it must not be (the reply ends the request).
    if (done === undefined) return Promise.resolve(sent);
    if (sent === undefined) done();
    return undefined;
  };
}

/**
 * The request to check: `request.raw`, unless a hook before this one set headers the Fastify way
 * (`request.headers = { authorization }`, which Fastify merges over the raw ones without changing them):
 * then the raw request with those headers.
 */
function nodeRequestOf(request: FastifyRequestLike): NodeRequestLike {
  const { raw, headers } = request;
  if (headers === undefined || headers === raw.headers) return raw;
  const { rawHeaders, url, originalUrl, method, socket } = raw;
  return { headers, rawHeaders, url, originalUrl, method, socket } as NodeRequestLike;
}

/**
 * A Fastify plugin that verifies the access token of every request in the context it is registered in
 * and sets `request.auth`. With `protectedResource`, it also adds the route of the RFC 9728 metadata
 * document to that context (GET and HEAD answered, OPTIONS as a CORS preflight, other methods 405): register
 * it where no `prefix` applies (under one, registering throws `ERR_CONFIG`).
 *
 * @example
 * ```ts
 * import Fastify from 'fastify';
 * import { bearerAuth } from 'tokenwarden/fastify';
 * const app = Fastify();
 * await app.register(async (api) => {
 *   await api.register(bearerAuth, { issuer, audience: 'https://api.example.com' });
 *   api.get('/read', async (request) => ({ uid: request.auth?.uid }));
 * });
 * ```
 */
export const bearerAuth = Object.assign(
  async function bearerAuth(fastify: FastifyInstanceLike, options: BearerAuthOptions): Promise<void> {
    const hook = bearerAuthHook(options);
    const handler: Handler = async (request, reply) => hook(request, reply);
    if (!fastify.hasRequestDecorator('auth')) fastify.decorateRequest('auth', null);
    const usesBody = 'tokenLocations' in options && options.tokenLocations?.includes('body') === true;
    (fastify.addHook as AddHook).call(fastify, usesBody ? 'preValidation' : 'onRequest', hook);
    if (options.protectedResource !== undefined) {
      // Fastify runs hooks only for routes it has: the metadata document needs one. Its hook answers it
      // before any token check; the handler does the same, should another hook run first.
      const url = new URL(protectedResourceMetadataUrl(options.protectedResource.resource)).pathname;
      if (typeof fastify.route !== 'function') {
        throw new TokenwardenError('ERR_CONFIG', 'protectedResource needs a Fastify instance (route())');
      }
      // Under a prefix the route would be `${prefix}/.well-known/…`, where no client looks, and the hook
      // never sees the real path: the document would be a 404 there and a 401 here. Say so now.
      if (typeof fastify.prefix === 'string' && fastify.prefix !== '') {
        throw new TokenwardenError(
          'ERR_CONFIG',
          `protectedResource: the Fastify plugin is registered under the prefix ${JSON.stringify(fastify.prefix)}, where its metadata route would be ${JSON.stringify(fastify.prefix + url)}; register it in a context without a prefix (the prefixed routes in a child of that context)`,
        );
      }
      const exists = (fastify.hasRoute as HasRoute | undefined)?.call(fastify, { method: 'GET', url }) === true;
      if (!exists)
        (fastify.route as Route).call(fastify, {
          method: ['GET', 'OPTIONS', 'POST', 'PUT', 'PATCH', 'DELETE'],
          url,
          handler,
        });
    }
  },
  {
    [Symbol.for('skip-override')]: true,
    [Symbol.for('fastify.display-name')]: 'tokenwarden-bearer-auth',
  },
);
