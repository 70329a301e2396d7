/**
 * A token store in Redis (`tokenwarden/redis`), for fleets spread over several hosts.
 *
 * Each entry is a hash `{ value, version }` under `<prefix>entry:<key>`, expiring with the token
 * (`PEXPIRE`); compare-and-set is one Lua script. The refresh lock is `SET <prefix>lock:<key> <owner> NX PX
 * <ttl>`, its holder also named in `<prefix>held:<key>` until it releases it (so that a lock taken over from
 * a holder that never released it is told apart: `StoreLock.takenOver`), released by a compare-and-delete
 * script that also publishes the key on `<prefix>unlock`, so
 * waiting processes wake at once (they also poll with backoff, in case a message is missed); right before a
 * spend its holder confirms it still owns it and restarts the lease (a compare-and-`PEXPIRE` script).
 * `<prefix>epoch` is the store's generation marker (see `reset`): read with every `get`, after the entry; on a
 * Redis Cluster each master has its own, `<prefix>epoch{<tag>}` in one of its slots, read with the entries
 * that master holds.
 *
 * @module
 */
import { createHash, randomUUID } from 'node:crypto';
import calculateSlot from 'cluster-key-slot';
import { EventEmitter } from 'node:events';
import { TLSSocket } from 'node:tls';
import type { Cluster, Redis, RedisOptions } from 'ioredis';
import { type Duration, toMs } from '../duration.js';
import { TokenwardenError } from '../errors.js';
import { NETWORK_CODES } from '../http/network.js';
import { Codec, type EncryptionOption, decodeOrMiss } from './codec.js';
import { LockWaiters } from './lock-waiters.js';
import {
  DEFAULT_TIMEOUT_MS,
  Generation,
  bounded,
  checkKey,
  checkTtl,
  checkVersion,
  driverCause,
  closedError,
  inWords,
  boundedInWords,
  pollDelay,
  storeError,
  throwIfAborted,
  waitClock,
  releaseUntilLanded,
} from './shared.js';
import type { LockOptions, SetOptions, StoreEvents, StoreLock, StoreRecord, TokenStore } from './store.js';

/**
 * Options shared by both ways of building a {@link RedisStore}.
 *
 * @example
 * ```ts
 * const common: RedisStoreCommonOptions = { prefix: 'billing:tokens:', encryptionKey: process.env.TOKEN_KEY, timeout: '1s' };
 * new RedisStore({ url: process.env.REDIS_URL!, ...common });
 * ```
 */
export interface RedisStoreCommonOptions {
  /** Prefix of every key the store uses. Default `'tokenwarden:'`. */
  prefix?: string;
  /** Encrypt entries at rest (AES-256-GCM); several keys, newest first, to rotate. See {@link Codec}. */
  encryptionKey?: EncryptionOption;
  /**
   * Longest time one Redis command may take (a store that is down fails within this instead of
   * queueing). Default `'2s'`.
   */
  timeout?: Duration;
}

/**
 * Options for {@link RedisStore}: a `url` (the store creates, owns and closes its connection; `ioredis`
 * is loaded on first use) or a `client` of yours (an ioredis `Redis` or `Cluster`, which the store never
 * closes; sentinel and cluster set-ups are configured on it).
 *
 * @example
 * ```ts
 * const a: RedisStoreOptions = { url: 'redis://cache:6379/0', prefix: 'billing:tokens:' };
 * const b: RedisStoreOptions = { client: new Redis.Cluster(nodes), encryptionKey: process.env.TOKEN_KEY };
 * ```
 */
export type RedisStoreOptions = RedisStoreCommonOptions &
  (
    | {
        /** `redis://[user:password@]host:port/db` or `rediss://…` */
        url: string;
        /** Extra ioredis options for the connection the store creates. */
        redisOptions?: RedisOptions;
        client?: never;
        sentinels?: never;
      }
    | {
        /** Redis Sentinel: the sentinels to ask for the current master (the store follows failovers). */
        sentinels: { host: string; port: number }[];
        /** The master group name the sentinels monitor. */
        name: string;
        /**
         * Extra ioredis options for the connection the store creates (`sentinelPassword`, `password`, TLS…).
         * Over TLS: `sentinelTLS` for the sentinels, `tls` for the master (the store sets ioredis's
         * `enableTLSForSentinelMode` when `tls` is given; an explicit `false` is kept).
         *
         * @example
         * ```ts
         * new RedisStore({
         *   sentinels: [{ host: 'sentinel-1.internal', port: 26379 }],
         *   name: 'tokens',
         *   redisOptions: { tls: { ca }, sentinelTLS: { ca }, password: process.env.REDIS_PASSWORD },
         * });
         * ```
         */
        redisOptions?: RedisOptions;
        url?: never;
        client?: never;
      }
    | {
        /**
         * Your ioredis `Redis` or `Cluster` (never closed by the store). A Sentinel client needs
         * `failoverDetector: true`; without it the store warns (`TOKENWARDEN_REDIS_SENTINEL`). Given `tls`, it
         * needs `enableTLSForSentinelMode` too, or ioredis connects to the master in the clear (the store warns:
         * `TOKENWARDEN_REDIS_SENTINEL_TLS`). The store listens to its `error` events (to say why a call failed
         * while it reconnects), so ioredis no longer prints "Unhandled error event" for it. Every listener the store
         * puts on it (and on a Cluster's nodes) is taken off at `close()`: a store made and closed per task, on one
         * long-lived client, leaves nothing behind.
         */
        client: Redis | Cluster;
        url?: never;
        redisOptions?: never;
        sentinels?: never;
      }
  );

/** The part of an ioredis connection the store uses (both `Redis` and `Cluster` have it). */
interface Connection {
  readonly status: string;
  connect(): Promise<void>;
  call(command: string, ...args: (string | number)[]): Promise<unknown>;
  subscribe(channel: string): Promise<unknown>;
  on(event: string, listener: (...args: never[]) => void): unknown;
  off(event: string, listener: (...args: never[]) => void): unknown;
  quit(): Promise<unknown>;
  disconnect(): void;
}

const GET = `
local t = redis.call('TYPE', KEYS[1])['ok']
if t == 'none' then return false end
if t ~= 'hash' then return {'corrupt'} end
local f = redis.call('HMGET', KEYS[1], 'value', 'version')
if not f[1] or not f[2] then return {'corrupt'} end
return {'ok', f[1], f[2]}
`;

// ARGV: value, ifVersion ('' = unconditional), ttl ms ('' = none).
// A version is at least the server's time in 10 µs steps (15 digits): an entry deleted, or expired, and written
// again never repeats a version it had — a compare-and-set that read the old entry cannot land on the new one.
const SET = `
local t = redis.call('TYPE', KEYS[1])['ok']
local current = 0
if t == 'hash' then current = tonumber(redis.call('HGET', KEYS[1], 'version')) or 0 end
if ARGV[2] ~= '' and tonumber(ARGV[2]) ~= current then return false end
local now = redis.call('TIME')
local tick = tonumber(now[1]) * 100000 + math.floor(tonumber(now[2]) / 10)
local version = string.format('%.0f', math.max(current + 1, tick))
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'value', ARGV[1], 'version', version)
if ARGV[3] ~= '' then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
return version
`;

// ARGV: owner, channel, key.
const RELEASE = `
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], ARGV[3])
  return 1
end
return 0
`;

// ARGV: owner, lease ms. The lock is still ours: restart its lease. Not ours (expired, evicted, deleted): 0.
const RENEW = `
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
`;

// The lock's holder, kept past the lease (`<prefix>held:<key>`): a lock taken while it names someone else was
// never released. ARGV: owner, ms to keep it. Returns the previous holder, or false.
const HOLD = `
local previous = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return previous
`;

// ARGV: owner. Forgets the holder on release, if still ours.
const UNHOLD = `
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
`;

