/**
 * The client and server sides against a fifth real authorization server: Glewlwyd (C; Debian's package, 2.7.5),
 * found by OpenID Connect discovery under a path (`/api/oidc`). What it adds: RFC 9068 JWT access tokens (`typ:
 * at+jwt`) checked against its JWKS, DPoP from a server other than oidc-provider, RFC 8707 resource indicators,
 * one-time refresh tokens whose reuse disables the newest of the chain, and refusals without an OAuth body — an
 * unknown client is `403` with nothing in it, a refused refresh token `400` with nothing in it.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SignJWT, calculateJwkThumbprint, decodeJwt, exportJWK, generateKeyPair } from 'jose';
import axios from 'axios';
import * as oauth from 'oauth4webapi';
import { Agent, request as undiciRequest } from 'undici';
import { afterAll, beforeAll, describe, expect, it, onTestFinished, vi } from 'vitest';
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
import { axiosAuth } from '../src/http/axios.js';
import { authInterceptor } from '../src/http/undici.js';
import { bearerAuth } from '../src/server/adapters/node.js';
import { type Glewlwyd, requireGlewlwyd, startGlewlwyd } from './support/glewlwyd.js';
import { startApi } from './support/api.js';
import { interopSuite } from './support/interop.js';
import { renderings } from './security/support.js';
import { PASSWORD } from './support/python-server.js';

const available = requireGlewlwyd();
let server: Glewlwyd;

beforeAll(async () => {
  if (!available) return;
  server = await startGlewlwyd();
}, 60_000);
afterAll(async () => {
  if (!available) return;
  await server.close();
});

const JWT = /^eyJ[\w-]+\.[\w-]+\.[\w-]+$/;
const svcOf = (s: Glewlwyd) => ({ issuer: s.issuer, ...s.clients.svc, allowInsecureRequests: true });
const svc = () => svcOf(server);
const app = (refresh: string) =>
  refreshToken({ issuer: server.issuer, ...server.clients.app, refreshToken: refresh, allowInsecureRequests: true });
/** `username`'s password-grant login with its tokens bound to `keyPair` (DPoP), through oauth4webapi. */
async function dpopLogin(keyPair: CryptoKeyPair, username: string): Promise<Record<string, unknown>> {
  const as = await discover(server.issuer, { allowInsecureRequests: true });
  const client: oauth.Client = { client_id: server.clients.app.clientId };
  const options = { DPoP: oauth.DPoP(client, keyPair), [oauth.allowInsecureRequests]: true };
  const request = () =>
    oauth.genericTokenEndpointRequest(
      as,
      client,
      oauth.ClientSecretPost(server.clients.app.clientSecret),
      'password',
      new URLSearchParams({ username, password: PASSWORD, scope: 'read write' }),
      options,
    );
  const response = await oauth.processGenericTokenEndpointResponse(as, client, await request());
  expect(response.token_type.toLowerCase()).toBe('dpop');
  return response as unknown as Record<string, unknown>;
}

