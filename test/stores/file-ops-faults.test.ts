/**
 * FileStore of an ordinary user (not root, who reads anything) meeting files it may not read in its own
 * directory: an entry or a lock file left by root (`sudo` with the user's cache path, a restore as root, a
 * `chown` of the directory without `-R`: `0600`, owned by root), an entry made `0000`. Docs (docs/stores.md): a
 * file another user planted is a miss with a `corrupt` event, and the next write replaces it. The store runs in a
 * child process as `nobody`; the test runs only as root (it needs a second user).
 */
import { execFile } from 'node:child_process';
import { createHash, randomUUID } from 'node:crypto';
import { chmod, chown, mkdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';

const run = promisify(execFile);
const ROOT = new URL('../..', import.meta.url).pathname;
const NOBODY = 65_534;
const isRoot = process.geteuid?.() === 0;
const base = join(tmpdir(), `tw-file-ops-${randomUUID()}`);
const hashOf = (key: string): string => createHash('sha256').update(key).digest('hex');

afterAll(() => rm(base, { recursive: true, force: true }));

/** Runs `body` (statements using `store`, `events` and `out`) as nobody on a FileStore of `path`; resolves to `out`. */
async function asNobody(path: string, body: string): Promise<Record<string, unknown>> {
  const script = join(base, `script-${randomUUID()}.mts`);
  await writeFile(
    script,
    `import { FileStore } from ${JSON.stringify(join(ROOT, 'src/stores/file.ts'))};
    const store = new FileStore({ path: ${JSON.stringify(path)} });
    const events = [];
    store.on('corrupt', (e) => events.push(e.message));
    const out = {};
    const attempt = (p) => p.then((value) => ({ value }), (err) => ({ code: err.code, message: err.message }));
    ${body}
    await store.close();
    console.log(JSON.stringify({ ...out, events }));`,
    { mode: 0o644 },
  );
  const { stdout } = await run(process.execPath, ['--import', 'tsx', script], {
    uid: NOBODY,
    gid: NOBODY,
    cwd: ROOT,
    env: { ...process.env, HOME: base },
    timeout: 20_000,
  });
  return JSON.parse(stdout.trim().split('\n').pop() as string) as Record<string, unknown>;
}

describe.skipIf(!isRoot)('FileStore of an ordinary user, with files in its directory it may not read', () => {
  it('an entry and a lock file left by root (0600), an entry made 0000: misses with a corrupt event, replaced by the next write; the lock taken over', async () => {
    await mkdir(base, { recursive: true, mode: 0o755 });
    await chmod(base, 0o755);
    const path = join(base, 'tokens');
    await mkdir(path, { mode: 0o700 });
    await chown(path, NOBODY, NOBODY);
    // Left by root: an entry in the store's format and a lock file whose lease would last an hour.
    const entry = JSON.stringify({ tokenwarden: 1, key: 'root-left', version: 1, expiresAt: null, value: 'x' });
    await writeFile(join(path, `${hashOf('root-left')}.json`), entry, { mode: 0o600 });
    const lease = { owner: 'root', pid: 1, host: 'elsewhere', expiresAt: Date.now() + 3_600_000 };
    await writeFile(join(path, `${hashOf('root-lock')}.lock`), JSON.stringify(lease), { mode: 0o600 });

    const out = await asNobody(
      path,
      `
      await store.set('zero', 'v');
      const { chmodSync } = await import('node:fs');
      chmodSync(${JSON.stringify(join(path, `${hashOf('zero')}.json`))}, 0o000);
      for (const key of ['root-left', 'zero']) {
        out[key] = {
          read: await attempt(store.get(key).then((r) => r ?? null)),
          written: await attempt(store.set(key, 'mine')),
          after: await attempt(store.get(key).then((r) => r?.value)),
        };
      }
      const lock = await attempt(store.lock('root-lock', { ttlMs: 10_000, waitMs: 0 }));
      out.lock = { taken: lock.value !== undefined, takenOver: lock.value?.takenOver ?? lock.code };
      await lock.value?.release();
      `,
    );
    for (const key of ['root-left', 'zero']) {
      // Before: ERR_STORE (EACCES) for the read and for every write, for ever — the key unusable.
      expect(out[key]).toEqual({
        read: { value: null },
        written: { value: expect.any(Number) },
        after: { value: 'mine' },
      });
    }
    expect(out['events']).toEqual([
      'the stored file cannot be read by this user (permission denied); treated as missing',
      'the stored file cannot be read by this user (permission denied); treated as missing',
    ]);
    // A lock file nobody here can read is no live holder's (root refuses a directory of another user): taken
    // over, so the fleet waits the settle before spending. Before: ERR_STORE for ever.
    expect(out['lock']).toEqual({ taken: true, takenOver: true });
  }, 30_000);
});
