/**
 * The fleet core's rules, one test each, through TokenManager: several managers on one store stand for
 * several processes (they share nothing but the store), a ScriptedSource for the authorization server, and
 * a store that wraps a real MemoryStore and fails, stalls or loses data on command. The fault suites
 * (test/faults/) check the same rules against real servers and real faults.
 */
import { EventEmitter } from 'node:events';
import { afterEach, describe, expect, it } from 'vitest';
import { ManualClock } from '../../src/clock.js';
import { SETTLE_MS } from '../../src/fleet/fleet.js';
import { TokenManager, type TokenManagerOptions } from '../../src/manager.js';
import { MemoryStore } from '../../src/stores/memory.js';
import type {
  LockOptions,
  SetOptions,
  StoreEvents,
  StoreLock,
  StoreRecord,
  TokenStore,
} from '../../src/stores/store.js';
import { whileMoving } from '../support/clock.js';
import { until } from '../support/private-servers.js';
import { ScriptedSource, oauthError } from '../support/scripted-source.js';

const T0 = Date.parse('2030-01-01T00:00:00Z');
type Op = 'get' | 'set' | 'lock' | 'delete';

/** A shared store (not a MemoryStore: the core treats it as shared by other processes) with faults on command. */
class FaultyStore extends EventEmitter<StoreEvents> implements TokenStore {
  readonly failing = new Set<Op>();
  readonly delayMs: Partial<Record<Op, number>> = {};
  readonly calls: Op[] = [];
  constructor(readonly inner: MemoryStore) {
    super();
  }
  async #enter(op: Op): Promise<void> {
    this.calls.push(op);
    const delay = this.delayMs[op];
    if (delay !== undefined) await new Promise((r) => setTimeout(r, delay));
    if (this.failing.has(op)) throw new Error(`ECONNREFUSED (${op})`);
  }
  async get(key: string): Promise<StoreRecord | undefined> {
    await this.#enter('get');
    return this.inner.get(key);
  }
  async set(key: string, value: string, options?: SetOptions): Promise<number | null> {
    await this.#enter('set');
    return this.inner.set(key, value, options);
  }
  async delete(key: string): Promise<void> {
    await this.#enter('delete');
    return this.inner.delete(key);
  }
  async lock(key: string, options: LockOptions): Promise<StoreLock | undefined> {
    await this.#enter('lock');
    return this.inner.lock(key, options);
  }
  close(): Promise<void> {
    return Promise.resolve();
  }
}

const managers: TokenManager[] = [];
afterEach(async () => {
  await Promise.all(managers.splice(0).map((m) => m.close()));
});

function manager(options: Partial<TokenManagerOptions> & { source: ScriptedSource; store: TokenStore }): TokenManager {
  const m = new TokenManager({ random: () => 0, refresh: { background: false }, ...options });
  managers.push(m);
  return m;
}

/** One store shared by the managers of a test (a MemoryStore behind a FaultyStore), and a refresh-token source. */
function sharedStore() {
  const clock = new ManualClock(T0);
  const inner = new MemoryStore({ clock });
  const store = new FaultyStore(inner);
  const source = new ScriptedSource(clock, 10_000);
  source.exclusive = true;
  return { clock, inner, store, source };
}

