/**
 * The Fastify, Koa and Hono middleware under hostile requests, over real sockets: the corpus of hostile
 * `Authorization` headers (support.ts) — each answered 400/401/403/503 with an RFC 6750 challenge, never a
 * 500 or a route reached, nothing of the token echoed — and apps around the middleware that are not the
 * usual one: a middleware before it that set or removed the `Authorization` header (what is checked is what
 * the app sees, not what the client first sent), a Hono sub-app called with another `Request`, and the Fastify
 * plugin with `protectedResource` registered under a prefix (where its document could never be served), and
 * a shared verifier given options of its own (which it would ignore), and a Hono route that answers with a
 * `Response` of its own (where a new `DPoP-Nonce` must still go).
 */
import { type Server, createServer, request as httpRequest } from 'node:http';
import type { AddressInfo } from 'node:net';
import { getRequestListener } from '@hono/node-server';
import express from 'express';
import Fastify from 'fastify';
import { Hono } from 'hono';
import Koa from 'koa';
import { generateKeyPair } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TokenwardenError } from '../../src/errors.js';
import { bearerAuth as expressAuth } from '../../src/server/adapters/express.js';
import { bearerAuth as fastifyAuth, bearerAuthHook as fastifyHook } from '../../src/server/adapters/fastify.js';
import { type BearerAuthVariables, bearerAuth as honoAuth, withBearerAuth } from '../../src/server/adapters/hono.js';
import { bearerAuth as koaAuth } from '../../src/server/adapters/koa.js';
import { type Verifier, createVerifier } from '../../src/server/index.js';
import {
  API_RESOURCE,
  type TestAuthorizationServer,
  startAuthorizationServer,
} from '../support/authorization-server.js';
import { dpopProof, forge, issueDPoPToken, issueToken } from '../server/support.js';
import { type Answer, type Hostile, checkAnswer, corpus, sendable } from './support.js';

let as: TestAuthorizationServer;
let verifier: Verifier;
let valid: string;

beforeAll(async () => {
  as = await startAuthorizationServer({ accessTokenTtl: 600 });
  verifier = createVerifier({ issuer: as.issuer, audience: API_RESOURCE, allowInsecureRequests: true });
  valid = (await issueToken(as, { scope: 'read' })).accessToken;
});
afterAll(() => as.close());

interface Running {
  port: number;
  close(): Promise<void>;
}

async function listen(server: Server): Promise<Running> {
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: (server.address() as AddressInfo).port,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

/** Sends `headers` as they are (a name may repeat), and reads the answer as latin1 (every byte kept). */
function send(port: number, path: string, headers: [string, string][], method = 'GET'): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = httpRequest({ host: '127.0.0.1', port, path, method }, (res) => {
      let body = '';
      res.setEncoding('latin1');
      res.on('data', (chunk: string) => (body += chunk));
      res.on('end', () =>
        resolve({ status: res.statusCode ?? 0, headers: res.headers as Record<string, string>, body }),
      );
    });
    req.on('error', reject);
    for (const [name, value] of headers) req.appendHeader(name, value);
    req.end();
  });
}

/** A value with characters past latin1 goes on the wire as its UTF-8 bytes, as a client would send it. */
const onWire = (value: string): string =>
  [...value].some((c) => c.charCodeAt(0) > 0xff) ? Buffer.from(value, 'utf8').toString('latin1') : value;

const REACHED = 'the route was reached';

