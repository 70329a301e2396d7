/**
 * UserTokens' token lifecycle against a red-team checklist: the in-process LRU (`cache.max`) evicting a subject
 * while something is under way for it. A real authorization server (the test kit's, on a `ManualClock`) with
 * rotating single-use refresh tokens, reuse revoking the grant; the failing store wraps a real MemoryStore.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ManualClock } from '../../src/clock.js';
import type { TokenwardenError } from '../../src/errors.js';
import { MemoryStore } from '../../src/stores/memory.js';
import type { TokenStore } from '../../src/stores/store.js';
import { type TestAuthorizationServer, createTestAuthorizationServer } from '../../src/testing/index.js';
import { UserTokens, type UserTokensOptions } from '../../src/users/index.js';
import { FailingStore } from '../support/failing-store.js';

const clock = new ManualClock(Date.parse('2031-03-01T00:00:00Z'));
let as: TestAuthorizationServer;
/** One-second access tokens: shorter than a slow token request. */
let brief: TestAuthorizationServer;
beforeAll(async () => {
  [as, brief] = await Promise.all([
    createTestAuthorizationServer({ accessTokenTtl: '60s', clock }),
    createTestAuthorizationServer({ accessTokenTtl: '1s', clock }),
  ]);
});
afterAll(async () => {
  await Promise.all([as.close(), brief.close()]);
});

function usersOn(store: TokenStore, options: Partial<UserTokensOptions> = {}): UserTokens {
  return new UserTokens({ issuer: as.issuer, ...as.client, allowInsecureRequests: true, store, clock, ...options });
}

/** Every `loginRequired` and `refreshFailed` event, as `subject code`. */
function watch(users: UserTokens): string[] {
  const seen: string[] = [];
  users.on('loginRequired', ({ subject, error }) => seen.push(`${subject} ${error.code}`));
  users.on('refreshFailed', ({ subject, error }) => seen.push(`${subject} ${error.code}`));
  return seen;
}

describe('UserTokens: a subject evicted from the in-process LRU while something is under way for it', () => {
  it('more subjects refreshing at once than cache.max: each is refreshed, none is told to sign in again', async () => {
    const store = new MemoryStore({ clock });
    const users = usersOn(store, { cache: { max: 2 } });
    const seen = watch(users);
    const subjects = Array.from({ length: 10 }, (_, i) => `lru-${i}`);
    for (const sub of subjects) await users.save(sub, await as.issueTokens({ sub, scope: 'openid' }));
    await clock.advance(61_000); // every access token expired: each caller waits for its subject's refresh
    const before = as.stats().grants['refresh_token'] ?? 0;

    const results = await Promise.allSettled(subjects.map((sub) => users.getAccessToken(sub)));

    // Without the pin, 8 of 10 got ERR_LOGIN_REQUIRED ("nothing is stored for this subject"): each run's record
    // was evicted by the others' before it was checked, and the app would have sent those users to sign in.
    expect(results.map((r) => (r.status === 'fulfilled' ? 'ok' : (r.reason as TokenwardenError).code))).toEqual(
      subjects.map(() => 'ok'),
    );
    expect(seen).toEqual([]);
    expect((as.stats().grants['refresh_token'] ?? 0) - before).toBe(10);
    expect(users.cachedSubjects).toBeLessThanOrEqual(2); // bounded again once nothing is under way
    await users.close();
  });

  it('a refreshed record the store did not take is not evicted: its rotated refresh token is not lost, the spent one never spent again', async () => {
    const store = new FailingStore(new MemoryStore({ clock }));
    const users = usersOn(store, { cache: { max: 1 } });
    const seen = watch(users);
    await users.save('pend-a', await as.issueTokens({ sub: 'pend-a', scope: 'openid' }));
    await users.save('pend-b', await as.issueTokens({ sub: 'pend-b', scope: 'openid' }));
    await clock.advance(61_000);
    // The store reads and locks but refuses writes (as one out of memory or failing over may): each refresh is
    // kept in memory, pending, under its lock.
    store.failing.add('set');
    await users.getAccessToken('pend-a');
    await users.getAccessToken('pend-b'); // with cache.max 1, this used to evict pend-a and its only rotated refresh token

    // Past the lock's lease (30 s) the store still refuses writes; pend-a is asked for again.
    await clock.advance(40_000);
    const again = users.getAccessToken('pend-a');
    for (let i = 0; i < 20; i++) await clock.advance(1000); // through any settle
    await expect(again).resolves.toMatchObject({ tokenType: 'Bearer' });
    // Without the fix the spent refresh token was taken from the store and spent again: invalid_grant, the grant
    // revoked by the server (reuse), the user signed out.
    expect(as.stats().errors['invalid_grant'] ?? 0).toBe(0);
    expect(seen.filter((e) => e.includes('ERR_LOGIN_REQUIRED'))).toEqual([]);

    store.failing.clear(); // the store takes writes again: the pending records land
    await users.close();
    const fresh = usersOn(store.inner);
    await clock.advance(61_000);
    await expect(fresh.getAccessToken('pend-a')).resolves.toMatchObject({ tokenType: 'Bearer' });
    await expect(fresh.getAccessToken('pend-b')).resolves.toMatchObject({ tokenType: 'Bearer' });
    expect(as.stats().errors['invalid_grant'] ?? 0).toBe(0);
    await fresh.close();
  });
});

