/**
 * The one place where tokenwarden's instruments are created and recorded: the fleet core, the manager,
 * UserTokens, the OAuth client and the verifier call these hooks, and nothing else knows OpenTelemetry.
 *
 * Recording goes to every *sink*: the instruments of the global OpenTelemetry meter provider (when
 * `@opentelemetry/api` is installed and an SDK is registered) and those of each open
 * {@link MetricsRegistry} (the agent's Prometheus endpoint). With neither, every hook returns after one
 * check and records nothing; no hook is on the fresh-token path of `getToken()`.
 *
 * A provider registered after tokenwarden's first use is picked up at the next hook call (the global
 * provider is looked up each time, and instruments are created once per provider).
 *
 * Telemetry never fails what it observes (OpenTelemetry's rule for instrumentations): every call into a
 * provider, meter, instrument, tracer, span or context manager is guarded, so an SDK, a span processor or
 * a View that throws costs its own data, never a token request, a refresh token the server just rotated, or
 * a verification. The first such failure is reported on OpenTelemetry's `diag` log.
 *
 * @module
 */
import { readFileSync } from 'node:fs';
import { type ErrorCode, isTokenwardenError } from '../errors.js';
import { ATTRIBUTES, INSTRUMENTS, type InstrumentSpec, SPANS } from './instruments.js';
import {
  type Attributes,
  type CounterLike,
  type HistogramLike,
  type MeterLike,
  type ObservableResultLike,
  type OtelApi,
  type SpanLike,
  type TracerLike,
  otelApi,
} from './otel.js';

/** The instruments of one sink. */
interface Instruments {
  readonly tokenRequests: CounterLike;
  readonly tokenRequestDuration: HistogramLike;
  readonly staleServed: CounterLike;
  readonly lockWait: HistogramLike;
  readonly storeErrors: CounterLike;
  readonly verifyRequests: CounterLike;
  readonly verifyDuration: HistogramLike;
  readonly jwksFetches: CounterLike;
  readonly introspectionRequests: CounterLike;
}

function options(spec: InstrumentSpec): {
  description: string;
  unit: string;
  advice?: { explicitBucketBoundaries: number[] };
} {
  return {
    description: spec.description,
    unit: spec.unit,
    ...(spec.buckets !== undefined && { advice: { explicitBucketBoundaries: [...spec.buckets] } }),
  };
}

/** Creates the catalogue's instruments on `meter` (once per meter). */
function createInstruments(meter: MeterLike): Instruments {
  const i = INSTRUMENTS;
  const counter = (spec: InstrumentSpec): CounterLike => meter.createCounter(spec.name, options(spec));
  const histogram = (spec: InstrumentSpec): HistogramLike => meter.createHistogram(spec.name, options(spec));
  meter.createObservableGauge(i.timeToExpiry.name, options(i.timeToExpiry)).addCallback(observeExpiries);
  return {
    tokenRequests: counter(i.tokenRequests),
    tokenRequestDuration: histogram(i.tokenRequestDuration),
    staleServed: counter(i.staleServed),
    lockWait: histogram(i.lockWait),
    storeErrors: counter(i.storeErrors),
    verifyRequests: counter(i.verifyRequests),
    verifyDuration: histogram(i.verifyDuration),
    jwksFetches: counter(i.jwksFetches),
    introspectionRequests: counter(i.introspectionRequests),
  };
}

// ---------------------------------------------------------------------------------------------
// Sinks

const NONE: readonly Instruments[] = Object.freeze([]);
/** Registries of this process (the agent's endpoint), each with its instruments. */
const locals = new Map<object, Instruments>();
/** Instruments are made once per provider, even if it is unregistered and registered again. */
const byProvider = new WeakMap<object, Instruments | null>();
const tracers = new WeakMap<object, TracerLike>();

