/**
 * `tokenwarden/express`: bearer token middleware for Express (4 and 5). Sets `req.auth`, or answers
 * 401/400/403/503 per RFC 6750 with a `WWW-Authenticate` challenge and a JSON body.
 *
 * @module
 */
import type { Auth } from '../provider.js';
import type { NodeRequestLike } from '../extract.js';
import { type BearerAuthOptions, type NodeResponseLike, authenticator, sendNode } from './shared.js';

export type { BearerAuthOptions } from './shared.js';
export type { Auth } from '../provider.js';

declare global {
  // eslint-disable-next-line @typescript-eslint/no-namespace
  namespace Express {
    interface Request {
      /** Set by tokenwarden's `bearerAuth()` when the bearer token is valid. */
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
 * Express middleware that verifies the bearer token and sets `req.auth`. Options are the verifier's
 * (or `{ verifier }`), plus `requiredScopes`, `anyScopes`, `claimCheck`, `realm` and `optional`.
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
  const authenticate = authenticator(options);
  return (req, res, next) => {
    authenticate(req, req.body).then((outcome) => {
      if (outcome.response) return sendNode(res, outcome.response);
      req.auth = outcome.auth;
      next();
    }, next);
  };
}
