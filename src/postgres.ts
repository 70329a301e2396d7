/**
 * `tokenwarden/postgres`: the PostgreSQL token store. Needs the optional peer dependency `pg`, loaded on
 * first use (not at import) when the store is built from a `connectionString`.
 *
 * @example
 * ```ts
 * import { PostgresStore } from 'tokenwarden/postgres';
 * const store = new PostgresStore({ connectionString: 'postgres://app@db:5432/app' });
 * ```
 *
 * @module
 */
export { PostgresStore, type PostgresStoreCommonOptions, type PostgresStoreOptions } from './stores/postgres.js';
