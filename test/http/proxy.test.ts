/**
 * Proxies: tokenwarden's own requests through a real forward proxy (the `proxy` package on loopback),
 * counting what went through it — a fixed proxy URL, `'env'` with NO_PROXY, proxy credentials (never shown),
 * sources, UserTokens and createVerifier; and curl's rules for the proxy variables.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { createServer as createTlsServer } from 'node:https';
import { type Server as NetServer, createServer as createNetServer } from 'node:net';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { inspect } from 'node:util';
import { createProxy } from 'proxy';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import {
  TokenManager,
  UserTokens,
  clearDiscoveryCache,
  clientCredentials,
  isTokenwardenError,
  proxyForUrl,
  redactProxyUrl,
  tokenExchange,
} from '../../src/index.js';
import { createVerifier } from '../../src/server/index.js';
import {
  API_RESOURCE,
  type TestAuthorizationServer,
  startAuthorizationServer,
} from '../support/authorization-server.js';
import { type TestProxy, startProxy } from './support.js';

let as: TestAuthorizationServer;
let proxy: TestProxy;
let guarded: TestProxy;
const PROXY_VARS = [
  'http_proxy',
  'HTTP_PROXY',
  'https_proxy',
  'HTTPS_PROXY',
  'all_proxy',
  'ALL_PROXY',
  'no_proxy',
  'NO_PROXY',
];
let saved: Record<string, string | undefined>;

beforeAll(async () => {
  as = await startAuthorizationServer({ accessTokenTtl: 60 });
  proxy = await startProxy();
  guarded = await startProxy({ user: 'proxy-user', password: 'p@ss:w0rd/secret' });
});
afterAll(async () => {
  await proxy.close();
  await guarded.close();
  await as.close();
});
beforeEach(() => {
  saved = Object.fromEntries(PROXY_VARS.map((name) => [name, process.env[name]]));
  for (const name of PROXY_VARS) delete process.env[name];
  proxy.seen.length = 0;
  guarded.seen.length = 0;
  guarded.credentials.length = 0;
  clearDiscoveryCache();
});
afterEach(() => {
  for (const name of PROXY_VARS) {
    if (saved[name] === undefined) delete process.env[name];
    else process.env[name] = saved[name];
  }
});

const svc = () => ({
  issuer: as.issuer,
  clientId: as.clients.svc.clientId,
  clientSecret: as.clients.svc.clientSecret,
  allowInsecureRequests: true,
});
const through = (p: TestProxy, path: string) =>
  p.seen.filter((line) => line.endsWith(path) || line.includes(`${path}?`));

describe('proxy on sources', () => {
  it("proxy: 'http://127.0.0.1:PORT' sends discovery and the token request through the proxy", async () => {
    const manager = new TokenManager({ source: clientCredentials({ ...svc(), proxy: proxy.url }) });
    try {
      await manager.getToken();
    } finally {
      await manager.close();
    }
    expect(proxy.seen).toEqual([`GET ${as.issuer}/.well-known/openid-configuration`, `POST ${as.issuer}/token`]);
  });

  it("without proxy, nothing goes through it (Node's fetch ignores the variables)", async () => {
    process.env['HTTP_PROXY'] = proxy.url;
    const manager = new TokenManager({ source: clientCredentials(svc()) });
    try {
      await manager.getToken();
    } finally {
      await manager.close();
    }
    expect(proxy.seen).toEqual([]);
  });

  it("proxy: 'env' reads HTTP_PROXY (and http_proxy) on every request, and honours NO_PROXY", async () => {
    process.env['HTTP_PROXY'] = proxy.url;
    const source = clientCredentials({ ...svc(), proxy: 'env' });
    await source.fetchToken({});
    expect(through(proxy, '/token')).toHaveLength(1);

    process.env['NO_PROXY'] = 'example.com, 127.0.0.1';
    await source.fetchToken({});
    expect(through(proxy, '/token')).toHaveLength(1); // bypassed

    process.env['NO_PROXY'] = `localhost,127.0.0.1:${as.port + 1}`; // another port: not a match
    await source.fetchToken({});
    expect(through(proxy, '/token')).toHaveLength(2);

    delete process.env['NO_PROXY'];
    delete process.env['HTTP_PROXY'];
    process.env['http_proxy'] = proxy.url;
    process.env['HTTPS_PROXY'] = 'http://127.0.0.1:9'; // for https: only; this is an http: issuer
    await source.fetchToken({});
    expect(through(proxy, '/token')).toHaveLength(3);

    delete process.env['http_proxy'];
    await source.fetchToken({});
    expect(through(proxy, '/token')).toHaveLength(3); // no variable for http: — direct
  });

  it('proxy credentials are sent as Proxy-Authorization and never shown', async () => {
    const withCredentials = `http://proxy-user:${encodeURIComponent('p@ss:w0rd/secret')}@127.0.0.1:${guarded.port}`;
    const source = clientCredentials({ ...svc(), proxy: withCredentials });
    await source.fetchToken({});
    expect(guarded.credentials.at(-1)).toBe(`Basic ${Buffer.from('proxy-user:p@ss:w0rd/secret').toString('base64')}`);
    const shown = [JSON.stringify(source), inspect(source, { depth: 10 }), JSON.stringify(source.client.toJSON())];
    for (const text of shown) {
      expect(text).toContain(`http://***@127.0.0.1:${guarded.port}`);
      expect(text).not.toContain('w0rd');
      expect(text).not.toContain('proxy-user');
    }
  });

  it('a proxy that refuses (407) or is down is ERR_NETWORK naming the proxy, without its credentials', async () => {
    const wrong = clientCredentials({ ...svc(), proxy: `http://proxy-user:wrong-secret@127.0.0.1:${guarded.port}` });
    const refused = await wrong.fetchToken({}).catch((e: unknown) => e);
    expect(isTokenwardenError(refused, 'ERR_NETWORK')).toBe(true);
    expect((refused as Error).message).toContain(`through the proxy http://***@127.0.0.1:${guarded.port}`);
    expect((refused as Error).message).toMatch(/407/);

    const closed = await startProxy();
    await closed.close();
    const down = clientCredentials({ ...svc(), proxy: `http://user:down-secret@127.0.0.1:${closed.port}` });
    const err = await down.fetchToken({}).catch((e: unknown) => e);
    expect(isTokenwardenError(err, 'ERR_NETWORK')).toBe(true);
    expect((err as Error).message).toContain('ECONNREFUSED');
    for (const e of [refused, err]) {
      const everything = `${String(e)} ${inspect(e, { depth: 20 })} ${JSON.stringify(e)}`;
      expect(everything).not.toContain('wrong-secret');
      expect(everything).not.toContain('down-secret');
    }
  });

  it('a malformed proxy is ERR_CONFIG at construction, without the value; a malformed variable fails the request', async () => {
    for (const bad of ['ftp://user:hunter2@proxy:21', 'http://', '', 'socks5://hunter2@proxy:1080']) {
      let error: unknown;
      try {
        clientCredentials({ ...svc(), proxy: bad });
      } catch (err) {
        error = err;
      }
      expect(isTokenwardenError(error, 'ERR_CONFIG')).toBe(true);
      expect((error as Error).message).not.toContain('hunter2');
    }
    expect(() => clientCredentials({ ...svc(), proxy: proxy.url, fetch: globalThis.fetch })).toThrow(
      /either fetch or proxy/,
    );

    process.env['HTTP_PROXY'] = 'http://user:hunter2@[not-a-host';
    const err = await clientCredentials({ ...svc(), proxy: 'env' })
      .fetchToken({})
      .catch((e: unknown) => e);
    expect(isTokenwardenError(err, 'ERR_CONFIG')).toBe(true);
    expect((err as Error).message).toContain('HTTP_PROXY');
    expect((err as Error).message).not.toContain('hunter2');
  });

  it('token exchange, revocation and UserTokens (refresh, revocation) go through the proxy too', async () => {
    const own = new TokenManager({ source: clientCredentials({ ...svc(), proxy: proxy.url }) });
    const exchange = tokenExchange({
      issuer: as.issuer,
      clientId: as.clients.exchanger.clientId,
      clientSecret: as.clients.exchanger.clientSecret,
      allowInsecureRequests: true,
      subjectToken: own,
      proxy: proxy.url,
    });
    try {
      await exchange.fetchToken({});
    } finally {
      await own.close();
    }
    expect(through(proxy, '/token')).toHaveLength(2);

    const users = new UserTokens({
      issuer: as.issuer,
      clientId: as.clients.app.clientId,
      clientSecret: as.clients.app.clientSecret,
      allowInsecureRequests: true,
      proxy: proxy.url,
    });
    try {
      await users.save('alice', await as.login('alice'));
      // Parameters of their own make another token of the user's: a refresh.
      await users.getAccessToken('alice', { extraParams: { purpose: 'proxy-test' } });
      await users.revoke('alice');
    } finally {
      await users.close();
    }
    expect(through(proxy, '/token')).toHaveLength(3); // the refresh
    expect(through(proxy, '/token/revocation').length).toBeGreaterThan(0);
  });
});

describe('proxy faults and TLS', () => {
  it('a proxy that accepts and never answers is ERR_TIMEOUT after the timeout', async () => {
    const sockets = new Set<import('node:net').Socket>();
    const silent: NetServer = createNetServer((socket) => {
      sockets.add(socket);
    });
    await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r));
    const port = (silent.address() as AddressInfo).port;
    try {
      const source = clientCredentials({ ...svc(), proxy: `http://127.0.0.1:${port}`, timeout: '300ms' });
      const err = await source.fetchToken({}).catch((e: unknown) => e);
      expect(isTokenwardenError(err, 'ERR_TIMEOUT')).toBe(true);
      expect((err as Error).message).toContain(`through the proxy http://127.0.0.1:${port}`);
    } finally {
      for (const socket of sockets) socket.destroy();
      silent.close();
    }
  });

  it('an https: proxy: TLS to the proxy, trusted through NODE_EXTRA_CA_CERTS (in a child process)', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'tw-tls-'));
    const run = promisify(execFile);
    try {
      await run('openssl', [
        'req',
        '-x509',
        '-newkey',
        'ec',
        '-pkeyopt',
        'ec_paramgen_curve:P-256',
        '-nodes',
        '-days',
        '1',
        '-subj',
        '/CN=localhost',
        '-addext',
        'subjectAltName=IP:127.0.0.1,DNS:localhost',
        '-keyout',
        join(dir, 'key.pem'),
        '-out',
        join(dir, 'cert.pem'),
      ]);
      const tlsServer = createTlsServer({
        key: await readFile(join(dir, 'key.pem')),
        cert: await readFile(join(dir, 'cert.pem')),
      });
      const seen: string[] = [];
      tlsServer.prependListener('request', (req) => seen.push(`${req.method} ${req.url}`));
      tlsServer.prependListener('connect', (req) => seen.push(`CONNECT ${req.url}`));
      createProxy(tlsServer as never);
      await new Promise<void>((r) => tlsServer.listen(0, '127.0.0.1', r));
      const port = (tlsServer.address() as AddressInfo).port;
      const dist = new URL('../../dist/index.js', import.meta.url).href;
      const script = `
        const { clientCredentials } = await import(${JSON.stringify(dist)});
        const source = clientCredentials(${JSON.stringify({ ...svc(), proxy: `https://localhost:${port}` })});
        const token = await source.fetchToken({});
        console.log(token.tokenType);`;
      try {
        const { stdout } = await run(process.execPath, ['--input-type=module', '-e', script], {
          env: { PATH: process.env['PATH'] ?? '', NODE_EXTRA_CA_CERTS: join(dir, 'cert.pem') },
        });
        expect(stdout.trim()).toBe('Bearer');
        // Through a TLS proxy every request is tunnelled, http: targets too.
        expect(seen).toContain(`CONNECT ${new URL(as.issuer).host}`);
        // Without the CA, the proxy's certificate is refused.
        const untrusted = await run(process.execPath, ['--input-type=module', '-e', script], {
          env: { PATH: process.env['PATH'] ?? '' },
        }).catch((e: { stderr?: string }) => e);
        expect(String((untrusted as { stderr?: string }).stderr)).toMatch(/ERR_NETWORK|certificate/i);
      } finally {
        tlsServer.close();
        tlsServer.closeAllConnections();
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('proxy on createVerifier', () => {
  it('discovery and JWKS go through the proxy', async () => {
    const source = clientCredentials(svc());
    const token = await source.fetchToken({});
    clearDiscoveryCache();
    const verify = createVerifier({
      issuer: as.issuer,
      audience: API_RESOURCE,
      allowInsecureRequests: true,
      proxy: proxy.url,
    });
    const result = await verify(token.accessToken);
    expect(result.ok).toBe(true);
    expect(proxy.seen).toEqual([`GET ${as.issuer}/.well-known/openid-configuration`, `GET ${as.issuer}/jwks`]);
  });

  it('introspection goes through the proxy', async () => {
    const source = clientCredentials({ ...svc(), resource: 'https://opaque.example.test' });
    const token = await source.fetchToken({});
    const verify = createVerifier({
      issuer: as.issuer,
      introspection: { clientId: as.clients.rs.clientId, clientSecret: as.clients.rs.clientSecret },
      allowInsecureRequests: true,
      proxy: 'env',
    });
    process.env['http_proxy'] = proxy.url;
    const result = await verify(token.accessToken);
    expect(result.ok).toBe(true);
    expect(through(proxy, '/token/introspection')).toHaveLength(1);
  });

  it('refuses fetch and proxy together', () => {
    expect(() =>
      createVerifier({ issuer: as.issuer, audience: 'a', allowInsecureRequests: true, proxy: 'env', fetch }),
    ).toThrow(/either fetch or proxy/);
  });
});

describe("curl's rules for the proxy variables", () => {
  const env = (vars: Record<string, string>) => vars as NodeJS.ProcessEnv;

  it('picks the variable for the scheme, lower case first, then ALL_PROXY', () => {
    expect(proxyForUrl('http://a.test/', env({ HTTP_PROXY: 'http://up:1', http_proxy: 'http://low:1' }))).toBe(
      'http://low:1',
    );
    expect(proxyForUrl('https://a.test/', env({ HTTPS_PROXY: 'http://up:2' }))).toBe('http://up:2');
    // No fallback from https: to HTTP_PROXY (curl's rule; undici's EnvHttpProxyAgent would fall back).
    expect(proxyForUrl('https://a.test/', env({ HTTP_PROXY: 'http://p:1' }))).toBeUndefined();
    expect(proxyForUrl('https://a.test/', env({ ALL_PROXY: 'http://all:3' }))).toBe('http://all:3');
    expect(proxyForUrl('https://a.test/', env({ https_proxy: '', HTTPS_PROXY: 'http://set:4' }))).toBe('http://set:4');
    expect(proxyForUrl('https://a.test/', env({ https_proxy: 'proxy.corp:3128' }))).toBe('http://proxy.corp:3128');
    expect(proxyForUrl('https://a.test/', env({}))).toBeUndefined();
  });

  it("ignores HTTP_PROXY under CGI, where a request's Proxy header sets it (httpoxy), as Go does", () => {
    const cgi = { REQUEST_METHOD: 'GET', HTTP_PROXY: 'http://attacker.test:1' };
    expect(proxyForUrl('http://a.test/', env(cgi))).toBeUndefined();
    // The lower-case name (a CGI server cannot make it: its variables are upper case) and ALL_PROXY still count.
    expect(proxyForUrl('http://a.test/', env({ ...cgi, http_proxy: 'http://corp:1' }))).toBe('http://corp:1');
    expect(proxyForUrl('http://a.test/', env({ ...cgi, ALL_PROXY: 'http://all:2' }))).toBe('http://all:2');
    expect(proxyForUrl('http://a.test/', env({ HTTP_PROXY: 'http://up:1' }))).toBe('http://up:1');
  });

  it.each([
    ['*', 'https://anything.test/', true],
    ['example.com', 'https://example.com/', true],
    ['example.com', 'https://api.example.com/', true],
    ['example.com', 'https://notexample.com/', false],
    ['.example.com', 'https://example.com/', true],
    ['*.example.com', 'https://deep.api.example.com/', true],
    ['EXAMPLE.com', 'https://Api.Example.COM/', true],
    ['example.com:8443', 'https://example.com:8443/', true],
    ['example.com:8443', 'https://example.com/', false],
    ['10.0.0.0/8', 'https://10.1.2.3/', true],
    ['10.0.0.0/8', 'https://11.1.2.3/', false],
    ['127.0.0.1', 'http://127.0.0.1:8080/', true],
    ['127.0.0.1', 'http://127.0.0.10/', false],
    ['127.0.0.1', 'http://localhost/', false],
    ['1.2.3.4', 'http://5.1.2.3.4.nip.test/', false],
    ['::1', 'http://[::1]:8080/', true],
    ['[::1]:8080', 'http://[::1]:8080/', true],
    ['fd00::/8', 'http://[fd12::1]/', true],
    ['[fd00::]/8', 'http://[fd12::1]/', true],
    ['[fd00::]/8', 'http://[fe80::1]/', false],
    ['bücher.example', 'https://api.xn--bcher-kva.example/', true],
    ['BÜCHER.example', 'https://bücher.example/', true],
    ['bücher.example', 'https://bucher.example/', false],
    ['a.test, ,b.test  c.test', 'https://c.test/', true],
    ['localhost', 'https://localhost.evil.test/', false],
    ['evil', 'https://notevil/', false],
    ['', 'https://a.test/', false],
    ['10.0.0.0/99', 'https://10.1.2.3/', false],
    ['/', 'https://a.test/', false],
  ])('NO_PROXY=%j for %s bypasses the proxy: %s', (noProxy, url, bypassed) => {
    const result = proxyForUrl(url, env({ HTTPS_PROXY: 'http://p:1', HTTP_PROXY: 'http://p:1', NO_PROXY: noProxy }));
    expect(result === undefined).toBe(bypassed);
  });

  it('redacts credentials, and never throws on garbage', () => {
    expect(redactProxyUrl('http://alice:s3cret@proxy.internal:3128/path?q=1')).toBe('http://***@proxy.internal:3128');
    expect(redactProxyUrl('https://token@proxy')).toBe('https://***@proxy');
    expect(redactProxyUrl('env')).toBe('env');
    expect(redactProxyUrl('http://[')).toBe('(invalid proxy URL)');
    expect(proxyForUrl('https://a.test/', env({ HTTPS_PROXY: 'http://u:pw@p:1' }))).toBe('http://***@p:1');
  });
});
