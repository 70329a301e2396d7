/**
 * UserTokens when the store fails: cached tokens keep being served, no refresh token is spent without the
 * store (another process may hold a newer one), and a refresh the store could not take is written once it
 * answers again. The failing store wraps a real MemoryStore; only the faults are simulated.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ManualClock } from '../../src/clock.js';
import { TokenwardenError } from '../../src/errors.js';
import { MemoryStore } from '../../src/stores/memory.js';
import { type TestAuthorizationServer, startAuthorizationServer } from '../support/authorization-server.js';
import { UserTokens } from '../../src/users/index.js';
import { type Operation, FailingStore } from '../support/failing-store.js';
import { json, startFaultServer } from '../support/fault-server.js';
import { subjectOf, untilExpired, usersFor } from './helpers.js';

let as: TestAuthorizationServer;
/** Five-minute tokens: for tests that must not see a token expire on a loaded machine. */
let steady: TestAuthorizationServer;
beforeAll(async () => {
  [as, steady] = await Promise.all([
    startAuthorizationServer({ accessTokenTtl: 2 }),
    startAuthorizationServer({ accessTokenTtl: 300 }),
  ]);
});
afterAll(async () => {
  await Promise.all([as.close(), steady.close()]);
});
const refreshes = (): number => as.counts.byGrant['refresh_token'] ?? 0;
const steadyRefreshes = (): number => steady.counts.byGrant['refresh_token'] ?? 0;

