/**
 * `tokenwarden/redis`: the Redis token store. Needs the optional peer dependency `ioredis`, loaded on
 * first use (not at import) when the store is built from a `url`.
 *
 * @example
 * ```ts
 * import { RedisStore } from 'tokenwarden/redis';
 * const store = new RedisStore({ url: 'redis://127.0.0.1:6379' });
 * ```
 *
 * @module
 */
export { RedisStore, type RedisStoreCommonOptions, type RedisStoreOptions } from './stores/redis.js';
