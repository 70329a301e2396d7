/**
 * The resource server's view of the authorization server: one {@link Endpoint} per URL it calls (discovery,
 * JWKS, introspection), each with its own failure count and backoff, and the discovered metadata kept per
 * issuer. This is the one place that decides whether a request to the authorization server is made, and the
 * one place where each request, failure and recovery is observed (the `request`, `unavailable` and
 * `recovered` events).
 *
 * The rule while an endpoint fails: after each failed attempt it is left alone for a backoff delay (capped,
 * jittered, at least the server's `Retry-After`); once that has passed, one request — and only one, even
 * under load — probes it, while every other caller is told at once that it is unavailable
 * (`ERR_RETRY_LATER`, with the time left). So whatever the request rate, the authorization server sees at
 * most one request per backoff interval per endpoint until it answers again.
 *
 * @module
 */
import type * as oauth from 'oauth4webapi';
import type { Clock } from '../clock.js';
import { TokenwardenError, isTokenwardenError, restated } from '../errors.js';
import { type FetchLike, type ResponseMeta, describeUrl } from '../http/transport.js';
import { type RefreshPolicy, backoffDelay, parseRetryAfter } from '../policy.js';
import { DISCOVERY_TTL_MS, type DiscoveryAlgorithm, discover } from '../sources/discovery.js';
import type { KeySetEvents } from './keys.js';

/** Everything {@link Upstreams} reports: its own events and its key sets'. */
type Reported = UpstreamEvents & KeySetEvents;

/**
 * Which endpoint of the authorization server a request went to.
 *
 * @example
 * ```ts
 * verify.on('request', ({ endpoint, outcome }) => metrics.count(`as.${endpoint}.${outcome}`));
 * ```
 */
export type EndpointKind = 'discovery' | 'jwks' | 'introspection';

/**
 * The state of one endpoint of the authorization server, as `verify.health()` reports it.
 *
 * @example
 * ```ts
 * for (const e of verify.health().endpoints) if (e.failing) log.warn(`${e.kind} ${e.url}: ${e.lastError?.code}`);
 * ```
 */
export interface EndpointHealth {
  readonly kind: EndpointKind;
  /** Origin and path (never a query string). */
  readonly url: string;
  /** The last request failed: callers are answered 503, or served the last known keys. */
  readonly failing: boolean;
  /** Consecutive failed attempts (concurrent failures count once). */
  readonly failures: number;
  /** When the endpoint last answered, epoch ms. */
  readonly lastSuccessAt?: number;
  /** When it last failed, epoch ms. */
  readonly lastFailureAt?: number;
  /** While failing: when the next attempt may be made, epoch ms. */
  readonly retryAt?: number;
  /** The last failure (never cleared, so a flapping endpoint can still be diagnosed). */
  readonly lastError?: TokenwardenError;
}

/**
 * Events about the authorization server, emitted by a verifier (`verify.on(…)`). None carries a token or a
 * secret: errors are {@link TokenwardenError}s whose messages name only the endpoint.
 *
 * @example
 * ```ts
 * verify.on('unavailable', ({ endpoint, error, retryInMs }) => log.warn({ endpoint, code: error.code, retryInMs }));
 * verify.on('recovered', ({ endpoint, downForMs }) => log.info({ endpoint, downForMs }, 'authorization server back'));
 * ```
 */
export interface UpstreamEvents {
  /** Every request made to the authorization server, once it is answered or has failed. */
  request: [{ endpoint: EndpointKind; url: string; outcome: 'ok' | 'error'; error?: TokenwardenError }];
  /** An attempt failed; the endpoint is left alone for `retryInMs` (at most one such event per attempt). */
  unavailable: [{ endpoint: EndpointKind; url: string; error: TokenwardenError; failures: number; retryInMs: number }];
  /** An endpoint that had failed answered again. */
  recovered: [{ endpoint: EndpointKind; url: string; downForMs: number }];
}

/**
 * One endpoint of the authorization server with its failure state. Every request to it goes through
 * {@link Endpoint.request}.
 */
