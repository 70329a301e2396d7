/**
 * A token store in a local directory, shared by the processes of one host and across restarts.
 *
 * Layout: one `<sha256(key)>.json` per entry (the key is hashed, so no key can reach outside the
 * directory), written atomically (temp file, fsync, rename, fsync of the directory); `<hash>.lock` is the
 * refresh lock and `<hash>.wlock` a short per-key lock that makes compare-and-set atomic. Lock files are
 * created with `link()` from a complete temp file, so a lock file is never seen half-written; a lock is
 * stale when its lease expired or when its holder's pid is dead on this host, in the same pid namespace (a
 * container sharing the directory counts as another host). `generation` is the directory's
 * generation marker (see the store's `reset` event).
 *
 * @module
 */
import { createHash, randomUUID } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { constants, readlinkSync } from 'node:fs';
import { type FileHandle, chmod, link, lstat, mkdir, open, readdir, rename, stat, unlink } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join, resolve } from 'node:path';
import { type Duration, toMs } from '../duration.js';
import { TokenwardenError } from '../errors.js';
import { parseJsonObject } from '../json.js';
import { Codec, type EncryptionOption, decodeOrMiss } from './codec.js';
import { LockWaiters } from './lock-waiters.js';
import {
  DEFAULT_TIMEOUT_MS,
  Generation,
  bounded,
  boundedInWords,
  checkKey,
  checkTtl,
  checkVersion,
  closedError,
  pollDelay,
  releaseUntilLanded,
  storeError,
  throwIfAborted,
  waitClock,
} from './shared.js';
import type { LockOptions, SetOptions, StoreEvents, StoreLock, StoreRecord, TokenStore } from './store.js';

/**
 * Options for {@link FileStore}.
 *
 * @example
 * ```ts
 * const options: FileStoreOptions = { path: '/var/cache/my-app/tokens', encryptionKey: process.env.TOKEN_KEY };
 * ```
 */
export interface FileStoreOptions {
  /**
   * The directory (created `0700` if missing; an existing one of ours with looser permissions is fixed).
   * A directory — or a symbolic link to one — that belongs to another user is refused, for reads as for
   * writes, and even when running as root.
   */
  path: string;
  /** Encrypt entries at rest (AES-256-GCM); several keys, newest first, to rotate. See {@link Codec}. */
  encryptionKey?: EncryptionOption;
  /** Longest time one operation may take, including waiting for the per-key write lock. Default `'2s'`. */
  timeout?: Duration;
}

/** On-disk form of an entry. */
interface Entry {
  tokenwarden: 1;
  key: string;
  version: number;
  expiresAt: number | null;
  value: string;
}

/** On-disk form of a lock. */
interface LockInfo {
  owner: string;
  pid: number;
  host: string;
  /** The holder's pid namespace (see {@link where}); absent when unknown, and in locks of earlier versions. */
  pidns?: string;
  expiresAt: number;
}

/** Lease of the per-key write lock: a write takes milliseconds; a holder older than this has crashed. */
const WRITE_LOCK_TTL_MS = 10_000;
/** A lease with no more than this left is not renewed (another process may be judging it stale right now). */
const RENEW_MARGIN_MS = 1000;
/** Temp files older than this are leftovers of a crashed writer. */
const LEFTOVER_AGE_MS = 60_000;
const SWEEP_EVERY_MS = 60_000;
/** The directory's generation marker (see `#marker`). */
const MARKER_FILE = 'generation';
/**
 * The names of this store's temporary files: `<hash>.<kind>.<pid>-<scope>.<uuid>.tmp` (see {@link tempPath};
 * earlier versions wrote no `-<scope>`), `<hash>.<kind>.<uuid>.gone` and `generation.<pid>-<scope>.<uuid>.tmp`.
 */
const DEBRIS =
  /^(?:[0-9a-f]{64}\.(?:json|lock|wlock)|generation)\.(?:(\d{1,10})(?:-([0-9a-f]{8}))?\.[0-9a-f-]{36}\.tmp|[0-9a-f-]{36}\.gone)$/;
