/**
 * The resource server while the authorization server is down (issue 11): last-known keys, background
 * refresh, backoff on every endpoint, introspection answers, health and events. The real authorization
 * server (refusing connections) where it can produce the outage; a fault server for 503s, Retry-After,
 * garbage and requests held open. Staleness windows move on an injected clock; request counts are what the
 * servers saw (or, for refused connections, what the verifier's `fetch` was asked to send).
 */
import { randomBytes } from 'node:crypto';
import { type JWK, SignJWT, generateKeyPair, importJWK } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ManualClock } from '../../src/clock.js';
import type { TokenwardenError } from '../../src/errors.js';
import type { FetchLike } from '../../src/http/transport.js';
import { type VerifierEvents, createVerifier, failureResponse } from '../../src/server/index.js';
import {
  API_RESOURCE,
  OPAQUE_RESOURCE,
  type TestAuthorizationServer,
  newSigningKey,
  publicJwk,
  startAuthorizationServer,
} from '../support/authorization-server.js';
import { type FaultServer, json, startFaultServer } from '../support/fault-server.js';
import { forge, issueToken } from './support.js';
import { until } from '../support/private-servers.js';

const AUDIENCE = 'https://api.example.test';

/** A `fetch` that records the path of every request the verifier makes (refused connections included). */
function counting(): { fetch: FetchLike; paths: string[]; count: (path: string) => number } {
  const paths: string[] = [];
  return {
    paths,
    count: (path) => paths.filter((p) => p === path).length,
    fetch: (input, init) => {
      paths.push(new URL(input instanceof Request ? input.url : String(input)).pathname);
      return fetch(input, init);
    },
  };
}

/** A JWT for AUDIENCE signed by `key` (an RS256 private JWK). */
async function sign(key: JWK, issuer: string, claims: Record<string, unknown> = {}, now = Date.now()): Promise<string> {
  return new SignJWT({
    iss: issuer,
    aud: AUDIENCE,
    sub: 'alice',
    scope: 'read',
    exp: Math.floor(now / 1000) + 3600,
    jti: randomBytes(8).toString('hex'),
    ...claims,
  })
    .setProtectedHeader({ alg: 'RS256', typ: 'at+jwt', kid: key.kid as string })
    .sign(await importJWK(key, 'RS256'));
}

/** An issuer served by a fault server: metadata always, the JWKS through `jwks` (a handler per request). */
async function faultIssuer(
  jwks: (res: import('node:http').ServerResponse, n: number) => void | Promise<void>,
): Promise<FaultServer & { issuer: string; jwksCount: () => number; discoveryCount: () => number }> {
  let n = 0;
  const server = await startFaultServer();
  server.handle(async (req, res) => {
    if (req.url?.startsWith('/.well-known/'))
      return json(res, 200, { issuer: server.url, jwks_uri: `${server.url}/jwks` });
    if (req.url === '/jwks') return jwks(res, ++n);
    return json(res, 404, { error: 'not_found' });
  });
  return Object.assign(server, {
    issuer: server.url,
    jwksCount: () => server.requests.filter((r) => r.path === '/jwks').length,
    discoveryCount: () => server.requests.filter((r) => r.path.startsWith('/.well-known/')).length,
  });
}

const unavailable = { ok: false, failure: expect.objectContaining({ error: 'temporarily_unavailable', status: 503 }) };

