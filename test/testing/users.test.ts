/**
 * UserTokens (through its public API only) against the test server: a login's tokens saved with their ID
 * token checked, refreshes with rotating single-use refresh tokens — once for several instances sharing a
 * store — down-scoping, UserInfo, revocation, and an outage that does not cost the user their login.
 */
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { ManualClock, MemoryStore, UserTokens } from '../../src/index.js';
import { type TestAuthorizationServer, createTestAuthorizationServer } from '../../src/testing/index.js';

let as: TestAuthorizationServer;
beforeAll(async () => {
  as = await createTestAuthorizationServer({
    algorithm: 'ES256',
    accessTokenTtl: '60s',
    scopes: ['openid', 'email', 'read', 'write'],
    userClaims: (sub) => ({ email: `${sub}@example.test`, email_verified: true }),
  });
});
afterAll(() => as.close());

// The apps' clock: moved past the 60 s access tokens so that the next call refreshes.
let clock: ManualClock;
const users = (store = new MemoryStore()) =>
  new UserTokens({ issuer: as.issuer, ...as.client, store, clock, allowInsecureRequests: true });
const expire = () => clock.advance(61_000);
beforeEach(() => {
  clock = new ManualClock();
});

describe('UserTokens with the test server', () => {
  it('saves a login (ID token signature checked against the JWKS), refreshes down-scoped, reads UserInfo', async () => {
    const app = users();
    try {
      const login = await as.issueTokens({ sub: 'alice', scope: 'openid email read write' });
      await app.save('alice', login);
      expect(await app.getClaims('alice')).toMatchObject({ sub: 'alice', email: 'alice@example.test' });
      as.resetStats();
      await expire();
      const read = await app.getAccessToken('alice', { scope: 'read' });
      expect(read.scope).toBe('read');
      expect(as.stats().grants).toEqual({ refresh_token: 1 });
      expect(await app.getClaims('alice', { userinfo: true })).toMatchObject({ sub: 'alice', email_verified: true });
      expect(as.stats().userinfo).toBe(1);
    } finally {
      await app.close();
    }
  });

  it('an ID token of another subject is refused and nothing is stored', async () => {
    const app = users();
    try {
      const bobs = await as.issueTokens({ sub: 'bob', scope: 'openid' });
      await expect(app.save('alice', bobs)).rejects.toMatchObject({ code: 'ERR_ID_TOKEN_INVALID' });
      await expect(app.getAccessToken('alice')).rejects.toMatchObject({ code: 'ERR_LOGIN_REQUIRED' });
    } finally {
      await app.close();
    }
  });

  it('three instances sharing a store refresh a user once: the rotating refresh token is never spent twice', async () => {
    const store = new MemoryStore();
    const instances = [users(store), users(store), users(store)];
    try {
      await instances[0]!.save('carol', await as.issueTokens({ sub: 'carol', scope: 'read write' }));
      as.resetStats();
      await expire();
      const tokens = await Promise.all(
        instances.flatMap((app) => Array.from({ length: 10 }, () => app.getAccessToken('carol', { scope: 'read' }))),
      );
      expect(new Set(tokens.map((t) => t.accessToken)).size).toBe(1);
      expect(as.stats().grants).toEqual({ refresh_token: 1 });
      expect(as.stats().errors).toEqual({});
    } finally {
      await Promise.all(instances.map((app) => app.close()));
    }
  });

  it('revoke() ends the grant at the server: the next refresh needs a new login', async () => {
    const app = users();
    try {
      await app.save('dave', await as.issueTokens({ sub: 'dave', scope: 'read write' }));
      as.resetStats();
      await app.revoke('dave');
      expect(as.stats().revocation).toBeGreaterThan(0);
      await expect(app.getAccessToken('dave', { scope: 'read' })).rejects.toMatchObject({
        code: 'ERR_LOGIN_REQUIRED',
      });
    } finally {
      await app.close();
    }
  });

  it('a grant revoked by reuse elsewhere: invalid_grant becomes ERR_LOGIN_REQUIRED, not a retry loop', async () => {
    const app = users();
    try {
      const login = await as.issueTokens({ sub: 'erin', scope: 'read write' });
      await app.save('erin', login);
      // Someone else spends the same refresh token twice: the server revokes the grant.
      const spend = () =>
        fetch(`${as.issuer}/token`, {
          method: 'POST',
          headers: { 'content-type': 'application/x-www-form-urlencoded' },
          body: new URLSearchParams({
            grant_type: 'refresh_token',
            refresh_token: login['refresh_token'] as string,
            ...{ client_id: as.client.clientId, client_secret: as.client.clientSecret },
          }),
        });
      expect((await spend()).status).toBe(200);
      expect((await spend()).status).toBe(400);
      await expire();
      await expect(app.getAccessToken('erin', { scope: 'read' })).rejects.toMatchObject({
        code: 'ERR_LOGIN_REQUIRED',
      });
    } finally {
      await app.close();
    }
  });

  it.each([
    ['down', 'ERR_NETWORK'],
    ['reset', 'ERR_NETWORK'],
    ['500', 'ERR_HTTP_STATUS'],
    ['garbage', 'ERR_INVALID_RESPONSE'],
  ] as const)(
    "fault('%s') is not a logout: the refresh fails with %s and works once the server is back",
    async (fault, code) => {
      const app = users();
      try {
        await app.save('frank', await as.issueTokens({ sub: 'frank', scope: 'read write' }));
        await as.fault(fault);
        await expire();
        await expect(app.getAccessToken('frank', { scope: 'read' })).rejects.toMatchObject({ code });
        await as.fault('ok');
        await clock.advance(1100); // past the one-second hold after a failure
        expect((await app.getAccessToken('frank', { scope: 'read' })).scope).toBe('read');
      } finally {
        await as.fault('ok');
        await app.close();
      }
    },
  );

  it('keys rotated after the app fetched them: an ID token signed by the new key is accepted', async () => {
    const app = users();
    try {
      await app.save('gina', await as.issueTokens({ sub: 'gina', scope: 'openid' })); // fetches the JWKS
      await as.rotateKeys();
      await app.save('gina', await as.issueTokens({ sub: 'gina', scope: 'openid email' }));
      expect(await app.getClaims('gina')).toMatchObject({ sub: 'gina', email: 'gina@example.test' });
    } finally {
      await app.close();
    }
  });
});