/** Largest entry or lock file read (an entry holds a token response of at most a few MiB, base64-encoded). */
const MAX_FILE_BYTES = 8 * 1024 * 1024;
/**
 * How entries and locks are opened: never through a symbolic link (a planted link could point anywhere),
 * and without blocking (a planted FIFO must not hang a read).
 */
const READ_FLAGS = constants.O_RDONLY | (constants.O_NOFOLLOW ?? 0) | (constants.O_NONBLOCK ?? 0);
const HOST = hostname();

/**
 * Where this process's pid means something. `pidns`: its pid namespace on Linux (the inode number of
 * `/proc/self/ns/pid`; `undefined` elsewhere). Two containers of one Kubernetes pod (or of `docker run --network
 * host`) share a host name, and may share the directory, but not their pids: a live lock holder in the other
 * container has a pid that is nobody's here — its lock would be broken while it spends — or someone else's. A
 * lock taken in another pid namespace is judged by its lease alone, as one from another host. `scope`: 8 hex
 * digits of a hash of the host name and `pidns`, for temp file names (see {@link tempPath}).
 */
let pidNamespace: { pidns: string | undefined; scope: string } | undefined;
function where(): { pidns: string | undefined; scope: string } {
  if (pidNamespace === undefined) {
    let id: string | undefined;
    try {
      id = /^pid:\[(\d+)\]$/.exec(readlinkSync('/proc/self/ns/pid'))?.[1];
    } catch {
      // Not Linux, or no /proc: the host name alone, as before.
    }
    const scope = createHash('sha256')
      .update(`${HOST}\n${id ?? ''}`)
      .digest('hex')
      .slice(0, 8);
    pidNamespace = { pidns: id, scope };
  }
  return pidNamespace;
}

/**
 * A temp file's name beside `path`: `<path>.<pid>-<scope>.<uuid>.tmp`. `scope` (see {@link where}) says where the
 * pid means something, so that the sweep of a process in another container never takes a write in flight there
 * for a crashed writer's leftover.
 *
 * @internal exported for tests
 * @example
 * ```ts
 * const temp = tempPath('/var/cache/app/tokens/<hash>.json'); // '…/<hash>.json.4242-1a2b3c4d.<uuid>.tmp'
 * ```
 */
export function tempPath(path: string): string {
  return `${path}.${process.pid}-${where().scope}.${randomUUID()}.tmp`;
}

/**
 * Token entries in a directory: shared by every process of one host that uses the same `path`, and kept
 * across restarts (a CLI or a cron job continues with the newest rotated refresh token). The directory
 * is `0700` and every file `0600`; use `encryptionKey` as well when the disk is shared or backed up.
 *
 * Only what this user wrote is trusted: a directory owned by another user is refused (`ERR_STORE`, for
 * `get` as for `set`, also when running as root), and an entry file that is not a regular file owned by
 * this user and writable by nobody else — a symbolic link, a FIFO, a file another user planted — is a miss
 * with a `corrupt` event, never a token.
 *
 * Writes are atomic: a process killed in the middle of a write leaves the previous entry intact; so does a
 * full or read-only disk, where writes and the lock fail with `ERR_STORE` saying so and leave no file behind.
 * A directory removed while in use is made again by the next write; one replaced is checked as at first use.
 * The refresh lock is a lease (`ttlMs`) that another process takes over when it expires or when its
 * holder's pid is gone. It is not meant for network file systems shared by several hosts (use Redis or
 * PostgreSQL there): a dead holder on another host is only detected when its lease expires. So is one in another
 * pid namespace (another container of the pod sharing the directory): its pid means nothing here.
 *
 * @example
 * ```ts
 * import { TokenManager, refreshToken, FileStore } from 'tokenwarden';
 * const store = new FileStore({ path: `${process.env.HOME}/.cache/my-cli/tokens`, encryptionKey: process.env.TOKEN_KEY });
 * const manager = new TokenManager({ source: refreshToken({ issuer, clientId, refreshToken: rt }), store });
 * await manager.getToken();
 * await manager.close();
 * await store.close();
 * ```
 */
