/**
 * Hostile answers to the HTTP integrations, against the real authorization server and real node:http
 * servers: a redirect to another origin that answers 401 `invalid_token` (the token never went there, so it
 * is not about the token), a DPoP proof that must not follow a redirect to another origin, a DPoP proof for a
 * path that starts with `//`, and NO_PROXY entries that spell an IPv6 address another way.
 */
import { createHash } from 'node:crypto';
import { type IncomingMessage, type Server, createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import axios from 'axios';
import { decodeJwt, generateKeyPair } from 'jose';
import { Agent, request } from 'undici';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { TokenManager, clientCredentials } from '../../src/index.js';
import { authFetch } from '../../src/http/auth-fetch.js';
import { axiosAuth } from '../../src/http/axios.js';
import { proxyForUrl } from '../../src/http/proxy.js';
import { authInterceptor } from '../../src/http/undici.js';
import { type TestAuthorizationServer, startAuthorizationServer } from '../support/authorization-server.js';

interface Seen {
  host: string | undefined;
  path: string;
  authorization: string | undefined;
  dpop: string | undefined;
}

/**
 * One server, reached under two origins (`127.0.0.1` is the API, `localhost` "another origin"): it records
 * every request; `/redirect?to=URL` answers 302 to `URL`; `/rejected` answers 401 `invalid_token` (as a
 * server that dislikes any request would); anything else 200.
 */
let server: Server;
let apiUrl: string;
let otherUrl: string;
const seen: Seen[] = [];

let as: TestAuthorizationServer;
let manager: TokenManager;

beforeAll(async () => {
  as = await startAuthorizationServer({ accessTokenTtl: 60 });
  server = createServer((req: IncomingMessage, res) => {
    const path = req.url ?? '/';
    seen.push({
      host: req.headers.host,
      path,
      authorization: req.headers.authorization,
      dpop: typeof req.headers.dpop === 'string' ? req.headers.dpop : undefined,
    });
    // The path as sent, so `//a/b` stays a path (not a URL with host `a`).
    const url = new URL(`http://${req.headers.host ?? 'x'}${path}`);
    if (url.pathname === '/redirect') {
      res.writeHead(302, { location: url.searchParams.get('to') ?? '/' }).end();
    } else if (url.pathname === '/rejected') {
      res.writeHead(401, { 'www-authenticate': 'Bearer error="invalid_token"' }).end();
    } else {
      res.writeHead(200, { 'content-type': 'application/json' }).end('{"ok":true}');
    }
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  apiUrl = `http://127.0.0.1:${port}`;
  otherUrl = `http://localhost:${port}`;
});
afterAll(async () => {
  server.closeAllConnections();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  await as.close();
});
beforeEach(() => {
  seen.length = 0;
  manager = newManager();
});
afterEach(async () => {
  await manager.close();
});

function newManager(dpop?: CryptoKeyPair): TokenManager {
  return new TokenManager({
    source: clientCredentials({
      issuer: as.issuer,
      clientId: as.clients.svc.clientId,
      clientSecret: as.clients.svc.clientSecret,
      allowInsecureRequests: true,
      ...(dpop !== undefined && { dpop }),
    }),
  });
}

const tokenRequests = (): number => as.counts.byGrant['client_credentials'] ?? 0;
const redirectToOther = (path: string): string => `/redirect?to=${encodeURIComponent(`${otherUrl}${path}`)}`;

describe('a 401 from another origin, at the end of a redirect, is not about the token', () => {
  // The other origin never got the token (the client drops it on the hop): its 401 must neither invalidate
  // the token nor send the request again — else any site the API redirects to can make every process of
  // the fleet throw its valid token away and spend a forced refresh.
  it('manager.fetch hands the 401 back and keeps the token', async () => {
    const token = await manager.getToken();
    const before = tokenRequests();
    const res = await manager.fetch(`${apiUrl}${redirectToOther('/rejected')}`);
    expect(res.status).toBe(401);
    expect(seen.map((s) => [s.host, s.authorization?.split(' ')[0]])).toEqual([
      [new URL(apiUrl).host, 'Bearer'],
      [new URL(otherUrl).host, undefined],
    ]);
    expect(tokenRequests() - before).toBe(0);
    expect((await manager.getToken()).accessToken).toBe(token.accessToken);
  });

  it('axios hands the 401 back and keeps the token', async () => {
    const client = axios.create({ baseURL: apiUrl });
    axiosAuth(client, manager, { retryOn401: 'always' });
    const token = await manager.getToken();
    const before = tokenRequests();
    const res = await client.get(redirectToOther('/rejected'), { validateStatus: () => true });
    expect(res.status).toBe(401);
    expect(seen.map((s) => s.host)).toEqual([new URL(apiUrl).host, new URL(otherUrl).host]);
    expect(tokenRequests() - before).toBe(0);
    expect((await manager.getToken()).accessToken).toBe(token.accessToken);
  });

  it('a 401 from the API itself is still retried once with a new token (the rule is unchanged)', async () => {
    const client = axios.create({ baseURL: apiUrl });
    axiosAuth(client, manager);
    const res = await client.get('/rejected', { validateStatus: () => true });
    expect(res.status).toBe(401);
    expect(seen).toHaveLength(2);
    expect(seen[1]?.authorization).not.toBe(seen[0]?.authorization);
    const viaFetch = await manager.fetch(`${apiUrl}/rejected`);
    expect(viaFetch.status).toBe(401);
    expect(seen).toHaveLength(4);
  });
});

describe('DPoP proofs stay with the request they were made for', () => {
  it('axios: neither the token nor the proof follows a redirect to another origin; the caller’s hook still runs', async () => {
    const dpopManager = newManager(await generateKeyPair('ES256', { extractable: true }));
    try {
      const client = axios.create({ baseURL: apiUrl });
      axiosAuth(client, dpopManager);
      const hops: string[] = [];
      const res = await client.get(redirectToOther('/landing'), {
        beforeRedirect: (options) => hops.push(String(options.href)),
      });
      expect(res.status).toBe(200);
      expect(seen[0]?.authorization).toMatch(/^DPoP /);
      expect(seen[0]?.dpop).toBeDefined();
      expect(seen[1]).toMatchObject({ host: new URL(otherUrl).host, authorization: undefined, dpop: undefined });
      expect(hops).toEqual([`${otherUrl}/landing`]);
    } finally {
      await dpopManager.close();
    }
  });

  it('undici: a path that starts with // is a path — htu names this origin, ath the token sent (RFC 9449 §4.2)', async () => {
    const dpopManager = newManager(await generateKeyPair('ES256', { extractable: true }));
    const agent = new Agent();
    try {
      const dispatcher = agent.compose(authInterceptor(dpopManager, { origins: [apiUrl] }));
      const res = await request(`${apiUrl}//files/report?x=1`, { dispatcher });
      await res.body.dump();
      expect(res.statusCode).toBe(200);
      const [scheme, token] = (seen[0]?.authorization ?? '').split(' ');
      expect(scheme).toBe('DPoP');
      const proof = decodeJwt(seen[0]?.dpop ?? '');
      expect(proof.htu).toBe(`${apiUrl}//files/report`);
      expect(proof.htm).toBe('GET');
      expect(proof.ath).toBe(
        createHash('sha256')
          .update(token ?? '')
          .digest('base64url'),
      );
    } finally {
      await agent.close();
      await dpopManager.close();
    }
  });
});

describe("a token exchange's N_A token (not an access token) is never sent as Authorization", () => {
  // What tokenExchange() keeps for an ID token it was given (RFC 8693 §2.2.1: token_type N_A).
  const idToken = 'eyJhbGciOiJub25lIn0.eyJzdWIiOiJhbGljZSJ9.';
  const provider = {
    getToken: async () => ({ accessToken: idToken, tokenType: 'N_A', issuedAt: Date.now(), raw: {} }),
    invalidate: async () => undefined,
  };
  const refused = { code: 'ERR_UNSUPPORTED', message: expect.stringContaining('not an access token') };

  it('fetch, axios and undici refuse it with ERR_UNSUPPORTED, before any request', async () => {
    await expect(authFetch(provider)(`${apiUrl}/n_a`)).rejects.toMatchObject(refused);
    const client = axios.create({ baseURL: apiUrl });
    axiosAuth(client, provider);
    await expect(client.get('/n_a')).rejects.toMatchObject(refused);
    const agent = new Agent();
    try {
      const dispatcher = agent.compose(authInterceptor(provider, { origins: [apiUrl] }));
      await expect(request(`${apiUrl}/n_a`, { dispatcher })).rejects.toMatchObject(refused);
    } finally {
      await agent.close();
    }
    expect(seen.filter((s) => s.path === '/n_a')).toEqual([]);
  });
});

describe('NO_PROXY names an IPv6 address however it is spelled', () => {
  const env = (noProxy: string) =>
    ({ HTTPS_PROXY: 'http://p:1', HTTP_PROXY: 'http://p:1', NO_PROXY: noProxy }) as NodeJS.ProcessEnv;

  it.each([
    ['0:0:0:0:0:0:0:1', 'https://[::1]:8443/', true],
    ['0:0:0:0:0:0:0:1:8443', 'https://[::1]:8443/', false], // a bare IPv6 address has no port
    ['[0:0:0:0:0:0:0:1]:8443', 'https://[::1]:8443/', true],
    ['[0:0:0:0:0:0:0:1]:9999', 'https://[::1]:8443/', false],
    ['::ffff:127.0.0.1', 'https://[::ffff:127.0.0.1]/', true],
    ['FD00:0:0:0:0:0:0:5', 'https://[fd00::5]/', true],
    ['fd00::5', 'https://[fd00::6]/', false],
  ])('NO_PROXY=%j for %s bypasses the proxy: %s', (noProxy, url, bypassed) => {
    expect(proxyForUrl(url, env(noProxy)) === undefined).toBe(bypassed);
  });
});
