/**
 * FileStore against another local user: planted entries, foreign directories (also when running as root),
 * symbolic links (the directory or an entry), FIFOs and loose modes. Only what this user wrote is a token.
 *
 * Tests that need a second user run only as root (they chown to `nobody`, or run a child as `nobody`).
 */
import { execFile } from 'node:child_process';
import { createHash, randomUUID } from 'node:crypto';
import { chmod, chown, lchown, mkdir, readFile, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';
import { FileStore } from '../../src/stores/file.js';
import type { StoreEvents } from '../../src/stores/store.js';

const run = promisify(execFile);
const ROOT = new URL('../..', import.meta.url).pathname;
const NOBODY = 65_534;
const isRoot = process.geteuid?.() === 0;
const base = join(tmpdir(), `tw-sec-file-${randomUUID()}`);
const KEY = 'tw1:client_credentials:victim';
const fileOf = (dir: string, key = KEY): string => join(dir, `${createHash('sha256').update(key).digest('hex')}.json`);

/** An entry in FileStore's on-disk format: what an attacker would write. */
const planted = (key = KEY): string =>
  JSON.stringify({
    tokenwarden: 1,
    key,
    version: Date.now(),
    expiresAt: null,
    value: JSON.stringify({ v: 1, accessToken: 'planted-token', tokenType: 'Bearer', issuedAt: Date.now(), raw: {} }),
  });

const stores: FileStore[] = [];
function open(path: string): FileStore {
  const store = new FileStore({ path });
  stores.push(store);
  return store;
}
function events(store: FileStore): StoreEvents['corrupt'][0][] {
  const seen: StoreEvents['corrupt'][0][] = [];
  store.on('corrupt', (e) => seen.push(e));
  return seen;
}
async function dir(name: string): Promise<string> {
  const path = join(base, name);
  await mkdir(path, { recursive: true, mode: 0o700 });
  return path;
}

afterAll(async () => {
  await Promise.all(stores.map((s) => s.close()));
  await rm(base, { recursive: true, force: true });
});

describe('FileStore: entries this user did not write are never served', () => {
  it.skipIf(!isRoot)(
    'an entry planted (owned) by another user in our directory is a miss with a corrupt event',
    async () => {
      const path = await dir('planted-entry');
      await writeFile(fileOf(path), planted(), { mode: 0o600 });
      await chown(fileOf(path), NOBODY, NOBODY);
      const store = open(path);
      const seen = events(store);
      expect(await store.get(KEY)).toBeUndefined();
      expect(seen).toEqual([expect.objectContaining({ key: KEY, code: 'ERR_STORE' })]);
      expect(seen[0]?.message).toContain('another user');
      // Our own write replaces it (rename over it), and is then read.
      await store.set(KEY, 'ours');
      expect((await store.get(KEY))?.value).toBe('ours');
    },
  );

  it('an entry that others may write (mode 0666) is a miss', async () => {
    const path = await dir('loose-entry');
    await writeFile(fileOf(path), planted());
    await chmod(fileOf(path), 0o666);
    const store = open(path);
    const seen = events(store);
    expect(await store.get(KEY)).toBeUndefined();
    expect(seen[0]?.message).toContain('writable by other users');
  });

  it('an entry that is a symbolic link is a miss, and a write replaces the link (never writes through it)', async () => {
    const path = await dir('link-entry');
    const elsewhere = join(await dir('elsewhere'), 'target.json');
    const text = planted();
    await writeFile(elsewhere, text, { mode: 0o600 });
    await symlink(elsewhere, fileOf(path));
    const store = open(path);
    const seen = events(store);
    expect(await store.get(KEY)).toBeUndefined();
    expect(seen[0]?.message).toContain('symbolic link');
    await store.set(KEY, 'ours');
    expect((await store.get(KEY))?.value).toBe('ours');
    expect(await readFile(elsewhere, 'utf8')).toBe(text); // the link's target is untouched
  });

  it('an entry that is a FIFO is a miss, not a read that hangs', async () => {
    const path = await dir('fifo-entry');
    await run('mkfifo', ['-m', '600', fileOf(path)]);
    const store = open(path);
    const seen = events(store);
    expect(await store.get(KEY)).toBeUndefined();
    expect(seen[0]?.message).toContain('not a regular file');
  });
});

describe('FileStore: a directory of another user is refused, for reads as for writes', () => {
  it.skipIf(!isRoot)(
    'running as root, a directory owned by another user is refused (ERR_STORE) and not chmodded',
    async () => {
      const path = await dir('foreign-as-root');
      await writeFile(fileOf(path), planted(), { mode: 0o600 });
      await chmod(path, 0o755);
      await chown(fileOf(path), NOBODY, NOBODY);
      await chown(path, NOBODY, NOBODY);
      const store = open(path);
      await expect(store.get(KEY)).rejects.toMatchObject({ code: 'ERR_STORE' });
      await expect(store.set(KEY, 'v')).rejects.toMatchObject({ code: 'ERR_STORE' });
      await expect(store.lock(KEY, { ttlMs: 1000, waitMs: 0 })).rejects.toMatchObject({ code: 'ERR_STORE' });
      const info = await stat(path);
      expect(info.mode & 0o777).toBe(0o755);
      expect(info.uid).toBe(NOBODY);
    },
  );

  it.skipIf(!isRoot)(
    'a user reading a directory that belongs to someone else gets ERR_STORE, not the entry in it',
    async () => {
      // The directory and a readable entry belong to root; the reader runs as nobody (a child process).
      const path = await dir('foreign-for-nobody');
      await chmod(base, 0o755);
      await chmod(path, 0o755);
      await writeFile(fileOf(path), planted(), { mode: 0o644 });
      const script = `
      import { FileStore } from ${JSON.stringify(join(ROOT, 'dist/index.js'))};
      const store = new FileStore({ path: ${JSON.stringify(path)} });
      try { const r = await store.get(${JSON.stringify(KEY)}); console.log(JSON.stringify({ value: r?.value ?? null })); }
      catch (err) { console.log(JSON.stringify({ code: err.code })); }`;
      const { stdout } = await run(process.execPath, ['--input-type=module', '-e', script], {
        uid: NOBODY,
        gid: NOBODY,
        timeout: 10_000,
      });
      expect(JSON.parse(stdout)).toEqual({ code: 'ERR_STORE' });
    },
  );

  it.skipIf(!isRoot)('a symbolic link owned by another user as the store path is refused', async () => {
    const target = await dir('link-target');
    await writeFile(fileOf(target), planted(), { mode: 0o600 });
    const link = join(base, 'foreign-link');
    await symlink(target, link);
    await lchown(link, NOBODY, NOBODY);
    const store = open(link);
    await expect(store.get(KEY)).rejects.toMatchObject({ code: 'ERR_STORE' });
    await expect(store.set(KEY, 'v')).rejects.toMatchObject({ code: 'ERR_STORE' });
  });

  it('a symbolic link of our own to a directory of our own is followed', async () => {
    const target = await dir('own-target');
    const link = join(base, 'own-link');
    await symlink(target, link);
    const store = open(link);
    await store.set(KEY, 'through our own link');
    expect((await store.get(KEY))?.value).toBe('through our own link');
    expect(JSON.parse(await readFile(fileOf(target), 'utf8')).value).toBe('through our own link');
  });

  it('a read does not create the directory; a missing one is a miss', async () => {
    const path = join(base, 'not-there');
    const store = open(path);
    expect(await store.get(KEY)).toBeUndefined();
    await expect(stat(path)).rejects.toMatchObject({ code: 'ENOENT' });
  });
});
