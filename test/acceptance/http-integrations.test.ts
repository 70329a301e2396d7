/**
 * Issue 13's acceptance, as written, through the package's own subpaths (the build): axios and undici
 * against the real authorization server and a local API that answers 401 invalid_token to the first token
 * it sees; a second local origin that is not listed; a proxy on clientCredentials; a client assertion file.
 */
import { randomUUID } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import axios from 'axios';
import { SignJWT, importJWK } from 'jose';
import { TokenManager, clientCredentials } from 'tokenwarden';
import { axiosAuth } from 'tokenwarden/axios';
import { authInterceptor } from 'tokenwarden/undici';
import { Agent, fetch as ufetch } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type TestAuthorizationServer, startAuthorizationServer } from '../support/authorization-server.js';
import { type TestApi, type TestProxy, startApi, startOtherOrigin, startProxy } from '../http/support.js';

let as: TestAuthorizationServer;
let api: TestApi;
let other: Awaited<ReturnType<typeof startOtherOrigin>>;
let proxy: TestProxy;
let dir: string;
beforeAll(async () => {
  as = await startAuthorizationServer({ accessTokenTtl: 60 });
  api = await startApi(as);
  other = await startOtherOrigin();
  proxy = await startProxy();
  dir = await mkdtemp(join(tmpdir(), 'tw-acc-'));
});
afterAll(async () => {
  await Promise.all([api.close(), other.close(), proxy.close()]);
  await as.close();
  await rm(dir, { recursive: true, force: true });
});

const svc = () => ({
  issuer: as.issuer,
  clientId: as.clients.svc.clientId,
  clientSecret: as.clients.svc.clientSecret,
  allowInsecureRequests: true,
});

describe('issue 13 acceptance', () => {
  it('axios and undici fetch each succeed after exactly one retry; an unlisted origin gets no Authorization', async () => {
    const baseURL = api.url;
    const manager = new TokenManager({ source: clientCredentials(svc()) });
    const agent = new Agent();
    try {
      const client = axios.create({ baseURL });
      axiosAuth(client, manager);
      const dispatcher = agent.compose(authInterceptor(manager, { origins: [baseURL] }));

      api.reset();
      expect((await client.get('/a')).status).toBe(200);
      expect(api.requests.map((r) => r.status)).toEqual([401, 200]);

      api.reset();
      expect((await ufetch(`${baseURL}/b`, { dispatcher })).status).toBe(200);
      expect(api.requests.map((r) => r.status)).toEqual([401, 200]);

      await (await ufetch(`${other.url}/c`, { dispatcher })).arrayBuffer();
      await client.get(`${other.url}/d`);
      expect(other.requests.map((r) => r.authorization)).toEqual([undefined, undefined]);
    } finally {
      await agent.close();
      await manager.close();
    }
  });

  it("with proxy: 'http://127.0.0.1:PORT' on clientCredentials, the token request goes through the proxy", async () => {
    const manager = new TokenManager({ source: clientCredentials({ ...svc(), proxy: proxy.url }) });
    try {
      await manager.getToken();
    } finally {
      await manager.close();
    }
    expect(proxy.seen).toContain(`POST ${as.issuer}/token`);
  });

  it('with clientAssertion: { file }, the server receives the current content, and a rewrite is used next', async () => {
    const { clientId, privateJwk } = as.clients.jwt;
    const key = await importJWK(privateJwk, 'ES256');
    const sign = () =>
      new SignJWT({})
        .setProtectedHeader({ alg: 'ES256', kid: privateJwk.kid as string })
        .setIssuer(clientId)
        .setSubject(clientId)
        .setAudience(as.issuer)
        .setIssuedAt()
        .setExpirationTime('2m')
        .setJti(randomUUID())
        .sign(key);
    const file = join(dir, 'token');
    const first = await sign();
    await writeFile(file, first);
    const manager = new TokenManager({
      source: clientCredentials({
        issuer: as.issuer,
        clientId,
        allowInsecureRequests: true,
        clientAssertion: { file },
      }),
    });
    try {
      as.resetCounts();
      await manager.getToken();
      const second = await sign();
      await writeFile(file, second);
      await manager.refresh();
      expect(as.tokenRequests.map((r) => [r.clientAssertion, r.status])).toEqual([
        [first, 200],
        [second, 200],
      ]);
    } finally {
      await manager.close();
    }
  });
});
