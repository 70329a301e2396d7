/**
 * Faults a real authorization server cannot produce on demand, from a local HTTP server. Each must
 * become a TokenwardenError with a stable code and without any secret or body in what a user sees.
 */
import { type AddressInfo, createServer as createNetServer } from 'node:net';
import { getEventListeners } from 'node:events';
import { inspect } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ManualClock } from '../src/clock.js';
import { TokenwardenError } from '../src/errors.js';
import { TokenManager, isTransient } from '../src/manager.js';
import { clientCredentials } from '../src/sources/client-credentials.js';
import { refreshToken } from '../src/sources/refresh-token.js';
import { tokenExchange } from '../src/sources/token-exchange.js';
import { UserTokens } from '../src/users/user-tokens.js';
import { type FaultServer, json, startFaultServer } from './support/fault-server.js';

const SECRET = 'client-secret-that-must-never-leak';
const LEAKED_TOKEN = 'access-token-value-that-must-not-leak';
let server: FaultServer;

beforeAll(async () => {
  server = await startFaultServer();
});
afterAll(() => server.close());

function source(extra: Record<string, unknown> = {}) {
  return clientCredentials({
    tokenEndpoint: `${server.url}/token`,
    clientId: 'svc',
    clientSecret: SECRET,
    allowInsecureRequests: true,
    timeout: '500ms',
    ...extra,
  });
}

/** The refresh token grant at the fault server, starting from `rt`. */
function refreshSource(rt: string) {
  return refreshToken({
    tokenEndpoint: `${server.url}/token`,
    clientId: 'app',
    clientSecret: SECRET,
    refreshToken: rt,
    allowInsecureRequests: true,
  });
}

async function failure(extra?: Record<string, unknown>): Promise<TokenwardenError> {
  const err = await source(extra)
    .fetchToken({})
    .then(
      () => {
        throw new Error('expected the token request to fail');
      },
      (e: unknown) => e,
    );
  expect(err).toBeInstanceOf(TokenwardenError);
  const e = err as TokenwardenError;
  const everything = [e.message, JSON.stringify(e), inspect(e, { depth: 10 }), String(e.stack)].join('\n');
  expect(everything).not.toContain(SECRET);
  expect(everything).not.toContain(LEAKED_TOKEN);
  return e;
}