// The store's epoch: created once, kept for ever. A Redis that comes back without it lost its data.
// ARGV: a new epoch, used only when there is none.
const EPOCH = `
local e = redis.call('GET', KEYS[1])
if e then return e end
redis.call('SET', KEYS[1], ARGV[1])
return ARGV[1]
`;

const sha1 = (script: string): string => createHash('sha1').update(script).digest('hex');
const SCRIPTS = {
  get: GET,
  set: SET,
  release: RELEASE,
  renew: RENEW,
  hold: HOLD,
  unhold: UNHOLD,
  epoch: EPOCH,
} as const;
const SHAS = Object.fromEntries(Object.entries(SCRIPTS).map(([name, script]) => [name, sha1(script)])) as Record<
  keyof typeof SCRIPTS,
  string
>;
/**
 * After the server refused to subscribe to lock releases (an error reply: `NOPERM`, an unknown command), how long
 * lock waiters only poll before the store asks again (an operator may grant the channel meanwhile).
 */
const SUBSCRIBE_REFUSED_MS = 60_000;
/** How long a lock's holder is remembered past its lease (to tell a lock never released from a free one). */
const HELD_MS = 24 * 3_600_000;

/**
 * Tokens in Redis, shared by every process that uses the same Redis and `prefix`. Entries expire with
 * their token; the refresh lock is a lease with an owner token, released only by its owner.
 *
 * Every command is bounded by `timeout`; a Redis that is down or slow makes operations fail with
 * `ERR_STORE` / `ERR_STORE_TIMEOUT` (a `TokenManager` then carries on in-process and recovers when Redis
 * returns). The connection the store creates keeps reconnecting in the background.
 *
 * @example
 * ```ts
 * import { TokenManager, clientCredentials } from 'tokenwarden';
 * import { RedisStore } from 'tokenwarden/redis';
 * const store = new RedisStore({ url: process.env.REDIS_URL!, encryptionKey: process.env.TOKEN_KEY });
 * const manager = new TokenManager({ source: clientCredentials(options), store });
 * await manager.getToken(); // one token request for the whole fleet
 * await manager.close();
 * await store.close();
 * ```
 */