describe('UserTokens: a refresh whose access token expired on its way', () => {
  it('is a transient ERR_INVALID_RESPONSE, not ERR_LOGIN_REQUIRED: the user is still signed in and the next call refreshes', async () => {
    let slow = false;
    // A token request that takes 1.5 s (a loaded server, a slow network) for a token that lives 1 s.
    const fetch: typeof globalThis.fetch = async (input, init) => {
      if (slow && String(input instanceof Request ? input.url : input).endsWith('/token')) await clock.advance(1500);
      return globalThis.fetch(input, init);
    };
    const users = new UserTokens({ issuer: brief.issuer, ...brief.client, allowInsecureRequests: true, clock, fetch });
    const seen = watch(users);
    await users.save('slow', await brief.issueTokens({ sub: 'slow', scope: 'openid' }));
    await clock.advance(2000);
    slow = true;
    const error = await users.getAccessToken('slow').then(
      () => undefined,
      (err: unknown) => err as TokenwardenError,
    );
    // Without the fix: ERR_LOGIN_REQUIRED "the subject was signed out", and a loginRequired event — an app sends
    // its user to sign in again, though the refresh succeeded and its rotated refresh token is stored.
    expect(error).toMatchObject({
      code: 'ERR_INVALID_RESPONSE',
      message: expect.stringMatching(/expired by the time it arrived/),
    });
    expect(seen).toEqual(['slow ERR_INVALID_RESPONSE']);
    slow = false;
    await clock.advance(1000); // past the moment callers get the failure again without a request
    const token = await users.getAccessToken('slow');
    expect(token.expiresAt).toBeGreaterThan(clock.now());
    expect(brief.stats().errors['invalid_grant'] ?? 0).toBe(0); // the refresh token rotated by the slow answer was kept
    await users.close();
  });

  it('a token valid on arrival that the store held up past its expiry (a frozen Redis) is ERR_STORE_TIMEOUT, not a slow server', async () => {
    // A store whose write, right after the answer arrived, takes 1.5 s of a 1 s token's life.
    let slowWrites = false;
    const store = new MemoryStore({ clock });
    const set = store.set.bind(store);
    store.set = async (key, value, options) => {
      if (slowWrites) await clock.advance(1500);
      return set(key, value, options);
    };
    const users = usersOn(store, { issuer: brief.issuer, ...brief.client });
    const seen = watch(users);
    await users.save('held', await brief.issueTokens({ sub: 'held', scope: 'openid' }));
    await clock.advance(2000);
    slowWrites = true;
    const error = await users.getAccessToken('held').then(
      () => undefined,
      (err: unknown) => err as TokenwardenError,
    );
    // The server answered in time: the delay was the store's (seen in the fleet fault suite as a wrong code).
    expect(error?.code).toBe('ERR_STORE_TIMEOUT');
    expect(seen).toEqual(['held ERR_STORE_TIMEOUT']);
    slowWrites = false;
    const token = await users.getAccessToken('held'); // a store failure: no fail-fast, the next call refreshes
    expect(token.expiresAt).toBeGreaterThan(clock.now());
    expect(brief.stats().errors['invalid_grant'] ?? 0).toBe(0);
    await users.close();
  });
});

