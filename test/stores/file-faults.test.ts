/**
 * FileStore under the disk faults an operator meets, produced for real: a small tmpfs filled to the last page
 * (ENOSPC), remounted read-only (EROFS), and the directory removed or replaced while the store is in use.
 * The tmpfs tests need root on Linux (`mount`); each mounts its own and unmounts it in `finally`.
 */
import { spawnSync } from 'node:child_process';
import { createHash, randomUUID } from 'node:crypto';
import { closeSync, mkdtempSync, openSync, rmSync, statSync, truncateSync, writeSync } from 'node:fs';
import { type FileHandle, chmod, chown, mkdir, open, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TokenwardenError } from '../../src/errors.js';
import type { FetchLike } from '../../src/http/transport.js';
import { TokenManager } from '../../src/manager.js';
import { afterNextTokenResponse, appRefreshToken } from '../support/app-client.js';
import { FileStore } from '../../src/stores/file.js';
import { type TestAuthorizationServer, startAuthorizationServer } from '../support/authorization-server.js';
import { skipWithout, sleep } from '../support/private-servers.js';
import { expectReleasedSoon } from './contract.js';

const KEY = 'tw1:refresh_token:disk-faults';
const HASH = createHash('sha256').update(KEY).digest('hex');
const SECRET = `secret-${randomUUID()}`;
const PAGE = 4096;
const isRoot = process.geteuid?.() === 0;
const base = mkdtempSync(join(tmpdir(), 'tw-file-faults-'));

afterAll(() => rm(base, { recursive: true, force: true }));

/** The files of `dir` but the store's generation marker (written by the first read, kept for good). */
const filesOf = async (dir: string): Promise<string[]> => (await readdir(dir)).filter((n) => n !== 'generation');