/** One server per way of mounting the middleware; `/orders` answers REACHED when the middleware lets it through. */
const mounts: Record<string, () => Promise<Running>> = {
  'fastify plugin': async () => {
    const app = Fastify();
    await app.register(fastifyAuth, { verifier });
    app.get('/orders', async () => REACHED);
    await app.ready();
    return listen(app.server);
  },
  'fastify hook': async () => {
    const app = Fastify();
    app.get('/orders', { onRequest: fastifyHook({ verifier }) }, async () => REACHED);
    await app.ready();
    return listen(app.server);
  },
  koa: async () => {
    const app = new Koa();
    app.use(koaAuth({ verifier }));
    app.use((ctx) => {
      ctx.body = REACHED;
    });
    return listen(createServer(app.callback()));
  },
  'hono on @hono/node-server': async () => {
    const app = new Hono<{ Variables: BearerAuthVariables }>();
    app.use('*', honoAuth({ verifier }));
    app.get('/orders', (c) => c.text(REACHED));
    return listen(createServer(getRequestListener(app.fetch)));
  },
  // With 'body' the Fetch Request is read, not the Node request it wraps: its Headers merge repeated ones.
  'hono, tokens in the body too': async () => {
    const app = new Hono<{ Variables: BearerAuthVariables }>();
    app.use(
      '*',
      honoAuth({
        issuer: as.issuer,
        audience: API_RESOURCE,
        allowInsecureRequests: true,
        tokenLocations: ['header', 'body'],
      }),
    );
    app.get('/orders', (c) => c.text(REACHED));
    return listen(createServer(getRequestListener(app.fetch)));
  },
  'hono withBearerAuth': async () => {
    const app = new Hono<{ Variables: BearerAuthVariables }>();
    app.get(
      '/orders',
      withBearerAuth({ verifier }, (c) => c.text(REACHED)),
    );
    return listen(createServer(getRequestListener(app.fetch)));
  },
};

describe('the hostile Authorization corpus over real sockets', () => {
  let entries: Hostile[];
  beforeAll(async () => {
    entries = corpus(valid, await forge(as, { scope: 'admin' }))
      .map((entry) => ({ ...entry, values: entry.values.map(onWire) }))
      .filter((entry) => sendable(entry.values));
  });

  it.each(Object.keys(mounts))('%s: a refusal for each, never a 500 or the route', async (name) => {
    expect(entries.length).toBeGreaterThan(150);
    const app = await mounts[name]!();
    try {
      for (const entry of entries) {
        const answer = await send(
          app.port,
          '/orders',
          entry.values.map((v) => ['authorization', v]),
        );
        expect(answer.body, `${name}, ${entry.name}`).not.toBe(REACHED);
        checkAnswer(answer, entry, name);
      }
    } finally {
      await app.close();
    }
  });
});

