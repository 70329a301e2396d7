import { afterEach, describe, expect, it } from 'vitest';
import { ManualClock } from '../src/clock.js';
import { TokenwardenError } from '../src/errors.js';
import { TokenManager, type TokenManagerOptions } from '../src/manager.js';
import { MemoryStore } from '../src/stores/memory.js';
import { whileMoving } from './support/clock.js';
import { ScriptedSource, networkError, oauthError } from './support/scripted-source.js';

const T0 = Date.parse('2030-01-01T00:00:00Z');
const managers: TokenManager[] = [];

function setup(
  options: Partial<Omit<TokenManagerOptions, 'clock'>> & { lifetimeMs?: number; clock?: ManualClock } = {},
) {
  const clock = options.clock ?? new ManualClock(T0);
  const source = new ScriptedSource(clock, options.lifetimeMs ?? 60_000);
  const manager = new TokenManager({ source, clock, random: () => 0, ...options });
  managers.push(manager);
  const events: { name: string; data: unknown }[] = [];
  for (const name of ['token', 'refreshFailed', 'expired', 'storeError', 'storeRecovered'] as const) {
    manager.on(name, (data: unknown) => events.push({ name, data }));
  }
  return { clock, source, manager, events };
}

afterEach(async () => {
  await Promise.all(managers.splice(0).map((m) => m.close()));
});

