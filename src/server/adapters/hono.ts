/**
 * `tokenwarden/hono`: access token (bearer or DPoP) middleware for Hono. Sets `c.get('auth')`, or answers
 * 401/400/403/503 per RFC 6750 and RFC 9449.
 *
 * @module
 */
import type { Env, Handler } from 'hono';
import type { BlankInput, Input } from 'hono/types';
import { type NodeRequestLike, hasFormBody } from '../extract.js';
import type { Auth } from '../provider.js';
import { type AuthenticateOutcome, type BearerAuthOptions, authenticateNow } from './shared.js';

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
  req: {
    raw: Request;
    /**
     * Hono's bodies read so far (`HonoRequest.bodyCache`): a form body that a middleware before this one read
     * with `c.req.parseBody()`, `formData()` or `text()` is found there (the raw body is used up then).
     */
    bodyCache?: object;
    /** The form body, from Hono's body cache. */
    formData?(): Promise<FormData>;
  };
  /** On `@hono/node-server`, `{ incoming, outgoing }`: the Node request is read directly when it is there. */
  env?: unknown;
  set(key: 'auth', value: Auth): void;
  /** Sets a header of the response (a new `DPoP-Nonce`). */
  header?(name: string, value: string): void;
  /** The response so far; set to the one a handler returned, so that `header()` reaches it. */
  res?: Response;
  /** Whether `res` holds the response of the chain. */
  finalized?: boolean;
}

/**
 * Hono middleware that verifies the access token (bearer, or DPoP with its proof, checked against the
 * `Request`'s method and URL) and sets the `auth` variable. Works on every runtime Hono runs on that has
 * `node:crypto`. On `@hono/node-server` it reads the Node request the Fetch `Request` wraps
 * (`c.env.incoming`: same method, target and headers, `Host` included) unless `tokenLocations` has `'body'`,
 * so that the `Request`'s headers are not built for it; a token the verifier knows goes on to `next()` in the
 * same tick. It reads `c.req.raw` instead once anything read or changed its headers (a middleware that sets
 * `Authorization` from a session cookie, or removes it), or when `c.req.raw` is another `Request` (a sub-app
 * called with `fetch(request, c.env)`, `app.mount()`) or one of a kind whose headers it cannot watch (not
 * `@hono/node-server`'s): what is checked is always the request the app handles. With `'body'`, a form body
 * that a middleware before it read through Hono (`c.req.parseBody()`, `formData()`, `text()`) is taken from
 * Hono's body cache; one read around Hono (`c.req.raw.text()`) is no body. A new `DPoP-Nonce` is set on the
 * response, also one the route made itself (`fetch()`, `new Response()`). For the fastest path on a single
 * route, see {@link withBearerAuth}.
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
): (c: HonoContextLike, next: () => Promise<void>) => Promise<Response | void> {
  const guard = guarded(options);
  return (c, next) => {
    const answer = guard(c, next);
    // The promise of the rest of the chain, or of the answer to a refused request.
    return (answer instanceof Promise ? answer : Promise.resolve(answer)) as Promise<Response | void>;
  };
}

/**
 * `handler`, run only for a request whose access token is valid (with `c.get('auth')` set); any other request
 * is answered as {@link bearerAuth} answers it. The same checks as the middleware, for a route that has no
 * other middleware: Hono calls a route's only handler directly, while a middleware in front of it runs the
 * whole chain through its `compose` (async functions and a closure per step) — on a small JSON route that
 * costs more CPU than the token check itself. `next` is passed through to `handler` unchanged. The handler's
 * context is typed `Context<{ Variables: BearerAuthVariables }>`; when your app's `Env` has more (other
 * variables, bindings), name it: `withBearerAuth<AppEnv>(options, handler)`.
 *
 * @example
 * ```ts
 * import { Hono } from 'hono';
 * import { withBearerAuth, type BearerAuthVariables } from 'tokenwarden/hono';
 * const app = new Hono<{ Variables: BearerAuthVariables }>();
 * const auth = { issuer, audience: 'https://api.example.com' };
 * app.get('/read', withBearerAuth(auth, (c) => c.json({ uid: c.get('auth').uid })));
 * ```
 */
export function withBearerAuth<
  E extends Env = { Variables: BearerAuthVariables },
  P extends string = string,
  I extends Input = BlankInput,
