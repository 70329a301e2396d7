/**
 * A minimal TokenStore shared through a directory, for multi-process tests until the real shared stores
 * (FileStore, RedisStore, PostgresStore) land. It is a real shared store — every operation is atomic
 * across processes — not a mock: a short per-key mutex (an exclusive `mkdir`) guards compare-and-set and
 * the refresh lock's lease; values are replaced by `rename`, so readers never see a torn write.
 *
 * Not for production: no encryption, no cleanup of expired entries, polling waits.
 */
import { createHash, randomUUID } from 'node:crypto';
import { mkdir, readFile, rename, rm, stat, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { LockOptions, SetOptions, StoreLock, StoreRecord, TokenStore } from '../../src/stores/store.js';

const MUTEX_STALE_MS = 10_000;
let sequence = 0;

interface Entry {
  value: string;
  version: number;
  expiresAt: number | null;
}

export class SharedFileStore implements TokenStore {
  constructor(readonly dir: string) {}

  async get(key: string): Promise<StoreRecord | undefined> {
    const entry = await this.#read(key);
    return entry === undefined ? undefined : { value: entry.value, version: entry.version };
  }

  async set(key: string, value: string, options: SetOptions = {}): Promise<number | null> {
    return this.#locked(key, async () => {
      const current = await this.#read(key);
      if (options.ifVersion !== undefined && (current?.version ?? 0) !== options.ifVersion) return null;
      // Versions never repeat for a key, even after a delete: time-based, then incremented.
      const version = Math.max((current?.version ?? 0) + 1, Date.now() * 1000 + (sequence++ % 1000));
      const entry: Entry = {
        value,
        version,
        expiresAt: options.ttlMs === undefined ? null : Date.now() + Math.max(1, options.ttlMs),
      };
      const file = this.#file(key, 'json');
      const tmp = `${file}.${process.pid}.${randomUUID()}.tmp`;
      await writeFile(tmp, JSON.stringify(entry), { mode: 0o600 });
      await rename(tmp, file);
      return version;
    });
  }

  async delete(key: string): Promise<void> {
    await this.#locked(key, () => unlink(this.#file(key, 'json')).catch(ignoreMissing));
  }

  async lock(key: string, options: LockOptions): Promise<StoreLock | undefined> {
    const owner = randomUUID();
    const file = this.#file(key, 'lease');
    const deadline = Date.now() + options.waitMs;
    for (;;) {
      options.signal?.throwIfAborted();
      const acquired = await this.#locked(key, async () => {
        const held = await readJson<{ owner: string; until: number }>(file);
        if (held !== undefined && held.until > Date.now()) return false;
        await writeFile(file, JSON.stringify({ owner, until: Date.now() + options.ttlMs }));
        return true;
      });
      if (acquired) {
        return {
          release: async () => {
            await this.#locked(key, async () => {
              const held = await readJson<{ owner: string }>(file);
              if (held?.owner === owner) await unlink(file).catch(ignoreMissing);
            }).catch(() => undefined);
          },
        };
      }
      if (Date.now() >= deadline) return undefined;
      await sleep(3 + Math.random() * 4);
    }
  }

  async close(): Promise<void> {}

  #file(key: string, ext: string): string {
    return join(this.dir, `${createHash('sha256').update(key).digest('hex')}.${ext}`);
  }

  async #read(key: string): Promise<Entry | undefined> {
    const entry = await readJson<Entry>(this.#file(key, 'json'));
    if (entry === undefined || (entry.expiresAt !== null && entry.expiresAt <= Date.now())) return undefined;
    return entry;
  }

  /** Runs `fn` holding the key's short mutex. */
  async #locked<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const mutex = this.#file(key, 'mutex');
    for (;;) {
      try {
        await mkdir(mutex);
        break;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
          await mkdir(this.dir, { recursive: true });
          continue;
        }
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
        const since = await stat(mutex).then(
          (s) => Date.now() - s.mtimeMs,
          () => 0,
        );
        if (since > MUTEX_STALE_MS) await rm(mutex, { recursive: true, force: true });
        await sleep(1 + Math.random() * 2);
      }
    }
    try {
      return await fn();
    } finally {
      await rm(mutex, { recursive: true, force: true });
    }
  }
}

async function readJson<T>(file: string): Promise<T | undefined> {
  try {
    return JSON.parse(await readFile(file, 'utf8')) as T;
  } catch {
    return undefined;
  }
}

function ignoreMissing(err: unknown): void {
  if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
