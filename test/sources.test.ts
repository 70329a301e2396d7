import { execFileSync } from 'node:child_process';
import { X509Certificate, createHash, createPrivateKey } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { decodeJwt, decodeProtectedHeader, exportJWK, generateKeyPair } from 'jose';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { ManualClock } from '../src/clock.js';
import { TokenwardenError } from '../src/errors.js';
import type { FetchLike } from '../src/http/transport.js';
import { TokenManager } from '../src/manager.js';
import { FileStore } from '../src/stores/file.js';
import { serializeStoredToken } from '../src/token.js';
import { clearDiscoveryCache } from '../src/sources/discovery.js';
import { clientCredentials } from '../src/sources/client-credentials.js';
import { OAuthClient } from '../src/sources/client.js';
import { jwtBearer } from '../src/sources/jwt-bearer.js';
import { refreshToken } from '../src/sources/refresh-token.js';
import { tokenExchange } from '../src/sources/token-exchange.js';
import { UserTokens, type UserTokensOptions } from '../src/users/index.js';
import { appRefreshToken } from './support/app-client.js';
import { whileMoving } from './support/clock.js';
import {
  API_RESOURCE,
  type TestAuthorizationServer,
  startAuthorizationServer,
} from './support/authorization-server.js';

let as: TestAuthorizationServer;
beforeAll(async () => {
  as = await startAuthorizationServer({ accessTokenTtl: 30 });
});
afterAll(() => as.close());

const base = () => ({ issuer: as.issuer, allowInsecureRequests: true });

