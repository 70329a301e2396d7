/**
 * What the resource-server middleware answers when the request or the app around it is not the usual one:
 * a scope list longer than a description (RFC 6750 §3: the `scope` a client must ask for, named whole), a
 * verification that outlasts the response (a timeout middleware answered first: no second answer, no
 * unhandled rejection that would end the process), a form body the verifier cannot read (already read
 * by a middleware before it, or cut off by the client: never a thrown `verify()`), and one Hono kept when a
 * middleware before it read the body (the token in it is found).
 */
import { type Server, createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { getRequestListener } from '@hono/node-server';
import express from 'express';
import { Hono, type HonoRequest } from 'hono';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bearerAuth as expressAuth } from '../../src/server/adapters/express.js';
import { type BearerAuthVariables, bearerAuth as honoAuth } from '../../src/server/adapters/hono.js';
import { bearerAuth as nodeAuth } from '../../src/server/adapters/node.js';
import {
  type Verifier,
  type VerifierProvider,
  createVerifier,
  failure,
  failureResponse,
} from '../../src/server/index.js';
import {
  API_RESOURCE,
  type TestAuthorizationServer,
  startAuthorizationServer,
} from '../support/authorization-server.js';
import { issueToken } from '../server/support.js';

/** Scopes as Microsoft Entra ID names them: three make more than 128 characters. */
const ENTRA_SCOPES = ['Orders.Read', 'Orders.Write', 'Orders.Admin'].map(
  (s) => `api://3f2a8c91-1234-5678-9abc-def012345678/${s}`,
);

describe('the scope a refused request needs is named whole (RFC 6750 §3)', () => {
  let as: TestAuthorizationServer;
  let verifier: Verifier;
  let token: string;
  beforeAll(async () => {
    as = await startAuthorizationServer({ accessTokenTtl: 600 });
    verifier = createVerifier({ issuer: as.issuer, audience: API_RESOURCE, allowInsecureRequests: true });
    token = (await issueToken(as, { scope: 'read' })).accessToken;
  });
  afterAll(() => as.close());

  it('403 insufficient_scope: every required scope in the challenge and the body, however long the list', async () => {
    expect(ENTRA_SCOPES.join(' ').length).toBeGreaterThan(128);
    for (const requirement of [{ requiredScopes: ENTRA_SCOPES }, { anyScopes: ENTRA_SCOPES }]) {
      const result = await verifier(`Bearer ${token}`, requirement);
      expect(result.ok).toBe(false);
      const answer = failureResponse((result as { failure: Parameters<typeof failureResponse>[0] }).failure);
      expect(answer.status).toBe(403);
      expect(answer.body.scope).toBe(ENTRA_SCOPES.join(' '));
      expect(answer.headers['www-authenticate']).toContain(`scope="${ENTRA_SCOPES.join(' ')}"`);
    }
  });

  it('the 401 of a protected resource names the route scopes whole (what an MCP client asks for)', async () => {
    const app = express();
    app.use(
      expressAuth({
        issuer: as.issuer,
        allowInsecureRequests: true,
        requiredScopes: ENTRA_SCOPES,
        protectedResource: { resource: API_RESOURCE },
      }),
    );
    app.get('/orders', (_req, res) => void res.json({ ok: true }));
    const { url, close } = await listen(createServer(app));
    try {
      const res = await fetch(`${url}/orders`);
      expect(res.status).toBe(401);
      const header = res.headers.get('www-authenticate') ?? '';
      expect(header).toContain(`scope="${ENTRA_SCOPES.join(' ')}"`);
      expect(header).toMatch(/^Bearer realm="api", scope="[^"]+", resource_metadata="[^"]+"$/);
    } finally {
      await close();
    }
  });

  it('a scope token outside RFC 6749 scope-token syntax is left out, never turned into another scope', () => {
    const refused = failure('insufficient_scope', 'insufficient scope', 'read "admin" wr\\ite ok');
    expect(refused.scope).toBe('read ok');
    expect(failureResponse(refused).headers['www-authenticate']).toBe(
      'Bearer realm="api", error="insufficient_scope", error_description="insufficient scope", scope="read ok"',
    );
    // Nothing left to name: no scope attribute at all (not scope="").
    expect(failure('insufficient_scope', 'insufficient scope', '"\\').scope).toBeUndefined();
  });
});

