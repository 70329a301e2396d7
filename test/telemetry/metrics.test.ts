/**
 * Metrics through the real OpenTelemetry SDK (a global `MeterProvider`, in-memory exporter) against the
 * real authorization server: each instrument records what happened — token requests as the server counted
 * them, an outage as errors and stale-served tokens, store failures, lock waits, verifications with their
 * reasons and cache use, JWKS and introspection requests — and no attribute holds a secret, a token or a
 * subject.
 */
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import {
  FileStore,
  ManualClock,
  MemoryStore,
  TokenManager,
  type TokenwardenError,
  UserTokens,
  clientCredentials,
  refreshToken,
} from '../../src/index.js';
import { createVerifier } from '../../src/server/index.js';
import { INSTRUMENTS, MetricsRegistry } from '../../src/telemetry/index.js';
import {
  API_RESOURCE,
  OPAQUE_RESOURCE,
  type TestAuthorizationServer,
  startAuthorizationServer,
} from '../support/authorization-server.js';
import { type MetricsHarness, type Point, attributeValues, installMetrics, total } from '../support/otel.js';
import { closedPort } from '../cli/support.js';
import { forge, issueToken } from '../server/support.js';
import { until } from '../support/private-servers.js';

let as: TestAuthorizationServer;
let otel: MetricsHarness;
/** Every secret, token and subject this file hands tokenwarden: none may appear in an attribute. */
const sensitive = new Set<string>();
const exported: Point[] = [];

beforeAll(async () => {
  as = await startAuthorizationServer({ accessTokenTtl: 60 });
  for (const client of Object.values(as.clients)) if (client.clientSecret) sensitive.add(client.clientSecret);
});
beforeEach(() => {
  otel = installMetrics();
});
afterEach(async () => {
  exported.push(...(await otel.collect()));
  await otel.close();
});
afterAll(async () => {
  await as?.close();
  // The scan, over every point every test exported.
  const values = attributeValues(exported);
  expect(values.length).toBeGreaterThan(20);
  for (const value of values) for (const s of sensitive) expect(value).not.toContain(s);
});

const svc = (extra: Record<string, unknown> = {}) => ({
  issuer: as.issuer,
  clientId: as.clients.svc.clientId,
  clientSecret: as.clients.svc.clientSecret,
  scope: 'read',
  allowInsecureRequests: true,
  ...extra,
});
const REQUESTS = 'tokenwarden.token.requests';
const outcome = (value: string) => ({ 'tokenwarden.outcome': value });
const noteTokens = (...tokens: (string | undefined)[]) => {
  for (const t of tokens) if (t !== undefined && t !== '') sensitive.add(t);
};

