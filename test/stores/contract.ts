/**
 * The TokenStore contract, run against every backend: one function, one call per backend test file.
 * Every test uses keys of its own (random), so runs in parallel never collide.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import type { EventEmitter } from 'node:events';
import { afterAll, describe, expect, it } from 'vitest';
import { Codec, type EncryptionOption } from '../../src/stores/codec.js';
import { GENERATION_WATCH_MS } from '../../src/stores/shared.js';
import type { StoreEvents, StoreLock, TokenStore } from '../../src/stores/store.js';

export type ContractStore = TokenStore & EventEmitter<StoreEvents>;

export interface StoreFactory {
  /**
   * A store over this run's data. Stores opened by one factory share their entries and locks (as other
   * processes would), unless `shared` is false.
   */
  open(options?: { encryptionKey?: EncryptionOption }): Promise<ContractStore>;
  /** Whether two opened stores see the same entries and locks. Default true. */
  shared?: boolean;
  /** The raw stored value of `key` as the backend holds it (to check encryption at rest). */
  raw?(key: string): Promise<string | undefined>;
  /** Ways to put something under `key` that the store did not write (bad JSON, wrong shape, …). */
  corrupt?: Record<string, (key: string) => Promise<void>>;
  /**
   * Empties the store's whole namespace behind its back, as an operator's `FLUSHALL`, `TRUNCATE` or `rm -r`
   * does (the server keeps running).
   */
  wipe?(): Promise<void>;
  /** Removes what the run created. */
  cleanup?(): Promise<void>;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const newKey = () => `tw1:test:${randomUUID()}`;
const K1 = { id: 'k1', key: randomBytes(32) };
const K2 = { id: 'k2', key: randomBytes(32) };

/**
 * A lock (of a 30 s lease) released while its store failed is taken by another process that waits at most 10 s
 * once the store answers again: the release was tried again and landed, long before the lease would end.
 */
export async function expectReleasedSoon(
  take: (wait: { ttlMs: number; waitMs: number }) => Promise<StoreLock | undefined>,
  why = 'still held: the failed release was not tried again',
): Promise<void> {
  const next = await take({ ttlMs: 30_000, waitMs: 10_000 });
  expect(next, why).toBeDefined();
  await next!.release();
}

