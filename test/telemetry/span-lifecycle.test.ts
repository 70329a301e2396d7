/**
 * Every span tokenwarden starts ends exactly once, on every path — success, an OAuth error, the caller's
 * abort, a timeout, `close()` while a request is in flight, concurrent callers sharing one request or one
 * verification — with its status per the OpenTelemetry conventions: unset on success and on a refusal (the
 * verifier doing its job, as a 4xx leaves an HTTP server span unset), `ERROR` with `error.type` when the
 * operation failed (as a 5xx does). Through the real SDK (`BasicTracerProvider`, async context), against the
 * real authorization server; a held answer (fault server) only to keep a request in flight on demand.
 */
import { context, trace } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import {
  BasicTracerProvider,
  InMemorySpanExporter,
  type ReadableSpan,
  SimpleSpanProcessor,
  type Span,
  type SpanProcessor,
} from '@opentelemetry/sdk-trace-base';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { TokenManager, clientCredentials } from '../../src/index.js';
import { createVerifier } from '../../src/server/index.js';
import { SPANS } from '../../src/telemetry/index.js';
import {
  API_RESOURCE,
  type TestAuthorizationServer,
  startAuthorizationServer,
} from '../support/authorization-server.js';
import { type FaultServer, json, startFaultServer } from '../support/fault-server.js';
import { closedPort } from '../cli/support.js';
import { issueToken } from '../server/support.js';

/** Counts every `end()` call on every span (the SDK ignores a second one: only counting the calls shows it). */
class EndCounter implements SpanProcessor {
  readonly ends = new Map<Span, number>();
  onStart(span: Span): void {
    this.ends.set(span, 0);
    const end = span.end.bind(span);
    span.end = (time) => {
      this.ends.set(span, (this.ends.get(span) ?? 0) + 1);
      end(time);
    };
  }
  onEnd(): void {}
  forceFlush(): Promise<void> {
    return Promise.resolve();
  }
  shutdown(): Promise<void> {
    return Promise.resolve();
  }
  /** tokenwarden's spans and how often each was ended. */
  mine(): [Span, number][] {
    return [...this.ends].filter(([span]) => span.instrumentationScope.name === 'tokenwarden');
  }
}

let as: TestAuthorizationServer;
let held: FaultServer;
/** Answers the held server's requests when called (it holds each until then). */
let release: (() => void)[] = [];
let counter: EndCounter;
let exporter: InMemorySpanExporter;
let provider: BasicTracerProvider;

beforeAll(async () => {
  as = await startAuthorizationServer({ accessTokenTtl: 60 });
  held = await startFaultServer(async (_req, res) => {
    await new Promise<void>((resolve) => release.push(resolve));
    json(res, 200, { access_token: 'held-token', token_type: 'Bearer', expires_in: 60 });
  });
});
afterAll(async () => {
  for (const r of release) r();
  await Promise.all([as?.close(), held?.close()]);
});
beforeEach(() => {
  release = [];
  counter = new EndCounter();
  exporter = new InMemorySpanExporter();
  provider = new BasicTracerProvider({ spanProcessors: [counter, new SimpleSpanProcessor(exporter)] });
  context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
  trace.setGlobalTracerProvider(provider);
});
afterEach(async () => {
  // The promise of the file: whatever happened, every span started was ended, once.
  for (const [span, ends] of counter.mine()) expect(ends, `${span.name} ended ${ends} times`).toBe(1);
  trace.disable();
  context.disable();
  await provider.shutdown();
});

const svc = (extra: Record<string, unknown> = {}) => ({
  issuer: as.issuer,
  clientId: as.clients.svc.clientId,
  clientSecret: as.clients.svc.clientSecret,
  scope: 'read',
  allowInsecureRequests: true,
  ...extra,
});
const heldSource = (extra: Record<string, unknown> = {}) =>
  clientCredentials({
    tokenEndpoint: `${held.url}/token`,
    clientId: 'svc',
    clientSecret: 'held-secret',
    allowInsecureRequests: true,
    ...extra,
  });
const tokenSpans = (): ReadableSpan[] => exporter.getFinishedSpans().filter((s) => s.name === SPANS.tokenRequest);
const verifySpans = (): ReadableSpan[] => exporter.getFinishedSpans().filter((s) => s.name === SPANS.verify);
const status = (s: ReadableSpan) => ({ ...s.status, attributes: s.attributes });

