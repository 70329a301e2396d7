/**
 * FileStore under the faults of the process and of the directory around it that an operator meets, beyond a
 * full or read-only disk (`file-faults.test.ts`): a process out of file descriptors (a child started under
 * `ulimit -n`), the directory's permissions changed under a running process, two pid namespaces sharing the
 * directory (two containers of a pod: a holder started under `unshare --pid`, root only), the directory removed
 * and made again under a fleet, and a directory or a symbolic link where one of the store's files goes.
 *
 * Children run the store from `src/` through tsx; as `nobody` when the suite runs as root (root ignores
 * permissions, and `chmod` would test nothing), as this user otherwise.
 */
import { execFile, spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { createHash, randomUUID } from 'node:crypto';
import { chmod, lstat, mkdir, readFile, readdir, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { createInterface } from 'node:readline';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FileStore } from '../../src/stores/file.js';
import { skipWithout } from '../support/private-servers.js';

const run = promisify(execFile);
const ROOT = new URL('../..', import.meta.url).pathname;
const NOBODY = 65_534;
const isRoot = process.geteuid?.() === 0;
const base = join(tmpdir(), `tw-file-process-${randomUUID()}`);
const hashOf = (key: string): string => createHash('sha256').update(key).digest('hex');
const KEY = 'tw1:refresh_token:process-faults';
const SECRET = `secret-${randomUUID()}`;

beforeAll(async () => {
  await mkdir(base, { recursive: true, mode: 0o755 });
  await chmod(base, 0o755); // a child running as nobody reaches its directory and script through it
});
afterAll(() => rm(base, { recursive: true, force: true }));

/** The message an operator reads: says what is wrong, and names no file, key or value. */
function expectPlain(failure: unknown, words: RegExp, dir: string): void {
  expect(failure).toMatchObject({ code: 'ERR_STORE', message: expect.stringMatching(words) });
  const { message } = failure as { message: string };
  for (const secret of [dir, hashOf(KEY), KEY, SECRET]) expect(message).not.toContain(secret);
}

/**
 * Runs `body` in a child process (statements using `FileStore`, `path`, `KEY`, `SECRET`, `out` and the helpers
 * below), with at most `nofile` open files; resolves to `out`. Helpers: `attempt(promise)` → `{ value }` or
 * `{ code, message }`; `exhaustFds()` opens /dev/null until EMFILE and returns the descriptors; `free(fds)`.
 */
async function inChild(path: string, body: string, nofile = 1024): Promise<Record<string, unknown>> {
  const script = join(base, `child-${randomUUID()}.mts`);
  await writeFile(
    script,
    `import { FileStore } from ${JSON.stringify(join(ROOT, 'src/stores/file.ts'))};
    import { chmodSync, closeSync, openSync, readdirSync } from 'node:fs';
    const path = ${JSON.stringify(path)};
    const KEY = ${JSON.stringify(KEY)};
    const SECRET = ${JSON.stringify(SECRET)};
    const out = {};
    const attempt = (p) => p.then((value) => ({ value }), (err) => ({ code: err.code, message: err.message }));
    const exhaustFds = () => {
      const fds = [];
      try { for (;;) fds.push(openSync('/dev/null', 'r')); } catch (err) { if (err.code !== 'EMFILE') throw err; }
      return fds;
    };
    const free = (fds) => { for (const fd of fds.splice(0)) closeSync(fd); };
    const listing = () => readdirSync(path).filter((n) => n !== 'generation').sort();
    ${body}
    console.log(JSON.stringify(out));`,
    { mode: 0o644 },
  );
  const { stdout } = await run(
    'bash',
    ['-c', 'ulimit -n "$1" && exec "$2" --import tsx "$3"', 'bash', String(nofile), process.execPath, script],
    { cwd: ROOT, env: { ...process.env, HOME: base }, timeout: 25_000, ...(isRoot && { uid: NOBODY, gid: NOBODY }) },
  );
  return JSON.parse(stdout.trim().split('\n').pop() as string) as Record<string, unknown>;
}

/** A directory for a child's store, which the child (nobody, when we are root) makes itself. */
async function parentFor(name: string): Promise<string> {
  const parent = join(base, name);
  await mkdir(parent, { mode: 0o777 });
  await chmod(parent, 0o777);
  return join(parent, 'tokens');
}

describe('FileStore in a process out of file descriptors (a child under ulimit -n)', () => {
  it('every operation fails at once with ERR_STORE "too many open files", nothing is left behind, and all works once descriptors are free', async () => {
    const path = await parentFor('emfile-ops');
    const out = await inChild(
      path,
      `
      const store = new FileStore({ path });
      await store.set(KEY, 'before');
      const fds = exhaustFds();
      out.get = await attempt(store.get(KEY).then((r) => r?.value));
      out.set = await attempt(store.set(KEY, SECRET));
      out.lock = await attempt(store.lock(KEY, { ttlMs: 30_000, waitMs: 10_000 }).then(() => 'taken'));
      out.delete = await attempt(store.delete(KEY));
      free(fds);
      out.files = listing();
      out.value = (await store.get(KEY))?.value;
      await store.set(KEY, 'after');
      out.after = (await store.get(KEY))?.value;
      const lock = await store.lock(KEY, { ttlMs: 30_000, waitMs: 0 });
      out.locked = lock !== undefined;
      await lock?.release();
      await store.close();
      `,
      128,
    );
    for (const operation of ['get', 'set', 'lock', 'delete']) {
      expectPlain(out[operation], /\(EMFILE\): too many open files in this process$/, path);
    }
    expect(out).toMatchObject({ files: [`${hashOf(KEY)}.json`], value: 'before', after: 'after', locked: true });
  });

  it("a lock released while out of descriptors, after another process took it over, stays that process's: no third one takes it while it spends", async () => {
    // A held the refresh lock past its lease (a pending write, a stalled disk); B took it over and is spending the
    // refresh token. A's release runs while A has no descriptor left: it must not remove B's lock. Before the fix
    // it moved B's lock aside, could not read it back (EMFILE), and left it moved: C took the lock while B held it,
    // re-read the refresh token B was spending, and would have spent it again.
    const path = await parentFor('emfile-release');
    const out = await inChild(
      path,
      `
      const a = new FileStore({ path }), b = new FileStore({ path }), c = new FileStore({ path });
      const lockA = await a.lock(KEY, { ttlMs: 1_000, waitMs: 0 });
      const lockB = await b.lock(KEY, { ttlMs: 30_000, waitMs: 10_000 }); // once A's lease has run out
      out.takenOver = lockB?.takenOver;
      const fds = exhaustFds();
      out.released = await attempt(lockA.release()); // a release never throws: retried in the background
      free(fds);
      out.files = listing();
      out.third = (await c.lock(KEY, { ttlMs: 30_000, waitMs: 0 })) !== undefined;
      out.renewedByB = await lockB.renew();
      await lockB.release();
      const lockC = await c.lock(KEY, { ttlMs: 30_000, waitMs: 0 });
      out.afterB = lockC !== undefined;
      await lockC?.release();
      out.end = listing();
      await Promise.all([a.close(), b.close(), c.close()]);
      `,
      128,
    );
    expect(out).toEqual({
      takenOver: true,
      released: {},
      files: [`${hashOf(KEY)}.lock`], // B's lock, where it was: no set-aside copy
      third: false,
      renewedByB: true,
      afterB: true,
      end: [],
    });
  });
});

describe("FileStore when the directory's permissions change under a running process", () => {
  it('made read-only (0500): reads go on, writes and the lock fail at once with ERR_STORE "permission denied"; a held lock is released once writable again (0700); made 0000: ERR_STORE, no crash', async () => {
    const path = await parentFor('chmod');
    const out = await inChild(
      path,
      `
      const store = new FileStore({ path }), other = new FileStore({ path });
      await store.set(KEY, 'before');
      const held = await store.lock('held', { ttlMs: 30_000, waitMs: 0 });
      chmodSync(path, 0o500); // an operator's chmod
      out.read = await attempt(store.get(KEY).then((r) => r?.value));
      out.set = await attempt(store.set(KEY, SECRET));
      out.lock = await attempt(store.lock(KEY, { ttlMs: 30_000, waitMs: 10_000 }));
      out.released = await attempt(held.release()); // cannot land yet: retried
      out.whileReadOnly = listing(); // the held lock is still there
      chmodSync(path, 0o000);
      out.unreadable = await attempt(store.get(KEY));
      chmodSync(path, 0o700);
      const retaken = await other.lock('held', { ttlMs: 30_000, waitMs: 10_000 }); // the retried release, not the lease
      out.retaken = retaken?.takenOver;
      await retaken?.release();
      await store.set(KEY, 'after');
      out.after = (await other.get(KEY))?.value;
      out.files = listing();
      await Promise.all([store.close(), other.close()]);
      `,
    );
    expect(out).toMatchObject({ read: { value: 'before' }, released: {}, retaken: false });
    expect(out['whileReadOnly']).toEqual([`${hashOf(KEY)}.json`, `${hashOf('held')}.lock`].sort());
    expectPlain(out['set'], /permission denied$/, path);
    expectPlain(out['lock'], /permission denied$/, path);
    expectPlain(out['unreadable'], /permission denied$/, path);
    expect(out).toMatchObject({ after: 'after', files: [`${hashOf(KEY)}.json`] });
  });
});

/** Whether this process may start a child in a pid namespace of its own (root on Linux, not refused by a container). */
const canUnshare =
  process.platform === 'linux' &&
  isRoot &&
  spawnSync('unshare', ['--pid', '--fork', '--mount-proc', 'true'], { timeout: 10_000 }).status === 0;

const isAliveHere = (pid: number): boolean => {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
};

describe.skipIf(skipWithout('unshare (root on Linux) for a second pid namespace', canUnshare))(
  'FileStore shared by two pid namespaces of one host (two containers of a pod sharing a volume and a host name)',
  () => {
    it("a live holder in the other namespace keeps its lock, and a writer there its temp file, although their pid is nobody's here", async () => {
      // Before: the lock recorded the host name alone, so its pid was looked up here, found dead, and the lock
      // broken at once (taken over) while its holder was spending the refresh token; and the sweep of this
      // namespace removed a temp file the other was writing (its pid dead here), failing that write.
      const dir = join(base, 'pid-namespaces');
      const pidMax = Number((await readFile('/proc/sys/kernel/pid_max', 'utf8')).trim());
      let pid = pidMax - 1;
      while (isAliveHere(pid)) pid -= 1; // a pid nobody has here: the holder gets it in its namespace
      const script = join(base, `holder-${randomUUID()}.mts`);
      await writeFile(
        script,
        `import { FileStore, tempPath } from ${JSON.stringify(join(ROOT, 'src/stores/file.ts'))};
        import { writeFileSync } from 'node:fs';
        const store = new FileStore({ path: ${JSON.stringify(dir)} });
        const lock = await store.lock(${JSON.stringify(KEY)}, { ttlMs: 60_000, waitMs: 0 });
        // A write in flight, as the store names it: the sweep of another namespace must leave it alone.
        writeFileSync(tempPath(${JSON.stringify(join(dir, `${hashOf(KEY)}.json`))}), 'in flight', { mode: 0o600 });
        console.log(lock === undefined ? 'refused' : \`locked \${process.pid}\`);
        process.stdin.resume();
        process.stdin.on('end', async () => { await lock?.release(); await store.close(); console.log('released'); });`,
      );
      const holder = spawn(
        'unshare',
        [
          ...['--pid', '--fork', '--mount-proc', 'sh', '-c'],
          `echo ${pid - 1} > /proc/sys/kernel/ns_last_pid && "$0" --import tsx "$1"; exit $?`,
          process.execPath,
          script,
        ],
        { cwd: ROOT, stdio: ['pipe', 'pipe', 'inherit'] },
      );
      const lines = createInterface({ input: holder.stdout })[Symbol.asyncIterator]();
      const store = new FileStore({ path: dir });
      try {
        expect((await lines.next()).value).toBe(`locked ${pid}`);
        expect(isAliveHere(pid)).toBe(false); // its pid means nothing here
        const inFlight = (await readdir(dir)).filter((n) => n.endsWith('.tmp'));
        expect(inFlight).toHaveLength(1);
        expect(await store.lock(KEY, { ttlMs: 30_000, waitMs: 0 })).toBeUndefined(); // first use: the sweep too
        expect((await readdir(dir)).filter((n) => n.endsWith('.tmp'))).toEqual(inFlight);
        holder.stdin.end();
        expect((await lines.next()).value).toBe('released');
        const lock = await store.lock(KEY, { ttlMs: 30_000, waitMs: 0 });
        expect(lock).toMatchObject({ takenOver: false });
        await lock!.release();
      } finally {
        holder.stdin.end();
        if (holder.exitCode === null) await once(holder, 'exit');
        await store.close();
      }
    });
  },
);

describe('FileStore when its directory is removed and made again under a running fleet', () => {
  it("the old holder's lock went with it: its renew() is false (it spends nothing), its release leaves the new holder's lock alone", async () => {
    const dir = join(base, 'recreated');
    const a = new FileStore({ path: dir });
    const b = new FileStore({ path: dir });
    const c = new FileStore({ path: dir });
    try {
      await a.set(KEY, 'v');
      const lockA = await a.lock(KEY, { ttlMs: 30_000, waitMs: 0 });
      await rm(dir, { recursive: true });
      await mkdir(dir, { mode: 0o700 }); // an operator's `rm -rf tokens && mkdir tokens`
      const lockB = await b.lock(KEY, { ttlMs: 30_000, waitMs: 0 });
      expect(lockB).toMatchObject({ takenOver: false });
      expect(await lockA!.renew!()).toBe(false);
      await lockA!.release();
      expect(await c.lock(KEY, { ttlMs: 30_000, waitMs: 0 })).toBeUndefined();
      expect(await lockB!.renew!()).toBe(true);
      await lockB!.release();
      const lockC = await c.lock(KEY, { ttlMs: 30_000, waitMs: 0 });
      expect(lockC).toBeDefined();
      await lockC!.release();
    } finally {
      await Promise.all([a.close(), b.close(), c.close()]);
    }
  });
});

describe("FileStore with a directory or a symbolic link where one of its files goes (an operator's mistake, or a planted file)", () => {
  it('a directory as an entry: a miss with a corrupt event; writes and deletes fail with ERR_STORE saying so, naming no file; the directory and what it holds are left alone', async () => {
    const dir = join(base, 'dir-entry');
    const store = new FileStore({ path: dir });
    const corrupt: string[] = [];
    store.on('corrupt', (e) => corrupt.push(e.message));
    try {
      await store.set('other', 'x'); // the directory
      const entry = join(dir, `${hashOf(KEY)}.json`);
      await mkdir(entry);
      await writeFile(join(entry, 'notes'), 'the operator’s');
      expect(await store.get(KEY)).toBeUndefined();
      expect(corrupt).toEqual(['the stored file is not a regular file; treated as missing']);
      const words = /\(EISDIR\): a directory is where one of the store's files goes/;
      expectPlain(await store.set(KEY, SECRET).catch((e: unknown) => e), words, dir);
      expectPlain(await store.delete(KEY).catch((e: unknown) => e), words, dir);
      expect(await readFile(join(entry, 'notes'), 'utf8')).toBe('the operator’s');
      expect((await readdir(dir)).filter((n) => n.endsWith('.tmp') || n.endsWith('.wlock'))).toEqual([]);
    } finally {
      await store.close();
    }
  });

  it("a symbolic link or a directory as a lock file: taken over at once (no spinning, no waiting for a lease), the link's target untouched", async () => {
    const dir = join(base, 'odd-locks');
    const store = new FileStore({ path: dir });
    try {
      await store.set('other', 'x'); // the directory
      // A link to a file that reads as a live lock with an hour's lease: never followed, never written through.
      const target = join(base, 'odd-locks-target.json');
      const lease = JSON.stringify({ owner: 'x', pid: process.pid, host: 'h', expiresAt: Date.now() + 3_600_000 });
      await writeFile(target, lease, { mode: 0o600 });
      await symlink(target, join(dir, `${hashOf('linked')}.lock`));
      const linked = await store.lock('linked', { ttlMs: 30_000, waitMs: 0 });
      expect(linked).toMatchObject({ takenOver: true });
      await linked!.release();
      expect(await readFile(target, 'utf8')).toBe(lease);
      expect((await lstat(target)).isFile()).toBe(true);
      // A directory: likewise taken over, within the call.
      await mkdir(join(dir, `${hashOf('dir')}.lock`));
      const fromDir = await store.lock('dir', { ttlMs: 30_000, waitMs: 0 });
      expect(fromDir).toMatchObject({ takenOver: true });
      await fromDir!.release();
      expect(await store.lock('dir', { ttlMs: 30_000, waitMs: 0 })).toMatchObject({ takenOver: false });
    } finally {
      await store.close();
    }
  });
});
