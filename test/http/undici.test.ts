/**
 * tokenwarden/undici against the real authorization server and a real resource server: fetch with a
 * dispatcher, request(), setGlobalDispatcher(); tokens only for listed origins, never after a cross-origin
 * redirect; one retry on 401 invalid_token, never a loop, never a replayed stream; DPoP proofs and nonces.
 */
import { Readable } from 'node:stream';
import { generateKeyPair } from 'jose';
import {
  Agent,
  type Dispatcher,
  fetch as ufetch,
  getGlobalDispatcher,
  interceptors,
  request,
  setGlobalDispatcher,
} from 'undici';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { TokenManager, clientCredentials, isTokenwardenError } from '../../src/index.js';
import { authInterceptor } from '../../src/http/undici.js';
import { type TestAuthorizationServer, startAuthorizationServer } from '../support/authorization-server.js';
import { type TestApi, startApi, startOtherOrigin } from './support.js';

let as: TestAuthorizationServer;
let api: TestApi;
let other: Awaited<ReturnType<typeof startOtherOrigin>>;
let manager: TokenManager;
let agent: Agent;
let dispatcher: Dispatcher;

beforeAll(async () => {
  as = await startAuthorizationServer({ accessTokenTtl: 60 });
  api = await startApi(as);
  other = await startOtherOrigin();
});
afterAll(async () => {
  await api.close();
  await other.close();
  await as.close();
});
beforeEach(() => {
  api.reset();
  other.requests.length = 0;
  manager = new TokenManager({
    source: clientCredentials({
      issuer: as.issuer,
      clientId: as.clients.svc.clientId,
      clientSecret: as.clients.svc.clientSecret,
      allowInsecureRequests: true,
    }),
  });
  agent = new Agent();
  dispatcher = agent.compose(authInterceptor(manager, { origins: [api.url] }));
});
afterEach(async () => {
  await manager.close();
  await agent.close();
});

/** Only the requests that reached the API with a token (the other entries have none). */
const tokensSeen = () => api.requests.map((r) => r.authorization);

