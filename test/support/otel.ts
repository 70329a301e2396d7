/**
 * The real OpenTelemetry SDK for tests: a global `MeterProvider` whose reader exports to an in-memory exporter
 * (cumulative), and a global tracer provider with an in-memory span exporter and the AsyncLocalStorage
 * context manager — as an application sets them up.
 */
import { context, metrics, trace } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import {
  AggregationTemporality,
  DataPointType,
  InMemoryMetricExporter,
  MeterProvider,
  PeriodicExportingMetricReader,
} from '@opentelemetry/sdk-metrics';
import { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-base';

/** One exported data point, flattened. */
export interface Point {
  name: string;
  unit: string;
  /** `counter`, `histogram` or `gauge`. */
  kind: string;
  attributes: Record<string, unknown>;
  /** A counter's sum or a gauge's value; a histogram's count. */
  value: number;
  /** Histograms: the sum of the recorded values. */
  sum?: number;
  /** Histograms: the bucket boundaries. */
  boundaries?: number[];
}

export interface MetricsHarness {
  /** Exports now and returns every data point of the meter `tokenwarden`. */
  collect(): Promise<Point[]>;
  close(): Promise<void>;
}

/** Registers a global `MeterProvider` exporting to an `InMemoryMetricExporter`. */
export function installMetrics(): MetricsHarness {
  const exporter = new InMemoryMetricExporter(AggregationTemporality.CUMULATIVE);
  const reader = new PeriodicExportingMetricReader({ exporter, exportIntervalMillis: 3_600_000 });
  const provider = new MeterProvider({ readers: [reader] });
  metrics.disable();
  if (!metrics.setGlobalMeterProvider(provider)) throw new Error('could not register the meter provider');
  return {
    async collect() {
      await reader.forceFlush();
      const last = exporter.getMetrics().at(-1);
      const points: Point[] = [];
      for (const scope of last?.scopeMetrics ?? []) {
        if (scope.scope.name !== 'tokenwarden') continue;
        for (const metric of scope.metrics) {
          const { name, unit } = metric.descriptor;
          const kind =
            metric.dataPointType === DataPointType.HISTOGRAM
              ? 'histogram'
              : metric.dataPointType === DataPointType.GAUGE
                ? 'gauge'
                : 'counter';
          for (const dp of metric.dataPoints as { attributes: Record<string, unknown>; value: unknown }[]) {
            const value = dp.value as number | { count: number; sum: number; buckets: { boundaries: number[] } };
            points.push({
              name,
              unit,
              kind,
              attributes: dp.attributes,
              ...(typeof value === 'number'
                ? { value }
                : { value: value.count, sum: value.sum, boundaries: value.buckets.boundaries }),
            });
          }
        }
      }
      return points;
    },
    async close() {
      metrics.disable();
      await provider.shutdown();
    },
  };
}

/** Sum of `name`'s points whose attributes include `where`. */
export function total(points: Point[], name: string, where: Record<string, unknown> = {}): number {
  return points
    .filter((p) => p.name === name && Object.entries(where).every(([k, v]) => p.attributes[k] === v))
    .reduce((sum, p) => sum + p.value, 0);
}

export interface TracesHarness {
  readonly exporter: InMemorySpanExporter;
  close(): Promise<void>;
}

/** Registers a global tracer provider exporting to an `InMemorySpanExporter`, with async context. */
export function installTraces(): TracesHarness {
  const exporter = new InMemorySpanExporter();
  const provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
  const contextManager = new AsyncLocalStorageContextManager().enable();
  trace.disable();
  context.disable();
  context.setGlobalContextManager(contextManager);
  if (!trace.setGlobalTracerProvider(provider)) throw new Error('could not register the tracer provider');
  return {
    exporter,
    async close() {
      trace.disable();
      context.disable();
      await provider.shutdown();
    },
  };
}

/** Every attribute value of every point and span, as strings: for secret scans. */
export function attributeValues(points: Point[], spans: { attributes: Record<string, unknown> }[] = []): string[] {
  return [...points, ...spans].flatMap((p) => Object.values(p.attributes).map(String));
}
