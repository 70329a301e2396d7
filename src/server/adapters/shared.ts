/**
 * What every framework adapter shares: building (or reusing) the verifier, calling it with the route's
 * requirements, and turning a failure into status, headers and a JSON body. Adapters only move these
 * between their framework's request and response objects.
 *
 * @module
 */
import { TokenwardenError } from '../../errors.js';
import type { Auth } from '../provider.js';
import {
  type ChallengeOptions,
  type FailureResponse,
  type VerifyFailure,
  failure,
  failureResponse,
} from '../errors.js';
import type { VerifyInput } from '../extract.js';
import { ASYMMETRIC_ALGORITHMS } from '../jwt.js';
import {
  type MetadataResponse,
  type ProtectedResource,
  type ProtectedResourceOptions,
  protectedResource,
} from '../protected-resource.js';
import {
  type AuthorizationRequirements,
  VERIFY_NOW,
  type Verifier,
  type VerifierOptions,
  type VerifyNow,
  type VerifyResult,
  createVerifier,
  requirements,
} from '../verifier.js';

/**
 * Options of every `bearerAuth()`: the verifier's options (or a `verifier` to share one between routes),
 * plus the route's requirements and how failures are answered.
 *
 * @example
 * ```ts
 * const verifier = createVerifier({ issuer, audience });
 * app.get('/orders', bearerAuth({ verifier, requiredScopes: ['orders:read'] }), listOrders);
 * app.post('/orders', bearerAuth({ verifier, requiredScopes: ['orders:write'] }), createOrder);
 * ```
 */
export type BearerAuthOptions = (VerifierOptions | ({ verifier: Verifier } & AuthorizationRequirements)) &
  ChallengeOptions & {
    /**
     * Let requests without any token through, without `auth` (a bad token is still refused). Default
     * `false`.
     */
    optional?: boolean;
    /**
     * Describe the resource (RFC 9728): the middleware answers `GET /.well-known/oauth-protected-resource`
     * (with the resource's path appended when it has one, §3.1) unauthenticated, every challenge names that
     * URL in `resource_metadata` (§5.1) — formed from `resource`, never from the request's `Host` — a 401
     * also names the route's `requiredScopes` in `scope`, and only tokens whose `aud` names `resource` are
     * accepted (`requireAudience: false` to turn that off). Without an `audience` option, the verifier's
     * audience is `resource`. Mount the middleware where it sees the metadata path (`app.use(...)`).
     */
    protectedResource?: ProtectedResourceOptions;
  };

/**
 * What an adapter does with a request: go on (with `auth`, or without it when optional, and `headers` to
 * set on the eventual response, such as a new `DPoP-Nonce`), or answer.
 *
 * @example
 * ```ts
 * const outcome: AuthenticateOutcome = await authenticate(req);
 * if (outcome.response) reply(outcome.response.status, outcome.response.headers, outcome.response.body);
 * else for (const [name, value] of Object.entries(outcome.headers ?? {})) res.setHeader(name, value);
 * ```
 */
export type AuthenticateOutcome =
  | { auth: Auth | undefined; headers?: Readonly<Record<string, string>>; response?: undefined }
  | { response: FailureResponse | MetadataResponse };

/**
 * Builds the per-request function every adapter calls: `authenticate(input, body?, originalUrl?)`, where
 * `input` is the framework's Node request or Fetch `Request` (its method, URL and headers are what a DPoP
 * proof is checked against), `body` a form body the framework parsed, and `originalUrl` the request target
 * when the framework rewrote `url` without keeping it on the request (Koa). Throws `ERR_CONFIG` for bad
 * options, when the middleware is created.
 *
 * @example
 * ```ts
 * const authenticate = authenticator({ issuer, audience, requiredScopes: ['read'] });
 * const outcome = await authenticate(req);
 * if (outcome.response) send(outcome.response); else handle(outcome.auth);
 * ```
 */
export function authenticator(
  options: BearerAuthOptions,
): (input: VerifyInput, body?: unknown, originalUrl?: string) => Promise<AuthenticateOutcome> {
  const authenticate = authenticateNow(options);
  return async (input, body, originalUrl) => authenticate(input, body, originalUrl);
}