/** Where hooks record now: the sinks, and the tracer when a tracer provider is registered. */
interface State {
  readonly sinks: readonly Instruments[];
  readonly api: OtelApi | null;
  readonly tracer: TracerLike | undefined;
}

/**
 * Where `@opentelemetry/api` (every 1.x copy of it) keeps the registered providers: `metrics` holds the
 * meter provider, `trace` the registering API's proxy tracer provider. Only compared, never written: when
 * neither slot changed since the last look, nothing else did, and the hooks need no API call at all.
 */
const GLOBAL_KEY = Symbol.for('opentelemetry.js.api.1');
const UNSEEN = Symbol('unseen');
let seenMetrics: unknown = UNSEEN;
let seenTrace: unknown = UNSEEN;
let state: State | undefined;

/** The current {@link State}: two property reads while the registrations stay as they were. */
function current(): State {
  const registry = (globalThis as { [GLOBAL_KEY]?: { metrics?: unknown; trace?: unknown } })[GLOBAL_KEY];
  const metrics = registry?.metrics;
  const traces = registry?.trace;
  if (state !== undefined && metrics === seenMetrics && traces === seenTrace) return state;
  seenMetrics = metrics;
  seenTrace = traces;
  state = resolve();
  return state;
}

/** Looks the providers up through the API (which checks versions) and makes instruments for a new one. */
function resolve(): State {
  const api = otelApi();
  const otel = api === null ? null : globalInstruments(api);
  const tracer = api === null ? undefined : globalTracer(api);
  const all = [...(otel === null ? [] : [otel]), ...locals.values()];
  return { sinks: all.length === 0 ? NONE : Object.freeze(all), api, tracer };
}

/** The instruments of the global meter provider, `null` without one (or when it failed to make them). */
function globalInstruments(api: OtelApi): Instruments | null {
  let provider: ReturnType<OtelApi['metrics']['getMeterProvider']>;
  try {
    provider = api.metrics.getMeterProvider();
  } catch (err) {
    sdkFailed(err);
    return null;
  }
  if (typeof provider !== 'object' || provider === null) return null;
  let made = byProvider.get(provider);
  if (made === undefined) {
    try {
      const meter = provider.getMeter('tokenwarden', version());
      // The API's no-op provider hands out the no-op meter: nothing to record into.
      made = meter === api.createNoopMeter() ? null : createInstruments(meter);
    } catch (err) {
      sdkFailed(err); // not asked again: a provider that cannot make instruments records nothing
      made = null;
    }
    byProvider.set(provider, made);
  }
  return made;
}

/** The tracer of the global tracer provider, `undefined` without one. */
function globalTracer(api: OtelApi): TracerLike | undefined {
  try {
    const tracerProvider = api.trace.getTracerProvider();
    // Unregistered, the API answers with its own proxy delegating to the no-op provider.
    noopTracerProvider ??= new api.ProxyTracerProvider().getDelegate?.();
    if (tracerProvider.getDelegate?.() === noopTracerProvider) return undefined;
    let tracer = tracers.get(tracerProvider);
    if (tracer === undefined) {
      tracer = tracerProvider.getTracer('tokenwarden', version());
      if (typeof tracer?.startSpan !== 'function') return undefined;
      tracers.set(tracerProvider, tracer);
    }
    return tracer;
  } catch (err) {
    sdkFailed(err);
    return undefined;
  }
}
let noopTracerProvider: unknown;

/**
 * Something in the telemetry SDK threw. Recording goes on without what failed; the first failure is
 * reported on OpenTelemetry's `diag` log (the channel for an SDK's own problems), the rest are not, so that
 * a broken exporter cannot flood a log once per request.
 */
function sdkFailed(err: unknown): void {
  if (reported) return;
  reported = true;
  try {
    otelApi()?.diag.error('tokenwarden: the OpenTelemetry SDK threw; tokenwarden goes on without that data', err);
  } catch {
    // diag itself failed: nothing left to tell.
  }
}
let reported = false;

