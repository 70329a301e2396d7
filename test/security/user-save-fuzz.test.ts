/**
 * 1 500 login responses made at random (a fixed seed: a failure names its case and reproduces) from hostile
 * parts, given to `UserTokens.save()` — the raw JSON an application hands over from whatever library did the
 * login. The promise: the login is filed and reads back (here and from another instance), or a
 * `TokenwardenError` with a code and nothing changes — the subject's previous login stays exactly as stored —
 * and no credential shows in the error.
 */
import { SignJWT } from 'jose';
import { afterAll, describe, expect, it } from 'vitest';
import { TokenwardenError } from '../../src/errors.js';
import { MemoryStore } from '../../src/stores/memory.js';
import { UserTokens } from '../../src/users/index.js';
import { seeded } from '../support/seeded.js';
import { CLIENT_SECRET, REFRESH_TOKEN, leaksIn, renderings } from './support.js';

const CASES = 1500;
const ISSUER = 'https://login.example.test';
const CLIENT_ID = 'web';
const SUBJECT = 'victim';
const store = new MemoryStore();
/** No discovery: a refresh would go to this closed port (none is asked for: save() sends nothing). */
const options = {
  issuer: ISSUER,
  tokenEndpoint: 'http://127.0.0.1:9/token',
  clientId: CLIENT_ID,
  clientSecret: CLIENT_SECRET,
  allowInsecureRequests: true,
  store,
};
const users = new UserTokens(options);
afterAll(async () => {
  await users.close();
  await store.close();
});

/** An HS256 ID token (signed with the client secret, as OpenID Connect allows) with `claims` over good ones. */
function idToken(claims: Record<string, unknown>): Promise<string> {
  const now = Math.floor(Date.now() / 1000);
  return new SignJWT({ iss: ISSUER, aud: CLIENT_ID, sub: SUBJECT, iat: now, exp: now + 60, ...claims })
    .setProtectedHeader({ alg: 'HS256' })
    .sign(new TextEncoder().encode(CLIENT_SECRET));
}

const VALUES: unknown[] = [
  null,
  true,
  0,
  -1,
  1e308,
  0.5,
  '',
  ' ',
  'a b',
  '\u0000',
  '\r\nSet-Cookie: x=1',
  '\ud800',
  'é😀',
  '"\\',
  '<script>alert(1)</script>',
  'x'.repeat(20_000),
  [],
  ['read'],
  {},
  { nested: { deeper: [1, 2, 3] } },
  '3600',
  '-5',
  'NaN',
  '__proto__',
  CLIENT_SECRET,
  REFRESH_TOKEN,
];
const FIELDS = ['access_token', 'token_type', 'expires_in', 'refresh_token', 'scope', 'id_token'];
const FIELDS_EXTRA = ['refresh_expires_in', 'refresh_token_expires_in', '__proto__', 'constructor', 'x-extra'];

describe('UserTokens.save() with login responses made at random from hostile parts', () => {
  it(`${CASES} responses: filed and read back, or a coded TokenwardenError with the previous login untouched`, async () => {
    const pick = seeded(20261201);
    const choose = <T>(list: readonly T[]): T => list[pick(list.length)] as T;
    const ID_TOKENS = [
      await idToken({}),
      await idToken({ sub: 'someone-else' }),
      await idToken({ aud: 'another-client' }),
      await idToken({ iss: 'https://evil.example.test' }),
      await idToken({ sub: 5 }),
      `${(await idToken({})).slice(0, -3)}AAA`, // the signature broken
      'a.b.c',
    ];
    const key = users.keyFor(SUBJECT);
    const problems: string[] = [];
    const outcomes = new Map<string, number>();
    await users.save(SUBJECT, {
      access_token: 'at-first',
      token_type: 'Bearer',
      expires_in: 3600,
      refresh_token: 'rt',
    });
    for (let n = 0; n < CASES; n++) {
      const response: Record<string, unknown> = { access_token: `at-${n}`, token_type: 'Bearer', expires_in: 3600 };
      for (let k = 1 + pick(3); k > 0; k--) {
        const field = pick(4) === 0 ? choose(FIELDS_EXTRA) : choose(FIELDS);
        response[field] = field === 'id_token' && pick(2) === 0 ? choose(ID_TOKENS) : choose(VALUES);
      }
      if (pick(8) === 0) delete response[choose(FIELDS)];
      const described = `case ${n}: ${JSON.stringify(response).slice(0, 200)}`;
      const before = (await store.get(key))?.value;
      try {
        const token = await users.save(SUBJECT, response);
        outcomes.set('saved', (outcomes.get('saved') ?? 0) + 1);
        if (typeof token.accessToken !== 'string' || token.accessToken === '') problems.push(`no token: ${described}`);
        // What was filed reads back, here and from an instance that never saw it.
        const other = new UserTokens(options);
        const listed = await other.listAccessTokens(SUBJECT);
        const expiresAt = token.expiresAt ?? Infinity;
        if (expiresAt > Date.now() && !listed.some((e) => e.token.accessToken === token.accessToken)) {
          problems.push(`filed but not read back: ${described}`);
        }
        await other.getIdToken(SUBJECT);
        await other.close();
      } catch (err) {
        if (!(err instanceof TokenwardenError) || typeof err.code !== 'string') {
          problems.push(`not a coded TokenwardenError (${String(err).slice(0, 100)}): ${described}`);
          continue;
        }
        outcomes.set(err.code, (outcomes.get(err.code) ?? 0) + 1);
        if ((await store.get(key))?.value !== before) problems.push(`${err.code} changed the record: ${described}`);
        if (leaksIn(renderings(err), [CLIENT_SECRET, REFRESH_TOKEN]).length > 0) {
          problems.push(`${err.code} shows a credential: ${described}`);
        }
      }
    }
    expect(problems).toEqual([]);
    // The cases reach every kind of outcome: filed logins, refused responses, refused ID tokens.
    for (const code of ['saved', 'ERR_INVALID_RESPONSE', 'ERR_ID_TOKEN_INVALID']) {
      expect(outcomes.get(code) ?? 0, `${code} ${JSON.stringify([...outcomes])}`).toBeGreaterThan(20);
    }
  }, 120_000);
});