export class FileStore extends EventEmitter<StoreEvents> implements TokenStore {
  /** The directory, absolute. */
  readonly path: string;
  readonly #codec: Codec;
  readonly #timeoutMs: number;
  readonly #waiters = new LockWaiters(waitClock);
  readonly #held = new Set<StoreLock>();
  #ready: Promise<void> | undefined;
  /**
   * The directory `#ready` checked: one removed or replaced since (another inode, or the same inode number
   * reused with another owner or mode) is checked again.
   */
  #dir: { dev: number; ino: number; uid: number; mode: number } | undefined;
  #sweptAt = 0;
  #closed = false;
  /** The directory's generation marker: see {@link Generation}. */
  readonly #generation = new Generation(this, () =>
    fsBounded(
      async () => ((await this.#ensureDir(false)) ? this.#marker() : undefined),
      this.#timeoutMs,
      'file store generation',
    ),
  );

  constructor(options: FileStoreOptions) {
    super();
    if (options === null || typeof options !== 'object' || typeof options.path !== 'string' || options.path === '') {
      throw new TokenwardenError('ERR_CONFIG', 'FileStore needs a path');
    }
    this.path = resolve(options.path);
    this.#codec = new Codec(options.encryptionKey);
    this.#timeoutMs = toMs(options.timeout ?? DEFAULT_TIMEOUT_MS, 'timeout');
  }

  async get(key: string): Promise<StoreRecord | undefined> {
    this.#check();
    checkKey(key);
    // The generation marker after the entry: an entry missing because the directory was emptied is a `reset`.
    const { entry, marker } = await fsBounded(
      async (): Promise<{ entry: Entry | undefined; marker: string | undefined | null }> => {
        // No directory: nothing stored, and the generation gone (a directory removed under the store).
        if (!(await this.#ensureDir(false))) return { entry: undefined, marker: undefined };
        const read = await this.#read(key);
        // A read works on a read-only disk: a marker that cannot be written there is unknown, not an error.
        return { entry: read, marker: await this.#marker().catch(() => null) };
      },
      this.#timeoutMs,
      'file store get',
    );
    if (this.#generation.changed(marker)) this.emit('reset');
    if (entry === undefined || isExpired(entry)) return undefined;
    const value = decodeOrMiss(this.#codec, key, entry.value, (event) => this.emit('corrupt', event));
    return value === undefined ? undefined : { value, version: entry.version };
  }

  async set(key: string, value: string, options: SetOptions = {}): Promise<number | null> {
    this.#check();
    checkKey(key);
    checkVersion(options.ifVersion);
    const ttlMs = checkTtl(options.ttlMs, 'ttlMs');
    const sealed = this.#codec.encode(key, value);
    const deadline = Date.now() + this.#timeoutMs;
    return fsBounded(
      () =>
        this.#underWriteLock(key, deadline, async () => {
          const current = await this.#read(key, false);
          const live = current !== undefined && !isExpired(current) ? current.version : 0;
          if (options.ifVersion !== undefined && options.ifVersion !== live) return null;
          // Versions also grow across deletes (a re-created entry never repeats an old version): at least the
          // time in 10 µs steps, which moves on between two writes of a key (each takes longer than that).
          const version = Math.max(
            (current?.version ?? 0) + 1,
            Math.floor((performance.timeOrigin + performance.now()) * 100),
          );
          const entry: Entry = {
            tokenwarden: 1,
            key,
            version,
            expiresAt: ttlMs === undefined ? null : Date.now() + ttlMs,
            value: sealed,
          };
          await this.#writeAtomically(this.#file(key, '.json'), JSON.stringify(entry));
          return version;
        }),
      this.#timeoutMs,
      'file store set',
    );
  }

  async delete(key: string): Promise<void> {
    this.#check();
    checkKey(key);
    const deadline = Date.now() + this.#timeoutMs;
    await fsBounded(
      () =>
        this.#underWriteLock(key, deadline, async () => {
          await unlink(this.#file(key, '.json')).catch(ignoreMissing);
          await this.#syncDir();
        }),
      this.#timeoutMs,
      'file store delete',
    );
  }

  async lock(key: string, options: LockOptions): Promise<StoreLock | undefined> {
    this.#check();
    checkKey(key);
    const ttlMs = checkTtl(options.ttlMs, 'ttlMs') as number;
    const deadline = Date.now() + Math.max(0, options.waitMs);
    const path = this.#file(key, '.lock');
    for (let attempt = 0; ; attempt++) {
      throwIfAborted(options.signal);
      this.#check();
      const owner = randomUUID();
      // A lock taken after the store gave up on it (file operations stalled: a hung network file system, a
      // thread pool held by other calls) is removed at once, rather than held by no one for `ttlMs`.
      const taken = await fsBounded(
        () => this.#tryLock(path, owner, ttlMs),
        this.#timeoutMs,
        'file store lock',
        (late) => {
          if (late !== false) void removeIf(path, (info) => info?.owner === owner).catch(() => undefined);
        },
      );
      if (taken !== false) {
        const lock: StoreLock = {
          takenOver: taken === 'taken over',
          release: async () => {
            if (!this.#held.delete(lock)) return;
            // A release that fails (EROFS, EIO, a network file system away) is tried again until it lands:
            // left to its lease, the lock would keep every other process waiting up to `ttlMs`.
            const landed = await releaseUntilLanded(
              () => bounded(() => removeIf(path, (info) => info?.owner === owner), this.#timeoutMs, 'file unlock'),
              Date.now() + ttlMs, // at the latest (a renewal restarts the lease), as the other stores bound it
              () => this.#closed,
            );
            if (landed) this.#waiters.notify(key);
          },
          renew: async () => {
            this.#check();
            if (!this.#held.has(lock)) return false;
            return fsBounded(() => renewLock(path, owner, ttlMs), this.#timeoutMs, 'file lock renewal');
          },
        };
        this.#held.add(lock);
        return lock;
      }
      const now = Date.now();
      if (now >= deadline) return undefined;
      // Waiters in this process are woken at once on release; other processes' releases are polled.
      await this.#waiters.wait(key, Math.min(deadline - now, pollDelay(attempt, 50)), options.signal);
    }
  }

  /** Releases the locks this store holds (so that other processes need not wait for their leases). */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#generation.close();
    await Promise.all([...this.#held].map((lock) => lock.release()));
  }

  // ---------------------------------------------------------------------------------------------

  #check(): void {
    if (this.#closed) throw closedError();
  }

  #file(key: string, suffix: string): string {
    return join(this.path, createHash('sha256').update(key).digest('hex') + suffix);
  }

  /**
   * The directory's generation marker (`generation`, beside the entries; no entry has that name), written when
   * there is none: a new directory, or one removed or emptied under the store. Made like a lock file (a complete
   * temp file, then `link()`), so that processes writing one at once agree on the first.
   */
  async #marker(): Promise<string> {
    const path = join(this.path, MARKER_FILE);
    for (let round = 0; round < 2; round++) {
      const text = await readOwnFile(path);
      if (typeof text !== 'string')
        throw new TokenwardenError('ERR_STORE', `the store's generation marker ${text.problem}`);
      if (text !== 'missing') return text;
      const temp = tempPath(path);
      await writeExclusive(temp, `${Date.now()}:${randomUUID()}`);
      try {
        await link(temp, path);
        await this.#syncDir();
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      } finally {
        await unlink(temp).catch(() => undefined);
      }
    }
    throw new TokenwardenError('ERR_STORE', "the store's generation marker could not be read");
  }

  /** Reads an entry; a file that is not one we wrote for this key is reported and read as a miss. */
  async #read(key: string, report = true): Promise<Entry | undefined> {
    const corrupt = (message: string): undefined => {
      if (report) this.emit('corrupt', { key, code: 'ERR_STORE', message });
      return undefined;
    };
    const file = await readOwnFile(this.#file(key, '.json'));
    if (file === 'missing') return undefined;
    if (typeof file !== 'string') return corrupt(`the stored file ${file.problem}; treated as missing`);
    const entry = parseEntry(file);
    if (entry === undefined || entry.key !== key) {
      return corrupt('the stored file is not a tokenwarden entry for this key; treated as missing');
    }
    return entry;
  }

  /**
   * Checks the directory (and creates it, 0700, when `create`); clears leftovers of crashed writers. Done at
   * first use, and again whenever the directory is no longer the one checked: removed (an operator cleaning
   * up a cache) or replaced — a replacement is trusted only once it passes the same checks.
   * Resolves to `false` when it does not exist and `create` is false (a read then finds nothing).
   */
  async #ensureDir(create = true): Promise<boolean> {
    const ready = this.#ready;
    if (ready !== undefined) {
      await ready;
      const now = await stat(this.path).catch((err: unknown) => {
        if (isMissing(err)) return undefined;
        throw err;
      });
      const was = this.#dir;
      if (
        now !== undefined &&
        now.dev === was?.dev &&
        now.ino === was.ino &&
        now.uid === was.uid &&
        now.mode === was.mode
      ) {
        return true;
      }
      if (this.#ready === ready) this.#ready = undefined;
      if (now === undefined && !create) return false;
    }
    if (this.#ready === undefined) {
      if (!create && !(await exists(this.path))) return false;
      const ready = this.#prepareDir().catch((err: unknown) => {
        if (this.#ready === ready) this.#ready = undefined;
        throw storeError(err, 'file store directory');
      });
      this.#ready = ready;
    }
    await this.#ready;
    return true;
  }

  async #prepareDir(): Promise<void> {
    await mkdir(this.path, { recursive: true, mode: 0o700 });
    const uid = process.geteuid?.();
    const link = await lstat(this.path);
    // A link planted by another user (in /tmp, say) could lead anywhere; a link of our own is followed.
    if (link.isSymbolicLink() && uid !== undefined && link.uid !== uid) {
      throw new TokenwardenError(
        'ERR_STORE',
        `the FileStore path is a symbolic link owned by another user (uid ${link.uid}); refused`,
      );
    }
    const info = await stat(this.path);
    if (!info.isDirectory()) throw new TokenwardenError('ERR_STORE', 'the FileStore path is not a directory');
    // Another user's directory is theirs to fill: its entries could be planted tokens. Root is no exception
    // (chmod would not make the directory ours; its owner could still write to it).
    if (uid !== undefined && info.uid !== uid) {
      throw new TokenwardenError(
        'ERR_STORE',
        `the FileStore directory belongs to another user (uid ${info.uid}, this process runs as uid ${uid}); refused for reads and writes`,
      );
    }
    let { mode } = info;
    if ((mode & 0o077) !== 0) {
      try {
        await chmod(this.path, 0o700);
        mode = (mode & ~0o7777) | 0o700;
      } catch (err) {
        // A read-only file system: nobody can plant or move a file in it now, so reads go on as documented (writes
        // fail on their own). The mode recorded matches no directory: the next call checks again, and tightens it
        // once the file system is writable.
        if ((err as NodeJS.ErrnoException).code !== 'EROFS') throw err;
        mode = -1;
      }
    }
    this.#dir = { dev: info.dev, ino: info.ino, uid: info.uid, mode };
    await this.#sweep();
  }

  /**
   * Removes this store's own debris — temp files (`<hash>.<kind>.<pid>-<scope>.<uuid>.tmp`) of a writer whose
   * process is dead on this host and in this pid namespace, or older than a minute whoever wrote them, and
   * set-aside lock files (`<hash>.<kind>.<uuid>.gone`) older than a minute — at first use and then at most once
   * a minute. Files that do not follow these names are never touched.
   */
  async #sweep(): Promise<void> {
    const now = Date.now();
    this.#sweptAt = now;
    for (const name of await readdir(this.path)) {
      const match = DEBRIS.exec(name);
      if (match === null) continue;
      const file = join(this.path, name);
      const pid = match[1] === undefined ? undefined : Number(match[1]);
      // A pid tells whether its writer lives only where it was taken (no scope: an earlier version's name).
      const here = match[2] === undefined || match[2] === where().scope;
      const writerDead = pid !== undefined && here && pid !== process.pid && !isAlive(pid);
      const age = await stat(file).then(
        (s) => now - s.mtimeMs,
        () => -1,
      );
      if (age < 0) continue;
      if (writerDead || age > LEFTOVER_AGE_MS) await unlink(file).catch(() => undefined);
    }
  }

  /** Sweeps debris now and then (a long-lived process outlives the crashed writers next to it). */
  #sweepNowAndThen(): void {
    if (Date.now() - this.#sweptAt < SWEEP_EVERY_MS) return;
    this.#sweptAt = Date.now();
    void this.#sweep().catch(() => undefined);
  }

  /** Writes `text` to `path` so that readers see the old file or the new one, never a part. */
  async #writeAtomically(path: string, text: string): Promise<void> {
    await this.#ensureDir();
    this.#sweepNowAndThen();
    const temp = tempPath(path);
    let handle: FileHandle | undefined = await open(temp, 'wx', 0o600);
    try {
      await handle.writeFile(text, 'utf8');
      await handle.sync();
      await handle.close();
      handle = undefined;
      await rename(temp, path);
    } catch (err) {
      await handle?.close().catch(() => undefined);
      await unlink(temp).catch(() => undefined);
      throw err;
    }
    await this.#syncDir();
  }

  async #syncDir(): Promise<void> {
    const dir = await open(this.path, 'r');
    try {
      await dir.sync();
    } catch {
      // Some file systems do not support fsync on a directory; the rename is atomic all the same.
    } finally {
      await dir.close();
    }
  }

  /**
   * Creates the lock file at `path` unless a live lock holds it; breaks a stale one (its holder never released
   * it: `'taken over'`). `false` when another holds it.
   */
  async #tryLock(path: string, owner: string, ttlMs: number): Promise<'free' | 'taken over' | false> {
    await this.#ensureDir();
    const pidns = where().pidns;
    const info: LockInfo = {
      owner,
      pid: process.pid,
      host: HOST,
      ...(pidns && { pidns }),
      expiresAt: Date.now() + ttlMs,
    };
    const temp = tempPath(path);
    await writeExclusive(temp, JSON.stringify(info));
    try {
      let broken = false;
      for (let round = 0; round < 2; round++) {
        try {
          await link(temp, path); // atomic, and fails if the lock exists: the lock file is never partial
          return broken ? 'taken over' : 'free';
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
        }
        const current = await readLock(path);
        if (current === 'missing') continue; // released meanwhile: try again at once
        if (!isStale(current)) return false;
        // Move the stale lock aside, but only if it is still the one we judged stale.
        const seen = current?.owner;
        await removeIf(path, (now) => now?.owner === seen && isStale(now));
        broken = true;
      }
      return false;
    } finally {
      await unlink(temp).catch(() => undefined);
    }
  }