function add(counter: CounterLike, attrs: Attributes): void {
  try {
    counter.add(1, attrs);
  } catch (err) {
    sdkFailed(err);
  }
}

function record(histogram: HistogramLike, value: number, attrs: Attributes): void {
  try {
    histogram.record(value, attrs);
  } catch (err) {
    sdkFailed(err);
  }
}

/** Where to record metrics now. */
function active(): readonly Instruments[] {
  return current().sinks;
}

/** Adds a local registry (its meter) as a sink; returns the function that removes it. */
export function addLocalSink(owner: object, meter: MeterLike): () => void {
  locals.set(owner, createInstruments(meter));
  state = undefined;
  return () => {
    locals.delete(owner);
    state = undefined;
  };
}

let packageVersion: string | undefined;
function version(): string {
  if (packageVersion === undefined) {
    try {
      const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as {
        version?: unknown;
      };
      packageVersion = typeof pkg.version === 'string' ? pkg.version : '0.0.0';
    } catch {
      packageVersion = '0.0.0';
    }
  }
  return packageVersion;
}

// ---------------------------------------------------------------------------------------------
// Tracing

/** Starts an `INTERNAL` span; `undefined` when the tracer failed or answered something that is not a span. */
function startSpan(api: OtelApi, tracer: TracerLike, name: string, attrs?: Attributes): SpanLike | undefined {
  try {
    const span = tracer.startSpan(name, {
      kind: api.SpanKind.INTERNAL,
      ...(attrs !== undefined && { attributes: attrs }),
    }) as SpanLike | null | undefined;
    return typeof span === 'object' && span !== null ? span : undefined;
  } catch (err) {
    sdkFailed(err);
    return undefined;
  }
}

/** Sets the outcome (and on failure the error) and ends `span`; the caller calls it once per span. */
function endSpan(api: OtelApi, span: SpanLike, outcome: string, errorType: string | undefined): void {
  try {
    span.setAttribute(ATTRIBUTES.outcome, outcome);
    if (errorType !== undefined) {
      span.setAttribute(ATTRIBUTES.errorType, errorType);
      // The code only: an error's message may quote what a server answered.
      span.setStatus({ code: api.SpanStatusCode.ERROR, message: errorType });
    }
  } catch (err) {
    sdkFailed(err);
  }
  try {
    span.end();
  } catch (err) {
    sdkFailed(err);
  }
}

/**
 * `run()` with `span` as the active span, so that the spans it starts (an instrumented HTTP client's) are
 * its children. A context manager that throws, or never calls `run`, costs the parenting only: `run` is
 * called exactly once, and its own answer or error is what comes back.
 */
function inSpan<T>(api: OtelApi, span: SpanLike, run: () => T): T {
  let context: unknown;
  try {
    context = api.trace.setSpan(api.context.active(), span);
  } catch (err) {
    sdkFailed(err);
    return run();
  }
  let ran: { value: T } | { error: unknown } | undefined;
  try {
    api.context.with(context, () => {
      try {
        const value = run();
        ran = { value };
        return value;
      } catch (error) {
        ran = { error };
        throw error;
      }
    });
  } catch (err) {
    if (ran === undefined || !('error' in ran) || ran.error !== err) sdkFailed(err);
  }
  if (ran === undefined) return run();
  if ('error' in ran) throw ran.error;
  return ran.value;
}

// ---------------------------------------------------------------------------------------------
// Attributes: a few distinct sets, made once each (recording allocates nothing).

const attributeCache = new Map<string, Attributes>();
function attributes(...pairs: (string | undefined)[]): Attributes {
  const id = pairs.join('\u0000');
  let cached = attributeCache.get(id);
  if (cached === undefined) {
    const built: Record<string, string> = {};
    for (let n = 0; n < pairs.length; n += 2) {
      const value = pairs[n + 1];
      if (value !== undefined) built[pairs[n] as string] = value;
    }
    cached = Object.freeze(built);
    // Values are grant types, codes and outcomes: a bounded set. The bound is a guard, not a cache policy.
    if (attributeCache.size < 10_000) attributeCache.set(id, cached);
  }
  return cached;
}

