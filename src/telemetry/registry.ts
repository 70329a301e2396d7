/**
 * {@link MetricsRegistry}: tokenwarden's instruments collected in-process, without an OpenTelemetry SDK,
 * and written in the Prometheus text exposition format (0.0.4). The agent serves it on `GET /v1/metrics`.
 *
 * Why not the SDK's Prometheus exporter: the agent ships inside this package, and `@opentelemetry/api` is
 * an optional peer — the agent must count whether or not it is installed, and an SDK (`sdk-metrics`,
 * `exporter-prometheus`, `core`, `resources`) would be a runtime dependency of every user for one route. The
 * registry implements the three instrument kinds tokenwarden uses, with the same names, units, attributes
 * and buckets as the OpenTelemetry instruments, and the OpenTelemetry → Prometheus naming rules.
 *
 * @module
 */
import { addLocalSink } from './hooks.js';
import { INSTRUMENTS, type InstrumentSpec, prometheusLabel, prometheusName } from './instruments.js';
import type {
  Attributes,
  CounterLike,
  HistogramLike,
  InstrumentOptionsLike,
  MeterLike,
  ObservableGaugeLike,
  ObservableResultLike,
} from './otel.js';

/** The `Content-Type` of {@link MetricsRegistry.text}. */
const CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8';

interface Series<V> {
  readonly attributes: Attributes;
  value: V;
}

/** Series by attribute set. Attribute objects are reused by the hooks, so their keys are cached by identity. */
class SeriesMap<V> {
  readonly #byKey = new Map<string, Series<V>>();
  readonly #keys = new WeakMap<Attributes, string>();

  get(attributes: Attributes | undefined, initial: () => V): Series<V> {
    const attrs = attributes ?? EMPTY;
    let key = this.#keys.get(attrs);
    if (key === undefined) {
      key = JSON.stringify(Object.entries(attrs).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
      this.#keys.set(attrs, key);
    }
    let series = this.#byKey.get(key);
    if (series === undefined) {
      series = { attributes: attrs, value: initial() };
      this.#byKey.set(key, series);
    }
    return series;
  }

  values(): IterableIterator<Series<V>> {
    return this.#byKey.values();
  }
}

const EMPTY: Attributes = Object.freeze({});

class Counter implements CounterLike {
  readonly series = new SeriesMap<number>();
  add(value: number, attributes?: Attributes): void {
    if (!(value >= 0)) return; // a counter only goes up
    this.series.get(attributes, () => 0).value += value;
  }
}

interface Buckets {
  counts: number[];
  sum: number;
  count: number;
}

class Histogram implements HistogramLike {
  readonly series = new SeriesMap<Buckets>();
  constructor(readonly bounds: readonly number[]) {}
  record(value: number, attributes?: Attributes): void {
    if (!Number.isFinite(value)) return;
    const buckets = this.series.get(attributes, () => ({
      counts: new Array<number>(this.bounds.length + 1).fill(0),
      sum: 0,
      count: 0,
    })).value;
    let n = 0;
    while (n < this.bounds.length && value > (this.bounds[n] as number)) n++;
    buckets.counts[n] = (buckets.counts[n] as number) + 1;
    buckets.sum += value;
    buckets.count += 1;
  }
}

class Gauge implements ObservableGaugeLike {
  readonly callbacks: ((result: ObservableResultLike) => void)[] = [];
  addCallback(callback: (result: ObservableResultLike) => void): void {
    this.callbacks.push(callback);
  }
  collect(): Series<number>[] {
    const seen = new SeriesMap<number>();
    const result: ObservableResultLike = {
      observe: (value, attributes) => {
        if (Number.isFinite(value)) seen.get(attributes, () => 0).value = value;
      },
    };
    for (const callback of this.callbacks) {
      try {
        callback(result);
      } catch {
        // An observer that throws must not take the whole exposition down.
      }
    }
    return [...seen.values()];
  }
}

type Instrument = Counter | Histogram | Gauge;

/**
 * tokenwarden's metrics collected in this process — no OpenTelemetry SDK needed — as Prometheus text:
 * the same instruments (see `INSTRUMENTS`), named by the OpenTelemetry → Prometheus rules
 * (`tokenwarden_token_requests_total{tokenwarden_grant="client_credentials",tokenwarden_outcome="success"} 3`).
 * Collects from construction until {@link MetricsRegistry.close}; several registries each see everything.
 * This is what `tokenwarden agent` serves on `GET /v1/metrics`; mount it in your own app the same way.
 *
 * @example
 * ```ts
 * import { MetricsRegistry } from 'tokenwarden/telemetry';
 * const registry = new MetricsRegistry();
 * app.get('/metrics', (req, res) => res.type(registry.contentType).send(registry.text()));
 * ```
 */
export class MetricsRegistry {
  /** The `Content-Type` to send with {@link MetricsRegistry.text}: Prometheus text format 0.0.4. */
  readonly contentType = CONTENT_TYPE;
  readonly #instruments = new Map<string, Instrument>();
  readonly #remove: () => void;
  #closed = false;

