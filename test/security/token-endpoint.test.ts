/**
 * Hostile token-endpoint answers. An authorization server that echoes the credentials it received — in its
 * error description, its error code, WWW-Authenticate, a content type, field names, a token type; raw,
 * form-encoded, percent-encoded in either case, JSON-escaped, Basic-encoded — must not get any of them into
 * what a user can see: the error's message, fields, JSON, `util.inspect` (causes included), or a manager's
 * events. And tokens outside the RFC 6749 character set are refused without being printed.
 */
import { inspect } from 'node:util';
import { exportPKCS8, generateKeyPair } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TokenwardenError } from '../../src/errors.js';
import { TokenManager } from '../../src/manager.js';
import { clientCredentials } from '../../src/sources/client-credentials.js';
import { OAuthClient } from '../../src/sources/client.js';
import { refreshToken } from '../../src/sources/refresh-token.js';
import type { FetchLike } from '../../src/http/transport.js';
import { tokenFromResponse } from '../../src/token.js';
import { UserTokens } from '../../src/users/index.js';
import { type TestAuthorizationServer, startAuthorizationServer } from '../support/authorization-server.js';
import { syntheticResponse } from '../users/helpers.js';
import { type FaultServer, json, startFaultServer } from '../support/fault-server.js';
import {
  CLIENT_ID,
  CLIENT_SECRET,
  ECHO_MODES,
  type EchoMode,
  REFRESH_TOKEN,
  credentialSenders,
  leaksIn,
  sentCredentials as sentTo,
  startEchoServer,
  renderings,
} from './support.js';

let server: FaultServer;
let mode: EchoMode = 'description';
let pem: string;

beforeAll(async () => {
  server = await startEchoServer(() => mode);
  const { privateKey } = await generateKeyPair('RS256', { extractable: true });
  pem = await exportPKCS8(privateKey);
});
afterAll(() => server.close());

const common = () => ({
  tokenEndpoint: `${server.url}/token`,
  clientId: CLIENT_ID,
  allowInsecureRequests: true,
  timeout: '2s' as const,
});

/** Each way the client sends a credential: a grant × a client authentication method. */
const senders = credentialSenders(
  () => server,
  () => pem,
);
const sentCredentials = () => sentTo(server);

async function failure(send: () => Promise<unknown>): Promise<TokenwardenError> {
  const outcome = await send().then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(outcome).toBeInstanceOf(TokenwardenError);
  return outcome as TokenwardenError;
}