/**
 * The codes `error.type` may hold: every {@link ErrorCode}, and nothing else (the compiler checks the list
 * against the type both ways). A `TokenwardenError` is a public class: JavaScript can build one with any
 * code — a custom store's or subject token provider's `ERR_${tenant}` — and an attribute value that grows
 * with users is a series per user in the operator's metrics backend.
 */
const ERROR_TYPES: Readonly<Record<ErrorCode, true>> = {
  ERR_CONFIG: true,
  ERR_INSECURE_ISSUER: true,
  ERR_DISCOVERY: true,
  ERR_NETWORK: true,
  ERR_TIMEOUT: true,
  ERR_ABORTED: true,
  ERR_HTTP_STATUS: true,
  ERR_INVALID_RESPONSE: true,
  ERR_RESPONSE_TOO_LARGE: true,
  ERR_OAUTH: true,
  ERR_LOGIN_REQUIRED: true,
  ERR_ID_TOKEN_INVALID: true,
  ERR_INVALID_TOKEN: true,
  ERR_STORE: true,
  ERR_STORE_TIMEOUT: true,
  ERR_LOCK_TIMEOUT: true,
  ERR_DECRYPT: true,
  ERR_RETRY_LATER: true,
  ERR_CLOSED: true,
  ERR_UNSUPPORTED: true,
  ERR_PROVIDER: true,
  ERR_CREDENTIAL: true,
};

/** A code as an `error.type` value: one of tokenwarden's codes, `_OTHER` for anything else. */
function knownCode(code: unknown): string {
  return typeof code === 'string' && Object.hasOwn(ERROR_TYPES, code) ? code : '_OTHER';
}

/** The `error.type` of a failure: the `TokenwardenError` code, `_OTHER` for anything else. */
function errorType(error: unknown): string {
  return isTokenwardenError(error) ? knownCode(error.code) : '_OTHER';
}

// ---------------------------------------------------------------------------------------------
// Hooks

/**
 * Runs one token endpoint request (`run`) as the span `tokenwarden.token_request` — so that the HTTP client
 * span of an instrumented `fetch`/undici is its child — and counts it with its duration.
 */
export async function tokenRequest<T>(grant: string, run: () => Promise<T>): Promise<T> {
  const { sinks: recording, api, tracer: t } = current();
  if (recording.length === 0 && t === undefined) return run();
  const started = performance.now();
  const finish = (error: unknown, failed: boolean): void => {
    const code = failed ? errorType(error) : undefined;
    const attrs = attributes(
      ATTRIBUTES.grant,
      grant,
      ATTRIBUTES.outcome,
      failed ? 'error' : 'success',
      ATTRIBUTES.errorType,
      code,
    );
    const seconds = (performance.now() - started) / 1000;
    for (const sink of recording) {
      add(sink.tokenRequests, attrs);
      record(sink.tokenRequestDuration, seconds, attrs);
    }
    // Neither recording nor ending throws: the span ends once, and the request's answer is never lost.
    if (span !== undefined) endSpan(api as OtelApi, span, failed ? 'error' : 'success', code);
  };
  const span =
    t === undefined || api === null
      ? undefined
      : startSpan(api, t, SPANS.tokenRequest, attributes(ATTRIBUTES.grant, grant));
  try {
    const value = await (span === undefined ? run() : inSpan(api as OtelApi, span, run));
    finish(undefined, false);
    return value;
  } catch (err) {
    finish(err, true);
    throw err;
  }
}

/** A token was served while its refresh was due or failing (stale, still valid). */
export function staleServed(grant: string): void {
  const recording = active();
  if (recording.length === 0) return;
  const attrs = attributes(ATTRIBUTES.grant, grant);
  for (const sink of recording) add(sink.staleServed, attrs);
}