/**
 * {@link authenticator} for the adapters: the outcome itself when it is ready at once (a known token, the
 * path most requests take), a promise otherwise, so that a cached request costs no promise, no microtask
 * and no async frame in the framework. May throw (a failing claim check): adapters pass that on as the
 * framework's error.
 *
 * @example
 * ```ts
 * const authenticate = authenticateNow(options);
 * const outcome = authenticate(req);
 * if (outcome instanceof Promise) outcome.then(apply, fail); else apply(outcome);
 * ```
 */
export function authenticateNow(
  options: BearerAuthOptions,
): (input: VerifyInput, body?: unknown, originalUrl?: string) => AuthenticateOutcome | Promise<AuthenticateOutcome> {
  if (options === null || typeof options !== 'object') {
    throw new TokenwardenError('ERR_CONFIG', 'bearerAuth options must be an object');
  }
  if ('verifier' in options && typeof options.verifier !== 'function') {
    throw new TokenwardenError('ERR_CONFIG', 'verifier must be a verifier made by createVerifier()');
  }
  if ('verifier' in options) {
    // A shared verifier was made with its own options: one of them given here (`tokenLocations` for a
    // route that takes ?access_token=, `dpop: { required: true }`, another `audience`) would change nothing,
    // and the route would not be what it says. Refused rather than ignored.
    for (const name in options) {
      if (!WITH_VERIFIER.has(name) && (options as unknown as Record<string, unknown>)[name] !== undefined) {
        throw new TokenwardenError(
          'ERR_CONFIG',
          `bearerAuth({ verifier }) takes the route's requirements, not verifier options: give ${name} to createVerifier() (or pass verifier options instead of a verifier)`,
        );
      }
    }
  }
  const resource = options.protectedResource === undefined ? undefined : resourceOf(options);
  const verifier =
    'verifier' in options
      ? options.verifier
      : createVerifier(
          resource !== undefined && options.audience === undefined
            ? { ...options, audience: resource.metadata.resource }
            : options,
        );
  // A verifier made by createVerifier() answers a known token without a promise; any other function is called.
  const verify: VerifyNow = (verifier as Verifier & { [VERIFY_NOW]?: VerifyNow })[VERIFY_NOW] ?? verifier;
  // With a shared verifier the route's requirements go with each call; otherwise they are the verifier's.
  const route = 'verifier' in options ? requirements(options) : {};
  const challenge: ChallengeOptions = {
    ...(options.realm !== undefined && { realm: options.realm }),
    ...(resource !== undefined && { resourceMetadata: resource.metadataUrl }),
    ...(options.resourceMetadata !== undefined && { resourceMetadata: options.resourceMetadata }),
  };
  // MCP: a 401 names the scopes the request needs, so that a client asks for them (RFC 6750 §3).
  const needed = resource === undefined ? undefined : requirements(options).requiredScopes?.join(' ') || undefined;
  const refuse = (refused: VerifyFailure): { response: FailureResponse } => {
    if (needed !== undefined && refused.status === 401 && refused.scope === undefined) {
      if (refused.error === 'missing_token' || refused.error === 'invalid_token') {
        refused = { ...refused, ...failure(refused.error, refused.description, needed) };
      }
    }
    return { response: failureResponse(refused, challenge) };
  };
  const optional = options.optional === true;
  const settle = (result: VerifyResult): AuthenticateOutcome => {
    if (result.ok) {
      const wrongAudience = resource?.checkAudience(result.auth);
      if (wrongAudience !== undefined) return refuse(wrongAudience);
      return result.headers === undefined ? { auth: result.auth } : { auth: result.auth, headers: result.headers };
    }
    if (optional && result.failure.error === 'missing_token') return { auth: undefined };
    return refuse(result.failure);
  };
  return (input, body, originalUrl) => {
    if (resource !== undefined) {
      const answer = resource.answer(input, originalUrl);
      if (answer !== undefined) return { response: answer };
    }
    const call =
      body === undefined && originalUrl === undefined
        ? route
        : { ...route, ...(body !== undefined && { body }), ...(originalUrl !== undefined && { originalUrl }) };
    const result = verify(input, call);
    return result instanceof Promise ? result.then(settle) : settle(result);
  };
}