describe('an authorization server echoing the credentials it received', () => {
  for (const [name, make] of Object.entries(senders)) {
    it(`${name}: no credential in any form in any rendering of the error, for every kind of echo`, async () => {
      for (const m of ECHO_MODES) {
        mode = m;
        server.requests.length = 0;
        const err = await failure(() => make().fetchToken({}));
        expect(err.code, m).toMatch(/^ERR_(OAUTH|HTTP_STATUS|INVALID_RESPONSE|UNSUPPORTED)$/);
        expect(leaksIn(renderings(err), sentCredentials()), `${name}, echo: ${m}`).toEqual([]);
      }
    });
  }

  it('the scrubbed error keeps what is useful: the OAuth error code, the status, the rest of the description', async () => {
    mode = 'description-decoded';
    const err = await failure(() => senders['refresh_token, client_secret_basic']!().fetchToken({}));
    expect(err).toMatchObject({ code: 'ERR_OAUTH', error: 'invalid_grant', status: 400 });
    expect(err.error_description).toContain('you sent');
    expect(err.error_description).toContain('[redacted]');
  });

  it("a manager's refreshFailed events hold no credential", async () => {
    const events: unknown[] = [];
    for (const m of ECHO_MODES) {
      mode = m;
      const manager = new TokenManager({
        source: refreshToken({ ...common(), clientSecret: CLIENT_SECRET, refreshToken: REFRESH_TOKEN }),
        refresh: { background: false },
      });
      manager.on('refreshFailed', (e) => events.push(e));
      const err = await failure(() => manager.getToken());
      expect(leaksIn(renderings(err), sentCredentials()), m).toEqual([]);
      await manager.close();
    }
    expect(events.length).toBe(ECHO_MODES.length);
    const text = events.map((e) => `${inspect(e, { depth: 10, showHidden: true })}\n${JSON.stringify(e)}`).join('\n');
    expect(leaksIn(text, sentCredentials())).toEqual([]);
  });

  it('a fetch that fails quoting the request it was given (a proxy library, say) does not leak it either', async () => {
    const quoting = async (_input: unknown, init?: RequestInit): Promise<Response> => {
      const headers = JSON.stringify(Object.fromEntries(new Headers(init?.headers)));
      throw Object.assign(new Error(`proxy refused ${String(init?.body)} with ${headers}`), {
        code: 'EPROXY',
        config: {
          data: String(init?.body),
          headers: { Authorization: new Headers(init?.headers).get('authorization') },
        },
      });
    };
    const sources = {
      client_secret_basic: clientCredentials({ ...common(), clientSecret: CLIENT_SECRET, fetch: quoting }),
      client_secret_post: clientCredentials({
        ...common(),
        clientSecret: CLIENT_SECRET,
        clientAuth: 'client_secret_post',
        fetch: quoting,
      }),
      'refresh token': refreshToken({
        ...common(),
        clientSecret: CLIENT_SECRET,
        refreshToken: REFRESH_TOKEN,
        fetch: quoting,
      }),
    };
    for (const [name, source] of Object.entries(sources)) {
      const err = await failure(() => source.fetchToken({}));
      expect(err.code).toBe('ERR_NETWORK');
      expect(renderings(err)).toContain('[redacted]'); // the quoted request was there, scrubbed
      expect(leaksIn(renderings(err), [CLIENT_SECRET, REFRESH_TOKEN]), name).toEqual([]);
    }
  });

  it('an echo in an error read beyond RFC 6749 §5.2 (a 200, form-encoded, text/plain) is scrubbed as well', async () => {
    const answers: [number, string, (text: string) => string][] = [
      [200, 'application/json', (text) => JSON.stringify({ error: 'invalid_grant', error_description: text })],
      [
        200,
        'application/x-www-form-urlencoded',
        (text) => new URLSearchParams({ error: 'invalid_grant', error_description: text }).toString(),
      ],
      [400, 'text/plain', (text) => JSON.stringify({ error: 'invalid_grant', error_description: text })],
    ];
    for (const [status, type, body] of answers) {
      const echoing = await startFaultServer((req, res, sent) => {
        res.writeHead(status, { 'content-type': type });
        res.end(body(`you sent ${sent} with ${req.headers.authorization}`));
      });
      const err = await failure(() =>
        refreshToken({
          ...common(),
          tokenEndpoint: `${echoing.url}/token`,
          clientSecret: CLIENT_SECRET,
          refreshToken: REFRESH_TOKEN,
        }).fetchToken({}),
      );
      const authorization = echoing.requests[0]?.headers.authorization?.replace(/^\S+\s+/, '') ?? '';
      await echoing.close();
      expect(err, `${status} ${type}`).toMatchObject({ code: 'ERR_OAUTH', error: 'invalid_grant', status });
      expect(err.error_description).toContain('[redacted]');
      expect(leaksIn(renderings(err), [CLIENT_SECRET, REFRESH_TOKEN, authorization]), `${status} ${type}`).toEqual([]);
    }
  });

  it('revocation (at the configured revocationEndpoint): the revoked token is not echoed back either', async () => {
    const client = new OAuthClient({
      ...common(),
      clientSecret: CLIENT_SECRET,
      revocationEndpoint: `${server.url}/revoke`,
    });
    for (const m of ECHO_MODES.filter((x) => x !== 'field-names' && x !== 'token-type')) {
      mode = m;
      server.requests.length = 0;
      const err = await failure(() => client.revoke(REFRESH_TOKEN, 'refresh_token'));
      expect(server.requests[0]?.path).toBe('/revoke');
      expect(leaksIn(renderings(err), sentCredentials()), m).toEqual([]);
    }
  });
});

