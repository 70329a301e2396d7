/**
 * The in-process layer of `UserTokens`: an LRU of subjects whose access tokens are served without I/O
 * until they turn stale or the record is due to be read again.
 *
 * @module
 */
import { LRUCache } from 'lru-cache';
import type { Clock } from '../clock.js';
import type { TokenwardenError } from '../errors.js';
import { type RefreshPolicy, staleAt } from '../policy.js';
import type { Token } from '../token.js';
import type { StoredEntry, UserRecord } from './record.js';
import { DEFAULT_SPEC, type Spec, covers, specOf, splitScope } from './spec.js';

/**
 * A token is served until `min(5 s, 15 % of its lifetime)` before it expires, so that it is still valid when
 * it reaches the API even if the event loop or the network is slow; past that, callers wait for the refresh
 * (which starts at about 70 % of the lifetime).
 */
const EXPIRY_LEEWAY_MS = 5_000;
const EXPIRY_LEEWAY_RATIO = 0.15;

/** An access token held in memory, with the moment it turns stale in this process. */
export interface Held {
  readonly spec: Spec;
  readonly granted: ReadonlySet<string> | null;
  readonly token: Token;
  readonly staleAt: number;
  /** Served until then: a little before `expiresAt`, so that it is still valid when it reaches the API. */
  readonly usableUntil: number;
}

/** Refresh failures of one request of one subject. */
export interface Failure {
  failures: number;
  lastError: TokenwardenError;
  /** No background attempt before this (backoff). */
  nextAttemptAt: number;
  /** No attempt at all before this (`Retry-After`). */
  blockedUntil: number;
  /** An error that waiting will not heal is returned again until this time. */
  permanentUntil: number;
}

/** What this process knows about one subject. */
export interface Cached {
  /**
   * The stored text of the record (the string the store holds: this layer's tokens are slices of it), read
   * again when the record itself is needed — a refresh, a write-back — so it is not held twice.
   */
  readonly text: string | undefined;
  /** The record itself, only when there is no text to read it from (never encoded nor decoded). */
  readonly parsed: UserRecord | undefined;
  /** The login it belongs to (a new `save()` starts another). */
  readonly session: string;
  /** The record's place in the subject's history (see the fleet core). */
  readonly seq: number;
  version: number | undefined;
  hasRefreshToken: boolean;
  readonly entries: readonly Held[];
  /** The entry serving the default request (no options): the hot path. */
  readonly dflt: Held | undefined;
  /** The hot path, flattened: `dflt.token` is served without I/O until `min(dflt.staleAt, revalidateAt)`. */
  readonly hotToken: Token | undefined;
  hotUntil: number;
  /** Read the store again (in the background) after then. */
  revalidateAt: number;
  failures: Map<string, Failure> | undefined;
}

/**
 * How good a held token must be: `fresh` (not yet due for refresh), `valid` (usable, with its leeway before
 * expiry), or `unexpired` (only for the token a refresh has just returned).
 */
export type Level = 'valid' | 'fresh' | 'unexpired';

/** The held token serving `want`: the exact request first, then any whose granted scope covers it. */
export function find(cached: Cached, want: Spec, now: number, level: Level): Held | undefined {
  let best: Held | undefined;
  for (const held of cached.entries) {
    if (level === 'unexpired' ? now >= (held.token.expiresAt ?? Infinity) : now >= held.usableUntil) continue;
    if (level === 'fresh' && now >= held.staleAt) continue;
    if (!covers(held.spec, held.granted, want)) continue;
    if (held.spec.key === want.key) return held;
    if (best === undefined || (held.token.expiresAt ?? Infinity) > (best.token.expiresAt ?? Infinity)) best = held;
  }
  return best;
}

/** Sets when a subject's record is next read from the store, and with it the hot path's deadline. */
export function revalidated(cached: Cached, at: number): void {
  cached.revalidateAt = at;
  cached.hotUntil = cached.dflt === undefined ? -Infinity : Math.min(cached.dflt.staleAt, at);
}

/** The subjects this process holds. */
export class SubjectCache {
  readonly #lru: LRUCache<string, Cached>;
  readonly #scopeSets = new Map<string, ReadonlySet<string>>();

  constructor(
    max: number,
    private readonly policy: RefreshPolicy,
    private readonly random: () => number,
    private readonly clock: Clock,
    private readonly revalidateMs: number,
  ) {
    this.#lru = new LRUCache({ max });
  }

  get size(): number {
    return this.#lru.size;
  }

  /** The subject, marked as recently used. */
  get(subject: string): Cached | undefined {
    return this.#lru.get(subject);
  }

  peek(subject: string): Cached | undefined {
    return this.#lru.peek(subject);
  }

  delete(subject: string): void {
    this.#lru.delete(subject);
  }

  clear(): void {
    this.#lru.clear();
  }

  entries(): IterableIterator<[string, Cached]> {
    return this.#lru.entries();
  }

  /**
   * Makes the layer reflect `record` (as of `version`); resolves to the subject's entry and the access tokens
   * it did not hold before. The same version as held only pushes the revalidation deadline.
   */
  adopt(
    subject: string,
    record: UserRecord,
    text: string | undefined,
    seq: number,
    version: number | undefined,
  ): { cached: Cached; added: StoredEntry[] } {
    const now = this.clock.now();
    const previous = this.#lru.peek(subject);
    if (previous !== undefined && version !== undefined && previous.version === version && previous.seq === seq) {
      revalidated(previous, now + this.revalidateMs);
      return { cached: previous, added: [] };
    }
    const added: StoredEntry[] = [];
    // Made by map(): an array of exactly this length (push() on [] reserves 17 slots, 136 bytes per user).
    const entries: Held[] = record.accessTokens.map((stored): Held => {
      const old = previous?.entries.find((h) => h.token.accessToken === stored.token.accessToken);
      if (old !== undefined) return old;
      const { token } = stored;
      const lifetime = token.expiresAt === undefined ? 0 : Math.max(0, token.expiresAt - token.issuedAt);
      added.push(stored);
      return {
        spec: specOf(stored.spec),
        granted: this.#scopeSet(token.scope),
        token,
        staleAt: staleAt(token, this.policy, this.random()),
        usableUntil:
          token.expiresAt === undefined
            ? Infinity
            : token.expiresAt - Math.min(EXPIRY_LEEWAY_MS, lifetime * EXPIRY_LEEWAY_RATIO),
      };
    });
    const sameSession = previous !== undefined && previous.session === record.session;
    const dflt = entries.find((h) => h.spec.key === DEFAULT_SPEC.key);
    const cached: Cached = {
      text,
      parsed: text === undefined ? record : undefined,
      session: record.session,
      seq,
      version,
      hasRefreshToken: record.refreshToken !== undefined,
      entries,
      dflt,
      hotToken: dflt?.token,
      hotUntil: -Infinity,
      revalidateAt: -Infinity,
      failures: sameSession ? previous.failures : undefined,
    };
    revalidated(cached, version === undefined ? now : now + this.revalidateMs);
    this.#lru.set(subject, cached);
    return { cached, added };
  }

  /** The set of a scope string, shared by every token with the same scope (most users have the same). */
  #scopeSet(scope: string | undefined): ReadonlySet<string> | null {
    if (scope === undefined) return null;
    let set = this.#scopeSets.get(scope);
    if (set === undefined) {
      if (this.#scopeSets.size >= 1000) this.#scopeSets.clear();
      set = new Set(splitScope(scope));
      this.#scopeSets.set(scope, set);
    }
    return set;
  }
}