  /** Runs `fn` holding the short per-key write lock (compare-and-set is read, compare, write under it). */
  async #underWriteLock<T>(key: string, deadline: number, fn: () => Promise<T>): Promise<T> {
    const path = this.#file(key, '.wlock');
    const owner = randomUUID();
    for (let attempt = 0; ; attempt++) {
      this.#check();
      if ((await this.#tryLock(path, owner, WRITE_LOCK_TTL_MS)) !== false) break;
      if (Date.now() >= deadline) {
        throw new TokenwardenError('ERR_STORE_TIMEOUT', 'the entry stayed locked by another writer');
      }
      await new Promise((r) => setTimeout(r, pollDelay(attempt, 20)));
    }
    const leaseEnd = Date.now() + WRITE_LOCK_TTL_MS;
    try {
      return await fn();
    } finally {
      // A release that fails (a read-only remount, too many open files) is tried again until it lands, rather
      // than leave the key's writes waiting for the lease.
      await releaseUntilLanded(
        () => removeIf(path, (info) => info?.owner === owner),
        leaseEnd,
        () => this.#closed,
      );
    }
  }
}

function parseEntry(text: string): Entry | undefined {
  const e = parseJsonObject(text);
  if (e === undefined) return undefined;
  if (e['tokenwarden'] !== 1 || typeof e['key'] !== 'string' || typeof e['value'] !== 'string') return undefined;
  if (!Number.isSafeInteger(e['version']) || (e['version'] as number) <= 0) return undefined;
  if (e['expiresAt'] !== null && !(typeof e['expiresAt'] === 'number' && Number.isFinite(e['expiresAt']))) {
    return undefined;
  }
  return e as unknown as Entry;
}

function isExpired(entry: Entry): boolean {
  return entry.expiresAt !== null && entry.expiresAt <= Date.now();
}

/** Reads a lock file: its holder, `undefined` when unreadable (treated as stale), `'missing'` when gone. */
async function readLock(path: string): Promise<LockInfo | undefined | 'missing'> {
  const text = await readOwnFile(path);
  if (text === 'missing') return 'missing';
  if (typeof text !== 'string') return undefined;
  const data = parseJsonObject(text) as Partial<LockInfo> | undefined; // undefined: not a lock we wrote
  if (typeof data?.owner === 'string' && typeof data.pid === 'number' && typeof data.expiresAt === 'number') {
    const pidns = typeof data.pidns === 'string' ? { pidns: data.pidns } : {};
    return { owner: data.owner, pid: data.pid, host: String(data.host), ...pidns, expiresAt: data.expiresAt };
  }
  return undefined;
}

/** A lock whose lease has run out, whose holder is dead on this host (in this pid namespace), or that we cannot read. */
function isStale(info: LockInfo | undefined): boolean {
  if (info === undefined) return true;
  if (info.expiresAt <= Date.now()) return true;
  // A pid is alive or dead only where it was taken: on this host, in this pid namespace (or one not recorded).
  const samePids = info.host === HOST && (info.pidns === undefined || info.pidns === where().pidns);
  return samePids && !isAlive(info.pid);
}

function isAlive(pid: number): boolean {
  if (pid === process.pid) return true;
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Deletes the lock file at `path` if `predicate` holds for its content (compare-and-delete). A lock that is
 * not the expected one is never moved: between a move and its return another process could link its own lock
 * in, and two would hold the key. The expected one is renamed aside (atomic), then checked again; one replaced
 * meanwhile is linked back. A lock that cannot be read (too many open files, an I/O error) is left in place
 * and the error thrown: deleting what may be another holder's lock would let a third process spend the
 * refresh token that holder is spending.
 */
async function removeIf(path: string, predicate: (info: LockInfo | undefined) => boolean): Promise<boolean> {
  const seen = await readLock(path);
  if (seen === 'missing' || !predicate(seen)) return false;
  const aside = `${path}.${randomUUID()}.gone`;
  try {
    await rename(path, aside);
  } catch (err) {
    if (isMissing(err)) return false;
    throw err;
  }
  let matches = false;
  try {
    const info = await readLock(aside);
    matches = info !== 'missing' && predicate(info);
  } finally {
    if (!matches) await link(aside, path).catch(() => undefined); // not ours, or unread: put it back unless replaced
    await unlink(aside).catch(() => undefined);
  }
  return matches;
}

/**
 * Restarts the lease of a lock file that is still `owner`'s. Another process replaces a lock only once its
 * lease has run out (`isStale`), so a lease with more than {@link RENEW_MARGIN_MS} left cannot be replaced
 * between this read and the rename that writes the new lease; with less left it is reported lost instead.
 */
async function renewLock(path: string, owner: string, ttlMs: number): Promise<boolean> {
  const current = await readLock(path);
  if (current === 'missing' || current?.owner !== owner || current.expiresAt - Date.now() <= RENEW_MARGIN_MS) {
    return false;
  }
  const temp = tempPath(path);
  await writeExclusive(temp, JSON.stringify({ ...current, expiresAt: Date.now() + ttlMs }));
  try {
    await rename(temp, path); // atomic: the lock file is never partial nor missing
  } catch (err) {
    await unlink(temp).catch(() => undefined);
    throw err;
  }
  return true;
}

/** Lock files need no fsync: after a power loss their holders are gone, and leases expire. */
async function writeExclusive(path: string, text: string): Promise<void> {
  const handle = await open(path, 'wx', 0o600);
  try {
    await handle.writeFile(text, 'utf8');
    await handle.close();
  } catch (err) {
    // A full disk fails the write after the file was created: remove it rather than leave it for the sweep.
    await handle.close().catch(() => undefined);
    await unlink(path).catch(() => undefined);
    throw err;
  }
}

/**
 * Reads a file this process can trust: a regular file (not a link, FIFO or device), owned by this user,
 * writable by nobody else, of a sane size. `'missing'` when there is none; `{ problem }` (for a `corrupt`
 * event) when it is there but not to be trusted.
 */
async function readOwnFile(path: string): Promise<string | 'missing' | { problem: string }> {
  let handle: FileHandle;
  try {
    handle = await open(path, READ_FLAGS);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return 'missing';
    if (code === 'ELOOP' || code === 'EMLINK') return { problem: 'is a symbolic link' };
    if (code === 'ENXIO' || code === 'EISDIR') return { problem: 'is not a regular file' };
    // The file, not the directory, refuses us (the directory was just checked, and it lets us see the file): one
    // of another user that only they may read (left by `sudo`, or a restore as root), or one made 0000. Not ours
    // to trust, and ours to replace: our directory lets us rename over it.
    if (
      (code === 'EACCES' || code === 'EPERM') &&
      (await lstat(path).then(
        () => true,
        () => false,
      ))
    ) {
      return { problem: 'cannot be read by this user (permission denied)' };
    }
    throw err;
  }
  try {
    const info = await handle.stat();
    if (!info.isFile()) return { problem: 'is not a regular file' };
    const uid = process.geteuid?.();
    if (uid !== undefined && info.uid !== uid) {
      return { problem: `belongs to another user (uid ${info.uid}): not written by this user` };
    }
    if ((info.mode & 0o022) !== 0) return { problem: 'is writable by other users' };
    if (info.size > MAX_FILE_BYTES) return { problem: `is larger than ${MAX_FILE_BYTES} bytes` };
    return await handle.readFile('utf8');
  } finally {
    await handle.close().catch(() => undefined);
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await lstat(path);
    return true;
  } catch (err) {
    if (isMissing(err)) return false;
    throw err;
  }
}

/**
 * What an operator should know about the errors a disk gives in service. The system's own message is never
 * shown: it names the file.
 */
const ERRNOS = new Map<string, string>([
  ['ENOSPC', 'the disk is full'],
  ['EDQUOT', "the disk quota of this process's user is used up"],
  ['EROFS', 'the file system is read-only'],
  ['EIO', 'the disk reported an input/output error'],
  ['EACCES', 'permission denied'],
  ['EPERM', 'operation not permitted'],
  ['ENOTDIR', 'a part of the path is not a directory'],
  // Someone's `mkdir` where an entry goes: not ours to remove (it may hold anything), so the key fails until it goes.
  ['EISDIR', "a directory is where one of the store's files goes (remove it)"],
  // Only writes meet it (a read finds nothing): the directory went between the check and the write.
  ['ENOENT', 'the directory was removed while in use (the next call makes it again)'],
  ['EMFILE', 'too many open files in this process'],
  ['ENFILE', 'too many open files on this host'],
]);

/** {@link bounded}, with the failure's errno said in words (`… failed (ENOSPC): the disk is full`). */
const fsBounded = <T>(operation: () => Promise<T>, ms: number, what: string, onLate?: (value: T) => void): Promise<T> =>
  boundedInWords(operation, ms, what, ERRNOS, { onLate });

function isMissing(err: unknown): boolean {
  return (err as NodeJS.ErrnoException | null)?.code === 'ENOENT';
}

function ignoreMissing(err: unknown): void {
  if (!isMissing(err)) throw err;
}
