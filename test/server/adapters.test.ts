/**
 * One contract for every framework adapter, against a real authorization server: each harness mounts the
 * same routes with its framework's `bearerAuth` and the same requests must get the same answers.
 */
import { type Server, createServer, request as httpRequest } from 'node:http';
import type { AddressInfo } from 'node:net';
import { getRequestListener } from '@hono/node-server';
import express from 'express';
import Fastify from 'fastify';
import { Hono } from 'hono';
import Koa from 'koa';
import { calculateJwkThumbprint, exportJWK, generateKeyPair } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TokenManager } from '../../src/index.js';
import { bearerAuth as expressAuth } from '../../src/server/adapters/express.js';
import { bearerAuth as fastifyAuth, bearerAuthHook as fastifyHook } from '../../src/server/adapters/fastify.js';
import { type BearerAuthVariables, bearerAuth as honoAuth, withBearerAuth } from '../../src/server/adapters/hono.js';
import { bearerAuth as koaAuth } from '../../src/server/adapters/koa.js';
import { bearerAuth as nodeAuth } from '../../src/server/adapters/node.js';
import { type Auth, type BearerAuthOptions, authenticator, createVerifier } from '../../src/server/index.js';
import {
  API_RESOURCE,
  type TestAuthorizationServer,
  startAuthorizationServer,
} from '../support/authorization-server.js';
import { svcDpopSource } from '../support/app-client.js';
import { dpopProof, forge, issueDPoPToken, issueToken } from './support.js';

declare module 'fastify' {
  interface FastifyRequest {
    auth?: Auth | null;
  }
}

interface Route {
  path: string;
  options: BearerAuthOptions;
}

interface Running {
  url: string;
  close(): Promise<void>;
}

/** What every handler answers: who the token is for, its scopes, and for a DPoP token the key thumbprint. */
const reply = (auth: Auth | null | undefined) => ({
  uid: auth?.uid ?? null,
  scopes: auth?.credentials.scopes ?? null,
  ...(auth?.credentials.tokenType === 'DPoP' && { dpop: auth.credentials.jkt }),
});

async function listen(server: Server): Promise<Running> {
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

/** One entry per framework: mount the routes, listen on a random loopback port. */
const harnesses: Record<string, (routes: Route[]) => Promise<Running>> = {
  express: async (routes) => {
    const app = express();
    app.use(express.urlencoded({ extended: false }));
    for (const r of routes) app.all(r.path, expressAuth(r.options), (req, res) => void res.json(reply(req.auth)));
    return listen(createServer(app));
  },
  fastify: async (routes) => {
    const app = Fastify();
    // The plugin for the first route (scoped by encapsulation), the per-route hook for the others.
    const [first, ...rest] = routes as [Route, ...Route[]];
    await app.register(async (scope) => {
      await scope.register(fastifyAuth, first.options);
      scope.all(first.path, async (request) => reply(request.auth));
    });
    for (const r of rest) {
      // The plugin adds the RFC 9728 metadata route itself.
      if (app.hasRoute({ method: 'GET', url: r.path })) continue;
      app.all(r.path, { onRequest: fastifyHook(r.options) }, async (request) => reply(request.auth));
    }
    await app.ready();
    return listen(app.server);
  },
  koa: async (routes) => {
    const app = new Koa();
    const handlers = new Map(routes.map((r) => [r.path, koaAuth(r.options)]));
    app.use(async (ctx) => {
      const handler = handlers.get(ctx.path);
      if (handler === undefined) return;
      await handler(ctx, async () => {
        ctx.body = reply(ctx.state.auth);
      });
    });
    return listen(createServer(app.callback()));
  },
  hono: async (routes) => {
    const app = new Hono<{ Variables: BearerAuthVariables }>();
    for (const r of routes) app.all(r.path, honoAuth(r.options), (c) => c.json(reply(c.get('auth'))));
    return listen(createServer(getRequestListener(app.fetch)));
  },
  // The same checks wrapped around the route's only handler (Hono's single-handler path, no compose).
  'hono withBearerAuth': async (routes) => {
    const app = new Hono<{ Variables: BearerAuthVariables }>();
    for (const r of routes)
      app.all(
        r.path,
        withBearerAuth(r.options, (c) => c.json(reply(c.get('auth')))),
      );
    return listen(createServer(getRequestListener(app.fetch)));
  },
  node: async (routes) => {
    const handlers = new Map(routes.map((r) => [r.path, nodeAuth(r.options)]));
    return listen(
      createServer(async (req, res) => {
        const handler = handlers.get(new URL(req.url ?? '/', 'http://x').pathname);
        if (handler === undefined) return void res.writeHead(404).end();
        const auth = await handler(req, res);
        if (auth === false) return;
        res.setHeader('content-type', 'application/json');
        res.end(JSON.stringify(reply(auth)));
      }),
    );
  },
};

const ALGS = 'algs="RS256 RS384 RS512 PS256 PS384 PS512 ES256 ES384 ES512 EdDSA Ed25519"';

interface Answer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Record<string, unknown>;
  text: string;
}

