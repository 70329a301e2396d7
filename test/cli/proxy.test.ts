/**
 * The command honours HTTPS_PROXY/HTTP_PROXY/NO_PROXY by default (as curl), through a real proxy on
 * loopback; proxy credentials never reach its output, even with --debug.
 */
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { type TestAuthorizationServer, startAuthorizationServer } from '../support/authorization-server.js';
import { type TestProxy, startProxy } from '../http/support.js';
import { assertBuilt, closedPort, removeHomes, runCli, tempHome } from './support.js';

let as: TestAuthorizationServer;
let proxy: TestProxy;
beforeAll(async () => {
  await assertBuilt();
  as = await startAuthorizationServer({ accessTokenTtl: 30 });
  proxy = await startProxy();
});
afterAll(async () => {
  await proxy?.close();
  await as?.close();
  await removeHomes();
});
beforeEach(() => {
  proxy.seen.length = 0;
});

const args = (): string[] => [
  'token',
  '--issuer',
  as.issuer,
  '--client-id',
  'svc',
  '--allow-insecure-requests',
  '--no-cache',
];

describe('tokenwarden and the proxy variables', () => {
  it('`tokenwarden token` goes through HTTP_PROXY, and straight to hosts in NO_PROXY', async () => {
    const home = await tempHome();
    const env = { ...home.env, TOKENWARDEN_CLIENT_SECRET: as.clients.svc.clientSecret, HTTP_PROXY: proxy.url };
    const proxied = await runCli(args(), env);
    expect(proxied.code, proxied.stderr).toBe(0);
    expect(proxy.seen).toContain(`POST ${as.issuer}/token`);

    proxy.seen.length = 0;
    const direct = await runCli(args(), { ...env, NO_PROXY: 'localhost,127.0.0.1' });
    expect(direct.code, direct.stderr).toBe(0);
    expect(proxy.seen).toEqual([]);
  });

  it('`tokenwarden inspect --verify` fetches the keys through the proxy', async () => {
    const home = await tempHome();
    const env = { ...home.env, TOKENWARDEN_CLIENT_SECRET: as.clients.svc.clientSecret };
    const token = (await runCli(args(), env)).stdout.trim();
    const verified = await runCli(
      [
        'inspect',
        '--verify',
        '--issuer',
        as.issuer,
        '--audience',
        'https://api.example.test',
        '--allow-insecure-requests',
        token,
      ],
      { ...home.env, http_proxy: proxy.url },
    );
    expect(verified.code, verified.stderr).toBe(0);
    expect(proxy.seen).toContain(`GET ${as.issuer}/jwks`);
  });

  it('a proxy that is down: one line naming it without its credentials, also with --debug', async () => {
    const home = await tempHome();
    const env = {
      ...home.env,
      TOKENWARDEN_CLIENT_SECRET: as.clients.svc.clientSecret,
      HTTP_PROXY: `http://ops:hunter2-proxy@127.0.0.1:${await closedPort()}`,
    };
    for (const extra of [[], ['--debug']]) {
      const result = await runCli([...args(), ...extra], env);
      expect(result.code).toBe(1);
      expect(result.stderr).toMatch(/ERR_NETWORK: .*through the proxy http:\/\/\*\*\*@127\.0\.0\.1/);
      expect(result.stdout + result.stderr).not.toContain('hunter2');
      expect(result.stdout + result.stderr).not.toContain(as.clients.svc.clientSecret);
    }
  });
});