describe('UserTokens: the wall clock stepped back an hour just after a failed refresh', () => {
  it('the backoff (and Retry-After) are not stretched by the step: the next call after them asks the server', async () => {
    const users = usersOn(new MemoryStore({ clock }));
    await users.save('step', await as.issueTokens({ sub: 'step', scope: 'openid' }));
    await clock.advance(61_000);

    // A refusal waiting will not heal (a scope the grant does not have): the same error, without a request, for the
    // backoff (200 ms at first)…
    await expect(users.getAccessToken('step', { scope: 'openid admin' })).rejects.toMatchObject({
      error: 'invalid_scope',
    });
    clock.set(clock.now() - 3_600_000);
    await clock.advance(2000);
    const refused = as.stats().errors['invalid_scope'] ?? 0;
    await expect(users.getAccessToken('step', { scope: 'openid admin' })).rejects.toMatchObject({
      error: 'invalid_scope',
    });
    // …not for the hour the wall clock went back (without the fix: no request, the old error).
    expect((as.stats().errors['invalid_scope'] ?? 0) - refused).toBe(1);

    // A 503 with Retry-After: 1, then a step back of 30 s (the login's token, expired a minute ago, stays expired
    // by the wall clock): ERR_RETRY_LATER for a second, not for 31 s.
    await users.save('step-2', await as.issueTokens({ sub: 'step-2', scope: 'openid' }));
    await clock.advance(120_000);
    await as.fault('503', { times: 1 });
    await expect(users.getAccessToken('step-2')).rejects.toMatchObject({ code: 'ERR_HTTP_STATUS', status: 503 });
    clock.set(clock.now() - 30_000);
    await clock.advance(2000);
    await expect(users.getAccessToken('step-2')).resolves.toMatchObject({ tokenType: 'Bearer' });
    await users.close();
  });
});

describe('UserTokens: a subject whose refresh keeps failing, asked for again and again', () => {
  it('the server failing (500): about one token request a second, not one per call; one refreshFailed per request', async () => {
    const users = usersOn(new MemoryStore({ clock }), { random: () => 0.5 });
    let events = 0;
    users.on('refreshFailed', () => events++);
    await users.save('busy', await as.issueTokens({ sub: 'busy', scope: 'openid' }));
    await clock.advance(61_000);
    await as.fault('500');
    const before = as.stats().token;
    try {
      for (let i = 0; i < 100; i++) {
        await expect(users.getAccessToken('busy')).rejects.toMatchObject({ code: 'ERR_HTTP_STATUS', status: 500 });
        await clock.advance(100);
      }
    } finally {
      await as.fault('ok');
    }
    const requests = as.stats().token - before;
    // Without the fix: 100 requests in 10 s (each call sent one), as many events.
    expect(requests).toBeGreaterThanOrEqual(8);
    expect(requests).toBeLessThanOrEqual(16);
    expect(events).toBe(requests);
    await users.close();
  });

  it('a refusal waiting will not heal (invalid_scope): retried as the backoff allows, however often it is asked for', async () => {
    const users = usersOn(new MemoryStore({ clock }), { random: () => 0.5 });
    const failures: number[] = [];
    users.on('refreshFailed', (e) => failures.push(e.failures));
    await users.save('pushy', await as.issueTokens({ sub: 'pushy', scope: 'openid' }));
    const before = as.stats().errors['invalid_scope'] ?? 0;
    for (let i = 0; i < 120; i++) {
      await expect(users.getAccessToken('pushy', { scope: 'openid admin' })).rejects.toMatchObject({
        error: 'invalid_scope',
      });
      await clock.advance(1000);
    }
    const requests = (as.stats().errors['invalid_scope'] ?? 0) - before;
    // 150 ms, 300 ms, … 19.2 s, then 22.5 s apart (backoff × 0.75 with this `random`): 12 in two minutes. Without
    // the fix each refused call counted as one more failure — 120 refreshFailed events for 4 requests, the next
    // attempt pushed further by every call.
    expect(requests).toBe(12);
    expect(failures).toEqual(Array.from({ length: 12 }, (_, i) => i + 1));
    await users.close();
  });
});
