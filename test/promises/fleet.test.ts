/**
 * README "What holds whatever the store is doing", in its unit form: a store that never answers (a frozen Redis or
 * PostgreSQL, stalled file operations) stood for by `FailingStore.hang`. Token time is a ManualClock; a store
 * step's time limit is real time (a store's slowness is real: `bounded()` in src/stores/shared.ts), so these use a
 * short `storeTimeout`. The fault suites (test/faults/, test/stores/*-faults.test.ts) show the same against real
 * frozen servers; these pin the rules themselves: never a wait with a valid token, a coded failure within
 * `storeTimeout` without one, never a spend without the lock.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { ManualClock } from '../../src/clock.js';
import type { Duration } from '../../src/duration.js';
import { TokenManager } from '../../src/manager.js';
import { MemoryStore } from '../../src/stores/memory.js';
import { FailingStore } from '../support/failing-store.js';
import { ScriptedSource } from '../support/scripted-source.js';

const T0 = Date.parse('2030-01-01T00:00:00Z');
const managers: TokenManager[] = [];
afterEach(async () => {
  for (const m of managers.splice(0)) void m.close(); // a hung store's steps never end: do not wait on them
});

function setup(exclusive: boolean, storeTimeout: Duration = '300ms') {
  const clock = new ManualClock(T0);
  const source = new ScriptedSource(clock, 60_000);
  source.exclusive = exclusive;
  const store = new FailingStore(new MemoryStore());
  const manager = new TokenManager({ source, clock, random: () => 0, store, storeTimeout });
  managers.push(manager);
  return { clock, source, store, manager };
}

/**
 * The first token of a refresh-token source: announced in the empty store, then spent after the fleet's settle
 * (on the ManualClock), so time has to move for it.
 */
async function first(clock: ManualClock, manager: TokenManager) {
  const call = manager.getToken();
  for (let i = 0; i < 100 && !(await settled(call)); i++) await clock.advance(100);
  return call;
}

/** Whether `promise` has settled after pending callbacks ran. */
async function settled(promise: Promise<unknown>): Promise<boolean> {
  let done = false;
  promise.then(
    () => (done = true),
    () => (done = true),
  );
  for (let i = 0; i < 10; i++) await new Promise((r) => setImmediate(r));
  return done;
}

describe('a store that never answers', () => {
  it('a process holding a valid (stale) token serves it at once, however long the store hangs', async () => {
    const { clock, store, manager } = setup(true);
    const held = await first(clock, manager);
    store.hang = true;
    await clock.advance(45_000); // stale: its refresh is stuck on the store
    for (let i = 0; i < 5; i++) {
      const call = manager.getToken();
      expect(await settled(call)).toBe(true);
      expect(await call).toBe(held);
      await clock.advance(1000);
    }
  });

  it('without a valid token, a refresh-token caller gets ERR_STORE_TIMEOUT within storeTimeout; nothing is spent', async () => {
    const { clock, source, store, manager } = setup(true);
    await first(clock, manager);
    store.hang = true;
    await clock.advance(61_000); // expired (and its background refresh is stuck on the store)
    const calls = source.calls.length;
    await expect(manager.getToken()).rejects.toMatchObject({ code: 'ERR_STORE_TIMEOUT' });
    expect(source.calls.length).toBe(calls); // never a refresh without the lock
  });

  it('client credentials (nothing single-use to spend) carry on in-process once the store steps time out', async () => {
    const { clock, source, store, manager } = setup(false);
    await manager.getToken();
    store.hang = true;
    await clock.advance(61_000);
    const token = await manager.getToken();
    expect(token.expiresAt).toBeGreaterThan(clock.now());
    expect(source.calls.length).toBeGreaterThan(1);
  });
});

describe('a store that stops answering while a new token is written', () => {
  // The write of a spend's result is waited for only as long as the new token can spare: half the life it has
  // left. Beyond that, the caller is served and the write goes on as pending (retried, the lock kept). Without
  // that bound a frozen store held the caller for all of `storeTimeout`, and a token living less than that
  // came out of the wait expired: an ERR_INVALID_RESPONSE for a refresh that had worked (CI, 2026-12-01).
  for (const exclusive of [false, true]) {
    it(`${exclusive ? 'refresh token' : 'client credentials'}: the caller has the new token while it is still valid; the lock is kept until the write lands`, async () => {
      const { clock, source, store, manager } = setup(exclusive, '3s');
      await first(clock, manager);
      source.then({ lifetimeMs: 1000, refreshToken: 'rt-2' });
      store.hanging.add('set');
      // Token time follows real time while the store does not answer (it ages as it would on a frozen Redis).
      const ticking = setInterval(() => void clock.advance(20), 20);
      const token = await manager.refresh().finally(() => clearInterval(ticking));
      expect(token.accessToken).toBe('access-2');
      expect(token.expiresAt).toBeGreaterThan(clock.now()); // served valid: without the bound, ERR_INVALID_RESPONSE
      const spent = source.calls.length;
      // The write has not landed: the lock is still held (nobody else spends the refresh token meanwhile).
      const lock = { ttlMs: 5000, waitMs: 0 };
      expect(await store.inner.lock(manager.key, lock)).toBeUndefined();
      store.unhang(); // the write in flight lands; the pending retry (within 250 ms) finds it and lets the lock go
      let landed = false;
      for (let i = 0; i < 50 && !landed; i++) {
        await new Promise((r) => setTimeout(r, 20));
        landed = (await store.inner.get(manager.key))?.value.includes(token.accessToken) === true;
      }
      expect(landed).toBe(true);
      let free: Awaited<ReturnType<MemoryStore['lock']>>;
      for (let i = 0; i < 50 && free === undefined; i++) {
        await new Promise((r) => setTimeout(r, 20));
        free = await store.inner.lock(manager.key, lock);
      }
      expect(free).toBeDefined();
      expect(source.calls.length).toBe(spent); // nothing spent twice
      expect(await manager.getToken()).toBe(token);
    });
  }
});
