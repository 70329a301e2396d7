import { randomUUID } from 'node:crypto';
import { mkdir, readFile, readdir, rm, stat, utimes, writeFile, chmod } from 'node:fs/promises';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { FileStore } from '../../src/stores/file.js';
import { storeContract } from './contract.js';

const root = join(tmpdir(), `tokenwarden-test-${randomUUID()}`);
const dir = join(root, 'tokens');
const fileOf = (key: string) => join(dir, `${createHash('sha256').update(key).digest('hex')}.json`);

afterAll(() => rm(root, { recursive: true, force: true }));

storeContract('FileStore', {
  open: async (options) => new FileStore({ path: dir, ...options }),
  raw: async (key) => {
    const entry = JSON.parse(await readFile(fileOf(key), 'utf8')) as { value: string };
    return entry.value;
  },
  wipe: async () => {
    // What `rm -rf tokens/*` does: every file goes (the directory itself stays).
    for (const name of await readdir(dir)) await rm(join(dir, name), { force: true });
  },
  corrupt: {
    'not JSON': (key) => writeFile(fileOf(key), '{"tokenwarden":1,"key":'),
    empty: (key) => writeFile(fileOf(key), ''),
    'JSON of the wrong shape': (key) => writeFile(fileOf(key), JSON.stringify({ tokenwarden: 1, key, version: 'x' })),
    'an entry for another key': (key) =>
      writeFile(fileOf(key), JSON.stringify({ tokenwarden: 1, key: 'other', version: 1, expiresAt: null, value: 'v' })),
  },
});

describe('FileStore on disk', () => {
  it('creates the directory 0700 and files 0600', async () => {
    const path = join(root, 'perm', 'nested');
    const store = new FileStore({ path });
    await store.set('k', 'v');
    expect((await stat(path)).mode & 0o777).toBe(0o700);
    expect((await stat(join(path, `${createHash('sha256').update('k').digest('hex')}.json`))).mode & 0o777).toBe(0o600);
    await store.close();
  });

  it('tightens an existing directory that others could read', async () => {
    const path = join(root, 'loose');
    await mkdir(path, { recursive: true });
    await chmod(path, 0o755);
    const store = new FileStore({ path });
    await store.set('k', 'v');
    expect((await stat(path)).mode & 0o777).toBe(0o700);
    await store.close();
  });

  it('derives file names from a hash of the key: no key reaches outside the directory', async () => {
    const path = join(root, 'jail');
    const store = new FileStore({ path });
    await store.set('../../escape', 'v');
    await store.set('/etc/passwd', 'v');
    await expect(stat(join(root, 'escape'))).rejects.toMatchObject({ code: 'ENOENT' });
    expect((await store.get('../../escape'))?.value).toBe('v');
    await store.close();
  });

  it('takes over a lock left by a dead process (its pid is gone) before the lease ends', async () => {
    const path = join(root, 'dead-holder');
    const store = new FileStore({ path });
    await store.set('k', 'v'); // creates the directory
    const lockFile = join(path, `${createHash('sha256').update('k').digest('hex')}.lock`);
    const { hostname } = await import('node:os');
    // pid 2^22 + 1 is above Linux's pid_max default: never a live process.
    await writeFile(
      lockFile,
      JSON.stringify({ owner: 'ghost', pid: 4_194_305, host: hostname(), expiresAt: Date.now() + 3_600_000 }),
    );
    const lock = await store.lock('k', { ttlMs: 30_000, waitMs: 0 });
    expect(lock).toBeDefined();
    await lock?.release();
    await store.close();
  });

  it('a lock left by a process on another host (a shared disk) is taken over only when its lease ends', async () => {
    const path = join(root, 'other-host');
    const store = new FileStore({ path });
    await store.set('k', 'v');
    const lockFile = join(path, `${createHash('sha256').update('k').digest('hex')}.lock`);
    // Its pid means nothing here (dead on this host): only the lease can tell that the holder is gone.
    const foreign = { owner: 'elsewhere', pid: 4_194_305, host: 'build-07.other.example' };
    await writeFile(lockFile, JSON.stringify({ ...foreign, expiresAt: Date.now() + 3_600_000 }));
    expect(await store.lock('k', { ttlMs: 30_000, waitMs: 0 })).toBeUndefined();
    expect(JSON.parse(await readFile(lockFile, 'utf8'))).toMatchObject(foreign); // left in place
    await writeFile(lockFile, JSON.stringify({ ...foreign, expiresAt: Date.now() - 1 }));
    const lock = await store.lock('k', { ttlMs: 30_000, waitMs: 0 });
    expect(lock).toBeDefined();
    await lock?.release();
    await store.close();
  });

  it('a lock file that is not JSON is stale (a holder that crashed while creating it)', async () => {
    const path = join(root, 'garbage-lock');
    const store = new FileStore({ path });
    await store.set('k', 'v');
    await writeFile(join(path, `${createHash('sha256').update('k').digest('hex')}.lock`), 'garbage');
    const lock = await store.lock('k', { ttlMs: 30_000, waitMs: 0 });
    expect(lock).toBeDefined();
    await lock?.release();
    await store.close();
  });

  it('removes its own debris of a crashed writer (dead pid, or older than a minute), and nothing else', async () => {
    const path = join(root, 'debris');
    await mkdir(path, { recursive: true, mode: 0o700 });
    const hash = createHash('sha256').update('k').digest('hex');
    const deadPid = spawnSync(process.execPath, ['-e', '0']).pid as number; // exited: dead
    const debris = {
      deadWriter: `${hash}.json.${deadPid}.${randomUUID()}.tmp`,
      oldLockTemp: `${hash}.lock.${process.pid}.${randomUUID()}.tmp`,
      oldAside: `${hash}.wlock.${randomUUID()}.gone`,
    };
    const kept = {
      liveWriter: `${hash}.json.${process.pid}.${randomUUID()}.tmp`, // a write in flight right now
      foreign: 'notes.tmp',
      foreignGone: 'backup.gone',
    };
    for (const name of [...Object.values(debris), ...Object.values(kept)]) await writeFile(join(path, name), 'x');
    const old = new Date(Date.now() - 120_000);
    for (const name of [debris.oldLockTemp, debris.oldAside, kept.foreign, kept.foreignGone]) {
      await utimes(join(path, name), old, old);
    }
    const store = new FileStore({ path });
    await store.set('k', 'v');
    const left = await readdir(path);
    for (const name of Object.values(debris)) expect(left).not.toContain(name);
    for (const name of Object.values(kept)) expect(left).toContain(name);
    await store.close();
  });

  it('a generation marker it cannot trust or read this time (writable by others) is no reset, and reads go on', async () => {
    const path = join(root, 'marker');
    const store = new FileStore({ path });
    let resets = 0;
    store.on('reset', () => resets++);
    await store.set('k', 'v');
    expect((await store.get('k'))?.value).toBe('v'); // the marker is made and learnt
    await chmod(join(path, 'generation'), 0o666);
    expect((await store.get('k'))?.value).toBe('v');
    await chmod(join(path, 'generation'), 0o600);
    expect((await store.get('k'))?.value).toBe('v');
    expect(resets).toBe(0);
    await rm(join(path, 'generation'));
    expect((await store.get('k'))?.value).toBe('v');
    expect(resets).toBe(1); // gone is gone
    await store.close();
  });
});