describe('never amplify an outage (default options)', () => {
  it('discovery answering 503: 100 sequential requests make at most 5 discovery fetches, each answered 503 + Retry-After', async () => {
    const down = await startFaultServer((_req, res) => json(res, 503, { error: 'temporarily_unavailable' }));
    try {
      const key = await newSigningKey();
      const verify = createVerifier({ issuer: down.url, audience: AUDIENCE, allowInsecureRequests: true });
      const token = await sign(key, down.url);
      for (let i = 0; i < 100; i++) {
        const result = await verify(`Bearer ${token}`);
        expect(result).toEqual(unavailable);
        if (!result.ok) expect(failureResponse(result.failure).headers['retry-after']).toMatch(/^[1-9]\d*$/);
      }
      expect(down.requests.length).toBeGreaterThanOrEqual(1);
      expect(down.requests.length).toBeLessThanOrEqual(5);
    } finally {
      await down.close();
    }
  });

  it('JWKS never loadable: 100 requests (sequential, then concurrent) make at most 5 JWKS fetches', async () => {
    const issuer = await faultIssuer((res) => json(res, 503, 'down'));
    try {
      const key = await newSigningKey();
      const tokens = await Promise.all(Array.from({ length: 200 }, () => sign(key, issuer.issuer))); // signed first
      const verify = createVerifier({ issuer: issuer.issuer, audience: AUDIENCE, allowInsecureRequests: true });
      for (const token of tokens.slice(0, 100)) expect(await verify(token)).toEqual(unavailable);
      const concurrent = await Promise.all(tokens.slice(100).map((token) => verify(token)));
      for (const r of concurrent) expect(r).toEqual(unavailable);
      expect(issuer.jwksCount()).toBeGreaterThanOrEqual(1);
      expect(issuer.jwksCount()).toBeLessThanOrEqual(5);
      expect(issuer.discoveryCount()).toBe(1); // the metadata is kept; only the JWKS is retried
    } finally {
      await issuer.close();
    }
  });

  it('over time: one request per backoff interval (capped, jittered) while failing, and Retry-After honoured', async () => {
    let retryAfter: string | undefined;
    const issuer = await faultIssuer((res) =>
      json(res, 503, 'down', retryAfter === undefined ? {} : { 'retry-after': retryAfter }),
    );
    try {
      const key = await newSigningKey();
      const clock = new ManualClock(Date.now());
      const failures: number[] = [];
      const verify = createVerifier({
        issuer: issuer.issuer,
        audience: AUDIENCE,
        allowInsecureRequests: true,
        clock,
        backoff: { initial: '1s', max: '8s' },
      }).on('unavailable', ({ failures: n }) => failures.push(n));
      const token = await sign(key, issuer.issuer, {}, clock.now());
      // 60 s at 10 requests a second: 1 s, 2 s, 4 s, 8 s, 8 s… between attempts, each jittered into [d/2, d].
      for (let i = 0; i < 600; i++) {
        verify.clearCache();
        expect(await verify(token)).toEqual(unavailable);
        await clock.advance(100);
      }
      // At least one attempt per 8 s (the cap), at most 4 in the first 7.5 s and one per 4 s after.
      expect(issuer.jwksCount()).toBeGreaterThanOrEqual(60 / 8);
      expect(issuer.jwksCount()).toBeLessThanOrEqual(4 + Math.ceil(52.5 / 4));
      expect(failures).toEqual(Array.from({ length: issuer.jwksCount() }, (_, i) => i + 1));

      // The server asks for 30 s: nothing before, whatever the backoff says.
      retryAfter = '30';
      await clock.advance(10_000); // past any backoff of 8 s
      const before = issuer.jwksCount();
      const first = await verify(token);
      expect(issuer.jwksCount()).toBe(before + 1);
      for (let i = 0; i < 29; i++) {
        await clock.advance(1000);
        verify.clearCache();
        const result = await verify(token);
        expect(result).toEqual(unavailable);
        if (!result.ok) expect(result.failure.retryAfter).toBe(30 - i - 1);
      }
      expect(issuer.jwksCount()).toBe(before + 1);
      expect(first.ok || first.failure.retryAfter).toBe(30);
      await clock.advance(1000);
      await verify(token);
      expect(issuer.jwksCount()).toBe(before + 2);
    } finally {
      await issuer.close();
    }
  });

  it('once the backoff has passed, one probe goes out however many requests arrive; the rest are answered at once', async () => {
    let release: (() => void) | undefined;
    const issuer = await faultIssuer(async (res, n) => {
      if (n > 1) await new Promise<void>((r) => (release = r)); // the probe hangs until released
      json(res, 503, 'down');
    });
    try {
      const key = await newSigningKey();
      const clock = new ManualClock(Date.now());
      const verify = createVerifier({ issuer: issuer.issuer, audience: AUDIENCE, allowInsecureRequests: true, clock });
      expect(await verify(await sign(key, issuer.issuer, {}, clock.now()))).toEqual(unavailable);
      await clock.advance(60_000);
      const probe = verify(await sign(key, issuer.issuer, {}, clock.now()));
      await until(() => release !== undefined); // the probe reaches the server
      const others = await Promise.all(
        Array.from({ length: 20 }, async () => verify(await sign(key, issuer.issuer, {}, clock.now()))),
      );
      for (const r of others) expect(r).toEqual(unavailable);
      expect(issuer.jwksCount()).toBe(2);
      release?.();
      expect(await probe).toEqual(unavailable);
    } finally {
      release?.();
      await issuer.close();
    }
  });
});

