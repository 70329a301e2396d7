/**
 * `tokenwarden/node`: access token (bearer or DPoP) checks for a plain `node:http` server (and connect-style
 * stacks).
 *
 * @module
 */
import type { Auth } from '../provider.js';
import type { NodeRequestLike } from '../extract.js';
import { type BearerAuthOptions, type NodeResponseLike, authenticateNow, sendNode, setNodeHeaders } from './shared.js';

export type { BearerAuthOptions } from './shared.js';
export type { Auth } from '../provider.js';

/**
 * The parts of a Node.js request the check reads and writes.
 *
 * @example
 * ```ts
 * createServer(async (req: NodeAuthRequest, res) => {
 *   if ((await authenticate(req, res)) === false) return;
 *   res.end(req.auth?.uid);
 * });
 * ```
 */
export interface NodeAuthRequest extends NodeRequestLike {
  auth?: Auth | undefined;
}

/**
 * Returns `authenticate(req, res, next?)`: it verifies the access token (bearer, or DPoP with its proof,
 * checked against `req.method`, `req.originalUrl ?? req.url` and `Host`), sets `req.auth` and resolves to
 * the {@link Auth} (`undefined` for a request without a token when `optional`); or answers the request
 * itself (401/400/403/503, RFC 6750) and resolves to `false`. With a `next` callback (connect, polka…) it
 * calls `next()` on success and `next(err)` on an unexpected error.
 *
 * @example
 * ```ts
 * import { createServer } from 'node:http';
 * import { bearerAuth } from 'tokenwarden/node';
 * const authenticate = bearerAuth({ issuer, audience: 'https://api.example.com' });
 * createServer(async (req, res) => {
 *   const auth = await authenticate(req, res);
 *   if (auth === false) return; // already answered 401/400/403/503
 *   res.end(`hello ${auth?.uid}`);
 * }).listen(3000);
 * ```
 */
export function bearerAuth(
  options: BearerAuthOptions,
): (req: NodeAuthRequest, res: NodeResponseLike, next?: (err?: unknown) => void) => Promise<Auth | undefined | false> {
  const authenticate = authenticateNow(options);
  return async (req, res, next) => {
    let outcome;
    try {
      outcome = authenticate(req, req.body);
      if (outcome instanceof Promise) outcome = await outcome;
    } catch (err) {
      if (next === undefined) throw err;
      next(err);
      return false;
    }
    if (outcome.response) {
      sendNode(res, outcome.response);
      return false;
    }
    setNodeHeaders(res, outcome.headers);
    req.auth = outcome.auth;
    next?.();
    return outcome.auth;
  };
}
