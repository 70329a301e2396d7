/**
 * tokenwarden/axios against the real authorization server and a real resource server: attach, one retry on
 * 401 invalid_token, never a loop, never a replayed stream, only the instance's origins, no token after a
 * cross-origin redirect, DPoP proofs; the returned function removes both interceptors.
 */
import { Readable } from 'node:stream';
import axios, { type AxiosError } from 'axios';
import { generateKeyPair } from 'jose';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { TokenManager, clientCredentials, isTokenwardenError } from '../../src/index.js';
import { axiosAuth } from '../../src/http/axios.js';
import { type TestAuthorizationServer, startAuthorizationServer } from '../support/authorization-server.js';
import { type TestApi, startApi, startOtherOrigin } from './support.js';

let as: TestAuthorizationServer;
let api: TestApi;
let other: Awaited<ReturnType<typeof startOtherOrigin>>;
let manager: TokenManager;

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
});
afterEach(async () => {
  await manager.close();
});

describe('axiosAuth', () => {
  it('succeeds after exactly one retry when the API rejects the first token', async () => {
    const client = axios.create({ baseURL: api.url });
    axiosAuth(client, manager);
    const res = await client.get('/orders');
    expect(res.status).toBe(200);
    expect(res.data).toMatchObject({ ok: true, path: '/orders' });
    expect(api.requests.map((r) => r.status)).toEqual([401, 200]);
    const [first, second] = api.requests.map((r) => r.authorization);
    expect(first).toMatch(/^Bearer /);
    expect(second).toMatch(/^Bearer /);
    expect(second).not.toBe(first);
  });

  it('replays a JSON body once, and works when validateStatus lets a 401 through', async () => {
    const client = axios.create({ baseURL: api.url, validateStatus: () => true });
    axiosAuth(client, manager);
    const res = await client.post('/orders', { item: 'a' });
    expect(res.status).toBe(200);
    expect(api.requests.map((r) => [r.status, r.body])).toEqual([
      [401, '{"item":"a"}'],
      [200, '{"item":"a"}'],
    ]);
  });

  it('never retries more than once: the second 401 is the error', async () => {
    api.mode = 'always-401';
    const client = axios.create({ baseURL: api.url });
    axiosAuth(client, manager);
    const err = (await client.get('/orders').catch((e: unknown) => e)) as AxiosError;
    expect(err.response?.status).toBe(401);
    expect(api.requests).toHaveLength(2);
  });

  it('does not replay a stream: the 401 is the answer, and the next request has a new token', async () => {
    const client = axios.create({ baseURL: api.url });
    axiosAuth(client, manager);
    const err = (await client.post('/upload', Readable.from(['a', 'b'])).catch((e: unknown) => e)) as AxiosError;
    expect(err.response?.status).toBe(401);
    expect(api.requests.map((r) => [r.status, r.body])).toEqual([[401, 'ab']]);
    const next = await client.get('/orders');
    expect(next.status).toBe(200);
    expect(api.requests[1]?.authorization).not.toBe(api.requests[0]?.authorization);
  });

  it('sends no token to another origin: an absolute URL outside baseURL, or origins that do not list it', async () => {
    const client = axios.create({ baseURL: api.url });
    axiosAuth(client, manager);
    await client.get(`${other.url}/absolute`);
    const listed = axios.create();
    axiosAuth(listed, manager, { origins: [api.url] });
    await listed.get(`${other.url}/unlisted`);
    expect(other.requests.map((r) => r.authorization)).toEqual([undefined, undefined]);
    expect(api.requests).toEqual([]);
  });

  it('sends no token after a redirect to another origin', async () => {
    api.mode = 'validate';
    const client = axios.create({ baseURL: api.url });
    axiosAuth(client, manager);
    const res = await client.get(`/redirect?to=${encodeURIComponent(`${other.url}/landing`)}`);
    expect(res.data).toEqual({ other: true });
    expect(api.requests[0]?.authorization).toMatch(/^Bearer /);
    expect(other.requests.map((r) => r.authorization)).toEqual([undefined]);
  });

  it('without a baseURL and without origins, every request of the instance gets the token', async () => {
    api.mode = 'validate';
    const client = axios.create();
    axiosAuth(client, manager);
    const res = await client.get(`${api.url}/anywhere`);
    expect(res.status).toBe(200);
  });

  it('the returned function removes both interceptors', async () => {
    const client = axios.create({ baseURL: api.url });
    const remove = axiosAuth(client, manager);
    remove();
    const err = (await client.get('/orders').catch((e: unknown) => e)) as AxiosError;
    expect(err.response?.status).toBe(401);
    expect(api.requests.map((r) => r.authorization)).toEqual([undefined]);
  });

  it('rejects with the token error when no token can be had', async () => {
    const broken = new TokenManager({
      source: clientCredentials({
        issuer: as.issuer,
        clientId: as.clients.svc.clientId,
        clientSecret: 'wrong',
        allowInsecureRequests: true,
      }),
    });
    const client = axios.create({ baseURL: api.url });
    axiosAuth(client, broken);
    const err = await client.get('/orders').catch((e: unknown) => e);
    expect(isTokenwardenError(err, 'ERR_OAUTH')).toBe(true);
    expect(api.requests).toEqual([]);
    await broken.close();
  });

  it('refuses what is not an axios instance or a token manager, and bad options', () => {
    const client = axios.create();
    expect(() => axiosAuth({} as never, manager)).toThrow(/axios instance/);
    expect(() => axiosAuth(client, {} as never)).toThrow(/TokenManager/);
    expect(() => axiosAuth(client, manager, { origins: ['nope'] })).toThrow(/origins/);
    expect(() => axiosAuth(client, manager, { retryOn401: 'sometimes' as never })).toThrow(/retryOn401/);
  });

  it('signs a DPoP proof per request and answers the use_dpop_nonce challenge once', async () => {
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
    api.dpopNonce = 'nonce-axios';
    try {
      const client = axios.create({ baseURL: api.url });
      axiosAuth(client, dpopManager);
      const res = await client.get('/bound?x=1');
      expect(res.status).toBe(200);
      expect(api.requests.map((r) => [r.status, r.authorization?.split(' ')[0], r.dpop !== undefined])).toEqual([
        [401, 'DPoP', true],
        [200, 'DPoP', true],
      ]);
      await client.get('/bound');
      expect(api.requests).toHaveLength(3); // the nonce was remembered
    } finally {
      await dpopManager.close();
    }
  });
});