/** A request with raw header pairs, so that a header can be sent twice. */
function send(url: string, headers: [string, string][] = [], method = 'GET'): Promise<Answer> {
  return new Promise((resolve, reject) => {
    // Raw header pairs replace Node's defaults, Host included (unless the test sends its own).
    const host = headers.some(([name]) => name.toLowerCase() === 'host') ? [] : [['host', new URL(url).host]];
    const raw = [...host, ...headers].flat();
    const req = httpRequest(url, { method, headers: raw as unknown as Record<string, string> }, (res) => {
      let text = '';
      res.on('data', (chunk: Buffer) => (text += chunk.toString()));
      res.on('end', () =>
        resolve({
          status: res.statusCode ?? 0,
          headers: res.headers,
          body: text ? JSON.parse(text) : {},
          text,
        }),
      );
    });
    req.on('error', reject);
    req.end();
  });
}

let as: TestAuthorizationServer;
let read: string;
let readWrite: string;
let expired: string;
let deadIssuer: string;
let dpopKeys: CryptoKeyPair;
let dpopJkt: string;
let bound: string;
const nonces = { current: 'nonce-2', previous: 'nonce-1' };

beforeAll(async () => {
  as = await startAuthorizationServer({ accessTokenTtl: 300 });
  dpopKeys = await generateKeyPair('ES256', { extractable: true });
  dpopJkt = await calculateJwkThumbprint(await exportJWK(dpopKeys.publicKey));
  bound = await issueDPoPToken(as, dpopKeys);
  read = (await issueToken(as, { scope: 'read' })).accessToken;
  readWrite = (await issueToken(as, { scope: 'read write' })).accessToken;
  expired = await forge(as, { exp: Math.floor(Date.now() / 1000) - 60 });
  const dead = createServer();
  const { url, close } = await listen(dead);
  deadIssuer = url;
  await close();
});
afterAll(() => as.close());