/** A lock acquisition ended after `ms`: `acquired`, `timeout` (held by another process too long) or `error`. */
export function lockWaited(ms: number, outcome: 'acquired' | 'timeout' | 'error'): void {
  const recording = active();
  if (recording.length === 0) return;
  const attrs = attributes(ATTRIBUTES.outcome, outcome);
  for (const sink of recording) record(sink.lockWait, Math.max(0, ms) / 1000, attrs);
}

/** A store operation failed or timed out. */
export function storeFailed(operation: string, code: string): void {
  const recording = active();
  if (recording.length === 0) return;
  const attrs = attributes(ATTRIBUTES.operation, operation, ATTRIBUTES.errorType, knownCode(code));
  for (const sink of recording) add(sink.storeErrors, attrs);
}

/** Counts one request to the authorization server made by the verifier (`jwks` or `introspection`). */
function serverRequest(kind: 'jwks' | 'introspection', error: unknown, failed: boolean): void {
  const recording = active();
  if (recording.length === 0) return;
  const attrs = attributes(
    ATTRIBUTES.outcome,
    failed ? 'error' : 'success',
    ATTRIBUTES.errorType,
    failed ? errorType(error) : undefined,
  );
  for (const sink of recording) add(kind === 'jwks' ? sink.jwksFetches : sink.introspectionRequests, attrs);
}

/** What a verification answered (structurally, the verifier's `VerifyResult`). */
interface Answer {
  readonly ok: boolean;
  readonly failure?: { readonly error: string };
}

/**
 * What one verification tells the hooks about itself: whether the validation cache answered, and — on a
 * miss — the check to run inside the `tokenwarden.verify` span. (The verifier's own `verify` event reads
 * `cache` from the same object.)
 */
export interface VerifyProbe {
  cache?: 'hit' | 'miss';
  /** Runs the check of a cache miss inside the span; absent when no span is started. */
  traced?<T>(run: () => Promise<T>): Promise<T>;
}

/** The `error.type` of a verification that could not be done (answered 503): the RFC 6750 error it answered. */
const UNAVAILABLE = 'temporarily_unavailable';

class Probe implements VerifyProbe {
  readonly #started = performance.now();
  cache: 'hit' | 'miss' | undefined;
  #span: SpanLike | undefined;

  constructor(
    readonly recording: readonly Instruments[],
    readonly api: OtelApi | null,
    readonly tracer: TracerLike | undefined,
  ) {}

  traced<T>(run: () => Promise<T>): Promise<T> {
    const { api, tracer } = this;
    if (api === null || tracer === undefined || this.#span !== undefined) return run();
    const span = startSpan(api, tracer, SPANS.verify);
    if (span === undefined) return run();
    this.#span = span;
    return inSpan(api, span, run);
  }

  /** Ends the span, if one was started and is not ended yet: once, whichever of finish and fail comes. */
  #end(outcome: string, code: string | undefined): void {
    const span = this.#span;
    if (span === undefined || this.api === null) return;
    this.#span = undefined;
    endSpan(this.api, span, outcome, code);
  }