describe('a middleware before it that set or removed Authorization: the request the app handles is checked', () => {
  /** What such a middleware does to a Node request's headers: a session cookie becomes a bearer token, or the header goes. */
  const rewrite = (headers: Record<string, string | string[] | undefined>) => {
    const cookie = headers['cookie'];
    if (typeof cookie === 'string' && cookie.startsWith('session='))
      headers['authorization'] = `Bearer ${cookie.slice(8)}`;
    if (headers['x-strip'] !== undefined) delete headers['authorization'];
  };
  const apps: Record<string, () => Promise<Running>> = {
    express: async () => {
      const app = express();
      app.use((req, _res, next) => {
        rewrite(req.headers);
        next();
      });
      app.get('/orders', expressAuth({ verifier }), (_req, res) => void res.send(REACHED));
      return listen(createServer(app));
    },
    fastify: async () => {
      const app = Fastify();
      app.addHook('onRequest', async (request) => rewrite(request.headers));
      await app.register(fastifyAuth, { verifier });
      app.get('/orders', async () => REACHED);
      await app.ready();
      return listen(app.server);
    },
    // Fastify's documented way: headers assigned to request.headers are merged over the raw ones.
    'fastify, request.headers = { … }': async () => {
      const app = Fastify();
      app.addHook('onRequest', async (request) => {
        const cookie = request.headers.cookie;
        if (cookie?.startsWith('session=')) request.headers = { authorization: `Bearer ${cookie.slice(8)}` };
        if (request.headers['x-strip'] !== undefined) request.headers = { authorization: undefined };
      });
      await app.register(fastifyAuth, { verifier });
      app.get('/orders', async () => REACHED);
      await app.ready();
      return listen(app.server);
    },
    koa: async () => {
      const app = new Koa();
      app.use(async (ctx, next) => {
        rewrite(ctx.request.headers);
        await next();
      });
      app.use(koaAuth({ verifier }));
      app.use((ctx) => {
        ctx.body = REACHED;
      });
      return listen(createServer(app.callback()));
    },
    'hono on @hono/node-server': async () => {
      const app = new Hono<{ Variables: BearerAuthVariables }>();
      app.use('*', async (c, next) => {
        const cookie = c.req.header('cookie');
        if (cookie?.startsWith('session=')) c.req.raw.headers.set('authorization', `Bearer ${cookie.slice(8)}`);
        if (c.req.header('x-strip') !== undefined) c.req.raw.headers.delete('authorization');
        await next();
      });
      app.use('*', honoAuth({ verifier }));
      app.get('/orders', (c) => c.text(REACHED));
      return listen(createServer(getRequestListener(app.fetch)));
    },
    // A front app that calls the API app with a Request of its own, and the same env (a BFF).
    'hono sub-app on @hono/node-server': async () => {
      const api = new Hono<{ Variables: BearerAuthVariables }>();
      api.use('*', honoAuth({ verifier }));
      api.get('/orders', (c) => c.text(REACHED));
      const app = new Hono();
      app.get('/orders', (c) => {
        const headers = new Headers(c.req.raw.headers);
        const cookie = headers.get('cookie');
        if (cookie?.startsWith('session=')) headers.set('authorization', `Bearer ${cookie.slice(8)}`);
        if (headers.has('x-strip')) headers.delete('authorization');
        return api.fetch(new Request(c.req.url, { headers }), c.env);
      });
      return listen(createServer(getRequestListener(app.fetch)));
    },
  };

  it.each(Object.keys(apps))('%s', async (name) => {
    const app = await apps[name]!();
    try {
      const fromCookie = await send(app.port, '/orders', [['cookie', `session=${valid}`]]);
      expect(fromCookie.status, 'the token the middleware put in the header').toBe(200);
      expect(fromCookie.body).toBe(REACHED);
      const stripped = await send(app.port, '/orders', [
        ['authorization', `Bearer ${valid}`],
        ['x-strip', '1'],
      ]);
      expect(stripped.status, 'the header the middleware removed').toBe(401);
      expect(stripped.headers['www-authenticate']).toBe('Bearer realm="api"');
      // Untouched, the client's headers are still read as sent: two of them are one too many.
      const twice = await send(app.port, '/orders', [
        ['authorization', `Bearer ${valid}`],
        ['authorization', `Bearer ${valid}`],
      ]);
      expect(twice.status).toBe(400);
      expect((await send(app.port, '/orders', [['authorization', `Bearer ${valid}`]])).status).toBe(200);
    } finally {
      await app.close();
    }
  });

  it("hono on @hono/node-server: an untouched request is still read from the Node request (the Request's headers never built)", async () => {
    const app = new Hono<{ Variables: BearerAuthVariables }>();
    app.use('*', honoAuth({ verifier }));
    app.get('/orders', (c) => {
      const raw = c.req.raw as unknown as Record<symbol, unknown>;
      const built = Object.getOwnPropertySymbols(raw).some((key) => raw[key] instanceof Headers);
      return c.text(built ? 'headers built' : REACHED);
    });
    const running = await listen(createServer(getRequestListener(app.fetch)));
    try {
      const answer = await send(running.port, '/orders', [['authorization', `Bearer ${valid}`]]);
      expect(answer.status).toBe(200);
      expect(answer.body).toBe(REACHED);
    } finally {
      await running.close();
    }
  });
  it('hono: a Request of a kind it does not know, around a Node request, is read itself (its headers may have changed)', async () => {
    const app = new Hono<{ Variables: BearerAuthVariables }>();
    app.use('*', honoAuth({ verifier }));
    app.get('/orders', (c) => c.text(REACHED));
    // A wrapper like @hono/node-server's that keeps the Node request under a symbol, but its Headers where they
    // cannot be seen: whether they were changed cannot be told, so they are what is read.
    const incomingKey = Symbol('incoming');
    const kept = new WeakMap<object, Headers>();
    const proto = Object.create(Request.prototype, {
      method: { get: () => 'GET' },
      url: { get: () => 'http://localhost/orders' },
      headers: {
        get(this: Record<symbol, { rawHeaders: string[] }>) {
          let headers = kept.get(this);
          if (headers === undefined) {
            const raw = this[incomingKey]?.rawHeaders ?? [];
            headers = new Headers();
            for (let i = 0; i < raw.length; i += 2) headers.append(raw[i]!, raw[i + 1]!);
            kept.set(this, headers);
          }
          return headers;
        },
      },
    }) as object;
    const wrap = (sent: string[]) => {
      const incoming = { headers: {} as Record<string, string>, rawHeaders: sent, method: 'GET', url: '/orders' };
      for (let i = 0; i < sent.length; i += 2) incoming.headers[sent[i]!.toLowerCase()] = sent[i + 1]!;
      const request = Object.create(proto) as Request & Record<symbol, unknown>;
      request[incomingKey] = incoming;
      return { request, env: { incoming } };
    };
    // Twice: the first request learns what the prototype is, the second is answered from what was learned.
    for (let round = 0; round < 2; round++) {
      // The client sent a valid token; a middleware removed it from the Request the app handles.
      const removed = wrap(['Authorization', `Bearer ${valid}`]);
      removed.request.headers.delete('authorization');
      expect((await app.fetch(removed.request, removed.env)).status, 'removed').toBe(401);
      // The client sent none; a middleware set one (from a session cookie).
      const set = wrap(['Cookie', 'session=1']);
      set.request.headers.set('authorization', `Bearer ${valid}`);
      const answer = await app.fetch(set.request, set.env);
      expect(answer.status, 'set').toBe(200);
      expect(await answer.text()).toBe(REACHED);
      // Untouched, its token is still accepted.
      const untouched = wrap(['Authorization', `Bearer ${valid}`]);
      expect((await app.fetch(untouched.request, untouched.env)).status, 'untouched').toBe(200);
    }
  });
});