describe('last-known keys during an outage', () => {
  let as: TestAuthorizationServer;
  beforeAll(async () => {
    as = await startAuthorizationServer({ accessTokenTtl: 300 });
  });
  afterAll(() => as.close());

  it('keys loaded, then the JWKS refusing connections for 4 s past cacheMaxAge 1s: valid tokens pass, unknown kids make at most one fetch a second', async () => {
    const { fetch, count } = counting();
    const clock = new ManualClock(Date.now());
    const stale: VerifierEvents['staleKeys'][0][] = [];
    const verify = createVerifier({
      issuer: as.issuer,
      audience: API_RESOURCE,
      allowInsecureRequests: true,
      jwks: { cacheMaxAge: '1s' },
      fetch,
      clock,
    }).on('staleKeys', (event) => stale.push(event));
    expect((await verify(await forge(as))).ok).toBe(true);
    expect(count('/jwks')).toBe(1);
    const attacker = await generateKeyPair('RS256');
    const junk = () =>
      new SignJWT({ iss: as.issuer, aud: API_RESOURCE, sub: 'x', exp: Math.floor(clock.now() / 1000) + 60 })
        .setProtectedHeader({ alg: 'RS256', kid: randomBytes(8).toString('hex') })
        .sign(attacker.privateKey);
    await as.setFault('refuse');
    try {
      for (let step = 0; step < 40; step++) {
        await clock.advance(100);
        expect((await verify(await forge(as))).ok).toBe(true); // a new valid token each time: no cache hit
        // A kid the last known keys do not have: 401 until the JWKS is known to fail, then 503. Never accepted.
        for (let j = 0; j < 5; j++) {
          const result = await verify(await junk());
          expect(result.ok).toBe(false);
          if (!result.ok) expect([401, 503]).toContain(result.failure.status);
        }
      }
      // Now the JWKS is known to fail: such a kid may be a key published meanwhile, so it is not judged (503).
      expect(await verify(await junk())).toEqual(unavailable);
      // The initial load, then at most one attempt a second during the 4 s.
      expect(count('/jwks')).toBeLessThanOrEqual(1 + 4);
      expect(count('/jwks')).toBeGreaterThanOrEqual(2); // it did keep trying
      expect(stale).toHaveLength(1);
      expect(stale[0]).toMatchObject({ ageMs: expect.any(Number), usableForMs: expect.any(Number) });
      expect(stale[0]?.error?.code).toBe('ERR_NETWORK');
      const health = verify.health();
      expect(health).toMatchObject({ status: 'degraded', ready: true, servingStale: true });
      expect(health.keys[0]).toMatchObject({ keys: 1, stale: true });
      expect(health.endpoints.find((e) => e.kind === 'jwks')).toMatchObject({ failing: true });
      expect(health.lastError?.code).toBe('ERR_NETWORK');
    } finally {
      await as.clearFault();
    }
    // Back: the next attempt (after its backoff) loads the keys again and the stale episode ends.
    await clock.advance(30_000);
    expect((await verify(await forge(as))).ok).toBe(true);
    await until(() => verify.health().status === 'ok'); // the background refresh lands
    expect(verify.health()).toMatchObject({ status: 'ok', servingStale: false });
  });

  it('the same with the real clock: 4 s of refused connections with cacheMaxAge 1s', async () => {
    const { fetch, count } = counting();
    const verify = createVerifier({
      issuer: as.issuer,
      audience: API_RESOURCE,
      allowInsecureRequests: true,
      jwks: { cacheMaxAge: '1s' },
      fetch,
    });
    expect((await verify(await forge(as))).ok).toBe(true);
    const attacker = await generateKeyPair('RS256');
    await as.setFault('refuse');
    const started = Date.now();
    try {
      while (Date.now() - started < 4000) {
        expect((await verify(await forge(as))).ok).toBe(true);
        const kid = randomBytes(8).toString('hex');
        const bad = await new SignJWT({ iss: as.issuer, aud: API_RESOURCE, exp: Math.floor(Date.now() / 1000) + 60 })
          .setProtectedHeader({ alg: 'RS256', kid })
          .sign(attacker.privateKey);
        expect((await verify(bad)).ok).toBe(false);
        await new Promise((r) => setTimeout(r, 50));
      }
      const seconds = (Date.now() - started) / 1000;
      expect(count('/jwks') - 1).toBeLessThanOrEqual(Math.ceil(seconds));
    } finally {
      await as.clearFault();
    }
  });

  it('stale keys are dropped after cacheMaxAge + maxStale: then 503, with a keysExpired event', async () => {
    const { fetch } = counting();
    const clock = new ManualClock(Date.now());
    const expired: unknown[] = [];
    const verify = createVerifier({
      issuer: as.issuer,
      audience: API_RESOURCE,
      allowInsecureRequests: true,
      jwks: { cacheMaxAge: '1m', maxStale: '10m' },
      cache: false,
      fetch,
      clock,
    }).on('keysExpired', (e) => expired.push(e));
    const token = await forge(as, { exp: Math.floor(clock.now() / 1000) + 3600 });
    expect((await verify(token)).ok).toBe(true);
    await as.setFault('refuse');
    try {
      await clock.advance(10 * 60_000); // 10 min: stale, still used
      expect((await verify(token)).ok).toBe(true);
      await clock.advance(60_000); // 11 min: past 1 min + 10 min
      expect(await verify(token)).toEqual(unavailable);
      expect(expired).toEqual([{ url: `${as.issuer}/jwks`, ageMs: 11 * 60_000 }]);
      expect(verify.health()).toMatchObject({ status: 'unavailable', ready: false, servingStale: false });
    } finally {
      await as.clearFault();
    }
  });

  it('refreshes ahead of cacheMaxAge in the background: the request that starts it does not wait', async () => {
    const key = await newSigningKey();
    let hold = false;
    let release: (() => void) | undefined;
    const issuer = await faultIssuer(async (res) => {
      if (hold) await new Promise<void>((r) => (release = r));
      json(res, 200, { keys: [publicJwk(key)] });
    });
    try {
      const clock = new ManualClock(Date.now());
      const verify = createVerifier({
        issuer: issuer.issuer,
        audience: AUDIENCE,
        allowInsecureRequests: true,
        jwks: { cacheMaxAge: '10m' },
        clock,
      });
      expect((await verify(await sign(key, issuer.issuer, {}, clock.now()))).ok).toBe(true);
      await clock.advance(8 * 60_000); // before the refresh window (the last minute)
      expect((await verify(await sign(key, issuer.issuer, {}, clock.now()))).ok).toBe(true);
      expect(issuer.jwksCount()).toBe(1);
      hold = true;
      await clock.advance(61_000); // in the window: a refresh starts, and hangs
      expect((await verify(await sign(key, issuer.issuer, {}, clock.now()))).ok).toBe(true); // answered meanwhile
      await until(() => release !== undefined);
      expect(issuer.jwksCount()).toBe(2);
      expect((await verify(await sign(key, issuer.issuer, {}, clock.now()))).ok).toBe(true); // one refresh in flight
      expect(issuer.jwksCount()).toBe(2);
      release?.();
      await until(() => verify.health().keys[0]?.ageMs === 0);
      expect(verify.health().keys[0]).toMatchObject({ ageMs: 0, stale: false });
    } finally {
      release?.();
      await issuer.close();
    }
  });

  it('past cacheMaxAge while the JWKS answers, the refresh comes first: a withdrawn key is not used longer', async () => {
    const [oldKey, newKey] = [await newSigningKey(), await newSigningKey()];
    let published = [oldKey];
    const issuer = await faultIssuer((res) => json(res, 200, { keys: published.map(publicJwk) }));
    try {
      const clock = new ManualClock(Date.now());
      const verify = createVerifier({
        issuer: issuer.issuer,
        audience: AUDIENCE,
        allowInsecureRequests: true,
        jwks: { cacheMaxAge: '5m' },
        cache: false,
        clock,
      });
      const old = await sign(oldKey, issuer.issuer, {}, clock.now());
      expect((await verify(old)).ok).toBe(true);
      published = [newKey];
      await clock.advance(5 * 60_000);
      expect(await verify(old)).toMatchObject({ ok: false, failure: { error: 'invalid_token', status: 401 } });
      expect((await verify(await sign(newKey, issuer.issuer, {}, clock.now()))).ok).toBe(true);
      expect(issuer.jwksCount()).toBe(2);
    } finally {
      await issuer.close();
    }
  });

  it('a JWKS answering garbage (HTML, not a key set, too large) is a failed fetch: the last good keys stay', async () => {
    const key = await newSigningKey();
    let answer: (res: import('node:http').ServerResponse) => void = (res) => json(res, 200, { keys: [publicJwk(key)] });
    const issuer = await faultIssuer((res) => answer(res));
    try {
      const clock = new ManualClock(Date.now());
      const errors: TokenwardenError[] = [];
      const verify = createVerifier({
        issuer: issuer.issuer,
        audience: AUDIENCE,
        allowInsecureRequests: true,
        jwks: { cacheMaxAge: '1m' },
        maxResponseBytes: 10_000,
        cache: false,
        clock,
      }).on('unavailable', ({ error }) => errors.push(error));
      expect((await verify(await sign(key, issuer.issuer, {}, clock.now()))).ok).toBe(true);
      const garbage: ((res: import('node:http').ServerResponse) => void)[] = [
        (res) => res.writeHead(200, { 'content-type': 'text/html' }).end('<html>portal</html>'),
        (res) => json(res, 200, { keys: 'none' }),
        (res) => json(res, 200, [1, 2]),
        (res) => json(res, 200, { keys: [{ kty: 'RSA', n: 'x'.repeat(20_000), e: 'AQAB' }] }),
        (res) => json(res, 302, '', { location: 'https://elsewhere.example.test/jwks' }),
      ];
      for (const [i, next] of garbage.entries()) {
        answer = next;
        await clock.advance(120_000);
        expect((await verify(await sign(key, issuer.issuer, {}, clock.now()))).ok).toBe(true);
        await until(() => errors.length === i + 1); // once failing, refreshes run in the background
      }
      expect(errors.map((e) => e.code)).toEqual([
        'ERR_INVALID_RESPONSE',
        'ERR_INVALID_RESPONSE',
        'ERR_INVALID_RESPONSE',
        'ERR_RESPONSE_TOO_LARGE',
        'ERR_HTTP_STATUS',
      ]);
    } finally {
      await issuer.close();
    }
  });
});