describe('token endpoint faults', () => {
  it('a 500 HTML page → ERR_HTTP_STATUS with the status, without the page', async () => {
    server.handle((_req, res) => {
      res.writeHead(500, { 'content-type': 'text/html' });
      res.end(`<html><body>Internal error ${LEAKED_TOKEN}</body></html>`);
    });
    const e = await failure();
    expect(e).toMatchObject({ code: 'ERR_HTTP_STATUS', status: 500 });
  });

  it('200 with invalid JSON → ERR_INVALID_RESPONSE', async () => {
    server.handle((_req, res) => json(res, 200, `{"access_token": "${LEAKED_TOKEN}", `));
    expect(await failure()).toMatchObject({ code: 'ERR_INVALID_RESPONSE' });
  });

  it.each([
    ['access_token missing', { token_type: 'bearer', expires_in: 60 }],
    ['access_token not a string', { access_token: 42, token_type: 'bearer' }],
    ['expires_in negative', { access_token: LEAKED_TOKEN, token_type: 'bearer', expires_in: -5 }],
    ['expires_in a word', { access_token: LEAKED_TOKEN, token_type: 'bearer', expires_in: 'soon' }],
    ['a top-level array', [LEAKED_TOKEN]],
  ])('%s → ERR_INVALID_RESPONSE', async (_name, body) => {
    server.handle((_req, res) => json(res, 200, body));
    expect(await failure()).toMatchObject({ code: 'ERR_INVALID_RESPONSE' });
  });

  it('expires_in as a numeric string is accepted; a huge one is capped', async () => {
    server.handle((_req, res) => json(res, 200, { access_token: 'a', token_type: 'bearer', expires_in: '60' }));
    const t = await source().fetchToken({});
    expect((t.expiresAt as number) - t.issuedAt).toBe(60_000);
    server.handle((_req, res) => json(res, 200, { access_token: 'a', token_type: 'bearer', expires_in: 1e300 }));
    const huge = await source().fetchToken({});
    expect(Number.isFinite(huge.expiresAt)).toBe(true);
  });

  it('an unsupported token_type → ERR_UNSUPPORTED', async () => {
    server.handle((_req, res) => json(res, 200, { access_token: LEAKED_TOKEN, token_type: 'mac' }));
    expect(await failure()).toMatchObject({ code: 'ERR_UNSUPPORTED' });
  });

  it('a 10 MB body → ERR_RESPONSE_TOO_LARGE, without reading it all', async () => {
    server.handle((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      const chunk = 'x'.repeat(64 * 1024);
      let sent = 0;
      const write = (): void => {
        while (sent < 10 * 1024 * 1024) {
          sent += chunk.length;
          if (!res.write(chunk)) {
            res.once('drain', write);
            return;
          }
        }
        res.end();
      };
      write();
    });
    expect(await failure()).toMatchObject({ code: 'ERR_RESPONSE_TOO_LARGE' });
  });

  it('a connection reset → ERR_NETWORK', async () => {
    server.handle((req) => {
      req.socket.destroy();
    });
    expect(await failure()).toMatchObject({ code: 'ERR_NETWORK' });
  });

  it('a connection that cannot be made is said in words: a name that does not resolve, nothing listening, a blocked port', async () => {
    const at = async (tokenEndpoint: string): Promise<string> => {
      const e = await failure({ tokenEndpoint });
      expect(e.code).toBe('ERR_NETWORK');
      return e.message;
    };
    expect(await at('https://no-such-host.invalid/token')).toMatch(
      /failed \((ENOTFOUND|EAI_AGAIN)\): the host name (does not resolve|could not be resolved)/,
    );
    const closed = await new Promise<number>((resolve) => {
      const probe = createNetServer().listen(0, '127.0.0.1', () => {
        const { port } = probe.address() as AddressInfo;
        probe.close(() => resolve(port));
      });
    });
    expect(await at(`http://127.0.0.1:${closed}/token`)).toMatch(
      /failed \(ECONNREFUSED\): nothing listens at that address and port$/,
    );
    expect(await at('http://127.0.0.1:25/token')).toMatch(/failed: the port is one fetch refuses to use/);
  });

  it('a reset before any answer is sent again once for client credentials, never for a refresh token', async () => {
    let n = 0;
    server.handle((req, res) => {
      if (n++ === 0) {
        req.socket.destroy();
        return;
      }
      json(res, 200, { access_token: 'second-try', token_type: 'bearer', expires_in: 60 });
    });
    const before = server.requests.length;
    expect((await source().fetchToken({})).accessToken).toBe('second-try');
    expect(server.requests.length - before).toBe(2);

    n = 0;
    const refresh = refreshSource('single-use');
    const sent = server.requests.length;
    await expect(refresh.fetchToken({})).rejects.toMatchObject({ code: 'ERR_NETWORK' });
    expect(server.requests.length - sent).toBe(1); // the server may have spent it: no second spend
  });

  it('a lone surrogate (a JSON escape) in a rotated refresh token: coded errors, never a URIError; an unsendable refresh token is not kept', async () => {
    // The answer is refused for its access token; its refresh token could never be sent (UTF-8 has no form for
    // a lone surrogate), so it is not kept as the rotated one: the next refresh spends the one that was sent.
    let n = 0;
    server.handle((_req, res) => {
      res.writeHead(n++ === 0 ? 200 : 400, { 'content-type': 'application/json' });
      res.end(
        n === 1
          ? '{"access_token":"a\\ud800b","token_type":"bearer","expires_in":60,"refresh_token":"r\\ud800t"}'
          : '{"error":"invalid_grant","error_description":"echo r\\ud800t"}',
      );
    });
    const source = refreshSource('first-refresh-token');
    const sent = server.requests.length;
    await expect(source.fetchToken({})).rejects.toMatchObject({ code: 'ERR_INVALID_RESPONSE' });
    await expect(source.fetchToken({})).rejects.toMatchObject({ code: 'ERR_OAUTH', error: 'invalid_grant' });
    const spent = server.requests.slice(sent).map((r) => new URLSearchParams(r.body).get('refresh_token'));
    expect(spent).toEqual(['first-refresh-token', 'first-refresh-token']);
  });

  it('a response slower than the timeout → ERR_TIMEOUT', async () => {
    server.handle((_req, res) => {
      setTimeout(() => json(res, 200, { access_token: 'late', token_type: 'bearer' }), 2000);
    });
    expect(await failure()).toMatchObject({ code: 'ERR_TIMEOUT' });
  });

  it('an OAuth error body → ERR_OAUTH with error, error_description (truncated) and status', async () => {
    server.handle((_req, res) =>
      json(res, 400, { error: 'invalid_scope', error_description: `scope is not allowed ${'x'.repeat(10_000)}` }),
    );
    const e = await failure();
    expect(e).toMatchObject({ code: 'ERR_OAUTH', error: 'invalid_scope', status: 400 });
    expect(e.error_description?.length).toBeLessThan(300);
    expect(e.message.length).toBeLessThan(500);
  });

  it('429 with Retry-After → the delay is on the error, and the manager waits that long', async () => {
    server.handle((_req, res) => json(res, 429, { error: 'slow_down' }, { 'retry-after': '7' }));
    const e = await failure();
    expect(e).toMatchObject({ code: 'ERR_OAUTH', status: 429, retryAfterMs: 7000 });

    const manager = new TokenManager({ source: source() });
    await expect(manager.getToken()).rejects.toMatchObject({ status: 429 });
    const count = server.requests.length;
    await expect(manager.getToken()).rejects.toMatchObject({ code: 'ERR_RETRY_LATER' });
    expect(server.requests.length).toBe(count); // no request while Retry-After is in force
    await manager.close();
  });

  it('a caller AbortSignal → ERR_ABORTED', async () => {
    server.handle((_req, res) => {
      setTimeout(() => json(res, 200, { access_token: 'late', token_type: 'bearer' }), 400);
    });
    const controller = new AbortController();
    const pending = source({ timeout: '5s' }).fetchToken({ signal: controller.signal });
    setTimeout(() => controller.abort(), 50);
    await expect(pending).rejects.toMatchObject({ code: 'ERR_ABORTED' });
  });
});

