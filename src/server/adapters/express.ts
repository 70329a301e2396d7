/**
 * `tokenwarden/express`: access token (bearer or DPoP) middleware for Express (4 and 5). Sets `req.auth`,
 * or answers 401/400/403/503 per RFC 6750 and RFC 9449 with a `WWW-Authenticate` challenge and a JSON body.
 *
 * @module
 */
import type { Auth } from '../provider.js';
import type { NodeRequestLike } from '../extract.js';
import {
  type AuthenticateOutcome,
  type BearerAuthOptions,
  type NodeResponseLike,
  authenticateNow,
  sendNode,
  setNodeHeaders,
} from './shared.js';

export type { BearerAuthOptions } from './shared.js';
export type { Auth } from '../provider.js';

declare global {
  // eslint-disable-next-line @typescript-eslint/no-namespace
  namespace Express {
    interface Request {
      /** Set by tokenwarden's `bearerAuth()` when the access token is valid. */
      auth?: Auth;
    }
  }
}

/**
 * The parts of an Express request the middleware reads and writes.
 *
 * @example
 * ```ts
 * app.get('/me', bearerAuth(options), (req, res) => res.json({ uid: req.auth?.uid })); // req is one
 * ```
 */
export interface ExpressRequestLike extends NodeRequestLike {
  auth?: Auth | undefined;
}

/**
 * Express middleware that verifies the access token (bearer, or DPoP with its proof) and sets `req.auth`.
 * Options are the verifier's (or `{ verifier }`), plus `requiredScopes`, `anyScopes`, `anyRoles`, `claimCheck`, `realm`
 * and `optional`. A DPoP proof is checked against `req.method`, `req.originalUrl` (the URL before routers
 * rewrote it) and `Host`; behind a proxy set the verifier's `dpop.publicUrl` or `dpop.trustProxy`.
 *
 * @example
 * ```ts
 * import express from 'express';
 * import { bearerAuth } from 'tokenwarden/express';
 * const app = express();
 * app.get('/read', bearerAuth({ issuer, audience: 'https://api.example.com' }), (req, res) => {
 *   res.json({ uid: req.auth?.uid });
 * });
 * app.post('/write', bearerAuth({ issuer, audience, requiredScopes: ['write'] }), handler);
 * ```
 */
export function bearerAuth(
  options: BearerAuthOptions,
): (req: ExpressRequestLike, res: NodeResponseLike, next: (err?: unknown) => void) => void {
  const authenticate = authenticateNow(options);
  const apply = (req: ExpressRequestLike, res: NodeResponseLike, next: () => void, outcome: AuthenticateOutcome) => {
    if (outcome.response) return sendNode(res, outcome.response);
    setNodeHeaders(res, outcome.headers);
    req.auth = outcome.auth;
    next();
  };
  return (req, res, next) => {
    let outcome;
    try {
      outcome = authenticate(req, req.body);
    } catch (err) {
      return next(err);
    }
    // A known token is answered at once: the route runs in this tick, as after any synchronous middleware.
    // A throw while answering goes to Express as a synchronous middleware's would: never an unhandled rejection.
    if (outcome instanceof Promise) outcome.then((o) => apply(req, res, next, o)).then(undefined, next);
    else apply(req, res, next, outcome);
  };
}