describe.each(Object.keys(harnesses))('%s adapter', (name) => {
  let app: Running;
  const bearer = (token: string): [string, string][] => [['authorization', `Bearer ${token}`]];

  beforeAll(async () => {
    const base = { issuer: as.issuer, audience: API_RESOURCE, allowInsecureRequests: true };
    const shared = createVerifier(base);
    app = await (harnesses[name] as (routes: Route[]) => Promise<Running>)([
      { path: '/read', options: base },
      { path: '/write', options: { ...base, requiredScopes: ['write'] } },
      { path: '/shared-write', options: { verifier: shared, requiredScopes: ['write'] } },
      { path: '/query', options: { ...base, tokenLocations: ['header', 'query'] } },
      { path: '/optional', options: { ...base, optional: true } },
      { path: '/realm', options: { ...base, realm: 'orders' } },
      { path: '/dpop-offered', options: { ...base, dpop: {} } },
      { path: '/down', options: { issuer: deadIssuer, audience: API_RESOURCE, allowInsecureRequests: true } },
    ]);
  });
  afterAll(() => app.close());

  it('200 with the auth for a valid token', async () => {
    const res = await send(`${app.url}/read`, bearer(read));
    expect(res.status).toBe(200);
    expect(res.body).toEqual({ uid: 'svc', scopes: ['read'] });
  });

  it('401 with WWW-Authenticate: Bearer realm when there is no token (RFC 6750 §3.1); Bearer and DPoP once DPoP is configured (RFC 9449 §7.2)', async () => {
    for (const headers of [[], [['authorization', 'Basic dXNlcjpwYXNz']]] as [string, string][][]) {
      const plain = await send(`${app.url}/read`, headers);
      expect(plain.status).toBe(401);
      expect(plain.headers['www-authenticate']).toBe('Bearer realm="api"');
      const res = await send(`${app.url}/dpop-offered`, headers);
      expect(res.status).toBe(401);
      expect(res.headers['www-authenticate']).toBe(`Bearer realm="api", DPoP realm="api", ${ALGS}`);
      expect(res.headers['cache-control']).toBe('no-store');
      expect(res.headers['content-type']).toMatch(/^application\/json/);
      expect(res.body).toEqual({ error: 'missing_token', error_description: 'bearer token required' });
    }
    expect((await send(`${app.url}/realm`)).headers['www-authenticate']).toBe('Bearer realm="orders"');
  });

  it('401 invalid_token for a bad or expired token', async () => {
    const bad = await send(`${app.url}/read`, bearer('garbage'));
    expect(bad.status).toBe(401);
    expect(bad.headers['www-authenticate']).toBe(
      'Bearer realm="api", error="invalid_token", error_description="malformed token"',
    );
    expect(bad.body).toEqual({ error: 'invalid_token', error_description: 'malformed token' });
    const old = await send(`${app.url}/read`, bearer(expired));
    expect(old.status).toBe(401);
    expect(old.headers['www-authenticate']).toContain('error_description="token expired"');
  });

  it('403 insufficient_scope with the scope the route needs', async () => {
    for (const path of ['/write', '/shared-write']) {
      const res = await send(`${app.url}${path}`, bearer(read));
      expect(res.status).toBe(403);
      expect(res.headers['www-authenticate']).toBe(
        'Bearer realm="api", error="insufficient_scope", error_description="insufficient scope", scope="write"',
      );
      expect(res.body).toEqual({
        error: 'insufficient_scope',
        error_description: 'insufficient scope',
        scope: 'write',
      });
      expect((await send(`${app.url}${path}`, bearer(readWrite))).status).toBe(200);
    }
  });

  it('400 invalid_request for a malformed header or two tokens', async () => {
    const cases: [string, [string, string][]][] = [
      ['/read', [['authorization', 'Bearer a b']]],
      ['/read', [['authorization', 'Bearer']]],
      [
        '/read',
        [
          ['authorization', `Bearer ${read}`],
          ['authorization', `Bearer ${readWrite}`],
        ],
      ],
      [`/query?access_token=${read}`, bearer(read)],
    ];
    for (const [path, headers] of cases) {
      const res = await send(`${app.url}${path}`, headers);
      expect(res.status, `${path} ${JSON.stringify(headers).slice(0, 40)}`).toBe(400);
      expect(res.headers['www-authenticate']).toMatch(
        /^Bearer realm="api", error="invalid_request", error_description="/,
      );
      expect(res.body['error']).toBe('invalid_request');
    }
  });

  it('a token the cache knows, with something after it, is still a malformed request (checked on every miss)', async () => {
    expect((await send(`${app.url}/read`, bearer(read))).status).toBe(200); // now cached
    for (const value of [
      `Bearer ${read} x`,
      `Bearer ${read},`,
      `Bearer ${read}, Bearer ${read}`,
      `Bearer ${read}\tx`,
    ]) {
      const res = await send(`${app.url}/read`, [['authorization', value]]);
      expect(res.status, JSON.stringify(value.slice(-12))).toBe(400);
      expect(res.body['error']).toBe('invalid_request');
    }
    expect((await send(`${app.url}/read`, bearer(`${read}%`))).body['error']).toBe('invalid_token');
  });

  it('reads the query parameter only where enabled', async () => {
    expect((await send(`${app.url}/read?access_token=${read}`)).status).toBe(401);
    const res = await send(`${app.url}/query?access_token=${read}`);
    expect(res.status).toBe(200);
    expect(res.body).toEqual({ uid: 'svc', scopes: ['read'] });
  });

  it('optional: passes a request without a token, still refuses a bad one', async () => {
    expect(await send(`${app.url}/optional`)).toMatchObject({ status: 200, body: { uid: null } });
    expect((await send(`${app.url}/optional`, bearer('garbage'))).status).toBe(401);
    expect((await send(`${app.url}/optional`, bearer(read))).body).toEqual({ uid: 'svc', scopes: ['read'] });
  });

  it('503 when the authorization server cannot be reached, not 401', async () => {
    const res = await send(`${app.url}/down`, bearer(read));
    expect(res.status).toBe(503);
    expect(res.headers['www-authenticate']).toBeUndefined();
    // The time until the verifier tries the authorization server again (its backoff: 1 s after a first failure).
    expect(res.headers['retry-after']).toMatch(/^[1-9]\d*$/);
    expect(Number(res.headers['retry-after'])).toBeLessThanOrEqual(30);
    expect(res.body).toEqual({
      error: 'temporarily_unavailable',
      error_description: 'token could not be verified now',
    });
  });
});