  constructor() {
    const instruments = this.#instruments;
    const meter: MeterLike = {
      createCounter(name) {
        const counter = new Counter();
        instruments.set(name, counter);
        return counter;
      },
      createHistogram(name, options?: InstrumentOptionsLike) {
        const histogram = new Histogram(options?.advice?.explicitBucketBoundaries ?? [0.005, 0.01, 0.1, 1, 10]);
        instruments.set(name, histogram);
        return histogram;
      },
      createObservableGauge(name) {
        const gauge = new Gauge();
        instruments.set(name, gauge);
        return gauge;
      },
    };
    this.#remove = addLocalSink(this, meter);
  }

  /**
   * Every instrument in the Prometheus text exposition format (version 0.0.4): `# HELP` and `# TYPE` for
   * each, then its series; histograms as cumulative `_bucket{le=…}`, `_sum` and `_count`.
   *
   * @example
   * ```ts
   * const text = registry.text(); // "# HELP tokenwarden_token_requests_total Token endpoint requests…"
   * ```
   */
  text(): string {
    const lines: string[] = [];
    for (const spec of Object.values(INSTRUMENTS) as InstrumentSpec[]) {
      const instrument = this.#instruments.get(spec.name);
      if (instrument === undefined) continue;
      const name = prometheusName(spec);
      lines.push(`# HELP ${name} ${escapeHelp(spec.description)}`);
      lines.push(`# TYPE ${name} ${spec.kind}`);
      if (instrument instanceof Counter) {
        for (const s of instrument.series.values()) lines.push(`${name}${labels(s.attributes)} ${number(s.value)}`);
      } else if (instrument instanceof Gauge) {
        for (const s of instrument.collect()) lines.push(`${name}${labels(s.attributes)} ${number(s.value)}`);
      } else {
        for (const s of instrument.series.values()) {
          let cumulative = 0;
          instrument.bounds.forEach((bound, n) => {
            cumulative += s.value.counts[n] as number;
            lines.push(`${name}_bucket${labels(s.attributes, ['le', number(bound)])} ${cumulative}`);
          });
          lines.push(`${name}_bucket${labels(s.attributes, ['le', '+Inf'])} ${s.value.count}`);
          lines.push(`${name}_sum${labels(s.attributes)} ${number(s.value.sum)}`);
          lines.push(`${name}_count${labels(s.attributes)} ${s.value.count}`);
        }
      }
    }
    return `${lines.join('\n')}\n`;
  }

  /**
   * Stops collecting (the numbers so far stay readable).
   *
   * @example
   * ```ts
   * process.on('SIGTERM', () => registry.close());
   * ```
   */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#remove();
  }
}

/** `{a="x",b="y"}` with keys as Prometheus label names, sorted; `''` without labels. */
function labels(attributes: Attributes, extra?: [string, string]): string {
  const pairs = Object.entries(attributes)
    .map(([key, value]): [string, string] => [prometheusLabel(key), value])
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  if (extra !== undefined) pairs.push(extra);
  if (pairs.length === 0) return '';
  return `{${pairs.map(([key, value]) => `${key}="${escapeLabel(String(value))}"`).join(',')}}`;
}

/** Label values: backslash, double quote and line feed escaped (the text format's rules). */
function escapeLabel(value: string): string {
  return value.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n');
}

/** Help text: backslash and line feed escaped. */
function escapeHelp(value: string): string {
  return value.replace(/\\/g, '\\\\').replace(/\n/g, '\\n');
}

/** A sample value as Go's `ParseFloat` reads it: `+Inf`, `-Inf`, `NaN`, or the shortest decimal. */
function number(value: number): string {
  if (Number.isNaN(value)) return 'NaN';
  if (value === Infinity) return '+Inf';
  if (value === -Infinity) return '-Inf';
  return String(value);
}
