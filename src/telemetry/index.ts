/**
 * `tokenwarden/telemetry`: the catalogue of tokenwarden's OpenTelemetry instruments and spans, and
 * {@link MetricsRegistry} for Prometheus text without an OpenTelemetry SDK.
 *
 * Metrics and traces need no code: install `@opentelemetry/api`, register an SDK (`MeterProvider`,
 * `TracerProvider`) as usual, and every `TokenManager`, `UserTokens` and verifier records on the meter and
 * tracer named `tokenwarden`. Without the API, or without an SDK, nothing is recorded and nothing is paid.
 *
 * @module
 */
export { ATTRIBUTES, INSTRUMENTS, type InstrumentSpec, SPANS, prometheusLabel, prometheusName } from './instruments.js';
export { MetricsRegistry } from './registry.js';