describe('metadata and key selection', () => {
  it('metadata is discovered again after an hour; when that fails, the metadata already known is used', async () => {
    const key = await newSigningKey();
    let discoveryDown = false;
    const server = await startFaultServer();
    server.handle((req, res) => {
      if (req.url?.startsWith('/.well-known/')) {
        if (discoveryDown) return json(res, 503, 'down');
        return json(res, 200, { issuer: server.url, jwks_uri: `${server.url}/jwks` });
      }
      return json(res, 200, { keys: [publicJwk(key)] });
    });
    try {
      const clock = new ManualClock(Date.now());
      const verify = createVerifier({ issuer: server.url, audience: AUDIENCE, allowInsecureRequests: true, clock });
      expect((await verify(await sign(key, server.url, {}, clock.now()))).ok).toBe(true);
      discoveryDown = true;
      await clock.advance(61 * 60_000);
      expect((await verify(await sign(key, server.url, {}, clock.now()))).ok).toBe(true);
      const paths = server.requests.map((r) => r.path.replace(/^\/\.well-known\/.*/, 'discovery'));
      expect(paths).toEqual(['discovery', '/jwks', 'discovery', '/jwks']); // tried, failed, used the known jwks_uri
      expect(verify.health().keys[0]).toMatchObject({ ageMs: 0, stale: false });
    } finally {
      await server.close();
    }
  });

  it('a token without kid is tried against each key that fits it', async () => {
    const [a, b] = [await newSigningKey(), await newSigningKey()];
    const as = await startAuthorizationServer({ signingKeys: [a, b] }); // its JWKS publishes both
    try {
      const verify = createVerifier({ issuer: as.issuer, audience: AUDIENCE, allowInsecureRequests: true });
      const unsigned = async (key: JWK) =>
        new SignJWT({ iss: as.issuer, aud: AUDIENCE, sub: 'alice', exp: Math.floor(Date.now() / 1000) + 60 })
          .setProtectedHeader({ alg: 'RS256' })
          .sign(await importJWK(key, 'RS256'));
      expect((await verify(await unsigned(b))).ok).toBe(true);
      expect((await verify(await unsigned(a))).ok).toBe(true);
      expect(await verify(await unsigned(await newSigningKey()))).toMatchObject({
        ok: false,
        failure: { error: 'invalid_token', description: 'invalid signature' },
      });
    } finally {
      await as.close();
    }
  });

  it('a cold verifier makes one discovery and one JWKS request for 200 concurrent tokens', async () => {
    const as = await startAuthorizationServer({ accessTokenTtl: 300 });
    try {
      const verify = createVerifier({ issuer: as.issuer, audience: API_RESOURCE, allowInsecureRequests: true });
      const tokens = await Promise.all(Array.from({ length: 200 }, () => forge(as)));
      as.resetCounts();
      const results = await Promise.all(tokens.map((t) => verify(t)));
      for (const r of results) expect(r.ok).toBe(true);
      expect(as.counts).toMatchObject({ discovery: 1, jwks: 1 });
    } finally {
      await as.close();
    }
  });
});

