/**
 * The catalogue of tokenwarden's OpenTelemetry instruments: names, kinds, units, attributes and histogram
 * buckets — what `telemetry/hooks.ts` creates, what the agent's Prometheus endpoint exposes and what
 * docs/observability.md lists. One table, so that a name is written once.
 *
 * @module
 */

/**
 * The attribute keys tokenwarden records. Values are never a token, a secret or a subject: grant types,
 * outcomes, error codes, store operations, and a manager's store key (a hash unless you chose the key) and
 * name.
 *
 * @example
 * ```ts
 * import { ATTRIBUTES } from 'tokenwarden/telemetry';
 * const byGrant = points.filter((p) => p.attributes[ATTRIBUTES.grant] === 'client_credentials');
 * ```
 */
export const ATTRIBUTES = {
  /** The grant type sent to the token endpoint (`client_credentials`, `refresh_token`, a URN…). */
  grant: 'tokenwarden.grant',
  /** What happened: `success` / `error` for requests; `ok` / an RFC 6750 error / `unavailable` for verifications. */
  outcome: 'tokenwarden.outcome',
  /**
   * The `TokenwardenError` code of a failure (`ERR_NETWORK`, `ERR_OAUTH`…), `_OTHER` for anything else; on a
   * verify span that could not check the token, `temporarily_unavailable`. Absent on success.
   */
  errorType: 'error.type',
  /** The store operation that failed: `get`, `set`, `lock`, `delete`. */
  operation: 'tokenwarden.operation',
  /** Whether a verification was answered from the validation cache: `hit` or `miss`. */
  cache: 'tokenwarden.cache',
  /** A manager's store key (`tw1:<grant>:<SHA-256>` unless you chose one). */
  key: 'tokenwarden.key',
  /** A manager's name (`TokenManager` option `name`, `TokenManager.named()`, the agent's token name). */
  name: 'tokenwarden.name',
} as const;

/**
 * One instrument of the catalogue.
 *
 * @example
 * ```ts
 * const spec: InstrumentSpec = INSTRUMENTS.tokenRequests; // { name: 'tokenwarden.token.requests', kind: 'counter', … }
 * ```
 */
export interface InstrumentSpec {
  /** The OpenTelemetry instrument name. */
  readonly name: string;
  readonly kind: 'counter' | 'histogram' | 'gauge';
  /** UCUM unit: `s`, or an annotation such as `{request}`. */
  readonly unit: string;
  readonly description: string;
  /** The attribute keys it may carry (see {@link ATTRIBUTES}). */
  readonly attributes: readonly string[];
  /** Explicit bucket boundaries of a histogram, in seconds (given to the SDK as advice). */
  readonly buckets?: readonly number[];
}

/** Network round trips: milliseconds to the 10 s default timeout (the HTTP semantic conventions' buckets). */
const REQUEST_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10] as const;
/** Cache hits take microseconds; misses a JWT check or an introspection request. */
const VERIFY_BUCKETS = [
  0.00001, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
] as const;
/** A free lock takes a store round trip; a held one, up to the lock wait (30 s by default). */
const LOCK_BUCKETS = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30] as const;

const { grant, outcome, errorType, operation, cache, key, name } = ATTRIBUTES;

/**
 * Every instrument tokenwarden records, on the meter named `tokenwarden`. Prometheus names follow the
 * OpenTelemetry rules: dots become underscores, `s` becomes the suffix `_seconds`, counters end in `_total`
 * (`tokenwarden.token.requests` → `tokenwarden_token_requests_total`); see {@link prometheusName}.
 *
 * @example
 * ```ts
 * import { INSTRUMENTS } from 'tokenwarden/telemetry';
 * for (const spec of Object.values(INSTRUMENTS)) console.log(spec.name, spec.kind, spec.unit);
 * ```
 */
