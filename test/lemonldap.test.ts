/**
 * The client and server sides against a sixth real authorization server: LemonLDAP::NG (Perl; Debian's package,
 * 2.16), found by OpenID Connect discovery. What it adds: refresh tokens that are never rotated (the same one
 * carried over, RFC 6749 §6), a login bound to an SSO session an administrator can end, JWT access tokens typed
 * `JWT` whose signature, issuer and `typ` are those of its ID tokens, no revocation endpoint, and refusals the
 * RFCs name otherwise (a refresh token it does not know is `invalid_request`); see `test/support/lemonldap.ts`.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SignJWT, decodeJwt, generateKeyPair } from 'jose';
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from 'vitest';
import { ManualClock } from '../src/clock.js';
import {
  FileStore,
  TokenManager,
  TokenwardenError,
  UserTokens,
  clearDiscoveryCache,
  clientCredentials,
  discover,
  refreshToken,
} from '../src/index.js';
import { createVerifier } from '../src/server/index.js';
import { type LemonLdap, requireLemonLdap, startLemonLdap } from './support/lemonldap.js';
import { renderings } from './security/support.js';

const available = requireLemonLdap();
let server: LemonLdap;

beforeAll(async () => {
  if (!available) return;
  server = await startLemonLdap();
}, 60_000);
afterAll(async () => {
  if (!available) return;
  await server.close();
});

const JWT = /^eyJ[\w-]+\.[\w-]+\.[\w-]+$/;
const svc = () => ({ issuer: server.issuer, ...server.clients.svc, allowInsecureRequests: true });
const app = (refresh: string) =>
  refreshToken({ issuer: server.issuer, ...server.clients.app, refreshToken: refresh, allowInsecureRequests: true });
const users = (clock = new ManualClock(), path?: string) =>
  new UserTokens({
    issuer: server.issuer,
    ...server.clients.app,
    allowInsecureRequests: true,
    clock,
    ...(path !== undefined && { store: new FileStore({ path }) }),
  });
const presented = async () => (await server.record()).refreshTokensPresented;

describe.skipIf(!available)('LemonLDAP::NG', () => {
  it('discovery at the issuer: the endpoints, both secret methods, the grants it allows — and no revocation endpoint', async () => {
    clearDiscoveryCache(server.issuer);
    const metadata = await discover(server.issuer, { allowInsecureRequests: true, force: true });
    expect(metadata).toMatchObject({
      issuer: server.issuer,
      token_endpoint: server.tokenEndpoint,
      introspection_endpoint: server.introspectionEndpoint,
      jwks_uri: `${server.issuer}/oauth2/jwks`,
      token_endpoint_auth_methods_supported: ['client_secret_post', 'client_secret_basic'],
    });
    expect(metadata.grant_types_supported).toEqual(
      expect.arrayContaining(['client_credentials', 'password', 'refresh_token']),
    );
    expect(metadata.revocation_endpoint).toBeUndefined();
    const manager = new TokenManager({ source: clientCredentials({ ...svc(), scope: 'read' }) });
    expect((await manager.getToken()).accessToken).toMatch(JWT);
    await manager.close();
  });

  describe('client credentials through a TokenManager', () => {
    it('client_secret_basic and client_secret_post: a JWT for the client, its lifetime from expires_in; the scope left out when all was granted', async () => {
      for (const clientAuth of ['client_secret_basic', 'client_secret_post'] as const) {
        const before = Date.now();
        const manager = new TokenManager({ source: clientCredentials({ ...svc(), clientAuth, scope: 'read write' }) });
        const token = await manager.getToken();
        expect(token.tokenType, clientAuth).toBe('Bearer');
        // RFC 6749 §5.1: scope is OPTIONAL when it is the one asked for; LLNG leaves it out then.
        expect(token.scope, clientAuth).toBeUndefined();
        expect(decodeJwt(token.accessToken)).toMatchObject({ client_id: 'svc', sub: 'svc', scope: 'read write' });
        expect(token.expiresAt! - before).toBeGreaterThan((server.accessTokenTtl - 5) * 1000);
        expect(token.expiresAt! - before).toBeLessThanOrEqual((server.accessTokenTtl + 1) * 1000);
        await manager.close();
      }
      // Less than asked for: said (RFC 6749 §3.3).
      const less = await clientCredentials({ ...svc(), scope: 'read admin' }).fetchToken({});
      expect(less.scope).toBe('read');
      await expect(clientCredentials({ ...svc(), scope: 'admin' }).fetchToken({})).rejects.toMatchObject({
        code: 'ERR_OAUTH',
        error: 'invalid_scope',
        status: 400,
      });
    });

    it('a wrong secret: invalid_client, 401 with Basic, 400 with the secret in the body (RFC 6749 §5.2 allows it), not retried at once, the secret nowhere', async () => {
      const secret = `${server.clients.svc.clientSecret}-wrong`;
      for (const [clientAuth, status] of [
        ['client_secret_basic', 401],
        ['client_secret_post', 400],
      ] as const) {
        const from = (await server.record()).byGrant['client_credentials'] ?? 0;
        const manager = new TokenManager({ source: clientCredentials({ ...svc(), clientAuth, clientSecret: secret }) });
        const err = await manager.getToken().catch((e: unknown) => e);
        expect(err, clientAuth).toBeInstanceOf(TokenwardenError);
        expect(err, clientAuth).toMatchObject({ code: 'ERR_OAUTH', error: 'invalid_client', status });
        await expect(manager.getToken()).rejects.toBe(err);
        expect(((await server.record()).byGrant['client_credentials'] ?? 0) - from).toBe(1);
        const everything = renderings(err);
        for (const form of [secret, Buffer.from(`svc:${secret}`).toString('base64')]) {
          expect(everything).not.toContain(form);
        }
        await manager.close();
      }
    });

    it('a secret with a ~ whose Basic credential has a + in its Base64: refused as invalid_client (LLNG reads the credential up to the +); client_secret_post works', async () => {
      const tilde = { issuer: server.issuer, ...server.clients.tilde, scope: 'read', allowInsecureRequests: true };
      expect(Buffer.from(`tilde:${server.clients.tilde.clientSecret}`).toString('base64')).toContain('+');
      await expect(
        clientCredentials({ ...tilde, clientAuth: 'client_secret_basic' }).fetchToken({}),
      ).rejects.toMatchObject({ code: 'ERR_OAUTH', error: 'invalid_client', status: 401 });
      const token = await clientCredentials({ ...tilde, clientAuth: 'client_secret_post' }).fetchToken({});
      expect(decodeJwt(token.accessToken).client_id).toBe('tilde');
    });

    it('JWT client authentication (RFC 7523), which 2.16 does not have: private_key_jwt is invalid_client (400: no Basic header), not retried at once', async () => {
      const { privateKey } = await generateKeyPair('ES256', { extractable: true });
      const manager = new TokenManager({
        source: clientCredentials({
          issuer: server.issuer,
          clientId: 'svc',
          privateKey,
          scope: 'read',
          allowInsecureRequests: true,
        }),
      });
      const err = await manager.getToken().catch((e: unknown) => e);
      expect(err).toMatchObject({ code: 'ERR_OAUTH', error: 'invalid_client', status: 400 });
      await expect(manager.getToken()).rejects.toBe(err);
      await manager.close();
    });
  });

  describe('refresh tokens it does not rotate', () => {
    it('a TokenManager carries the one refresh token over (RFC 6749 §6): presented once per refresh, never twice at once', async () => {
      const login = await server.login('dwho');
      const from = (await presented()).length;
      const manager = new TokenManager({ source: app(login.refresh_token) });
      const tokens = [await manager.getToken()];
      for (let i = 0; i < 3; i++) tokens.push(await manager.refresh());
      expect(new Set(tokens.map((t) => t.refreshToken))).toEqual(new Set([login.refresh_token]));
      expect(new Set(tokens.map((t) => t.accessToken)).size).toBe(4);
      // Concurrent callers share one refresh.
      await Promise.all(Array.from({ length: 8 }, () => manager.refresh()));
      expect((await presented()).length - from).toBe(5);
      await manager.close();
    });

    it('UserTokens: the login saved, refreshed at expiry with the same refresh token and a new ID token for the same user; two instances on one FileStore, four callers each: one refresh per expiry', async () => {
      const clock = new ManualClock();
      const path = await mkdtemp(join(tmpdir(), 'tw-lemonldap-users-'));
      const instances = [users(clock, path), users(clock, path)];
      onTestFinished(async () => {
        await Promise.all(instances.map((u) => u.close()));
        await rm(path, { recursive: true, force: true });
      });
      const login = await server.login('rtyler');
      const saved = await instances[0]!.save('rtyler', login);
      expect(saved.accessToken).toBe(login.access_token);
      const from = (await presented()).length;
      for (let round = 1; round <= 2; round++) {
        await clock.advance((server.accessTokenTtl + 1) * 1000);
        const tokens = await Promise.all(
          instances.flatMap((u) => Array.from({ length: 4 }, () => u.getAccessToken('rtyler'))),
        );
        expect(new Set(tokens.map((t) => t.accessToken)).size).toBe(1);
        expect(tokens[0]!.accessToken).not.toBe(login.access_token);
        expect((await presented()).slice(from)).toEqual(Array.from({ length: round }, () => login.refresh_token));
      }
      const idToken = await instances[1]!.getIdToken('rtyler');
      expect(idToken).not.toBe(login.id_token);
      expect(decodeJwt(idToken!)).toMatchObject({ sub: 'rtyler', aud: ['app', server.resource], azp: 'app' });
    });

    it('a refresh token whose session an administrator deleted: LLNG answers invalid_request (not RFC 6749 invalid_grant) — ERR_OAUTH, the refresh token kept, not asked again at once', async () => {
      const clock = new ManualClock();
      const u = users(clock);
      const login = await server.login('msmith');
      await u.save('msmith', login);
      await server.deleteSessions(login.refresh_token);
      await clock.advance((server.accessTokenTtl + 1) * 1000);
      const from = (await presented()).length;
      const refused = async () => {
        const err = await u.getAccessToken('msmith').catch((e: unknown) => e);
        expect(err).toMatchObject({ code: 'ERR_OAUTH', error: 'invalid_request', status: 400 });
        expect(renderings(err)).not.toContain(login.refresh_token);
      };
      await refused();
      await refused(); // answered from the failure: a 400 is not transient
      expect((await presented()).slice(from)).toEqual([login.refresh_token]);
      // Kept: invalid_request is no verdict on the token (it may be our request that is wrong).
      await clock.advance(15 * 60_000);
      await refused();
      expect((await presented()).slice(from)).toEqual([login.refresh_token, login.refresh_token]);
      await u.close();
    });

    it('an SSO session ended by an administrator: the refresh is invalid_grant — ERR_LOGIN_REQUIRED, the refresh token dropped, nothing sent again', async () => {
      const clock = new ManualClock();
      const u = users(clock);
      const login = await server.login('rtyler');
      await u.save('rtyler', login);
      await server.deleteSessions(await server.ssoSessionOf(login.access_token));
      await clock.advance((server.accessTokenTtl + 1) * 1000);
      const from = (await presented()).length;
      await expect(u.getAccessToken('rtyler')).rejects.toMatchObject({
        code: 'ERR_LOGIN_REQUIRED',
        error: 'invalid_grant',
      });
      await expect(u.getAccessToken('rtyler')).rejects.toMatchObject({ code: 'ERR_LOGIN_REQUIRED' });
      expect((await presented()).length - from).toBe(1);
      await u.close();
    });

    it('UserTokens.revoke without a revocation endpoint: the record deleted, ERR_UNSUPPORTED says the server may still honour the refresh token; nothing sent to its token endpoint', async () => {
      const u = users();
      const login = await server.login('dwho');
      await u.save('dwho', login);
      const before = await server.record();
      const err = await u.revoke('dwho').catch((e: unknown) => e);
      expect(err).toMatchObject({
        code: 'ERR_UNSUPPORTED',
        message: expect.stringContaining('no revocation endpoint'),
      });
      expect(renderings(err)).not.toContain(login.refresh_token);
      await expect(u.getAccessToken('dwho')).rejects.toMatchObject({ code: 'ERR_LOGIN_REQUIRED' });
      expect((await server.record()).requests.filter((r) => r !== 'GET /.well-known/openid-configuration')).toEqual(
        before.requests.filter((r) => r !== 'GET /.well-known/openid-configuration'),
      );
      // It does: LLNG 2.16 can only be told by an administrator.
      expect((await app(login.refresh_token).fetchToken({})).accessToken).toMatch(JWT);
      await u.close();
    });
  });

  describe('its JWT access tokens checked against its JWKS', () => {
    it('accepted with their subject, client and scopes for the additional audience; refused: another audience, a bad signature, expired, and strict (typ JWT, not at+jwt)', async () => {
      const clock = new ManualClock(Date.now());
      const verify = createVerifier({
        issuer: server.issuer,
        audience: server.resource,
        allowInsecureRequests: true,
        clock,
        cache: false,
      });
      const service = await clientCredentials({ ...svc(), scope: 'read write' }).fetchToken({});
      const login = await server.login('dwho');
      const s = await verify(`Bearer ${service.accessToken}`);
      expect(s.ok && [s.auth.uid, s.auth.info.clientId, s.auth.credentials.scopes]).toEqual([
        'svc',
        'svc',
        ['read', 'write'],
      ]);
      const u = await verify(`Bearer ${login.access_token}`);
      expect(u.ok && [u.auth.uid, u.auth.info.clientId, u.auth.credentials.scopes]).toEqual([
        'dwho',
        'app',
        ['openid', 'read', 'write'],
      ]);
      // The tilde client has no additional audience: its tokens name only itself.
      const other = await clientCredentials({
        issuer: server.issuer,
        ...server.clients.tilde,
        clientAuth: 'client_secret_post',
        scope: 'read',
        allowInsecureRequests: true,
      }).fetchToken({});
      expect(decodeJwt(other.accessToken).aud).toEqual(['tilde']);
      expect(await verify(`Bearer ${other.accessToken}`)).toMatchObject({
        ok: false,
        failure: { status: 401, description: 'unexpected audience' },
      });
      const [head, body, sig] = service.accessToken.split('.') as [string, string, string];
      const forged = `${head}.${body}.${sig.slice(0, -4)}${sig.endsWith('AAAA') ? 'BBBB' : 'AAAA'}`;
      expect(await verify(`Bearer ${forged}`)).toMatchObject({ ok: false, failure: { status: 401 } });
      // Signed by another key under its key id: refused.
      const { privateKey } = await generateKeyPair('RS256');
      const impostor = await new SignJWT(decodeJwt(service.accessToken))
        .setProtectedHeader({ alg: 'RS256', typ: 'JWT', kid: 'llng-rs256' })
        .sign(privateKey);
      expect(await verify(`Bearer ${impostor}`)).toMatchObject({ ok: false, failure: { status: 401 } });
      await clock.advance((server.accessTokenTtl + 61) * 1000); // past exp and the default clock tolerance
      expect(await verify(`Bearer ${service.accessToken}`)).toMatchObject({
        ok: false,
        failure: { status: 401, description: 'token expired' },
      });
      const strict = createVerifier({
        issuer: server.issuer,
        audience: server.resource,
        allowInsecureRequests: true,
        strict: true,
      });
      expect(await strict(`Bearer ${login.access_token}`)).toMatchObject({
        ok: false,
        failure: { status: 401, description: 'unexpected token type' },
      });
    });

    it('an ID token is not an access token: same key, issuer, typ and aud (the client id and its additional audiences) — refused, its access tokens accepted', async () => {
      const login = await server.login('rtyler');
      const [access, id] = [login.access_token, login.id_token].map((t) => decodeJwt(t));
      expect([id!.iss, id!.aud]).toEqual([access!.iss, ['app', server.resource]]);
      for (const audience of ['app', server.resource]) {
        const verify = createVerifier({ issuer: server.issuer, audience, allowInsecureRequests: true });
        expect((await verify(`Bearer ${login.access_token}`)).ok, audience).toBe(true);
        expect(await verify(`Bearer ${login.id_token}`), audience).toMatchObject({
          ok: false,
          failure: { status: 401, error: 'invalid_token', description: 'unexpected token type' },
        });
      }
    });
  });

  describe('introspection (RFC 7662) by a resource server client', () => {
    const introspect = () =>
      createVerifier({
        issuer: server.issuer,
        strategy: 'introspection',
        introspection: server.clients.api,
        allowInsecureRequests: true,
        cache: false,
      });

    it('an active token accepted with its subject, client and scopes; one revoked by an administrator (its session deleted) refused; an ID token inactive', async () => {
      const verify = introspect();
      const login = await server.login('msmith');
      const service = await clientCredentials({ ...svc(), scope: 'read' }).fetchToken({});
      const u = await verify(`Bearer ${login.access_token}`);
      expect(u.ok && [u.auth.uid, u.auth.info.clientId, u.auth.credentials.scopes]).toEqual([
        'msmith',
        'app',
        ['openid', 'read', 'write'],
      ]);
      expect(
        u.ok && Math.abs(u.auth.credentials.expiresAt! - decodeJwt(login.access_token).exp! * 1000),
      ).toBeLessThanOrEqual(1000);
      const s = await verify(`Bearer ${service.accessToken}`);
      expect(s.ok && [s.auth.uid, s.auth.info.clientId]).toEqual(['svc', 'svc']);
      await server.deleteSessions(decodeJwt(service.accessToken).jti!);
      expect(await verify(`Bearer ${service.accessToken}`)).toMatchObject({
        ok: false,
        failure: { status: 401, error: 'invalid_token' },
      });
      expect(await verify(`Bearer ${login.id_token}`)).toMatchObject({ ok: false, failure: { status: 401 } });
      // The user's SSO session ended: every access token of it inactive.
      await server.deleteSessions(await server.ssoSessionOf(login.access_token));
      expect(await verify(`Bearer ${login.access_token}`)).toMatchObject({ ok: false, failure: { status: 401 } });
    });

    it('a wrong secret of the resource server: 503 and onError ERR_OAUTH invalid_client, the secret nowhere', async () => {
      const errors: TokenwardenError[] = [];
      const secret = `${server.clients.api.clientSecret}-wrong`;
      const verify = createVerifier({
        issuer: server.issuer,
        strategy: 'introspection',
        introspection: { ...server.clients.api, clientSecret: secret },
        allowInsecureRequests: true,
        cache: false,
        onError: (err) => errors.push(err),
      });
      const login = await server.login('dwho');
      expect(await verify(`Bearer ${login.access_token}`)).toMatchObject({ ok: false, failure: { status: 503 } });
      expect(errors[0]).toMatchObject({ code: 'ERR_OAUTH', error: 'invalid_client' });
      expect(renderings(errors[0])).not.toContain(secret);
    });
  });
});