describe.each(Object.keys(harnesses))('%s adapter: DPoP (RFC 9449)', (name) => {
  let app: Running;
  const base = () => ({ issuer: as.issuer, audience: API_RESOURCE, allowInsecureRequests: true });

  beforeAll(async () => {
    app = await (harnesses[name] as (routes: Route[]) => Promise<Running>)([
      { path: '/read', options: base() },
      { path: '/nonce', options: { ...base(), dpop: { nonce: () => nonces } } },
      { path: '/dpop-only', options: { ...base(), dpop: { required: true } } },
    ]);
  });
  afterAll(() => app.close());

  /** A TokenManager whose source binds tokens to a fresh key, and what its API calls were answered. */
  const dpopClient = async () => {
    const keyPair = await generateKeyPair('ES256', { extractable: true });
    const statuses: number[] = [];
    const manager = new TokenManager({
      source: svcDpopSource(as, keyPair),
      fetch: {
        fetch: async (url, init) => {
          const res = await fetch(url, init);
          statuses.push(res.status);
          return res;
        },
      },
    });
    const jkt = await calculateJwkThumbprint(await exportJWK(keyPair.publicKey));
    return { manager, statuses, jkt };
  };

  const dpopHeaders = async (path: string, method = 'GET', extra: Record<string, unknown> = {}) =>
    [
      ['authorization', `DPoP ${bound}`],
      ['dpop', await dpopProof(dpopKeys, { htu: `${app.url}${path}`, htm: method, token: bound, ...extra })],
    ] as [string, string][];

  it('manager.fetch with a DPoP-bound token: 200 for GET and POST, tokenType DPoP and the key in auth', async () => {
    const keyPair = await generateKeyPair('ES256', { extractable: true });
    const manager = new TokenManager({
      source: svcDpopSource(as, keyPair),
    });
    try {
      const jkt = await calculateJwkThumbprint(await exportJWK(keyPair.publicKey));
      const get = await manager.fetch(`${app.url}/read?page=2`);
      expect(get.status).toBe(200);
      expect(await get.json()).toEqual({ uid: 'svc', scopes: ['read'], dpop: jkt });
      const post = await manager.fetch(`${app.url}/read`, { method: 'POST', body: 'x' });
      expect(post.status).toBe(200);
      expect(await post.json()).toEqual({ uid: 'svc', scopes: ['read'], dpop: jkt });
    } finally {
      await manager.close();
    }
  });

  it('a missing, replayed or misdirected proof: 401 invalid_dpop_proof in the DPoP scheme', async () => {
    const missing = await send(`${app.url}/read`, [['authorization', `DPoP ${bound}`]]);
    expect(missing.status).toBe(401);
    expect(missing.headers['www-authenticate']).toBe(
      `DPoP realm="api", error="invalid_dpop_proof", error_description="DPoP proof required", ${ALGS}`,
    );
    expect(missing.body).toEqual({ error: 'invalid_dpop_proof', error_description: 'DPoP proof required' });
    const headers = await dpopHeaders('/read');
    expect((await send(`${app.url}/read`, headers)).status).toBe(200);
    const replayed = await send(`${app.url}/read`, headers);
    expect(replayed.status).toBe(401);
    expect(replayed.body['error_description']).toBe('DPoP proof already used');
    const otherMethod = await send(`${app.url}/read`, await dpopHeaders('/read', 'POST'));
    expect(otherMethod.body['error']).toBe('invalid_dpop_proof');
    const otherPath = await send(`${app.url}/read`, await dpopHeaders('/nonce'));
    expect(otherPath.body).toEqual({
      error: 'invalid_dpop_proof',
      error_description: 'DPoP proof htu does not match the request URL',
    });
  });

  it('a DPoP-bound token presented as Bearer: 401 invalid_token', async () => {
    const res = await send(`${app.url}/read`, [['authorization', `Bearer ${bound}`]]);
    expect(res.status).toBe(401);
    // Refused as Bearer, with the DPoP scheme the token needs offered beside it (RFC 9449 §7.1).
    expect(res.headers['www-authenticate']).toMatch(
      /^Bearer realm="api", error="invalid_token", error_description="sender-constrained token presented as bearer", DPoP realm="api", algs="[A-Za-z0-9 ]+"$/,
    );
  });

  it('server nonce: manager.fetch answers use_dpop_nonce once; the previous nonce passes and gets the current one', async () => {
    const { manager, statuses, jkt } = await dpopClient();
    try {
      const res = await manager.fetch(`${app.url}/nonce`);
      expect(res.status).toBe(200);
      expect(await res.json()).toEqual({ uid: 'svc', scopes: ['read'], dpop: jkt });
      expect(statuses).toEqual([401, 200]);
      expect((await manager.fetch(`${app.url}/nonce`)).status).toBe(200);
      expect(statuses).toEqual([401, 200, 200]);
    } finally {
      await manager.close();
    }
    const challenged = await send(`${app.url}/nonce`, await dpopHeaders('/nonce'));
    expect(challenged.status).toBe(401);
    expect(challenged.headers['dpop-nonce']).toBe('nonce-2');
    expect(challenged.headers['www-authenticate']).toMatch(/^DPoP realm="api", error="use_dpop_nonce", /);
    const previous = await send(`${app.url}/nonce`, await dpopHeaders('/nonce', 'GET', { nonce: 'nonce-1' }));
    expect(previous.status).toBe(200);
    expect(previous.headers['dpop-nonce']).toBe('nonce-2');
    const current = await send(`${app.url}/nonce`, await dpopHeaders('/nonce', 'GET', { nonce: 'nonce-2' }));
    expect(current.status).toBe(200);
    expect(current.headers['dpop-nonce']).toBeUndefined();
  });

  it('dpop.required: a bearer token gets 401 with a DPoP-only challenge; a DPoP token passes', async () => {
    const res = await send(`${app.url}/dpop-only`, [['authorization', `Bearer ${read}`]]);
    expect(res.status).toBe(401);
    expect(res.headers['www-authenticate']).toBe(`DPoP realm="api", ${ALGS}`);
    expect(res.body).toEqual({ error: 'missing_token', error_description: 'DPoP-bound token required' });
    const ok = await send(`${app.url}/dpop-only`, await dpopHeaders('/dpop-only', 'DELETE'), 'DELETE');
    expect(ok.status).toBe(200);
    expect(ok.body).toEqual({ uid: 'svc', scopes: ['read'], dpop: dpopJkt });
  });
});