describe('ready(), health() and events', () => {
  let as: TestAuthorizationServer;
  beforeAll(async () => {
    as = await startAuthorizationServer({ accessTokenTtl: 300 });
  });
  afterAll(() => as.close());

  it('ready() fetches metadata and keys up front: the first request makes no request of its own', async () => {
    const { fetch, paths } = counting();
    const verify = createVerifier({ issuer: as.issuer, audience: API_RESOURCE, allowInsecureRequests: true, fetch });
    expect(verify.health()).toMatchObject({ status: 'ok', ready: true, keys: [{ keys: 0, stale: false }] });
    const health = await verify.ready();
    expect(health).toMatchObject({
      status: 'ok',
      ready: true,
      servingStale: false,
      keys: [{ keys: 1, stale: false, fetchedAt: expect.any(Number) }],
    });
    expect(paths).toEqual(['/.well-known/openid-configuration', '/jwks']);
    expect((await verify((await issueToken(as)).accessToken)).ok).toBe(true);
    expect(paths).toHaveLength(2);
    await verify.ready(); // fresh keys: nothing to do
    expect(paths).toHaveLength(2);
  });

  it('ready() rejects with the coded error while the authorization server is down, and health() says unavailable', async () => {
    const { fetch } = counting();
    const down = await startAuthorizationServer();
    const verify = createVerifier({ issuer: down.issuer, audience: API_RESOURCE, allowInsecureRequests: true, fetch });
    await down.setFault('refuse');
    try {
      await expect(verify.ready()).rejects.toMatchObject({ code: 'ERR_NETWORK' });
      await expect(verify.ready()).rejects.toMatchObject({ code: 'ERR_RETRY_LATER', retryAfterMs: expect.any(Number) });
      const health = verify.health();
      expect(health).toMatchObject({ status: 'unavailable', ready: false });
      expect(health.endpoints).toEqual([
        expect.objectContaining({ kind: 'discovery', failing: true, failures: 1, retryAt: expect.any(Number) }),
      ]);
      expect(JSON.parse(JSON.stringify(health)).lastError).toMatchObject({ code: 'ERR_NETWORK' });
      const aborted = new AbortController();
      aborted.abort();
      await expect(verify.ready({ signal: aborted.signal })).rejects.toMatchObject({ code: 'ERR_ABORTED' });
    } finally {
      await down.close();
    }
  });

  it("'auto' with only introspection failing is degraded, not unavailable: JWTs are still judged", async () => {
    const down = await startFaultServer((_req, res) => json(res, 503, 'down'));
    try {
      const verify = createVerifier({
        issuer: as.issuer,
        audience: [API_RESOURCE, OPAQUE_RESOURCE],
        introspection: { clientId: 'rs', clientSecret: 's' },
        introspectionEndpoint: `${down.url}/introspect`,
        allowInsecureRequests: true,
      });
      expect(verify.strategy).toBe('auto');
      expect(await verify('opaque-token')).toEqual(unavailable);
      expect((await verify(await forge(as))).ok).toBe(true);
      expect(verify.health()).toMatchObject({ status: 'degraded', ready: true });
      const only = createVerifier({
        introspection: { clientId: 'rs', clientSecret: 's' },
        introspectionEndpoint: `${down.url}/introspect`,
        allowInsecureRequests: true,
      });
      expect(await only('opaque-token')).toEqual(unavailable);
      expect(only.health()).toMatchObject({ status: 'unavailable', ready: false });
    } finally {
      await down.close();
    }
  });

  it('with several issuers, one that cannot be judged leaves the verifier degraded; all of them, unavailable', async () => {
    const down = await startFaultServer((_req, res) => json(res, 503, 'down'));
    try {
      const key = await newSigningKey();
      const verify = createVerifier({
        issuer: [as.issuer, down.url],
        audience: [API_RESOURCE, AUDIENCE],
        allowInsecureRequests: true,
      });
      expect(await verify(await sign(key, down.url))).toEqual(unavailable);
      expect((await verify(await forge(as))).ok).toBe(true);
      expect(verify.health()).toMatchObject({ status: 'degraded', ready: true });
      const alone = createVerifier({ issuer: down.url, audience: AUDIENCE, allowInsecureRequests: true });
      expect(await alone(await sign(key, down.url))).toEqual(unavailable);
      expect(alone.health()).toMatchObject({ status: 'unavailable', ready: false });
    } finally {
      await down.close();
    }
  });

  it('events: every request, each failure, the recovery, and every verify with its outcome and cache use', async () => {
    const { fetch } = counting();
    const clock = new ManualClock(Date.now());
    const seen: string[] = [];
    const outcomes: VerifierEvents['verify'][0][] = [];
    const verify = createVerifier({
      issuer: as.issuer,
      audience: API_RESOURCE,
      allowInsecureRequests: true,
      fetch,
      clock,
      jwks: { cacheMaxAge: '1m' },
    })
      .on('request', ({ endpoint, outcome }) => seen.push(`request ${endpoint} ${outcome}`))
      .on('unavailable', ({ endpoint, failures }) => seen.push(`unavailable ${endpoint} ${failures}`))
      .on('recovered', ({ endpoint }) => seen.push(`recovered ${endpoint}`))
      .on('staleKeys', () => seen.push('staleKeys'))
      .on('verify', (event) => outcomes.push(event));
    const token = await forge(as);
    expect((await verify(token)).ok).toBe(true);
    expect((await verify(token)).ok).toBe(true);
    expect(await verify('garbage')).toMatchObject({ ok: false });
    await verify(undefined);
    await as.setFault('refuse');
    await clock.advance(60_000);
    expect((await verify(await forge(as))).ok).toBe(true); // stale keys
    await as.clearFault();
    await clock.advance(30_000);
    expect((await verify(await forge(as))).ok).toBe(true);
    await until(() => seen.includes('recovered jwks'));
    expect(seen).toEqual([
      'request discovery ok',
      'request jwks ok',
      'request jwks error',
      'unavailable jwks 1',
      'staleKeys',
      'request jwks ok',
      'recovered jwks',
    ]);
    expect(outcomes).toEqual([
      { outcome: 'ok', cache: 'miss', strategy: 'jwt' },
      { outcome: 'ok', cache: 'hit', strategy: 'jwt' },
      { outcome: 'invalid_token', cache: 'miss' },
      { outcome: 'missing_token' },
      { outcome: 'ok', cache: 'miss', strategy: 'jwt' },
      { outcome: 'ok', cache: 'miss', strategy: 'jwt' },
    ]);
    // A listener that throws changes nothing.
    const loud = createVerifier({ issuer: as.issuer, audience: API_RESOURCE, allowInsecureRequests: true }).on(
      'verify',
      () => {
        throw new Error('observer bug');
      },
    );
    expect((await loud(token)).ok).toBe(true);
  });
});