export const INSTRUMENTS = {
  tokenRequests: {
    name: 'tokenwarden.token.requests',
    kind: 'counter',
    unit: '{request}',
    description: 'Token endpoint requests, by grant type and outcome',
    attributes: [grant, outcome, errorType],
  },
  tokenRequestDuration: {
    name: 'tokenwarden.token.request.duration',
    kind: 'histogram',
    unit: 's',
    description: 'Duration of token endpoint requests (discovery and client authentication included)',
    attributes: [grant, outcome, errorType],
    buckets: REQUEST_BUCKETS,
  },
  timeToExpiry: {
    name: 'tokenwarden.token.time_to_expiry',
    kind: 'gauge',
    unit: 's',
    description:
      'Seconds until the token a TokenManager holds expires (negative: expired); none while it holds no token',
    attributes: [key, grant, name],
  },
  staleServed: {
    name: 'tokenwarden.token.stale_served',
    kind: 'counter',
    unit: '{token}',
    description: 'Tokens served while their refresh was due or failing (still valid: the grace period)',
    attributes: [grant],
  },
  lockWait: {
    name: 'tokenwarden.lock.wait.duration',
    kind: 'histogram',
    unit: 's',
    description: "Time spent acquiring a store's refresh lock (waiting for another process's refresh included)",
    attributes: [outcome],
    buckets: LOCK_BUCKETS,
  },
  storeErrors: {
    name: 'tokenwarden.store.errors',
    kind: 'counter',
    unit: '{error}',
    description: 'Token store operations that failed or timed out',
    attributes: [operation, errorType],
  },
  verifyRequests: {
    name: 'tokenwarden.verify.requests',
    kind: 'counter',
    unit: '{request}',
    description: 'Access token verifications by a resource server, by outcome and cache use',
    attributes: [outcome, cache],
  },
  verifyDuration: {
    name: 'tokenwarden.verify.duration',
    kind: 'histogram',
    unit: 's',
    description: 'Duration of access token verifications',
    attributes: [outcome, cache],
    buckets: VERIFY_BUCKETS,
  },
  jwksFetches: {
    name: 'tokenwarden.jwks.fetches',
    kind: 'counter',
    unit: '{fetch}',
    description: 'JWKS requests made to verify JWT access tokens',
    attributes: [outcome, errorType],
  },
  introspectionRequests: {
    name: 'tokenwarden.introspection.requests',
    kind: 'counter',
    unit: '{request}',
    description: 'Token introspection requests (RFC 7662) made to verify opaque access tokens',
    attributes: [outcome, errorType],
  },
} as const satisfies Record<string, InstrumentSpec>;

/**
 * The spans tokenwarden starts (tracer `tokenwarden`, kind `INTERNAL`), with `tokenwarden.grant` (token
 * requests), `tokenwarden.outcome` and, when the operation failed, `error.type` and an error status: a failed
 * token request, a verification that could not be done (answered 503). A refused token is an outcome, not
 * an error (as a 4xx leaves an HTTP server span unset).
 *
 * @example
 * ```ts
 * import { SPANS } from 'tokenwarden/telemetry';
 * const tokenRequests = exporter.getFinishedSpans().filter((s) => s.name === SPANS.tokenRequest);
 * ```
 */
export const SPANS = {
  /** One per token endpoint request; the HTTP client span (when instrumented) is its child. */
  tokenRequest: 'tokenwarden.token_request',
  /** One per verification that missed the validation cache; none on cache hits. */
  verify: 'tokenwarden.verify',
} as const;

/**
 * The Prometheus name of an instrument, per the OpenTelemetry → Prometheus compatibility rules: characters
 * other than `[a-zA-Z0-9_:]` become `_`, the unit is appended (`s` → `_seconds`; annotations such as
 * `{request}` are dropped), and counters end in `_total`. A histogram's series add `_bucket`, `_sum` and
 * `_count`.
 *
 * @example
 * ```ts
 * prometheusName(INSTRUMENTS.tokenRequests);   // 'tokenwarden_token_requests_total'
 * prometheusName(INSTRUMENTS.verifyDuration);  // 'tokenwarden_verify_duration_seconds'
 * ```
 */
export function prometheusName(spec: Pick<InstrumentSpec, 'name' | 'kind' | 'unit'>): string {
  let base = sanitize(spec.name);
  const unit = prometheusUnit(spec.unit);
  if (unit !== '' && !base.endsWith(`_${unit}`)) base = `${base}_${unit}`;
  if (spec.kind === 'counter' && !base.endsWith('_total')) base = `${base}_total`;
  return base;
}

/**
 * An attribute key as a Prometheus label name: characters other than `[a-zA-Z0-9_]` become `_`
 * (`tokenwarden.grant` → `tokenwarden_grant`, `error.type` → `error_type`).
 *
 * @example
 * ```ts
 * prometheusLabel('error.type'); // 'error_type'
 * ```
 */
export function prometheusLabel(key: string): string {
  const label = key.replace(/[^a-zA-Z0-9_]/g, '_').replace(/_{2,}/g, '_');
  return /^[0-9]/.test(label) ? `key_${label}` : label;
}

function sanitize(name: string): string {
  const out = name.replace(/[^a-zA-Z0-9_:]/g, '_').replace(/_{2,}/g, '_');
  return /^[0-9]/.test(out) ? `_${out}` : out;
}

/** The unit words of the compatibility rules for the units tokenwarden uses (annotations carry no unit). */
function prometheusUnit(unit: string): string {
  const stripped = unit.replace(/\{[^}]*\}/g, '');
  switch (stripped) {
    case '':
    case '1':
      return '';
    case 's':
      return 'seconds';
    case 'ms':
      return 'milliseconds';
    case 'By':
      return 'bytes';
    default:
      return sanitize(stripped);
  }
}