export function storeContract(name: string, factory: StoreFactory | undefined): void {
  const shared = factory?.shared ?? true;
  describe.skipIf(factory === undefined)(`${name}: TokenStore contract`, () => {
    const f = factory as StoreFactory;
    const opened: ContractStore[] = [];
    const open = async (options?: { encryptionKey?: EncryptionOption }) => {
      const store = await f.open(options);
      opened.push(store);
      return store;
    };
    afterAll(async () => {
      await Promise.all(opened.map((s) => s.close().catch(() => undefined)));
      await f.cleanup?.();
    });

    it('get / set / delete, with a version that grows on every write', async () => {
      const s = await open();
      const key = newKey();
      expect(await s.get(key)).toBeUndefined();
      const v1 = await s.set(key, 'one');
      expect(typeof v1).toBe('number');
      expect(v1).toBeGreaterThan(0);
      expect(await s.get(key)).toEqual({ value: 'one', version: v1 });
      const v2 = await s.set(key, 'two');
      expect(v2).toBeGreaterThan(v1 as number);
      expect(await s.get(key)).toEqual({ value: 'two', version: v2 });
      await s.delete(key);
      expect(await s.get(key)).toBeUndefined();
      await s.delete(key); // deleting a missing entry is fine
      const v3 = await s.set(key, 'three');
      expect(v3).not.toBe(v2); // a re-created entry does not repeat a version
      expect((await s.get(key))?.value).toBe('three');
    });

    it('a version is never repeated by an entry deleted and written again, however fast (a stale compare-and-set cannot land)', async () => {
      const s = await open();
      const key = newKey();
      const seen: number[] = [];
      for (let i = 0; i < 25; i++) {
        const a = (await s.set(key, `a${i}`)) as number;
        const b = (await s.set(key, `b${i}`)) as number;
        await s.delete(key);
        const c = (await s.set(key, `c${i}`)) as number;
        for (const v of [a, b, c]) expect(seen).not.toContain(v);
        seen.push(a, b, c);
        // What a process that read `b` before the delete would try: refused on the new entry.
        expect(await s.set(key, 'stale', { ifVersion: b })).toBeNull();
        await s.delete(key);
      }
    });

    it('keeps keys apart however long and alike (a prefix, the last character, case, unicode, 1 024 characters)', async () => {
      const s = await open();
      const base = `${newKey()}:${'x'.repeat(900)}`;
      const keys = [
        base,
        `${base}y`,
        `${base}Y`,
        `${base}ä`,
        `${base}𝄞`,
        `${base.slice(0, -1)}z`,
        `${base}${'q'.repeat(1024 - base.length - 1)}a`,
        `${base}${'q'.repeat(1024 - base.length - 1)}b`,
        base.slice(0, 40),
        base.slice(0, 41),
        base.slice(0, 16),
      ];
      expect(new Set(keys).size).toBe(keys.length);
      for (const [i, key] of keys.entries()) await s.set(key, `value ${i}`);
      for (const [i, key] of keys.entries()) expect((await s.get(key))?.value).toBe(`value ${i}`);
      await s.delete(keys[1]!);
      expect(await s.get(keys[1]!)).toBeUndefined();
      expect((await s.get(keys[0]!))?.value).toBe('value 0');
      expect((await s.get(keys[2]!))?.value).toBe('value 2');
      for (const key of keys) await s.delete(key);
    });

    it('keeps values verbatim (unicode, JSON, large)', async () => {
      const s = await open();
      const key = newKey();
      const value = JSON.stringify({ accessToken: 'ä€𝄞\n"\\', pad: 'x'.repeat(20_000) });
      await s.set(key, value);
      expect((await s.get(key))?.value).toBe(value);
    });

    it('compare-and-set: ifVersion 0 means absent; a stale version writes nothing', async () => {
      const s = await open();
      const key = newKey();
      expect(await s.set(key, 'x', { ifVersion: 5 })).toBeNull();
      expect(await s.get(key)).toBeUndefined();
      const v1 = (await s.set(key, 'a', { ifVersion: 0 })) as number;
      expect(v1).toBeGreaterThan(0);
      expect(await s.set(key, 'b', { ifVersion: 0 })).toBeNull();
      const v2 = (await s.set(key, 'b', { ifVersion: v1 })) as number;
      expect(v2).toBeGreaterThan(v1);
      expect(await s.set(key, 'c', { ifVersion: v1 })).toBeNull();
      expect(await s.get(key)).toEqual({ value: 'b', version: v2 });
    });

    it('expires entries after ttlMs (and an expired entry counts as absent for ifVersion 0)', async () => {
      const s = await open();
      const short = newKey();
      const long = newKey();
      await s.set(short, 'soon gone', { ttlMs: 150 });
      await s.set(long, 'stays', { ttlMs: 60_000 });
      const persistent = newKey();
      await s.set(persistent, 'first', { ttlMs: 150 });
      await s.set(persistent, 'kept'); // a write without ttlMs keeps the entry until deleted
      await sleep(600);
      expect(await s.get(short)).toBeUndefined();
      expect((await s.get(long))?.value).toBe('stays');
      expect((await s.get(persistent))?.value).toBe('kept');
      expect(await s.set(short, 'again', { ifVersion: 0 })).toBeGreaterThan(0);
    });

    it('lock is exclusive, and a waiter gives up after waitMs', async () => {
      const a = await open();
      const b = shared ? await open() : a;
      const key = newKey();
      const held = await a.lock(key, { ttlMs: 30_000, waitMs: 0 });
      expect(held).toBeDefined();
      expect(await b.lock(key, { ttlMs: 30_000, waitMs: 200 })).toBeUndefined();
      expect(await a.lock(key, { ttlMs: 30_000, waitMs: 0 })).toBeUndefined();
      // Other keys are independent.
      const other = await b.lock(newKey(), { ttlMs: 30_000, waitMs: 0 });
      expect(other).toBeDefined();
      await other?.release();
      await held?.release();
      const next = await b.lock(key, { ttlMs: 30_000, waitMs: 1000 });
      expect(next).toBeDefined();
      await next?.release();
      await next?.release(); // releasing twice is harmless
    });

    it('wakes a waiter when the holder releases (long before the lease would end)', async () => {
      const a = await open();
      const b = shared ? await open() : a;
      const key = newKey();
      const held = await a.lock(key, { ttlMs: 60_000, waitMs: 0 });
      expect(held).toBeDefined();
      const waiting = b.lock(key, { ttlMs: 60_000, waitMs: 20_000 });
      await sleep(150);
      await held?.release();
      const got = await waiting;
      expect(got).toBeDefined();
      await got?.release();
    });

    it('takenOver: false for a free or released lock, true for one taken from a holder that never released it', async () => {
      const a = await open();
      const b = shared ? await open() : a;
      const key = newKey();
      const first = await a.lock(key, { ttlMs: 10_000, waitMs: 0 });
      expect(first?.takenOver).toBe(false);
      await first?.release();
      const released = await b.lock(key, { ttlMs: 300, waitMs: 0 });
      expect(released?.takenOver).toBe(false);
      // Never released (a crash, or an outage longer than the lease): the next holder is told.
      await sleep(450);
      const over = await a.lock(key, { ttlMs: 10_000, waitMs: 0 });
      expect(over?.takenOver).toBe(true);
      await released?.release(); // too late: not its lock any more, and it changes nothing
      await over?.release();
      const again = await b.lock(key, { ttlMs: 10_000, waitMs: 0 });
      expect(again?.takenOver).toBe(false);
      await again?.release();
    });

    it('a lock whose holder never releases (crashed) expires after ttlMs', async () => {
      const a = await open();
      const b = shared ? await open() : a;
      const key = newKey();
      const crashed = await a.lock(key, { ttlMs: 300, waitMs: 0 });
      expect(crashed).toBeDefined();
      const next = await b.lock(key, { ttlMs: 30_000, waitMs: 15_000 });
      expect(next).toBeDefined();
      // The old holder's release is compare-and-delete: it must not free the new holder's lock.
      await crashed?.release();
      expect(await a.lock(key, { ttlMs: 30_000, waitMs: 100 })).toBeUndefined();
      await next?.release();
    });

    it('renew(): true while held (the lease starts again), false once released or taken by another', async () => {
      const a = await open();
      const b = shared ? await open() : a;
      const key = newKey();
      const held = (await a.lock(key, { ttlMs: 3000, waitMs: 0 })) as StoreLock;
      expect(held.renew).toBeTypeOf('function');
      await sleep(1500); // (a FileStore does not renew a lease with under a second left)
      expect(await held.renew?.()).toBe(true);
      await sleep(2000); // 3.5 s after taking it: past the first lease, within the renewed one
      expect(await b.lock(key, { ttlMs: 3000, waitMs: 0 })).toBeUndefined();
      await held.release();
      expect(await held.renew?.()).toBe(false);
      // A lease that ran out and another holder took: not ours to renew (nor to release).
      const lapsed = (await a.lock(key, { ttlMs: 300, waitMs: 0 })) as StoreLock;
      const next = await b.lock(key, { ttlMs: 30_000, waitMs: 15_000 });
      expect(next).toBeDefined();
      expect(await lapsed.renew?.()).toBe(false);
      expect(await a.lock(key, { ttlMs: 30_000, waitMs: 0 })).toBeUndefined();
      await next?.release();
    });

    it('stops waiting for a lock when the signal aborts', async () => {
      const s = await open();
      const key = newKey();
      const held = await s.lock(key, { ttlMs: 30_000, waitMs: 0 });
      const controller = new AbortController();
      const waiting = s.lock(key, { ttlMs: 30_000, waitMs: 20_000, signal: controller.signal });
      setTimeout(() => controller.abort(new Error('stop')), 100);
      await expect(waiting).rejects.toThrow('stop');
      await held?.release();
    });

    it('concurrent compare-and-set writers never lose an increment', async () => {
      const stores = shared ? [await open(), await open()] : [await open()];
      const key = newKey();
      const writers = 8;
      const each = 8;
      await Promise.all(
        Array.from({ length: writers }, async (_, w) => {
          const s = stores[w % stores.length] as ContractStore;
          for (let done = 0; done < each;) {
            const current = await s.get(key);
            const next = String(Number(current?.value ?? '0') + 1);
            if ((await s.set(key, next, { ifVersion: current?.version ?? 0 })) !== null) done++;
          }
        }),
      );
      expect((await stores[0]!.get(key))?.value).toBe(String(writers * each));
    });

    it('an entry it cannot read is a miss with a corrupt event, and can be overwritten', async () => {
      const s = await open();
      const key = newKey();
      const events: StoreEvents['corrupt'][0][] = [];
      s.on('corrupt', (e) => events.push(e));
      await s.set(key, 'tw-enc1.not-a-sealed-value'); // looks encrypted, opens with no key
      expect(await s.get(key)).toBeUndefined();
      expect(events).toHaveLength(1);
      expect(events[0]).toMatchObject({ key, code: 'ERR_DECRYPT' });
      const bad = await s.set(key, 'fine');
      expect(bad).toBeGreaterThan(0);
      expect((await s.get(key))?.value).toBe('fine');
    });

    for (const [what, write] of Object.entries(factory?.corrupt ?? {})) {
      it(`an entry that is ${what} is a miss with a corrupt event, and a write replaces it`, async () => {
        const s = await open();
        const key = newKey();
        const events: StoreEvents['corrupt'][0][] = [];
        s.on('corrupt', (e) => events.push(e));
        await write(key);
        expect(await s.get(key)).toBeUndefined();
        expect(events.length).toBeGreaterThan(0);
        expect(events[0]?.key).toBe(key);
        expect(await s.set(key, 'fresh')).toBeGreaterThan(0);
        expect((await s.get(key))?.value).toBe('fresh');
      });
    }

    it('encrypts at rest (AES-256-GCM) and round-trips', async () => {
      const s = await open({ encryptionKey: K1 });
      const key = newKey();
      const value = '{"accessToken":"secret-access-token-value"}';
      await s.set(key, value);
      expect((await s.get(key))?.value).toBe(value);
      if (f.raw) {
        const raw = await f.raw(key);
        expect(raw).toBeDefined();
        expect(raw).not.toContain('secret-access-token-value');
        expect(raw?.startsWith('tw-enc1.k1.')).toBe(true);
      }
    });

    it.skipIf(!shared)('rotates keys: old entries stay readable, new writes use the new key id', async () => {
      const old = await open({ encryptionKey: K1 });
      const rotated = await open({ encryptionKey: [K2, K1] });
      const key = newKey();
      await old.set(key, 'written with k1');
      expect((await rotated.get(key))?.value).toBe('written with k1');
      await rotated.set(key, 'written with k2');
      expect((await rotated.get(key))?.value).toBe('written with k2');
      if (f.raw) expect((await f.raw(key))?.startsWith('tw-enc1.k2.')).toBe(true);
      // A process still on the old key alone cannot read it: a miss with an event, not a crash.
      const events: StoreEvents['corrupt'][0][] = [];
      old.on('corrupt', (e) => events.push(e));
      expect(await old.get(key)).toBeUndefined();
      expect(events).toEqual([expect.objectContaining({ key, code: 'ERR_DECRYPT' })]);
    });

    it.skipIf(!shared)('a wrong key is a miss with a corrupt event', async () => {
      const writer = await open({ encryptionKey: K1 });
      const wrong = await open({ encryptionKey: { id: 'k1', key: randomBytes(32) } });
      const key = newKey();
      await writer.set(key, 'value');
      const events: StoreEvents['corrupt'][0][] = [];
      wrong.on('corrupt', (e) => events.push(e));
      expect(await wrong.get(key)).toBeUndefined();
      expect(events).toEqual([expect.objectContaining({ key, code: 'ERR_DECRYPT' })]);
      expect(events[0]?.message).not.toContain('value');
    });

    it.skipIf(!shared)(
      'with encryptionKey, a plaintext entry is refused (ERR_DECRYPT) unless acceptPlaintext',
      async () => {
        // Anyone who can write to the store could otherwise plant a token of their choosing.
        const plain = await open();
        const strict = await open({ encryptionKey: K1 });
        const migrating = await open({ encryptionKey: { keys: K1, acceptPlaintext: true } });
        const key = newKey();
        await plain.set(key, '{"accessToken":"planted"}');
        const events: StoreEvents['corrupt'][0][] = [];
        strict.on('corrupt', (e) => events.push(e));
        expect(await strict.get(key)).toBeUndefined();
        expect(events).toEqual([expect.objectContaining({ key, code: 'ERR_DECRYPT' })]);
        expect(events[0]?.message).toContain('acceptPlaintext');
        expect((await migrating.get(key))?.value).toBe('{"accessToken":"planted"}');
        // A write during the migration is encrypted: the strict reader takes it.
        await migrating.set(key, 'sealed now');
        expect((await strict.get(key))?.value).toBe('sealed now');
      },
    );

    it.skipIf(!shared)('an encrypted entry whose GCM tag is cut short (4 to 15 bytes) is refused', async () => {
      const plain = await open();
      const reader = await open({ encryptionKey: K1 });
      const key = newKey();
      const sealed = new Codec(K1).encode(key, 'forged');
      const [prefix, id, iv, body, tag] = sealed.split('.') as [string, string, string, string, string];
      const events: StoreEvents['corrupt'][0][] = [];
      reader.on('corrupt', (e) => events.push(e));
      for (const bytes of [4, 8, 12, 15]) {
        const short = Buffer.from(tag, 'base64url').subarray(0, bytes).toString('base64url');
        await plain.set(key, [prefix, id, iv, body, short].join('.'));
        expect(await reader.get(key), `${bytes}-byte tag`).toBeUndefined();
      }
      expect(events.map((e) => e.code)).toEqual(['ERR_DECRYPT', 'ERR_DECRYPT', 'ERR_DECRYPT', 'ERR_DECRYPT']);
      await plain.set(key, sealed);
      expect((await reader.get(key))?.value).toBe('forged'); // the full tag still opens it
    });

    it('refuses keys that are not well-formed UTF-16 (lone surrogates collide once UTF-8) with ERR_CONFIG', async () => {
      const s = await open();
      for (const key of ['\ud800', '\udc00', `tw1:user:${'\ud83d'}`, 'a\udfffb', 'nul\u0000']) {
        await expect(s.get(key)).rejects.toMatchObject({ code: 'ERR_CONFIG' });
        await expect(s.set(key, 'v')).rejects.toMatchObject({ code: 'ERR_CONFIG' });
        await expect(s.delete(key)).rejects.toMatchObject({ code: 'ERR_CONFIG' });
        await expect(s.lock(key, { ttlMs: 1000, waitMs: 0 })).rejects.toMatchObject({ code: 'ERR_CONFIG' });
      }
      // A well-formed pair is one character, and fine.
      const emoji = `${newKey()}:\ud83d\ude00`;
      await s.set(emoji, 'v');
      expect((await s.get(emoji))?.value).toBe('v');
    });

    it.skipIf(!shared || factory?.wipe === undefined)(
      'emptied behind its back: the next get reports reset before it resolves, once; a deleted entry is no reset',
      async () => {
        const s = await open();
        const key = newKey();
        const seen: string[] = [];
        s.on('reset', () => seen.push('reset'));
        await s.set(key, 'v1');
        expect((await s.get(key))?.value).toBe('v1');
        await s.delete(key);
        expect(await s.get(key)).toBeUndefined();
        await s.set(key, 'v2');
        expect(seen).toEqual([]); // a deletion (a sign-out) is not a lost store

        await f.wipe!();
        const read = s.get(key).then((record) => {
          seen.push('get resolved');
          return record;
        });
        expect(await read).toBeUndefined();
        expect(seen).toEqual(['reset', 'get resolved']);
        await s.set(key, 'v3');
        expect((await s.get(key))?.value).toBe('v3');
        expect(seen).toEqual(['reset', 'get resolved']); // the new generation is known now
      },
    );

    it.skipIf(!shared || factory?.wipe === undefined)(
      `emptied behind its back: a store that only listens hears of it within ${GENERATION_WATCH_MS} ms; a store new to the namespace learns it`,
      async () => {
        const listener = await open();
        let resets = 0;
        listener.on('reset', () => resets++);
        await listener.get(newKey()); // learns the generation
        await sleep(GENERATION_WATCH_MS * 1.5);
        expect(resets).toBe(0); // looking at an unchanged store is no reset

        await f.wipe!();
        const newcomer = await open();
        let newcomerResets = 0;
        newcomer.on('reset', () => newcomerResets++);
        expect(await newcomer.get(newKey())).toBeUndefined();
        // Heard by the watch: this store reads nothing meanwhile.
        await expect.poll(() => resets, { timeout: GENERATION_WATCH_MS * 3, interval: 50 }).toBe(1);
        await sleep(GENERATION_WATCH_MS * 1.5);
        expect(resets).toBe(1);
        expect(newcomerResets).toBe(0); // it cannot know what was there before it came
      },
    );

    it('close() makes later calls fail with ERR_CLOSED and may be called twice', async () => {
      const s = await f.open();
      const key = newKey();
      await s.set(key, 'x');
      await s.close();
      await s.close();
      await expect(s.get(key)).rejects.toMatchObject({ code: 'ERR_CLOSED' });
      await expect(s.set(key, 'y')).rejects.toMatchObject({ code: 'ERR_CLOSED' });
      await expect(s.lock(key, { ttlMs: 1000, waitMs: 0 })).rejects.toMatchObject({ code: 'ERR_CLOSED' });
      if (shared) {
        const again = await open();
        expect((await again.get(key))?.value).toBe('x'); // the data outlives the store object
      }
    });
  });
}
