/**
 * The client side and introspection against a fourth real authorization server: Authlib (Python; Debian's
 * package, 1.2, on Flask), the one of the four with the JWT bearer grant (RFC 7523) and JWT client
 * authentication, found by RFC 8414 metadata alone. Its habits: a client assertion's `aud` must be its token
 * endpoint (tokenwarden's default, the issuer, is refused), a Basic credential it does not form-decode, a bad
 * client assertion answered 400 (a bad Basic credential 401 with a Basic challenge), and opaque tokens.
 */
import { generateKeyPairSync } from 'node:crypto';
import { inspect } from 'node:util';
import { decodeJwt } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ManualClock } from '../src/clock.js';
import {
  type ClientCredentialsOptions,
  type FetchLike,
  TokenwardenError,
  UserTokens,
  clearDiscoveryCache,
  clientCredentials,
  discover,
  jwtBearer,
  refreshToken,
} from '../src/index.js';
import { createVerifier } from '../src/server/index.js';
import { type Authlib, type PrivateJwk, requireAuthlib, startAuthlib } from './support/authlib.js';
import { startApi } from './support/api.js';
import { interopSuite } from './support/interop.js';
import { renderings } from './security/support.js';

const available = requireAuthlib();
let server: Authlib;

beforeAll(async () => {
  if (!available) return;
  server = await startAuthlib();
}, 60_000);
afterAll(async () => {
  if (!available) return;
  await server.close();
});

const ACCESS_TOKEN = /^[A-Za-z0-9]{42}$/;
const svc = () => ({ issuer: server.issuer, ...server.clients.svc, allowInsecureRequests: true });
const app = (refresh: string) =>
  refreshToken({
    tokenEndpoint: server.tokenEndpoint,
    ...server.clients.app,
    refreshToken: refresh,
    allowInsecureRequests: true,
  });
/** The resource server's verifier, introspecting with the `svc` client (endpoint from the metadata). */
const verifier = (clientSecret = server.clients.svc.clientSecret) =>
  createVerifier({
    issuer: server.issuer,
    strategy: 'introspection',
    introspection: { clientId: server.clients.svc.clientId, clientSecret },
    allowInsecureRequests: true,
    cache: false,
  });
/** A new key pair of the same kind as `jwk`, with its `kid`: what an impostor who knows the key id signs with. */
function impostorOf(jwk: PrivateJwk): PrivateJwk {
  const { privateKey } =
    jwk.kty === 'RSA'
      ? generateKeyPairSync('rsa', { modulusLength: 2048 })
      : generateKeyPairSync('ec', { namedCurve: 'P-256' });
  return { ...privateKey.export({ format: 'jwk' }), kid: jwk.kid, alg: jwk.alg };
}
/** A fetch that keeps every form field named `field` it sends. */
function keeping(field: string): { fetch: FetchLike; sent: string[] } {
  const sent: string[] = [];
  const fetchKeeping: FetchLike = async (input, init) => {
    const value = init?.body instanceof URLSearchParams ? init.body.get(field) : null;
    if (value !== null) sent.push(value);
    return fetch(input, init);
  };
  return { fetch: fetchKeeping, sent };
}

