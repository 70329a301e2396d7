/**
 * `@opentelemetry/api`, loaded once, synchronously, if it is installed (it is an optional peer dependency).
 *
 * A synchronous `require` through `createRequire` rather than `await import()`: a manager or verifier is
 * built synchronously and must know at once whether to record, without making any call path async. The
 * API keeps its registrations on `globalThis` (under `Symbol.for('opentelemetry.js.api.1')`) and its context
 * keys are `Symbol.for` symbols, so the CommonJS copy loaded here sees the providers and the active span an
 * application set up through the ES module copy.
 *
 * The types below are the parts of the API tokenwarden uses, written structurally so that no declaration
 * of this package refers to `@opentelemetry/api` (users without it must still type-check).
 *
 * @module
 */
import { createRequire } from 'node:module';

/** Attribute values tokenwarden records: short strings only. */
export type Attributes = Readonly<Record<string, string>>;

export interface CounterLike {
  add(value: number, attributes?: Attributes): void;
}
export interface HistogramLike {
  record(value: number, attributes?: Attributes): void;
}
export interface ObservableResultLike {
  observe(value: number, attributes?: Attributes): void;
}
export interface ObservableGaugeLike {
  addCallback(callback: (result: ObservableResultLike) => void): void;
}
export interface InstrumentOptionsLike {
  description?: string;
  unit?: string;
  advice?: { explicitBucketBoundaries?: number[] };
}
/** What tokenwarden needs of a meter: the OpenTelemetry `Meter`, or the agent's own registry. */
export interface MeterLike {
  createCounter(name: string, options?: InstrumentOptionsLike): CounterLike;
  createHistogram(name: string, options?: InstrumentOptionsLike): HistogramLike;
  createObservableGauge(name: string, options?: InstrumentOptionsLike): ObservableGaugeLike;
}

export interface SpanLike {
  setAttribute(key: string, value: string): unknown;
  setStatus(status: { code: number; message?: string }): unknown;
  end(): void;
}
export interface TracerLike {
  startSpan(name: string, options?: { kind?: number; attributes?: Attributes }, context?: unknown): SpanLike;
}
interface TracerProviderLike {
  getTracer(name: string, version?: string): TracerLike;
  getDelegate?(): unknown;
}

/** The parts of `@opentelemetry/api` used here. */
export interface OtelApi {
  metrics: { getMeterProvider(): { getMeter(name: string, version?: string): MeterLike } };
  trace: {
    getTracerProvider(): TracerProviderLike;
    setSpan(context: unknown, span: SpanLike): unknown;
  };
  context: { active(): unknown; with<R>(context: unknown, fn: () => R): R };
  /** OpenTelemetry's own log, where an instrumentation reports that the SDK failed it. */
  diag: { error(message: string, ...args: unknown[]): void };
  createNoopMeter(): MeterLike;
  ProxyTracerProvider: new () => TracerProviderLike;
  SpanKind: { INTERNAL: number };
  SpanStatusCode: { ERROR: number };
}

let loaded: OtelApi | null | undefined;

/** The OpenTelemetry API, or `null` when it is not installed (then tokenwarden records nothing through it). */
export function otelApi(): OtelApi | null {
  if (loaded === undefined) {
    try {
      loaded = createRequire(import.meta.url)('@opentelemetry/api') as OtelApi;
    } catch {
      loaded = null;
    }
  }
  return loaded;
}
