/**
 * Metrics and traces for a service that calls an API with a client credentials token and serves its own API:
 * the OpenTelemetry SDK registered once at start-up (tokenwarden needs no option), and — for a Prometheus
 * scrape without an OpenTelemetry pipeline — the same instruments on GET /metrics.
 */
import { context, metrics, trace } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import { ConsoleMetricExporter, MeterProvider, PeriodicExportingMetricReader } from '@opentelemetry/sdk-metrics';
import { BasicTracerProvider, ConsoleSpanExporter, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-base';
import express from 'express';
import { TokenManager, clientCredentials } from 'tokenwarden';
import { bearerAuth } from 'tokenwarden/express';
import { createVerifier } from 'tokenwarden/server';
import { MetricsRegistry } from 'tokenwarden/telemetry';

// 1. The SDK first (any exporter: OTLP to a collector in production; the console here).
context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
metrics.setGlobalMeterProvider(
  new MeterProvider({ readers: [new PeriodicExportingMetricReader({ exporter: new ConsoleMetricExporter() })] }),
);
trace.setGlobalTracerProvider(
  new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(new ConsoleSpanExporter())] }),
);

// 2. tokenwarden as usual: token requests, stale serving, time to expiry and verifications are recorded.
const billing = new TokenManager({
  name: 'billing', // tokenwarden.name on tokenwarden.token.time_to_expiry
  source: clientCredentials({
    issuer: 'https://login.example.com',
    clientId: 'billing',
    clientSecret: process.env['CLIENT_SECRET'],
    scope: 'invoices:read',
  }),
});
const verifier = createVerifier({ issuer: 'https://login.example.com', audience: 'https://orders.example.com' });

// 3. Optionally, Prometheus text straight from the process.
const registry = new MetricsRegistry();
const app = express();
app.get('/metrics', (_req, res) => res.type(registry.contentType).send(registry.text()));
app.get('/orders', bearerAuth({ verifier }), async (_req, res) => {
  const invoices = await billing.fetch('https://billing.example.com/invoices');
  res.json(await invoices.json());
});
app.listen(3000);
