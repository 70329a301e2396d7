/**
 * A resource server for client-side tests: node:http with tokenwarden's own `bearerAuth` (a real verifier —
 * JWKS or introspection at a real authorization server), answering `ok` to what it accepts and RFC 6750 to what
 * it does not, and recording the `Authorization` header of every request. `refuse` answers 401
 * `invalid_token` before any check (an API's own list of tokens it no longer takes).
 */
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { type BearerAuthOptions, bearerAuth } from '../../src/server/adapters/node.js';

export interface TestApi {
  /** `http://127.0.0.1:<port>/orders`. */
  readonly url: string;
  /** The `Authorization` header of each request, in order (`''` when none). */
  readonly seen: string[];
  close(): Promise<void>;
}

export async function startApi(
  options: BearerAuthOptions,
  refuse: (token: string) => boolean = () => false,
): Promise<TestApi> {
  const authenticate = bearerAuth(options);
  const seen: string[] = [];
  const server = createServer((req, res) => {
    const authorization = req.headers.authorization ?? '';
    seen.push(authorization);
    if (refuse(authorization.replace(/^\S+ /, ''))) {
      res.writeHead(401, { 'www-authenticate': 'Bearer error="invalid_token"' }).end();
      return;
    }
    void authenticate(req, res).then((auth) => auth !== false && res.end('ok'));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/orders`,
    seen,
    close: () => new Promise((resolve) => server.close(() => resolve())),
  };
}