describe('client credentials against a real authorization server', () => {
  it.each([
    ['client_secret_basic', () => ({ clientId: as.clients.svc.clientId, clientSecret: as.clients.svc.clientSecret })],
    [
      'client_secret_post',
      () => ({
        clientId: as.clients.post.clientId,
        clientSecret: as.clients.post.clientSecret,
        clientAuth: 'client_secret_post' as const,
      }),
    ],
    [
      'client_secret_jwt',
      () => ({
        clientId: as.clients.hmac.clientId,
        clientSecret: as.clients.hmac.clientSecret,
        clientAuth: 'client_secret_jwt' as const,
      }),
    ],
    ['private_key_jwt', () => ({ clientId: as.clients.jwt.clientId, privateKey: as.clients.jwt.privateJwk })],
  ])('obtains a token with %s', async (_method, creds) => {
    const source = clientCredentials({ ...base(), ...creds(), scope: 'read' });
    const token = await source.fetchToken({});
    const claims = decodeJwt(token.accessToken);
    expect(claims.aud).toBe(API_RESOURCE);
    expect(claims.scope).toBe('read');
    expect(token.tokenType).toBe('Bearer');
    expect(token.scope).toBe('read');
    expect(Math.abs((token.expiresAt as number) - (claims.exp as number) * 1000)).toBeLessThan(2000);
  });

  it.each([
    ['private_key_jwt', () => ({ clientId: as.clients.jwt.clientId, privateKey: as.clients.jwt.privateJwk })],
    [
      'client_secret_jwt',
      () => ({
        clientId: as.clients.hmac.clientId,
        clientSecret: as.clients.hmac.clientSecret,
        clientAuth: 'client_secret_jwt' as const,
      }),
    ],
  ])('%s: the assertion is for the issuer by default, the token endpoint or a URL when asked', async (_m, creds) => {
    const sent: unknown[] = [];
    const recording: typeof fetch = async (input, init) => {
      const body = init?.body instanceof URLSearchParams ? init.body : undefined;
      const assertion = body?.get('client_assertion');
      if (assertion) sent.push(decodeJwt(assertion).aud);
      return fetch(input, init);
    };
    const tokenEndpoint = `${as.issuer}/token`;
    for (const clientAssertionAudience of [undefined, 'issuer', 'token_endpoint', tokenEndpoint] as const) {
      const source = clientCredentials({ ...base(), ...creds(), fetch: recording, clientAssertionAudience });
      expect((await source.fetchToken({})).accessToken).toBeTruthy(); // the real server accepts each
    }
    expect(sent).toEqual([as.issuer, as.issuer, tokenEndpoint, tokenEndpoint]);
    expect(() => clientCredentials({ ...base(), ...creds(), clientAssertionAudience: '' })).toThrow(
      expect.objectContaining({ code: 'ERR_CONFIG' }),
    );
  });

  it("private_key_jwt with the key's certificate (Entra ID): x5t#S256 and x5t in the assertion header; another key's certificate is ERR_CONFIG", async () => {
    const certificateOf = (jwk: object): string => {
      const dir = mkdtempSync(join(tmpdir(), 'tw-cert-'));
      try {
        const keyFile = join(dir, 'key.pem');
        writeFileSync(
          keyFile,
          createPrivateKey({ key: jwk as import('node:crypto').JsonWebKey, format: 'jwk' }).export({
            type: 'pkcs8',
            format: 'pem',
          }),
        );
        execFileSync('openssl', [
          'req',
          '-x509',
          '-key',
          keyFile,
          '-out',
          join(dir, 'cert.pem'),
          '-subj',
          '/CN=svc',
          '-days',
          '1',
        ]);
        return readFileSync(join(dir, 'cert.pem'), 'utf8');
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    };
    const { privateJwk } = as.clients.jwt;
    const certificate = certificateOf(privateJwk);
    const der = new X509Certificate(certificate).raw;
    const headers: Record<string, unknown>[] = [];
    const recording: typeof fetch = async (input, init) => {
      const assertion = init?.body instanceof URLSearchParams ? init.body.get('client_assertion') : null;
      if (assertion) headers.push(decodeProtectedHeader(assertion));
      return fetch(input, init);
    };
    const clientId = as.clients.jwt.clientId;
    for (const clientAssertionAudience of ['issuer', 'token_endpoint'] as const) {
      const source = clientCredentials({
        ...base(),
        clientId,
        privateKey: { key: privateJwk, certificate },
        fetch: recording,
        clientAssertionAudience,
      });
      expect((await source.fetchToken({})).accessToken).toBeTruthy(); // the real server accepts it
    }
    expect(headers).toHaveLength(2);
    for (const header of headers) {
      expect(header['x5t#S256']).toBe(createHash('sha256').update(der).digest('base64url'));
      expect(header['x5t']).toBe(createHash('sha1').update(der).digest('base64url'));
    }
    const other = certificateOf(await exportJWK((await generateKeyPair('RS256', { extractable: true })).privateKey));
    for (const [cert, why] of [
      [other, 'another key'],
      ['not a certificate', 'not an X.509'],
    ] as const) {
      const source = clientCredentials({ ...base(), clientId, privateKey: { key: privateJwk, certificate: cert } });
      const err = await source.fetchToken({}).catch((e: unknown) => e);
      expect(err).toMatchObject({ code: 'ERR_CONFIG' });
      expect((err as Error).message).toContain(why);
    }
  });

  it('reports a wrong secret as ERR_OAUTH invalid_client with the status, and no secret anywhere', async () => {
    const wrong = 'definitely-the-wrong-secret-123';
    const source = clientCredentials({ ...base(), clientId: 'svc', clientSecret: wrong });
    const err = (await source.fetchToken({}).catch((e: unknown) => e)) as TokenwardenError;
    expect(err).toBeInstanceOf(TokenwardenError);
    expect(err).toMatchObject({ code: 'ERR_OAUTH', error: 'invalid_client', status: 401 });
    expect(JSON.stringify(err) + err.message + String(err.stack) + JSON.stringify(source)).not.toContain(wrong);
  });

  it('sends scope, resource and extra parameters', async () => {
    const source = clientCredentials({
      ...base(),
      clientId: 'svc',
      clientSecret: as.clients.svc.clientSecret,
      scope: ['read', 'write'],
      resource: 'https://opaque.example.test',
    });
    const token = await source.fetchToken({});
    expect(token.accessToken.split('.')).toHaveLength(1); // opaque token for that resource
    expect(token.scope).toBe('read write');
  });

  it('uses an explicit token endpoint without discovery', async () => {
    clearDiscoveryCache();
    as.resetCounts();
    const source = clientCredentials({
      tokenEndpoint: `${as.issuer}/token`,
      issuer: as.issuer,
      clientId: 'svc',
      clientSecret: as.clients.svc.clientSecret,
      allowInsecureRequests: true,
    });
    await source.fetchToken({});
    expect(as.counts.discovery).toBe(0);
  });

  it('discovers once and caches the metadata', async () => {
    clearDiscoveryCache();
    as.resetCounts();
    const source = clientCredentials({ ...base(), clientId: 'svc', clientSecret: as.clients.svc.clientSecret });
    await Promise.all([source.fetchToken({}), source.fetchToken({}), source.fetchToken({})]);
    await source.fetchToken({});
    expect(as.counts.discovery).toBe(1);
    expect(as.counts.token).toBe(4);
  });

  it('refuses an http: issuer unless allowInsecureRequests is set', () => {
    expect(() => clientCredentials({ issuer: as.issuer, clientId: 'svc', clientSecret: 'x' })).toThrow(
      expect.objectContaining({ code: 'ERR_INSECURE_ISSUER' }),
    );
  });

  it('refuses a client id or secret that is not well-formed Unicode (a lone surrogate) with ERR_CONFIG, not a URIError mid-request', () => {
    for (const bad of [{ clientSecret: 'x\uD800y' }, { clientSecret: '\uDC00' }, { clientId: 'svc\uDBFF' }]) {
      expect(
        () => clientCredentials({ ...base(), clientId: 'svc', clientSecret: 'ok', ...bad }),
        JSON.stringify(bad),
      ).toThrow(
        expect.objectContaining({ code: 'ERR_CONFIG', message: expect.stringMatching(/not well-formed Unicode/) }),
      );
    }
    // A pair is fine (an emoji in a secret).
    expect(() => clientCredentials({ ...base(), clientId: 'svc', clientSecret: 'x\uD83D\uDE00y' })).not.toThrow();
  });

  it('refuses request options of the wrong type with ERR_CONFIG when the source is made, for every grant', () => {
    const client = { ...base(), clientId: 'svc', clientSecret: 'ok' };
    const grants: [string, (extra: object) => unknown][] = [
      ['client_credentials', (extra) => clientCredentials({ ...client, ...extra })],
      ['refresh_token', (extra) => refreshToken({ ...client, refreshToken: 'rt', ...extra })],
      ['token_exchange', (extra) => tokenExchange({ ...client, subjectToken: 'st', ...extra })],
      ['jwt_bearer', (extra) => jwtBearer({ ...client, assertion: 'a.b.c', ...extra })],
    ];
    const malformed: object[] = [
      { scope: 5 },
      { scope: ['read', 5] },
      { scope: { read: true } },
      { scope: null },
      { scope: 'read\uD800' },
      { resource: new URL('https://api.example.test') },
      { resource: [['https://api.example.test']] },
      { audience: 7 },
      { audience: ['a', null] },
      { extraParams: 'a=b' },
      { extraParams: ['a', 'b'] },
      { extraParams: null },
      { extraParams: { prompt: 1 } },
      { extraParams: { prompt: ['x', { y: 1 }] } },
      { extraParams: { '\uDC00': 'x' } },
      { extraParams: { acr_values: 'x\uDBFF' } },
    ];
    for (const [grant, make] of grants) {
      for (const extra of malformed) {
        expect(() => make(extra), `${grant} ${JSON.stringify(extra)}`).toThrow(
          expect.objectContaining({ code: 'ERR_CONFIG' }),
        );
      }
      // The forms the options allow.
      for (const fine of [
        { scope: 'read write', resource: ['https://a.example', 'https://b.example'], audience: 'api' },
        { scope: ['read'], extraParams: { prompt: 'none', acr_values: ['a', 'b'] } },
        { scope: 'caf\u00e9 \uD83D\uDE00' },
      ]) {
        expect(() => make(fine), `${grant} ${JSON.stringify(fine)}`).not.toThrow();
      }
    }
  });

  it('derives different store keys for different credentials and scopes, equal keys for equal ones, none with a secret', () => {
    // Secrets long enough that no hash contains one by chance (a two-letter one is in ~1 % of base64url hashes).
    const S1 = 'first-secret-0123456789';
    const S2 = 'second-secret-0123456789';
    const a = clientCredentials({ ...base(), clientId: 'svc', clientSecret: S1, scope: 'read' });
    const b = clientCredentials({ ...base(), clientId: 'svc', clientSecret: S2, scope: 'read' });
    const c = clientCredentials({ ...base(), clientId: 'svc', clientSecret: S1, scope: 'write' });
    expect(a.key).toBe(b.key); // the same client and request: the same token
    expect(a.key).not.toBe(c.key);
    expect(a.key).not.toContain(S1);
    expect(JSON.stringify(a)).not.toContain(S1);
  });
});

describe('refresh tokens with rotation against a real authorization server', () => {
  it('spends each rotated refresh token once, and the server revokes the grant on reuse', async () => {
    const login = await as.login('alice');
    const source = refreshToken({
      ...base(),
      clientId: 'app',
      clientSecret: as.clients.app.clientSecret,
      refreshToken: login['refresh_token'] as string,
    });
    const manager = new TokenManager({ source });
    const t1 = await manager.getToken();
    const t2 = await manager.refresh();
    expect(t1.refreshToken).not.toBe(login['refresh_token']);
    expect(t2.refreshToken).not.toBe(t1.refreshToken);
    expect(decodeJwt(t2.accessToken).sub).toBe('alice');
    await manager.close();

    // What happens when a spent refresh token is used again: the whole grant dies.
    const replay = refreshToken({
      ...base(),
      clientId: 'app',
      clientSecret: as.clients.app.clientSecret,
      refreshToken: t1.refreshToken as string,
    });
    await expect(replay.fetchToken({})).rejects.toMatchObject({ code: 'ERR_OAUTH', error: 'invalid_grant' });
    const latest = refreshToken({
      ...base(),
      clientId: 'app',
      clientSecret: as.clients.app.clientSecret,
      refreshToken: t2.refreshToken as string,
    });
    await expect(latest.fetchToken({})).rejects.toMatchObject({ code: 'ERR_OAUTH', error: 'invalid_grant' });
  });

  it('with only a tokenEndpoint, an ID token in the refresh answer is not judged against the endpoint URL', async () => {
    const login = await as.login('tokenendpoint-only');
    const invalidGrants = as.counts.errors['invalid_grant'] ?? 0;
    const manager = new TokenManager({
      source: refreshToken({
        tokenEndpoint: `${as.issuer}/token`,
        clientId: 'app',
        clientSecret: as.clients.app.clientSecret,
        refreshToken: login['refresh_token'] as string,
        allowInsecureRequests: true,
      }),
    });
    const first = await manager.getToken();
    expect(first.idToken).toBeDefined(); // the answer carried an ID token whose iss is the issuer, not the endpoint
    const second = await manager.refresh();
    expect(second.refreshToken).not.toBe(first.refreshToken);
    expect(as.counts.errors['invalid_grant'] ?? 0).toBe(invalidGrants);
    await manager.close();
  });

  it('keeps the refresh token the server rotated when a later check of its answer fails, then reports the error', async () => {
    const login = await as.login('rotated-then-refused');
    let tamper = false;
    // The one fault a real server will not produce: an answer it acted on, that then fails a check here.
    const fetchThatTampers: typeof fetch = async (input, init) => {
      const response = await fetch(input, init);
      if (!tamper || !String(input instanceof Request ? input.url : input).endsWith('/token')) return response;
      const body = (await response.json()) as Record<string, unknown>;
      return new Response(JSON.stringify({ ...body, token_type: 'N_A-not-a-type' }), {
        status: response.status,
        headers: { 'content-type': 'application/json' },
      });
    };
    const invalidGrants = as.counts.errors['invalid_grant'] ?? 0;
    const manager = new TokenManager({
      source: refreshToken({
        ...base(),
        clientId: 'app',
        clientSecret: as.clients.app.clientSecret,
        refreshToken: login['refresh_token'] as string,
        fetch: fetchThatTampers,
      }),
    });
    await manager.getToken();
    tamper = true;
    await expect(manager.refresh()).rejects.toMatchObject({ code: 'ERR_UNSUPPORTED' });
    tamper = false;
    // The refresh token spent in the refused answer was rotated by the server: the next refresh spends the new one.
    const next = await manager.refresh();
    expect(decodeJwt(next.accessToken).sub).toBe('rotated-then-refused');
    expect(as.counts.errors['invalid_grant'] ?? 0).toBe(invalidGrants);
    await manager.close();
  });

  it("a refresh token's own lifetime (Keycloak refresh_expires_in, Entra ID refresh_token_expires_in): run out, it is not spent; the fallback answers, or ERR_LOGIN_REQUIRED; 0 is no limit", async () => {
    // oidc-provider sends no such lifetime: this fetch adds the one a Keycloak or Entra ID answer carries.
    const withLifetime =
      (field: string, seconds: number): FetchLike =>
      async (input, init) => {
        const response = await fetch(input, init);
        if (!String(input instanceof Request ? input.url : input).endsWith('/token') || !response.ok) return response;
        const body = { ...((await response.json()) as Record<string, unknown>), [field]: seconds };
        return new Response(JSON.stringify(body), { status: 200, headers: { 'content-type': 'application/json' } });
      };
    const run = async (field: string, seconds: number, fallback: boolean) => {
      const clock = new ManualClock();
      const manager = new TokenManager({
        clock,
        source: refreshToken({
          ...base(),
          clientId: 'app',
          clientSecret: as.clients.app.clientSecret,
          refreshToken: (await as.login(`lifetime-${field}-${seconds}-${fallback}`))['refresh_token'] as string,
          fetch: withLifetime(field, seconds),
          clock,
          ...(fallback && {
            fallback: clientCredentials({ ...base(), clientId: 'app', clientSecret: as.clients.app.clientSecret }),
          }),
        }),
      });
      await manager.getToken(); // spends the login's refresh token; the answer gives the new one its lifetime
      await clock.advance(2_000);
      const refreshes = as.counts.byGrant['refresh_token'] ?? 0;
      const outcome = await manager.refresh().then(
        (t) => (t.refreshToken === undefined ? 'fallback' : 'refreshed'),
        (e: TokenwardenError) => e.code,
      );
      const spent = (as.counts.byGrant['refresh_token'] ?? 0) - refreshes;
      await manager.close();
      return { outcome, spent };
    };
    expect(await run('refresh_expires_in', 1, false)).toEqual({ outcome: 'ERR_LOGIN_REQUIRED', spent: 0 });
    expect(await run('refresh_token_expires_in', 1, true)).toEqual({ outcome: 'fallback', spent: 0 });
    expect(await run('refresh_expires_in', 0, false)).toEqual({ outcome: 'refreshed', spent: 1 }); // Keycloak offline tokens
    expect(await run('refresh_expires_in', 60, false)).toEqual({ outcome: 'refreshed', spent: 1 });
  });

  it('a refresh token the server refused (invalid_grant) is not presented again by that manager, however often asked', async () => {
    // Presenting a dead refresh token again changes nothing but the server's logs — where reuse of a revoked
    // refresh token reads as a replay (breach alerts at some providers). The manager answers with the refusal.
    const login = await as.login('dora');
    const clock = new ManualClock();
    const manager = new TokenManager({
      source: appRefreshToken(as, login['refresh_token'] as string),
      clock,
      refresh: { background: false },
    });
    const first = await manager.getToken(); // spends the login's refresh token: its successor is held
    await appRefreshToken(as, first.refreshToken!).fetchToken({}); // spent elsewhere (a copy of the grant): the manager's one is dead now
    const refreshes = as.counts.byGrant['refresh_token'] ?? 0;
    const refused = await manager.refresh().catch((err: unknown) => err);
    expect(refused).toMatchObject({ code: 'ERR_OAUTH', error: 'invalid_grant' });
    expect((as.counts.byGrant['refresh_token'] ?? 0) - refreshes).toBe(1);
    for (let i = 0; i < 3; i++) {
      await clock.advance(3_600_000); // past any backoff
      await expect(manager.getToken()).rejects.toMatchObject({ code: 'ERR_OAUTH', error: 'invalid_grant' });
      await expect(manager.refresh()).rejects.toMatchObject({ code: 'ERR_OAUTH', error: 'invalid_grant' });
    }
    expect((as.counts.byGrant['refresh_token'] ?? 0) - refreshes).toBe(1); // presented once, never again
    // A newer refresh token in the store (another process signed in again) is spent as usual.
    const again = await as.login('dora');
    const stored = { ...first, accessToken: 'expired', refreshToken: again['refresh_token'] as string };
    await clock.advance(60_000); // past the backoff of the last refusal…
    clock.set(Date.now()); // …and the wall clock back with the server's, whose JWTs say when they expire
    await manager.store.set(manager.key, serializeStoredToken({ ...stored, expiresAt: clock.now() - 1 }, { seq: 99 }));
    expect(decodeJwt((await manager.getToken()).accessToken).sub).toBe('dora');
    expect((as.counts.byGrant['refresh_token'] ?? 0) - refreshes).toBe(2);
    await manager.close();
  });

  it('a refused refresh token is not presented again by any process sharing the store, nor after a restart', async () => {
    // Per process, the refusal is remembered (above); a fleet of N processes would still present the dead refresh
    // token N times, and every restart once more — unless the refusal is in the store, beside the token.
    const dir = mkdtempSync(join(tmpdir(), 'tw-refused-'));
    const login = await as.login('erin');
    const clock = new ManualClock();
    const rt = login['refresh_token'] as string;
    const manager = () =>
      new TokenManager({
        source: appRefreshToken(as, rt, { clock }),
        store: new FileStore({ path: dir }),
        clock,
        refresh: { background: false },
      });
    const a = manager();
    const b = manager();
    try {
      // Spends the login's refresh token, after announcing the first refresh to the fleet (a settle, on the
      // manual clock: moved past), and B reads the result from the store.
      const first = await whileMoving(clock, a.getToken(), { stepMs: 250, realMs: 5 });
      expect((await b.getToken()).accessToken).toBe(first.accessToken);
      await appRefreshToken(as, first.refreshToken!).fetchToken({}); // spent elsewhere: the fleet's one is dead now
      const refreshes = as.counts.byGrant['refresh_token'] ?? 0;
      await expect(a.refresh()).rejects.toMatchObject({ code: 'ERR_OAUTH', error: 'invalid_grant' });
      expect((as.counts.byGrant['refresh_token'] ?? 0) - refreshes).toBe(1);
      // The access token that came with it is still served: the refusal ends refreshes, not the token.
      expect((await b.getToken()).accessToken).toBe(first.accessToken);
      await clock.advance(3_600_000); // the access token has expired: a refresh is needed everywhere
      await expect(b.getToken()).rejects.toMatchObject({ code: 'ERR_OAUTH', error: 'invalid_grant', status: 400 });
      await expect(b.refresh()).rejects.toMatchObject({ code: 'ERR_OAUTH', error: 'invalid_grant' });
      await a.close();
      const restarted = manager();
      await expect(restarted.getToken()).rejects.toMatchObject({ code: 'ERR_OAUTH', error: 'invalid_grant' });
      await restarted.close();
      expect((as.counts.byGrant['refresh_token'] ?? 0) - refreshes).toBe(1); // presented once in the whole fleet
      // What the store holds says which error, never the server's description of it.
      const entry = (await new FileStore({ path: dir }).get(b.key))!.value;
      expect(JSON.parse(entry)).toMatchObject({
        refreshToken: first.refreshToken,
        refused: { error: 'invalid_grant' },
      });
      expect(entry).not.toMatch(/description/i);
    } finally {
      await b.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a configured refresh token refused on its first use is not presented by the next process either', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'tw-refused-'));
    const manager = () =>
      new TokenManager({
        source: appRefreshToken(as, 'never-issued-by-this-server'),
        store: new FileStore({ path: dir }),
        refresh: { background: false },
      });
    const refreshes = as.counts.byGrant['refresh_token'] ?? 0;
    const [a, b] = [manager(), manager()];
    try {
      await expect(a.getToken()).rejects.toMatchObject({ code: 'ERR_OAUTH', error: 'invalid_grant' });
      await expect(b.getToken()).rejects.toMatchObject({ code: 'ERR_OAUTH', error: 'invalid_grant' });
      expect((as.counts.byGrant['refresh_token'] ?? 0) - refreshes).toBe(1);
      expect(a.peek().status).toBe('none');
    } finally {
      await Promise.all([a.close(), b.close()]);
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('falls back to another source when the refresh token is rejected with invalid_grant', async () => {
    const source = refreshToken({
      ...base(),
      clientId: 'app',
      clientSecret: as.clients.app.clientSecret,
      refreshToken: 'not-a-refresh-token',
      fallback: clientCredentials({
        ...base(),
        clientId: 'app',
        clientSecret: as.clients.app.clientSecret,
        scope: 'read',
      }),
    });
    const token = await source.fetchToken({});
    expect(decodeJwt(token.accessToken).client_id).toBe('app');
  });

  it('down-scopes when asked for a narrower scope', async () => {
    const login = await as.login('bob');
    const source = refreshToken({
      ...base(),
      clientId: 'app',
      clientSecret: as.clients.app.clientSecret,
      refreshToken: login['refresh_token'] as string,
      scope: 'openid read',
    });
    const token = await source.fetchToken({});
    expect(decodeJwt(token.accessToken).scope).toBe('read');
  });
});

describe('token exchange and JWT bearer against a real authorization server', () => {
  it('exchanges a token from another manager (RFC 8693)', async () => {
    const own = new TokenManager({
      source: clientCredentials({
        ...base(),
        clientId: 'exchanger',
        clientSecret: as.clients.exchanger.clientSecret,
        scope: 'read',
      }),
    });
    const source = tokenExchange({
      ...base(),
      clientId: 'exchanger',
      clientSecret: as.clients.exchanger.clientSecret,
      subjectToken: own,
      audience: 'https://orders.example.test',
      scope: 'read',
    });
    expect(source.key).toContain('token_exchange');
    const token = await source.fetchToken({});
    expect(decodeJwt(token.accessToken).aud).toBe('https://orders.example.test');
    await own.close();
  });

  it('reports a rejected subject token as invalid_grant', async () => {
    const source = tokenExchange({
      ...base(),
      clientId: 'exchanger',
      clientSecret: as.clients.exchanger.clientSecret,
      subjectToken: 'garbage',
    });
    await expect(source.fetchToken({})).rejects.toMatchObject({
      code: 'ERR_OAUTH',
      error: 'invalid_grant',
      status: 400,
    });
  });

  it('signs a fresh assertion per request for the JWT bearer grant (RFC 7523)', async () => {
    const source = jwtBearer({
      ...base(),
      clientId: 'exchanger',
      clientSecret: as.clients.exchanger.clientSecret,
      assertion: { privateKey: as.clients.jwt.privateJwk, subject: 'robot@example.test' },
      scope: 'read',
    });
    const a = await source.fetchToken({});
    const b = await source.fetchToken({});
    expect(decodeJwt(a.accessToken).aud).toBe(API_RESOURCE);
    expect(a.accessToken).not.toBe(b.accessToken);
  });
});

describe('a server whose metadata names no revocation endpoint (revocationEndpoint)', () => {
  /** The real server, seen through a fetch that drops `revocation_endpoint` from its metadata. */
  const withoutRevocationInMetadata: FetchLike = async (input, init) => {
    const response = await fetch(input, init);
    const url = typeof input === 'string' ? input : input instanceof URL ? input.href : input.url;
    if (!url.includes('/.well-known/')) return response;
    const metadata = (await response.json()) as Record<string, unknown>;
    delete metadata['revocation_endpoint'];
    return new Response(JSON.stringify(metadata), {
      status: response.status,
      headers: { 'content-type': 'application/json' },
    });
  };
  let revocationEndpoint: string;
  beforeAll(async () => {
    const metadata = (await (await fetch(`${as.issuer}/.well-known/openid-configuration`)).json()) as Record<
      string,
      string
    >;
    revocationEndpoint = metadata['revocation_endpoint'] as string;
    expect(revocationEndpoint).toMatch(/^http:/);
  });
  beforeEach(() => clearDiscoveryCache(as.issuer));
  afterAll(() => clearDiscoveryCache(as.issuer));

  const users = (extra: Partial<UserTokensOptions> = {}) =>
    new UserTokens({
      issuer: as.issuer,
      clientId: as.clients.app.clientId,
      clientSecret: as.clients.app.clientSecret,
      allowInsecureRequests: true,
      fetch: withoutRevocationInMetadata,
      ...extra,
    });

  /** The authorization server refuses `token` (invalid_grant): it was revoked. */
  const expectRevoked = async (token: string): Promise<void> => {
    const spent = refreshToken({
      ...base(),
      clientId: as.clients.app.clientId,
      clientSecret: as.clients.app.clientSecret,
      refreshToken: token,
    });
    await expect(spent.fetchToken({})).rejects.toMatchObject({ code: 'ERR_OAUTH', error: 'invalid_grant' });
  };

  it('UserTokens.revoke() revokes at the configured endpoint: the server then refuses the refresh token', async () => {
    const login = await as.login('alice');
    const tokens = users({ revocationEndpoint });
    await tokens.save('alice', login);
    const before = as.counts.revocation;
    expect((await tokens.revoke('alice')).refreshToken).toBe(true);
    expect(as.counts.revocation).toBeGreaterThan(before);
    await expectRevoked(login['refresh_token'] as string);
    await tokens.close();
  });

  it('without it, revoke() is ERR_UNSUPPORTED (the subject is forgotten locally all the same)', async () => {
    const login = await as.login('bob');
    const tokens = users();
    await tokens.save('bob', login);
    const before = as.counts.revocation;
    await expect(tokens.revoke('bob')).rejects.toMatchObject({ code: 'ERR_UNSUPPORTED' });
    expect(as.counts.revocation).toBe(before);
    await tokens.close();
  });

  it('an OAuthClient with an explicit token endpoint (no discovery) revokes at revocationEndpoint', async () => {
    const login = await as.login('carol');
    const client = new OAuthClient({
      tokenEndpoint: `${as.issuer}/token`,
      revocationEndpoint,
      clientId: as.clients.app.clientId,
      clientSecret: as.clients.app.clientSecret,
      allowInsecureRequests: true,
    });
    await client.revoke(login['refresh_token'] as string, 'refresh_token');
    await expectRevoked(login['refresh_token'] as string);
  });

  it('refuses a revocationEndpoint that is not an https URL (or has credentials in it)', () => {
    const options = { issuer: 'https://as.example.test', clientId: 'c', clientSecret: 's' };
    expect(() => new OAuthClient({ ...options, revocationEndpoint: 'http://as.example.test/revoke' })).toThrow(
      expect.objectContaining({ code: 'ERR_INSECURE_ISSUER' }),
    );
    expect(() => new OAuthClient({ ...options, revocationEndpoint: 'https://u:p@as.example.test/revoke' })).toThrow(
      expect.objectContaining({ code: 'ERR_CONFIG' }),
    );
  });
});