describe('DPoP behind rewritten URLs: the proof names the URL the client called', () => {
  it('express: a router mounted on a path (req.originalUrl)', async () => {
    const appExpress = express();
    const router = express.Router();
    router.get(
      '/read',
      expressAuth({ issuer: as.issuer, audience: API_RESOURCE, allowInsecureRequests: true }),
      (req, res) => void res.json(reply(req.auth)),
    );
    appExpress.use('/api', router);
    const app = await listen(createServer(appExpress));
    try {
      const proof = await dpopProof(dpopKeys, { htu: `${app.url}/api/read`, token: bound });
      const res = await send(`${app.url}/api/read`, [
        ['authorization', `DPoP ${bound}`],
        ['dpop', proof],
      ]);
      expect(res.status).toBe(200);
      expect(res.body).toEqual({ uid: 'svc', scopes: ['read'], dpop: dpopJkt });
    } finally {
      await app.close();
    }
  });

  it('koa: a middleware that rewrote ctx.path, as koa-mount does (ctx.originalUrl)', async () => {
    const appKoa = new Koa();
    const auth = koaAuth({ issuer: as.issuer, audience: API_RESOURCE, allowInsecureRequests: true });
    appKoa.use(async (ctx, next) => {
      ctx.path = ctx.path.replace(/^\/api/, '') || '/';
      await next();
    });
    appKoa.use(async (ctx) => {
      await auth(ctx, async () => {
        ctx.body = reply(ctx.state.auth);
      });
    });
    const app = await listen(createServer(appKoa.callback()));
    try {
      const proof = await dpopProof(dpopKeys, { htu: `${app.url}/api/read`, token: bound });
      const res = await send(`${app.url}/api/read`, [
        ['authorization', `DPoP ${bound}`],
        ['dpop', proof],
      ]);
      expect(res.status).toBe(200);
      expect(res.body).toEqual({ uid: 'svc', scopes: ['read'], dpop: dpopJkt });
    } finally {
      await app.close();
    }
  });
});