describe('TokenManager', () => {
  it('shares one fetch among concurrent callers of a cold manager', async () => {
    const { source, manager } = setup();
    source.gate();
    const calls = Array.from({ length: 500 }, () => manager.getToken());
    await new Promise((r) => setImmediate(r));
    source.release();
    const tokens = await Promise.all(calls);
    expect(source.calls).toHaveLength(1);
    expect(new Set(tokens.map((t) => t.accessToken))).toEqual(new Set(['access-1']));
  });

  it('serves a fresh token from memory without calling the source', async () => {
    const { clock, source, manager } = setup();
    await manager.getToken();
    await clock.advance(20_000);
    for (let i = 0; i < 100; i++) await manager.getToken();
    expect(source.calls).toHaveLength(1);
  });

  it('refreshes in the background when the token becomes stale, with no caller waiting', async () => {
    const { clock, source, manager } = setup({ lifetimeMs: 60_000 });
    await manager.getToken();
    await clock.advance(29_999);
    expect(source.calls).toHaveLength(1);
    await clock.advance(2);
    expect(source.calls).toHaveLength(2);
    expect(manager.peek().token?.accessToken).toBe('access-2');
  });

  it('returns the stale token at once while the refresh runs (grace)', async () => {
    const { clock, source, manager } = setup({ refresh: { background: false } });
    await manager.getToken();
    await clock.advance(40_000);
    source.gate();
    const stale = await manager.getToken();
    expect(stale.accessToken).toBe('access-1');
    await clock.advance(0);
    expect(source.calls).toHaveLength(2); // the refresh is running (held at the gate)
    expect((await manager.getToken()).accessToken).toBe('access-1');
    source.release();
    await clock.advance(0);
    expect((await manager.getToken()).accessToken).toBe('access-2');
  });

  it('keeps serving the still-valid token while refreshes fail, then recovers', async () => {
    const { clock, source, manager, events } = setup({ refresh: { backoff: { initial: '4s', max: '4s' } } });
    await manager.getToken();
    source.then(networkError(), networkError(), networkError());
    await clock.advance(30_000); // stale now; three attempts fail over the next ~6 s
    const served = new Set<string>();
    for (let i = 0; i < 20; i++) {
      const token = await manager.getToken();
      expect(token.expiresAt).toBeGreaterThan(clock.now());
      served.add(token.accessToken);
      await clock.advance(500);
    }
    expect(events.filter((e) => e.name === 'refreshFailed')).toHaveLength(3);
    expect([...served]).toEqual(['access-1', 'access-2']);
  });

  it('backs off exponentially between failed background refreshes, capped', async () => {
    const { clock, source, manager } = setup({
      refresh: { background: true, backoff: { initial: 1000, max: 4000 } },
      lifetimeMs: 3_600_000,
    });
    await manager.getToken();
    source.then(...Array.from({ length: 6 }, networkError));
    await clock.advance(3_600_000 - 30_000 - 100);
    const times: number[] = [];
    const start = clock.now();
    for (let t = 0; t < 30_000 && source.calls.length < 8; t += 100) {
      const before = source.calls.length;
      await clock.advance(100);
      if (source.calls.length > before) times.push(clock.now() - start);
    }
    const gaps = times.slice(1).map((t, i) => t - (times[i] as number));
    // random() = 0 → each delay is half its base: 500, 1000, 2000, 2000, 2000
    expect(gaps.slice(0, 5)).toEqual([500, 1000, 2000, 2000, 2000]);
  });

  it('pulls a retry in so that one more attempt happens before the served token expires', async () => {
    const { clock, source, manager } = setup({ lifetimeMs: 4000, refresh: { backoff: { initial: 10_000 } } });
    await manager.getToken();
    source.then(networkError());
    await clock.advance(2000); // stale at 2 s; the attempt fails; backoff would say 5 s
    expect(source.calls).toHaveLength(2);
    await clock.advance(1100); // but the token expires at 4 s: retried at 2 s + (4 − 2)/2
    expect(source.calls).toHaveLength(3);
    expect(manager.peek().status).toBe('fresh');
  });

  it('after an outage that outlived the token, tries again within seconds of the server’s return, callers or not', async () => {
    const { clock, source, manager } = setup({ lifetimeMs: 4000 });
    await manager.getToken();
    source.then(...Array.from({ length: 1000 }, networkError));
    await clock.advance(60_000); // one minute of outage, long after the token expired
    const failed = source.calls.length;
    expect(failed).toBeLessThan(60); // not a storm: backoff, capped at 5 s without a token
    source.clear();
    await clock.advance(5_000);
    expect(source.calls.length).toBe(failed + 1);
    expect(manager.peek().status).toBe('fresh');
  });

  it('honours Retry-After, and tells a caller without a valid token to retry later', async () => {
    const { clock, source, manager } = setup({ lifetimeMs: 4000 });
    await manager.getToken();
    source.then(new TokenwardenError('ERR_HTTP_STATUS', '503', { status: 503, retryAfterMs: 10_000 }));
    await clock.advance(2000);
    expect(source.calls).toHaveLength(2);
    await clock.advance(3000);
    expect(source.calls).toHaveLength(2);
    await expect(manager.getToken()).rejects.toMatchObject({ code: 'ERR_RETRY_LATER', status: 503 });
    expect(source.calls).toHaveLength(2);
    await clock.advance(7000);
    expect(source.calls).toHaveLength(3); // at 2 s + Retry-After 10 s
    expect(manager.peek().status).toBe('fresh');
  });

  it('serves its token up to the millisecond before expiry while refreshes fail, and never at it', async () => {
    const { clock, source, manager } = setup({ lifetimeMs: 60_000 });
    const token = await manager.getToken();
    source.then(...Array.from({ length: 500 }, networkError));
    await clock.advance((token.expiresAt as number) - clock.now() - 1);
    expect(await manager.getToken()).toBe(token);
    expect(manager.peek().status).toBe('stale');
    await clock.advance(1);
    expect(manager.peek().status).toBe('expired');
    await expect(manager.getToken()).rejects.toMatchObject({ code: 'ERR_NETWORK' });
  });

  it('does not retry an error that waiting will not heal, and reports it to callers', async () => {
    const { clock, source, manager, events } = setup({ lifetimeMs: 4000 });
    await manager.getToken();
    source.then(oauthError('invalid_client', 401), oauthError('invalid_client', 401));
    await clock.advance(2000);
    await clock.advance(60_000);
    expect(source.calls).toHaveLength(2); // no background retry
    const failed = events.find((e) => e.name === 'refreshFailed')?.data as {
      retryInMs?: number;
      error: TokenwardenError;
    };
    expect(failed.retryInMs).toBeUndefined();
    expect(failed.error.error).toBe('invalid_client');
    expect(events.some((e) => e.name === 'expired')).toBe(false);
    // a caller with no valid token makes one attempt…
    await expect(manager.getToken()).rejects.toMatchObject({ code: 'ERR_OAUTH', error: 'invalid_client' });
    expect(events.some((e) => e.name === 'expired')).toBe(true);
    // …and callers right after it get the same answer without another request
    await expect(manager.getToken()).rejects.toMatchObject({ code: 'ERR_OAUTH', error: 'invalid_client' });
    expect(source.calls).toHaveLength(3);
  });

  it('makes callers wait only when no valid token exists, and rejects them all when that refresh fails', async () => {
    const { clock, source, manager } = setup({ refresh: { background: false } });
    source.then(networkError());
    const results = await Promise.allSettled(Array.from({ length: 10 }, () => manager.getToken()));
    expect(results.every((r) => r.status === 'rejected' && (r.reason as TokenwardenError).code === 'ERR_NETWORK')).toBe(
      true,
    );
    expect(source.calls).toHaveLength(1);
    await clock.advance(1000);
    expect((await manager.getToken()).accessToken).toBe('access-1');
  });

  it('without a valid token and with the server down, callers fail fast: about one attempt per second', async () => {
    const { clock, source, manager } = setup();
    source.then(...Array.from({ length: 100 }, networkError));
    let failures = 0;
    for (let i = 0; i < 500; i++) {
      // 500 calls over 5 s
      await manager.getToken().catch(() => failures++);
      await clock.advance(10);
    }
    expect(failures).toBe(500);
    expect(source.calls.length).toBeGreaterThanOrEqual(5);
    expect(source.calls.length).toBeLessThanOrEqual(15);
    // the server is back: within a second a caller gets a token again
    source.clear();
    await clock.advance(1000);
    expect((await manager.getToken()).accessToken).toBe('access-1');
  });

  it('refresh() forces a new token; concurrent calls share it', async () => {
    const { source, manager } = setup();
    await manager.getToken();
    const [a, b] = await Promise.all([manager.refresh(), manager.refresh()]);
    expect(a.accessToken).toBe('access-2');
    expect(b.accessToken).toBe('access-2');
    expect(source.calls).toHaveLength(2);
  });

  it('passes the newest token (with its rotated refresh token) to the source', async () => {
    const { source, manager } = setup();
    await manager.getToken();
    await manager.refresh();
    await manager.refresh();
    expect(source.calls.map((c) => c.previous?.refreshToken)).toEqual([undefined, 'refresh-1', 'refresh-2']);
  });

  it('invalidate() drops the token but keeps the refresh token, and ignores an outdated token', async () => {
    const { source, manager } = setup();
    const first = await manager.getToken();
    await manager.invalidate('some-older-token');
    expect(manager.peek().status).toBe('fresh');
    await manager.invalidate(first.accessToken);
    expect(manager.peek().status).toBe('expired');
    const next = await manager.getToken();
    expect(next.accessToken).toBe('access-2');
    expect(source.calls[1]?.previous?.refreshToken).toBe('refresh-1');
  });

  it('invalidate() forces at most two refreshes per forcedRefreshInterval', async () => {
    const { clock, source, manager } = setup({ forcedRefreshInterval: '30s' });
    await manager.getToken(); // access-1
    await manager.invalidate('access-1');
    expect((await manager.getToken()).accessToken).toBe('access-2');
    await manager.invalidate('access-2'); // the second within the window: allowed
    expect((await manager.getToken()).accessToken).toBe('access-3');
    await manager.invalidate('access-3'); // the third: ignored
    expect((await manager.getToken()).accessToken).toBe('access-3');
    await clock.advance(29_000);
    await manager.invalidate('access-3');
    expect((await manager.getToken()).accessToken).toBe('access-3');
    await clock.advance(1_000); // the first forced refresh has left the window
    await manager.invalidate('access-3');
    expect((await manager.getToken()).accessToken).toBe('access-4');
    expect(source.calls).toHaveLength(4);
  });

  it('getToken({ minTtl }) replaces a token with less life left', async () => {
    const { clock, manager } = setup({ lifetimeMs: 600_000 });
    await manager.getToken();
    await clock.advance(400_000);
    expect((await manager.getToken()).accessToken).toBe('access-1');
    expect((await manager.getToken({ minTtl: '5m' })).accessToken).toBe('access-2');
  });

  it('adopts a token another manager wrote to the shared store instead of fetching', async () => {
    const clock = new ManualClock(T0);
    const store = new MemoryStore({ clock });
    const source = new ScriptedSource(clock); // one source numbering for both, as two processes with one AS
    const ma = new TokenManager({ source, store, clock, random: () => 0 });
    const mb = new TokenManager({ source, store, clock, random: () => 0.5 });
    managers.push(ma, mb);
    const t1 = await ma.getToken();
    const t2 = await mb.getToken();
    expect(t2.accessToken).toBe(t1.accessToken);
    expect(source.calls).toHaveLength(1);
    // mb's jitter makes it stale first; it refreshes, and ma adopts mb's token from the store
    await clock.advance(60_000 - 30_000 - 3_000 + 1);
    expect(source.calls).toHaveLength(2);
    await clock.advance(3_000);
    expect(source.calls).toHaveLength(2);
    expect((await ma.getToken()).accessToken).toBe((await mb.getToken()).accessToken);
  });

  it('does not loop when a token is already stale on arrival', async () => {
    const { clock, source, manager } = setup({ refresh: { every: 10 } });
    await manager.getToken();
    await clock.advance(10_000);
    // every 10 ms would mean 1000 refreshes; the floor between background refreshes is one second
    expect(source.calls.length).toBeLessThanOrEqual(11);
    expect(source.calls.length).toBeGreaterThanOrEqual(9);
  });

  it('takes a newer token another writer put in the store rather than overwriting it', async () => {
    const clock = new ManualClock(T0);
    const store = new MemoryStore({ clock });
    const source = new ScriptedSource(clock);
    const m = new TokenManager({ source, store, clock, random: () => 0 });
    managers.push(m);
    await m.getToken();
    // another writer puts a newer token in the store behind our back
    const before = await store.get(m.key);
    await store.set(m.key, before!.value.replace('access-1', 'access-other'), {});
    // Our forced refresh reads the store first, finds a token newer than the one it holds, and takes it.
    expect((await m.refresh()).accessToken).toBe('access-other');
    expect(source.calls).toHaveLength(1); // no second request
    expect((await store.get(m.key))!.value).toContain('access-other'); // and nothing overwritten
    expect((await m.getToken()).accessToken).toBe('access-other');
  });

  it('never overwrites a newer store entry with an older result (compare-and-set on the version read)', async () => {
    const clock = new ManualClock(T0);
    const store = new MemoryStore({ clock });
    const source = new ScriptedSource(clock);
    const m = new TokenManager({ source, store, clock, random: () => 0 });
    managers.push(m);
    await m.getToken();
    // While our fetch is in flight (the store lock held by us), another writer ignores the lock and stores
    // the result of its own refresh from the same starting point.
    source.gate();
    const refreshing = m.refresh();
    await clock.advance(0);
    const base = await store.get(m.key);
    await store.set(m.key, base!.value.replace('access-1', 'access-foreign').replace('"seq":1', '"seq":2'));
    source.release();
    await refreshing;
    // Our compare-and-set failed; the store's entry, as new as ours, won and is what we now serve.
    expect((await store.get(m.key))!.value).toContain('access-foreign');
    expect((await m.getToken()).accessToken).toBe('access-foreign');
  });

  it('writes its newer result over an older entry that appeared under its lock (settled by seq)', async () => {
    const clock = new ManualClock(T0);
    const store = new MemoryStore({ clock });
    const source = new ScriptedSource(clock);
    const m = new TokenManager({ source, store, clock, random: () => 0 });
    managers.push(m);
    await m.getToken();
    source.gate();
    const refreshing = m.refresh();
    await clock.advance(0);
    // A store restored from an old copy: the same place in the history as what we are replacing.
    const base = await store.get(m.key);
    await store.set(m.key, base!.value.replace('access-1', 'access-restored'));
    source.release();
    await refreshing;
    expect((await store.get(m.key))!.value).toContain('access-2');
    expect((await m.getToken()).accessToken).toBe('access-2');
  });

  it('degrades to in-process behaviour when the store fails, with events, and recovers', async () => {
    const clock = new ManualClock(T0);
    const inner = new MemoryStore({ clock });
    let down = true;
    const flaky = {
      get: (k: string) => (down ? Promise.reject(new Error('ECONNREFUSED')) : inner.get(k)),
      set: (k: string, v: string, o?: object) =>
        down ? Promise.reject(new Error('ECONNREFUSED')) : inner.set(k, v, o),
      delete: (k: string) => inner.delete(k),
      lock: (k: string, o: { ttlMs: number; waitMs: number }) =>
        down ? Promise.reject(new Error('ECONNREFUSED')) : inner.lock(k, o),
      close: () => inner.close(),
    };
    const { manager, events, source } = setup({ store: flaky, clock });
    const t = await manager.getToken();
    expect(t.accessToken).toBe('access-1');
    expect(events.some((e) => e.name === 'storeError')).toBe(true);
    down = false;
    await manager.refresh();
    expect(events.some((e) => e.name === 'storeRecovered')).toBe(true);
    expect((await inner.get(manager.key))?.value).toContain('access-2');
    expect(source.calls).toHaveLength(2);
  });

  it('never spends a single-use refresh token without the fleet lock, before or after the token expires', async () => {
    const clock = new ManualClock(T0);
    const inner = new MemoryStore({ clock });
    let lockDown = false;
    const store = {
      get: (k: string) => inner.get(k),
      set: (k: string, v: string, o?: object) => inner.set(k, v, o),
      delete: (k: string) => inner.delete(k),
      lock: (k: string, o: { ttlMs: number; waitMs: number }) =>
        lockDown ? Promise.reject(new Error('ETIMEDOUT')) : inner.lock(k, o),
      close: () => inner.close(),
    };
    const { manager, source, events } = setup({ store, clock, lifetimeMs: 10_000 });
    source.exclusive = true;
    // A shared store that holds nothing yet: the first refresh is announced and waits for the fleet to settle.
    await whileMoving(clock, manager.getToken());
    lockDown = true;
    await clock.advance(7_000); // stale: background refreshes fail on the lock, the source is not called
    expect(source.calls).toHaveLength(1);
    expect((await manager.getToken()).accessToken).toBe('access-1');
    expect(events.some((e) => e.name === 'refreshFailed')).toBe(true);
    await clock.advance(3_500); // expired: a caller needs a token, but another process may be spending it
    const failed = await manager.getToken().catch((err: unknown) => err);
    expect(failed).toMatchObject({ code: 'ERR_STORE' });
    expect(source.calls).toHaveLength(1);
    lockDown = false; // the store is back: the first caller refreshes, once
    expect((await manager.getToken()).accessToken).toBe('access-2');
    expect(source.calls).toHaveLength(2);
  });

  it('unlockedRefresh: a store known to be private lets an expired token be refreshed without the lock', async () => {
    const clock = new ManualClock(T0);
    const inner = new MemoryStore({ clock });
    const store = {
      get: (k: string) => inner.get(k),
      set: (k: string, v: string, o?: object) => inner.set(k, v, o),
      delete: (k: string) => inner.delete(k),
      lock: () => Promise.reject(new Error('ETIMEDOUT')),
      close: () => inner.close(),
    };
    const source = new ScriptedSource(clock, 10_000);
    source.exclusive = true;
    const manager = new TokenManager({
      source,
      store,
      clock,
      random: () => 0,
      unlockedRefresh: true,
      refresh: { background: false },
    });
    managers.push(manager);
    await manager.getToken();
    await clock.advance(10_500);
    expect((await manager.getToken()).accessToken).toBe('access-2');
    expect(source.calls).toHaveLength(2);
  });

  it('a source that is not exclusive refreshes in-process when the store lock fails', async () => {
    const clock = new ManualClock(T0);
    const inner = new MemoryStore({ clock });
    const store = {
      get: (k: string) => inner.get(k),
      set: (k: string, v: string, o?: object) => inner.set(k, v, o),
      delete: (k: string) => inner.delete(k),
      lock: () => Promise.reject(new Error('ETIMEDOUT')),
      close: () => inner.close(),
    };
    const { manager, source } = setup({ store, clock, lifetimeMs: 10_000 });
    await manager.getToken();
    await clock.advance(7_000);
    expect(source.calls).toHaveLength(2);
  });

  it('treats a corrupt store entry as a miss', async () => {
    const clock = new ManualClock(T0);
    const store = new MemoryStore({ clock });
    const { manager, source } = setup({ store, clock });
    await store.set(manager.key, '{"not":"a token"}');
    expect((await manager.getToken()).accessToken).toBe('access-1');
    expect(source.calls).toHaveLength(1);
  });

  it('never puts a token or refresh token in an event', async () => {
    const { clock, manager, events, source } = setup({ lifetimeMs: 4000 });
    await manager.getToken();
    source.then(networkError());
    await clock.advance(5000);
    const text = JSON.stringify(events) + events.map((e) => String(e.data)).join('');
    expect(events.length).toBeGreaterThan(1);
    expect(text).not.toMatch(/access-\d|refresh-\d/);
  });

  it('close() waits for a refresh in flight, then refuses calls', async () => {
    const { source, manager } = setup();
    source.gate();
    const pending = manager.getToken();
    await new Promise((r) => setImmediate(r));
    const closing = manager.close();
    source.release();
    await closing;
    await expect(pending).resolves.toMatchObject({ accessToken: 'access-1' });
    await expect(manager.getToken()).rejects.toMatchObject({ code: 'ERR_CLOSED' });
  });

  it("close() does not wait out another process's lock: a refresh waiting for it ends with ERR_CLOSED at once, nothing spent", async () => {
    const store = new MemoryStore();
    // A lock wait longer than the test may run: close() waiting for it would fail the test by its timeout.
    const { source, manager } = setup({ store, lock: { wait: '10m' } });
    const elsewhere = await store.lock(manager.key, { ttlMs: 60_000, waitMs: 0 }); // another process refreshing
    const pending = manager.getToken();
    pending.catch(() => undefined);
    for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r)); // waiting for the lock now
    await manager.close(); // while the other process still holds the lock
    await expect(pending).rejects.toMatchObject({ code: 'ERR_CLOSED' });
    expect(source.calls).toHaveLength(0);
    await elsewhere?.release();
  });

  it('a caller can stop waiting without cancelling the shared refresh', async () => {
    const { source, manager } = setup();
    source.gate();
    const controller = new AbortController();
    const waiting = manager.getToken({ signal: controller.signal });
    const other = manager.getToken();
    controller.abort();
    await expect(waiting).rejects.toMatchObject({ code: 'ERR_ABORTED' });
    source.release();
    await expect(other).resolves.toMatchObject({ accessToken: 'access-1' });
  });

  it('TokenManager.named returns one manager per name and refuses a different credential under it', async () => {
    const clock = new ManualClock(T0);
    const source = new ScriptedSource(clock, 60_000, 'named-key');
    const a = TokenManager.named('billing', () => ({ source, clock }));
    const b = TokenManager.named('billing', { source, clock });
    expect(b).toBe(a);
    expect(() => TokenManager.named('billing', { source: new ScriptedSource(clock, 1, 'other') })).toThrow(
      expect.objectContaining({ code: 'ERR_CONFIG' }),
    );
    await TokenManager.closeAll();
    expect(TokenManager.named('billing', { source, clock })).not.toBe(a);
    await TokenManager.closeAll();
  });

  it('refuses bad options with ERR_CONFIG', () => {
    expect(() => new TokenManager({} as TokenManagerOptions)).toThrow(expect.objectContaining({ code: 'ERR_CONFIG' }));
    expect(() => new TokenManager({ source: { key: 'k' } } as unknown as TokenManagerOptions)).toThrow(
      expect.objectContaining({ code: 'ERR_CONFIG' }),
    );
  });
});
