/**
 * README "Keeping them valid" promises about TokenManager's lifecycle that no other suite breaks on purpose.
 * ManualClock and a scripted source (the TokenSource seam itself; no HTTP faked).
 */
import { afterEach, describe, expect, it } from 'vitest';
import { ManualClock } from '../../src/clock.js';
import { TokenwardenError } from '../../src/errors.js';
import { TokenManager } from '../../src/manager.js';
import { backoffDelay, parseRetryAfter, resolvePolicy } from '../../src/policy.js';
import { MemoryStore } from '../../src/stores/memory.js';
import { FailingStore } from '../support/failing-store.js';
import { ScriptedSource } from '../support/scripted-source.js';

const T0 = Date.parse('2030-01-01T00:00:00Z');
const managers: TokenManager[] = [];
afterEach(async () => {
  await Promise.all(managers.splice(0).map((m) => m.close()));
});

function setup(lifetimeMs: number, store?: MemoryStore | FailingStore) {
  const clock = new ManualClock(T0);
  const source = new ScriptedSource(clock, lifetimeMs);
  const manager = new TokenManager({ source, clock, random: () => 0, ...(store && { store }) });
  managers.push(manager);
  return { clock, source, manager };
}

/** Lets pending promise callbacks and immediates run. */
async function settle(): Promise<void> {
  for (let i = 0; i < 10; i++) await new Promise((r) => setImmediate(r));
}

describe('getToken({ minTtl })', () => {
  it('longer than the server’s tokens live: the new token is served, not one token request per call', async () => {
    // A server issuing 60 s tokens, a caller asking for 5 minutes (or a server issuing exactly 5-minute tokens and
    // `minTtl: '5m'`: no token ever has more than 5 minutes left). No token can satisfy the request, so every call
    // replaced the token it had just obtained: each getToken() was a token request (with a refresh-token source,
    // one rotation each), at the caller's rate: 10 calls in the same millisecond made 10 token requests.
    const { clock, source, manager } = setup(60_000);
    for (let i = 0; i < 10; i++) {
      const token = await manager.getToken({ minTtl: '5m' });
      expect(token.expiresAt).toBeGreaterThan(clock.now());
    }
    expect(source.calls).toHaveLength(1);
    // Nor on every call later: a token obtained less than its refresh floor ago (a second) is the longest the
    // server gives and satisfies any minTtl, so callers asking for more than the server ever gives cost at most one
    // token request a second — the bound a down server gets too — not one per call.
    for (let i = 0; i < 200; i++) {
      await clock.advance(100);
      const token = await manager.getToken({ minTtl: '5m' });
      expect(token.expiresAt).toBeGreaterThan(clock.now());
    }
    expect(source.calls.length).toBeLessThanOrEqual(21); // 20 s of calls every 100 ms (200 without the bound)
  });

  it('a token with less left than minTtl is replaced once (the promise it keeps when the server can)', async () => {
    const { clock, source, manager } = setup(600_000);
    await manager.getToken();
    await clock.advance(400_000);
    const token = await manager.getToken({ minTtl: '5m' });
    expect((token.expiresAt as number) - clock.now()).toBeGreaterThan(300_000);
    await manager.getToken({ minTtl: '5m' });
    expect(source.calls).toHaveLength(2);
  });
});

