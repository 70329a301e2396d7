/**
 * Every fault of the test server, produced for real over HTTP, as tokenwarden's TokenManager and
 * createVerifier meet it: the documented error code, the still-valid token kept, 503 (never 401) from a
 * resource server whose keys cannot be had, and recovery when the fault is cleared.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { ManualClock, TokenManager, clientCredentials, refreshToken } from '../../src/index.js';
import { createVerifier } from '../../src/server/index.js';
import { type TestAuthorizationServer, createTestAuthorizationServer } from '../../src/testing/index.js';

let as: TestAuthorizationServer;
beforeAll(async () => {
  as = await createTestAuthorizationServer({ accessTokenTtl: '60s', algorithm: 'ES256' });
});
afterAll(() => as.close());
afterEach(() => as.fault('ok'));

const insecure = { allowInsecureRequests: true } as const;
const newManager = (timeout: `${number}ms` = '2000ms') =>
  new TokenManager({
    source: clientCredentials({ issuer: as.issuer, ...as.client, timeout, ...insecure }),
    refresh: { background: false },
  });

describe('the token endpoint under each fault', () => {
  it.each([
    ['down', { code: 'ERR_NETWORK' }],
    ['reset', { code: 'ERR_NETWORK' }],
    ['500', { code: 'ERR_HTTP_STATUS', status: 500 }],
    ['503', { code: 'ERR_HTTP_STATUS', status: 503, retryAfterMs: 1000 }],
    ['garbage', { code: 'ERR_INVALID_RESPONSE' }],
    ['slow', { code: 'ERR_TIMEOUT' }],
  ] as const)(
    "fault('%s'): a forced refresh fails with %o; getToken() keeps serving the valid token",
    async (fault, error) => {
      const manager = newManager();
      try {
        const token = await manager.getToken();
        await as.fault(fault);
        await expect(manager.refresh()).rejects.toMatchObject(error);
        expect((await manager.getToken()).accessToken).toBe(token.accessToken);
        await as.fault('ok');
        expect((await manager.refresh()).accessToken).not.toBe(token.accessToken);
      } finally {
        await manager.close();
      }
    },
  );

  it('counts faulted requests; none while down', async () => {
    const manager = newManager();
    try {
      await manager.getToken();
      as.resetStats();
      await as.fault('500');
      await expect(manager.refresh()).rejects.toMatchObject({ code: 'ERR_HTTP_STATUS' });
      expect(as.stats().token).toBe(1);
      await as.fault('down');
      await expect(manager.refresh()).rejects.toMatchObject({ code: 'ERR_NETWORK' });
      expect(as.stats().token).toBe(1);
    } finally {
      await manager.close();
    }
  });

  it('times: the fault holds for that many requests, then the server answers again', async () => {
    const manager = newManager();
    try {
      await manager.getToken();
      await as.fault('500', { times: 2 });
      await expect(manager.refresh()).rejects.toMatchObject({ status: 500 });
      await expect(manager.refresh()).rejects.toMatchObject({ status: 500 });
      await expect(manager.refresh()).resolves.toMatchObject({ tokenType: 'Bearer' });
    } finally {
      await manager.close();
    }
  });

  it("'slow' answers late, or as soon as the fault is cleared", async () => {
    const manager = newManager('5000ms');
    try {
      await manager.getToken();
      await as.fault('slow', { delay: '30s' });
      const late = manager.refresh();
      // Cleared while the request is held: it is answered normally.
      while (as.stats().token < 2) await new Promise((r) => setTimeout(r, 5));
      await as.fault('ok');
      await expect(late).resolves.toMatchObject({ tokenType: 'Bearer' });
    } finally {
      await manager.close();
    }
  });

  it("a refresh token is not spent by a faulted request: after 'garbage' the same refresh token still works", async () => {
    const rt = await as.issueRefreshToken({ sub: 'alice' });
    const clock = new ManualClock();
    const manager = new TokenManager({
      source: refreshToken({ issuer: as.issuer, ...as.client, refreshToken: rt, clock, ...insecure }),
      refresh: { background: false },
      clock,
    });
    try {
      await as.fault('garbage');
      await expect(manager.getToken()).rejects.toMatchObject({ code: 'ERR_INVALID_RESPONSE' });
      await as.fault('ok');
      await clock.advance(1100); // past the one-second hold after a failure
      expect((await manager.getToken()).refreshToken).toBeDefined();
    } finally {
      await manager.close();
    }
  });
});

describe('the JWKS under each fault: a resource server answers 503, never 401', () => {
  it.each(['down', '500', 'garbage', 'reset'] as const)("fault('%s') on a cold verifier", async (fault) => {
    const token = await as.mintAccessToken({ sub: 'alice' });
    const errors: string[] = [];
    const verify = createVerifier({
      issuer: as.issuer,
      audience: as.audience,
      timeout: '5s',
      onError: (err) => errors.push(err.code),
      ...insecure,
    });
    // Discovery first, so that the fault hits the key set itself.
    await fetch(`${as.issuer}/.well-known/openid-configuration`);
    await as.fault(fault, { endpoints: fault === 'down' ? undefined : ['jwks'] });
    const result = await verify(token);
    expect(result).toMatchObject({ ok: false, failure: { status: 503, error: 'temporarily_unavailable' } });
    expect(errors.length).toBeGreaterThan(0);
    await as.fault('ok');
    // The verifier backs off after a failure (it never hammers a failing server): it recovers once that ends.
    const deadline = Date.now() + 10_000;
    let recovered = (await verify(token)).ok;
    while (!recovered && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 100));
      recovered = (await verify(token)).ok;
    }
    expect(recovered).toBe(true);
  });

  it("endpoints: 'all' reaches discovery, introspection and revocation too", async () => {
    await as.fault('500', { endpoints: 'all' });
    for (const path of ['/.well-known/openid-configuration', '/jwks', '/userinfo']) {
      expect((await fetch(`${as.issuer}${path}`)).status).toBe(500);
    }
    for (const path of ['/introspect', '/revoke', '/token']) {
      expect((await fetch(`${as.issuer}${path}`, { method: 'POST' })).status).toBe(500);
    }
    await as.fault('500'); // default: token and JWKS only
    expect((await fetch(`${as.issuer}/.well-known/openid-configuration`)).status).toBe(200);
    expect((await fetch(`${as.issuer}/jwks`)).status).toBe(500);
  });
});

describe('close()', () => {
  it('cuts held and open connections, is idempotent, and faults after it are refused', async () => {
    const short = await createTestAuthorizationServer({ algorithm: 'ES256' });
    await short.fault('slow', { delay: '1h' });
    const held = fetch(`${short.issuer}/jwks`).then(
      (r) => r.status,
      () => 'cut',
    );
    while (short.stats().jwks < 1) await new Promise((r) => setTimeout(r, 5));
    await short.close();
    await short.close();
    expect(await held).toBe('cut');
    await expect(short.fault('ok')).rejects.toMatchObject({ code: 'ERR_CLOSED' });
    await expect(fetch(`${short.issuer}/jwks`)).rejects.toThrow();
  });

  it("closes a server that is 'down'", async () => {
    const down = await createTestAuthorizationServer({ algorithm: 'ES256' });
    await down.fault('down');
    await down.close();
    await expect(fetch(`${down.issuer}/jwks`)).rejects.toThrow();
  });
});
