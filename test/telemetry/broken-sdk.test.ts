/**
 * A broken telemetry SDK never breaks what it observes: a span processor that throws (the real SDK's
 * `BasicTracerProvider`), a meter whose instruments throw, a provider that cannot make a meter, a tracer
 * answering odd spans, a context manager that throws. Each time `getToken()` gets its token, a refresh token
 * the server rotated is kept (the next refresh spends it), `verify()` answers, and a request through the
 * Node.js adapter is answered as without telemetry — against the real authorization server.
 */
import { type IncomingMessage, type ServerResponse, createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { type ContextManager, type DiagLogger, ROOT_CONTEXT, context, diag, metrics, trace } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import {
  BasicTracerProvider,
  InMemorySpanExporter,
  SimpleSpanProcessor,
  type SpanProcessor,
} from '@opentelemetry/sdk-trace-base';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { type Token, TokenManager, UserTokens, clientCredentials } from '../../src/index.js';
import { bearerAuth } from '../../src/server/adapters/node.js';
import { createVerifier } from '../../src/server/index.js';
import { MetricsRegistry } from '../../src/telemetry/index.js';
import {
  API_RESOURCE,
  type TestAuthorizationServer,
  startAuthorizationServer,
} from '../support/authorization-server.js';
import { appRefreshToken } from '../support/app-client.js';
import { issueToken } from '../server/support.js';

let as: TestAuthorizationServer;
beforeAll(async () => {
  as = await startAuthorizationServer({ accessTokenTtl: 60 });
});
afterAll(() => as?.close());
afterEach(() => {
  metrics.disable();
  trace.disable();
  context.disable();
  diag.disable();
});

const broken = (): never => {
  throw new Error('the telemetry SDK broke');
};

const svc = () => ({
  issuer: as.issuer,
  clientId: as.clients.svc.clientId,
  clientSecret: as.clients.svc.clientSecret,
  scope: 'read',
  allowInsecureRequests: true,
});

/** A real SDK tracer provider whose one span processor throws in `where`. */
function throwingProcessor(where: 'onStart' | 'onEnd'): BasicTracerProvider {
  const processor: SpanProcessor = new SimpleSpanProcessor(new InMemorySpanExporter());
  processor[where] = broken;
  context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
  return new BasicTracerProvider({ spanProcessors: [processor] });
}

/** A meter whose every instrument throws when it records. */
const throwingMeter = {
  createCounter: () => ({ add: broken }),
  createHistogram: () => ({ record: broken }),
  createObservableGauge: () => ({ addCallback: broken }),
};

/** A span every method of which throws. */
const oddSpan = {
  setAttribute: broken,
  setAttributes: broken,
  setStatus: broken,
  addEvent: broken,
  addLink: broken,
  addLinks: broken,
  updateName: broken,
  recordException: broken,
  end: broken,
  isRecording: broken,
  spanContext: broken,
};

/** A context manager that cannot run anything. */
const throwingContextManager: ContextManager = {
  active: broken,
  with: broken,
  bind: broken,
  enable() {
    return this;
  },
  disable() {
    return this;
  },
};

const faults: Record<string, () => void> = {
  'a span processor whose onStart throws': () => trace.setGlobalTracerProvider(throwingProcessor('onStart')),
  'a span processor whose onEnd throws': () => trace.setGlobalTracerProvider(throwingProcessor('onEnd')),
  'a meter whose instruments throw': () => metrics.setGlobalMeterProvider({ getMeter: () => throwingMeter as never }),
  'a meter provider that cannot make a meter': () => metrics.setGlobalMeterProvider({ getMeter: broken }),
  'a meter that cannot make instruments': () =>
    metrics.setGlobalMeterProvider({
      getMeter: () => ({ createCounter: broken, createHistogram: broken, createObservableGauge: broken }) as never,
    }),
  'a tracer whose spans throw': () =>
    trace.setGlobalTracerProvider({ getTracer: () => ({ startSpan: () => oddSpan, startActiveSpan: broken }) }),
  'a tracer answering no span': () =>
    trace.setGlobalTracerProvider({
      getTracer: () => ({ startSpan: () => undefined, startActiveSpan: broken }) as never,
    }),
  'a tracer whose startSpan throws': () =>
    trace.setGlobalTracerProvider({ getTracer: () => ({ startSpan: broken, startActiveSpan: broken }) }),
  'a tracer provider that cannot make a tracer': () => trace.setGlobalTracerProvider({ getTracer: broken }),
  'a context manager that throws': () => {
    context.setGlobalContextManager(throwingContextManager);
    trace.setGlobalTracerProvider(new BasicTracerProvider());
  },
  'a context manager that never runs the function': () => {
    context.setGlobalContextManager({
      ...throwingContextManager,
      active: () => ROOT_CONTEXT,
      with: (() => 42) as never,
    });
    trace.setGlobalTracerProvider(new BasicTracerProvider());
  },
};

describe('a broken telemetry SDK', () => {
  it("is reported on OpenTelemetry's diag log, once", async () => {
    const errors: unknown[][] = [];
    const logger: DiagLogger = {
      error: (...args) => errors.push(args),
      warn: () => undefined,
      info: () => undefined,
      debug: () => undefined,
      verbose: () => undefined,
    };
    diag.setLogger(logger);
    faults['a meter whose instruments throw']?.();
    const manager = new TokenManager({ source: clientCredentials(svc()) });
    try {
      await manager.getToken();
      await manager.refresh();
      const mine = errors.filter(([message]) => String(message).startsWith('tokenwarden:'));
      // The first failure only (this is the file's first test): a broken exporter must not flood a log.
      expect(mine).toHaveLength(1);
      expect(mine[0]?.[1]).toMatchObject({ message: 'the telemetry SDK broke' });
    } finally {
      await manager.close();
    }
  });

  for (const [fault, install] of Object.entries(faults)) {
    it(`${fault}: tokens are served, rotated refresh tokens kept, requests verified`, async () => {
      install();
      const manager = new TokenManager({ source: clientCredentials(svc()) });
      const login = await as.login('tess');
      const rotating = new TokenManager({ source: appRefreshToken(as, login['refresh_token'] as string) });
      const server = createServer(
        ((authenticate) => async (req: IncomingMessage, res: ServerResponse) => {
          if ((await authenticate(req, res)) === false) return;
          res.end('hello');
        })(bearerAuth({ issuer: as.issuer, audience: API_RESOURCE, allowInsecureRequests: true })),
      );
      try {
        expect((await manager.getToken()).accessToken).toBeTruthy();
        // Each refresh spends the refresh token the previous one received: one lost to telemetry would be
        // refused (the server revokes the grant on reuse).
        const first = await rotating.getToken();
        const second = await rotating.refresh();
        const third = await rotating.refresh();
        expect(new Set([first.refreshToken, second.refreshToken, third.refreshToken]).size).toBe(3);

        const token = (await issueToken(as, { scope: 'read' })).accessToken;
        const verify = createVerifier({ issuer: as.issuer, audience: API_RESOURCE, allowInsecureRequests: true });
        expect((await verify(`Bearer ${token}`)).ok).toBe(true); // a miss: JWKS fetched
        expect((await verify(`Bearer ${token}`)).ok).toBe(true); // a hit: answered at once
        expect(await verify(`Bearer ${token}x`)).toMatchObject({ ok: false, failure: { error: 'invalid_token' } });

        await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
        const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/`;
        for (const expected of [200, 200]) {
          const response = await fetch(url, { headers: { authorization: `Bearer ${token}` } });
          expect(response.status).toBe(expected);
          expect(await response.text()).toBe('hello');
        }
        expect((await fetch(url, { headers: { authorization: `Bearer ${token}x` } })).status).toBe(401);
      } finally {
        server.close();
        await Promise.all([manager.close(), rotating.close()]);
      }
    });
  }

  it("UserTokens refreshes through a broken SDK and keeps the user's rotated refresh token", async () => {
    faults['a span processor whose onEnd throws']?.();
    faults['a meter whose instruments throw']?.();
    const users = new UserTokens({
      issuer: as.issuer,
      clientId: as.clients.app.clientId,
      clientSecret: as.clients.app.clientSecret,
      allowInsecureRequests: true,
    });
    try {
      await users.save('uma', await as.login('uma'));
      // Each refresh (after the held token was refused) spends the refresh token the previous one received.
      const tokens = [await users.getAccessToken('uma')];
      for (let n = 0; n < 2; n++) {
        await users.invalidate('uma', (tokens.at(-1) as Token).accessToken);
        tokens.push(await users.getAccessToken('uma'));
      }
      expect(new Set(tokens.map((t) => t.accessToken)).size).toBe(3);
    } finally {
      await users.close();
    }
  });

  it('one broken sink does not starve another: the registry still counts', async () => {
    faults['a meter whose instruments throw']?.();
    const registry = new MetricsRegistry();
    const manager = new TokenManager({ source: clientCredentials(svc()) });
    try {
      await manager.getToken();
      expect(registry.text()).toMatch(
        /^tokenwarden_token_requests_total\{tokenwarden_grant="client_credentials",tokenwarden_outcome="success"\} 1$/m,
      );
    } finally {
      registry.close();
      await manager.close();
    }
  });
});