>(options: BearerAuthOptions, handler: Handler<E, P, I>): Handler<E, P, I> {
  const guard = guarded(options);
  return (c, next) => guard(c as unknown as HonoContextLike, () => handler(c, next)) as ReturnType<Handler<E, P, I>>;
}

/**
 * The check both forms share: `authenticated()` (the rest of the chain, or the handler) with `auth` set, or
 * the answer to a refused request — synchronously when the verifier knows the token.
 */
function guarded(
  options: BearerAuthOptions,
): <R>(c: HonoContextLike, authenticated: () => R) => R | Response | Promise<R | Response> {
  const authenticate = authenticateNow(options);
  // A token in a form body is read from the Fetch Request (a clone of it), or from Hono's body cache when a
  // middleware before this one read the body; otherwise, on @hono/node-server, the Node request it wraps is
  // read as it is: the Request's Headers are then never built for us.
  const readsBody = 'tokenLocations' in options && options.tokenLocations?.includes('body') === true;
  const apply = <R>(
    c: HonoContextLike,
    outcome: AuthenticateOutcome,
    authenticated: () => R,
  ): R | Response | Promise<R | Response> => {
    if (outcome.response) {
      const { status, headers, body } = outcome.response;
      if (body === undefined) return new Response(null, { status, headers });
      return new Response(JSON.stringify(body), {
        status,
        headers: { ...headers, 'content-type': 'application/json; charset=utf-8' },
      });
    }
    if (outcome.auth !== undefined) c.set('auth', outcome.auth);
    if (outcome.headers === undefined) return authenticated();
    // A new DPoP-Nonce: set before the route (c.json() and the like take it), and again on the response the
    // route returned or left in c.res: one it made itself (a proxied fetch(), new Response()) lacks it.
    const headers = outcome.headers;
    setHeaders(c, headers);
    const result = authenticated();
    if (result instanceof Promise) return result.then((r: Awaited<R>) => withHeaders(c, r, headers));
    return withHeaders(c, result, headers);
  };
  // Not an async function: a known token hands Hono what the rest of the chain returns, in the same tick
  // (an async wrapper would cost a promise and three microtask turns more per request).
  const run = <R>(
    c: HonoContextLike,
    input: Request | NodeRequestLike,
    body: FormData | undefined,
    authenticated: () => R,
  ): R | Response | Promise<R | Response> => {
    let outcome: AuthenticateOutcome | Promise<AuthenticateOutcome>;
    try {
      outcome = authenticate(input, body);
    } catch (err) {
      return Promise.reject(err as Error);
    }
    if (outcome instanceof Promise) return outcome.then((o) => apply(c, o, authenticated));
    return apply(c, outcome, authenticated);
  };
  if (!readsBody) {
    return (c, authenticated) => run(c, nodeRequestOf(c.env, c.req.raw) ?? c.req.raw, undefined, authenticated);
  }
  return (c, authenticated) => {
    const form = formReadBefore(c.req);
    if (form === undefined) return run(c, c.req.raw, undefined, authenticated);
    return form.then((body) => run(c, c.req.raw, body, authenticated));
  };
}

function setHeaders(c: HonoContextLike, headers: Readonly<Record<string, string>>): void {
  for (const name in headers) c.header?.(name, headers[name] as string);
}

/**
 * `result` (the handler's response, or the chain's, which is in `c.res` then) with `headers` set on it: through
 * `c.res`, which Hono copies before `header()` changes a response it has (another's headers can be immutable).
 */
function withHeaders<R>(c: HonoContextLike, result: R, headers: Readonly<Record<string, string>>): R | Response {
  if (isResponse(result)) {
    if (!('res' in c)) return result;
    c.res = result;
    setHeaders(c, headers);
    return c.res;
  }
  if (c.finalized === true) setHeaders(c, headers);
  return result;
}

/**
 * Whether `value` is a Fetch Response: `@hono/node-server` replaces the global `Response` with its own class,
 * of which the one `fetch()` returns is not an instance.
 */
function isResponse(value: unknown): value is Response {
  return value instanceof Response || Object.prototype.toString.call(value) === '[object Response]';
}

/**
 * The form body a middleware before this one read through Hono (`c.req.parseBody()`, `formData()`,
 * `text()`…): the raw `Request`'s body is used up then, so the verifier could not read it, but Hono keeps
 * it in its body cache. `undefined` when the raw body is unread (the verifier reads a clone of it) or was
 * read around Hono (`c.req.raw.text()`: nothing kept, no body); a body Hono cannot parse is no body either.
 */