describe('close()', () => {
  it('a refresh under way finishes and its rotated refresh token is written to the store; timers stop', async () => {
    const store = new MemoryStore();
    const { clock, source, manager } = setup(60_000, store);
    source.exclusive = true; // a refresh-token source: what it spends is single-use
    await manager.getToken(); // access-1, refresh-1
    source.gate();
    await clock.advance(45_000); // stale: the background refresh starts and reaches the server
    await settle();
    expect(source.calls).toHaveLength(2);
    expect(await manager.getToken()).toMatchObject({ accessToken: 'access-1' }); // served while the refresh runs
    let closed = false;
    const closing = manager.close().then(() => (closed = true));
    await settle();
    expect(closed).toBe(false); // close() waits for the refresh under way
    source.release(); // the server answers after close() was called: access-2 with refresh-2
    await closing;

    // A restart on the same store continues with the rotated refresh token, without a token request.
    const next = new ScriptedSource(clock, 60_000);
    next.exclusive = true;
    const restarted = new TokenManager({ source: next, clock, random: () => 0, store });
    managers.push(restarted);
    expect(await restarted.getToken()).toMatchObject({ accessToken: 'access-2', refreshToken: 'refresh-2' });
    expect(next.calls).toHaveLength(0);

    // Timers stopped: time passing past the closed manager's next refresh makes no token request.
    await clock.advance(120_000);
    await settle();
    expect(source.calls).toHaveLength(2);
    await expect(manager.getToken()).rejects.toMatchObject({ code: 'ERR_CLOSED' });
  });

  it('a rotated refresh token the store refused is written by close() once the store answers', async () => {
    const store = new FailingStore(new MemoryStore());
    const { clock, source, manager } = setup(60_000, store);
    source.exclusive = true;
    await manager.getToken(); // access-1, refresh-1 in the store
    store.failing.add('set');
    await clock.advance(45_000); // the background refresh spends refresh-1; the store refuses refresh-2
    await settle();
    expect(source.calls).toHaveLength(2);
    store.failing.delete('set'); // the store is back; the write's own retry has not run yet
    await manager.close();

    const next = new ScriptedSource(clock, 60_000);
    next.exclusive = true;
    const restarted = new TokenManager({ source: next, clock, random: () => 0, store });
    managers.push(restarted);
    // Without the write at close: access-1 with refresh-1, which the server has already rotated (spent twice).
    expect(await restarted.getToken()).toMatchObject({ accessToken: 'access-2', refreshToken: 'refresh-2' });
    expect(next.calls).toHaveLength(0);
  });

  it('a store still down at close: close() ends, with a storeError saying the write did not land', async () => {
    const store = new FailingStore(new MemoryStore());
    const { clock, source, manager } = setup(60_000, store);
    source.exclusive = true;
    await manager.getToken();
    store.failing.add('set');
    await clock.advance(45_000);
    await settle();
    expect(source.calls).toHaveLength(2);
    const errors: string[] = [];
    manager.on('storeError', ({ operation }) => errors.push(operation));
    await manager.close();
    expect(errors).toContain('set');
  });
});

describe('Retry-After', () => {
  it('from a custom source, at most an hour too: callers are refused for an hour, then the source is asked again', async () => {
    const clock = new ManualClock(T0);
    const source = new ScriptedSource(clock, 60_000);
    const manager = new TokenManager({ source, clock, random: () => 0, refresh: { background: false } });
    managers.push(manager);
    const day = new TokenwardenError('ERR_HTTP_STATUS', 'rate limited', { status: 429, retryAfterMs: 86_400_000 });
    source.then(day);
    await expect(manager.getToken()).rejects.toBe(day);
    await clock.advance(3_599_000);
    await expect(manager.getToken()).rejects.toMatchObject({ code: 'ERR_RETRY_LATER' });
    expect(source.calls).toHaveLength(1);
    await clock.advance(2_000);
    await expect(manager.getToken()).resolves.toMatchObject({ accessToken: 'access-1' });
    expect(source.calls).toHaveLength(2);
  });

  it('that is not a time (NaN from a custom source) is no Retry-After: the background retry keeps its backoff', async () => {
    // Math.max(delay, NaN) made the retry delay NaN — a timer of a millisecond (a ManualClock spun on it forever).
    const { clock, source, manager } = setup(60_000);
    const odd = new TokenwardenError('ERR_NETWORK', 'down');
    Object.defineProperty(odd, 'retryAfterMs', { value: Number.NaN });
    source.then(odd, odd, odd);
    await expect(manager.getToken()).rejects.toBe(odd);
    await clock.advance(150); // the first backoff is 100–200 ms (random 0: 100)
    expect(source.calls.length).toBeLessThanOrEqual(2);
    await clock.advance(1_000);
    expect(source.calls.length).toBeLessThanOrEqual(4);
    await expect(manager.getToken()).resolves.toMatchObject({ accessToken: 'access-1' });
  });

  it('is honoured up to one hour (BackoffOptions): a server asking for a day does not silence refreshes for a day', () => {
    const now = Date.parse('2030-01-01T00:00:00Z');
    expect(parseRetryAfter('86400', now)).toBe(3_600_000);
    expect(parseRetryAfter(new Date(now + 86_400_000).toUTCString(), now)).toBe(3_600_000);
    expect(backoffDelay(resolvePolicy(), 1, 0, 86_400_000)).toBe(3_600_000);
  });
});