describe('UserTokens when the store fails', () => {
  it('serves a cached valid token, refuses to refresh without the store, and recovers', async () => {
    const store = new FailingStore(new MemoryStore());
    const users = usersFor(as, { store, cache: { revalidate: 0 } });
    const events: string[] = [];
    users.on('storeError', ({ operation, error }) => events.push(`${operation}:${error.code}`));
    users.on('storeRecovered', () => events.push('recovered'));
    const json = await as.login('alice');
    await users.save('alice', json);

    store.failing.add('get');
    expect((await users.getAccessToken('alice')).accessToken).toBe(json['access_token']);
    expect(events).toContain('get:ERR_STORE');

    await untilExpired(json['access_token'] as string);
    const before = refreshes();
    const err = (await users.getAccessToken('alice').catch((e: unknown) => e)) as TokenwardenError;
    expect(err).toBeInstanceOf(TokenwardenError);
    expect(err.code).toBe('ERR_STORE');
    expect(refreshes()).toBe(before);

    store.failing.clear();
    const next = await users.getAccessToken('alice');
    expect(subjectOf(next.accessToken)).toBe('alice');
    expect(refreshes()).toBe(before + 1);
    expect(events).toContain('recovered');
    await users.close();
  });

  it('keeps a refresh the store did not take, and writes it (with the rotated refresh token) when it answers', async () => {
    const memory = new MemoryStore();
    const store = new FailingStore(memory);
    const users = usersFor(as, { store, cache: { revalidate: 0 } });
    const json = await as.login('bob');
    await users.save('bob', json);
    await untilExpired(json['access_token'] as string);

    store.failing.add('set');
    const refreshed = await users.getAccessToken('bob');
    expect(refreshed.accessToken).not.toBe(json['access_token']);
    expect((await memory.get(users.keyFor('bob')))?.value).toContain(json['refresh_token'] as string);
    // Served from this process while the store refuses writes.
    expect((await users.getAccessToken('bob')).accessToken).toBe(refreshed.accessToken);

    store.failing.clear();
    expect((await users.getAccessToken('bob')).accessToken).toBe(refreshed.accessToken);
    expect((await memory.get(users.keyFor('bob')))?.value).not.toContain(json['refresh_token'] as string);
    // Another instance continues with the rotated refresh token: no invalid_grant.
    const other = usersFor(as, { store: memory });
    await untilExpired(refreshed.accessToken);
    const invalidGrants = as.counts.errors['invalid_grant'] ?? 0;
    expect(subjectOf((await other.getAccessToken('bob')).accessToken)).toBe('bob');
    expect(as.counts.errors['invalid_grant'] ?? 0).toBe(invalidGrants);
    await users.close();
    await other.close();
  });

  it('a store that stops answering while a refresh is written: the 2-second token is served within half its life, written when the store answers', async () => {
    // Without the bound on that wait (half the new token's life), the caller waited all of storeTimeout (3 s here)
    // and the token came out of it expired: ERR_STORE_TIMEOUT for a refresh that had worked.
    const memory = new MemoryStore();
    const store = new FailingStore(memory);
    const users = usersFor(as, { store, storeTimeout: '3s', cache: { revalidate: 0 } });
    const json = await as.login('erin');
    await users.save('erin', json);
    await untilExpired(json['access_token'] as string);
    store.hanging.add('set');
    const refreshed = await users.getAccessToken('erin'); // without the bound: ERR_STORE_TIMEOUT
    expect(refreshed.expiresAt! - Date.now()).toBeGreaterThan(0);
    expect((await memory.get(users.keyFor('erin')))?.value).toContain(json['refresh_token'] as string);
    store.unhang();
    let stored: string | undefined;
    for (let i = 0; i < 50 && !stored?.includes(refreshed.accessToken); i++) {
      await new Promise((r) => setTimeout(r, 20));
      stored = (await memory.get(users.keyFor('erin')))?.value;
    }
    expect(stored).toContain(refreshed.accessToken);
    expect(stored).not.toContain(json['refresh_token'] as string);
    await users.close();
  });

  it('invalidate() while the store fails or does not answer changes nothing (given up after storeTimeout): the token stays, fetchAs returns the 401, no refresh token spent', async () => {
    const store = new FailingStore(new MemoryStore());
    const users = usersFor(steady, { store, storeTimeout: '200ms' });
    const json = await steady.login('dora');
    await users.save('dora', json);
    let sent = 0;
    const api = users.fetchAs('dora', undefined, {
      fetch: async () => (
        sent++,
        new Response(null, { status: 401, headers: { 'www-authenticate': 'Bearer error="invalid_token"' } })
      ),
    });
    const before = steadyRefreshes();
    for (const down of [['get'], ['set']] as Operation[][]) {
      for (const operation of down) store.failing.add(operation);
      await users.invalidate('dora', json['access_token'] as string);
      expect((await api('http://api.example.test/')).status).toBe(401);
      store.failing.clear();
      expect((await users.listAccessTokens('dora')).map((e) => e.token.accessToken)).toEqual([json['access_token']]);
    }
    expect([sent, steadyRefreshes() - before]).toEqual([2, 0]);
    // A store that does not answer at all: given up after storeTimeout, and the same again.
    store.hang = true;
    await users.invalidate('dora', json['access_token'] as string);
    expect((await api('http://api.example.test/')).status).toBe(401);
    store.hang = false;
    expect([sent, steadyRefreshes() - before]).toEqual([3, 0]);
    // Up again: the next 401 drops it and the request goes again with a new token.
    expect((await api('http://api.example.test/')).status).toBe(401);
    expect([sent, steadyRefreshes() - before]).toEqual([5, 1]);
    await users.close();
  });

  it('a read that left before invalidate() landed, answering after it, does not bring the dropped token back', async () => {
    const store = new FailingStore(new MemoryStore());
    const clock = new ManualClock();
    const users = usersFor(steady, { store, clock, cache: { revalidate: '100ms' } });
    await users.save('fred', await steady.login('fred'));
    const dropped = (await users.getAccessToken('fred')).accessToken;
    await clock.advance(200);
    store.delayReads = true;
    // Served from memory; the background revalidation's read and a listing's read both take the record now…
    expect((await users.getAccessToken('fred')).accessToken).toBe(dropped);
    const listing = users.listAccessTokens('fred');
    await new Promise((resolve) => setImmediate(resolve));
    store.delayReads = false;
    await users.invalidate('fred', dropped);
    // …and answer after the token was dropped, with the record that still holds it.
    await store.answer();
    expect((await listing).map((e) => e.token.accessToken)).toEqual([dropped]); // what it read, as it read it
    const before = steadyRefreshes();
    const next = await users.getAccessToken('fred');
    expect(next.accessToken).not.toBe(dropped);
    expect(steadyRefreshes() - before).toBe(1);
    await users.close();
  });

  it('gives up on a store that does not answer after storeTimeout', async () => {
    const store = new FailingStore(new MemoryStore());
    const users = usersFor(as, { store, storeTimeout: '100ms' });
    store.hang = true;
    const err = (await users.getAccessToken('carol').catch((e: unknown) => e)) as TokenwardenError;
    expect(err.code).toBe('ERR_STORE_TIMEOUT');
    await users.close();
  });
});

describe('UserTokens when the authorization server asks to wait', () => {
  it('honours Retry-After per subject without asking again, and a new login (save) starts afresh', async () => {
    const fault = await startFaultServer((req, res) => {
      if (req.url === '/.well-known/openid-configuration' || req.url === '/.well-known/oauth-authorization-server') {
        return json(res, 200, { issuer: fault.url, token_endpoint: `${fault.url}/token` });
      }
      json(res, 429, { error: 'slow_down', error_description: 'too many requests' }, { 'retry-after': '60' });
    });
    const users = new UserTokens({
      issuer: fault.url,
      clientId: 'app',
      clientSecret: 'secret',
      allowInsecureRequests: true,
    });
    const tokenCalls = (): number => fault.requests.filter((r) => r.path === '/token').length;
    // Issued an hour ago for a minute: nothing held is usable, so each call needs a refresh.
    const login = (): Record<string, unknown> => ({
      access_token: `at-${tokenCalls()}-${Math.random()}`,
      token_type: 'Bearer',
      expires_in: 60,
      refresh_token: 'rt-1',
    });
    const anHourAgo = { issuedAt: Date.now() - 3_600_000 };
    try {
      await users.save('ann', login(), anHourAgo);
      await users.save('ben', login(), anHourAgo);
      await expect(users.getAccessToken('ann')).rejects.toMatchObject({ status: 429 });
      expect(tokenCalls()).toBe(1);
      // ann waits (no request); ben is another subject and is asked for.
      await expect(users.getAccessToken('ann')).rejects.toMatchObject({ code: 'ERR_RETRY_LATER' });
      expect(tokenCalls()).toBe(1);
      await expect(users.getAccessToken('ben')).rejects.toMatchObject({ status: 429 });
      expect(tokenCalls()).toBe(2);
      // A new login is another grant: the wait asked of the old one does not hold it back.
      await users.save('ann', login(), anHourAgo);
      await expect(users.getAccessToken('ann')).rejects.toMatchObject({ status: 429 });
      expect(tokenCalls()).toBe(3);
    } finally {
      await users.close();
      await fault.close();
    }
  });
});

