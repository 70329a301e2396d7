/**
 * 1 500 token endpoint answers made at random (a fixed seed: a failure names its case and reproduces) from
 * hostile parts — each member of a token response given a value of another type, out of range, holding
 * control characters, a lone surrogate, HTML, the client's own secret or its Basic credential; every status an
 * authorization server sends; JSON under five content types; truncated bodies; challenges and `Retry-After`
 * values that make no sense — sent to every grant. Whatever comes back, the promise is: a token, or a
 * `TokenwardenError` with a code, and no credential in anything a user can see.
 */
import { inspect } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TokenwardenError } from '../../src/errors.js';
import { clientCredentials } from '../../src/sources/client-credentials.js';
import { refreshToken } from '../../src/sources/refresh-token.js';
import { tokenExchange } from '../../src/sources/token-exchange.js';
import { type FaultServer, startFaultServer } from '../support/fault-server.js';
import { seeded } from '../support/seeded.js';
import { CLIENT_ID, CLIENT_SECRET, REFRESH_TOKEN, SUBJECT_TOKEN, leaksIn } from './support.js';

const CASES = 1500;
let server: FaultServer;
let answer: { status: number; headers: Record<string, string>; body: string };

beforeAll(async () => {
  server = await startFaultServer((_req, res) => {
    res.writeHead(answer.status, answer.headers);
    res.end(answer.body);
  });
});
afterAll(() => server.close());

const basic = `Basic ${Buffer.from(`${CLIENT_ID}:${CLIENT_SECRET}`).toString('base64')}`;
const VALUES: unknown[] = [
  null,
  true,
  false,
  0,
  -1,
  1e308,
  -1e308,
  0.5,
  '',
  ' ',
  'a b',
  '\u0000',
  '\u001b[2J',
  '\r\nSet-Cookie: x=1',
  '\ud800',
  '\udc00x',
  'é',
  '😀',
  '"',
  '\\',
  '<script>alert(1)</script>',
  'x'.repeat(5000),
  [],
  ['read'],
  [1],
  {},
  { nested: { deeper: [1, 2, 3] } },
  '3600',
  '1e3',
  '0x10',
  'NaN',
  'Infinity',
  '-5',
  CLIENT_SECRET,
  REFRESH_TOKEN,
  basic,
  `echo ${CLIENT_SECRET}`,
];
const FIELDS = [
  'access_token',
  'token_type',
  'expires_in',
  'refresh_token',
  'scope',
  'id_token',
  'issued_token_type',
  'error',
  'error_description',
  'error_uri',
  'refresh_token_expires_in',
];
const STATUSES = [200, 200, 200, 201, 204, 301, 400, 401, 403, 404, 429, 500, 502, 503];
const TYPES = [
  'application/json',
  'application/json; charset=utf-8',
  'text/plain',
  'application/x-www-form-urlencoded',
  'text/html',
];
const CHALLENGES = [
  'Bearer error="invalid_token"',
  `Basic realm="${CLIENT_SECRET}"`,
  'Bearer error=',
  'DPoP error="use_dpop_nonce"',
  'Bearer ,,,,',
  `Bearer error="invalid_client", error_description="${basic}"`,
];
const RETRY_AFTER = ['1', '-1', 'abc', '99999999999', 'Wed, 21 Oct 2015 07:28:00 GMT', ''];

const SOURCES = [
  () =>
    clientCredentials({
      tokenEndpoint: `${server.url}/token`,
      clientId: CLIENT_ID,
      clientSecret: CLIENT_SECRET,
      allowInsecureRequests: true,
      timeout: '2s',
    }),
  () =>
    refreshToken({
      tokenEndpoint: `${server.url}/token`,
      clientId: CLIENT_ID,
      clientSecret: CLIENT_SECRET,
      clientAuth: 'client_secret_post',
      refreshToken: REFRESH_TOKEN,
      allowInsecureRequests: true,
      timeout: '2s',
    }),
  () =>
    tokenExchange({
      tokenEndpoint: `${server.url}/token`,
      clientId: CLIENT_ID,
      clientSecret: CLIENT_SECRET,
      subjectToken: SUBJECT_TOKEN,
      allowInsecureRequests: true,
      timeout: '2s',
    }),
];

describe('token endpoint answers made at random from hostile parts', () => {
  it(`${CASES} answers to every grant: a token or a coded TokenwardenError, never a credential in what a user sees`, async () => {
    const pick = seeded(20261130);
    const choose = <T>(list: readonly T[]): T => list[pick(list.length)] as T;
    const problems: string[] = [];
    const outcomes = new Map<string, number>();
    for (let n = 0; n < CASES; n++) {
      const fields: Record<string, unknown> = { access_token: 'at-fuzz', token_type: 'bearer' };
      for (let k = 1 + pick(3); k > 0; k--) fields[choose(FIELDS)] = choose(VALUES);
      if (pick(5) === 0) delete fields['access_token'];
      const type = choose(TYPES);
      let body = type.includes('form')
        ? new URLSearchParams(Object.entries(fields).map(([name, value]) => [name, String(value)])).toString()
        : JSON.stringify(fields);
      if (pick(10) === 0) body = body.slice(0, pick(body.length));
      const headers: Record<string, string> = { 'content-type': type };
      if (pick(4) === 0) {
        headers['www-authenticate'] = choose(CHALLENGES);
        headers['retry-after'] = choose(RETRY_AFTER);
      }
      answer = { status: choose(STATUSES), headers, body };
      const which = pick(SOURCES.length);
      const described = `case ${n}: source ${which}, ${answer.status} ${type} ${body.slice(0, 120)}`;
      try {
        const token = await SOURCES[which]!().fetchToken({});
        outcomes.set('token', (outcomes.get('token') ?? 0) + 1);
        if (leaksIn(token.accessToken, [CLIENT_SECRET]).length > 0) problems.push(`secret as a token: ${described}`);
      } catch (err) {
        if (!(err instanceof TokenwardenError) || typeof err.code !== 'string') {
          problems.push(`not a coded TokenwardenError (${String(err)}): ${described}`);
          continue;
        }
        outcomes.set(err.code, (outcomes.get(err.code) ?? 0) + 1);
        const seen = [err.message, JSON.stringify(err), inspect(err, { depth: 10 }), String(err.stack)].join('\n');
        // What this client sent (a string it never sent is just text, whatever it looks like).
        const sent = [CLIENT_SECRET, ...[[], [REFRESH_TOKEN], [SUBJECT_TOKEN]][which]!];
        const leaks = leaksIn(seen, sent);
        if (leaks.length > 0) problems.push(`${err.code} shows ${leaks.length} form(s) of a credential: ${described}`);
      }
    }
    expect(problems).toEqual([]);
    // The cases reach every kind of outcome: tokens, OAuth errors, bad answers, HTTP statuses.
    for (const code of ['token', 'ERR_OAUTH', 'ERR_INVALID_RESPONSE', 'ERR_HTTP_STATUS']) {
      expect(outcomes.get(code) ?? 0, code).toBeGreaterThan(20);
    }
  }, 120_000);
});