/** What `bearerAuth({ verifier, … })` takes beside the verifier: the route's requirements and how it answers. */
const WITH_VERIFIER: ReadonlySet<string> = new Set([
  'verifier',
  'requiredScopes',
  'anyScopes',
  'anyRoles',
  'claimCheck',
  'realm',
  'resourceMetadata',
  'optional',
  'protectedResource',
]);

/**
 * The protected resource of `bearerAuth({ protectedResource })`, with defaults taken from the verifier's
 * options when they are given (not a shared `verifier`): authorization servers from `issuer`, bearer
 * methods from `tokenLocations`, DPoP from `dpop`.
 */
function resourceOf(options: BearerAuthOptions): ProtectedResource {
  const given = options.protectedResource as ProtectedResourceOptions;
  if (given === null || typeof given !== 'object') {
    throw new TokenwardenError('ERR_CONFIG', 'protectedResource options must be an object');
  }
  if ('verifier' in options) return protectedResource(given);
  const issuers =
    typeof options.issuer === 'string' ? [options.issuer] : Array.isArray(options.issuer) ? options.issuer : undefined;
  if (issuers !== undefined && given.authorizationServers !== undefined) {
    const untrusted = given.authorizationServers.find((s) => !issuers.includes(s));
    if (untrusted !== undefined) {
      throw new TokenwardenError(
        'ERR_CONFIG',
        'protectedResource.authorizationServers names a server the verifier does not trust (not in issuer)',
      );
    }
  }
  const dpop = typeof options.dpop === 'object' && options.dpop !== null ? options.dpop : undefined;
  const derived: ProtectedResourceOptions = {
    ...(issuers !== undefined && { authorizationServers: issuers }),
    bearerMethodsSupported: dpop?.required === true ? [] : [...(options.tokenLocations ?? ['header'])],
    ...(dpop !== undefined && { dpopSigningAlgValuesSupported: [...(dpop.algorithms ?? ASYMMETRIC_ALGORITHMS)] }),
    ...(dpop?.required === true && { dpopBoundAccessTokensRequired: true }),
    ...(options.allowInsecureRequests === true && { allowInsecureRequests: true }),
    ...given,
  };
  return protectedResource(derived);
}

/**
 * The parts of a Node.js `ServerResponse` an adapter writes to.
 *
 * @example
 * ```ts
 * const res: NodeResponseLike = serverResponse; // http.ServerResponse, Express's res
 * ```
 */
export interface NodeResponseLike {
  statusCode: number;
  /** Whether the response has been answered already (by another middleware, a timeout…): nothing is written then. */
  headersSent?: boolean;
  setHeader(name: string, value: string): unknown;
  end(chunk?: string): unknown;
}

/**
 * Sets response headers a successful verification asks for (a new `DPoP-Nonce`).
 *
 * @example
 * ```ts
 * if (!outcome.response) setNodeHeaders(res, outcome.headers);
 * ```
 */
export function setNodeHeaders(res: NodeResponseLike, headers: Readonly<Record<string, string>> | undefined): void {
  // Once answered (a timeout middleware), setHeader throws ERR_HTTP_HEADERS_SENT: nothing to add then.
  if (headers === undefined || res.headersSent === true) return;
  for (const name in headers) res.setHeader(name, headers[name] as string);
}

/**
 * Writes a failure (or a metadata answer) to a Node.js response as JSON.
 *
 * @example
 * ```ts
 * if (outcome.response) return sendNode(res, outcome.response);
 * ```
 */
export function sendNode(res: NodeResponseLike, response: FailureResponse | MetadataResponse): void {
  // A verification can outlast the response: another middleware (connect-timeout, a proxy's deadline) may
  // have answered meanwhile, and writing again would throw ERR_HTTP_HEADERS_SENT out of a promise callback.
  if (res.headersSent === true) return;
  res.statusCode = response.status;
  for (const [name, value] of Object.entries(response.headers)) res.setHeader(name, value);
  if (response.body === undefined) return void res.end();
  res.setHeader('content-type', 'application/json; charset=utf-8');
  res.end(JSON.stringify(response.body));
}
