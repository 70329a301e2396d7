/**
 * The client side against a second real authorization server with other habits than oidc-provider:
 * `@node-oauth/oauth2-server` (no discovery, opaque tokens, a Basic challenge on a bad client credential,
 * no grant revocation when a spent refresh token comes back). What holds against oidc-provider must hold here.
 */
import { SignJWT, generateKeyPair } from 'jose';
import { ManualClock } from '../src/clock.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  type RefreshTokenOptions,
  TokenManager,
  UserTokens,
  clientCredentials,
  refreshToken,
  tokenExchange,
} from '../src/index.js';
import { interopSuite } from './support/interop.js';
import { type NodeOAuth2Server, startNodeOAuth2Server } from './support/node-oauth2-server.js';

let server: NodeOAuth2Server;

beforeAll(async () => {
  server = await startNodeOAuth2Server();
});
afterAll(async () => {
  await server.close();
});

const client = () => ({
  tokenEndpoint: server.tokenEndpoint,
  clientId: server.client.clientId,
  clientSecret: server.client.clientSecret,
  allowInsecureRequests: true,
});
const rt = (refresh: string, extra: Partial<RefreshTokenOptions> = {}) =>
  refreshToken({ ...client(), refreshToken: refresh, ...extra });

describe('@node-oauth/oauth2-server', () => {
  let logins = 0;
  interopSuite(() => ({
    client,
    accessTokenTtl: 60,
    login: () => server.login(`user-${++logins}`),
    refreshSource: (refresh) => rt(refresh),
    record: async () => ({ refreshTokensPresented: [...server.refreshTokensPresented], errors: { ...server.errors } }),
    accessToken: /^[0-9a-f]{40,}$/,
  }));

  it('a grant the server does not have (token exchange) → ERR_OAUTH unsupported_grant_type', async () => {
    const exchange = tokenExchange({ ...client(), subjectToken: 'subject' });
    await expect(exchange.fetchToken({})).rejects.toMatchObject({ code: 'ERR_OAUTH', error: 'unsupported_grant_type' });
  });

  it('a server that does not rotate: the same refresh token is carried over (RFC 6749 §6) and keeps working', async () => {
    const fixed = await startNodeOAuth2Server({ rotateRefreshTokens: false });
    try {
      const first = (await fixed.login('carol')).refresh_token;
      const manager = new TokenManager({
        source: refreshToken({
          tokenEndpoint: fixed.tokenEndpoint,
          clientId: fixed.client.clientId,
          clientSecret: fixed.client.clientSecret,
          refreshToken: first,
          allowInsecureRequests: true,
        }),
      });
      const a = await manager.getToken();
      const b = await manager.refresh();
      expect(a.refreshToken).toBe(first);
      expect(b.refreshToken).toBe(first);
      expect(b.accessToken).not.toBe(a.accessToken);
      await manager.close();
    } finally {
      await fixed.close();
    }
  });

  it('UserTokens with tokenEndpoint (no discovery): save a login, serve it, refresh it once on expiry, revoke needs an endpoint', async () => {
    const clock = new ManualClock();
    const users = new UserTokens({
      issuer: server.url,
      tokenEndpoint: server.tokenEndpoint,
      clientId: server.client.clientId,
      clientSecret: server.client.clientSecret,
      allowInsecureRequests: true,
      clock,
    });
    const login = await server.login('erin');
    await users.save('erin', login);
    expect((await users.getAccessToken('erin')).accessToken).toBe(login['access_token']);
    const from = server.refreshTokensPresented.length;
    await clock.advance(61_000); // past the 60 s access token
    const [a, b] = await Promise.all([users.getAccessToken('erin'), users.getAccessToken('erin')]);
    expect(a.accessToken).not.toBe(login['access_token']);
    expect(b.accessToken).toBe(a.accessToken);
    expect(server.refreshTokensPresented.slice(from)).toEqual([login['refresh_token']]);
    await expect(users.revoke('erin')).rejects.toMatchObject({ code: 'ERR_UNSUPPORTED' });
    await expect(users.getAccessToken('erin')).rejects.toMatchObject({ code: 'ERR_LOGIN_REQUIRED' });
    await users.close();
  });

  it('UserTokens with tokenEndpoint: an ID token signed with the client secret (HS256) is checked; one signed with a key is ERR_DISCOVERY (no jwks_uri) unless verifyIdTokenSignature: false', async () => {
    const options = {
      issuer: server.url,
      tokenEndpoint: server.tokenEndpoint,
      clientId: server.client.clientId,
      clientSecret: server.client.clientSecret,
      allowInsecureRequests: true,
    };
    const idToken = (subject: string, key: CryptoKey | Uint8Array, alg: string) =>
      new SignJWT({ sub: subject })
        .setProtectedHeader({ alg })
        .setIssuer(server.url)
        .setAudience(server.client.clientId)
        .setIssuedAt()
        .setExpirationTime('5m')
        .sign(key);
    const secret = new TextEncoder().encode(server.client.clientSecret);
    const { privateKey } = await generateKeyPair('RS256');
    const users = new UserTokens(options);
    const hs = { ...(await server.login('frank')), id_token: await idToken('frank', secret, 'HS256') };
    await users.save('frank', hs);
    expect((await users.getClaims('frank'))?.sub).toBe('frank');
    const forged = { ...(await server.login('frank')), id_token: await idToken('frank', new Uint8Array(32), 'HS256') };
    await expect(users.save('frank', forged)).rejects.toMatchObject({ code: 'ERR_ID_TOKEN_INVALID' });
    const rs = { ...(await server.login('gina')), id_token: await idToken('gina', privateKey, 'RS256') };
    await expect(users.save('gina', rs)).rejects.toMatchObject({ code: 'ERR_DISCOVERY' });
    await users.close();
    const unchecked = new UserTokens({ ...options, verifyIdTokenSignature: false });
    await unchecked.save('gina', rs);
    expect((await unchecked.getClaims('gina'))?.sub).toBe('gina');
    await unchecked.close();
  });

  it('an expired refresh token → invalid_grant; with a fallback, the fallback source answers instead', async () => {
    const short = await startNodeOAuth2Server({ refreshTokenTtl: 1 });
    try {
      const first = (await short.login('dave')).refresh_token;
      await new Promise((resolve) => setTimeout(resolve, 1_100)); // the server's own clock: nothing else moves it
      const options = {
        tokenEndpoint: short.tokenEndpoint,
        clientId: short.client.clientId,
        clientSecret: short.client.clientSecret,
        allowInsecureRequests: true,
      };
      await expect(refreshToken({ ...options, refreshToken: first }).fetchToken({})).rejects.toMatchObject({
        code: 'ERR_OAUTH',
        error: 'invalid_grant',
        status: 400,
      });
      const rescued = await refreshToken({
        ...options,
        refreshToken: first,
        fallback: clientCredentials(options),
      }).fetchToken({});
      expect(rescued.accessToken).toMatch(/^[0-9a-f]{40,}$/);
      expect(short.byGrant['client_credentials']).toBe(1);
    } finally {
      await short.close();
    }
  });
});