describe('tokens outside the RFC 6749 / RFC 6750 character set', () => {
  let plain: FaultServer;
  let answer: Record<string, unknown> = {};
  beforeAll(async () => {
    plain = await startFaultServer((_req, res) => json(res, 200, answer));
  });
  afterAll(() => plain.close());

  const hostile: [string, Record<string, unknown>][] = [
    ['an access token with a terminal escape', { access_token: 'tok\u001b[2Jen' }],
    ['an access token with CR LF (header injection)', { access_token: 'tok\r\nX-Evil: 1' }],
    ['an access token with a space', { access_token: 'tok en' }],
    ['an access token with a quote', { access_token: 'tok"en' }],
    ['an access token with a backslash', { access_token: 'tok\\en' }],
    ['an access token with non-ASCII', { access_token: 'tokén' }],
    ['an access token with a bidi override', { access_token: 'tok\u202een' }],
    ['an access token with NUL', { access_token: 'tok\u0000en' }],
    ['a refresh token with a newline', { access_token: 'fine-access-token-1f2e', refresh_token: 'rt\nrt' }],
    ['an ID token with an escape', { access_token: 'fine-access-token-1f2e', id_token: 'a.b\u001b]0;pwn\u0007.c' }],
    ['a scope with a control character', { access_token: 'fine-access-token-1f2e', scope: 'read\u001b[31m' }],
  ];

  for (const [what, fields] of hostile) {
    it(`${what} is ERR_INVALID_RESPONSE, and the token is not in the error`, async () => {
      answer = { token_type: 'Bearer', expires_in: 60, ...fields };
      const err = await failure(() =>
        clientCredentials({
          tokenEndpoint: `${plain.url}/token`,
          clientId: 'c',
          clientSecret: 's',
          allowInsecureRequests: true,
        }).fetchToken({}),
      );
      expect(err.code).toBe('ERR_INVALID_RESPONSE');
      const shown = renderings(err);
      for (const value of Object.values(fields)) expect(shown).not.toContain(value);
      // The same parser serves UserTokens.save (a login response from any library).
      expect(() => tokenFromResponse({ token_type: 'bearer', ...fields }, { issuedAt: 0 })).toThrow(
        expect.objectContaining({ code: 'ERR_INVALID_RESPONSE' }),
      );
    });
  }

  it('a token type outside RFC 6749 A.13 is refused by the parser', () => {
    for (const tokenType of ['Bearer\r\n', 'Bear er', 'x\u001b[0m']) {
      expect(() =>
        tokenFromResponse({ access_token: 'fine-access-token-1f2e', token_type: tokenType }, { issuedAt: 0 }),
      ).toThrow(expect.objectContaining({ code: 'ERR_INVALID_RESPONSE' }));
    }
  });

  it('real-world token shapes are accepted: JWTs, b64tokens with padding, Salesforce-style "!", URN token types', () => {
    for (const accessToken of [
      'eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxIn0.sig-_',
      'abc+/def==',
      '00Dxx0000001gPL!AR8AQJXg5o.39AsX',
      'gho_16C7e42F292c6912E7710c838347Ae178B4a',
    ]) {
      expect(tokenFromResponse({ access_token: accessToken, token_type: 'bearer' }, { issuedAt: 0 }).accessToken).toBe(
        accessToken,
      );
    }
    expect(tokenFromResponse({ access_token: 'x', token_type: 'N_A' }, { issuedAt: 0 }).tokenType).toBe('N_A');
    expect(
      tokenFromResponse({ access_token: 'x', token_type: 'urn:ietf:params:oauth:token-type:jwt' }, { issuedAt: 0 })
        .tokenType,
    ).toBe('urn:ietf:params:oauth:token-type:jwt');
  });
});

describe('a UserInfo endpoint echoing the access token it was sent', () => {
  let as: TestAuthorizationServer;
  beforeAll(async () => {
    as = await startAuthorizationServer();
  });
  afterAll(() => as?.close());

  it('UserTokens.getClaims({ userinfo: true }): the bearer token is not in any rendering of the error', async () => {
    // The real server for discovery and everything else; its UserInfo answer replaced by an echo of the request.
    const echoing: FetchLike = async (input, init) => {
      const url = typeof input === 'string' ? input : input instanceof URL ? input.href : input.url;
      if (!url.includes('/me')) return fetch(input, init);
      const authorization = new Headers(init?.headers).get('authorization') ?? '';
      const quoted = authorization.replace(/["\\]/g, '\\$&');
      return new Response(JSON.stringify({ error: 'invalid_token', error_description: `you sent ${authorization}` }), {
        status: 401,
        headers: {
          'content-type': 'application/json',
          'www-authenticate': `Bearer error="invalid_token", error_description="you sent ${quoted}"`,
        },
      });
    };
    const users = new UserTokens({
      issuer: as.issuer,
      clientId: as.clients.app.clientId,
      clientSecret: as.clients.app.clientSecret,
      allowInsecureRequests: true,
      fetch: echoing,
    });
    const login = await syntheticResponse(as, 'alice');
    await users.save('alice', login);
    const err = await failure(() => users.getClaims('alice', { userinfo: true }));
    expect(err.code).toBe('ERR_OAUTH');
    expect(leaksIn(renderings(err), [login['access_token'] as string, as.clients.app.clientSecret])).toEqual([]);
    await users.close();
  });
});