/** Waits (real time: the request is on a real socket) until the held server has `n` requests. */
async function requestsArrived(n: number): Promise<void> {
  const end = Date.now() + 5000;
  while (release.length < n) {
    if (Date.now() > end) throw new Error(`${n} requests did not arrive in 5 s`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

describe('token request spans', () => {
  it('success: one span for concurrent callers, status unset', async () => {
    const manager = new TokenManager({ source: clientCredentials(svc()) });
    try {
      await Promise.all([manager.getToken(), manager.getToken(), manager.getToken()]);
      expect(tokenSpans().map(status)).toEqual([
        {
          code: 0,
          attributes: { 'tokenwarden.grant': 'client_credentials', 'tokenwarden.outcome': 'success' },
        },
      ]);
    } finally {
      await manager.close();
    }
  });

  it('an OAuth error: ERROR, with the code as error.type and message', async () => {
    const manager = new TokenManager({ source: clientCredentials(svc({ clientSecret: 'wrong-secret-for-spans' })) });
    try {
      await expect(manager.getToken()).rejects.toMatchObject({ code: 'ERR_OAUTH' });
      expect(tokenSpans().map(status)).toEqual([
        {
          code: 2,
          message: 'ERR_OAUTH',
          attributes: {
            'tokenwarden.grant': 'client_credentials',
            'tokenwarden.outcome': 'error',
            'error.type': 'ERR_OAUTH',
          },
        },
      ]);
    } finally {
      await manager.close();
    }
  });

  it("the caller's abort: the span ends with ERR_ABORTED", async () => {
    const controller = new AbortController();
    const pending = heldSource().fetchToken({ signal: controller.signal });
    await requestsArrived(1);
    expect(counter.mine().map(([, ends]) => ends)).toEqual([0]); // open while the request is
    controller.abort();
    await expect(pending).rejects.toMatchObject({ code: 'ERR_ABORTED' });
    expect(tokenSpans().map((s) => [s.status.code, s.attributes['error.type']])).toEqual([[2, 'ERR_ABORTED']]);
  });

  it('a timeout: the span ends with ERR_TIMEOUT', async () => {
    await expect(heldSource({ timeout: '100ms' }).fetchToken({})).rejects.toMatchObject({ code: 'ERR_TIMEOUT' });
    expect(tokenSpans().map((s) => [s.status.code, s.attributes['error.type']])).toEqual([[2, 'ERR_TIMEOUT']]);
  });

  it('close() with a request in flight: no span left open once close() resolves', async () => {
    const manager = new TokenManager({ source: heldSource() });
    const demand = manager.getToken().catch((e: unknown) => e);
    await requestsArrived(1);
    const closed = manager.close();
    expect(counter.mine().map(([, ends]) => ends)).toEqual([0]);
    for (const r of release) r(); // the request already sent runs on (its answer may rotate a refresh token)
    await closed;
    expect(counter.mine().map(([, ends]) => ends)).toEqual([1]);
    expect(tokenSpans()).toHaveLength(1);
    expect(tokenSpans()[0]?.attributes['tokenwarden.outcome']).toBe('success');
    await demand;
  });
});

describe('verify spans', () => {
  it('ok and refused: status unset; concurrent misses of one token each end theirs', async () => {
    const token = (await issueToken(as, { scope: 'read' })).accessToken;
    const verify = createVerifier({ issuer: as.issuer, audience: API_RESOURCE, allowInsecureRequests: true });
    const answers = await Promise.all([verify(`Bearer ${token}`), verify(`Bearer ${token}`)]);
    expect(answers.every((a) => a.ok)).toBe(true);
    expect((await verify(`Bearer ${token}x`)).ok).toBe(false);
    expect(verifySpans().map(status)).toEqual([
      { code: 0, attributes: { 'tokenwarden.outcome': 'ok' } },
      { code: 0, attributes: { 'tokenwarden.outcome': 'ok' } },
      { code: 0, attributes: { 'tokenwarden.outcome': 'invalid_token' } },
    ]);
  });

  it('the token could not be checked (503): ERROR, with error.type', async () => {
    const token = (await issueToken(as, { scope: 'read' })).accessToken;
    const down = createVerifier({
      issuer: as.issuer,
      audience: API_RESOURCE,
      jwksUri: `http://127.0.0.1:${await closedPort()}/jwks`,
      allowInsecureRequests: true,
    });
    expect(await down(`Bearer ${token}`)).toMatchObject({ failure: { error: 'temporarily_unavailable' } });
    expect(verifySpans().map(status)).toEqual([
      {
        code: 2,
        message: 'temporarily_unavailable',
        attributes: { 'tokenwarden.outcome': 'unavailable', 'error.type': 'temporarily_unavailable' },
      },
    ]);
  });
});