export class Endpoint {
  readonly kind: EndpointKind;
  readonly url: string;
  readonly #upstreams: Upstreams;
  #failures = 0;
  /** Bumped on every recorded outcome: concurrent attempts that fail together count as one failure. */
  #generation = 0;
  #retryAt = 0;
  #probing = false;
  #downSince: number | undefined;
  #lastSuccessAt: number | undefined;
  #lastFailureAt: number | undefined;
  #lastError: TokenwardenError | undefined;

  constructor(kind: EndpointKind, url: string, upstreams: Upstreams) {
    this.kind = kind;
    this.url = url;
    this.#upstreams = upstreams;
  }

  /** Whether the last attempt failed. */
  get failing(): boolean {
    return this.#failures > 0;
  }

  /**
   * Makes one request through `attempt` — unless the endpoint is failing and its backoff has not passed, or
   * another caller is already probing it: then throws `ERR_RETRY_LATER` at once (with `retryAfterMs`, and
   * the last failure as `cause`) without any network call. `attempt` fills `meta` with the response status
   * and `Retry-After`, and throws a {@link TokenwardenError} for a failure of the endpoint (a judgment on a
   * token is a value, not a throw). A failure is rethrown with `retryAfterMs` set to the backoff delay.
   */
  async request<T>(attempt: (meta: ResponseMeta) => Promise<T>): Promise<T> {
    const { clock } = this.#upstreams;
    let probe = false;
    if (this.#failures > 0) {
      if (this.#probing || clock.now() < this.#retryAt) throw this.retryLater();
      this.#probing = probe = true;
    }
    const generation = this.#generation;
    const meta: ResponseMeta = {};
    try {
      const value = await attempt(meta);
      this.#succeeded();
      return value;
    } catch (err) {
      throw this.#failed(err, meta, generation);
    } finally {
      if (probe) this.#probing = false;
    }
  }

  /** Milliseconds until the next attempt may be made (0 when the endpoint is not failing). */
  retryInMs(now: number): number {
    return this.#failures > 0 ? Math.max(0, this.#retryAt - now) : 0;
  }

  health(): EndpointHealth {
    return {
      kind: this.kind,
      url: this.url,
      failing: this.#failures > 0,
      failures: this.#failures,
      ...(this.#lastSuccessAt !== undefined && { lastSuccessAt: this.#lastSuccessAt }),
      ...(this.#lastFailureAt !== undefined && { lastFailureAt: this.#lastFailureAt }),
      ...(this.#failures > 0 && { retryAt: this.#retryAt }),
      ...(this.#lastError !== undefined && { lastError: this.#lastError }),
    };
  }

  #succeeded(): void {
    const now = this.#upstreams.clock.now();
    this.#generation++;
    this.#lastSuccessAt = now;
    this.#upstreams.emit('request', { endpoint: this.kind, url: this.url, outcome: 'ok' });
    if (this.#failures > 0) {
      const downForMs = now - (this.#downSince ?? now);
      this.#failures = 0;
      this.#downSince = undefined;
      this.#upstreams.emit('recovered', { endpoint: this.kind, url: this.url, downForMs });
    }
  }

  #failed(err: unknown, meta: ResponseMeta, generation: number): TokenwardenError {
    const { clock, policy, random } = this.#upstreams;
    const now = clock.now();
    const error = isTokenwardenError(err)
      ? err
      : new TokenwardenError('ERR_NETWORK', `${label(this.kind)} to ${this.url} failed`, { cause: err });
    if (generation === this.#generation) {
      this.#generation++;
      this.#failures++;
      this.#downSince ??= now;
      const serverAsked =
        meta.status === 429 || meta.status === 503 ? parseRetryAfter(meta.retryAfter, now) : undefined;
      this.#retryAt = now + backoffDelay(policy, this.#failures, random(), serverAsked);
    }
    this.#lastFailureAt = now;
    this.#lastError = error;
    const retryInMs = this.retryInMs(now);
    this.#upstreams.emit('request', { endpoint: this.kind, url: this.url, outcome: 'error', error });
    this.#upstreams.emit('unavailable', {
      endpoint: this.kind,
      url: this.url,
      error,
      failures: this.#failures,
      retryInMs,
    });
    return restated(error, error.message, { retryAfterMs: retryInMs });
  }

  /**
   * The answer for a caller who will not wait for this failing endpoint: `ERR_RETRY_LATER`, with the time
   * until the next attempt and the last failure as `cause`.
   */
  retryLater(): TokenwardenError {
    const now = this.#upstreams.clock.now();
    // While another caller probes, the answer is due within the request's time limit: a second is a fair guess.
    const retryAfterMs = this.#probing ? Math.max(1000, this.retryInMs(now)) : this.retryInMs(now);
    return new TokenwardenError(
      'ERR_RETRY_LATER',
      `${label(this.kind)} to ${this.url} is failing (${this.#lastError?.code ?? 'ERR_NETWORK'}); next attempt in ${Math.ceil(retryAfterMs / 1000)} s`,
      { cause: this.#lastError, retryAfterMs },
    );
  }
}

function label(kind: EndpointKind): string {
  return kind === 'jwks' ? 'JWKS request' : kind === 'discovery' ? 'discovery request' : 'introspection request';
}

/** What {@link Upstreams} needs: the verifier's clock, backoff and transport settings. */
export interface UpstreamsOptions {
  clock: Clock;
  /** The backoff between failed attempts (only the `backoff*` fields are read). */
  policy: RefreshPolicy;
  random?: () => number;
  fetch?: FetchLike | undefined;
  timeoutMs: number;
  maxResponseBytes: number;
  allowInsecureRequests: boolean;
  discovery: DiscoveryAlgorithm;
  /** Called with every event (the verifier re-emits them). */
  emit?: <K extends keyof Reported>(name: K, ...args: Reported[K]) => void;
}

/**
 * The endpoints of the authorization server(s) one verifier talks to, and their discovered metadata. Every
 * strategy of a verifier shares it, so the JWT and introspection strategies never probe the same failing
 * endpoint twice.
 *
 * @example
 * ```ts
 * const upstreams = new Upstreams({ clock, policy: resolvePolicy({ backoff: { initial: '1s' } }), timeoutMs: 10_000, maxResponseBytes: 1 << 20, allowInsecureRequests: false, discovery: 'auto' });
 * const metadata = await upstreams.metadata('https://login.example.com'); // gated, kept, refreshed hourly
 * const jwks = await upstreams.endpoint('jwks', metadata.jwks_uri!).request(async (meta) => fetchJwks(meta));
 * ```
 */
export class Upstreams {
  readonly clock: Clock;
  readonly policy: RefreshPolicy;
  readonly random: () => number;
  readonly options: UpstreamsOptions;
  readonly #endpoints = new Map<string, Endpoint>();
  readonly #metadata = new Map<string, { at: number; metadata: oauth.AuthorizationServer }>();
  readonly #discovering = new Map<string, Promise<oauth.AuthorizationServer>>();
  readonly #emit: UpstreamsOptions['emit'];

  constructor(options: UpstreamsOptions) {
    this.options = options;
    this.clock = options.clock;
    this.policy = options.policy;
    this.random = options.random ?? Math.random;
    this.#emit = options.emit;
  }

  /** The endpoint for `url` (created on first use; at most a few hundred are kept). */
  endpoint(kind: EndpointKind, url: string): Endpoint {
    const id = `${kind} ${url}`;
    let endpoint = this.#endpoints.get(id);
    if (endpoint === undefined) {
      if (this.#endpoints.size >= MAX_ENDPOINTS) {
        // Issuers chosen by a resolver could add endpoints without end; forget the oldest healthy one.
        for (const [key, e] of this.#endpoints) {
          if (!e.failing) {
            this.#endpoints.delete(key);
            break;
          }
        }
      }
      endpoint = new Endpoint(kind, describeUrl(url), this);
      this.#endpoints.set(id, endpoint);
    }
    return endpoint;
  }

  /**
   * Whether opaque tokens cannot be introspected now: an introspection endpoint is failing, or the
   * discovery of an issuer whose metadata is not known yet.
   */
  introspectionFailing(): boolean {
    for (const [id, endpoint] of this.#endpoints) {
      if (!endpoint.failing) continue;
      if (endpoint.kind === 'introspection') return true;
      if (endpoint.kind === 'discovery' && !this.#metadata.has(id.slice('discovery '.length))) return true;
    }
    return false;
  }

  /** Every endpoint used so far. */
  endpoints(): Endpoint[] {
    return [...this.#endpoints.values()];
  }

  /**
   * The authorization server metadata of `issuer`: discovered through its discovery endpoint (backed off
   * while failing), kept, and discovered again after an hour — when that fails, the metadata already known
   * goes on being used.
   */
  metadata(issuer: string): Promise<oauth.AuthorizationServer> {
    const known = this.#metadata.get(issuer);
    const now = this.clock.now();
    if (known !== undefined && now - known.at < DISCOVERY_TTL_MS && now >= known.at) {
      return Promise.resolve(known.metadata);
    }
    let running = this.#discovering.get(issuer);
    const endpoint = this.endpoint('discovery', issuer);
    // While discovery fails, a caller does not wait on another's probe: it is answered at once.
    if (running !== undefined && endpoint.failing && known === undefined) return Promise.reject(endpoint.retryLater());
    if (running === undefined) {
      running = endpoint
        .request((meta) =>
          discover(issuer, {
            clock: this.clock,
            algorithm: this.options.discovery,
            allowInsecureRequests: this.options.allowInsecureRequests,
            timeoutMs: this.options.timeoutMs,
            maxResponseBytes: this.options.maxResponseBytes,
            fetch: recording(meta, this.options.fetch),
            force: known !== undefined,
          }).then((metadata) => {
            // OpenID Connect Discovery §4.3, RFC 8414 §3.3: the metadata's `issuer` is identical to the issuer,
            // and tokens carry it in `iss`, compared exactly (RFC 9068 §4). The discovery check compares them
            // as URLs, where "https://as.example" and "https://as.example/" are one; left at that, every token
            // would be refused as from an unexpected issuer, with nothing to say why.
            if (metadata.issuer !== issuer) throw issuerMismatch(issuer, metadata.issuer);
            return metadata;
          }),
        )
        .then(
          (metadata) => {
            this.#metadata.set(issuer, { at: this.clock.now(), metadata });
            return metadata;
          },
          (err: unknown) => {
            if (known !== undefined) return known.metadata;
            throw err;
          },
        )
        .finally(() => this.#discovering.delete(issuer));
      this.#discovering.set(issuer, running);
    }
    return running;
  }

  emit<K extends keyof Reported>(name: K, ...args: Reported[K]): void {
    this.#emit?.(name, ...args);
  }
}

const MAX_ENDPOINTS = 300;

/** A fetch that notes the status and `Retry-After` of the response in `meta`. */
export function recording(meta: ResponseMeta, fetchImpl: FetchLike | undefined): FetchLike {
  const inner = fetchImpl ?? ((input, init) => globalThis.fetch(input, init));
  return async (input, init) => {
    const response = await inner(input, init);
    meta.status = response.status;
    meta.retryAfter = response.headers.get('retry-after');
    return response;
  };
}

/** The configured issuer is not, character for character, the one the metadata names (a trailing slash, say). */
function issuerMismatch(configured: string, named: unknown): TokenwardenError {
  const shown = typeof named === 'string' ? JSON.stringify(named.slice(0, 256)) : 'something else';
  return new TokenwardenError(
    'ERR_DISCOVERY',
    `the metadata of ${JSON.stringify(configured)} names its issuer ${shown}: tokens carry that exact value in iss, ` +
      'so set issuer to it',
  );
}
