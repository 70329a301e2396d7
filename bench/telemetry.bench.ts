/**
 * Issue 12: what observability costs. The getToken() hot path with `@opentelemetry/api` installed and no SDK
 * (the promise: ≥ 0.5× an awaited Map lookup), and with an SDK registered (metrics and traces); a repeated
 * token's verify() with the SDK recording each call vs with no SDK.
 */
import { context, metrics, trace } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import {
  AggregationTemporality,
  InMemoryMetricExporter,
  MeterProvider,
  PeriodicExportingMetricReader,
} from '@opentelemetry/sdk-metrics';
import { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-base';
import { TokenManager, clientCredentials } from '../dist/index.js';
import { createVerifier } from '../dist/server/index.js';
import { API_RESOURCE, startAuthorizationServer } from '../test/support/authorization-server.js';
import { issueToken } from '../test/server/support.js';
import type { BenchRow } from './run.js';
import { compare, opsPerSecond, percentile, ratio, si } from './util.js';

export async function run(): Promise<BenchRow[]> {
  const as = await startAuthorizationServer({ accessTokenTtl: 3600 });
  const rows: BenchRow[] = [];
  metrics.disable();
  trace.disable();

  const manager = new TokenManager({
    source: clientCredentials({
      issuer: as.issuer,
      clientId: as.clients.svc.clientId,
      clientSecret: as.clients.svc.clientSecret,
      scope: 'read',
      allowInsecureRequests: true,
    }),
  });
  const token = await manager.getToken();
  const map = new Map([['k', token]]);

  // 1. The API installed, no SDK registered.
  const [mapNoSdk, noSdk] = await compare(
    () => map.get('k'),
    () => manager.getToken(),
    { ms: 3000 },
  );
  rows.push({
    case: 'getToken() hot path, @opentelemetry/api installed, no SDK',
    ours: `${si(noSdk)} ops/s`,
    baseline: `awaited Map.get: ${si(mapNoSdk)} ops/s`,
    ratio: ratio(noSdk, mapNoSdk),
  });

  // 2. An SDK registered: metrics to an in-memory exporter, spans to an in-memory exporter.
  const meterProvider = new MeterProvider({
    readers: [
      new PeriodicExportingMetricReader({
        exporter: new InMemoryMetricExporter(AggregationTemporality.CUMULATIVE),
        exportIntervalMillis: 3_600_000,
      }),
    ],
  });
  const tracerProvider = new BasicTracerProvider({
    spanProcessors: [new SimpleSpanProcessor(new InMemorySpanExporter())],
  });
  context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
  metrics.setGlobalMeterProvider(meterProvider);
  trace.setGlobalTracerProvider(tracerProvider);
  await manager.refresh(); // a token request recorded: instruments exist
  const [mapSdk, sdk] = await compare(
    () => map.get('k'),
    () => manager.getToken(),
    { ms: 3000 },
  );
  rows.push({
    case: 'getToken() hot path, SDK registered (metrics and traces)',
    ours: `${si(sdk)} ops/s`,
    baseline: `awaited Map.get: ${si(mapSdk)} ops/s`,
    ratio: ratio(sdk, mapSdk),
  });

  // 3. verify() of a repeated token (cache hits): counted and timed with the SDK, not without. The provider
  // is registered and unregistered between slices, so both sides share the machine's load.
  const verify = createVerifier({ issuer: as.issuer, audience: API_RESOURCE, allowInsecureRequests: true });
  const header = `Bearer ${(await issueToken(as, { scope: 'read' })).accessToken}`;
  if (!(await verify(header)).ok) throw new Error('bench token did not verify');
  const without: number[] = [];
  const withSdk: number[] = [];
  for (let round = 0; round < 8; round++) {
    metrics.disable();
    without.push(await opsPerSecond(() => verify(header), { ms: 250 }));
    metrics.setGlobalMeterProvider(meterProvider);
    withSdk.push(await opsPerSecond(() => verify(header), { ms: 250 }));
  }
  const [off, on] = [percentile(without, 50), percentile(withSdk, 50)];
  rows.push({
    case: 'verify() repeated token, SDK recording count and duration',
    ours: `${si(on)} ops/s`,
    baseline: `no SDK: ${si(off)} ops/s`,
    ratio: ratio(on, off),
  });

  metrics.disable();
  trace.disable();
  context.disable();
  await manager.close();
  await Promise.all([meterProvider.shutdown(), tracerProvider.shutdown()]);
  await as.close();
  return rows;
}