/** Whether this process may mount a tmpfs (root on Linux, and not forbidden by a container). */
function canMount(): boolean {
  if (process.platform !== 'linux' || !isRoot) return false;
  const dir = mkdtempSync(join(base, 'probe-'));
  if (spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', dir]).status !== 0) return false;
  return spawnSync('umount', [dir]).status === 0;
}
const mountable = canMount();

/** Runs `fn` on a fresh 256 KiB tmpfs, unmounted afterwards whatever happens. */
async function onSmallDisk(fn: (mnt: string) => Promise<void>): Promise<void> {
  const mnt = mkdtempSync(join(base, 'mnt-'));
  const mounted = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=256k,mode=0700', 'tmpfs', mnt]);
  if (mounted.status !== 0) throw new Error(`mount failed: ${String(mounted.stderr)}`);
  try {
    await fn(mnt);
  } finally {
    spawnSync('mount', ['-o', 'remount,rw', mnt]);
    if (spawnSync('umount', [mnt]).status !== 0) spawnSync('umount', ['-l', mnt]); // busy: detach it all the same
    rmSync(mnt, { recursive: true, force: true });
  }
}

/** Fills the file system of `mnt` up to its last page but `sparePages`; returns the filler's path. */
function fill(mnt: string, sparePages = 0): string {
  const filler = join(mnt, 'filler');
  const fd = openSync(filler, 'a');
  const chunk = Buffer.alloc(64 * 1024);
  try {
    for (;;) writeSync(fd, chunk);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOSPC') throw err;
  } finally {
    closeSync(fd);
  }
  const size = statSync(filler).size;
  truncateSync(filler, Math.max(0, Math.floor(size / PAGE) * PAGE - sparePages * PAGE));
  return filler;
}

/** The message an operator reads: says what is wrong, and names no file, key, or value. */
function expectPlainStoreError(err: unknown, words: RegExp, path: string): void {
  expect(err).toBeInstanceOf(TokenwardenError);
  expect(err).toMatchObject({ code: 'ERR_STORE', message: expect.stringMatching(words) });
  const { message } = err as TokenwardenError;
  for (const secret of [path, HASH, SECRET, KEY]) expect(message).not.toContain(secret);
}

describe.skipIf(skipWithout('mount (root on Linux) for a small tmpfs', mountable))('FileStore on a full disk', () => {
  it('a write fails with ERR_STORE "the disk is full", the entry before it stays, nothing is left behind', async () => {
    await onSmallDisk(async (mnt) => {
      const dir = join(mnt, 'tokens');
      const store = new FileStore({ path: dir });
      try {
        await store.set(KEY, 'before');
        // Full to the last page: the per-key write lock cannot be written.
        let filler = fill(mnt);
        expectPlainStoreError(await store.set(KEY, SECRET).catch((e: unknown) => e), /the disk is full/, dir);
        expect((await store.get(KEY))?.value).toBe('before');
        expect(await filesOf(dir)).toEqual([`${HASH}.json`]);
        // One page left: the write lock takes it, then the entry's temp file finds none.
        rmSync(filler);
        filler = fill(mnt, 1);
        expectPlainStoreError(await store.set(KEY, SECRET).catch((e: unknown) => e), /the disk is full/, dir);
        expect((await store.get(KEY))?.value).toBe('before');
        expect(await filesOf(dir)).toEqual([`${HASH}.json`]);
        // Space is back: the next write lands.
        rmSync(filler);
        await store.set(KEY, 'after');
        expect((await store.get(KEY))?.value).toBe('after');
      } finally {
        await store.close();
      }
    });
  });

  it('the refresh lock is refused with ERR_STORE "the disk is full", no lock nor temp file left; taken once space is back', async () => {
    await onSmallDisk(async (mnt) => {
      const dir = join(mnt, 'tokens');
      const store = new FileStore({ path: dir });
      try {
        await store.set(KEY, 'v');
        const filler = fill(mnt);
        // Refused at once: a store that waited instead would be aborted here, an ERR_ABORTED, not "disk full".
        const refused = await store
          .lock(KEY, { ttlMs: 30_000, waitMs: 600_000, signal: AbortSignal.timeout(8_000) })
          .catch((e: unknown) => e);
        expectPlainStoreError(refused, /the disk is full/, dir);
        expect(await filesOf(dir)).toEqual([`${HASH}.json`]);
        rmSync(filler);
        const lock = await store.lock(KEY, { ttlMs: 30_000, waitMs: 0 });
        expect(lock).toBeDefined();
        await lock?.release();
      } finally {
        await store.close();
      }
    });
  });

  describe('through TokenManagers spending a rotating refresh token on a real authorization server', () => {
    let as: TestAuthorizationServer;
    beforeAll(async () => {
      as = await startAuthorizationServer({ accessTokenTtl: 30 });
    });
    afterAll(() => as.close());

    it('a refresh whose write meets a full disk keeps the new refresh token (pending, lock kept), no other manager spends the old one, and it is written once space is back', async () => {
      await onSmallDisk(async (mnt) => {
        const dir = join(mnt, 'tokens');
        const login = await as.login('file-full-disk');
        // The disk fills while the token request is under way: after the lock, before the write.
        let filler: string | undefined;
        const filling = afterNextTokenResponse(() => (filler = fill(mnt)));
        const manager = (store: FileStore, fetchFn?: FetchLike): TokenManager =>
          new TokenManager({
            source: appRefreshToken(as, login['refresh_token'] as string, { ...(fetchFn && { fetch: fetchFn }) }),
            store,
            name: 'disk-faults',
          });
        const storeA = new FileStore({ path: dir });
        const storeB = new FileStore({ path: dir });
        const a = manager(storeA, filling.fetch);
        const b = manager(storeB);
        const refreshes = (): number => as.counts.byGrant['refresh_token'] ?? 0;
        try {
          await a.getToken(); // spends the login's refresh token; the rotated one is stored
          const storeErrors: { operation: string; error: TokenwardenError }[] = [];
          a.on('storeError', (e) => storeErrors.push(e));

          filling.arm();
          const refreshed = await a.refresh();
          expect(filler).toBeDefined();
          expect(storeErrors).toContainEqual(
            expect.objectContaining({
              operation: 'set',
              error: expect.objectContaining({ code: 'ERR_STORE', message: expect.stringMatching(/the disk is full/) }),
            }),
          );
          // Pending: A serves the new token; the store still holds the previous one; A keeps its lock.
          expect((await a.getToken()).accessToken).toBe(refreshed.accessToken);
          expect((await readdir(dir)).filter((n) => n.endsWith('.lock'))).toHaveLength(1);

          // B, another process's manager, cannot spend the refresh token the store holds (A already did).
          const spent = refreshes();
          // Its lock cannot be written: it answers the token the store holds (or ERR_STORE), spending nothing.
          const answer = await b.refresh().catch((e: unknown) => e);
          if (answer instanceof Error) expect(answer).toMatchObject({ code: expect.stringMatching(/^ERR_STORE/) });
          expect(refreshes()).toBe(spent);

          // Space is back. B asks at once: it waits for A's lock, which A releases only once its pending write
          // has landed; B then re-reads and takes A's token instead of spending the refresh token A spent.
          rmSync(filler as string);
          // Long before A's 30 s lease would end by itself: A released it once its write landed.
          const fromB = await Promise.race([b.refresh(), sleep(15_000).then(() => 'still waiting for the lease')]);
          expect(fromB).toMatchObject({ accessToken: refreshed.accessToken });
          expect(refreshes()).toBe(spent);
          await expect // B releases its lock without waiting: give it a moment
            .poll(async () => (await readdir(dir)).filter((n) => /\.(lock|wlock|tmp|gone)$/.test(n)), {
              timeout: 1_000,
            })
            .toEqual([]);

          // The refresh token A kept is the one stored, and the grant lives: B spends it once, accepted.
          await b.refresh();
          expect(refreshes()).toBe(spent + 1);
          expect(as.counts.errors['invalid_grant'] ?? 0).toBe(0);
        } finally {
          await a.close();
          await b.close();
          await storeA.close();
          await storeB.close();
        }
      });
    });
  });
});

describe.skipIf(skipWithout('mount (root on Linux) for a small tmpfs', mountable))(
  'FileStore on a read-only file system',
  () => {
    it('reads keep working; writes and locks fail at once with ERR_STORE "read-only"; all recover after remount rw', async () => {
      await onSmallDisk(async (mnt) => {
        const dir = join(mnt, 'tokens');
        const store = new FileStore({ path: dir });
        const fresh = new FileStore({ path: dir }); // first used while read-only
        try {
          await store.set(KEY, 'before');
          expect(spawnSync('mount', ['-o', 'remount,ro', mnt]).status).toBe(0);
          expect((await store.get(KEY))?.value).toBe('before');
          expect((await fresh.get(KEY))?.value).toBe('before');
          expectPlainStoreError(await store.set(KEY, SECRET).catch((e: unknown) => e), /read-only/, dir);
          // Refused at once: a lock that waited instead would be aborted here, an ERR_ABORTED, not "read-only".
          expectPlainStoreError(
            await store
              .lock(KEY, { ttlMs: 30_000, waitMs: 600_000, signal: AbortSignal.timeout(8_000) })
              .catch((e: unknown) => e),
            /read-only/,
            dir,
          );
          expectPlainStoreError(await fresh.delete(KEY).catch((e: unknown) => e), /read-only/, dir);

          expect(spawnSync('mount', ['-o', 'remount,rw', mnt]).status).toBe(0);
          await store.set(KEY, 'after');
          expect((await fresh.get(KEY))?.value).toBe('after');
          const lock = await fresh.lock(KEY, { ttlMs: 30_000, waitMs: 0 });
          expect(lock).toBeDefined();
          await lock?.release();
          expect(await filesOf(dir)).toEqual([`${HASH}.json`]);
        } finally {
          await store.close();
          await fresh.close();
        }
      });
    });

    it('a directory of ours left loose (0755) when the file system went read-only: a process started then reads, and tightens it once writable', async () => {
      await onSmallDisk(async (mnt) => {
        const dir = join(mnt, 'tokens');
        const writer = new FileStore({ path: dir });
        await writer.set(KEY, 'before');
        await writer.close();
        await chmod(dir, 0o755); // an operator's `chmod -R a+rX`, or a directory made by hand and never used
        const fresh = new FileStore({ path: dir });
        try {
          expect(spawnSync('mount', ['-o', 'remount,ro', mnt]).status).toBe(0);
          // Before: ERR_STORE "file store directory failed (EROFS)" for every read — it could not chmod first.
          expect((await fresh.get(KEY))?.value).toBe('before');
          expect((await stat(dir)).mode & 0o777).toBe(0o755);
          expectPlainStoreError(await fresh.set(KEY, SECRET).catch((e: unknown) => e), /read-only/, dir);
          expect(spawnSync('mount', ['-o', 'remount,rw', mnt]).status).toBe(0);
          expect((await fresh.get(KEY))?.value).toBe('before');
          expect((await stat(dir)).mode & 0o777).toBe(0o700);
          await fresh.set(KEY, 'after');
          expect((await fresh.get(KEY))?.value).toBe('after');
        } finally {
          await fresh.close();
        }
      });
    });

    it('a lock released while read-only is released once writable again, long before its 30 s lease ends: another process takes it', async () => {
      await onSmallDisk(async (mnt) => {
        const dir = join(mnt, 'tokens');
        const holder = new FileStore({ path: dir });
        const other = new FileStore({ path: dir });
        try {
          const lock = await holder.lock(KEY, { ttlMs: 30_000, waitMs: 0 });
          expect(lock).toBeDefined();
          expect(spawnSync('mount', ['-o', 'remount,ro', mnt]).status).toBe(0);
          await lock!.release(); // fails (EROFS), and is not thrown: the caller has nothing to do about it
          expect(await filesOf(dir)).toEqual([`${HASH}.lock`]); // still there
          await sleep(500);
          expect(spawnSync('mount', ['-o', 'remount,rw', mnt]).status).toBe(0);
          await expectReleasedSoon((options) => other.lock(KEY, options));
          expect(await filesOf(dir)).toEqual([]);
        } finally {
          await holder.close();
          await other.close();
        }
      });
    });
  },
);

describe.skipIf(skipWithout('mkfifo', spawnSync('mkfifo', ['--version']).status === 0))(
  'FileStore when its file operations stall (a hung network file system holding the thread pool)',
  () => {
    it('a lock whose file operations run only after the store gave up on them is removed then, not held for its lease', async () => {
      const dir = join(base, `stall-${randomUUID()}`);
      const a = new FileStore({ path: dir, timeout: 300 });
      const b = new FileStore({ path: dir });
      const fifos = Array.from({ length: Number(process.env['UV_THREADPOOL_SIZE'] ?? 4) }, (_, i) =>
        join(base, `fifo-${randomUUID()}-${i}`),
      );
      for (const fifo of fifos) expect(spawnSync('mkfifo', [fifo]).status).toBe(0);
      let stalled: Promise<FileHandle>[] = [];
      const unstall = async () => {
        // Opened for writing on this thread: each reader's open, blocked in a pool thread, returns.
        for (const fifo of fifos) closeSync(openSync(fifo, 'w'));
        for (const handle of await Promise.all(stalled)) await handle.close();
        stalled = [];
      };
      try {
        await a.get(KEY); // the directory, and its generation marker
        // Every thread of libuv's pool blocked in an open() that waits for a writer: file operations queue.
        stalled = fifos.map((fifo) => open(fifo, 'r'));
        await expect(a.lock(KEY, { ttlMs: 30_000, waitMs: 0 })).rejects.toMatchObject({
          code: 'ERR_STORE_TIMEOUT',
        });
        await unstall(); // and now the lock's queued operations run: the store has given up on them
        await expectReleasedSoon((options) => b.lock(KEY, options), 'held by the late lock for its whole lease');
        // Nothing left behind — within a few seconds, not the late lock's 30 s lease: on a loaded machine the pool
        // may still be running the operations the stall queued, and a release they delay is tried again.
        for (let i = 0; i < 30 && (await filesOf(dir)).length > 0; i++) await new Promise((r) => setTimeout(r, 100));
        expect(await filesOf(dir)).toEqual([]);
      } finally {
        if (stalled.length > 0) await unstall();
        await a.close();
        await b.close();
      }
    });
  },
);

describe('FileStore when its directory is removed or replaced while in use', () => {
  it('removed (a cache cleaned up): reads miss, a held lock is reported lost, the next write makes it again (0700)', async () => {
    const dir = join(base, 'removed', 'tokens');
    const store = new FileStore({ path: dir });
    try {
      await store.set(KEY, 'v');
      const lock = await store.lock(KEY, { ttlMs: 30_000, waitMs: 0 });
      await rm(join(base, 'removed'), { recursive: true });
      expect(await store.get(KEY)).toBeUndefined();
      expect(await lock?.renew?.()).toBe(false);
      await store.set(KEY, 'again');
      expect((await store.get(KEY))?.value).toBe('again');
      expect((await stat(dir)).mode & 0o777).toBe(0o700);
      const again = await store.lock(KEY, { ttlMs: 30_000, waitMs: 0 });
      expect(again).toBeDefined();
      await again?.release();
      await lock?.release();
    } finally {
      await store.close();
    }
  });

  it('replaced by a file: ERR_STORE "not a directory", for reads as for writes', async () => {
    const dir = join(base, 'replaced-by-file');
    const store = new FileStore({ path: dir });
    try {
      await store.set(KEY, 'v');
      await rm(dir, { recursive: true });
      await writeFile(dir, 'not a directory');
      await expect(store.get(KEY)).rejects.toMatchObject({ code: 'ERR_STORE', message: /not a directory/ });
      await expect(store.set(KEY, 'v')).rejects.toMatchObject({ code: 'ERR_STORE', message: /not a directory/ });
    } finally {
      await store.close();
    }
  });

  it.skipIf(!isRoot)(
    "replaced by another user's directory: refused (ERR_STORE) as it would be at first use, never written to",
    async () => {
      const dir = join(base, 'replaced-by-foreign');
      const store = new FileStore({ path: dir });
      try {
        await store.set(KEY, 'v');
        await rm(dir, { recursive: true });
        await mkdir(dir, { mode: 0o700 });
        await chown(dir, 65_534, 65_534);
        await expect(store.set(KEY, 'v')).rejects.toMatchObject({ code: 'ERR_STORE', message: /another user/ });
        await expect(store.get(KEY)).rejects.toMatchObject({ code: 'ERR_STORE', message: /another user/ });
        expect(await readdir(dir)).toEqual([]);
      } finally {
        await store.close();
      }
    },
  );

  it('removed again and again while writes and locks run: every failure is an ERR_STORE, no crash, no unhandled rejection', async () => {
    const parent = join(base, 'churn');
    const dir = join(parent, 'tokens');
    const store = new FileStore({ path: dir });
    const unhandled: unknown[] = [];
    const onUnhandled = (reason: unknown): void => void unhandled.push(reason);
    process.on('unhandledRejection', onUnhandled);
    const failures: unknown[] = [];
    let running = true;
    try {
      const cleaner = (async () => {
        while (running) {
          await rm(parent, { recursive: true, force: true }).catch(() => undefined); // races our writes: ENOTEMPTY
          await sleep(3);
        }
      })();
      const until = Date.now() + 1_000;
      let done = 0;
      while (Date.now() < until) {
        const results = await Promise.allSettled([
          store.set(KEY, `v${done}`),
          store.lock(KEY, { ttlMs: 5_000, waitMs: 0 }).then((lock) => lock?.release()),
          store.get(KEY),
        ]);
        for (const r of results) if (r.status === 'rejected') failures.push(r.reason);
        done += 1;
      }
      running = false;
      await cleaner;
      for (const f of failures) expect(f).toMatchObject({ code: expect.stringMatching(/^ERR_STORE/) });
      await sleep(50);
      expect(unhandled).toEqual([]);
      await store.set(KEY, 'settled');
      expect((await store.get(KEY))?.value).toBe('settled');
      expect(done).toBeGreaterThan(10);
    } finally {
      running = false;
      process.off('unhandledRejection', onUnhandled);
      await store.close();
    }
  });
});
