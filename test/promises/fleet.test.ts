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
import { TokenManager } from '../../src/manager.js';
import { MemoryStore } from '../../src/stores/memory.js';
import { FailingStore } from '../support/failing-store.js';
import { ScriptedSource } from '../support/scripted-source.js';

const T0 = Date.parse('2030-01-01T00:00:00Z');
const managers: TokenManager[] = [];
afterEach(async () => {
  for (const m of managers.splice(0)) void m.close(); // a hung store's steps never end: do not wait on them
});

function setup(exclusive: boolean) {
  const clock = new ManualClock(T0);
  const source = new ScriptedSource(clock, 60_000);
  source.exclusive = exclusive;
  const store = new FailingStore(new MemoryStore());
  const manager = new TokenManager({ source, clock, random: () => 0, store, storeTimeout: '300ms' });
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