describe('introspection during an outage', () => {
  let as: TestAuthorizationServer;
  let opaque: string;
  beforeAll(async () => {
    as = await startAuthorizationServer({ accessTokenTtl: 3600 });
    opaque = (await issueToken(as, { resource: OPAQUE_RESOURCE })).accessToken;
  });
  afterAll(() => as.close());

  const options = () => ({
    issuer: as.issuer,
    introspection: { clientId: as.clients.rs.clientId, clientSecret: as.clients.rs.clientSecret },
    allowInsecureRequests: true,
  });

  it('endpoint down: an unknown token is 503 with Retry-After, never 401; 100 requests in 2 s make at most 5 calls', async () => {
    const { fetch, count } = counting();
    const verify = createVerifier({ ...options(), fetch });
    await verify.ready(); // the metadata: only the introspection endpoint is left to fail
    await as.setFault('refuse');
    try {
      const started = Date.now();
      for (let i = 0; i < 100; i++) {
        const result = await verify(`Bearer unknown-${i % 3}`);
        expect(result).toEqual(unavailable);
        if (!result.ok) {
          const response = failureResponse(result.failure);
          expect(response.status).toBe(503);
          expect(response.headers['retry-after']).toMatch(/^[1-9]\d*$/);
        }
        await new Promise((r) => setTimeout(r, Math.max(0, (2000 * (i + 1)) / 100 - (Date.now() - started))));
      }
      expect(count('/token/introspection')).toBeGreaterThanOrEqual(1);
      expect(count('/token/introspection')).toBeLessThanOrEqual(5);
    } finally {
      await as.clearFault();
    }
  });

  it('a token introspected before the outage keeps passing until its exp or cacheMaxAge, whichever is first', async () => {
    const clock = new ManualClock(Date.now());
    const { fetch, count } = counting();
    const verify = createVerifier({
      ...options(),
      fetch,
      clock,
      introspection: { ...options().introspection, cacheMaxAge: '5m' },
    });
    expect((await verify(opaque)).ok).toBe(true);
    await as.setFault('503');
    try {
      await clock.advance(4 * 60_000);
      expect((await verify(opaque)).ok).toBe(true); // cached, no call
      expect(count('/token/introspection')).toBe(1);
      expect(await verify('never-seen')).toEqual(unavailable);
      await clock.advance(60_000);
      expect(await verify(opaque)).toEqual(unavailable); // past cacheMaxAge: must be asked again
      expect(count('/token/introspection')).toBe(3);
    } finally {
      await as.clearFault();
    }
    await clock.advance(60_000);
    expect((await verify(opaque)).ok).toBe(true);
  });

  it('once the backoff has passed, one probe for all tokens: other tokens are answered 503 at once', async () => {
    let release: (() => void) | undefined;
    const down = await startFaultServer(async (_req, res) => {
      if (down.requests.length > 1) await new Promise<void>((r) => (release = r));
      json(res, 503, 'down');
    });
    try {
      const clock = new ManualClock(Date.now());
      const verify = createVerifier({
        introspectionEndpoint: `${down.url}/introspect`,
        introspection: { clientId: 'rs', clientSecret: 's' },
        allowInsecureRequests: true,
        clock,
      });
      expect(await verify('first')).toEqual(unavailable);
      await clock.advance(60_000);
      const probe = verify('probe');
      await until(() => release !== undefined);
      const others = await Promise.all(Array.from({ length: 20 }, (_, i) => verify(`other-${i}`)));
      for (const r of others) expect(r).toEqual(unavailable);
      expect(down.requests).toHaveLength(2);
      release?.();
      expect(await probe).toEqual(unavailable);
    } finally {
      release?.();
      await down.close();
    }
  });

  it("honours the introspection endpoint's Retry-After (429), and health() reports it unavailable", async () => {
    const errors: TokenwardenError[] = [];
    const down = await startFaultServer((_req, res) => json(res, 429, { error: 'slow_down' }, { 'retry-after': '20' }));
    try {
      const clock = new ManualClock(Date.now());
      const verify = createVerifier({
        introspectionEndpoint: `${down.url}/introspect`,
        introspection: { clientId: 'rs', clientSecret: 's' },
        allowInsecureRequests: true,
        clock,
        onError: (e) => errors.push(e),
      });
      const first = await verify('tok');
      expect(first).toEqual(unavailable);
      expect(!first.ok && first.failure.retryAfter).toBe(20);
      await clock.advance(19_000);
      const later = await verify('tok');
      expect(!later.ok && later.failure.retryAfter).toBe(1);
      expect(down.requests).toHaveLength(1);
      expect(errors.map((e) => e.code)).toEqual(['ERR_OAUTH', 'ERR_RETRY_LATER']);
      expect(errors[1]).toMatchObject({ retryAfterMs: 1000, cause: { code: 'ERR_OAUTH', status: 429 } });
      expect(verify.health()).toMatchObject({
        status: 'unavailable',
        ready: false,
        endpoints: [{ kind: 'introspection', failing: true, failures: 1 }],
      });
      await clock.advance(1000);
      await verify('tok');
      expect(down.requests).toHaveLength(2);
    } finally {
      await down.close();
    }
  });
});
