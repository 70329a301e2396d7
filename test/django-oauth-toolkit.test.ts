/**
 * The client side and introspection against a third real authorization server: Django OAuth Toolkit (Python;
 * Debian's package, 1.7), with other habits than oidc-provider and `@node-oauth/oauth2-server`: metadata
 * served only at the address with a trailing slash (and without introspection or revocation endpoints),
 * a Basic credential it `unquote_plus`-decodes, opaque tokens, rotation that revokes the spent refresh token,
 * and RFC 7662 introspection that refuses a bad client with a bare HTML 403.
 */
import { inspect } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ManualClock } from '../src/clock.js';
import { MemoryStore, UserTokens, refreshToken } from '../src/index.js';
import { createVerifier } from '../src/server/index.js';
import { startApi } from './support/api.js';
import { interopSuite } from './support/interop.js';
import {
  type DjangoOAuthToolkit,
  requireDjangoOAuthToolkit,
  startDjangoOAuthToolkit,
} from './support/django-oauth-toolkit.js';

const available = requireDjangoOAuthToolkit();
let server: DjangoOAuthToolkit;

beforeAll(async () => {
  if (!available) return;
  server = await startDjangoOAuthToolkit();
}, 60_000);
afterAll(async () => {
  if (!available) return;
  await server.close();
});

const svc = () => ({ issuer: server.issuer, ...server.clients.svc, allowInsecureRequests: true });
const app = (refresh: string) =>
  refreshToken({
    tokenEndpoint: server.tokenEndpoint,
    ...server.clients.app,
    refreshToken: refresh,
    allowInsecureRequests: true,
  });

describe.skipIf(!available)('Django OAuth Toolkit', () => {
  // Found by discovery from the issuer: its document is at the address with a trailing slash.
  interopSuite(() => ({
    client: svc,
    accessTokenTtl: 60,
    login: () => server.login('bob'),
    refreshSource: app,
    record: () => server.record(),
    accessToken: /^[A-Za-z0-9]{20,}$/,
  }));

  it('UserTokens found by discovery: a saved login served, refreshed once on expiry for two callers, revoked at revocationEndpoint', async () => {
    const clock = new ManualClock();
    const users = new UserTokens({
      issuer: server.issuer,
      ...server.clients.app,
      revocationEndpoint: `${server.issuer}/revoke_token/`,
      allowInsecureRequests: true,
      clock,
    });
    const login = await server.login('carol');
    await users.save('carol', login);
    expect((await users.getAccessToken('carol')).accessToken).toBe(login.access_token);
    const from = (await server.record()).refreshTokensPresented.length;
    await clock.advance(61_000);
    const [a, b] = await Promise.all([users.getAccessToken('carol'), users.getAccessToken('carol')]);
    expect(a.accessToken).not.toBe(login.access_token);
    expect(b.accessToken).toBe(a.accessToken);
    expect((await server.record()).refreshTokensPresented.slice(from)).toEqual([login.refresh_token]);
    await users.revoke('carol');
    await expect(users.getAccessToken('carol')).rejects.toMatchObject({ code: 'ERR_LOGIN_REQUIRED' });
    await users.close();
  });

  describe('introspection (RFC 7662) by a resource server', () => {
    const verifier = (clientSecret = server.clients.svc.clientSecret) =>
      createVerifier({
        issuer: server.issuer,
        strategy: 'introspection',
        introspection: {
          endpoint: server.introspectionEndpoint,
          clientId: server.clients.svc.clientId,
          clientSecret,
        },
        allowInsecureRequests: true,
        cache: false,
      });

    it('an access token it issued is active, with its scopes; an unknown or revoked one is 401 invalid_token', async () => {
      const verify = verifier();
      const login = await server.login('dave');
      const ok = await verify(`Bearer ${login.access_token}`);
      expect(ok.ok && ok.auth.credentials.scopes).toEqual(['read', 'write']);
      expect(await verify('Bearer not-a-token-it-issued')).toMatchObject({
        ok: false,
        failure: { status: 401, error: 'invalid_token' },
      });
      const users = new UserTokens({
        issuer: server.issuer,
        ...server.clients.app,
        revocationEndpoint: `${server.issuer}/revoke_token/`,
        allowInsecureRequests: true,
      });
      await users.save('dave', login);
      await users.revoke('dave');
      await users.close();
      expect(await verify(`Bearer ${login.access_token}`)).toMatchObject({ ok: false, failure: { status: 401 } });
    });

    it('an access token revoked alone: the API answers 401, and DOT answers the refresh for the retry with a bare 500 — ERR_HTTP_STATUS, the refresh token kept', async () => {
      const api = await startApi({
        issuer: server.issuer,
        strategy: 'introspection',
        introspection: {
          endpoint: server.introspectionEndpoint,
          clientId: server.clients.svc.clientId,
          clientSecret: server.clients.svc.clientSecret,
        },
        allowInsecureRequests: true,
        cache: false,
      });
      const { url, seen } = api;
      const store = new MemoryStore();
      const users = new UserTokens({
        issuer: server.issuer,
        ...server.clients.app,
        revocationEndpoint: `${server.issuer}/revoke_token/`,
        allowInsecureRequests: true,
        store,
      });
      try {
        const login = await server.login('erin');
        await users.save('erin', login);
        const call = users.fetchAs('erin');
        expect((await call(url)).status).toBe(200);
        await users.client.revoke(login.access_token as string, 'access_token');
        const from = (await server.record()).refreshTokensPresented.length;
        // DOT 2.x fails on a refresh token whose access token was revoked (an unhandled error: a 500 page).
        await expect(call(url, { method: 'POST', body: '{"item":1}' })).rejects.toMatchObject({
          code: 'ERR_HTTP_STATUS',
          status: 500,
        });
        expect((await server.record()).refreshTokensPresented.slice(from)).toEqual([login.refresh_token]);
        expect(seen).toEqual([`Bearer ${login.access_token}`, `Bearer ${login.access_token}`]);
        // A 500 does not say the refresh token is dead: it is kept (the next call may try it again), the revoked
        // access token is not.
        const stored = (await store.get(users.keyFor('erin')))?.value ?? '';
        expect([stored.includes(login.refresh_token as string), stored.includes(login.access_token as string)]).toEqual(
          [true, false],
        );
      } finally {
        await users.close();
        await api.close();
      }
    });

    it("the resource server's own credentials refused (a bare HTML 403): 503 for the token, the secret nowhere", async () => {
      const secret = 'not-the-resource-server-secret';
      const verify = verifier(secret);
      const result = await verify(`Bearer ${(await server.login('erin')).access_token}`);
      expect(result).toMatchObject({ ok: false, failure: { status: 503, error: 'temporarily_unavailable' } });
      expect(inspect(result, { depth: 10 })).not.toContain(secret);
    });
  });
});
