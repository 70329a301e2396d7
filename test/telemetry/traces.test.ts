/**
 * Spans through the real OpenTelemetry SDK (a global tracer provider with an in-memory span exporter, the
 * AsyncLocalStorage context manager) and the real undici instrumentation, against the real authorization
 * server: one `tokenwarden.token_request` span per token request with the HTTP client spans as its
 * children, inside the caller's span; `tokenwarden.verify` on cache misses only.
 */
import { trace } from '@opentelemetry/api';
import { UndiciInstrumentation } from '@opentelemetry/instrumentation-undici';
import type { ReadableSpan } from '@opentelemetry/sdk-trace-base';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { TokenManager, clientCredentials } from '../../src/index.js';
import { createVerifier } from '../../src/server/index.js';
import { SPANS } from '../../src/telemetry/index.js';
import {
  API_RESOURCE,
  type TestAuthorizationServer,
  startAuthorizationServer,
} from '../support/authorization-server.js';
import { type TracesHarness, installTraces } from '../support/otel.js';
import { issueToken } from '../server/support.js';

let as: TestAuthorizationServer;
let otel: TracesHarness;
let undici: UndiciInstrumentation;
beforeAll(async () => {
  as = await startAuthorizationServer({ accessTokenTtl: 60 });
});
beforeEach(() => {
  otel = installTraces();
  undici = new UndiciInstrumentation(); // enabled on construction: subscribes to undici's diagnostics channels
});
afterEach(async () => {
  undici.disable();
  await otel.close();
});
afterAll(() => as?.close());

const svc = (extra: Record<string, unknown> = {}) => ({
  issuer: as.issuer,
  clientId: as.clients.svc.clientId,
  clientSecret: as.clients.svc.clientSecret,
  scope: 'read',
  allowInsecureRequests: true,
  ...extra,
});

const childrenOf = (spans: ReadableSpan[], parent: ReadableSpan): ReadableSpan[] =>
  spans.filter((s) => s.parentSpanContext?.spanId === parent.spanContext().spanId);

describe('spans', () => {
  it("a token request is one span, a child of the caller's span, with the HTTP client spans as its children", async () => {
    const manager = new TokenManager({ source: clientCredentials(svc()) });
    try {
      const tracer = trace.getTracer('app');
      await tracer.startActiveSpan('handle order', async (parent) => {
        await manager.getToken();
        parent.end();
      });
      const spans = otel.exporter.getFinishedSpans();
      const requests = spans.filter((s) => s.name === SPANS.tokenRequest);
      expect(requests).toHaveLength(1);
      const span = requests[0] as ReadableSpan;
      expect(span.instrumentationScope.name).toBe('tokenwarden');
      expect(span.attributes).toEqual({ 'tokenwarden.grant': 'client_credentials', 'tokenwarden.outcome': 'success' });
      expect(span.status.code).toBe(0); // unset
      const app = spans.find((s) => s.name === 'handle order') as ReadableSpan;
      expect(span.parentSpanContext?.spanId).toBe(app.spanContext().spanId);

      // Discovery and the token endpoint request: undici's client spans, children of the token request.
      const http = childrenOf(spans, span);
      expect(http.length).toBeGreaterThanOrEqual(1);
      const urls = http.map((s) => String(s.attributes['url.full']));
      expect(urls.some((u) => u.endsWith('/token'))).toBe(true);
      for (const s of http) expect(s.instrumentationScope.name).toContain('undici');
    } finally {
      await manager.close();
    }
  });

  it('a failed token request: an error span with the code only; no secret in any span', async () => {
    const secret = 'wrong-secret-for-a-span-test';
    const manager = new TokenManager({ source: clientCredentials(svc({ clientSecret: secret })) });
    try {
      await expect(manager.getToken()).rejects.toMatchObject({ code: 'ERR_OAUTH', error: 'invalid_client' });
      const spans = otel.exporter.getFinishedSpans();
      const span = spans.find((s) => s.name === SPANS.tokenRequest) as ReadableSpan;
      expect(span.attributes).toEqual({
        'tokenwarden.grant': 'client_credentials',
        'tokenwarden.outcome': 'error',
        'error.type': 'ERR_OAUTH',
      });
      expect(span.status).toEqual({ code: 2, message: 'ERR_OAUTH' });
      expect(span.events).toEqual([]); // no exception event: its message could quote the server
      for (const s of spans) {
        const text = JSON.stringify([s.name, s.attributes, s.status, s.events]);
        expect(text).not.toContain(secret);
        expect(text).not.toContain(as.clients.svc.clientSecret);
      }
    } finally {
      await manager.close();
    }
  });

  it('a verification that misses the cache is one tokenwarden.verify span (the JWKS fetch its child); a hit has none', async () => {
    const token = (await issueToken(as, { scope: 'read' })).accessToken;
    const verify = createVerifier({ issuer: as.issuer, audience: API_RESOURCE, allowInsecureRequests: true });
    expect((await verify(`Bearer ${token}`)).ok).toBe(true);
    expect((await verify(`Bearer ${token}`)).ok).toBe(true);
    expect((await verify(`Bearer ${token}x`)).ok).toBe(false);
    const spans = otel.exporter.getFinishedSpans();
    const verifies = spans.filter((s) => s.name === SPANS.verify);
    expect(verifies.map((s) => s.attributes['tokenwarden.outcome'])).toEqual(['ok', 'invalid_token']);
    const first = verifies[0] as ReadableSpan;
    const urls = childrenOf(spans, first).map((s) => String(s.attributes['url.full']));
    expect(urls.some((u) => u.endsWith('/jwks'))).toBe(true);
    for (const s of spans) expect(JSON.stringify(s.attributes)).not.toContain(token);
  });
});
