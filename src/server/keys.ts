/**
 * The issuer's signing keys, kept through an outage: a {@link KeySet} holds the last JWKS that was fetched
 * successfully and keeps using it while refetches fail, up to `maxStale` past `cacheMaxAge`; it refreshes
 * ahead of `cacheMaxAge` in the background; concurrent misses share one fetch; an unknown `kid` refetches at
 * most once per `cooldown`; and every fetch goes through the endpoint's backoff ({@link Endpoint}).
 *
 * jose selects and imports keys (`createLocalJWKSet` over the last good JWKS); each key is then kept as a
 * `KeyObject` ({@link VerificationKey}) and the selection for a header (`alg`, `kid`) is remembered with the
 * keys it was made in, so that a known header costs one `Map` lookup. {@link verifyJwt} is the one function
 * through which every signature is checked (with `node:crypto`, see `jws.ts`).
 *
 * @module
 */
import {
  type CompactJWSHeaderParameters,
  type JSONWebKeySet,
  type JWK,
  type JWSHeaderParameters,
  type JWTPayload,
  type JWTVerifyGetKey,
  createLocalJWKSet,
  errors,
} from 'jose';
import { TokenwardenError, isTokenwardenError } from '../errors.js';
import { type ResponseMeta, boundedFetch, describeUrl } from '../http/transport.js';
import * as telemetry from '../telemetry/hooks.js';
import { parseJsonObject } from '../json.js';
import { checkUrl } from '../sources/client.js';
import {
  type CompactJws,
  type JwtRules,
  type VerificationKey,
  checkSignature,
  jwtClaims,
  parseCompactJws,
  verificationKey,
} from './jws.js';
import type { Upstreams } from './upstream.js';

/**
 * How a key set is cached and refreshed (milliseconds).
 *
 * @example
 * ```ts
 * const options: KeySetOptions = { cacheMaxAgeMs: 600_000, maxStaleMs: 43_200_000, cooldownMs: 30_000 };
 * ```
 */
export interface KeySetOptions {
  /** How long fetched keys are used before they are fetched again. */
  cacheMaxAgeMs: number;
  /** How long past `cacheMaxAge` the last good keys are still used while refetches fail. */
  maxStaleMs: number;
  /** Least time between a fetch and a refetch caused by an unknown `kid`. */
  cooldownMs: number;
}

/**
 * The state of one key set, as `verify.health()` reports it.
 *
 * @example
 * ```ts
 * const stale = verify.health().keys.filter((k) => k.stale);
 * ```
 */
export interface KeySetHealth {
  /** The issuer whose `jwks_uri` is used, or the configured `jwksUri` (origin and path). */
  readonly source: string;
  /** The JWKS URL (origin and path), once known. */
  readonly url?: string;
  /** Keys in the set (0 before the first successful fetch). */
  readonly keys: number;
  /** When the keys in use were fetched, epoch ms. */
  readonly fetchedAt?: number;
  /** How old they are, ms. */
  readonly ageMs?: number;
  /** They are older than `cacheMaxAge` and still used because refetching failed. */
  readonly stale: boolean;
  /** The last moment they will be used if refetching keeps failing, epoch ms. */
  readonly usableUntil?: number;
}

/**
 * Key set events, emitted by a verifier (`verify.on(…)`).
 *
 * @example
 * ```ts
 * verify.on('staleKeys', ({ url, ageMs, usableForMs }) => log.warn({ url, ageMs, usableForMs }, 'serving last known keys'));
 * ```
 */
export interface KeySetEvents {
  /** Keys older than `cacheMaxAge` are being used because the JWKS could not be fetched (once per episode). */
  staleKeys: [{ url: string; ageMs: number; usableForMs: number; error: TokenwardenError | undefined }];
  /** The last known keys passed `cacheMaxAge + maxStale` and were dropped: JWTs are answered 503 until a fetch succeeds. */
  keysExpired: [{ url: string; ageMs: number }];
}

interface Held {
  readonly getKey: JWTVerifyGetKey;
  /** jose's selection for a header (`alg` and `kid`), as keys ready for `crypto.verify`: only selections that found keys. */
  readonly selected: Map<string, readonly VerificationKey[]>;
  readonly count: number;
  readonly fetchedAt: number;
  readonly url: string;
}

/**
 * One issuer's JWKS (or one configured `jwksUri`), with last-known keys through an outage. Its
 * {@link KeySet.select} picks the keys for a token's header.
 */