describe('fastify: the plugin with protectedResource under a prefix', () => {
  const protectedResource = { resource: API_RESOURCE, authorizationServers: [] as string[] };
  beforeAll(() => {
    protectedResource.authorizationServers = [as.issuer];
  });

  it('is refused when registered (ERR_CONFIG), not served as a 401 at /prefix/.well-known/…', async () => {
    const app = Fastify();
    app.register(
      async (api) => {
        await api.register(fastifyAuth, { verifier, protectedResource });
        api.get('/orders', async () => REACHED);
      },
      { prefix: '/api' },
    );
    const refused = await app.ready().then(
      () => undefined,
      (err: unknown) => err,
    );
    expect(refused).toBeInstanceOf(TokenwardenError);
    expect((refused as TokenwardenError).code).toBe('ERR_CONFIG');
    expect((refused as TokenwardenError).message).toContain('/api/.well-known/oauth-protected-resource');
    await app.close();
  });

  it('in a context without a prefix, with the prefixed routes in a child: the document at the root, the routes protected', async () => {
    const app = Fastify();
    await app.register(async (scope) => {
      await scope.register(fastifyAuth, { verifier, protectedResource });
      await scope.register(async (api) => void api.get('/orders', async () => REACHED), { prefix: '/api' });
    });
    // The prefix alone, without protectedResource, is fine.
    await app.register(
      async (v2) => {
        await v2.register(fastifyAuth, { verifier });
        v2.get('/orders', async () => REACHED);
      },
      { prefix: '/v2' },
    );
    await app.ready();
    const running = await listen(app.server);
    try {
      const doc = await send(running.port, '/.well-known/oauth-protected-resource', []);
      expect(doc.status).toBe(200);
      expect(JSON.parse(doc.body)).toMatchObject({ resource: API_RESOURCE });
      for (const path of ['/api/orders', '/v2/orders']) {
        expect((await send(running.port, path, [])).status, path).toBe(401);
        expect((await send(running.port, path, [['authorization', `Bearer ${valid}`]])).body, path).toBe(REACHED);
      }
    } finally {
      await running.close();
    }
  });
});