describe('the fleet core', () => {
  it('one refresh’s store steps share one time budget: reads that each take 60 % of it fail the refresh before any spend', async () => {
    const store = new FaultyStore(new MemoryStore());
    const source = new ScriptedSource(new ManualClock(T0));
    source.exclusive = true;
    const m = manager({ source, store, storeTimeout: 250, clock: new ManualClock(T0) });
    store.delayMs.get = 150;
    const failure = await m.getToken().catch((err: unknown) => err);
    expect(failure).toMatchObject({ code: 'ERR_STORE_TIMEOUT' });
    expect(source.calls).toHaveLength(0); // with a limit per step, both reads would have fit, and it would have spent
    expect(store.calls).toEqual(['get', 'lock', 'get']);
  });

  it('a spend whose write does not land keeps the lock, so no other process spends, and is written when the store takes writes again', async () => {
    const clock = new ManualClock(T0);
    const store = new FaultyStore(new MemoryStore()); // lock leases in real time
    const source = new ScriptedSource(clock, 10_000);
    source.exclusive = true;
    const a = manager({ source, store, clock });
    const b = manager({ source, store, clock, lock: { wait: 50 } });
    await whileMoving(clock, a.getToken()); // access-1, announced and settled: a first start
    await clock.advance(10_500); // expired everywhere

    store.failing.add('set');
    expect((await a.getToken()).accessToken).toBe('access-2'); // the caller gets it; the store does not (yet)
    expect(source.calls).toHaveLength(2);
    // Process B has no valid token either: it reads access-1 (expired), and cannot take the lock.
    expect(await b.getToken().catch((err: unknown) => err)).toMatchObject({ code: 'ERR_LOCK_TIMEOUT' });
    expect(source.calls).toHaveLength(2); // refresh-1 was not spent a second time

    store.failing.delete('set');
    await until(async () => (await store.inner.get(a.key))?.value.includes('access-2') === true);
    // Written, and the lock released: B takes the newest token without a spend.
    expect((await b.getToken()).accessToken).toBe('access-2');
    expect(source.calls).toHaveLength(2);
  });

  it('after a store reset every process writes back what it holds, the newest wins, and no one spends before the fleet settles', async () => {
    const { clock, inner, store, source } = sharedStore();
    const a = manager({ source, store, clock });
    const b = manager({ source, store, clock });
    await whileMoving(clock, a.getToken()); // access-1
    expect((await b.getToken()).accessToken).toBe('access-1'); // adopted, no spend
    await a.refresh(); // access-2, which B has not seen
    expect(source.calls).toHaveLength(2);
    await clock.advance(10_500); // both expired

    await inner.delete(a.key); // the store restarts empty…
    store.emit('reset'); // …and says so
    await until(async () => (await inner.get(a.key))?.value.includes('access-2') === true);
    expect((await inner.get(a.key))?.value).toContain('"healedAt"');

    // B's refresh waits for the fleet to settle, then spends A's newer refresh token, not its own.
    const refreshing = b.getToken();
    await clock.advance(SETTLE_MS / 2);
    expect(source.calls).toHaveLength(2);
    await whileMoving(clock, refreshing);
    expect(source.calls).toHaveLength(3);
    expect(source.calls[2]?.previous?.refreshToken).toBe('refresh-2');
  });

  it('a first refresh from configuration is announced in an empty store, and a process holding a newer state overwrites the announcement before the spend', async () => {
    const { clock, inner, store, source } = sharedStore();
    const old = manager({ source, store, clock });
    await whileMoving(clock, old.getToken()); // access-1 / refresh-1
    await inner.delete(old.key); // the store lost it, without a reset anyone could see

    const newcomer = manager({ source, store, clock });
    const first = newcomer.getToken();
    await until(async () => (await inner.get(old.key)) !== undefined); // announced…
    expect((await inner.get(old.key))?.value).not.toContain('refresh-');
    store.emit('reset'); // …and the process holding refresh-1 writes it back over the announcement
    await whileMoving(clock, first);
    expect(source.calls).toHaveLength(1); // access-1 was still valid: taken, nothing spent
    expect((await first).accessToken).toBe('access-1');
  });

  it('a read that finds the store behind what this process holds (a failover lost the last write) writes the newer state back', async () => {
    const { clock, inner, store, source } = sharedStore();
    const a = manager({ source, store, clock });
    await whileMoving(clock, a.getToken());
    const older = await inner.get(a.key);
    await a.refresh(); // access-2, seq 2
    await inner.set(a.key, older!.value); // the promoted replica has only the seq-1 entry
    source.gate();
    const refreshing = a.refresh();
    await until(async () => (await inner.get(a.key))?.value.includes('refresh-2') === true);
    expect((await inner.get(a.key))?.value).toContain('"healedAt"');
    source.release();
    await whileMoving(clock, refreshing);
    expect(source.calls.at(-1)?.previous?.refreshToken).toBe('refresh-2');
  });

  it('a TokenManager whose entry vanished while it spent (a store that lost it, no reset seen) writes the rotated refresh token back', async () => {
    const { clock, inner, store, source } = sharedStore();
    const a = manager({ source, store, clock });
    await whileMoving(clock, a.getToken()); // access-1 / refresh-1
    source.gate();
    const refreshing = a.refresh();
    await until(() => source.calls.length === 2); // spending refresh-1 under the lock
    await inner.delete(a.key); // the store loses the entry (a FLUSHALL before the generation watch sees it)
    source.release();
    await whileMoving(clock, refreshing);
    // Without it the write's compare-and-set failed, the result was dropped, and the next process (or a restart)
    // spent the configured refresh token that the server had already rotated away.
    await until(async () => (await inner.get(a.key))?.value.includes('refresh-2') === true);
  });

  it('an entry marked healed by a host whose clock runs an hour ahead holds a refresh up for the settle, not for the hour', async () => {
    const { clock, inner, store, source } = sharedStore();
    const a = manager({ source, store, clock });
    await whileMoving(clock, a.getToken());
    const entry = JSON.parse((await inner.get(a.key))!.value) as Record<string, unknown>;
    await inner.set(a.key, JSON.stringify({ ...entry, healedAt: clock.now() + 3_600_000 }));
    await clock.advance(10_500); // expired
    const b = manager({ source, store, clock });
    const refreshing = b.getToken();
    let moved = 0;
    while (source.calls.length < 2 && moved <= SETTLE_MS + 1000) {
      await clock.advance(100);
      moved += 100;
      await new Promise((r) => setImmediate(r));
    }
    expect(source.calls).toHaveLength(2); // without the cap at now: nothing spent until the hour had passed
    expect(moved).toBeGreaterThanOrEqual(SETTLE_MS - 100); // the settle itself is kept
    expect((await refreshing).accessToken).toBe('access-2');
  });

  it('a refused refresh token stays refused for the fleet through a store reset: the process holding it writes the refusal back', async () => {
    const { clock, inner, store, source } = sharedStore();
    const a = manager({ source, store, clock });
    const b = manager({ source, store, clock });
    await whileMoving(clock, a.getToken()); // access-1 / refresh-1
    expect((await b.getToken()).accessToken).toBe('access-1');
    source.then(oauthError('invalid_grant'));
    const installed: string[] = [];
    a.on('token', ({ from }) => installed.push(from));
    await expect(a.refresh()).rejects.toMatchObject({ code: 'ERR_OAUTH', error: 'invalid_grant' });
    expect((await inner.get(a.key))?.value).toContain('"refused"');
    expect(installed).toEqual([]); // the refusal recorded is no new token: no 'token' event, access-1 still held
    expect(a.peek().token?.accessToken).toBe('access-1');
    await clock.advance(10_500); // access-1 has expired everywhere

    await inner.delete(a.key); // the store restarts empty…
    store.emit('reset'); // …and A writes back what it holds: the token, with its refusal
    await until(async () => (await inner.get(a.key))?.value.includes('"refused"') === true);
    // B (which never saw the refusal in memory) and a newcomer read it: refresh-1 is not presented again.
    await expect(whileMoving(clock, b.getToken())).rejects.toMatchObject({ code: 'ERR_OAUTH', error: 'invalid_grant' });
    const c = manager({ source, store, clock });
    await expect(whileMoving(clock, c.getToken())).rejects.toMatchObject({ code: 'ERR_OAUTH', error: 'invalid_grant' });
    expect(source.calls).toHaveLength(2);
  });

  it('the configured refresh token refused on its first use (nothing held) stays refused through a store reset', async () => {
    const { clock, inner, store, source } = sharedStore();
    const a = manager({ source, store, clock });
    source.then(oauthError('invalid_grant'));
    await expect(whileMoving(clock, a.getToken())).rejects.toMatchObject({ code: 'ERR_OAUTH', error: 'invalid_grant' });
    expect(source.calls).toHaveLength(1);
    expect((await inner.get(a.key))?.value).toContain('"refused"');
    expect(a.peek().status).toBe('none'); // no token: only the refusal is known

    await inner.delete(a.key); // the store restarts empty…
    store.emit('reset'); // …and A writes back the refusal it remembers, though it holds no token
    await until(async () => (await inner.get(a.key))?.value.includes('"refused"') === true);
    // A newcomer (the same configuration: the same dead refresh token) reads it, and does not present it.
    const b = manager({ source, store, clock });
    await expect(whileMoving(clock, b.getToken())).rejects.toMatchObject({ code: 'ERR_OAUTH', error: 'invalid_grant' });
    await expect(whileMoving(clock, a.getToken())).rejects.toMatchObject({ code: 'ERR_OAUTH', error: 'invalid_grant' });
    expect(source.calls).toHaveLength(1);
  });

  it('a refusal the store did not take at first is kept, with the lock, and written when the store takes writes again', async () => {
    const { clock, inner, store, source } = sharedStore();
    const a = manager({ source, store, clock });
    const b = manager({ source, store, clock, lock: { wait: '1s' } });
    await whileMoving(clock, a.getToken());
    await clock.advance(10_500);
    source.then(oauthError('invalid_grant'));
    store.failing.add('set');
    await expect(whileMoving(clock, a.getToken())).rejects.toMatchObject({ code: 'ERR_OAUTH', error: 'invalid_grant' });
    // Meanwhile B cannot spend refresh-1: the lock is still A's (its lease keeps the fleet off until the write lands).
    await expect(whileMoving(clock, b.getToken())).rejects.toMatchObject({ code: 'ERR_LOCK_TIMEOUT' });
    store.failing.delete('set');
    await until(async () => (await inner.get(a.key))?.value.includes('"refused"') === true);
    await expect(whileMoving(clock, b.getToken())).rejects.toMatchObject({ code: 'ERR_OAUTH', error: 'invalid_grant' });
    expect(source.calls).toHaveLength(2);
  });

  it('the lock lease outlives a token request: a shorter lock.ttl is ERR_CONFIG', () => {
    const clock = new ManualClock(T0);
    const store = new FaultyStore(new MemoryStore({ clock }));
    const source = Object.assign(new ScriptedSource(clock), { client: { timeoutMs: 60_000 } });
    expect(() => manager({ source, store, lock: { ttl: '30s' } })).toThrow(/lock.ttl/);
    expect(() => manager({ source, store, lock: { ttl: '2m' } })).not.toThrow();
    expect(() => manager({ source, store })).not.toThrow(); // the default lease is long enough
  });
});