describe('answers of authorization servers other than oidc-provider (RFC 6749 §5, RFC 8693 §2.2)', () => {
  const answer = (status: number, headers: Record<string, string>, body: string) =>
    server.handle((_req, res) => {
      res.writeHead(status, headers);
      res.end(body);
    });
  const JSON_TYPE = { 'content-type': 'application/json' };

  it.each([
    ['"3600abc"', '3600abc'],
    ['an empty string', ''],
    ['a boolean', true],
  ])('expires_in %s → ERR_INVALID_RESPONSE (a number, or a string holding only one)', async (_name, expiresIn) => {
    server.handle((_req, res) => json(res, 200, { access_token: 'a', token_type: 'bearer', expires_in: expiresIn }));
    expect(await failure()).toMatchObject({ code: 'ERR_INVALID_RESPONSE' });
  });

  it('expires_in fractional, a fractional string or null (= absent, as golang/oauth2 reads it)', async () => {
    const lifetime = async (expiresIn: unknown): Promise<number | undefined> => {
      server.handle((_req, res) => json(res, 200, { access_token: 'a', token_type: 'bearer', expires_in: expiresIn }));
      const t = await source().fetchToken({});
      return t.expiresAt === undefined ? undefined : t.expiresAt - t.issuedAt;
    };
    expect(await lifetime(0.5)).toBe(500);
    expect(await lifetime('3599.5')).toBe(3_599_500);
    expect(await lifetime(null)).toBeUndefined();
  });

  it('token_type in any case; absent → Bearer (LinkedIn, Slack; as golang/oauth2), but refused with DPoP', async () => {
    server.handle((_req, res) => json(res, 200, { access_token: 'a', token_type: 'BEARER', expires_in: 60 }));
    expect((await source().fetchToken({})).tokenType).toBe('Bearer');
    server.handle((_req, res) => json(res, 200, { access_token: 'a', expires_in: 60 }));
    expect((await source().fetchToken({})).tokenType).toBe('Bearer');
    server.handle((_req, res) => json(res, 200, { access_token: 'a', token_type: null, expires_in: 60 }));
    expect((await source().fetchToken({})).tokenType).toBe('Bearer');
    // With a DPoP proof sent, the token may be bound to the key: taking it for a bearer token would be a guess.
    const dpop = (await crypto.subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-256' }, true, [
      'sign',
      'verify',
    ])) as CryptoKeyPair;
    server.handle((_req, res) => json(res, 200, { access_token: LEAKED_TOKEN, expires_in: 60 }));
    expect(await failure({ dpop })).toMatchObject({ code: 'ERR_INVALID_RESPONSE' });
  });

  it('token_type N_A only from a token exchange (RFC 8693 §2.2.1), where it is kept as N_A', async () => {
    server.handle((_req, res) => json(res, 200, { access_token: LEAKED_TOKEN, token_type: 'N_A' }));
    expect(await failure()).toMatchObject({ code: 'ERR_UNSUPPORTED' });
    const exchange = tokenExchange({
      tokenEndpoint: `${server.url}/token`,
      clientId: 'svc',
      clientSecret: SECRET,
      subjectToken: 'subject-token',
      allowInsecureRequests: true,
    });
    server.handle((_req, res) =>
      json(res, 200, {
        access_token: 'an-id-token',
        token_type: 'N_A',
        issued_token_type: 'urn:ietf:params:oauth:token-type:id_token',
      }),
    );
    expect((await exchange.fetchToken({})).tokenType).toBe('N_A');
  });

  it('scope: absent → undefined (RFC 6749 §5.1: as requested), different → as granted, null → absent, an array of scope tokens (Twitch) → the same list, any other array → refused', async () => {
    const scope = async (body: Record<string, unknown>) => {
      server.handle((_req, res) => json(res, 200, { access_token: 'a', token_type: 'bearer', ...body }));
      return (await source({ scope: 'read write' }).fetchToken({})).scope;
    };
    expect(await scope({})).toBeUndefined();
    expect(await scope({ scope: 'read' })).toBe('read');
    expect(await scope({ scope: null })).toBeUndefined();
    expect(await scope({ scope: ['user:read:email', 'chat:read'] })).toBe('user:read:email chat:read');
    expect(await scope({ scope: [] })).toBe('');
    for (const bad of [
      ['read write'],
      ['read', 42],
      [''],
      ['"read"'],
      ['read\\'],
      [['read']],
      [null],
      { read: true },
      7,
    ]) {
      server.handle((_req, res) => json(res, 200, { access_token: LEAKED_TOKEN, token_type: 'bearer', scope: bad }));
      expect(await failure(), JSON.stringify(bad)).toMatchObject({ code: 'ERR_INVALID_RESPONSE' });
    }
  });

  it('JSON served as application/json; charset=utf-8, text/plain, without a content type, or after a BOM', async () => {
    const body = JSON.stringify({ access_token: 'a', token_type: 'bearer', expires_in: 60 });
    for (const [headers, text] of [
      [{ 'content-type': 'application/json; charset=utf-8' }, body],
      [{ 'content-type': 'text/plain' }, body],
      [{}, body],
      [JSON_TYPE, `\uFEFF${body}`],
    ] as const) {
      answer(200, headers, text);
      expect((await source().fetchToken({})).accessToken, JSON.stringify(headers)).toBe('a');
    }
  });

  it('a form-encoded answer (GitHub without Accept: application/json) is read; Accept: application/json is sent', async () => {
    const form = { 'content-type': 'application/x-www-form-urlencoded; charset=utf-8' };
    answer(200, form, 'access_token=gho_abc&token_type=bearer&scope=repo%2Cgist&expires_in=28800');
    const t = await source().fetchToken({});
    expect(t).toMatchObject({ accessToken: 'gho_abc', tokenType: 'Bearer', scope: 'repo,gist' });
    expect((t.expiresAt as number) - t.issuedAt).toBe(28_800_000);
    expect(server.requests.at(-1)?.headers.accept).toBe('application/json');
    answer(200, form, 'error=bad_verification_code&error_description=The+code+passed+is+incorrect+or+expired.');
    expect(await failure()).toMatchObject({
      code: 'ERR_OAUTH',
      error: 'bad_verification_code',
      error_description: 'The code passed is incorrect or expired.',
      status: 200,
    });
  });

  it('an error in a 200 answer (GitHub: bad_refresh_token) → ERR_OAUTH with status 200, not retried', async () => {
    server.handle((_req, res) =>
      json(res, 200, { error: 'bad_refresh_token', error_description: 'The refresh token passed is incorrect' }),
    );
    const e = await failure();
    expect(e).toMatchObject({ code: 'ERR_OAUTH', error: 'bad_refresh_token', status: 200 });
    expect(isTransient(e)).toBe(false);
  });

  it('a redirect is not followed, and the error names where it points (origin and path only, scrubbed)', async () => {
    const redirect = (status: number, location: string) =>
      server.handle((_req, res) => {
        res.writeHead(status, { location });
        res.end();
      });
    redirect(301, '/token/'); // Django's APPEND_SLASH
    let e = await failure();
    expect(e).toMatchObject({ code: 'ERR_HTTP_STATUS', status: 301 });
    expect(e.message).toContain(`redirected (301) to ${server.url}/token/, which is not followed`);
    const before = server.requests.length;
    redirect(307, `https://as.example/oauth/token?client_secret=${SECRET}&x=1#frag`);
    e = await failure();
    expect(e.message).toContain('redirected (307) to https://as.example/oauth/token,');
    expect(server.requests.length - before).toBe(1); // nothing sent to where it points
    redirect(308, `/t/${encodeURIComponent(SECRET)}/x`);
    e = await failure();
    expect(e.message).toContain(`redirected (308) to ${server.url}/t/[redacted]/x,`);
    for (const location of ['javascript:alert(1)', 'http://[bad', '']) {
      redirect(302, location);
      e = await failure();
      expect(e.message).toContain('unexpected HTTP status 302 without an OAuth error body');
    }
    for (const err of [e]) expect(inspect(err, { depth: 10 })).not.toContain(SECRET);
  });

  it("GitHub's bad_refresh_token is a dead refresh token, as invalid_grant: the fallback answers; UserTokens asks for a sign-in", async () => {
    server.handle((req, res, body) => {
      if (new URLSearchParams(body).get('grant_type') === 'client_credentials') {
        return json(res, 200, { access_token: 'from-fallback', token_type: 'bearer', expires_in: 60 });
      }
      json(res, 200, { error: 'bad_refresh_token', error_description: 'The refresh token passed is incorrect' });
    });
    const options = {
      tokenEndpoint: `${server.url}/token`,
      clientId: 'app',
      clientSecret: SECRET,
      allowInsecureRequests: true,
    };
    const rescued = await refreshToken({
      ...options,
      refreshToken: 'ghr_dead',
      fallback: clientCredentials(options),
    }).fetchToken({});
    expect(rescued.accessToken).toBe('from-fallback');
    const clock = new ManualClock();
    const users = new UserTokens({ issuer: server.url, ...options, clock });
    await users.save('octocat', {
      access_token: 'gho_old',
      token_type: 'bearer',
      expires_in: 1,
      refresh_token: 'ghr_dead',
    });
    await clock.advance(2_000);
    const before = server.requests.length;
    const err = await users.getAccessToken('octocat').catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'ERR_LOGIN_REQUIRED', error: 'bad_refresh_token', status: 200 });
    // The dead refresh token is forgotten: it is not tried again.
    await expect(users.getAccessToken('octocat')).rejects.toMatchObject({ code: 'ERR_LOGIN_REQUIRED' });
    expect(server.requests.length - before).toBe(1);
    await users.close();
  });

  it('error_uri (Entra ID, GitHub): kept when an absolute http(s) URL of RFC 6749 characters; otherwise dropped', async () => {
    const entra = 'https://login.microsoftonline.com/error?code=7000215';
    server.handle((_req, res) =>
      json(res, 401, { error: 'invalid_client', error_description: 'AADSTS7000215', error_uri: entra }),
    );
    const e = await failure();
    expect(e).toMatchObject({ code: 'ERR_OAUTH', error: 'invalid_client', error_uri: entra, status: 401 });
    expect(e.toJSON()).toMatchObject({ error_uri: entra });
    const github =
      'https://docs.github.com/apps/managing-oauth-apps/troubleshooting-oauth-app-access-token-request-errors/#bad-verification-code';
    server.handle((_req, res) => json(res, 200, { error: 'bad_refresh_token', error_uri: github }));
    expect(await failure()).toMatchObject({ error: 'bad_refresh_token', error_uri: github, status: 200 });
    // In a challenge (RFC 6750 §3 parameters on a 401 whose body says nothing).
    answer(401, { 'www-authenticate': `Bearer error="invalid_client", error_uri="${entra}"` }, '');
    expect(await failure()).toMatchObject({ error: 'invalid_client', error_uri: entra });

    for (const bad of [
      'javascript:alert(1)',
      'data:text/html,<b>x</b>',
      '/relative/page',
      'https://as.example/a b',
      'https://as.example/"quoted"',
      'https://as.example/back\\slash',
      'https://as.example/\u202e',
      `https://svc:${SECRET}@as.example/`,
      `https://as.example/?echo=${SECRET}`,
      `https://as.example/${'a'.repeat(300)}`,
      42,
      ['https://as.example/'],
    ]) {
      server.handle((_req, res) => json(res, 400, { error: 'invalid_grant', error_uri: bad }));
      const dropped = await failure();
      expect(dropped, JSON.stringify(bad)).toMatchObject({ code: 'ERR_OAUTH', error: 'invalid_grant' });
      expect(dropped.error_uri, JSON.stringify(bad)).toBeUndefined();
      expect(JSON.stringify(dropped.toJSON())).not.toContain(SECRET);
    }
  });

  it('an answer nested deeper than the stack (100 000 arrays) → ERR_INVALID_RESPONSE, not a network error', async () => {
    const deep = `${'['.repeat(100_000)}${']'.repeat(100_000)}`;
    answer(200, JSON_TYPE, `{"access_token":"${LEAKED_TOKEN}","token_type":"bearer","x":${deep}}`);
    expect(await failure()).toMatchObject({
      code: 'ERR_INVALID_RESPONSE',
      message: expect.stringMatching(/nested too deeply/),
    });
  });

  it('an OAuth error body served as text/plain or without a content type → ERR_OAUTH', async () => {
    const body = JSON.stringify({ error: 'invalid_grant', error_description: 'expired' });
    for (const headers of [{ 'content-type': 'text/plain;charset=UTF-8' }, {}] as Record<string, string>[]) {
      answer(400, headers, body);
      expect(await failure()).toMatchObject({
        code: 'ERR_OAUTH',
        error: 'invalid_grant',
        error_description: 'expired',
        status: 400,
      });
    }
  });

  it("401 invalid_client with WWW-Authenticate: Basic → the body's error and description are kept", async () => {
    answer(
      401,
      { ...JSON_TYPE, 'www-authenticate': 'Basic realm="token"' },
      JSON.stringify({ error: 'invalid_client', error_description: 'client authentication failed' }),
    );
    expect(await failure()).toMatchObject({
      code: 'ERR_OAUTH',
      error: 'invalid_client',
      error_description: 'client authentication failed',
      status: 401,
    });
  });

  it('a 4xx that is not JSON (a gateway page, a text/plain 429) → ERR_HTTP_STATUS with the status', async () => {
    answer(401, { 'content-type': 'text/html' }, `<html>${LEAKED_TOKEN}</html>`);
    expect(await failure()).toMatchObject({ code: 'ERR_HTTP_STATUS', status: 401 });
    answer(429, { 'content-type': 'text/plain', 'retry-after': '7' }, 'Too Many Requests');
    expect(await failure()).toMatchObject({ code: 'ERR_HTTP_STATUS', status: 429, retryAfterMs: 7000 });
  });

  it('503 with an OAuth error and Retry-After → ERR_OAUTH temporarily_unavailable, transient, with the delay', async () => {
    server.handle((_req, res) => json(res, 503, { error: 'temporarily_unavailable' }, { 'retry-after': '3' }));
    const e = await failure();
    expect(e).toMatchObject({ code: 'ERR_OAUTH', error: 'temporarily_unavailable', status: 503, retryAfterMs: 3000 });
    expect(isTransient(e)).toBe(true);
  });

  it('an empty 200 body → ERR_INVALID_RESPONSE', async () => {
    answer(200, JSON_TYPE, '');
    expect(await failure()).toMatchObject({ code: 'ERR_INVALID_RESPONSE' });
  });

  it('a refresh answer without refresh_token keeps the one spent (RFC 6749 §6); a new one replaces it', async () => {
    const spent: (string | null)[] = [];
    let rotate = false;
    server.handle((_req, res, body) => {
      spent.push(new URLSearchParams(body).get('refresh_token'));
      const n = spent.length;
      json(res, 200, {
        access_token: `at-${n}`,
        token_type: 'bearer',
        expires_in: 60,
        ...(rotate && { refresh_token: `rt-${n}` }),
      });
    });
    const manager = new TokenManager({
      source: refreshSource('rt-0'),
      refresh: { background: false },
    });
    expect((await manager.getToken()).refreshToken).toBe('rt-0');
    expect((await manager.refresh()).refreshToken).toBe('rt-0');
    rotate = true;
    expect((await manager.refresh()).refreshToken).toBe('rt-3');
    rotate = false;
    expect((await manager.refresh()).refreshToken).toBe('rt-3');
    expect(spent).toEqual(['rt-0', 'rt-0', 'rt-0', 'rt-3']);
    await manager.close();
  });
});