describe.skipIf(!available)('Authlib', () => {
  // Found by discovery from the issuer: RFC 8414 metadata, after the OpenID Connect addresses answer 404.
  interopSuite(() => ({
    client: svc,
    accessTokenTtl: 60,
    login: () => server.login('bob'),
    refreshSource: app,
    record: () => server.record(),
    accessToken: ACCESS_TOKEN,
  }));

  it('discovery from the issuer: OpenID Connect (404, and 404 with the slash), then RFC 8414 metadata; oidc alone is ERR_HTTP_STATUS 404', async () => {
    clearDiscoveryCache(server.issuer);
    const from = (await server.record()).wellKnown.length;
    const options = { allowInsecureRequests: true, timeoutMs: 5_000, maxResponseBytes: 1 << 20, force: true };
    const metadata = await discover(server.issuer, options);
    expect(metadata).toMatchObject({
      issuer: server.issuer,
      token_endpoint: server.tokenEndpoint,
      introspection_endpoint: server.introspectionEndpoint,
      revocation_endpoint: server.revocationEndpoint,
    });
    expect((await server.record()).wellKnown.slice(from)).toEqual([
      '/.well-known/openid-configuration 404',
      '/.well-known/openid-configuration/ 404',
      '/.well-known/oauth-authorization-server 200',
    ]);
    await expect(discover(server.issuer, { ...options, algorithm: 'oidc' })).rejects.toMatchObject({
      code: 'ERR_HTTP_STATUS',
      status: 404,
    });
    clearDiscoveryCache(server.issuer);
  });

  describe('the JWT bearer grant (RFC 7523)', () => {
    const robot = (privateKey: PrivateJwk, subject = 'alice', fetch?: FetchLike) =>
      jwtBearer({
        issuer: server.issuer,
        clientId: server.clients.robot.clientId,
        assertion: { privateKey, subject },
        scope: 'read',
        allowInsecureRequests: true,
        ...(fetch && { fetch }),
      });

    it('an assertion signed by either registered key (RS256, ES256) is exchanged for a token the server says is for its subject', async () => {
      const verify = verifier();
      for (const [key, subject] of [
        [server.clients.robot.rs256, 'alice'],
        [server.clients.robot.es256, 'carol'],
      ] as const) {
        const before = Date.now();
        const token = await robot(key, subject).fetchToken({});
        expect(token).toMatchObject({ tokenType: 'Bearer', scope: 'read' });
        expect(token.accessToken).toMatch(ACCESS_TOKEN);
        expect(token.refreshToken).toBeUndefined();
        expect(token.expiresAt! - before).toBeGreaterThan(55_000);
        const result = await verify(`Bearer ${token.accessToken}`);
        expect(result.ok && [result.auth.uid, result.auth.info.clientId, result.auth.credentials.scopes]).toEqual([
          subject,
          'robot',
          ['read'],
        ]);
      }
    });

    it('an assertion signed by an unregistered key (a registered kid) → ERR_OAUTH invalid_grant; an unknown subject too; the assertion nowhere', async () => {
      const { fetch, sent } = keeping('assertion');
      const impostor = impostorOf(server.clients.robot.rs256);
      const err = await robot(impostor, 'alice', fetch)
        .fetchToken({})
        .catch((e: unknown) => e);
      expect(err).toBeInstanceOf(TokenwardenError);
      expect(err).toMatchObject({ code: 'ERR_OAUTH', error: 'invalid_grant', status: 400 });
      expect(sent).toHaveLength(1);
      const everything = renderings(err);
      for (const part of [sent[0]!, ...sent[0]!.split('.')]) expect(everything).not.toContain(part);
      expect(everything).not.toContain(impostor.d);
      await expect(robot(server.clients.robot.es256, 'mallory').fetchToken({})).rejects.toMatchObject({
        code: 'ERR_OAUTH',
        error: 'invalid_grant',
      });
    });
  });

  describe('JWT client authentication (RFC 7523 §2.2)', () => {
    /** The assertion's audience: the token endpoint (what Authlib wants), or `null` for tokenwarden's default. */
    type Audience = 'token_endpoint' | null;
    const hmac = (extra: Partial<ClientCredentialsOptions> = {}, audience: Audience = 'token_endpoint') =>
      clientCredentials({
        issuer: server.issuer,
        ...server.clients.hmac,
        clientAuth: 'client_secret_jwt',
        scope: 'read',
        allowInsecureRequests: true,
        ...(audience && { clientAssertionAudience: audience }),
        ...extra,
      });
    const signed = (extra: Partial<ClientCredentialsOptions> = {}, audience: Audience = 'token_endpoint') =>
      clientCredentials({
        issuer: server.issuer,
        clientId: server.clients.jwt.clientId,
        privateKey: server.clients.jwt.privateJwk,
        scope: 'read',
        allowInsecureRequests: true,
        ...(audience && { clientAssertionAudience: audience }),
        ...extra,
      });

    it('client_secret_jwt and private_key_jwt with the token endpoint as audience: a token each time (a fresh jti: Authlib refuses a replay)', async () => {
      for (const source of [hmac, signed]) {
        const { fetch, sent } = keeping('client_assertion');
        const credentials = source({ fetch });
        const a = await credentials.fetchToken({});
        const b = await credentials.fetchToken({});
        expect(a).toMatchObject({ tokenType: 'Bearer', scope: 'read' });
        expect(a.accessToken).toMatch(ACCESS_TOKEN);
        expect(b.accessToken).not.toBe(a.accessToken);
        expect(sent.map((jwt) => decodeJwt(jwt).aud)).toEqual([server.tokenEndpoint, server.tokenEndpoint]);
        expect(new Set(sent).size).toBe(2);
      }
      // The same assertion again is refused: the jti check is real, so the fresh one above mattered.
      const kept = keeping('client_assertion');
      await signed({ fetch: kept.fetch }).fetchToken({});
      const replay = await fetch(server.tokenEndpoint, {
        method: 'POST',
        body: new URLSearchParams({
          grant_type: 'client_credentials',
          client_assertion_type: 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer',
          client_assertion: kept.sent[0]!,
        }),
      });
      expect([replay.status, ((await replay.json()) as { error: string }).error]).toEqual([400, 'invalid_client']);
    });

    it("tokenwarden's default audience (the issuer) is refused: Authlib wants the token endpoint → ERR_OAUTH invalid_client (400)", async () => {
      for (const source of [hmac, signed]) {
        const { fetch, sent } = keeping('client_assertion');
        await expect(source({ fetch }, null).fetchToken({})).rejects.toMatchObject({
          code: 'ERR_OAUTH',
          error: 'invalid_client',
          status: 400,
          // The error says what to try: the credential may well be right.
          message: expect.stringContaining("clientAssertionAudience: 'token_endpoint'"),
        });
        expect(sent.map((jwt) => decodeJwt(jwt).aud)).toEqual([server.issuer]);
      }
    });

    it('a wrong secret (client_secret_jwt) or an unregistered key (private_key_jwt) → ERR_OAUTH invalid_client, neither secret nor assertion anywhere', async () => {
      const secret = `${server.clients.hmac.clientSecret}-wrong`;
      const impostor = impostorOf(server.clients.jwt.privateJwk);
      const cases = [
        ['client_secret_jwt', (fetch: FetchLike) => hmac({ clientSecret: secret, fetch }), secret],
        ['private_key_jwt', (fetch: FetchLike) => signed({ privateKey: impostor, fetch }), impostor.d!],
      ] as const;
      for (const [method, source, hidden] of cases) {
        const { fetch, sent } = keeping('client_assertion');
        const err = await source(fetch)
          .fetchToken({})
          .catch((e: unknown) => e);
        expect(err, method).toBeInstanceOf(TokenwardenError);
        expect(err, method).toMatchObject({ code: 'ERR_OAUTH', error: 'invalid_client', status: 400 });
        expect((err as Error).message, method).not.toContain('clientAssertionAudience'); // it was the token endpoint
        const everything = renderings(err);
        expect(sent, method).toHaveLength(1);
        for (const part of [hidden, sent[0]!, ...sent[0]!.split('.')]) expect(everything, method).not.toContain(part);
      }
    });
  });

  it('a Basic credential Authlib does not form-decode: a secret with reserved characters → invalid_client (401) with client_secret_basic; client_secret_post works', async () => {
    const odd = (clientAuth: 'client_secret_basic' | 'client_secret_post') =>
      clientCredentials({ issuer: server.issuer, ...server.clients.odd, clientAuth, allowInsecureRequests: true });
    expect((await odd('client_secret_post').fetchToken({})).accessToken).toMatch(ACCESS_TOKEN);
    const err = await odd('client_secret_basic')
      .fetchToken({})
      .catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'ERR_OAUTH', error: 'invalid_client', status: 401 });
    expect((err as Error).message).toContain("clientAuth: 'client_secret_post'"); // what to try instead
    expect(renderings(err)).not.toContain(server.clients.odd.clientSecret);
    // What it matches instead: the secret as it is, not form-encoded (RFC 6749 §2.3.1 asks for the encoding).
    const { clientId, clientSecret } = server.clients.odd;
    const raw = await fetch(server.tokenEndpoint, {
      method: 'POST',
      headers: { authorization: `Basic ${Buffer.from(`${clientId}:${clientSecret}`).toString('base64')}` },
      body: new URLSearchParams({ grant_type: 'client_credentials' }),
    });
    expect(raw.status).toBe(200);
  });

  it('UserTokens found by RFC 8414 discovery: a saved login served, refreshed once on expiry for two callers, revoked at the revocation endpoint of the metadata', async () => {
    const clock = new ManualClock();
    const users = new UserTokens({ issuer: server.issuer, ...server.clients.app, allowInsecureRequests: true, clock });
    const verify = verifier();
    const login = await server.login('carol');
    await users.save('carol', login);
    expect((await users.getAccessToken('carol')).accessToken).toBe(login.access_token);
    const from = (await server.record()).refreshTokensPresented.length;
    await clock.advance(61_000);
    const [a, b] = await Promise.all([users.getAccessToken('carol'), users.getAccessToken('carol')]);
    expect(a.accessToken).not.toBe(login.access_token);
    expect(b.accessToken).toBe(a.accessToken);
    expect((await server.record()).refreshTokensPresented.slice(from)).toEqual([login.refresh_token]);
    expect((await verify(`Bearer ${a.accessToken}`)).ok).toBe(true);
    expect(await users.revoke('carol')).toEqual({ refreshToken: true, accessTokens: 1 });
    await expect(users.getAccessToken('carol')).rejects.toMatchObject({ code: 'ERR_LOGIN_REQUIRED' });
    expect(await verify(`Bearer ${a.accessToken}`)).toMatchObject({ ok: false, failure: { status: 401 } });
    await users.close();
  });

  describe('introspection (RFC 7662) by a resource server, the endpoint from the metadata', () => {
    it('an access token it issued is active, with its subject and scopes; a refresh token, an unknown or a revoked one is 401 invalid_token', async () => {
      const verify = verifier();
      const login = await server.login('dave');
      const ok = await verify(`Bearer ${login.access_token}`);
      expect(ok.ok && [ok.auth.uid, ok.auth.issuer, ok.auth.credentials.scopes]).toEqual([
        'dave',
        server.issuer,
        ['read', 'write'],
      ]);
      const invalid = { ok: false, failure: { status: 401, error: 'invalid_token' } };
      expect(await verify(`Bearer ${login.refresh_token}`)).toMatchObject(invalid);
      expect(await verify('Bearer not-a-token-it-issued')).toMatchObject(invalid);
      const users = new UserTokens({ issuer: server.issuer, ...server.clients.app, allowInsecureRequests: true });
      await users.save('dave', login);
      await users.revoke('dave');
      await users.close();
      expect(await verify(`Bearer ${login.access_token}`)).toMatchObject(invalid);
    });

    it('an access token revoked alone: the API answers 401 invalid_token, fetchAs refreshes once and sends the request again', async () => {
      const api = await startApi({
        issuer: server.issuer,
        strategy: 'introspection',
        introspection: { clientId: server.clients.svc.clientId, clientSecret: server.clients.svc.clientSecret },
        allowInsecureRequests: true,
        cache: false,
      });
      const users = new UserTokens({ issuer: server.issuer, ...server.clients.app, allowInsecureRequests: true });
      try {
        const login = await server.login('erin');
        await users.save('erin', login);
        const call = users.fetchAs('erin');
        expect((await call(api.url)).status).toBe(200);
        await users.client.revoke(login.access_token as string, 'access_token');
        const from = (await server.record()).refreshTokensPresented.length;
        const res = await call(api.url, { method: 'POST', body: '{"item":1}' });
        expect([res.status, await res.text()]).toEqual([200, 'ok']);
        expect((await server.record()).refreshTokensPresented.slice(from)).toEqual([login.refresh_token]);
        const fresh = (await users.getAccessToken('erin')).accessToken;
        expect(api.seen).toEqual([`Bearer ${login.access_token}`, `Bearer ${login.access_token}`, `Bearer ${fresh}`]);
      } finally {
        await users.close();
        await api.close();
      }
    });

    it('a client credentials token (no subject) is active for its client', async () => {
      const token = await clientCredentials({ ...svc(), scope: 'write' }).fetchToken({});
      const result = await verifier()(`Bearer ${token.accessToken}`);
      expect(result.ok && [result.auth.uid, result.auth.credentials.scopes]).toEqual(['svc', ['write']]);
    });

    it("the resource server's own credentials refused (401 invalid_client): 503 for the token, the secret nowhere", async () => {
      const secret = `${server.clients.svc.clientSecret}-not`;
      const result = await verifier(secret)(`Bearer ${(await server.login('erin')).access_token}`);
      expect(result).toMatchObject({ ok: false, failure: { status: 503, error: 'temporarily_unavailable' } });
      expect(inspect(result, { depth: 10 })).not.toContain(secret);
    });
  });
});