describe('form body tokens (opt-in; RFC 6750 §2.2)', () => {
  // Node-style frameworks read a body their own parser produced; Hono's Request is read directly.
  for (const name of ['express', 'hono', 'hono withBearerAuth'] as const) {
    it(`${name}: accepted from a form body only where enabled, refused in two places`, async () => {
      const base = { issuer: as.issuer, audience: API_RESOURCE, allowInsecureRequests: true };
      const app = await harnesses[name]!([
        { path: '/form', options: { ...base, tokenLocations: ['header', 'body'] } },
        { path: '/header', options: base },
      ]);
      try {
        const post = (path: string, headers: Record<string, string> = {}) =>
          fetch(`${app.url}${path}`, {
            method: 'POST',
            headers: { 'content-type': 'application/x-www-form-urlencoded', ...headers },
            body: new URLSearchParams({ access_token: read, other: 'x' }),
          });
        const ok = await post('/form');
        expect(ok.status).toBe(200);
        expect(await ok.json()).toEqual({ uid: 'svc', scopes: ['read'] });
        expect((await post('/header')).status).toBe(401);
        expect((await post('/form', { authorization: `Bearer ${read}` })).status).toBe(400);
      } finally {
        await app.close();
      }
    });
  }
});

describe.each(Object.keys(harnesses))('%s adapter: Protected Resource Metadata (RFC 9728)', (name) => {
  const WELL_KNOWN = '/.well-known/oauth-protected-resource';
  const MCP_RESOURCE = `${API_RESOURCE}/mcp`;
  const OWN_RESOURCE = `${API_RESOURCE}/own`;
  let app: Running;
  let mcpToken: string;
  let ownToken: string;

  beforeAll(async () => {
    const verifier = createVerifier({ issuer: as.issuer, audience: API_RESOURCE, allowInsecureRequests: true });
    const mcpVerifier = createVerifier({ issuer: as.issuer, audience: MCP_RESOURCE, allowInsecureRequests: true });
    const api = {
      verifier,
      protectedResource: {
        resource: API_RESOURCE,
        authorizationServers: [as.issuer],
        scopesSupported: ['read', 'write'],
        resourceName: 'Test API',
      },
    };
    const mcp = {
      verifier: mcpVerifier,
      protectedResource: { resource: MCP_RESOURCE, authorizationServers: [as.issuer] },
    };
    // Verifier options instead of a shared verifier: the audience, the authorization servers and the
    // bearer methods come from them.
    const own: BearerAuthOptions = {
      issuer: as.issuer,
      allowInsecureRequests: true,
      tokenLocations: ['header', 'query'],
      protectedResource: { resource: OWN_RESOURCE },
    };
    app = await (harnesses[name] as (routes: Route[]) => Promise<Running>)([
      { path: '/read', options: api },
      { path: WELL_KNOWN, options: api },
      { path: '/write', options: { ...api, requiredScopes: ['write'] } },
      { path: '/mcp', options: mcp },
      { path: `${WELL_KNOWN}/mcp`, options: mcp },
      { path: '/own', options: own },
      { path: `${WELL_KNOWN}/own`, options: own },
    ]);
    mcpToken = (await issueToken(as, { scope: 'read', resource: MCP_RESOURCE })).accessToken;
    ownToken = (await issueToken(as, { scope: 'read', resource: OWN_RESOURCE })).accessToken;
  });
  afterAll(() => app.close());

  /** The RFC 9728 §2 / §3.2 checks every document must pass. */
  const checkDocument = (res: Answer, resource: string) => {
    expect(res.status).toBe(200);
    expect(res.headers['content-type']).toMatch(/^application\/json/);
    expect(res.headers['cache-control']).toBe('public, max-age=3600');
    expect(res.headers['access-control-allow-origin']).toBe('*');
    expect(res.headers['www-authenticate']).toBeUndefined();
    const doc = res.body;
    expect(doc['resource']).toBe(resource); // identical to the identifier the URL was formed from (§3.3)
    for (const [member, value] of Object.entries(doc)) {
      if (Array.isArray(value)) {
        expect(value.length, `${member} has values or is omitted (§3.2)`).toBeGreaterThan(0);
        expect(value.every((v) => typeof v === 'string')).toBe(true);
      }
    }
    for (const url of [doc['resource'], ...((doc['authorization_servers'] as string[] | undefined) ?? [])]) {
      expect(String(url)).not.toContain('#');
    }
    return doc;
  };

  it('serves the document at /.well-known/oauth-protected-resource without a token', async () => {
    const doc = checkDocument(await send(`${app.url}${WELL_KNOWN}`), API_RESOURCE);
    expect(doc).toEqual({
      resource: API_RESOURCE,
      authorization_servers: [as.issuer],
      scopes_supported: ['read', 'write'],
      resource_name: 'Test API',
    });
    // Even with a bad token: the document is public.
    checkDocument(await send(`${app.url}${WELL_KNOWN}?x=1`, [['authorization', 'Bearer garbage']]), API_RESOURCE);
  });

  it('a resource with a path: the document at the path-suffixed URL (§3.1)', async () => {
    const doc = checkDocument(await send(`${app.url}${WELL_KNOWN}/mcp`), MCP_RESOURCE);
    expect(doc).toEqual({ resource: MCP_RESOURCE, authorization_servers: [as.issuer] });
  });

  it('HEAD, a CORS preflight, and 405 for other methods', async () => {
    const head = await send(`${app.url}${WELL_KNOWN}`, [], 'HEAD');
    expect(head.status).toBe(200);
    expect(head.text).toBe('');
    const preflight = await send(
      `${app.url}${WELL_KNOWN}`,
      [
        ['origin', 'https://client.example'],
        ['access-control-request-method', 'GET'],
        ['access-control-request-headers', 'mcp-protocol-version'],
      ],
      'OPTIONS',
    );
    expect(preflight.status).toBe(204);
    expect(preflight.headers['access-control-allow-origin']).toBe('*');
    expect(preflight.headers['access-control-allow-methods']).toBe('GET, HEAD, OPTIONS');
    const post = await send(`${app.url}${WELL_KNOWN}`, [], 'POST');
    expect(post.status).toBe(405);
    expect(post.headers['allow']).toBe('GET, HEAD, OPTIONS');
  });

  it('every 401 names the metadata URL formed from resource, never from Host (§5.1)', async () => {
    const missing = await send(`${app.url}/read`, [['host', 'evil.example']]);
    expect(missing.status).toBe(401);
    expect(missing.headers['www-authenticate']).toBe(
      `Bearer realm="api", resource_metadata="${API_RESOURCE}${WELL_KNOWN}"`,
    );
    const bad = await send(`${app.url}/read`, [['authorization', 'Bearer garbage']]);
    expect(bad.status).toBe(401);
    expect(bad.headers['www-authenticate']).toBe(
      `Bearer realm="api", error="invalid_token", error_description="malformed token", resource_metadata="${API_RESOURCE}${WELL_KNOWN}"`,
    );
    const mcpMissing = await send(`${app.url}/mcp`, [['host', 'evil.example:1']]);
    expect(mcpMissing.headers['www-authenticate']).toBe(
      `Bearer realm="api", resource_metadata="${API_RESOURCE}${WELL_KNOWN}/mcp"`,
    );
  });

  it('a valid token for the resource passes', async () => {
    expect((await send(`${app.url}/read`, [['authorization', `Bearer ${read}`]])).body).toEqual({
      uid: 'svc',
      scopes: ['read'],
    });
    expect((await send(`${app.url}/mcp`, [['authorization', `Bearer ${mcpToken}`]])).status).toBe(200);
  });

  it('a token for another resource is refused 401, even when the verifier would take it', async () => {
    // The /mcp verifier checks aud MCP_RESOURCE; /read's shared verifier checks API_RESOURCE.
    const other = await send(`${app.url}/mcp`, [['authorization', `Bearer ${read}`]]);
    expect(other.status).toBe(401);
    expect(other.headers['www-authenticate']).toContain(`resource_metadata="${API_RESOURCE}${WELL_KNOWN}/mcp"`);
    expect(other.body['error']).toBe('invalid_token');
    const lax = createVerifier({
      issuer: as.issuer,
      audience: [API_RESOURCE, MCP_RESOURCE],
      allowInsecureRequests: true,
    });
    const check = (requireAudience: boolean) =>
      authenticatorOutcome(lax, { resource: MCP_RESOURCE, authorizationServers: [as.issuer], requireAudience });
    expect((await check(true)).response?.status).toBe(401);
    expect((await check(false)).response).toBeUndefined();
  });

  it('403 insufficient_scope names the metadata URL; a 401 names the scope the route needs', async () => {
    const forbidden = await send(`${app.url}/write`, [['authorization', `Bearer ${read}`]]);
    expect(forbidden.status).toBe(403);
    expect(forbidden.headers['www-authenticate']).toBe(
      `Bearer realm="api", error="insufficient_scope", error_description="insufficient scope", scope="write", resource_metadata="${API_RESOURCE}${WELL_KNOWN}"`,
    );
    const missing = await send(`${app.url}/write`);
    expect(missing.status).toBe(401);
    expect(missing.headers['www-authenticate']).toBe(
      `Bearer realm="api", scope="write", resource_metadata="${API_RESOURCE}${WELL_KNOWN}"`,
    );
  });

  it('from verifier options: audience = resource, authorization servers = issuer, bearer methods = tokenLocations', async () => {
    const doc = checkDocument(await send(`${app.url}${WELL_KNOWN}/own`), OWN_RESOURCE);
    expect(doc).toEqual({
      resource: OWN_RESOURCE,
      authorization_servers: [as.issuer],
      bearer_methods_supported: ['header', 'query'],
    });
    expect((await send(`${app.url}/own`, [['authorization', `Bearer ${ownToken}`]])).status).toBe(200);
    expect((await send(`${app.url}/own`, [['authorization', `Bearer ${read}`]])).status).toBe(401);
  });
});

