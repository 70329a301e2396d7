/**
 * What every framework adapter shares: building (or reusing) the verifier, calling it with the route's
 * requirements, and turning a failure into status, headers and a JSON body. Adapters only move these
 * between their framework's request and response objects.
 *
 * @module
 */
import { TokenwardenError } from '../../errors.js';
import type { Auth } from '../provider.js';
import { type ChallengeOptions, type FailureResponse, failureResponse } from '../errors.js';
import type { VerifyInput } from '../extract.js';
import {
  type AuthorizationRequirements,
  type Verifier,
  type VerifierOptions,
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
  | { response: FailureResponse };

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
  if (options === null || typeof options !== 'object') {
    throw new TokenwardenError('ERR_CONFIG', 'bearerAuth options must be an object');
  }
  if ('verifier' in options && typeof options.verifier !== 'function') {
    throw new TokenwardenError('ERR_CONFIG', 'verifier must be a verifier made by createVerifier()');
  }
  const verifier = 'verifier' in options ? options.verifier : createVerifier(options);
  // With a shared verifier the route's requirements go with each call; otherwise they are the verifier's.
  const route = 'verifier' in options ? requirements(options) : {};
  const challenge: ChallengeOptions = options.realm === undefined ? {} : { realm: options.realm };
  const optional = options.optional === true;
  return async (input, body, originalUrl) => {
    const call =
      body === undefined && originalUrl === undefined
        ? route
        : { ...route, ...(body !== undefined && { body }), ...(originalUrl !== undefined && { originalUrl }) };
    const result = await verifier(input, call);
    if (result.ok)
      return result.headers === undefined ? { auth: result.auth } : { auth: result.auth, headers: result.headers };
    if (optional && result.failure.error === 'missing_token') return { auth: undefined };
    return { response: failureResponse(result.failure, challenge) };
  };
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
  if (headers === undefined) return;
  for (const [name, value] of Object.entries(headers)) res.setHeader(name, value);
}

/**
 * Writes a failure to a Node.js response as JSON.
 *
 * @example
 * ```ts
 * if (outcome.response) return sendNode(res, outcome.response);
 * ```
 */
export function sendNode(res: NodeResponseLike, response: FailureResponse): void {
  res.statusCode = response.status;
  for (const [name, value] of Object.entries(response.headers)) res.setHeader(name, value);
  res.setHeader('content-type', 'application/json; charset=utf-8');
  res.end(JSON.stringify(response.body));
}