describe.skipIf(!available)('Glewlwyd', () => {
  interopSuite(() => ({
    client: svc,
    accessTokenTtl: server.accessTokenTtl,
    login: () => server.login('bob'),
    refreshSource: app,
    record: () => server.record(),
    accessToken: JWT,
    refusals: {
      client: { code: 'ERR_HTTP_STATUS', status: 403 },
      scope: { code: 'ERR_OAUTH', error: 'scope_invalid', status: 400 },
      spentRefreshToken: { code: 'ERR_HTTP_STATUS', status: 400 },
      reuseBreaksChain: true,
    },
  }));

  it('discovery under the issuer path; the grants it leaves out of grant_types_supported are used all the same', async () => {
    clearDiscoveryCache(server.issuer);
    const metadata = await discover(server.issuer, { allowInsecureRequests: true, force: true });
    expect(metadata).toMatchObject({
      issuer: server.issuer,
      token_endpoint: server.tokenEndpoint,
      introspection_endpoint: server.introspectionEndpoint,
    });
    // Glewlwyd advertises only the browser grants; RFC 8414 makes the list informative, not a contract.
    expect(metadata.grant_types_supported).not.toContain('client_credentials');
    expect(metadata.grant_types_supported).not.toContain('refresh_token');
    const manager = new TokenManager({ source: clientCredentials({ ...svc(), scope: 'read' }) });
    expect((await manager.getToken()).accessToken).toMatch(JWT);
    await manager.close();
  });

  it('a client it refuses with an empty 403: ERR_HTTP_STATUS, not retried until the fail-fast window ends, the secret nowhere', async () => {
    const secret = `${server.clients.svc.clientSecret}-wrong`;
    const from = (await server.record()).byGrant['client_credentials'] ?? 0;
    const manager = new TokenManager({ source: clientCredentials({ ...svc(), clientSecret: secret }) });
    const first = await manager.getToken().catch((e: unknown) => e);
    expect(first).toBeInstanceOf(TokenwardenError);
    expect(first).toMatchObject({ code: 'ERR_HTTP_STATUS', status: 403 });
    expect((first as Error).message).toContain('403 without an OAuth error body');
    expect(renderings(first)).not.toContain(secret);
    // A 403 is not transient: the next caller is answered from the last error, no second request.
    await expect(manager.getToken()).rejects.toBe(first);
    expect(((await server.record()).byGrant['client_credentials'] ?? 0) - from).toBe(1);
    await manager.close();
  });

  it('a refresh token it refuses with an empty 400: ERR_HTTP_STATUS for UserTokens, not asked again at once, the refresh token kept (the answer does not say it is dead)', async () => {
    const login = await server.login('carol');
    // Spent once elsewhere, then again: the chain is broken, every refresh token of it refused.
    await app(login.refresh_token).fetchToken({});
    await expect(app(login.refresh_token).fetchToken({})).rejects.toMatchObject({ status: 400 });
    const clock = new ManualClock();
    const users = new UserTokens({ issuer: server.issuer, ...server.clients.app, allowInsecureRequests: true, clock });
    await users.save('carol', login);
    await clock.advance((server.accessTokenTtl + 1) * 1000);
    const from = (await server.record()).refreshTokensPresented.length;
    const refused = async () => {
      const err = await users.getAccessToken('carol').catch((e: unknown) => e);
      expect(err).toMatchObject({ code: 'ERR_HTTP_STATUS', status: 400 });
      expect(renderings(err)).not.toContain(login.refresh_token);
    };
    await refused();
    await refused(); // answered from the failure (a 400 is not transient): no second request
    expect((await server.record()).refreshTokensPresented.length - from).toBe(1);
    // Kept, not dropped: a 400 with no reason may come from a proxy in the way, not be a verdict on the token.
    await clock.advance(15 * 60_000);
    await refused();
    expect((await server.record()).refreshTokensPresented.slice(from)).toEqual([
      login.refresh_token,
      login.refresh_token,
    ]);
    await users.close();
  });

  describe('JWT client authentication (RFC 7523 §2.2): the assertion for its token endpoint', () => {
    type Audience = 'token_endpoint' | null;
    const sources = {
      client_secret_jwt: (audience: Audience) =>
        clientCredentials({
          ...svc(),
          ...server.clients.hmac,
          clientAuth: 'client_secret_jwt',
          scope: 'read',
          ...(audience && { clientAssertionAudience: audience }),
        }),
      private_key_jwt: (audience: Audience) =>
        clientCredentials({
          issuer: server.issuer,
          clientId: server.clients.jwt.clientId,
          privateKey: server.clients.jwt.privateJwk,
          scope: 'read',
          allowInsecureRequests: true,
          ...(audience && { clientAssertionAudience: audience }),
        }),
    };

    it("with clientAssertionAudience: 'token_endpoint', a token for each method", async () => {
      for (const [method, source] of Object.entries(sources)) {
        const token = await source('token_endpoint').fetchToken({});
        expect([method, token.tokenType, decodeJwt(token.accessToken).client_id]).toEqual([
          method,
          'Bearer',
          method === 'client_secret_jwt' ? 'hmac' : 'jwt',
        ]);
      }
    });

    it("with tokenwarden's default (the issuer): a bare 403, and the error says what to try — though the answer named no invalid_client", async () => {
      for (const [method, source] of Object.entries(sources)) {
        const err = await source(null)
          .fetchToken({})
          .catch((e: unknown) => e);
        expect(err, method).toMatchObject({
          code: 'ERR_HTTP_STATUS',
          status: 403,
          message: expect.stringContaining("clientAssertionAudience: 'token_endpoint'"),
        });
        expect(renderings(err), method).not.toContain(server.clients.hmac.clientSecret);
        expect(renderings(err), method).not.toContain(server.clients.jwt.privateJwk.d);
      }
    });
  });

  describe('its JWT access tokens (RFC 9068) checked against its JWKS', () => {
    const verifier = () =>
      createVerifier({ issuer: server.issuer, audience: server.resource, allowInsecureRequests: true });

    it('a token for the resource asked for (RFC 8707): accepted with its subject, client and scopes; one with the scope string as aud refused', async () => {
      const verify = verifier();
      const token = await clientCredentials({ ...svc(), scope: 'read write', resource: server.resource }).fetchToken(
        {},
      );
      expect(decodeJwt(token.accessToken).aud).toBe(server.resource);
      const result = await verify(`Bearer ${token.accessToken}`);
      expect(result.ok && [result.auth.uid, result.auth.info.clientId, result.auth.credentials.scopes]).toEqual([
        'svc',
        'svc',
        ['read', 'write'],
      ]);
      // Without `resource`, Glewlwyd puts the scopes in `aud` ("read write"): not this API's audience.
      const login = await server.login('dave');
      expect(decodeJwt(login.access_token).aud).toBe('read write');
      expect(await verify(`Bearer ${login.access_token}`)).toMatchObject({
        ok: false,
        failure: { status: 401, error: 'invalid_token' },
      });
      // Its tokens meet the whole RFC 9068 profile (typ at+jwt; iss, exp, aud, sub, client_id, iat, jti).
      const strict = createVerifier({
        issuer: server.issuer,
        audience: server.resource,
        allowInsecureRequests: true,
        strict: true,
      });
      expect((await strict(`Bearer ${token.accessToken}`)).ok).toBe(true);
      // A signature that does not verify: refused too.
      const [head, body, sig] = token.accessToken.split('.') as [string, string, string];
      const forged = `${head}.${body}.${sig.slice(0, -4)}${sig.endsWith('AAAA') ? 'BBBB' : 'AAAA'}`;
      expect(await verify(`Bearer ${forged}`)).toMatchObject({ ok: false, failure: { status: 401 } });
    });

    it('DPoP (RFC 9449): the token bound to our key, accepted by a node:http API with a proof from TokenManager.fetch, refused as a Bearer token', async () => {
      const keyPair = await generateKeyPair('ES256', { extractable: true });
      const manager = new TokenManager({
        source: clientCredentials({ ...svc(), scope: 'read', resource: server.resource, dpop: keyPair }),
      });
      const token = await manager.getToken();
      expect(token.tokenType).toBe('DPoP');
      const jkt = await calculateJwkThumbprint(await exportJWK(keyPair.publicKey));
      expect((decodeJwt(token.accessToken).cnf as { jkt: string }).jkt).toBe(jkt);
      expect((await server.record()).dpopProofs.length).toBeGreaterThan(0);

      const authenticate = bearerAuth({
        issuer: server.issuer,
        audience: server.resource,
        allowInsecureRequests: true,
      });
      const api = createServer((req, res) => {
        void authenticate(req, res).then((auth) => {
          if (auth !== false) res.end(`${auth?.uid} ${auth?.credentials.tokenType}`);
        });
      });
      await new Promise<void>((resolve) => api.listen(0, '127.0.0.1', resolve));
      const url = `http://127.0.0.1:${(api.address() as AddressInfo).port}/orders`;
      try {
        const ok = await manager.fetch(url, { method: 'POST', body: 'x' });
        expect([ok.status, await ok.text()]).toEqual([200, 'svc DPoP']);
        const bearer = await fetch(url, { headers: { authorization: `Bearer ${token.accessToken}` } });
        expect(bearer.status).toBe(401);
        expect(bearer.headers.get('www-authenticate')).toMatch(/invalid_token/);
      } finally {
        api.close();
        await manager.close();
      }
    });
  });

  it('two UserTokens on one FileStore, four callers each when the token expires: one refresh for both, the chain intact for the next', async () => {
    const clock = new ManualClock();
    const path = await mkdtemp(join(tmpdir(), 'tw-glewlwyd-users-'));
    onTestFinished(() => rm(path, { recursive: true, force: true }));
    const instances = [0, 1].map(
      () =>
        new UserTokens({
          issuer: server.issuer,
          ...server.clients.app,
          allowInsecureRequests: true,
          clock,
          store: new FileStore({ path }),
        }),
    );
    const login = await server.login('bob');
    await instances[0]!.save('bob', login);
    const from = (await server.record()).refreshTokensPresented.length;
    for (let round = 1; round <= 2; round++) {
      await clock.advance((server.accessTokenTtl + 1) * 1000);
      const tokens = await Promise.all(
        instances.flatMap((users) => Array.from({ length: 4 }, () => users.getAccessToken('bob'))),
      );
      expect(new Set(tokens.map((t) => t.accessToken)).size).toBe(1);
      const presented = (await server.record()).refreshTokensPresented.slice(from);
      // One refresh per expiry across both instances; a second presentation would have broken the chain.
      expect(presented).toHaveLength(round);
      expect(new Set(presented).size).toBe(round);
    }
    await Promise.all(instances.map((users) => users.close()));
  });

  it('UserTokens.fetchAs calls an API as the user: a Bearer login as it is; a DPoP-bound login with a proof, refreshed with one', async () => {
    const keyPair = await generateKeyPair('ES256', { extractable: true });
    const clock = new ManualClock();
    const options = { issuer: server.issuer, ...server.clients.app, allowInsecureRequests: true, clock };
    const plainUsers = new UserTokens(options);
    const users = new UserTokens({ ...options, dpop: keyPair });
    const authenticate = bearerAuth({
      issuer: server.issuer,
      audience: 'read write', // Glewlwyd's aud without a resource: the scopes
      allowInsecureRequests: true,
    });
    const api = createServer((req, res) => {
      void authenticate(req, res).then((auth) => {
        if (auth !== false)
          res.end(`${auth?.uid} ${auth?.credentials.tokenType} ${req.headers['dpop'] ? 'proof' : '-'}`);
      });
    });
    await new Promise<void>((resolve) => api.listen(0, '127.0.0.1', resolve));
    const url = `http://127.0.0.1:${(api.address() as AddressInfo).port}/me`;
    try {
      const dave = await server.subjectOf('dave');
      await plainUsers.save('dave', await server.login('dave'));
      const plain = await plainUsers.fetchAs('dave')(url);
      expect([plain.status, await plain.text()]).toEqual([200, `${dave} Bearer -`]);

      // Glewlwyd takes a DPoP proof with a refresh token only if the login was bound to that key.
      await users.save('dave', await dpopLogin(keyPair, 'dave'));
      const bound = await users.fetchAs('dave')(url, { method: 'POST', body: 'x' });
      expect([bound.status, await bound.text()]).toEqual([200, `${dave} DPoP proof`]);
      const before = await users.getAccessToken('dave');
      const from = (await server.record()).dpopProofs.length;
      await clock.advance((server.accessTokenTtl + 1) * 1000);
      const refreshed = await users.fetchAs('dave')(url);
      expect([refreshed.status, await refreshed.text()]).toEqual([200, `${dave} DPoP proof`]);
      expect((await server.record()).dpopProofs.length - from).toBe(1); // the refresh carried a proof
      const token = await users.getAccessToken('dave');
      expect([token.tokenType, token.accessToken === before.accessToken]).toEqual(['DPoP', false]);
      const jkt = await calculateJwkThumbprint(await exportJWK(keyPair.publicKey));
      expect((decodeJwt(token.accessToken).cnf as { jkt: string }).jkt).toBe(jkt);

      // A DPoP-bound login in a UserTokens without the key: refused when it is saved (no proof possible), so
      // nothing is stored and nothing is sent for it.
      let sent = 0;
      await expect(plainUsers.save('erin', await dpopLogin(keyPair, 'erin'))).rejects.toMatchObject({
        code: 'ERR_CONFIG',
        message: expect.stringContaining('dpop'),
      });
      const unsigned = plainUsers.fetchAs('erin', undefined, { fetch: (i, init) => (sent++, fetch(i, init)) });
      await expect(unsigned(url)).rejects.toMatchObject({ code: 'ERR_LOGIN_REQUIRED' });
      expect(sent).toBe(0);

      // Nobody signed in: refused before anything is sent.
      const counting = users.fetchAs('nobody', undefined, { fetch: (i, init) => (sent++, fetch(i, init)) });
      await expect(counting(url)).rejects.toMatchObject({ code: 'ERR_LOGIN_REQUIRED' });
      expect(sent).toBe(0);
    } finally {
      api.close();
      await Promise.all([users.close(), plainUsers.close()]);
    }
  });

  describe('a DPoP nonce demanded at the token endpoint (RFC 9449 §8), replaced after every 3 uses', () => {
    let strict: Glewlwyd;
    beforeAll(async () => {
      strict = await startGlewlwyd({ dpopNonceUses: 3 });
    }, 60_000);
    afterAll(() => strict.close());

    it('asked for once, then every new nonce taken from the answer that brings it: 8 refreshes, 1 use_dpop_nonce', async () => {
      const keyPair = await generateKeyPair('ES256', { extractable: true });
      const manager = new TokenManager({
        source: clientCredentials({
          issuer: strict.issuer,
          ...strict.clients.svc,
          scope: 'read',
          allowInsecureRequests: true,
          dpop: keyPair,
        }),
      });
      const jkt = await calculateJwkThumbprint(await exportJWK(keyPair.publicKey));
      await manager.getToken();
      for (let i = 0; i < 7; i++) {
        const token = await manager.refresh();
        expect(token.tokenType).toBe('DPoP');
        expect((decodeJwt(token.accessToken).cnf as { jkt: string }).jkt).toBe(jkt);
      }
      const record = await strict.record();
      expect(record.errors).toEqual({ use_dpop_nonce: 1 });
      expect(record.byGrant['client_credentials']).toBe(9); // 8 tokens and the one request refused for its nonce
      // The server replaced its nonce along the way, and each proof carried the newest it had sent.
      const sent = record.dpopProofs.map((proof) => decodeJwt(proof).nonce);
      expect(sent[0]).toBeUndefined();
      expect(new Set(record.dpopNonces).size).toBeGreaterThan(1);
      expect(sent.slice(1).every((nonce) => typeof nonce === 'string')).toBe(true);
      await manager.close();
    });
  });

  describe('while it answers nothing (SIGSTOP: connections accepted, no answer)', () => {
    let down: Glewlwyd;
    beforeAll(async () => {
      down = await startGlewlwyd();
    }, 60_000);
    afterAll(() => down.close());

    it('a TokenManager serves its valid token without waiting, its refresh gives up at the time limit, and one refresh lands after the thaw', async () => {
      const clock = new ManualClock();
      const manager = new TokenManager({
        source: clientCredentials({
          issuer: down.issuer,
          ...down.clients.svc,
          scope: 'read',
          timeout: '500ms',
          allowInsecureRequests: true,
        }),
        clock,
      });
      const failures: string[] = [];
      manager.on('refreshFailed', ({ error }) => failures.push(error.code));
      const first = await manager.getToken();
      await down.freeze();
      try {
        await clock.advance((down.accessTokenTtl - 5) * 1000); // stale, still valid: a refresh starts
        for (let i = 0; i < 100; i++) expect((await manager.getToken()).accessToken).toBe(first.accessToken);
        // All served before the refresh gave up: none of them waited for it.
        expect(failures).toEqual([]);
        await vi.waitFor(() => expect(failures).toContain('ERR_TIMEOUT'), { timeout: 5_000, interval: 50 });
      } finally {
        down.thaw();
      }
      // Thawed: the next attempt (after its backoff) succeeds; callers had the valid token throughout.
      await vi.waitFor(
        async () => {
          await clock.advance(1_000);
          expect((await manager.getToken()).accessToken).not.toBe(first.accessToken);
        },
        { timeout: 10_000, interval: 100 },
      );
      expect(failures.every((code) => code === 'ERR_TIMEOUT')).toBe(true);
      await manager.close();
    });

    it('a verifier keeps verifying with the keys it holds, asking nothing; a token naming a key it lacks is 503 when the key fetch times out', async () => {
      const source = clientCredentials({ ...svcOf(down), scope: 'read', resource: down.resource });
      const [a, b] = [await source.fetchToken({}), await source.fetchToken({})];
      // The manual clock starts after the tokens were issued: Glewlwyd sets `nbf` to the second of issue, and a
      // clock started before a second boundary would stand before it — the verifier rightly refused such a token
      // as not yet valid.
      const clock = new ManualClock();
      const causes: string[] = [];
      const verify = createVerifier({
        issuer: down.issuer,
        audience: down.resource,
        allowInsecureRequests: true,
        timeout: '500ms',
        clock,
        onError: (err) => causes.push(err.code),
      });
      expect((await verify(`Bearer ${a.accessToken}`)).ok).toBe(true); // metadata and keys fetched
      // A token under a key id the JWKS does not have (signed by another key: it must not verify anyway).
      const { privateKey } = await generateKeyPair('RS256');
      const unknownKey = await new SignJWT(decodeJwt(a.accessToken))
        .setProtectedHeader({ alg: 'RS256', typ: 'at+jwt', kid: 'rotated-in' })
        .sign(privateKey);
      const asked = async () => (await down.record()).requests.length;
      await down.freeze();
      try {
        await clock.advance(31_000); // past the JWKS cooldown (30 s): an unknown kid may fetch the keys again
        const before = await asked();
        expect((await verify(`Bearer ${b.accessToken}`)).ok).toBe(true);
        expect(await asked()).toBe(before); // the keys it holds: no request
        const unknown = await verify(`Bearer ${unknownKey}`);
        // One assertion, so that a failure shows which of the three went otherwise.
        expect({ unknown, asked: (await down.record()).requests.slice(before), causes }).toMatchObject({
          unknown: { ok: false, failure: { status: 503, error: 'temporarily_unavailable' } },
          asked: ['GET /api/oidc/jwks'],
          causes: ['ERR_TIMEOUT'], // the key fetch gave up at its limit: nothing left hanging
        });
      } finally {
        down.thaw();
      }
    });
  });

  describe('introspection (RFC 7662)', () => {
    it('authenticated by an access token of the resource server (§2.1, a custom clientAuth): a user token active, a forged one not', async () => {
      const own = new TokenManager({ source: clientCredentials({ ...svc(), scope: 'introspect' }) });
      const verify = createVerifier({
        issuer: server.issuer,
        strategy: 'introspection',
        introspection: {
          clientId: server.clients.svc.clientId,
          clientAuth: async (_as, _client, _body, headers) => {
            headers.set('authorization', `Bearer ${(await own.getToken()).accessToken}`);
          },
        },
        allowInsecureRequests: true,
        cache: false,
      });
      const login = await server.login('erin');
      const result = await verify(`Bearer ${login.access_token}`);
      expect(result.ok && [result.auth.uid, result.auth.info.clientId, result.auth.credentials.scopes]).toEqual([
        await server.subjectOf('erin'),
        'app',
        ['read', 'write'],
      ]);
      expect(await verify('Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.')).toMatchObject({
        ok: false,
        failure: { status: 401, error: 'invalid_token' },
      });
      await own.close();
    });

    /** POSTs as the user through one of the three ways to attach a user's tokens; resolves to status and body. */
    type Caller = (users: UserTokens, url: string) => (body: string) => Promise<[number, string]>;
    const callers: [string, Caller][] = [
      [
        'fetchAs',
        (users, url) => async (body) => {
          const res = await users.fetchAs('erin')(url, { method: 'POST', body });
          return [res.status, await res.text()];
        },
      ],
      [
        'axiosAuth(tokenProvider)',
        (users, url) => {
          const api = axios.create({ baseURL: new URL(url).origin, validateStatus: () => true });
          axiosAuth(api, users.tokenProvider('erin'));
          return async (body) => {
            const res = await api.post(new URL(url).pathname, body, { responseType: 'text' });
            return [res.status, res.data as string];
          };
        },
      ],
      [
        'authInterceptor(tokenProvider)',
        (users, url) => {
          const dispatcher = new Agent().compose(authInterceptor(users.tokenProvider('erin'), { origins: [url] }));
          return async (body) => {
            const res = await undiciRequest(url, { method: 'POST', body, dispatcher });
            return [res.statusCode, await res.body.text()];
          };
        },
      ],
    ];
    for (const [name, caller] of callers) {
      it(`an access token revoked alone (the grant lives on): the API answers 401 invalid_token; ${name} refreshes once and sends the request again`, async () => {
        const api = await startApi({
          issuer: server.issuer,
          strategy: 'introspection',
          introspection: server.clients.svc,
          allowInsecureRequests: true,
          cache: false,
        });
        const { url, seen } = api;
        const users = new UserTokens({ issuer: server.issuer, ...server.clients.app, allowInsecureRequests: true });
        try {
          const login = await server.login('erin');
          await users.save('erin', login);
          const call = caller(users, url);
          expect(await call('{"item":0}')).toEqual([200, 'ok']);
          await users.client.revoke(login.access_token as string, 'access_token');
          const from = (await server.record()).byGrant['refresh_token'] ?? 0;
          expect(await call('{"item":1}')).toEqual([200, 'ok']);
          expect(((await server.record()).byGrant['refresh_token'] ?? 0) - from).toBe(1);
          const fresh = (await users.getAccessToken('erin')).accessToken;
          expect(seen).toEqual([`Bearer ${login.access_token}`, `Bearer ${login.access_token}`, `Bearer ${fresh}`]);
          expect((await users.listAccessTokens('erin')).map((e) => e.token.accessToken)).toEqual([fresh]);
        } finally {
          await users.close();
          await api.close();
        }
      });
    }

    it('UserTokens.revoke signs the user out: the access token it revoked is inactive at introspection', async () => {
      const verify = createVerifier({
        issuer: server.issuer,
        strategy: 'introspection',
        introspection: server.clients.svc,
        allowInsecureRequests: true,
        cache: false,
      });
      const users = new UserTokens({ issuer: server.issuer, ...server.clients.app, allowInsecureRequests: true });
      const login = await server.login('alice');
      await users.save('alice', login);
      expect((await verify(`Bearer ${login.access_token}`)).ok).toBe(true);
      expect(await users.revoke('alice')).toEqual({ refreshToken: true, accessTokens: 1 });
      await expect(users.getAccessToken('alice')).rejects.toMatchObject({ code: 'ERR_LOGIN_REQUIRED' });
      expect(await verify(`Bearer ${login.access_token}`)).toMatchObject({ ok: false, failure: { status: 401 } });
      await users.close();
    });
  });
});
