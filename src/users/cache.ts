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

/**
 * An access token held in memory, with the moment it turns stale in this process. Three fields: what it is
 * served until (a little before `expiresAt`) and the set of its granted scope are derived when asked for.
 */
export interface Held {
  readonly spec: Spec;
  readonly token: Token;
  readonly staleAt: number;
}

/** Refresh failures of one request of one subject. Its deadlines are on the monotonic clock (`Clock.monotonic`). */
export interface Failure {
  failures: number;
  lastError: TokenwardenError;
  /** No background attempt before this (backoff). */
  nextAttemptAt: number;
  /** A failure of the server's: callers get it again until this time (a second at most), without a request. */
  failFastUntil: number;
  /** No attempt at all before this (`Retry-After`). */
  blockedUntil: number;
  /** An error that waiting will not heal is returned again until this time. */
  permanentUntil: number;
}

/** A subject's refresh failures by request, for one login (a new `save()` forgets them). */
export interface Failures {
  readonly session: string;
  readonly byRequest: Map<string, Failure>;
}

/**
 * What this process knows about one subject: as few fields as serve the hot path (this layer holds up to
 * `cache.max` subjects). Everything else is read again from the stored text when needed — a refresh, a
 * write-back, a listing — so that no token is held twice.
 */
export interface Cached {
  /**
   * The stored text of the record (the string the store holds: this layer's tokens are slices of it), or the
   * record itself when it was never encoded nor decoded.
   */
  readonly source: string | UserRecord;
  /** The record's place in the subject's history (see the fleet core). */
  readonly seq: number;
  version: number | undefined;
  hasRefreshToken: boolean;
  /** The held access tokens: one (most subjects), or several. */
  readonly entries: Held | readonly Held[];
  /**
   * The entry serving the default request (no options): the hot path serves its token without I/O until
   * `min(dflt.staleAt, revalidateAt)`.
   */
  readonly dflt: Held | undefined;
  /** Read the store again (in the background) after then. */
  revalidateAt: number;
  failures: Failures | undefined;
}

/**
 * How good a held token must be: `fresh` (not yet due for refresh), `valid` (usable, with its leeway before
 * expiry), or `unexpired` (only for the token a refresh has just returned).
 */
export type Level = 'valid' | 'fresh' | 'unexpired';

/** The subject's held tokens as a list. */
function heldList(cached: Cached): readonly Held[] {
  const { entries } = cached;
  return isList(entries) ? entries : [entries];
}

/** When a held token stops being served: `min(5 s, 15 % of its lifetime)` before it expires. */
function usableUntil(token: Token): number {
  if (token.expiresAt === undefined) return Infinity;
  const lifetime = Math.max(0, token.expiresAt - token.issuedAt);
  return token.expiresAt - Math.min(EXPIRY_LEEWAY_MS, lifetime * EXPIRY_LEEWAY_RATIO);
}

/** The held token serving `want`: the exact request first, then any whose granted scope covers it. */
export function find(cached: Cached, want: Spec, now: number, level: Level): Held | undefined {
  const { entries } = cached;
  if (!isList(entries)) return serves(entries, want, now, level) ? entries : undefined;
  let best: Held | undefined;
  for (const held of entries) {
    if (!serves(held, want, now, level)) continue;
    if (held.spec.key === want.key) return held;
    if (best === undefined || (held.token.expiresAt ?? Infinity) > (best.token.expiresAt ?? Infinity)) best = held;
  }
  return best;
}

function serves(held: Held, want: Spec, now: number, level: Level): boolean {
  if (level === 'unexpired' ? now >= (held.token.expiresAt ?? Infinity) : now >= usableUntil(held.token)) return false;
  if (level === 'fresh' && now >= held.staleAt) return false;
  return covers(held.spec, held.spec.key === want.key ? null : scopeSet(held.token.scope), want);
}

function isList(entries: Held | readonly Held[]): entries is readonly Held[] {
  return Array.isArray(entries);
}

/** The set of a scope string, shared by every token with the same scope (most users have the same). */
const scopeSets = new Map<string, ReadonlySet<string>>();
function scopeSet(scope: string | undefined): ReadonlySet<string> | null {
  if (scope === undefined) return null;
  let set = scopeSets.get(scope);
  if (set === undefined) {
    if (scopeSets.size >= 1000) scopeSets.clear();
    set = new Set(splitScope(scope));
    scopeSets.set(scope, set);
  }
  return set;
}