export class KeySet {
  readonly source: string;
  readonly #upstreams: Upstreams;
  readonly #options: KeySetOptions;
  /** The JWKS URL: fixed, or from the issuer's metadata. */
  readonly #resolveUrl: () => Promise<string>;
  #held: Held | undefined;
  #lastAttemptAt = -Infinity;
  #refreshing: Promise<Held> | undefined;
  #stale = false;
  /** The last refresh failed (discovery or JWKS) and none succeeded since. */
  #failed = false;
  /** The last URL fetched: the endpoint whose failures decide whether stale keys are served. */
  #url: string | undefined;
  /** {@link KeySet.expire} was called: the held keys are used only if a refetch fails. */
  #expired = false;

  constructor(source: string, resolveUrl: () => Promise<string>, upstreams: Upstreams, options: KeySetOptions) {
    this.source = source.replace(/[?#].*$/s, ''); // never a query string (a JWKS proxy's key, say)
    this.#resolveUrl = resolveUrl;
    this.#upstreams = upstreams;
    this.#options = options;
  }

  /**
   * The keys for a JWS header whose `alg` is allowed: at once (no promise) when this header was seen with the
   * keys held now and they are younger than `cacheMaxAge`; otherwise through jose's selection, after a fetch
   * when needed. Rejects with a {@link TokenwardenError} when keys could not be had (the token cannot be
   * judged: 503), or jose's `JWKSNoMatchingKey` (or `JWKSMultipleMatchingKeys` when none of several could be
   * imported) when the set, fresh enough, has no key for the header (the token is bad: 401).
   */
  select(header: JWSHeaderParameters): readonly VerificationKey[] | Promise<readonly VerificationKey[]> {
    const held = this.#held;
    const kid = header.kid as unknown;
    if (held !== undefined && !this.#expired && (kid === undefined || typeof kid === 'string')) {
      const keys = held.selected.get(selection(header.alg as string, kid));
      const age = this.#upstreams.clock.now() - held.fetchedAt;
      // The same decisions as #current() for keys younger than cacheMaxAge.
      if (keys !== undefined && age < this.#options.cacheMaxAgeMs) {
        if (age >= this.#refreshAt()) this.#background();
        return keys;
      }
    }
    return this.#select(header);
  }

  async #select(header: JWSHeaderParameters): Promise<readonly VerificationKey[]> {
    const held = await this.#current();
    try {
      return await selectIn(held, header);
    } catch (err) {
      if ((err as { code?: unknown }).code !== 'ERR_JWKS_NO_MATCHING_KEY') throw err;
      // A key published since the last fetch (rotation), or a forged kid: refetch, at most once per cooldown.
      if (this.#upstreams.clock.now() - this.#lastAttemptAt >= this.#options.cooldownMs) {
        return selectIn(await this.#refresh(), header);
      }
      // While the JWKS cannot be fetched, a kid we do not know may be a key published meanwhile: not judged.
      if (this.#failing()) throw this.#cannotJudge();
      throw err;
    }
  }

  /**
   * Makes the next use of this set wait for a fresh JWKS, whatever the age of the keys held and the cooldown
   * (after an emergency key revocation: `verify.clearCache()`). While the JWKS cannot be fetched, the held keys
   * are served as stale ones, as in any outage.
   */
  expire(): void {
    if (this.#held !== undefined) this.#expired = true;
    this.#lastAttemptAt = -Infinity;
  }

  /** The last attempt to fetch the keys (discovery or JWKS) failed. */
  get failing(): boolean {
    return this.#failed;
  }

  /** Fetches the keys unless fresh ones are held (for `verify.ready()`); rejects when they cannot be had. */
  async load(): Promise<void> {
    const held = this.#usable(this.#upstreams.clock.now());
    if (held === undefined || this.#upstreams.clock.now() - held.fetchedAt >= this.#refreshAt()) await this.#refresh();
  }

  health(now: number): KeySetHealth {
    const held = this.#usable(now, false);
    const url = held?.url ?? (this.#url === undefined ? undefined : describeUrl(this.#url));
    if (held === undefined) return { source: this.source, ...(url !== undefined && { url }), keys: 0, stale: false };
    const ageMs = now - held.fetchedAt;
    return {
      source: this.source,
      url: held.url,
      keys: held.count,
      fetchedAt: held.fetchedAt,
      ageMs,
      stale: ageMs >= this.#options.cacheMaxAgeMs,
      usableUntil: held.fetchedAt + this.#options.cacheMaxAgeMs + this.#options.maxStaleMs,
    };
  }

  /** The keys to use now, refreshing first when there are none or they are due and the endpoint is healthy. */
  async #current(): Promise<Held> {
    const now = this.#upstreams.clock.now();
    const held = this.#usable(now);
    if (held === undefined) {
      // While the JWKS fails, a request does not wait on another's probe (it may hang until the time limit).
      const endpoint = this.#endpoint();
      if (this.#refreshing !== undefined && endpoint?.failing === true) throw endpoint.retryLater();
      return this.#refresh();
    }
    const age = this.#expired ? Infinity : now - held.fetchedAt;
    if (age < this.#refreshAt()) return held;
    if (age < this.#options.cacheMaxAgeMs) {
      this.#background(); // ahead of cacheMaxAge, off the request path
      return held;
    }
    if (this.#failing()) {
      // Known down: no request waits for it; the backoff decides when it is probed again.
      this.#background();
      return this.#serveStale(held, undefined);
    }
    // Past cacheMaxAge with the endpoint healthy: wait for the refresh (a key the authorization server
    // withdrew is not used longer than cacheMaxAge while it answers), and fall back to the held keys.
    try {
      return await this.#refresh();
    } catch (err) {
      return this.#serveStale(held, isTokenwardenError(err) ? err : undefined);
    }
  }

  /** Held keys not past `cacheMaxAge + maxStale`; older ones are dropped (with a `keysExpired` event). */
  #usable(now: number, drop = true): Held | undefined {
    const held = this.#held;
    if (held === undefined) return undefined;
    const ageMs = now - held.fetchedAt;
    if (ageMs < this.#options.cacheMaxAgeMs + this.#options.maxStaleMs) return held;
    if (drop) {
      this.#held = undefined;
      this.#stale = false;
      this.#upstreams.emit('keysExpired', { url: held.url, ageMs });
    }
    return undefined;
  }

  /** When, in ms after a fetch, keys are refreshed in the background: a tenth (at most a minute) before cacheMaxAge. */
  #refreshAt(): number {
    const max = this.#options.cacheMaxAgeMs;
    return max - Math.min(max / 10, 60_000);
  }

  #serveStale(held: Held, error: TokenwardenError | undefined): Held {
    if (!this.#stale) {
      this.#stale = true;
      const now = this.#upstreams.clock.now();
      this.#upstreams.emit('staleKeys', {
        url: held.url,
        ageMs: now - held.fetchedAt,
        usableForMs: held.fetchedAt + this.#options.cacheMaxAgeMs + this.#options.maxStaleMs - now,
        error: error ?? this.#endpoint()?.health().lastError,
      });
    }
    return held;
  }

  #failing(): boolean {
    return this.#endpoint()?.failing === true;
  }

  #endpoint() {
    return this.#url === undefined ? undefined : this.#upstreams.endpoint('jwks', this.#url);
  }

  #cannotJudge(): TokenwardenError {
    const endpoint = this.#endpoint();
    const now = this.#upstreams.clock.now();
    return new TokenwardenError(
      'ERR_RETRY_LATER',
      `no key for this token in the last known JWKS of ${endpoint?.url ?? this.source}, which cannot be fetched now`,
      { cause: endpoint?.health().lastError, retryAfterMs: Math.max(1000, endpoint?.retryInMs(now) ?? 0) },
    );
  }

  #background(): void {
    this.#refresh().catch(() => undefined); // recorded by the endpoint (events, health)
  }