  finish(answer: Answer): void {
    const error = answer.failure?.error;
    const outcome = answer.ok ? 'ok' : error === 'temporarily_unavailable' ? 'unavailable' : (error ?? 'unavailable');
    // A refusal is the verifier doing its job (as a 4xx leaves an HTTP server span unset); answering 503 because
    // the token could not be checked is a failure of the operation (as a 5xx is): error status and error.type.
    this.#end(outcome, outcome === 'unavailable' ? UNAVAILABLE : undefined);
    if (this.recording.length === 0) return;
    const attrs = attributes(ATTRIBUTES.outcome, outcome, ATTRIBUTES.cache, this.cache);
    const seconds = (performance.now() - this.#started) / 1000;
    for (const sink of this.recording) {
      add(sink.verifyRequests, attrs);
      record(sink.verifyDuration, seconds, attrs);
    }
  }

  fail(error: unknown): void {
    this.#end('unavailable', errorType(error));
  }
}

/**
 * Runs one verification, `run(a, b, probe)`: counts it by outcome (`ok`, the RFC 6750 / RFC 9449 error,
 * `unavailable`) and cache use, times it, and gives it the span `tokenwarden.verify` when it misses the cache.
 * With nothing to record, `probe` is `undefined`, nothing else happens, and an answer `run` gives at once
 * (a cache hit) is returned as it is, without a promise.
 */
export function verification<A, B, R extends Answer>(
  run: (a: A, b: B, probe: VerifyProbe | undefined) => R | Promise<R>,
  a: A,
  b: B,
): R | Promise<R> {
  const { sinks: recording, tracer: t, api } = current();
  if (recording.length === 0 && t === undefined) return run(a, b, undefined);
  const probe = new Probe(recording, api, t);
  let answer: R | Promise<R>;
  try {
    answer = run(a, b, probe);
  } catch (err) {
    probe.fail(err);
    throw err;
  }
  if (!(answer instanceof Promise)) {
    probe.finish(answer);
    return answer;
  }
  return answer.then(
    (value) => {
      probe.finish(value);
      return value;
    },
    (err: unknown) => {
      probe.fail(err);
      throw err;
    },
  );
}

/** Counts one request the verifier makes to the authorization server (`jwks` or `introspection`). */
export function countRequest<T>(kind: 'jwks' | 'introspection', run: () => Promise<T>): Promise<T> {
  return run().then(
    (value) => {
      serverRequest(kind, undefined, false);
      return value;
    },
    (err: unknown) => {
      serverRequest(kind, err, true);
      throw err;
    },
  );
}

// ---------------------------------------------------------------------------------------------
// Time to expiry: one observable gauge per sink, over every watched manager.

/** What a manager shows the time-to-expiry gauge. */
export interface ExpiryTarget {
  readonly attributes: Attributes;
  /** Seconds until the held token expires (negative once expired); `undefined` with no token or no expiry. */
  secondsLeft(): number | undefined;
}

const watched = new Set<WeakRef<ExpiryTarget>>();
const SWEEP_MIN = 1024;
let sweepAt = SWEEP_MIN;

/** How many managers the gauge holds (dropped ones included until swept): for tests. */
export function watchedCount(): number {
  return watched.size;
}

function observeExpiries(result: ObservableResultLike): void {
  for (const ref of watched) {
    const target = ref.deref();
    if (target === undefined) {
      watched.delete(ref); // its manager was dropped without close()
      continue;
    }
    const seconds = target.secondsLeft();
    if (seconds !== undefined && Number.isFinite(seconds)) result.observe(seconds, target.attributes);
  }
}

/**
 * Shows `target` on the time-to-expiry gauge until the returned function is called. Held weakly: a manager
 * dropped without `close()` disappears from the gauge.
 */
export function watchExpiry(target: ExpiryTarget): () => void {
  active(); // instruments exist for a provider registered before this manager
  // Dropped managers leave the set when a gauge is read; with nothing reading it (no SDK, no registry) they
  // would stay forever — one per manager a process ever made without close(). Swept as the set doubles.
  if (watched.size >= sweepAt) {
    for (const ref of watched) if (ref.deref() === undefined) watched.delete(ref);
    sweepAt = Math.max(SWEEP_MIN, watched.size * 2);
  }
  const ref = new WeakRef(target);
  watched.add(ref);
  return () => {
    watched.delete(ref);
  };
}

/** The attributes of a manager on the gauge. */
export function managerAttributes(key: string, grant: string, name: string | undefined): Attributes {
  return attributes(ATTRIBUTES.key, key, ATTRIBUTES.grant, grant, ATTRIBUTES.name, name);
}