/**
 * The subjects this process holds: an LRU of at most `max`, plus the subjects it evicted while they were pinned
 * — a refresh in flight, or a refreshed record the store has not taken yet — which stay held until unpinned.
 * An attempt in flight reads the subject's record from here (what to spend, whether it is served): evicting it
 * then would report a signed-in user as signed out, or spend a refresh token already rotated.
 */
export class SubjectCache {
  readonly #lru: LRUCache<string, Cached>;
  /** Pins per subject (a subject is pinned once per attempt in flight, once while its record is unwritten). */
  readonly #pins = new Map<string, number>();
  /** Pinned subjects the LRU evicted. */
  readonly #kept = new Map<string, Cached>();

  constructor(
    max: number,
    private readonly policy: RefreshPolicy,
    private readonly random: () => number,
    private readonly clock: Clock,
    private readonly revalidateMs: number,
  ) {
    this.#lru = new LRUCache({
      max,
      dispose: (value, subject, reason) => {
        if (reason === 'evict' && this.#pins.has(subject)) this.#kept.set(subject, value);
      },
    });
  }

  /** Subjects held: at most `max`, plus pinned ones evicted meanwhile. */
  get size(): number {
    return this.#lru.size + this.#kept.size;
  }

  /** The subject, marked as recently used. */
  get(subject: string): Cached | undefined {
    return this.#lru.get(subject) ?? this.#kept.get(subject);
  }

  peek(subject: string): Cached | undefined {
    return this.#lru.peek(subject) ?? this.#kept.get(subject);
  }

  delete(subject: string): void {
    this.#lru.delete(subject);
    this.#kept.delete(subject);
  }

  clear(): void {
    this.#lru.clear();
    this.#kept.clear();
    this.#pins.clear();
  }

  *entries(): IterableIterator<[string, Cached]> {
    yield* this.#lru.entries();
    yield* this.#kept.entries();
  }

  /** Keeps the subject held (even past `max`) until as many {@link SubjectCache.unpin} calls. */
  pin(subject: string): void {
    this.#pins.set(subject, (this.#pins.get(subject) ?? 0) + 1);
  }

  unpin(subject: string): void {
    const pins = (this.#pins.get(subject) ?? 0) - 1;
    if (pins > 0) {
      this.#pins.set(subject, pins);
      return;
    }
    this.#pins.delete(subject);
    this.#kept.delete(subject); // evicted meanwhile: gone now, as the LRU wanted
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
    const previous = this.peek(subject);
    if (previous !== undefined && version !== undefined && previous.version === version && previous.seq === seq) {
      previous.revalidateAt = now + this.revalidateMs;
      return { cached: previous, added: [] };
    }
    const added: StoredEntry[] = [];
    const before = previous === undefined ? [] : heldList(previous);
    const held = (stored: StoredEntry): Held => {
      const old = before.find((h) => h.token.accessToken === stored.token.accessToken);
      // Held before: same moment of staleness, but the token of this record (its strings are slices of the new
      // text: keeping the old token would keep the old text alive beside it).
      if (old !== undefined) {
        return old.token === stored.token ? old : { spec: old.spec, token: stored.token, staleAt: old.staleAt };
      }
      added.push(stored);
      return {
        spec: specOf(stored.spec),
        token: stored.token,
        staleAt: staleAt(stored.token, this.policy, this.random()),
      };
    };
    // One held token is kept as itself; several in an array of exactly their number (map(), not push()).
    const stored = record.accessTokens;
    const entries: Held | Held[] = stored.length === 1 ? held(stored[0]!) : stored.map(held);
    const dflt = isList(entries)
      ? entries.find((h) => h.spec.key === DEFAULT_SPEC.key)
      : entries.spec.key === DEFAULT_SPEC.key
        ? entries
        : undefined;
    const cached: Cached = {
      source: text ?? record,
      seq,
      version,
      hasRefreshToken: record.refreshToken !== undefined,
      entries,
      dflt,
      revalidateAt: version === undefined ? now : now + this.revalidateMs,
      failures: previous?.failures?.session === record.session ? previous.failures : undefined,
    };
    this.#kept.delete(subject);
    this.#lru.set(subject, cached);
    return { cached, added };
  }
}
