/**
 * Authorization servers other than oidc-provider, as an outside checker meets them: habits of real servers
 * (mutual-TLS endpoint aliases, rate limits with odd `Retry-After` values, …) that a real oidc-provider does
 * not produce here, played by a fault server.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TokenwardenError } from '../../src/errors.js';
import { clientCredentials } from '../../src/sources/client-credentials.js';
import { OAuthClient } from '../../src/sources/client.js';
import { clearDiscoveryCache } from '../../src/sources/discovery.js';
import { type FaultServer, json, startFaultServer } from '../support/fault-server.js';

let server: FaultServer;
let aliases: unknown;
let retryAfter = '';

beforeAll(async () => {
  server = await startFaultServer((req, res, body) => {
    const path = (req.url ?? '').split('?')[0];
    if (path === '/as/.well-known/openid-configuration') {
      json(res, 200, {
        issuer: `${server.url}/as`,
        token_endpoint: `${server.url}/as/token`,
        revocation_endpoint: `${server.url}/as/revoke`,
        ...(aliases !== undefined && { mtls_endpoint_aliases: aliases }),
      });
    } else if (path === '/mtls/token') {
      json(res, 200, { access_token: 'bound-to-the-certificate', token_type: 'Bearer', expires_in: 300 });
    } else if (path === '/slow-as/.well-known/openid-configuration') {
      const document = { issuer: `${server.url}/slow-as`, token_endpoint: `${server.url}/mtls/token` };
      setTimeout(() => json(res, 200, document), 300);
    } else if (path === '/stall/headers') {
      // Accepts the request and never answers.
    } else if (path === '/stall/body') {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.write('{"access_token":"');
    } else if (path === '/limited/token') {
      json(res, 429, { error: 'slow_down' }, { 'retry-after': retryAfter });
    } else if (path === '/echo/token') {
      // Echoes what it was sent (Authorization header and form) back in the error description.
      json(res, 400, { error: 'invalid_client', error_description: `${req.headers.authorization ?? ''} ${body}` });
    } else if (path === '/moved/token') {
      res.writeHead(307, { location: `${server.url}/elsewhere/token?echo=s3cr3t` }).end();
    } else if (path === '/elsewhere/token') {
      json(res, 200, { access_token: 'from-elsewhere', token_type: 'Bearer', expires_in: 300 });
    } else if (path === '/mtls/revoke') {
      res.writeHead(200).end();
    } else {
      // The plain endpoints do not ask for a client certificate: no certificate, no client.
      json(res, 401, { error: 'invalid_client', error_description: 'no client certificate' });
    }
  });
});
afterAll(() => server.close());

describe('mutual-TLS client authentication (RFC 8705)', () => {
  const mtlsAliases = () => ({
    token_endpoint: `${server.url}/mtls/token`,
    revocation_endpoint: `${server.url}/mtls/revoke`,
  });
  const client = (clientAuth: 'tls_client_auth' | 'self_signed_tls_client_auth' | 'client_secret_basic') => ({
    issuer: `${server.url}/as`,
    clientId: 'svc',
    ...(clientAuth === 'client_secret_basic' && { clientSecret: 'secret' }),
    clientAuth,
    allowInsecureRequests: true,
    timeout: '2s' as const,
  });

  for (const method of ['tls_client_auth', 'self_signed_tls_client_auth'] as const) {
    it(`${method}: token and revocation requests go to the metadata's mtls_endpoint_aliases (§5)`, async () => {
      aliases = mtlsAliases();
      clearDiscoveryCache();
      server.requests.length = 0;
      const token = await clientCredentials(client(method)).fetchToken({});
      expect(token.accessToken).toBe('bound-to-the-certificate');
      await new OAuthClient(client(method)).revoke('bound-to-the-certificate');
      const posts = server.requests.filter((r) => r.method === 'POST');
      expect(posts.map((r) => r.path)).toEqual(['/mtls/token', '/mtls/revoke']);
      // TLS client authentication sends the client id, and no secret of any kind.
      expect(new URLSearchParams(posts[0]!.body).get('client_id')).toBe('svc');
      expect(posts[0]!.headers.authorization).toBeUndefined();
    });
  }

  it('without aliases the plain endpoint is used; a client with a secret keeps the plain endpoint', async () => {
    aliases = undefined;
    clearDiscoveryCache();
    server.requests.length = 0;
    const refused = await clientCredentials(client('tls_client_auth'))
      .fetchToken({})
      .catch((e: unknown) => e);
    expect(refused).toMatchObject({ code: 'ERR_OAUTH', error: 'invalid_client', status: 401 });
    aliases = mtlsAliases();
    clearDiscoveryCache();
    await clientCredentials(client('client_secret_basic'))
      .fetchToken({})
      .catch(() => undefined);
    expect(server.requests.filter((r) => r.method === 'POST').map((r) => r.path)).toEqual(['/as/token', '/as/token']);
  });

  it('mtls_endpoint_aliases that is not an object is ERR_DISCOVERY, not a TypeError; a bad alias is ERR_DISCOVERY', async () => {
    for (const value of [42, 'x', true, [], { token_endpoint: 42 }, { token_endpoint: 'not a url' }]) {
      aliases = value;
      clearDiscoveryCache();
      server.requests.length = 0;
      const err = await clientCredentials(client('tls_client_auth'))
        .fetchToken({})
        .catch((e: unknown) => e);
      expect(err, JSON.stringify(value)).toBeInstanceOf(TokenwardenError);
      expect((err as TokenwardenError).code, JSON.stringify(value)).toBe('ERR_DISCOVERY');
      expect(
        server.requests.filter((r) => r.method === 'POST'),
        JSON.stringify(value),
      ).toEqual([]);
    }
  });
});

describe('a rate limit (429) whose Retry-After is not whole seconds or an HTTP-date', () => {
  it('fractional seconds are that long; a value that is neither (negative, exponent) is no delay, never "now"', async () => {
    const source = clientCredentials({
      tokenEndpoint: `${server.url}/limited/token`,
      clientId: 'svc',
      clientSecret: 'secret',
      allowInsecureRequests: true,
    });
    const seen: Record<string, number | undefined> = {};
    for (const value of ['1.5', '7.5', '30', '-5', '+5', '1e3', '0x10', new Date(Date.now() + 60_000).toUTCString()]) {
      retryAfter = value;
      const err = await source.fetchToken({}).catch((e: unknown) => e);
      expect(err).toMatchObject({ code: 'ERR_OAUTH', error: 'slow_down', status: 429 });
      seen[value.endsWith('GMT') ? 'date' : value] = (err as TokenwardenError).retryAfterMs;
    }
    expect(seen['date']).toBeGreaterThan(55_000);
    expect(seen['date']).toBeLessThanOrEqual(60_000);
    // Date.parse reads '1.5' as 5 January 2001 and '-5' as May 2001: a delay of 0, as if the server said "now".
    expect({ ...seen, date: 'checked' }).toEqual({
      '1.5': 1500,
      '7.5': 7500,
      '30': 30_000,
      '-5': undefined,
      '+5': undefined,
      '1e3': undefined,
      '0x10': undefined,
      date: 'checked',
    });
  });
});

describe('a server that stalls, through a fetch that does not honour its AbortSignal', () => {
  // An mTLS or tracing wrapper that rebuilds the request and forgets `signal`: the timeout must hold anyway.
  const forgetful = (input: string | URL | Request, init?: RequestInit): Promise<Response> =>
    fetch(input, {
      ...(init?.method !== undefined && { method: init.method }),
      ...(init?.headers !== undefined && { headers: init.headers }),
      ...(init?.body !== undefined && { body: init.body }),
      ...(init?.redirect !== undefined && { redirect: init.redirect }),
    });
  const stalled = (path: string) =>
    clientCredentials({
      tokenEndpoint: `${server.url}${path}`,
      clientId: 'svc',
      clientSecret: 'secret',
      allowInsecureRequests: true,
      timeout: '500ms',
      fetch: forgetful,
    });

  for (const path of ['/stall/headers', '/stall/body']) {
    it(`${path === '/stall/body' ? 'headers, then a body that stops' : 'no answer at all'}: ERR_TIMEOUT after the timeout, and a caller's abort is ERR_ABORTED`, async () => {
      const started = Date.now();
      const err = await stalled(path)
        .fetchToken({})
        .catch((e: unknown) => e);
      expect(err).toMatchObject({ code: 'ERR_TIMEOUT' });
      expect(Date.now() - started).toBeLessThan(3000);
      const controller = new AbortController();
      setTimeout(() => controller.abort(), 100);
      const aborted = await stalled(path)
        .fetchToken({ signal: controller.signal })
        .catch((e: unknown) => e);
      expect(aborted).toMatchObject({ code: 'ERR_ABORTED' });
    }, 10_000);
  }
});

describe('discovery shared by concurrent requests', () => {
  it("one caller's abort fails that caller only: another, waiting on the same discovery, gets its token", async () => {
    clearDiscoveryCache();
    const source = (clientId: string) =>
      clientCredentials({
        issuer: `${server.url}/slow-as`,
        clientId,
        clientSecret: 'secret',
        allowInsecureRequests: true,
      });
    const controller = new AbortController();
    const leaving = source('a')
      .fetchToken({ signal: controller.signal })
      .catch((e: unknown) => e);
    const staying = source('b')
      .fetchToken({})
      .catch((e: unknown) => e);
    setTimeout(() => controller.abort(), 50);
    expect(await leaving).toMatchObject({ code: 'ERR_ABORTED' });
    expect(await staying).toMatchObject({ accessToken: 'bound-to-the-certificate' });
    // One discovery request served both (and the one that left).
    expect(server.requests.filter((r) => r.path.startsWith('/slow-as/')).length).toBe(1);
  });
});

describe('a custom fetch that follows redirects', () => {
  it("an answer reached through a redirect the request asked not to follow is refused (ERR_INVALID_RESPONSE), never taken as the server's", async () => {
    // A wrapper that rebuilds the request and drops `redirect: 'manual'` (and so follows the 307 with the form).
    const following: typeof fetch = (input, init) =>
      fetch(input, { method: init?.method, headers: init?.headers, body: init?.body, signal: init?.signal ?? null });
    const source = clientCredentials({
      tokenEndpoint: `${server.url}/moved/token`,
      clientId: 'svc',
      clientSecret: 'the-secret',
      clientAuth: 'client_secret_post',
      allowInsecureRequests: true,
      fetch: following,
    });
    const err = await source.fetchToken({}).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(TokenwardenError);
    expect(err).toMatchObject({ code: 'ERR_INVALID_RESPONSE' });
    const text = JSON.stringify({ message: (err as Error).message, json: (err as TokenwardenError).toJSON() });
    expect(text).toContain(server.url); // where it went: the origin…
    expect(text).not.toMatch(/s3cr3t|the-secret|elsewhere/); // …and nothing of the path, query or form
    // With the global fetch (redirect: 'manual' honoured) the 307 is an error that names the redirect, unfollowed.
    const plain = clientCredentials({
      tokenEndpoint: `${server.url}/moved/token`,
      clientId: 'svc',
      clientSecret: 'the-secret',
      clientAuth: 'client_secret_post',
      allowInsecureRequests: true,
    });
    server.requests.length = 0;
    await expect(plain.fetchToken({})).rejects.toMatchObject({ code: 'ERR_HTTP_STATUS', status: 307 });
    expect(server.requests.map((r) => r.path)).toEqual(['/moved/token']);
  });
});

describe('a long client secret echoed back', () => {
  it('a 3–8 KB secret (every character percent-encoded on the wire) echoed by the server is in no form in the error: ERR_OAUTH, not an engine error quoting it', async () => {
    // In the body 8 KB; in a Basic header 3 KB (percent-encoded and in base64 it stays under Node's 16 KB headers).
    for (const [clientAuth, secret] of [
      ['client_secret_post', `${'!'.repeat(4096)}${'~'.repeat(4096)}`],
      ['client_secret_basic', `${'!'.repeat(1500)}${'~'.repeat(1500)}`],
    ] as const) {
      const err = (await clientCredentials({
        tokenEndpoint: `${server.url}/echo/token`,
        clientId: 'svc',
        clientSecret: secret,
        clientAuth,
        allowInsecureRequests: true,
      })
        .fetchToken({})
        .then(
          () => undefined,
          (e: unknown) => e,
        )) as TokenwardenError;
      expect(err).toMatchObject({ code: 'ERR_OAUTH', error: 'invalid_client' });
      const text = JSON.stringify({ message: err.message, json: err.toJSON(), stack: err.stack });
      const sent = server.requests.at(-1)!;
      for (const form of [secret, '%21%21%21%21', '!!!!!!!!', sent.headers.authorization?.slice(6, 40) ?? '!!!!']) {
        expect(text).not.toContain(form);
      }
      expect(text).not.toContain('Invalid regular expression');
    }
  });
});