describe('token requests', () => {
  it("match the authorization server's own counts, by grant and outcome, with their duration", async () => {
    as.resetCounts();
    const a = new TokenManager({ source: clientCredentials(svc()) });
    const b = new TokenManager({ source: clientCredentials(svc({ scope: 'read write' })) });
    const wrong = new TokenManager({ source: clientCredentials(svc({ clientSecret: 'not-the-secret-123' })) });
    sensitive.add('not-the-secret-123');
    const login = await as.login('dora');
    noteTokens(login['access_token'] as string, login['refresh_token'] as string, login['id_token'] as string);
    const app = { issuer: as.issuer, clientId: as.clients.app.clientId, clientSecret: as.clients.app.clientSecret };
    const rt = new TokenManager({
      source: refreshToken({ ...app, refreshToken: login['refresh_token'] as string, allowInsecureRequests: true }),
    });
    try {
      as.resetCounts(); // the scripted login's own code exchange is not ours
      const tokens = await Promise.all([a.getToken(), b.getToken(), a.refresh(), rt.getToken()]);
      tokens.push(await rt.refresh());
      noteTokens(...tokens.flatMap((t) => [t.accessToken, t.refreshToken]));
      const error = (await wrong.getToken().catch((e: unknown) => e)) as TokenwardenError;
      expect(error.code).toBe('ERR_OAUTH');

      const points = await otel.collect();
      for (const grant of ['client_credentials', 'refresh_token']) {
        expect(total(points, REQUESTS, { 'tokenwarden.grant': grant }), grant).toBe(as.counts.byGrant[grant]);
      }
      expect(total(points, REQUESTS)).toBe(as.counts.token);
      expect(total(points, REQUESTS, outcome('error'))).toBe(as.counts.tokenErrors);
      expect(total(points, REQUESTS, { ...outcome('error'), 'error.type': 'ERR_OAUTH' })).toBe(1);
      expect(total(points, REQUESTS, { 'tokenwarden.grant': 'refresh_token', ...outcome('success') })).toBe(2);
      // A success carries no error.type.
      for (const p of points.filter((x) => x.name === REQUESTS && x.attributes['tokenwarden.outcome'] === 'success')) {
        expect(p.attributes).not.toHaveProperty('error.type');
      }
      const durations = points.filter((p) => p.name === 'tokenwarden.token.request.duration');
      expect(durations.every((p) => p.unit === 's' && p.kind === 'histogram')).toBe(true);
      expect(durations.reduce((n, p) => n + p.value, 0)).toBe(as.counts.token);
      expect(durations.reduce((n, p) => n + (p.sum ?? 0), 0)).toBeGreaterThan(0);
      expect(points.find((p) => p.name === REQUESTS)?.unit).toBe('{request}');
    } finally {
      await Promise.all([a.close(), b.close(), wrong.close(), rt.close()]);
    }
  });

  it('an outage shows as errors and stale-served tokens; time to expiry falls, then recovers', async () => {
    const clock = new ManualClock();
    const manager = new TokenManager({
      source: clientCredentials(svc({ clock })),
      clock,
      random: () => 0, // no jitter: stale exactly 30 s before expiry
      name: 'billing',
    });
    const registry = new MetricsRegistry();
    const failures: TokenwardenError[] = [];
    manager.on('refreshFailed', ({ error }) => failures.push(error));
    try {
      noteTokens((await manager.getToken()).accessToken);
      const expiry = async () =>
        (await otel.collect()).find(
          (p) => p.name === 'tokenwarden.token.time_to_expiry' && p.attributes['tokenwarden.name'] === 'billing',
        );
      // The exact remaining life on the manager's clock (the JWT's `exp` may trim a fraction of a second).
      const left = () => ((manager.peek().token?.expiresAt as number) - clock.now()) / 1000;
      expect(left()).toBeGreaterThan(59);
      expect((await expiry())?.value).toBe(left());
      expect(registry.text()).toMatch(
        /^tokenwarden_token_time_to_expiry_seconds\{[^}]*tokenwarden_name="billing"\} \d/m,
      );
      registry.close();
      expect((await expiry())?.attributes).toEqual({
        'tokenwarden.key': manager.key,
        'tokenwarden.grant': 'client_credentials',
        'tokenwarden.name': 'billing',
      });

      await as.setFault('refuse');
      await clock.advance(40_000); // stale: 20 s left
      await manager.getToken(); // served, and a background refresh starts (and fails)
      await until(() => failures.length >= 1);
      await manager.getToken();
      await manager.getToken();
      let points = await otel.collect();
      expect(total(points, 'tokenwarden.token.stale_served', { 'tokenwarden.grant': 'client_credentials' })).toBe(3);
      expect(total(points, REQUESTS, { ...outcome('error'), 'error.type': 'ERR_NETWORK' })).toBe(failures.length);
      expect(left()).toBeLessThanOrEqual(20);
      expect((await expiry())?.value).toBe(left());

      await as.clearFault();
      await clock.advance(10_000); // past the backoff: the background retry succeeds
      await until(() => manager.peek().status === 'fresh');
      noteTokens(manager.peek().token?.accessToken);
      points = await otel.collect();
      expect(total(points, REQUESTS, outcome('success'))).toBe(2);
      expect(left()).toBeGreaterThan(40); // a new token (its JWT `exp` is on real time, the manager's clock is ahead)
      expect((await expiry())?.value).toBe(left());
    } finally {
      await as.clearFault();
      await manager.close();
    }
    // A closed manager leaves the gauge (read through a registry: the SDK keeps reporting a cumulative
    // asynchronous point it saw once).
    const after = new MetricsRegistry();
    expect(after.text()).not.toContain('tokenwarden_name="billing"');
    after.close();
  });
});