  /** One fetch for every concurrent caller: resolves the URL (discovery), then fetches through the backoff. */
  #refresh(): Promise<Held> {
    if (this.#refreshing !== undefined) return this.#refreshing;
    const run = (async (): Promise<Held> => {
      const url = await this.#resolveUrl();
      this.#url = url;
      const endpoint = this.#upstreams.endpoint('jwks', url);
      const jwks = await endpoint.request((meta) => {
        this.#lastAttemptAt = this.#upstreams.clock.now();
        return telemetry.countRequest('jwks', () => this.#fetch(url, meta));
      });
      const held: Held = {
        getKey: createLocalJWKSet(jwks),
        selected: new Map(),
        count: jwks.keys.length,
        fetchedAt: this.#upstreams.clock.now(),
        url: endpoint.url,
      };
      this.#held = held;
      this.#expired = false;
      this.#stale = false;
      this.#failed = false;
      return held;
    })();
    run.catch(() => {
      this.#failed = true;
    });
    const shared = run.finally(() => {
      if (this.#refreshing === shared) this.#refreshing = undefined;
    });
    this.#refreshing = shared;
    return shared;
  }

  /** One JWKS request: bounded, no redirects, and strict about what counts as a key set. */
  async #fetch(url: string, meta: ResponseMeta): Promise<JSONWebKeySet> {
    const { fetch, timeoutMs, maxResponseBytes } = this.#upstreams.options;
    const transport = boundedFetch({ timeoutMs, maxResponseBytes, ...(fetch && { fetch }) }, meta);
    const response = await transport(url, {
      headers: { accept: 'application/jwk-set+json, application/json' },
      redirect: 'manual',
    });
    const where = describeUrl(url);
    if (response.status !== 200) {
      throw new TokenwardenError('ERR_HTTP_STATUS', `JWKS request to ${where} answered ${response.status}`, {
        status: response.status,
      });
    }
    const body = parseJsonObject(await response.text());
    const members: unknown = body?.['keys'];
    if (!Array.isArray(members)) {
      throw new TokenwardenError('ERR_INVALID_RESPONSE', `JWKS from ${where} is not a JSON Web Key Set`);
    }
    // RFC 7517 §5: members a verifier cannot use are ignored, not the set. jose ignores keys of unknown kinds
    // and malformed keys until a token names one; a member that is not even an object would make it refuse
    // the whole set, so it is left out here (a set with nothing else is still not a key set).
    const keys = members.filter((m): m is JWK => m !== null && typeof m === 'object' && !Array.isArray(m));
    if (keys.length === 0 && members.length > 0) {
      throw new TokenwardenError('ERR_INVALID_RESPONSE', `JWKS from ${where} is not a JSON Web Key Set`);
    }
    const jwks: JSONWebKeySet = { keys };
    try {
      createLocalJWKSet(jwks); // the same checks as when it is used: a malformed set is a failed fetch
    } catch {
      throw new TokenwardenError('ERR_INVALID_RESPONSE', `JWKS from ${where} is not a JSON Web Key Set`);
    }
    return jwks;
  }
}

/**
 * The key sets of one verifier, by issuer (its discovered `jwks_uri`) or by configured `jwksUri`. The JWT
 * strategy and signed introspection responses share them.
 *
 * @example
 * ```ts
 * const keySets = new KeySets(upstreams, { cacheMaxAgeMs: 600_000, maxStaleMs: 43_200_000, cooldownMs: 30_000 });
 * const { payload } = await verifyJwt(token, keySets.forIssuer(issuer), jwtRules({ algorithms, audience }), issuer, Date.now());
 * ```
 */
export class KeySets {
  readonly #upstreams: Upstreams;
  readonly #options: KeySetOptions;
  readonly #sets = new Map<string, KeySet>();