export class RedisStore extends EventEmitter<StoreEvents> implements TokenStore {
  /** The key prefix. */
  readonly prefix: string;
  readonly #options: RedisStoreOptions;
  readonly #codec: Codec;
  readonly #timeoutMs: number;
  readonly #channel: string;
  readonly #waiters = new LockWaiters(waitClock);
  readonly #held = new Set<StoreLock>();
  #connection: Promise<Connection> | undefined;
  #owned: Connection | undefined;
  #subscriber: Connection | undefined;
  #subscribed: Promise<void> | undefined;
  /** Until when subscribing is not tried again: the server refused it (see {@link SUBSCRIBE_REFUSED_MS}). */
  #subscribeRefusedUntil = 0;
  /** The server identity checked on the current connection (see {@link RedisStore} `reset`). */
  #identity: Promise<void> | undefined;
  /** The cluster masters the identity was last taken of (`host:port`, sorted); '' for a single server. */
  #identified = '';
  /** Every node asked as a master at the last identification (`host:port`), the slot table's masters too. */
  #identifiedNodes: ReadonlySet<string> = new Set();
  /** Counts the changes of who answers (a reconnection, a cluster node that joins, leaves or closes). */
  #topology = 0;
  /** {@link #topology} when the last identification that succeeded began. */
  #identifiedTopology = -1;
  /** One wait for the connection to become ready, shared by every operation started meanwhile. */
  #readiness: Promise<void> | undefined;
  /** The connection's last error since it was last ready (what a call made while it reconnects is told). */
  #lastFailure: unknown;
  /** {@link #notConnected}'s answer for `failure`. */
  #explained: { failure: unknown; said: Promise<unknown> } | undefined;
  readonly #onFailure = (err: unknown): void => {
    this.#lastFailure = err;
  };
  /**
   * Takes off the listeners the store put on its connection, and on that connection's cluster nodes: a client
   * of yours outlives the store, and would otherwise keep it (and tell it every reconnection) after close().
   */
  readonly #unwatch: (() => void)[] = [];
  /** The run id of each server seen (`host:port` of each master in a cluster; `''` for a single server). */
  readonly #runIds = new Map<string, string>();
  /** The eviction policy reported for each server (keyed as `#runIds`), so that it is reported once. */
  readonly #evictions = new Map<string, string>();
  /**
   * The store's epochs (its generation markers): `<prefix>epoch` on a single server; on a Redis Cluster one
   * per master, `<prefix>epoch{<tag>}` in a slot of that master (each master can lose its data alone). See
   * {@link Generation}.
   */
  readonly #generation = new Generation(this, async () => this.#epochs(await this.#usable()));
  /** A cluster master's epoch key and the slot it was made for, by master (`host:port`). */
  readonly #epochKeys = new Map<string, { key: string; slot: number }>();
  #closed = false;

  constructor(options: RedisStoreOptions) {
    super();
    if (options === null || typeof options !== 'object') {
      throw new TokenwardenError('ERR_CONFIG', 'RedisStore needs a url, sentinels or a client');
    }
    const ways = [options.url, options.client, options.sentinels].filter((w) => w !== undefined).length;
    if (ways !== 1) throw new TokenwardenError('ERR_CONFIG', 'RedisStore takes one of url, sentinels or client');
    if (
      options.sentinels !== undefined &&
      (!Array.isArray(options.sentinels) || options.sentinels.length === 0 || typeof options.name !== 'string')
    ) {
      throw new TokenwardenError('ERR_CONFIG', 'RedisStore sentinels must be a non-empty list, with the master name');
    }
    if (options.url !== undefined && !/^rediss?:\/\//.test(options.url)) {
      throw new TokenwardenError('ERR_CONFIG', 'RedisStore url must start with redis:// or rediss://');
    }
    this.#options = options;
    warnAboutSentinelClient(options.client);
    // A client of yours may have failed before the first call: heard from now on (until close()).
    if (options.client !== undefined) this.#hear(options.client as unknown as Connection, 'error', this.#onFailure);
    this.prefix = options.prefix ?? 'tokenwarden:';
    if (typeof this.prefix !== 'string') throw new TokenwardenError('ERR_CONFIG', 'prefix must be a string');
    this.#codec = new Codec(options.encryptionKey);
    this.#timeoutMs = toMs(options.timeout ?? DEFAULT_TIMEOUT_MS, 'timeout');
    this.#channel = `${this.prefix}unlock`;
  }

  async get(key: string): Promise<StoreRecord | undefined> {
    this.#check();
    checkKey(key);
    // The epoch after the entry, in the same round trip (on a cluster, the epoch of the entry's master): an
    // entry missing because the data went is a `reset`.
    const connection = this.#usable();
    const entryKey = this.#entryKey(key);
    const epochKey = connection.then((c) => this.#epochKeyOf(c, entryKey));
    const [reply, epoch] = await Promise.all([
      this.#script('get', entryKey, [], connection),
      epochKey.then((k) => this.#epoch(k, connection)),
    ]);
    // Who answers changed during the read (on a cluster, a replica promoted after its master failed, found by
    // ioredis on the way): the answer may come from a server never identified. Identify it before answering,
    // so that a `reset` it causes comes before the entry, as it does for a read that starts after the change.
    // ioredis follows a MOVED at once (a CLUSTER FAILOVER: the old master answers with the new one's address)
    // and tells of the new master only later ('refresh', '-node'): the slot table, which it updated on the
    // way, names a master not identified yet.
    if (this.#unidentifiedMaster(await connection, entryKey)) this.#identifyAgain();
    if (this.#topology !== this.#identifiedTopology) await this.#usable();
    if (this.#generation.changed(epoch, await epochKey)) this.emit('reset');
    if (reply === null || reply === undefined) return undefined;
    const [status, stored, version] = Array.isArray(reply) ? (reply as unknown[]) : [];
    const parsed = typeof version === 'string' && /^\d{1,15}$/.test(version) ? Number(version) : NaN;
    if (status !== 'ok' || typeof stored !== 'string' || !(parsed > 0)) {
      this.emit('corrupt', {
        key,
        code: 'ERR_STORE',
        message: 'the Redis key does not hold a tokenwarden entry; treated as missing',
      });
      return undefined;
    }
    const value = decodeOrMiss(this.#codec, key, stored, (event) => this.emit('corrupt', event));
    return value === undefined ? undefined : { value, version: parsed };
  }

  async set(key: string, value: string, options: SetOptions = {}): Promise<number | null> {
    this.#check();
    checkKey(key);
    checkVersion(options.ifVersion);
    const ttlMs = checkTtl(options.ttlMs, 'ttlMs');
    const reply = await this.#script('set', this.#entryKey(key), [
      this.#codec.encode(key, value),
      options.ifVersion === undefined ? '' : String(options.ifVersion),
      ttlMs === undefined ? '' : String(ttlMs),
    ]);
    if (reply === null || reply === undefined) return null;
    return Number(reply);
  }

  async delete(key: string): Promise<void> {
    this.#check();
    checkKey(key);
    const connection = await this.#usable();
    await redisBounded(() => connection.call('DEL', this.#entryKey(key)), this.#timeoutMs, 'redis delete');
  }

  async lock(key: string, options: LockOptions): Promise<StoreLock | undefined> {
    this.#check();
    checkKey(key);
    const ttlMs = checkTtl(options.ttlMs, 'ttlMs') as number;
    const deadline = Date.now() + Math.max(0, options.waitMs);
    const lockKey = `${this.prefix}lock:${key}`;
    const owner = randomUUID();
    for (let attempt = 0; ; attempt++) {
      throwIfAborted(options.signal);
      this.#check();
      const connection = await this.#usable();
      let reply: unknown;
      try {
        reply = await redisBounded(
          () => connection.call('SET', lockKey, owner, 'PX', ttlMs, 'NX'),
          this.#timeoutMs,
          'redis lock',
        );
      } catch (err) {
        // The SET may still run (a client that queues or resends commands): queue our release behind it.
        // If that fails too, it is tried again until it lands or the lease ends.
        void connection
          .call('EVAL', RELEASE, 1, lockKey, owner, this.#channel, key)
          .catch(() => this.#release(key, lockKey, owner, Date.now() + ttlMs));
        throw err;
      }
      if (reply === 'OK') {
        // Whether the previous holder released it (a separate key: on a cluster the two live on other slots).
        // Unknown counts as not released: the fleet then only waits a little longer.
        const previous = await this.#script('hold', `${this.prefix}held:${key}`, [owner, String(HELD_MS)]).catch(
          () => owner,
        );
        const takenOver = typeof previous === 'string' && previous !== '';
        return this.#holding(key, lockKey, owner, ttlMs, takenOver);
      }
      const now = Date.now();
      if (now >= deadline) return undefined;
      if (attempt === 0) {
        // Subscribe before the next attempt, so that a release between the two is not missed.
        await this.#listen();
        continue;
      }
      await this.#waiters.wait(key, Math.min(deadline - now, pollDelay(attempt, 250)), options.signal);
    }
  }

  /** Releases the locks it holds, closes the connections it opened; a client passed in stays open. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#generation.close();
    await Promise.all([...this.#held].map((lock) => lock.release()));
    const subscriber = this.#subscriber;
    this.#subscriber = undefined;
    subscriber?.disconnect();
    for (const unwatch of this.#unwatch.splice(0)) unwatch();
    const owned = this.#owned;
    this.#owned = undefined;
    if (owned !== undefined) {
      await bounded(() => owned.quit(), this.#timeoutMs, 'redis quit').catch(() => undefined);
      owned.disconnect();
    }
  }

  // ---------------------------------------------------------------------------------------------

  #check(): void {
    if (this.#closed) throw closedError();
  }

  #entryKey(key: string): string {
    return `${this.prefix}entry:${key}`;
  }

  #holding(key: string, lockKey: string, owner: string, ttlMs: number, takenOver: boolean): StoreLock {
    const lock: StoreLock = {
      takenOver,
      release: async () => {
        if (!this.#held.delete(lock)) return;
        await this.#release(key, lockKey, owner, Date.now() + ttlMs);
      },
      renew: async () => {
        this.#check();
        if (!this.#held.has(lock)) return false;
        return Number(await this.#script('renew', lockKey, [owner, String(ttlMs)])) === 1;
      },
    };
    this.#held.add(lock);
    return lock;
  }

  /** Releases a lock if `owner` still holds it, again and again while that fails (see releaseUntilLanded). */
  async #release(key: string, lockKey: string, owner: string, leaseEnd: number): Promise<void> {
    const landed = await releaseUntilLanded(
      () =>
        Promise.all([
          this.#script('unhold', `${this.prefix}held:${key}`, [owner]),
          this.#script('release', lockKey, [owner, this.#channel, key]),
        ]),
      leaseEnd,
      () => this.#closed,
    );
    if (landed) this.#waiters.notify(key);
  }

  /**
   * Whether the cluster master that holds `key`'s slot (by the slot table ioredis keeps) was not among the
   * masters identified: its answers may come from a server whose data is older or gone.
   */
  #unidentifiedMaster(connection: Connection, key: string): boolean {
    const master = clusterSlots(connection)?.[calculateSlot(key)]?.[0];
    return master !== undefined && this.#identifiedNodes.size > 0 && !this.#identifiedNodes.has(master);
  }

  /** The epoch under `key`, made now if there is none (on `connection`, once it can take commands). */
  async #epoch(key: string, connection: Promise<Connection>): Promise<string> {
    return String(await this.#script('epoch', key, [`${Date.now()}:${randomUUID()}`], connection));
  }

  /**
   * The epoch read with the entry under `entryKey`: the store's one epoch on a single server; on a cluster,
   * the epoch of the master that holds the entry's slot — so that a master emptied alone (`FLUSHALL` on it)
   * is seen, and the reads of the epoch spread over the masters as the entries do.
   */
  #epochKeyOf(connection: Connection, entryKey: string): string {
    const slots = clusterSlots(connection);
    const master = slots?.[calculateSlot(entryKey)]?.[0];
    return master === undefined ? `${this.prefix}epoch` : this.#masterEpochKey(slots as string[][], master);
  }

  /**
   * The epoch key of a cluster master: tagged for the first slot it serves (made again when that slot moved).
   * A prefix with a hash tag of its own (`{tokens}:`) puts every key of the store, this one too, in that tag's
   * slot: one master holds them all, and its epoch with them.
   */
  #masterEpochKey(slots: readonly (readonly string[] | undefined)[], master: string): string {
    const known = this.#epochKeys.get(master);
    if (known !== undefined && slots[known.slot]?.[0] === master) return known.key;
    const slot = slots.findIndex((nodes) => nodes?.[0] === master);
    const key = `${this.prefix}epoch{${hashTagFor(slot)}}`;
    this.#epochKeys.set(master, { key, slot });
    return key;
  }

  /** Every epoch of the store, by key: one on a single server, one per master on a cluster. */
  async #epochs(connection: Connection): Promise<ReadonlyMap<string, string>> {
    const slots = clusterSlots(connection);
    const keys =
      slots === undefined
        ? [`${this.prefix}epoch`]
        : [...new Set(slots.map((nodes) => nodes?.[0]))]
            .filter((master): master is string => master !== undefined)
            .map((master) => this.#masterEpochKey(slots, master));
    const ready = Promise.resolve(connection);
    return new Map(await Promise.all(keys.map(async (key) => [key, await this.#epoch(key, ready)] as const)));
  }

  /**
   * Runs one of the store's Lua scripts (EVALSHA, loading it with EVAL when Redis does not know it), on
   * `on` or on the connection once it can take commands.
   */
  async #script(
    name: keyof typeof SCRIPTS,
    key: string,
    args: string[],
    on: Promise<Connection> = this.#usable(),
  ): Promise<unknown> {
    const connection = await on;
    const what = `redis ${name}`;
    try {
      return await bounded(() => connection.call('EVALSHA', SHAS[name], 1, key, ...args), this.#timeoutMs, what);
    } catch (err) {
      if (replyCode((err as { cause?: unknown }).cause) !== 'NOSCRIPT') throw inWords(err, REPLIES, failureCode);
      return redisBounded(() => connection.call('EVAL', SCRIPTS[name], 1, key, ...args), this.#timeoutMs, what);
    }
  }

  /**
   * The connection, if it can take a command now. Commands are never left queued while Redis is away: a
   * queued write replayed after a reconnect could put back a token whose refresh token was spent since.
   * While a connection attempt is under way, or due (`reconnecting`, a single server: at most 250 ms away), we wait for it,
   * bounded, and send nothing before it is ready: a connection the server closed (its idle `timeout`, a
   * `CLIENT KILL`, a proxy that recycles connections) costs a moment, not a failed operation; a Redis that is
   * down fails at its next failed attempt. After every (re)connection the server's identity is checked before
   * the first command (see `reset`).
   */
  async #usable(): Promise<Connection> {
    const connection = await this.#connect();
    const { status } = connection;
    if (status !== 'ready') {
      if (status === 'wait')
        connection.connect().catch(() => undefined); // a lazyConnect client of yours
      // Our own connection ended without close(): ioredis gives up on a connection for good when a failover is
      // announced (+switch-master) while it is asking a sentinel for the master (its failover detector stops
      // the connector mid-way, and the attempt rejects into `end`). Seen in CI: a whole fleet on ERR_STORE for
      // the rest of its life after a Sentinel failover. It is opened again, here, on the next operation.
      else if (status === 'end' && connection === this.#owned) connection.connect().catch(() => undefined);
      else if (
        status !== 'connecting' &&
        status !== 'connect' &&
        // A cluster reconnecting has lost every node: its next commands may reach other masters, which only a
        // fresh identification (on 'ready', before any command) may trust — fail now, as before.
        (status !== 'reconnecting' || clusterMasters(connection) !== undefined)
      ) {
        if (status === 'end') {
          throw new TokenwardenError(
            'ERR_STORE',
            'the Redis client passed to the store has ended (closed, or given up by ioredis); the store does not reopen a client it was given',
          );
        }
        throw await this.#notConnected(connection, status);
      }
      const deadline = Date.now() + this.#timeoutMs;
      this.#readiness ??= whenReady(connection)
        .catch(async (err: unknown) => {
          throw await whyNoneAnswered(connection, err, deadline);
        })
        .finally(() => {
          this.#readiness = undefined;
        });
      await redisBounded(() => this.#readiness as Promise<void>, this.#timeoutMs, 'redis connect').catch(
        (err: unknown) => {
          throw clientCertificateWanted(connection, handshakeUnanswered(connection, err));
        },
      );
    }
    this.#identity ??= this.#identify(connection).catch((err: unknown) => {
      this.#identity = undefined;
      throw err;
    });
    await redisBounded(() => this.#identity as Promise<void>, this.#timeoutMs, 'redis connect');
    return connection;
  }

  /**
   * Reads the server's run id and the store's epoch. A different run id (a restart, a failover to another
   * server) or a different or missing epoch (the data is gone) means entries may be missing or older than
   * what processes hold: the store emits `reset`, and every `TokenManager`/`UserTokens` on it writes back
   * what it holds before anyone spends a refresh token.
   */
  async #identify(connection: Connection): Promise<void> {
    const topology = this.#topology;
    const masters = slotMasters(connection);
    this.#identified = mastersOf(connection);
    this.#identifiedNodes = new Set(masters?.map(nodeKey));
    const [servers, epochs] = await Promise.all([
      // A cluster answers INFO from any node: each master is asked on its own connection.
      masters === undefined
        ? askServer('', connection).then((server) => [server])
        : Promise.all(masters.map((node) => askServer(nodeKey(node), node))),
      this.#epochs(connection),
    ]);
    const known = this.#runIds.size > 0;
    let changed = this.#generation.changedAny(epochs);
    for (const { server, runId } of servers) {
      if (runId === undefined) continue;
      const before = this.#runIds.get(server);
      // Another process on a known address (a restart), or a master not seen before (a failover).
      if (known && before !== runId) changed = true;
      this.#runIds.set(server, runId);
    }
    for (const server of servers) this.#checkEviction(server);
    this.#identifiedTopology = topology;
    if (changed) this.emit('reset');
  }

  /**
   * Reports (once per server and policy) a server that may evict the store's keys under memory pressure:
   * `maxmemory` set and a `maxmemory-policy` other than `noeviction` (the lock and the entries carry a TTL, so
   * the `volatile-*` policies evict them too). An unknown policy (not in `INFO`, empty as some managed services
   * answer, or any text not shaped like a policy name) is not reported: the store cannot tell.
   */
  #checkEviction({ server, policy, maxmemory }: ServerInfo): void {
    if (policy === undefined || policy === '' || policy === 'noeviction' || maxmemory === 0) {
      if (policy !== undefined) this.#evictions.delete(server);
      return;
    }
    if (this.#evictions.get(server) === policy) return;
    this.#evictions.set(server, policy);
    const where = server === '' ? 'the Redis server' : `the Redis master ${server}`;
    const limit = maxmemory === undefined ? 'a memory limit' : `maxmemory ${maxmemory} bytes`;
    const event = {
      ...(server !== '' && { node: server }),
      policy,
      maxmemory,
      message:
        `${where} may evict tokenwarden's keys: maxmemory-policy is ${policy} with ${limit}. Under memory ` +
        'pressure it can drop a refresh lock still held (another process then spends the same refresh token, ' +
        'and the server revokes the grant) or the newest token entry. Set maxmemory-policy to noeviction, or ' +
        'use a Redis of its own for the tokens.',
    };
    // Loud when nobody listens: Node's process warning (printed once, to stderr, unless --no-warnings).
    if (this.listenerCount('eviction') === 0) {
      process.emitWarning(event.message, { type: 'TokenwardenWarning', code: 'TOKENWARDEN_REDIS_EVICTION' });
    }
    this.emit('eviction', event);
  }

  #connect(): Promise<Connection> {
    this.#connection ??= this.#open().catch((err: unknown) => {
      this.#connection = undefined;
      throw err;
    });
    return this.#connection;
  }

  async #open(): Promise<Connection> {
    const { client, url, redisOptions, sentinels } = this.#options;
    const name = (this.#options as { name?: string }).name;
    if (client !== undefined) {
      this.#watch(client as unknown as Connection);
      return client as unknown as Connection;
    }
    const ioredis = await loadIoredis();
    const options: RedisOptions = {
      // Sentinel: leave the old master the moment a sentinel announces a failover (+switch-master). An
      // operator's `SENTINEL FAILOVER` leaves the old master up, taking writes, until a sentinel converts it
      // to a replica about ten seconds later; connections kept there meanwhile would split the fleet across
      // two masters, and a process that started on the new one would spend a refresh token rotated on the
      // old one. Tested (test/faults/fleet-faults.test.ts).
      // And a time limit on questions to a sentinel, which ioredis sets none on: a sentinel that accepts the
      // connection and then answers nothing (frozen, SIGSTOP; a half-open path) would hold every reconnection for
      // ever; with one, the next sentinel is asked. Tested (test/stores/redis-faults.test.ts).
      // And TLS to the master when `tls` is given: ioredis applies `tls` in Sentinel mode only with
      // `enableTLSForSentinelMode` (the sentinels take `sentinelTLS`), and otherwise connects to the master in the
      // clear — a password and the tokens in plain text, where TLS was asked. An explicit `false` is kept.
      ...(sentinels !== undefined && {
        sentinels,
        name,
        failoverDetector: true,
        sentinelCommandTimeout: this.#timeoutMs,
        ...(redisOptions?.tls !== undefined && { enableTLSForSentinelMode: true }),
      }),
      // Fail commands while Redis is unreachable instead of queueing them for long: the manager then
      // degrades to in-process behaviour, and the connection keeps reconnecting in the background.
      commandTimeout: this.#timeoutMs,
      connectTimeout: Math.max(this.#timeoutMs, 1000),
      maxRetriesPerRequest: 1,
      enableOfflineQueue: false,
      autoResendUnfulfilledCommands: false,
      // Back within a quarter second of Redis: every process re-checks the server's identity at about the
      // same time after a restart (see `reset`).
      retryStrategy: (times: number) => Math.min(50 * 2 ** times, 250),
      ...redisOptions,
    };
    const connection = (url === undefined
      ? new ioredis.Redis(options)
      : new ioredis.Redis(url, options)) as unknown as Connection;
    // Connection errors surface as failed commands; without a listener ioredis would print each one.
    connection.on('error', () => undefined);
    if (this.#closed) {
      connection.disconnect();
      throw closedError();
    }
    this.#owned = connection;
    this.#watch(connection);
    return connection;
  }

  /**
   * `redis is not connected (reconnecting)`, with the reason of the connection's last failure where the
   * servers it asks first can tell it ({@link whyNoneAnswered}: a cluster whose every startup node refused its
   * TLS, its password…). Asked once per failure: the calls until the next attempt share the answer.
   */
  #notConnected(connection: Connection, status: string): Promise<unknown> {
    const failure = this.#lastFailure;
    const err = new TokenwardenError('ERR_STORE', `redis is not connected (${status})`, {
      ...(failure !== undefined && { cause: driverCause(failure) }),
    });
    if (failure === undefined) return Promise.resolve(err);
    if (this.#explained?.failure !== failure) {
      this.#explained = { failure, said: whyNoneAnswered(connection, err, Date.now() + this.#timeoutMs) };
    }
    return this.#explained.said;
  }

  /** Who answers changed: every master is identified again before the next command (see `reset`). */
  #identifyAgain(): void {
    this.#topology++;
    this.#identity = undefined;
  }

  /** Re-checks the server's identity on every reconnection, before the first command (a store may have lost data). */
  #watch(connection: Connection): void {
    if (connection !== (this.#options.client as unknown)) this.#hear(connection, 'error', this.#onFailure);
    this.#hear(connection, 'ready', () => {
      this.#lastFailure = undefined;
      this.#explained = undefined;
      this.#topology++;
      this.#identity = this.#identify(connection).catch((err: unknown) => {
        this.#identity = undefined;
        throw err;
      });
      this.#identity.catch(() => undefined);
    });
    // A cluster stays ready while one of its nodes restarts (it may come back empty): whenever a node's
    // connection closes or a node joins, every master is identified again before the next command — which
    // fails while a master cannot answer, rather than run against a shard that may have lost its data.
    const nodes = (): NodeConnection[] | undefined => clusterNodes(connection, 'all');
    if (nodes() !== undefined) {
      const again = (): void => this.#identifyAgain();
      // On each node once (a client of yours may be connected already); off a node as it leaves, and off those
      // left at close().
      const watchNode = (node: NodeConnection): void => {
        node.off('close', again);
        node.on('close', again);
      };
      nodes()?.forEach(watchNode);
      this.#unwatch.push(() => nodes()?.forEach((node) => node.off('close', again)));
      this.#hear(connection, '+node', (node: NodeConnection) => {
        again();
        watchNode(node);
      });
      this.#hear(connection, '-node', (node: NodeConnection) => {
        again();
        node.off('close', again);
      });
      // A replica promoted in place of a failed master was already connected (as a replica): ioredis then
      // changes its role at a slot refresh without `+node`. The masters after each refresh are compared with
      // those identified.
      this.#hear(connection, 'refresh', () => {
        if (mastersOf(connection) !== this.#identified) again();
      });
    }
  }

  /** `connection.on(event, listener)`, taken off at close(). */
  #hear<A extends unknown[]>(connection: Connection, event: string, listener: (...args: A) => void): void {
    const heard = listener as unknown as (...args: never[]) => void;
    connection.on(event, heard);
    this.#unwatch.push(() => connection.off(event, heard));
  }

  /**
   * Subscribes (once, on a connection of its own) to lock releases; polling covers any failure. A server that
   * refuses it (an ACL user without the channel, Redis 7's default for a new user; SUBSCRIBE renamed away) is
   * not asked again for {@link SUBSCRIBE_REFUSED_MS}: every contended lock would otherwise open a connection of
   * its own to be refused, and add an entry to the server's `ACL LOG`.
   */
  async #listen(): Promise<void> {
    if (this.#subscribed === undefined && Date.now() >= this.#subscribeRefusedUntil) {
      const connection = await this.#connect();
      // Without a command timeout: ioredis subscribes again by itself on every reconnection, and nobody awaits that
      // SUBSCRIBE — timed out, it would be an unhandled rejection (a crash, by Node's default). Our own SUBSCRIBE is
      // bounded below. (A Cluster's `duplicate(nodes, options)` keeps its subscriber connection without one.)
      const untimed = clusterMasters(connection) === undefined ? { commandTimeout: undefined } : undefined;
      const subscriber = (connection as unknown as { duplicate(o?: object): Connection }).duplicate(untimed);
      subscriber.on('error', () => undefined);
      subscriber.on('message', (channel: string, key: string) => {
        if (channel === this.#channel) this.#waiters.notify(key);
      });
      // Ended for good (the Sentinel race above): forgotten, so that the next wait subscribes anew.
      subscriber.on('end', () => {
        if (this.#subscriber !== subscriber) return;
        this.#subscriber = undefined;
        this.#subscribed = undefined;
      });
      this.#subscriber = subscriber;
      if (this.#closed) subscriber.disconnect();
      const subscribe = async (): Promise<void> => {
        if (subscriber.status === 'wait') subscriber.connect().catch(() => undefined);
        if (subscriber.status !== 'ready') await bounded(() => whenReady(subscriber), this.#timeoutMs, 'redis connect');
        await bounded(() => subscriber.subscribe(this.#channel), this.#timeoutMs, 'redis subscribe');
      };
      this.#subscribed = subscribe().then(
        () => undefined,
        (err: unknown) => {
          const cause = (err as { cause?: unknown } | null)?.cause;
          if (replyCode(err) !== undefined || replyCode(cause) !== undefined) {
            this.#subscribeRefusedUntil = Date.now() + SUBSCRIBE_REFUSED_MS;
          }
          this.#subscribed = undefined; // try again on a later wait; polling meanwhile
          if (this.#subscriber === subscriber) this.#subscriber = undefined;
          subscriber.disconnect();
        },
      );
    }
    return this.#subscribed;
  }
}

/**
 * The code said for `ERR unknown command …` (a command renamed or disabled with `rename-command`, or refused by
 * a proxy): a reply whose prefix, `ERR`, tells nothing.
 */
const UNKNOWN_COMMAND = 'unknown command';

/**
 * What an operator should know about the error replies a store meets in service (the reply's own text is never
 * shown: it may quote a key or a script).
 */
const REPLIES: ReadonlyMap<string, string> = new Map([
  ...NETWORK_CODES,
  ...Object.entries({
    READONLY: 'the server is a read-only replica: point the store at the master (a failover not followed?)',
    LOADING: 'the server is loading its data after a restart',
    OOM: 'the server is out of memory (maxmemory with noeviction) and refuses writes',
    MISCONF: 'the server cannot save to disk and refuses writes (stop-writes-on-bgsave-error)',
    NOAUTH: 'the server requires a password',
    WRONGPASS: 'wrong user name or password, or the user is disabled',
    NOPERM:
      "the user's ACL refuses a command or key the store needs (GET, SET, DEL, EVAL, EVALSHA, PUBLISH, SUBSCRIBE on its prefix)",
    MASTERDOWN: 'the replica has lost its master',
    NOREPLICAS: 'the server refuses writes: fewer replicas in sync than its min-replicas-to-write',
    CLUSTERDOWN: 'the cluster is down',
    TRYAGAIN: 'the cluster is resharding this slot',
    BUSY: 'the server is busy running a script',
    WRONGTYPE: "a key of the store's prefix holds another type of value (something else writes under the prefix)",
    [UNKNOWN_COMMAND]:
      'the server does not know a command the store needs, renamed or disabled by rename-command (or a proxy ' +
      'that does not pass it): the store needs GET, SET, DEL, EVAL, EVALSHA, PUBLISH, SUBSCRIBE and INFO under ' +
      'their own names',
  }),
]);

/** The prefix of a Redis error reply (`READONLY`, `NOPERM`…): what the server answered. Undefined for anything else. */
function replyCode(err: unknown): string | undefined {
  const e = err as { name?: unknown; message?: unknown } | null;
  if (e?.name !== 'ReplyError' || typeof e.message !== 'string') return undefined;
  if (/^ERR unknown command\b/.test(e.message)) return UNKNOWN_COMMAND;
  return /^([A-Z]{2,16})\b/.exec(e.message)?.[1];
}

/** What {@link REPLIES} says in words: an error reply's prefix, or a connection error's errno or TLS code. */
function failureCode(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return replyCode(err) ?? (typeof code === 'string' ? code : undefined);
}

/** {@link bounded}, with an error reply said in words (`redis set failed (READONLY): the server is a read-only…`). */
const redisBounded = <T>(operation: () => Promise<T>, ms: number, what: string): Promise<T> =>
  boundedInWords(operation, ms, what, REPLIES, { codeOf: failureCode });

/** A node of a cluster, as ioredis hands it out. */
interface NodeConnection {
  readonly options: { host?: string; port?: number };
  call(command: string, ...args: string[]): Promise<unknown>;
  on(event: string, listener: () => void): unknown;
  off(event: string, listener: () => void): unknown;
}

/**
 * The slot table of a cluster connection (slot → node keys, the master's first), as ioredis keeps it;
 * undefined for a single server, or before the cluster told its slots.
 */
function clusterSlots(connection: Connection): (string[] | undefined)[] | undefined {
  const slots = (connection as { slots?: unknown }).slots;
  return Array.isArray(slots) && slots.length > 0 ? (slots as (string[] | undefined)[]) : undefined;
}

/** A short hash tag per cluster slot (the first decimal number whose slot it is), found once per slot. */
const hashTags = new Map<number, string>();
function hashTagFor(slot: number): string {
  let tag = hashTags.get(slot);
  if (tag === undefined) {
    // Every slot is reached within a few hundred thousand numbers (CRC16 spreads them evenly).
    for (let n = 0; ; n++) {
      if (calculateSlot(String(n)) === slot) {
        tag = String(n);
        break;
      }
    }
    hashTags.set(slot, tag);
  }
  return tag;
}

/** The options of a client of the user's own that the store checks (ioredis fills in its defaults). */
interface ClientOptions {
  sentinels?: unknown;
  failoverDetector?: unknown;
  tls?: unknown;
  enableTLSForSentinelMode?: unknown;
}

/**
 * What a Sentinel client of the user's own may lack, each said once per client as a process warning:
 * - `failoverDetector`: after an operator's failover (`SENTINEL FAILOVER`) the client stays on the old master,
 *   which takes writes until a sentinel converts it to a replica (about ten seconds), while processes that
 *   connect meanwhile use the new master — two copies of the store, and a refresh token rotated in one is spent
 *   again from the other;
 * - `enableTLSForSentinelMode` with `tls`: without it ioredis connects to the master in the clear (the password
 *   and the tokens in plain text) wherever the master also listens without TLS — where TLS was plainly asked
 *   for (an unset option reads false). `RedisStore({ sentinels })` sets both itself.
 */
const SENTINEL_CLIENT_WARNINGS: readonly {
  code: string;
  lacks(options: ClientOptions): boolean;
  message: string;
  warned: WeakSet<object>;
}[] = [
  {
    code: 'TOKENWARDEN_REDIS_SENTINEL',
    lacks: (options) => options.failoverDetector !== true,
    message:
      'RedisStore: this Sentinel client has no failoverDetector. After a SENTINEL FAILOVER it keeps writing to the ' +
      'old master until a sentinel converts it (about 10 s) while other processes use the new one, and a refresh ' +
      'token can be spent twice. Create it with failoverDetector: true (ioredis 5.3+).',
    warned: new WeakSet(),
  },
  {
    code: 'TOKENWARDEN_REDIS_SENTINEL_TLS',
    lacks: (options) => options.tls !== undefined && options.enableTLSForSentinelMode !== true,
    message:
      'RedisStore: this Sentinel client has tls but not enableTLSForSentinelMode, so ioredis connects to the master ' +
      'without TLS (tls is used only with it; the sentinels take sentinelTLS). Create it with ' +
      'enableTLSForSentinelMode: true (or without tls, if the master is plain on purpose).',
    warned: new WeakSet(),
  },
];

/** Warns of what a Sentinel client of the user's own lacks ({@link SENTINEL_CLIENT_WARNINGS}). */
function warnAboutSentinelClient(client: unknown): void {
  const options = (client as { options?: ClientOptions } | undefined)?.options;
  if (!Array.isArray(options?.sentinels) || options.sentinels.length === 0) return;
  for (const { code, lacks, message, warned } of SENTINEL_CLIENT_WARNINGS) {
    if (!lacks(options) || warned.has(client as object)) continue;
    warned.add(client as object);
    process.emitWarning(message, { type: 'TokenwardenWarning', code });
  }
}

/** The nodes of a cluster connection in `role`; undefined for a single server (or a sentinel set-up). */
function clusterNodes(connection: Connection, role: 'master' | 'all'): NodeConnection[] | undefined {
  const nodes = (connection as { nodes?: unknown }).nodes;
  return typeof nodes === 'function' ? (nodes.call(connection, role) as NodeConnection[]) : undefined;
}

/** The masters of a cluster connection; undefined for a single server (or a sentinel set-up). */
const clusterMasters = (connection: Connection): NodeConnection[] | undefined => clusterNodes(connection, 'master');

/**
 * The masters of a cluster connection with the nodes its slot table names as masters besides (a node a `MOVED`
 * answer named, before ioredis' slot refresh gave it the master's role); undefined for a single server.
 */
function slotMasters(connection: Connection): NodeConnection[] | undefined {
  const masters = clusterMasters(connection);
  if (masters === undefined) return undefined;
  const named = new Set(masters.map(nodeKey));
  const others = new Set<string>();
  for (const nodes of clusterSlots(connection) ?? []) {
    const master = nodes?.[0];
    if (master !== undefined && !named.has(master)) others.add(master);
  }
  if (others.size === 0) return masters;
  const all = clusterNodes(connection, 'all') ?? [];
  return [...masters, ...all.filter((node) => others.has(nodeKey(node)))];
}

const nodeKey = (node: NodeConnection): string => `${node.options.host}:${node.options.port}`;

/** A cluster connection's masters as one string (`host:port`, sorted); '' for a single server. */
function mastersOf(connection: Connection): string {
  const masters = clusterMasters(connection) ?? [];
  return masters.map(nodeKey).sort().join(' ');
}

const runIdOf = (info: unknown): string | undefined => /run_id:([0-9a-f]+)/.exec(String(info))?.[1];

/** What the store learns of a server when it connects (one master, on a cluster). */
interface ServerInfo {
  /** `host:port` of a cluster master; `''` for a single server. */
  readonly server: string;
  readonly runId: string | undefined;
  /** `maxmemory_policy` of `INFO memory`; undefined when the server does not say. */
  readonly policy: string | undefined;
  /** `maxmemory` in bytes (`0`: no limit); undefined when the server does not say. */
  readonly maxmemory: number | undefined;
}

/**
 * Asks a server who it is (`INFO server`: its run id) and how it treats a full memory (`INFO memory`; `CONFIG
 * GET` is disabled on managed services). Two commands sent together: one round trip, once per connection. A
 * server that refuses `INFO memory` is identified all the same, its policy unknown.
 */
async function askServer(
  server: string,
  connection: { call(command: string, ...args: string[]): Promise<unknown> },
): Promise<ServerInfo> {
  // A server that refuses INFO (an ACL user with `-@dangerous`, a proxy that does not pass it) is not identified
  // by its run id: the store's epoch still tells an emptied store (see `reset`).
  const refused = (err: unknown): string => {
    if (replyCode(err) === undefined) throw err;
    return '';
  };
  const [info, memory] = await Promise.all([
    connection.call('INFO', 'server').then(String, refused),
    connection.call('INFO', 'memory').then(String, refused),
  ]);
  const limit = infoField(memory, 'maxmemory');
  const policy = infoField(memory, 'maxmemory_policy');
  return {
    server,
    runId: runIdOf(info),
    // What the server says goes into a process warning and the `eviction` event: only a policy-shaped word
    // (`allkeys-lru`, `volatile-ttl`…) is taken; any other text (a proxy's, a hostile server's) is unknown.
    policy: policy !== undefined && POLICY.test(policy) ? policy : undefined,
    // At most 20 digits (2^64 has 20): a longer number is no byte count a server has.
    maxmemory: limit !== undefined && /^\d{1,20}$/.test(limit) ? Number(limit) : undefined,
  };
}

/** The shape of a `maxmemory-policy` name: a lower-case word of letters and hyphens, at most 32 characters. */
const POLICY = /^[a-z][a-z-]{0,31}$/;

/** A `name:value` line of an `INFO` answer. */
const infoField = (info: string, name: string): string | undefined =>
  new RegExp(`^${name}:(.*?)\\r?$`, 'm').exec(info)?.[1];

/**
 * A connection that timed out in its TLS handshake — the server took the connection and never answered it, as
 * a plain Redis port does when `rediss://` (or `tls`) is asked of it: `err` with that said, the most common
 * reason of a `rediss://` that only ever times out. Anything else is `err` as it is.
 */
function handshakeUnanswered(connection: Connection, err: unknown): unknown {
  if (!(err instanceof TokenwardenError) || err.code !== 'ERR_STORE_TIMEOUT') return err;
  const stream = (connection as { stream?: unknown }).stream;
  // Connected (TCP), and no Finished message sent yet: the handshake has not completed.
  if (!(stream instanceof TLSSocket) || stream.connecting || stream.getFinished() !== undefined) return err;
  return new TokenwardenError(
    'ERR_STORE_TIMEOUT',
    `${err.message}: the server took the connection but never answered the TLS handshake (TLS asked of a port that does not serve it?)`,
    { cause: err },
  );
}

/**
 * A TLS connection reset or closed without a client certificate given: Redis resets it so when it requires one
 * (`tls-auth-clients yes`, its default once TLS is on), and Node says only ECONNRESET. Said as the likely
 * reason; anything else is `err` as it is.
 */
function clientCertificateWanted(connection: Connection, err: unknown): unknown {
  if (!(err instanceof TokenwardenError) || err.code !== 'ERR_STORE') return err;
  const code = failureCode(err.cause);
  if (code !== 'ECONNRESET' && code !== 'EPIPE') return err;
  const tls = (connection as { options?: { tls?: unknown } }).options?.tls;
  if (!withoutClientCertificate(tls)) return err;
  return new TokenwardenError('ERR_STORE', `${err.message}${clientCertificateHint('redisOptions.tls')}`, {
    cause: err.cause,
  });
}

/** TLS options (an object) with no client certificate in them. */
const withoutClientCertificate = (tls: unknown): boolean =>
  tls !== null &&
  typeof tls === 'object' &&
  (tls as { cert?: unknown }).cert === undefined &&
  (tls as { pfx?: unknown }).pfx === undefined;

const clientCertificateHint = (option: string): string =>
  ` (a server that requires a client certificate — tls-auth-clients, on by default with TLS — and no cert and key in ${option}?)`;

/**
 * The servers a connection asks before it can send a command — the sentinels, for the master's address; a
 * cluster's startup nodes, for the slot table — and how to ask one again, to learn why none answered.
 */
interface Askable {
  /** `sentinel`, `cluster node`. */
  readonly noun: string;
  /** What none of them gave: `the master's address`, `the slot table`. */
  readonly wanted: string;
  readonly servers: readonly AskedServer[];
  /** The connection options of each (TLS, user name and password). */
  readonly options: RedisOptions;
  /** The option that asks TLS of them (said when one closed a plain connection). */
  readonly tlsOption: string;
  /** Asks one: a reason why it gives nothing, or undefined when it answers well. */
  ask(server: { call(command: string, ...args: string[]): Promise<unknown> }): Promise<string | undefined>;
  /** A reason in an error reply of theirs that no code says. */
  replyReason(message: string): string | undefined;
}

/**
 * What a failed connection asked of servers whose own errors ioredis swallows: "All sentinels are unreachable"
 * (Sentinel) and "Failed to refresh slots cache" (Cluster) say nothing of a TLS certificate refused, a password
 * refused, TLS asked of a plain port or the reverse, a wrong name. Undefined for anything else.
 */
function askableOf(
  connection: Connection,
  err: TokenwardenError,
  readNodes: (nodes: readonly unknown[]) => AskedServer[],
): Askable | undefined {
  const cause = err.cause as { name?: unknown; message?: unknown } | undefined;
  const message = typeof cause?.message === 'string' ? cause.message : '';
  const options = (connection as { options?: RedisOptions & { redisOptions?: RedisOptions } }).options;
  if (/^All sentinels are unreachable\b/.test(message) && Array.isArray(options?.sentinels)) {
    const name = options.name;
    if (typeof name !== 'string') return undefined;
    const noMaster = 'a sentinel answered that it monitors no master of that name (the name option)';
    return {
      noun: 'sentinel',
      wanted: "the master's address",
      servers: options.sentinels.map((s) => ({
        host: s.host ?? '127.0.0.1',
        port: s.port ?? 26379,
        ...(s.family !== undefined && { family: s.family }),
      })),
      options: {
        ...(options.sentinelTLS !== undefined && { tls: options.sentinelTLS }),
        ...(options.sentinelUsername && { username: options.sentinelUsername }),
        ...(options.sentinelPassword && { password: options.sentinelPassword }),
      },
      tlsOption: 'sentinelTLS',
      ask: async (sentinel) =>
        (await sentinel.call('SENTINEL', 'get-master-addr-by-name', name)) === null ? noMaster : undefined,
      replyReason: (reply) => (/^ERR No such master\b/.test(reply) ? noMaster : undefined),
    };
  }
  const startupNodes = (connection as { startupNodes?: unknown }).startupNodes;
  if (cause?.name === 'ClusterAllFailedError' && Array.isArray(startupNodes)) {
    const nodeOptions = options?.redisOptions ?? {};
    return {
      noun: 'cluster node',
      wanted: 'the slot table',
      servers: readNodes(startupNodes),
      options: {
        ...(nodeOptions.tls !== undefined && { tls: nodeOptions.tls }),
        ...(nodeOptions.username && { username: nodeOptions.username }),
        ...(nodeOptions.password && { password: nodeOptions.password }),
      },
      tlsOption: 'redisOptions.tls',
      ask: async (node) => void (await node.call('CLUSTER', 'SLOTS')),
      replyReason: (reply) =>
        /cluster support disabled/i.test(reply)
          ? 'a cluster node answered that it is not in cluster mode (cluster-enabled no): a single server takes a Redis client, or url'
          : undefined,
    };
  }
  return undefined;
}

/** A server to ask again, with what it takes of its own (a cluster node's, over the client's `redisOptions`). */
interface AskedServer {
  host: string;
  port: number;
  family?: number;
  username?: string;
  password?: string;
  tls?: RedisOptions['tls'];
}

/**
 * A cluster's startup nodes as ioredis itself reads them (`normalizeNodeOptions`: a port, `host:port`, a
 * `redis://user:password@host:port` URL, an object — whose own user, password and `tls` come before
 * `redisOptions`), each kept only where it names a port; none where this ioredis keeps that function elsewhere.
 */
async function loadStartupNodeReader(): Promise<(nodes: readonly unknown[]) => AskedServer[]> {
  let normalize: ((nodes: unknown[]) => Record<string, unknown>[]) | undefined;
  try {
    const util = (await import('ioredis/built/cluster/util.js')) as unknown as {
      normalizeNodeOptions?: typeof normalize;
      default?: { normalizeNodeOptions?: typeof normalize };
    };
    normalize = util.normalizeNodeOptions ?? util.default?.normalizeNodeOptions;
  } catch {
    normalize = undefined;
  }
  if (typeof normalize !== 'function') return () => [];
  const read = normalize;
  return (nodes) =>
    nodes.flatMap((node) => {
      let options: Record<string, unknown> | undefined;
      try {
        options = read([node])[0]; // throws on what ioredis would refuse too
      } catch {
        return [];
      }
      const { host, port, family, username, password, tls } = options ?? {};
      if (typeof host !== 'string' || typeof port !== 'number') return [];
      return [
        {
          host,
          port,
          ...(typeof family === 'number' && { family }),
          ...(typeof username === 'string' && username !== '' && { username }),
          ...(typeof password === 'string' && password !== '' && { password }),
          ...(tls !== null && typeof tls === 'object' && { tls: tls as RedisOptions['tls'] }),
        },
      ];
    });
}

/**
 * A connection that failed because none of the servers it asks first answered (the sentinels, a cluster's
 * startup nodes — see {@link askableOf}): they are asked again (one short-lived connection each, with the
 * connection's own options for them, all at once, until `deadline`), and `err` is returned with the first one's
 * reason said (`… no sentinel gave the master's address; a sentinel's connection failed
 * (SELF_SIGNED_CERT_IN_CHAIN): the server's TLS certificate chain ends in an untrusted root (ca)`). Anything
 * else, or no reason learned in time, is `err` as it is. Runs only on a failed connection.
 */
async function whyNoneAnswered(connection: Connection, err: unknown, deadline: number): Promise<unknown> {
  const budget = Math.min(deadline - Date.now() - 50, ASK_AGAIN_MS);
  if (!(err instanceof TokenwardenError) || budget < 100) return err;
  const askable = askableOf(connection, err, await loadStartupNodeReader());
  if (askable === undefined || askable.servers.length === 0) return err;
  let reasons: (string | undefined)[];
  try {
    const { Redis } = await loadIoredis();
    reasons = await Promise.all(
      askable.servers.slice(0, 8).map(async (server) => {
        const probe = new Redis({
          ...askable.options,
          ...server,
          lazyConnect: true,
          retryStrategy: () => null,
          enableReadyCheck: false,
          maxRetriesPerRequest: 0,
          connectTimeout: budget,
          commandTimeout: budget,
        });
        let first: unknown;
        probe.on('error', (e: unknown) => (first ??= e));
        const asking = probe
          .connect()
          .then(() => askable.ask(probe as unknown as Connection))
          .catch((e: unknown) => reasonOf(askable, first ?? e));
        // One limit for the whole question (ioredis's connectTimeout and commandTimeout would add up).
        let timer: ReturnType<typeof setTimeout> | undefined;
        const outOfTime = new Promise<string>((resolve) => {
          timer = setTimeout(resolve, budget, `a ${askable.noun} did not answer in time`);
        });
        try {
          return await Promise.race([asking, outOfTime]);
        } finally {
          clearTimeout(timer);
          probe.disconnect();
        }
      }),
    );
  } catch {
    return err; // whatever goes wrong while asking leaves `err` as it is
  }
  const reason = reasons.find((r) => r !== undefined);
  if (reason === undefined) return err;
  const { message, cause } = err as TokenwardenError;
  return new TokenwardenError('ERR_STORE', `${message}: no ${askable.noun} gave ${askable.wanted}; ${reason}`, {
    cause,
  });
}

/**
 * The longest a failed call waits to learn why the servers a connection asks first gave nothing (within the
 * store's `timeout`): a refused certificate, password or connection is known in a round trip or two; a server
 * that does not answer is said so after this.
 */
const ASK_AGAIN_MS = 1000;

/** Why a server asked again gave nothing, in words (a clause: `a sentinel …`), if its error says. */
function reasonOf(askable: Askable, err: unknown): string | undefined {
  const { noun, tlsOption } = askable;
  // Plain asked of a server that serves TLS only: it closes the connection at the first bytes. TLS without a
  // client certificate, of one that requires it: the same.
  const hint =
    askable.options.tls === undefined
      ? ` (a ${noun} that serves TLS only, and no ${tlsOption} given?)`
      : withoutClientCertificate(askable.options.tls)
        ? clientCertificateHint(tlsOption)
        : '';
  const message = (err as { message?: unknown } | null)?.message;
  const said = typeof message === 'string' ? askable.replyReason(message) : undefined;
  if (said !== undefined) return said;
  const code = failureCode(err);
  const words = code === undefined ? undefined : REPLIES.get(code);
  if (words !== undefined && replyCode(err) !== undefined) return `a ${noun} answered (${code}): ${words}`;
  if (words !== undefined) {
    const closed = code === 'ECONNRESET' || code === 'EPIPE';
    return `a ${noun}'s connection failed (${code}): ${words}${closed ? hint : ''}`;
  }
  if (typeof message !== 'string') return undefined;
  if (/^Connection is closed\b/.test(message)) return `a ${noun} closed the connection without answering${hint}`;
  if (/timed out/i.test(message)) return `a ${noun} did not answer in time`;
  return undefined;
}

/** Resolves when `connection` is ready; rejects on its next error or its end. */
function whenReady(connection: Connection): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const done = (err?: unknown): void => {
      connection.off('ready', onReady);
      connection.off('error', onError);
      connection.off('end', onEnd);
      if (err === undefined) resolve();
      else reject(err instanceof TokenwardenError ? err : storeError(err, 'redis connect'));
    };
    const onReady = (): void => done();
    const onError = (err: Error): void => done(err);
    const onEnd = (): void => done(new TokenwardenError('ERR_STORE', 'the Redis connection was closed'));
    connection.on('ready', onReady);
    connection.on('error', onError);
    connection.on('end', onEnd);
    if (connection.status === 'ready') done();
  });
}

async function loadIoredis(): Promise<{ Redis: typeof Redis }> {
  try {
    const mod = (await import('ioredis')) as unknown as { Redis?: typeof Redis; default: typeof Redis };
    return { Redis: mod.Redis ?? mod.default };
  } catch (err) {
    throw new TokenwardenError('ERR_CONFIG', "RedisStore needs the 'ioredis' package: npm install ioredis", {
      cause: err,
    });
  }
}