describe('authInterceptor (undici)', () => {
  it('fetch(url, { dispatcher }) succeeds after exactly one retry when the API rejects the first token', async () => {
    const res = await ufetch(`${api.url}/orders`, { dispatcher });
    expect(res.status).toBe(200);
    expect(await res.json()).toMatchObject({ ok: true, path: '/orders' });
    expect(api.requests.map((r) => r.status)).toEqual([401, 200]);
    const [first, second] = tokensSeen();
    expect(first).toMatch(/^Bearer /);
    expect(second).toMatch(/^Bearer /);
    expect(second).not.toBe(first);
  });

  it('request() with a string body replays it once with the new token', async () => {
    const res = await request(`${api.url}/orders`, {
      method: 'POST',
      body: JSON.stringify({ item: 'a' }),
      headers: { 'content-type': 'application/json' },
      dispatcher,
    });
    expect(res.statusCode).toBe(200);
    expect(await res.body.json()).toMatchObject({ ok: true, body: '{"item":"a"}' });
    expect(api.requests.map((r) => [r.status, r.body])).toEqual([
      [401, '{"item":"a"}'],
      [200, '{"item":"a"}'],
    ]);
  });

  it('setGlobalDispatcher(): Node’s own fetch gets the token too', async () => {
    const previous = getGlobalDispatcher();
    setGlobalDispatcher(dispatcher);
    try {
      const res = await fetch(`${api.url}/global`);
      expect(res.status).toBe(200);
      const unlisted = await fetch(`${other.url}/global`);
      expect(unlisted.status).toBe(200);
    } finally {
      setGlobalDispatcher(previous);
    }
    expect(api.requests.map((r) => r.status)).toEqual([401, 200]);
    expect(other.requests.map((r) => r.authorization)).toEqual([undefined]);
  });

  it('sends no token to an origin that is not listed (same host, another port)', async () => {
    const res = await ufetch(`${other.url}/x`, { dispatcher });
    expect(res.status).toBe(200);
    const viaRequest = await request(`${other.url}/y`, { dispatcher });
    await viaRequest.body.dump();
    expect(other.requests.map((r) => r.authorization)).toEqual([undefined, undefined]);
    expect(api.requests).toEqual([]);
  });

  it('keeps a caller’s own Authorization header on other origins', async () => {
    await ufetch(`${other.url}/own`, { dispatcher, headers: { authorization: 'Basic dXNlcjpwYXNz' } });
    expect(other.requests[0]?.authorization).toBe('Basic dXNlcjpwYXNz');
  });

  it('never sends the token across a redirect to another origin (fetch, and the redirect interceptor either side)', async () => {
    api.mode = 'validate';
    const target = encodeURIComponent(`${other.url}/landing`);
    const viaFetch = await ufetch(`${api.url}/redirect?to=${target}`, { dispatcher });
    expect(viaFetch.status).toBe(200);

    for (const composed of [
      agent.compose(authInterceptor(manager, { origins: [api.url] }), interceptors.redirect({ maxRedirections: 2 })),
      agent.compose(interceptors.redirect({ maxRedirections: 2 }), authInterceptor(manager, { origins: [api.url] })),
    ]) {
      const res = await request(`${api.url}/redirect?to=${target}`, { dispatcher: composed });
      expect(res.statusCode).toBe(200);
      await res.body.dump();
    }
    // The API saw a token on each first hop; the other origin never did.
    expect(api.requests.map((r) => r.authorization?.split(' ')[0])).toEqual(['Bearer', 'Bearer', 'Bearer']);
    expect(other.requests.map((r) => r.authorization)).toEqual([undefined, undefined, undefined]);
  });

  it('a redirect followed by an outer redirect interceptor keeps the origin it started at, even to a listed origin', async () => {
    api.mode = 'validate';
    const both = agent.compose(
      authInterceptor(manager, { origins: [api.url, other.url] }),
      interceptors.redirect({ maxRedirections: 2 }),
    );
    const res = await request(`${api.url}/redirect?to=${encodeURIComponent(`${other.url}/landing`)}`, {
      dispatcher: both,
    });
    expect(res.statusCode).toBe(200);
    await res.body.dump();
    expect(api.requests[0]?.authorization).toMatch(/^Bearer /);
    expect(other.requests.map((r) => r.authorization)).toEqual([undefined]);
    // Called directly, the other (listed) origin does get the token.
    const direct = await request(`${other.url}/direct`, { dispatcher: both });
    await direct.body.dump();
    expect(other.requests[1]?.authorization).toMatch(/^Bearer /);
  });

  it('never retries more than once: a second 401 goes to the caller', async () => {
    api.mode = 'always-401';
    const res = await ufetch(`${api.url}/orders`, { dispatcher });
    expect(res.status).toBe(401);
    expect(await res.json()).toEqual({ error: 'invalid_token' });
    expect(api.requests).toHaveLength(2);
  });

  it('does not replay a streamed body: the 401 is handed back, and the next request has a new token', async () => {
    const res = await request(`${api.url}/upload`, {
      method: 'POST',
      body: Readable.from(['chunk-1', 'chunk-2']),
      dispatcher,
    });
    expect(res.statusCode).toBe(401);
    await res.body.dump();
    expect(api.requests.map((r) => [r.status, r.body])).toEqual([[401, 'chunk-1chunk-2']]);

    // fetch always hands the dispatcher a stream for a body: not replayed either.
    const posted = await ufetch(`${api.url}/upload`, { method: 'POST', body: 'text', dispatcher });
    expect(posted.status).toBe(200); // the rejected token was invalidated: this one is new
    expect(api.requests.map((r) => r.status)).toEqual([401, 200]);
  });

  it("retryOn401: 'never' hands back the first 401", async () => {
    const strict = agent.compose(authInterceptor(manager, { origins: [api.url], retryOn401: 'never' }));
    const res = await ufetch(`${api.url}/orders`, { dispatcher: strict });
    expect(res.status).toBe(401);
    expect(api.requests).toHaveLength(1);
  });

  it('fails the request with the token error when no token can be had', async () => {
    const broken = new TokenManager({
      source: clientCredentials({
        issuer: as.issuer,
        clientId: as.clients.svc.clientId,
        clientSecret: 'wrong',
        allowInsecureRequests: true,
      }),
    });
    const d = agent.compose(authInterceptor(broken, { origins: [api.url] }));
    const err = await request(`${api.url}/orders`, { dispatcher: d }).catch((e: unknown) => e);
    expect(isTokenwardenError(err, 'ERR_OAUTH')).toBe(true);
    const viaFetch = await ufetch(`${api.url}/orders`, { dispatcher: d }).catch((e: unknown) => e);
    expect(isTokenwardenError((viaFetch as Error).cause, 'ERR_OAUTH')).toBe(true);
    expect(api.requests).toEqual([]);
    await broken.close();
  });

  it('an aborted request stops, with or without a token in hand', async () => {
    const controller = new AbortController();
    controller.abort();
    await expect(ufetch(`${api.url}/orders`, { dispatcher, signal: controller.signal })).rejects.toThrow();
    expect(api.requests).toEqual([]);
  });

  it('refuses a configuration without origins', () => {
    expect(() => authInterceptor(manager, { origins: [] })).toThrow(/origins/);
    expect(() => authInterceptor(manager, { origins: ['not a url'] })).toThrow(/origins/);
    expect(() => authInterceptor(manager, undefined as never)).toThrow(/origins/);
  });

  it('origin matching is exact: scheme, host and port; user-info tricks do not match', async () => {
    const d = agent.compose(authInterceptor(manager, { origins: [`${api.url}/some/path`] }));
    api.mode = 'validate';
    const res = await ufetch(`${api.url}/x`, { dispatcher: d });
    expect(res.status).toBe(200);
    const spoof = `http://${new URL(api.url).host}@${new URL(other.url).host}/spoof`;
    const res2 = await ufetch(spoof, { dispatcher: d }).catch(() => undefined);
    await res2?.body?.cancel();
    expect(other.requests.every((r) => r.authorization === undefined)).toBe(true);
  });
});

describe('authInterceptor with DPoP', () => {
  it('signs a proof per request and answers the use_dpop_nonce challenge once', async () => {
    const dpopManager = new TokenManager({
      source: clientCredentials({
        issuer: as.issuer,
        clientId: as.clients.svc.clientId,
        clientSecret: as.clients.svc.clientSecret,
        allowInsecureRequests: true,
        dpop: await generateKeyPair('ES256', { extractable: true }),
      }),
    });
    api.mode = 'validate';
    api.dpopNonce = 'nonce-1';
    try {
      const d = agent.compose(authInterceptor(dpopManager, { origins: [api.url] }));
      const res = await ufetch(`${api.url}/bound`, { dispatcher: d });
      expect(res.status).toBe(200);
      expect(api.requests.map((r) => [r.status, r.authorization?.split(' ')[0], r.dpop !== undefined])).toEqual([
        [401, 'DPoP', true],
        [200, 'DPoP', true],
      ]);
      // The nonce is remembered: the next request needs no challenge.
      const again = await request(`${api.url}/bound`, { dispatcher: d });
      expect(again.statusCode).toBe(200);
      await again.body.dump();
      expect(api.requests).toHaveLength(3);
    } finally {
      api.dpopNonce = undefined;
      await dpopManager.close();
    }
  });
});