  constructor(upstreams: Upstreams, options: KeySetOptions) {
    this.#upstreams = upstreams;
    this.#options = options;
  }

  /** The key set at `jwks_uri` of `issuer`'s metadata. */
  forIssuer(issuer: string): KeySet {
    return this.#get(`issuer ${issuer}`, issuer, async () => {
      const metadata = await this.#upstreams.metadata(issuer);
      if (typeof metadata.jwks_uri !== 'string') {
        throw new TokenwardenError('ERR_DISCOVERY', 'the issuer metadata has no jwks_uri');
      }
      try {
        return checkUrl(metadata.jwks_uri, 'jwks_uri', this.#upstreams.options.allowInsecureRequests);
      } catch (err) {
        // The server's metadata is at fault, not this process's configuration (an http: one stays insecure).
        if (!isTokenwardenError(err, 'ERR_CONFIG')) throw err;
        throw new TokenwardenError('ERR_DISCOVERY', `the issuer metadata's ${err.message}`, { cause: err });
      }
    });
  }

  /** The key set at a configured URL. */
  forUri(jwksUri: string): KeySet {
    return this.#get(`uri ${jwksUri}`, jwksUri, () => Promise.resolve(jwksUri));
  }

  all(): KeySet[] {
    return [...this.#sets.values()];
  }

  #get(id: string, source: string, resolve: () => Promise<string>): KeySet {
    let set = this.#sets.get(id);
    if (set === undefined) {
      if (this.#sets.size >= MAX_KEY_SETS) this.#sets.delete(this.#sets.keys().next().value as string);
      set = new KeySet(source, resolve, this.#upstreams, this.#options);
      this.#sets.set(id, set);
    }
    return set;
  }
}

/** Issuers whose key sets are kept when issuers come from a resolver. */
const MAX_KEY_SETS = 100;

/** The selection cache's key: `alg` and `kid` (absent or a string). */
function selection(alg: string, kid: string | undefined): string {
  return kid === undefined ? alg : `${alg}\u0000${kid}`;
}

/** jose's selection in `held` (each candidate imported once), remembered when it found keys. */
async function selectIn(held: Held, header: JWSHeaderParameters): Promise<readonly VerificationKey[]> {
  const alg = header.alg as string;
  let found: CryptoKey[];
  try {
    found = [(await held.getKey(header as CompactJWSHeaderParameters, undefined as never)) as CryptoKey];
  } catch (err) {
    // The one key that fits could not be imported (a malformed member): not a judgement of the token.
    if (!(err instanceof errors.JOSEError)) throw unusableKey(err);
    if (!(err instanceof errors.JWKSMultipleMatchingKeys)) throw err;
    // No kid and several keys of the kind: each is tried (those jose could import).
    found = [];
    for await (const key of err) found.push(key as CryptoKey);
    if (found.length === 0) throw err;
  }
  const candidates = found.map((key) => verificationKey(key, alg));
  // A key that may not be used with the algorithm (an RSA key under 2048 bits) is not tried while others
  // can be: one weak key in the set must not make tokens without kid unverifiable.
  const keys = candidates.filter((key) => key.unusable === undefined);
  if (keys.length === 0) throw unusableKey(new TypeError(candidates[0]?.unusable));
  const kid = header.kid as unknown;
  if (kid === undefined || typeof kid === 'string') held.selected.set(selection(alg, kid), keys);
  return keys;
}

/** The key for a token is in the set but cannot verify it: the token is not judged (503), and `onError` says why. */
function unusableKey(cause: unknown): TokenwardenError {
  return new TokenwardenError(
    'ERR_INVALID_RESPONSE',
    'the JWKS key for this token cannot be used (malformed, or too weak for its algorithm)',
    { cause },
  );
}

/**
 * The verified header and claims of a JWT.
 *
 * @example
 * ```ts
 * const { payload, protectedHeader }: VerifiedJwt = await verifyJwt(token, keys, rules, issuer, Date.now());
 * ```
 */
export interface VerifiedJwt {
  readonly payload: JWTPayload;
  readonly protectedHeader: JWSHeaderParameters;
}

/**
 * Verifies a JWS-signed JWT with a key from `keys` and checks its claims at `nowMs`: the one place where a
 * signature is checked. jose's rules (see `jws.ts`) with `node:crypto`; when several keys match the header
 * (no `kid`), each is tried. Synchronous (a value, or a throw of jose's errors) when the keys for the header
 * are known and nothing else is verifying; a promise otherwise.
 *
 * @example
 * ```ts
 * const rules = jwtRules({ algorithms: ['RS256'], audience, requiredClaims: ['exp'] });
 * const { payload, protectedHeader } = await verifyJwt(token, keySets.forIssuer(issuer), rules, issuer, Date.now());
 * ```
 */
export function verifyJwt(
  token: string,
  keys: KeySet,
  rules: JwtRules,
  issuer: string | undefined,
  nowMs: number,
): VerifiedJwt | Promise<VerifiedJwt> {
  const jws = parseCompactJws(token, rules.algorithms);
  const selected = keys.select(jws.header);
  if (!(selected instanceof Promise) && selected.length === 1) {
    const ok = checkSignature(jws, selected[0] as VerificationKey);
    if (ok === true) return { payload: jwtClaims(jws, rules, issuer, nowMs), protectedHeader: jws.header };
    if (ok === false) throw new errors.JWSSignatureVerificationFailed();
    return ok.then((good) => {
      if (!good) throw new errors.JWSSignatureVerificationFailed();
      return { payload: jwtClaims(jws, rules, issuer, nowMs), protectedHeader: jws.header };
    });
  }
  return verifyWithAny(jws, selected, rules, issuer, nowMs);
}

async function verifyWithAny(
  jws: CompactJws,
  selected: readonly VerificationKey[] | Promise<readonly VerificationKey[]>,
  rules: JwtRules,
  issuer: string | undefined,
  nowMs: number,
): Promise<VerifiedJwt> {
  for (const key of await selected) {
    // Only a signature that does not verify means "try the next key"; a claim error is the answer.
    if (await checkSignature(jws, key)) {
      return { payload: jwtClaims(jws, rules, issuer, nowMs), protectedHeader: jws.header };
    }
  }
  throw new errors.JWSSignatureVerificationFailed();
}