describe("a caller's signal that outlives its requests", () => {
  it('nothing of ours still listens on the signal a request ran with once it is answered, well or not (it would keep it, and the caller signal it derives from, in memory until the time limit)', async () => {
    const { signal } = new AbortController(); // a process-wide one, say
    const ran: AbortSignal[] = [];
    // A fetch that keeps the signal it was given and does not listen to it itself (undici's own listener goes
    // only when its request is garbage-collected): what listens then is ours.
    const recording = (url: string | URL | Request, init?: RequestInit): Promise<Response> => {
      if (init?.signal) ran.push(init.signal);
      return fetch(url, { ...init, signal: null });
    };
    let status = 200;
    server.handle((_req, res) => json(res, status, status === 200 ? { access_token: 'a', token_type: 'bearer' } : {}));
    for (const answer of [200, 500, 200]) {
      status = answer;
      await source({ fetch: recording })
        .fetchToken({ signal })
        .catch(() => undefined);
    }
    expect(ran).toHaveLength(3);
    expect(ran.map((s) => getEventListeners(s, 'abort').length)).toEqual([0, 0, 0]);
  });
});

describe('secrets stay out of what can be printed', () => {
  it('a source redacts its secret in inspect and JSON', () => {
    const s = source();
    expect(inspect(s, { depth: 10 })).not.toContain(SECRET);
    expect(JSON.stringify(s)).not.toContain(SECRET);
    expect(JSON.stringify(s)).toContain('[redacted]');
    const manager = new TokenManager({ source: s });
    expect(inspect(manager, { depth: 10 })).not.toContain(SECRET);
    void manager.close();
  });
});