function formReadBefore(req: HonoContextLike['req']): Promise<FormData | undefined> | undefined {
  const { raw, bodyCache } = req;
  if (!raw.bodyUsed || typeof req.formData !== 'function' || typeof bodyCache !== 'object' || bodyCache === null) {
    return undefined;
  }
  if (Object.keys(bodyCache).length === 0 || !hasFormBody(raw)) return undefined;
  return req.formData().then(
    (form) => form,
    () => undefined,
  );
}

/**
 * The Node.js request `@hono/node-server` passes as `env.incoming`, when it is one (its method, URL and
 * headers are the ones the Fetch Request was built from, `Host` included) and `raw` is still that Request
 * with its headers as parsed. Otherwise the Request is what the app handles, and is read: a middleware before
 * this one may have set or removed a header (`c.req.raw.headers.set('authorization', …)` from a session
 * cookie), or the app may dispatch another Request with the same `env` (`api.fetch(request, c.env)`).
 * `@hono/node-server` keeps the Node request under a symbol of its Request, and the Request's Headers under
 * another once something read them (then they may have changed).
 */
function nodeRequestOf(env: unknown, raw: Request): NodeRequestLike | undefined {
  if (env === null || typeof env !== 'object') return undefined;
  const incoming = (env as { incoming?: unknown }).incoming;
  if (incoming === null || typeof incoming !== 'object') return undefined;
  const { headers, rawHeaders, method, url } = incoming as Record<string, unknown>;
  const isNode =
    Array.isArray(rawHeaders) &&
    headers !== null &&
    typeof headers === 'object' &&
    typeof method === 'string' &&
    typeof url === 'string';
  if (!isNode) return undefined;
  const proto = Object.getPrototypeOf(raw) as object | null;
  if (proto === null) return undefined;
  let keys = wrappings.get(proto);
  if (keys === undefined) {
    keys = learnWrapping(proto, raw, incoming);
    if (keys !== undefined) wrappings.set(proto, keys);
  }
  if (keys === undefined || keys === null) return undefined;
  const fields = raw as unknown as Record<symbol, unknown>;
  if (fields[keys.incoming] !== incoming || fields[keys.headers] !== undefined) return undefined;
  return incoming as NodeRequestLike;
}

/**
 * Where `@hono/node-server`'s Requests of one prototype keep the Node request and, once something read them,
 * their Headers: found once per prototype, so that a request costs two property reads rather than a walk
 * over its symbols (`Object.getOwnPropertySymbols()` was the largest part of the middleware's own CPU).
 */
interface Wrapping {
  incoming: symbol;
  headers: symbol;
}

/** Per Request prototype: its {@link Wrapping}, or `null` when it has none that can be relied on. */
const wrappings = new WeakMap<object, Wrapping | null>();

/**
 * The {@link Wrapping} of `raw`'s prototype: the symbol under which `raw` holds `incoming`, and the one its
 * `headers` getter fills, found on a probe of the same prototype (a Request around an empty Node request,
 * whose Headers are read). `null` when the prototype does not work that way (a plain `Request`, a wrapper
 * that keeps its Headers where they cannot be seen): its Requests are then always read themselves, since
 * nothing would tell whether their headers changed. `undefined` when `raw` does not wrap `incoming` (nothing
 * learned: the next request tries again).
 */
function learnWrapping(proto: object, raw: Request, incoming: object): Wrapping | null | undefined {
  const fields = raw as unknown as Record<symbol, unknown>;
  const key = Object.getOwnPropertySymbols(raw).find((k) => fields[k] === incoming);
  if (key === undefined) return proto === Request.prototype ? null : undefined;
  try {
    const probe = Object.create(proto) as Record<symbol, unknown> & { headers?: unknown };
    probe[key] = { headers: {}, rawHeaders: [], method: 'GET', url: '/' };
    const before = new Set(Object.getOwnPropertySymbols(probe));
    const headers = probe.headers;
    if (!(headers instanceof Headers)) return null;
    const added = Object.getOwnPropertySymbols(probe).filter((k) => !before.has(k));
    return added.length === 1 && probe[added[0] as symbol] === headers
      ? { incoming: key, headers: added[0] as symbol }
      : null;
  } catch {
    return null;
  }
}