/** One authentication of a request carrying `read`, through the shared adapter code, with a protected resource. */
async function authenticatorOutcome(
  verifier: ReturnType<typeof createVerifier>,
  protectedResource: NonNullable<BearerAuthOptions['protectedResource']>,
) {
  const authenticate = authenticator({ verifier, protectedResource });
  return authenticate(`Bearer ${read}`);
}

describe('a known token takes no promise on the way to the route', () => {
  const options = () => ({ issuer: as.issuer, audience: API_RESOURCE, allowInsecureRequests: true });
  const request = (token: string) => ({
    method: 'GET',
    url: '/read',
    headers: { host: 'api.test', authorization: `Bearer ${token}` },
  });

  it('fastify hook: done() in the same call for a known token; a promise without done; a reply for a bad one', async () => {
    const hook = fastifyHook(options());
    const reply = { code: () => reply, headers: () => reply, send: () => reply, header: () => undefined };
    const first = { raw: request(read), auth: undefined as Auth | undefined | null };
    // Unknown yet: Fastify gets a promise (the keys are fetched), done() is not called.
    let doneCalls = 0;
    const pending = hook(first, reply, () => void doneCalls++);
    expect(pending).toBeInstanceOf(Promise);
    await pending;
    expect(first.auth?.credentials.scopes).toEqual(['read']);
    // Known now: done() before the hook returns, and no promise.
    const second = { raw: request(read), auth: undefined as Auth | undefined | null };
    expect(hook(second, reply, () => void doneCalls++)).toBeUndefined();
    expect(doneCalls).toBe(1);
    expect(second.auth?.uid).toBe(first.auth?.uid);
    // Without done (called from an async hook of one's own): always a promise.
    const third = { raw: request(read), auth: undefined as Auth | undefined | null };
    await expect(hook(third, reply)).resolves.toBeUndefined();
    expect(third.auth?.uid).toBe(first.auth?.uid);
    // A refused token is answered on the reply; done() is not called.
    let status = 0;
    const refusing = { ...reply, code: (s: number) => ((status = s), refusing) };
    hook({ raw: request('garbage') }, refusing, () => void doneCalls++);
    await new Promise((r) => setImmediate(r));
    expect(status).toBe(401);
    expect(doneCalls).toBe(1);
  });

  it('express: next() before the middleware returns, once the token is known', async () => {
    const middleware = expressAuth(options());
    const res = { statusCode: 200, setHeader: () => undefined, end: () => undefined };
    const req1 = request(read) as Parameters<typeof middleware>[0];
    await new Promise<void>((resolve, reject) => middleware(req1, res, (err) => (err ? reject(err) : resolve())));
    const req2 = request(read) as Parameters<typeof middleware>[0];
    let called = false;
    middleware(req2, res, () => void (called = true));
    expect(called).toBe(true);
    expect(req2.auth?.uid).toBe(req1.auth?.uid);
  });

  it('hono withBearerAuth: a known token runs the handler in the same call, with auth set', async () => {
    const app = new Hono<{ Variables: BearerAuthVariables }>();
    const seen: (string | undefined)[] = [];
    const handler = withBearerAuth(options(), (c) => {
      seen.push(c.get('auth').uid);
      return c.text('ok');
    });
    app.get('/read', handler);
    const get = () => app.request('http://api.test/read', { headers: { authorization: `Bearer ${read}` } });
    // Unknown yet: a promise (the keys are fetched); then known: the handler's Response itself.
    expect((await get()).status).toBe(200);
    const known = get();
    expect(known).toBeInstanceOf(Response);
    expect((known as Response).status).toBe(200);
    expect(seen).toEqual(['svc', 'svc']);
    // Refused: the handler does not run.
    const refused = await app.request('http://api.test/read', { headers: { authorization: 'Bearer garbage' } });
    expect(refused.status).toBe(401);
    expect(refused.headers.get('www-authenticate')).toMatch(/^Bearer /);
    expect(seen).toHaveLength(2);
  });
});