describe('stores', () => {
  it('store errors by operation and code; lock waits acquired and timed out', async () => {
    // A real fault: the store's directory cannot be created under a regular file (even as root).
    const broken = new FileStore({ path: '/dev/null/tokenwarden' });
    const degraded = new TokenManager({ source: clientCredentials(svc()), store: broken, storeTimeout: '500ms' });
    const store = new MemoryStore();
    const fine = new TokenManager({ source: clientCredentials(svc()), store });
    const blocked = new TokenManager({
      source: clientCredentials(svc({ scope: 'write' })),
      store,
      lock: { wait: '100ms' },
    });
    try {
      noteTokens((await degraded.getToken()).accessToken); // served without the store (not single-use)
      noteTokens((await fine.getToken()).accessToken);
      const held = await store.lock(blocked.key, { ttlMs: 60_000, waitMs: 0 });
      expect(held).toBeDefined();
      await expect(blocked.getToken()).rejects.toMatchObject({ code: 'ERR_LOCK_TIMEOUT' });
      await held?.release();

      const points = await otel.collect();
      const errors = points.filter((p) => p.name === 'tokenwarden.store.errors');
      expect(total(points, 'tokenwarden.store.errors', { 'tokenwarden.operation': 'get' })).toBeGreaterThanOrEqual(1);
      for (const p of errors) {
        expect(['get', 'set', 'lock', 'delete']).toContain(p.attributes['tokenwarden.operation']);
        expect(p.attributes['error.type']).toMatch(/^ERR_STORE/);
      }
      const waits = (o: string) => total(points, 'tokenwarden.lock.wait.duration', outcome(o));
      expect(waits('acquired')).toBeGreaterThanOrEqual(1);
      expect(waits('timeout')).toBe(1);
      expect(points.find((p) => p.name === 'tokenwarden.lock.wait.duration')?.unit).toBe('s');
      // The catalogue's buckets reach the SDK as advice.
      expect(points.find((p) => p.name === 'tokenwarden.lock.wait.duration')?.boundaries).toEqual([
        ...INSTRUMENTS.lockWait.buckets,
      ]);
    } finally {
      await Promise.all([degraded.close(), fine.close(), blocked.close()]);
      await Promise.all([broken.close(), store.close()]);
    }
  });
});