describe('UserTokens refresh failures', () => {
  it('back off from the start again once a refresh succeeds', async () => {
    let answer: 'down' | 'ok' = 'down';
    let issued = 0;
    const fault = await startFaultServer((req, res) => {
      if (req.url === '/.well-known/openid-configuration' || req.url === '/.well-known/oauth-authorization-server') {
        return json(res, 200, { issuer: fault.url, token_endpoint: `${fault.url}/token` });
      }
      if (answer === 'down') return json(res, 503, { error: 'temporarily_unavailable' });
      // Valid for a second: served once, then due for refresh again.
      json(res, 200, { access_token: `at-${++issued}`, token_type: 'Bearer', expires_in: 1, refresh_token: 'rt-1' });
    });
    const clock = new ManualClock();
    const users = new UserTokens({
      issuer: fault.url,
      clientId: 'app',
      clientSecret: 'secret',
      allowInsecureRequests: true,
      clock,
    });
    const counts: number[] = [];
    users.on('refreshFailed', ({ failures }) => counts.push(failures));
    try {
      const expired = { access_token: 'at-0', token_type: 'Bearer', expires_in: 60, refresh_token: 'rt-1' };
      await users.save('cy', expired, { issuedAt: clock.now() - 3_600_000 });
      await expect(users.getAccessToken('cy')).rejects.toMatchObject({ status: 503 });
      answer = 'ok';
      await clock.advance(1_000); // right after a failure, callers get it again without a request (up to 1 s)
      expect((await users.getAccessToken('cy')).accessToken).toBe('at-1');
      answer = 'down';
      await clock.advance(1_000); // at-1 is no longer usable
      await expect(users.getAccessToken('cy')).rejects.toMatchObject({ status: 503 });
      expect(counts).toEqual([1, 1]);
    } finally {
      await users.close();
      await fault.close();
    }
  });
});

describe('UserTokens when the store refuses one subject’s writes and takes the others', () => {
  it('retries that pending write with backoff, not on every other subject’s success', async () => {
    // A store can fail one key while answering the rest (a Redis Cluster slot whose master is down with
    // cluster-require-full-coverage off, a value it will not take). Each other subject's successful call marked the
    // store "recovered" and retried the pending write at once: one failing write per call, events flapping.
    const store = new FailingStore(new MemoryStore());
    const users = usersFor(as, { store, cache: { revalidate: 0 } });
    const events: string[] = [];
    users.on('storeError', () => events.push('error'));
    users.on('storeRecovered', () => events.push('recovered'));
    const login = await as.login('frank');
    await users.save('frank', login);
    await users.save('gina', await as.login('gina'));
    const key = users.keyFor('frank');
    store.refusedKeys.add(key);
    await untilExpired(login['access_token'] as string);
    const refreshed = await users.getAccessToken('frank'); // refreshed; its write refused: pending
    const before = store.writes.get(key) ?? 0;
    const started = Date.now();
    let calls = 0;
    while (Date.now() - started < 1500) {
      await users.getAccessToken('gina'); // a store read each (revalidate 0), answered
      await new Promise((resolve) => setTimeout(resolve, 2)); // a server's pace (and timers get their turn)
      calls++;
    }
    const retries = (store.writes.get(key) ?? 0) - before;
    expect(calls).toBeGreaterThan(50);
    // At most one try per 250 ms (before: one per call, 600 in 1.5 s), and as few events.
    expect(retries).toBeGreaterThan(0);
    expect(retries).toBeLessThanOrEqual(8);
    expect(events.filter((e) => e === 'recovered').length).toBeLessThanOrEqual(9);
    expect((await users.getAccessToken('frank')).accessToken).toBe(refreshed.accessToken);
    store.refusedKeys.clear();
    await users.close(); // flushes: the pending write lands
    expect((await store.inner.get(key))?.value).toContain(refreshed.accessToken);
  });
});
