/**
 * `@opentelemetry/api` is an optional peer: in a process that cannot load it, tokenwarden loads and works —
 * a manager gets tokens from the real authorization server, a verifier checks them (cache hit and miss) —
 * and `MetricsRegistry` (the agent's) still counts. The package test checks the same from the packed
 * tarball (with a custom source); this one runs the sources, with the protocol paths, in a child process
 * where neither `require` nor `import` can find the API (`without-api/hide-api.mjs`).
 */
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  API_RESOURCE,
  type TestAuthorizationServer,
  startAuthorizationServer,
} from '../support/authorization-server.js';
import { issueToken } from '../server/support.js';

const run = promisify(execFile);
const here = (path: string): string => fileURLToPath(new URL(path, import.meta.url));

let as: TestAuthorizationServer;
beforeAll(async () => {
  as = await startAuthorizationServer({ accessTokenTtl: 60 });
});
afterAll(() => as?.close());

describe('without @opentelemetry/api', () => {
  it('tokens are obtained and verified, and MetricsRegistry counts them', async () => {
    const token = (await issueToken(as, { scope: 'read' })).accessToken;
    const { stdout } = await run(
      process.execPath,
      ['--import', 'tsx', '--import', here('./without-api/hide-api.mjs'), here('./without-api/child.ts')],
      {
        cwd: here('../..'),
        env: {
          ...process.env,
          TW_ISSUER: as.issuer,
          TW_CLIENT_ID: as.clients.svc.clientId,
          TW_CLIENT_SECRET: as.clients.svc.clientSecret,
          TW_AUDIENCE: API_RESOURCE,
          TW_TOKEN: token,
        },
      },
    );
    const result = JSON.parse(stdout.trim().split('\n').at(-1) as string) as {
      hidden: boolean;
      api: unknown;
      tokenType: string;
      verified: boolean[];
      text: string;
    };
    expect(result.hidden, 'the child cannot load @opentelemetry/api').toBe(true);
    expect(result.api).toBeNull();
    expect(result.tokenType).toBe('Bearer');
    expect(result.verified).toEqual([true, true, false]);
    expect(result.text).toMatch(
      /^tokenwarden_token_requests_total\{tokenwarden_grant="client_credentials",tokenwarden_outcome="success"\} 1$/m,
    );
    expect(result.text).toMatch(
      /^tokenwarden_verify_requests_total\{tokenwarden_cache="hit",tokenwarden_outcome="ok"\} 1$/m,
    );
    expect(result.text).toMatch(/^tokenwarden_jwks_fetches_total\{tokenwarden_outcome="success"\} 1$/m);
    expect(result.text).toMatch(/^tokenwarden_token_time_to_expiry_seconds\{[^}]*tokenwarden_name="bare"\} \d/m);
  }, 60_000);
});