describe('UserTokens', () => {
  it('the same token instruments, with no per-user attribute', async () => {
    const clock = new ManualClock();
    const app = as.clients.app;
    const users = new UserTokens({
      issuer: as.issuer,
      clientId: app.clientId,
      clientSecret: app.clientSecret,
      allowInsecureRequests: true,
      clock,
      random: () => 0,
    });
    const subject = 'erin-subject@example.test';
    sensitive.add(subject);
    sensitive.add(users.keyFor(subject));
    try {
      const login = await as.login('erin-subject@example.test');
      noteTokens(login['access_token'] as string, login['refresh_token'] as string, login['id_token'] as string);
      as.resetCounts();
      let refreshed = false;
      users.on('token', ({ from }) => (refreshed ||= from === 'source'));
      await users.save(subject, login);
      await clock.advance(50_000); // stale (75 % of 60 s), still valid: served while one refresh runs
      const served = await users.getAccessToken(subject);
      expect(served.accessToken).toBe(login['access_token']);
      await until(() => refreshed);
      expect((await users.getAccessToken(subject)).accessToken).not.toBe(login['access_token']);
      const records = await users.listAccessTokens(subject);
      noteTokens(...records.map((r) => r.token.accessToken));
      noteTokens(((await users.store.get(users.keyFor(subject)))?.value.match(/"refreshToken":"([^"]+)"/) ?? [])[1]);

      const points = await otel.collect();
      expect(total(points, 'tokenwarden.token.stale_served', { 'tokenwarden.grant': 'refresh_token' })).toBe(1);
      expect(total(points, REQUESTS, { 'tokenwarden.grant': 'refresh_token', ...outcome('success') })).toBe(1);
      for (const p of points) expect(Object.values(p.attributes).join(' ')).not.toMatch(/erin/);
    } finally {
      await users.close();
    }
  });
});

describe('verifications', () => {
  it('by outcome — ok, the RFC 6750 error, unavailable — and cache use; JWKS fetches as the server counted them', async () => {
    as.resetCounts();
    const verify = createVerifier({
      issuer: as.issuer,
      audience: API_RESOURCE,
      allowInsecureRequests: true,
      requiredScopes: ['read'],
    });
    const good = (await issueToken(as, { scope: 'read' })).accessToken;
    const narrow = (await issueToken(as, { scope: 'write' })).accessToken;
    const now = Math.floor(Date.now() / 1000);
    const expired = await forge(as, { iat: now - 120, exp: now - 60 });
    noteTokens(good, narrow, expired);

    expect((await verify(`Bearer ${good}`)).ok).toBe(true);
    expect((await verify(`Bearer ${good}`)).ok).toBe(true); // from the cache
    expect(await verify(`Bearer ${expired}`)).toMatchObject({ failure: { error: 'invalid_token' } });
    expect(await verify(`Bearer ${narrow}`)).toMatchObject({ failure: { error: 'insufficient_scope' } });
    expect(await verify(undefined)).toMatchObject({ failure: { error: 'missing_token' } });
    expect(await verify('Bearer not a token')).toMatchObject({ failure: { error: 'invalid_request' } });

    // The key set cannot be had: 503, counted as unavailable and as a failed JWKS fetch.
    const down = createVerifier({
      issuer: as.issuer,
      audience: API_RESOURCE,
      jwksUri: `http://127.0.0.1:${await closedPort()}/jwks`,
      allowInsecureRequests: true,
    });
    expect(await down(`Bearer ${good}`)).toMatchObject({ failure: { error: 'temporarily_unavailable' } });

    const points = await otel.collect();
    const verifies = (o: string, cache?: string) =>
      total(points, 'tokenwarden.verify.requests', { ...outcome(o), ...(cache && { 'tokenwarden.cache': cache }) });
    expect(verifies('ok', 'miss')).toBe(1);
    expect(verifies('ok', 'hit')).toBe(1);
    expect(verifies('invalid_token', 'miss')).toBe(1);
    expect(verifies('insufficient_scope', 'miss')).toBe(1);
    expect(verifies('missing_token')).toBe(1);
    expect(verifies('invalid_request')).toBe(1);
    expect(verifies('unavailable', 'miss')).toBe(1);
    // Refused before the cache was consulted: no cache attribute.
    const early = points.filter(
      (p) =>
        p.name === 'tokenwarden.verify.requests' &&
        ['missing_token', 'invalid_request'].includes(String(p.attributes['tokenwarden.outcome'])),
    );
    for (const p of early) expect(p.attributes).not.toHaveProperty('tokenwarden.cache');
    expect(total(points, 'tokenwarden.verify.duration')).toBe(7);
    expect(total(points, 'tokenwarden.jwks.fetches', outcome('success'))).toBe(as.counts.jwks);
    expect(as.counts.jwks).toBeGreaterThanOrEqual(1);
    expect(total(points, 'tokenwarden.jwks.fetches', { ...outcome('error'), 'error.type': 'ERR_NETWORK' })).toBe(1);
  });

  it('introspection requests as the server counted them, and a refused opaque token with its reason', async () => {
    as.resetCounts();
    const verify = createVerifier({
      issuer: as.issuer,
      introspection: { clientId: as.clients.rs.clientId, clientSecret: as.clients.rs.clientSecret },
      allowInsecureRequests: true,
    });
    const opaque = (await issueToken(as, { scope: 'read', resource: OPAQUE_RESOURCE })).accessToken;
    noteTokens(opaque);
    expect((await verify(`Bearer ${opaque}`)).ok).toBe(true);
    expect(await verify(`Bearer ${opaque}x`)).toMatchObject({ failure: { error: 'invalid_token' } });

    const points = await otel.collect();
    expect(total(points, 'tokenwarden.introspection.requests', outcome('success'))).toBe(as.counts.introspection);
    expect(as.counts.introspection).toBe(2);
    expect(
      total(points, 'tokenwarden.verify.requests', { ...outcome('invalid_token'), 'tokenwarden.cache': 'miss' }),
    ).toBe(1);
    expect(total(points, 'tokenwarden.verify.requests', { ...outcome('ok'), 'tokenwarden.cache': 'miss' })).toBe(1);
  });
});

describe('providers', () => {
  it('nothing is recorded without an SDK; one registered later is used from the next recording on', async () => {
    await otel.close(); // no meter provider now
    const manager = new TokenManager({ source: clientCredentials(svc()), name: 'late' });
    const verify = createVerifier({ issuer: as.issuer, audience: API_RESOURCE, allowInsecureRequests: true });
    try {
      const first = await manager.getToken();
      noteTokens(first.accessToken);
      expect((await verify(`Bearer ${first.accessToken}`)).ok).toBe(true);

      otel = installMetrics();
      noteTokens((await manager.refresh()).accessToken);
      expect((await verify(`Bearer ${first.accessToken}`)).ok).toBe(true);
      const points = await otel.collect();
      expect(total(points, REQUESTS)).toBe(1); // the refresh, not the first request
      expect(total(points, 'tokenwarden.verify.requests')).toBe(1);
      expect(total(points, 'tokenwarden.verify.requests', { 'tokenwarden.cache': 'hit' })).toBe(1);
      const expiry = points.find(
        (p) => p.name === 'tokenwarden.token.time_to_expiry' && p.attributes['tokenwarden.name'] === 'late',
      );
      expect(expiry?.value).toBeGreaterThan(0);
    } finally {
      await manager.close();
    }
  });
});
