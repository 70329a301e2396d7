/**
 * UserTokens when the store fails: cached tokens keep being served, no refresh token is spent without the
 * store (another process may hold a newer one), and a refresh the store could not take is written once it
 * answers again. The failing store wraps a real MemoryStore; only the faults are simulated.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ManualClock } from '../../src/clock.js';
import { TokenwardenError } from '../../src/errors.js';
import { MemoryStore } from '../../src/stores/memory.js';
import type { LockOptions, SetOptions, StoreLock, StoreRecord, TokenStore } from '../../src/stores/store.js';
import { type TestAuthorizationServer, startAuthorizationServer } from '../support/authorization-server.js';
import { UserTokens } from '../../src/users/index.js';
import { json, startFaultServer } from '../support/fault-server.js';
import { subjectOf, untilExpired, usersFor } from './helpers.js';

type Operation = 'get' | 'set' | 'lock' | 'delete';

class FailingStore implements TokenStore {
  readonly failing = new Set<Operation>();
  hang = false;
  constructor(readonly inner: TokenStore) {}
  #check(operation: Operation): Promise<void> {
    if (this.hang) return new Promise(() => undefined);
    if (this.failing.has(operation)) return Promise.reject(new Error(`ECONNREFUSED (${operation})`));
    return Promise.resolve();
  }
  async get(key: string): Promise<StoreRecord | undefined> {
    await this.#check('get');
    return this.inner.get(key);
  }
  async set(key: string, value: string, options?: SetOptions): Promise<number | null> {
    await this.#check('set');
    return this.inner.set(key, value, options);
  }
  async delete(key: string): Promise<void> {
    await this.#check('delete');
    return this.inner.delete(key);
  }
  async lock(key: string, options: LockOptions): Promise<StoreLock | undefined> {
    await this.#check('lock');
    return this.inner.lock(key, options);
  }
  close(): Promise<void> {
    return this.inner.close();
  }
}

let as: TestAuthorizationServer;
beforeAll(async () => {
  as = await startAuthorizationServer({ accessTokenTtl: 2 });
});
afterAll(async () => {
  await as.close();
});
const refreshes = (): number => as.counts.byGrant['refresh_token'] ?? 0;

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