/** A provider that takes `delayMs` to judge a token: valid when it is `good`, else invalid. */
function slowProvider(delayMs: number): VerifierProvider<{ sub: string }> {
  return {
    getPayload: (token) =>
      new Promise((resolve) =>
        setTimeout(
          () =>
            resolve(
              token === 'good'
                ? { ok: true, payload: { sub: 'alice' } }
                : { ok: false, error: 'invalid_token', description: 'unknown token' },
            ),
          delayMs,
        ),
      ),
  };
}

async function listen(server: Server): Promise<{ url: string; close(): Promise<void> }> {
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

/** Collects the unhandled rejections of a block (Node 20 ends the process on the first one by default). */
async function unhandledDuring(work: () => Promise<void>): Promise<unknown[]> {
  const seen: unknown[] = [];
  const listener = (reason: unknown) => void seen.push(reason);
  process.on('unhandledRejection', listener);
  try {
    await work();
    await new Promise((resolve) => setTimeout(resolve, 50)); // let a late rejection surface
  } finally {
    process.off('unhandledRejection', listener);
  }
  return seen;
}

describe('a verification that outlasts the response (a timeout middleware answered first)', () => {
  it('express: the late refusal writes nothing and rejects nothing; the timeout answer stands', async () => {
    const errors: unknown[] = [];
    const app = express();
    app.use((_req, res, next) => {
      setTimeout(() => {
        if (!res.headersSent) res.status(503).send('timed out');
      }, 20);
      next();
    });
    app.get('/orders', expressAuth({ provider: slowProvider(80) }), (_req, res) => void res.send('handler'));
    app.use((err: unknown, _req: express.Request, _res: express.Response, next: express.NextFunction) => {
      errors.push(err);
      next(err);
    });
    const { url, close } = await listen(createServer(app));
    try {
      const unhandled = await unhandledDuring(async () => {
        for (const token of ['bad', 'good']) {
          const res = await fetch(`${url}/orders`, { headers: { authorization: `Bearer ${token}` } });
          expect(res.status).toBe(503);
          expect(await res.text()).toBe('timed out');
          await new Promise((resolve) => setTimeout(resolve, 120)); // the verification ends meanwhile
        }
      });
      expect(unhandled).toEqual([]);
    } finally {
      await close();
    }
  });

  it('node:http, connect-style (with next) and awaited: resolves false, writes nothing after the answer', async () => {
    const authenticate = nodeAuth({ provider: slowProvider(30) });
    for (const withNext of [true, false]) {
      const outcomes: unknown[] = [];
      const server = createServer((req, res) => {
        setTimeout(() => res.writeHead(503).end('timed out'), 5);
        const done = withNext ? (err?: unknown) => outcomes.push(err ?? 'next') : undefined;
        authenticate(req, res, done).then(
          (auth) => outcomes.push(auth),
          (err: unknown) => outcomes.push(err),
        );
      });
      const { url, close } = await listen(server);
      try {
        const res = await fetch(url, { headers: { authorization: 'Bearer bad' } });
        expect(res.status).toBe(503);
        await new Promise((resolve) => setTimeout(resolve, 80));
        expect(outcomes, withNext ? 'with next' : 'awaited').toEqual([false]);
      } finally {
        await close();
      }
    }
  });
});

/** Valid when the token is `good`. */
const provider: VerifierProvider<{ sub: string }> = {
  getPayload: async (token) =>
    token === 'good'
      ? { ok: true, payload: { sub: 'alice' } }
      : { ok: false, error: 'invalid_token', description: 'unknown token' },
};
const form = { 'content-type': 'application/x-www-form-urlencoded' };

describe('a form body the verifier cannot read is no body, never a thrown verify()', () => {
  it('createVerifier with a Fetch Request whose body was read already, or errors mid-way', async () => {
    const verify = createVerifier({ provider, tokenLocations: ['header', 'body'] });
    const used = new Request('http://api.test/orders', {
      method: 'POST',
      headers: { ...form, authorization: 'Bearer good' },
      body: 'access_token=other',
    });
    await used.text();
    const result = await verify(used);
    expect(result.ok && result.auth.uid).toBe('alice');

    const aborted = new Request('http://api.test/orders', {
      method: 'POST',
      headers: form,
      body: new ReadableStream<Uint8Array>({
        start(controller) {
          controller.enqueue(new TextEncoder().encode('access_token=go'));
          controller.error(new Error('client went away'));
        },
      }),
      duplex: 'half',
    } as RequestInit);
    const cut = await verify(aborted);
    expect(cut.ok).toBe(false);
    expect(!cut.ok && cut.failure.error).toBe('missing_token');
  });

  it('hono: a middleware before it read the raw body; the header token still passes (not a 500)', async () => {
    const app = new Hono<{ Variables: BearerAuthVariables }>();
    app.onError((_err, c) => c.text('error', 500));
    app.use('*', async (c, next) => {
      await c.req.raw.text(); // e.g. a signature check over the raw body
      await next();
    });
    app.use('*', honoAuth({ provider, tokenLocations: ['header', 'body'] }));
    app.post('/orders', (c) => c.json({ uid: c.get('auth').uid }));
    const res = await app.request('/orders', {
      method: 'POST',
      headers: { ...form, authorization: 'Bearer good' },
      body: 'item=1',
    });
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({ uid: 'alice' });
  });
});

describe("hono: a form body a middleware before it read through Hono is read from Hono's body cache", () => {
  it('a body-only token after c.req.parseBody(), formData(), text() or arrayBuffer() in a middleware before it', async () => {
    const reads: Record<string, (c: { req: HonoRequest }) => Promise<unknown>> = {
      parseBody: (c) => c.req.parseBody(),
      formData: (c) => c.req.formData(),
      text: (c) => c.req.text(),
      arrayBuffer: (c) => c.req.arrayBuffer(),
    };
    for (const [name, read] of Object.entries(reads)) {
      const app = new Hono<{ Variables: BearerAuthVariables }>();
      app.onError((_err, c) => c.text('error', 500));
      app.use('*', async (c, next) => {
        await read(c); // e.g. a CSRF check or a logger that reads the form
        await next();
      });
      app.use('*', honoAuth({ provider, tokenLocations: ['header', 'body'] }));
      app.post('/orders', async (c) => c.json({ uid: c.get('auth').uid, item: (await c.req.parseBody())['item'] }));
      const post = (body: string, headers: Record<string, string> = {}) =>
        app.request('/orders', { method: 'POST', headers: { ...form, ...headers }, body });
      const res = await post('item=1&access_token=good');
      expect(res.status, name).toBe(200);
      expect(await res.json(), name).toEqual({ uid: 'alice', item: '1' });
      // What the cache holds counts as the request's body: a second token, or a bad one, is still refused.
      expect((await post('access_token=good', { authorization: 'Bearer good' })).status, name).toBe(400);
      expect((await post('access_token=good&access_token=good')).status, name).toBe(400);
      expect((await post('access_token=bad')).status, name).toBe(401);
      expect((await post('item=1')).status, name).toBe(401);
    }
  });

  it('on @hono/node-server: a body-only token after c.req.parseBody() in a middleware before it', async () => {
    const app = new Hono<{ Variables: BearerAuthVariables }>();
    app.use('*', async (c, next) => {
      await c.req.parseBody();
      await next();
    });
    app.use('*', honoAuth({ provider, tokenLocations: ['header', 'body'] }));
    app.post('/orders', (c) => c.json({ uid: c.get('auth').uid }));
    const { url, close } = await listen(createServer(getRequestListener(app.fetch)));
    try {
      const res = await fetch(`${url}/orders`, { method: 'POST', headers: form, body: 'access_token=good' });
      expect(res.status).toBe(200);
      expect(await res.json()).toEqual({ uid: 'alice' });
    } finally {
      await close();
    }
  });
});

describe('a token in the query under a percent-encoded name (RFC 6750 §2.3, §3.1)', () => {
  const provider: VerifierProvider<{ sub: string }> = {
    getPayload: async (token) => ({ ok: true, payload: { sub: token } }),
  };
  const request = (url: string, authorization?: string) => ({
    method: 'GET',
    url,
    headers: authorization === undefined ? {} : { authorization },
    rawHeaders: authorization === undefined ? [] : ['Authorization', authorization],
  });

  it('is the same parameter once decoded: beside a header token, a token in two places (400)', async () => {
    const verify = createVerifier({ provider, tokenLocations: ['header', 'query'] });
    for (const url of ['/orders?access%5Ftoken=q', '/orders?access%5ftoken=q&page=2', '/orders?%61ccess_token=q']) {
      const both = await verify(request(url, 'Bearer h'));
      expect(both.ok, url).toBe(false);
      expect(!both.ok && both.failure.error, url).toBe('invalid_request');
      const alone = await verify(request(url));
      expect(alone.ok && alone.auth.uid, url).toBe('q');
    }
    // Other escapes in the query change nothing.
    const other = await verify(request('/orders?q=a%20b', 'Bearer h'));
    expect(other.ok && other.auth.uid).toBe('h');
  });
});