describe('hostile discovery documents (issuer configured, the metadata served by a faulty server)', () => {
  const tokenOk = (res: Parameters<typeof json>[0]) =>
    json(res, 200, { access_token: 'a', token_type: 'bearer', expires_in: 60 });
  let n = 0;
  /** A client for an issuer of its own on the fault server (discovery is cached per issuer). */
  const discover = async (metadata: (issuer: string) => Parameters<typeof server.handle>[0]) => {
    const issuer = `${server.url}/issuer-${n++}`;
    server.handle(metadata(issuer));
    const err = await clientCredentials({
      issuer,
      clientId: 'svc',
      clientSecret: SECRET,
      allowInsecureRequests: true,
      timeout: '500ms',
    })
      .fetchToken({})
      .then(
        () => undefined,
        (e: unknown) => e as TokenwardenError,
      );
    expect(err).toBeInstanceOf(TokenwardenError);
    const everything = [err?.message, JSON.stringify(err), inspect(err, { depth: 10 })].join('\n');
    expect(everything).not.toContain(SECRET);
    expect(everything).not.toContain(LEAKED_TOKEN);
    return err as TokenwardenError;
  };
  const metadataThen =
    (doc: (issuer: string) => unknown) =>
    (issuer: string): Parameters<typeof server.handle>[0] =>
    (req, res) =>
      req.url?.includes('/.well-known/') ? json(res, 200, doc(issuer)) : tokenOk(res);
  const raw =
    (status: number, type: string, body: (issuer: string) => string) =>
    (issuer: string): Parameters<typeof server.handle>[0] =>
    (_req, res) => {
      res.writeHead(status, { 'content-type': type });
      res.end(body(issuer));
    };

  it('each is a coded error, never a token request to a place the metadata made up, never a crash', async () => {
    const cases: [string, (issuer: string) => Parameters<typeof server.handle>[0], string][] = [
      [
        'another issuer (mix-up)',
        metadataThen((i) => ({ issuer: 'https://as.evil.example', token_endpoint: `${i}/token` })),
        'ERR_DISCOVERY',
      ],
      [
        'the issuer with a trailing slash',
        metadataThen((i) => ({ issuer: `${i}/`, token_endpoint: `${i}/token` })),
        'ERR_DISCOVERY',
      ],
      ['no token_endpoint', metadataThen((i) => ({ issuer: i })), 'ERR_DISCOVERY'],
      ['token_endpoint a number', metadataThen((i) => ({ issuer: i, token_endpoint: 5 })), 'ERR_DISCOVERY'],
      ['token_endpoint relative', metadataThen((i) => ({ issuer: i, token_endpoint: '/token' })), 'ERR_DISCOVERY'],
      [
        'token_endpoint javascript:',
        metadataThen((i) => ({ issuer: i, token_endpoint: 'javascript:alert(1)' })),
        'ERR_INSECURE_ISSUER',
      ],
      [
        'token_endpoint file:',
        metadataThen((i) => ({ issuer: i, token_endpoint: 'file:///etc/passwd' })),
        'ERR_INSECURE_ISSUER',
      ],
      ['an array', metadataThen(() => [1, 2]), 'ERR_INVALID_RESPONSE'],
      ['null', raw(200, 'application/json', () => 'null'), 'ERR_INVALID_RESPONSE'],
      ['truncated JSON', raw(200, 'application/json', () => '{"issuer": '), 'ERR_INVALID_RESPONSE'],
      ['an HTML page with 200', raw(200, 'text/html', () => `<html>${LEAKED_TOKEN}</html>`), 'ERR_INVALID_RESPONSE'],
      ['404', raw(404, 'application/json', () => '{"error":"not_found"}'), 'ERR_HTTP_STATUS'],
      ['a 500 page', raw(500, 'text/html', () => `<b>${LEAKED_TOKEN}</b>`), 'ERR_HTTP_STATUS'],
      [
        'a redirect elsewhere (not followed)',
        (_i) => (_req, res) => {
          res.writeHead(302, { location: 'http://127.0.0.1:1/x' });
          res.end();
        },
        'ERR_HTTP_STATUS',
      ],
      [
        '5 MB',
        raw(200, 'application/json', (i) =>
          JSON.stringify({ issuer: i, token_endpoint: `${i}/token`, x: 'a'.repeat(5_000_000) }),
        ),
        'ERR_RESPONSE_TOO_LARGE',
      ],
      [
        'a body that never ends',
        (_i) => (_req, res) => {
          res.writeHead(200, { 'content-type': 'application/json' });
          res.write('{');
        },
        'ERR_TIMEOUT',
      ],
      [
        'a connection reset',
        (_i) => (req) => {
          req.socket.destroy();
        },
        'ERR_NETWORK',
      ],
    ];
    // Metadata nested 100 000 deep beside valid members is read (V8 parses it) and the junk ignored.
    const deep = `${'['.repeat(100_000)}${']'.repeat(100_000)}`;
    const issuer = `${server.url}/issuer-${n++}`;
    server.handle((req, res) => {
      if (!req.url?.includes('/.well-known/')) return tokenOk(res);
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(`{"issuer":"${issuer}","token_endpoint":"${issuer}/token","x":${deep}}`);
    });
    const source = clientCredentials({ issuer, clientId: 'svc', clientSecret: SECRET, allowInsecureRequests: true });
    expect((await source.fetchToken({})).accessToken).toBe('a');

    for (const [name, metadata, code] of cases) {
      const tokenRequests = server.requests.filter((r) => r.path.endsWith('/token')).length;
      const err = await discover(metadata);
      expect(err.code, name).toBe(code);
      if (code !== 'ERR_DISCOVERY' || !name.startsWith('token_endpoint')) {
        // Nothing was sent to a token endpoint the metadata did not validly name.
        expect(server.requests.filter((r) => r.path.endsWith('/token')).length, name).toBe(tokenRequests);
      }
    }
  });
});