describe('bearerAuth({ verifier }) with an option of the verifier: refused, not ignored', () => {
  // Each was ignored: a route that says it takes ?access_token= (an event stream) answered 401, one that says
  // it requires DPoP took bearer tokens, one with another audience took the shared verifier's.
  const ignored = [
    { tokenLocations: ['header', 'query'] as const },
    { dpop: { required: true } },
    { audience: 'https://other.example.com' },
    { issuer: 'https://other-issuer.example.com' },
  ];
  const make: Record<string, (options: object) => unknown> = {
    'fastify hook': (options) => fastifyHook(options as never),
    koa: (options) => koaAuth(options as never),
    hono: (options) => honoAuth(options as never),
    'hono withBearerAuth': (options) => withBearerAuth(options as never, (c) => c.text(REACHED)),
    express: (options) => expressAuth(options as never),
  };

  it.each(Object.keys(make))('%s: ERR_CONFIG naming the option', (name) => {
    for (const option of ignored) {
      const [key] = Object.keys(option);
      let thrown: unknown;
      try {
        make[name]!({ verifier, requiredScopes: ['read'], ...option });
      } catch (err) {
        thrown = err;
      }
      expect(thrown, `${name}, ${key}`).toBeInstanceOf(TokenwardenError);
      expect((thrown as TokenwardenError).code).toBe('ERR_CONFIG');
      expect((thrown as TokenwardenError).message).toContain(`give ${key} to createVerifier()`);
    }
    // The route's own options, and a verifier option left undefined (a spread), are fine.
    expect(() =>
      make[name]!({ verifier, requiredScopes: ['read'], realm: 'orders', optional: true, audience: undefined }),
    ).not.toThrow();
  });

  it('fastify plugin: registering it fails with ERR_CONFIG', async () => {
    const app = Fastify();
    app.register(fastifyAuth, { verifier, tokenLocations: ['header', 'query'] } as never);
    const refused = await app.ready().then(
      () => undefined,
      (err: unknown) => err,
    );
    expect((refused as TokenwardenError).code).toBe('ERR_CONFIG');
    await app.close();
  });
});

describe('hono: a new DPoP-Nonce reaches a response the route made itself (RFC 9449 §8.2)', () => {
  it('new Response() or a proxied fetch(), behind the middleware or withBearerAuth, sync or async', async () => {
    const keys = await generateKeyPair('ES256', { extractable: true });
    const bound = await issueDPoPToken(as, keys);
    const options = {
      issuer: as.issuer,
      audience: API_RESOURCE,
      allowInsecureRequests: true,
      dpop: { nonce: () => ({ current: 'nonce-2', previous: 'nonce-1' }) },
    };
    const upstream = `${as.issuer}/.well-known/openid-configuration`; // a Response whose headers are immutable
    const app = new Hono<{ Variables: BearerAuthVariables }>();
    app.get('/middleware/json', honoAuth(options), (c) => c.json({ ok: true }));
    app.get('/middleware/own', honoAuth(options), () => new Response(REACHED));
    app.get('/middleware/proxied', honoAuth(options), () => fetch(upstream));
    app.get(
      '/with/json',
      withBearerAuth(options, (c) => c.json({ ok: true })),
    );
    app.get(
      '/with/own',
      withBearerAuth(options, () => new Response(REACHED)),
    );
    app.get(
      '/with/own-async',
      withBearerAuth(options, async () => new Response(REACHED)),
    );
    app.get(
      '/with/proxied',
      withBearerAuth(options, () => fetch(upstream)),
    );
    const running = await listen(createServer(getRequestListener(app.fetch)));
    try {
      for (const path of [
        '/middleware/json',
        '/middleware/own',
        '/middleware/proxied',
        '/with/json',
        '/with/own',
        '/with/own-async',
        '/with/proxied',
      ]) {
        const htu = `http://127.0.0.1:${running.port}${path}`;
        const authorization: [string, string] = ['authorization', `DPoP ${bound}`];
        // The previous nonce passes, and the answer names the current one.
        const previous = await dpopProof(keys, { htu, token: bound, nonce: 'nonce-1' });
        const answer = await send(running.port, path, [authorization, ['dpop', previous]]);
        expect(answer.status, path).toBe(200);
        expect(answer.headers['dpop-nonce'], path).toBe('nonce-2');
        const current = await dpopProof(keys, { htu, token: bound, nonce: 'nonce-2' });
        expect(
          (await send(running.port, path, [authorization, ['dpop', current]])).headers['dpop-nonce'],
          path,
        ).toBeUndefined();
      }
    } finally {
      await running.close();
    }
  });
});
