/**
 * `tokenwarden/testing`: a real authorization server for the tests of your application — start it, get
 * tokens from it through tokenwarden or any client, mint tokens for your API, rotate its keys, break it on
 * purpose, count its requests. With `ManualClock` (re-exported here) a test moves time instead of sleeping.
 *
 * @example
 * ```ts
 * import { createTestAuthorizationServer } from 'tokenwarden/testing';
 * const as = await createTestAuthorizationServer({ accessTokenTtl: '60s', audience: 'https://api.test' });
 * const token = await as.mintAccessToken({ sub: 'alice', scope: 'read' });
 * await as.close();
 * ```
 *
 * @module
 */
export {
  type Fault,
  type FaultOptions,
  type IssueOptions,
  type MintAccessTokenOptions,
  type TestAuthorizationServer,
  type TestAuthorizationServerOptions,
  type TestClient,
  type TestEndpoint,
  type TestServerStats,
  createTestAuthorizationServer,
} from './authorization-server.js';
export type { TokenResponse } from './grants.js';
export type { SigningAlgorithm } from './keys.js';
export { ManualClock, type Clock } from '../clock.js';
