import { SignJWT } from 'jose';
import { describe, expect, it } from 'vitest';
import {
  MAX_LIFETIME_MS,
  parseStoredEntry,
  parseStoredToken,
  refreshExpiry,
  serializeStoredToken,
  serializeToken,
  tokenFromResponse,
} from '../src/token.js';

const key = new TextEncoder().encode('0123456789abcdef0123456789abcdef');
const jwt = (claims: Record<string, number>) => new SignJWT(claims).setProtectedHeader({ alg: 'HS256' }).sign(key);
const T0 = Date.parse('2030-01-01T00:00:00Z');

describe('tokenFromResponse', () => {
  it('takes the lifetime from expires_in, relative to when the request was sent', () => {
    const t = tokenFromResponse({ access_token: 'opaque', token_type: 'bearer', expires_in: 3600 }, { issuedAt: T0 });
    expect(t.expiresAt).toBe(T0 + 3_600_000);
    expect(t.tokenType).toBe('Bearer');
  });

  it('tightens expires_in to the JWT exp when they agree within 2 s (exp is whole seconds)', async () => {
    const exp = (T0 + 3_600_000 - 700) / 1000;
    const token = await jwt({ exp: Math.floor(exp) });
    const t = tokenFromResponse({ access_token: token, token_type: 'Bearer', expires_in: 3600 }, { issuedAt: T0 });
    expect(t.expiresAt).toBe(Math.floor(exp) * 1000);
  });

  it('ignores a JWT exp that disagrees with expires_in (clock skew between us and the server)', async () => {
    const token = await jwt({ exp: (T0 - 300_000) / 1000 + 3600, iat: (T0 - 300_000) / 1000 });
    const t = tokenFromResponse({ access_token: token, token_type: 'Bearer', expires_in: 3600 }, { issuedAt: T0 });
    expect(t.expiresAt).toBe(T0 + 3_600_000);
  });

  it('uses the JWT exp when expires_in is absent', async () => {
    const token = await jwt({ exp: T0 / 1000 + 60 });
    const t = tokenFromResponse({ access_token: token, token_type: 'Bearer' }, { issuedAt: T0 });
    expect(t.expiresAt).toBe(T0 + 60_000);
  });

  it('falls back to exp − iat when exp is already past on our clock', async () => {
    const token = await jwt({ exp: T0 / 1000 - 100, iat: T0 / 1000 - 160 });
    const t = tokenFromResponse({ access_token: token, token_type: 'Bearer' }, { issuedAt: T0 });
    expect(t.expiresAt).toBe(T0 + 60_000);
  });

  it('leaves the expiry unknown without expires_in or exp, and for expires_in 0', () => {
    expect(tokenFromResponse({ access_token: 'x', token_type: 'bearer' }, { issuedAt: T0 }).expiresAt).toBeUndefined();
    expect(
      tokenFromResponse({ access_token: 'x', token_type: 'bearer', expires_in: 0 }, { issuedAt: T0 }).expiresAt,
    ).toBeUndefined();
  });

  it('caps a huge expires_in so dates and timers stay sane', () => {
    const t = tokenFromResponse({ access_token: 'x', token_type: 'bearer', expires_in: 1e300 }, { issuedAt: T0 });
    expect(t.expiresAt).toBe(T0 + MAX_LIFETIME_MS);
  });

  it('carries the spent refresh token over when the server does not rotate', () => {
    const t = tokenFromResponse({ access_token: 'x', token_type: 'bearer' }, { issuedAt: T0, refreshToken: 'rt-1' });
    expect(t.refreshToken).toBe('rt-1');
    const rotated = tokenFromResponse(
      { access_token: 'x', token_type: 'bearer', refresh_token: 'rt-2' },
      { issuedAt: T0, refreshToken: 'rt-1' },
    );
    expect(rotated.refreshToken).toBe('rt-2');
  });
});

describe('stored tokens', () => {
  it('round-trips', () => {
    const t = tokenFromResponse(
      { access_token: 'a', token_type: 'DPoP', expires_in: 10, refresh_token: 'r', id_token: 'i', scope: 's' },
      { issuedAt: T0 },
    );
    expect(parseStoredToken(serializeToken(t))).toEqual(t);
  });

  it.each([
    ['not JSON', '{'],
    ['null', 'null'],
    ['a number', '42'],
    ['no access token', JSON.stringify({ tokenType: 'Bearer', issuedAt: 1 })],
    ['access token not a string', JSON.stringify({ accessToken: 1, tokenType: 'Bearer', issuedAt: 1 })],
    ['expiresAt not a number', JSON.stringify({ accessToken: 'a', tokenType: 'Bearer', issuedAt: 1, expiresAt: '2' })],
    [
      'refresh token not a string',
      JSON.stringify({ accessToken: 'a', tokenType: 'Bearer', issuedAt: 1, refreshToken: {} }),
    ],
  ])('treats %s as a miss', (_name, text) => {
    expect(parseStoredToken(text)).toBeUndefined();
  });
});

describe('stored tokens are held to the RFC 6749 character sets too', () => {
  it('a stored token whose access token, refresh token or type holds a control character is not a token (a miss)', () => {
    const stored = { v: 1, accessToken: 'fine-token', tokenType: 'Bearer', issuedAt: 1, raw: {} };
    expect(parseStoredToken(JSON.stringify(stored))?.accessToken).toBe('fine-token');
    for (const bad of [
      { accessToken: 'tok\u001b[2Jen' },
      { accessToken: 'tok\r\nen' },
      { refreshToken: 'rt\u0007' },
      { tokenType: 'Bearer\n' },
      { scope: 'read\u009b' },
    ]) {
      expect(parseStoredToken(JSON.stringify({ ...stored, ...bad })), JSON.stringify(bad)).toBeUndefined();
    }
  });
});

describe('the fleet placeholder', () => {
  it('a stored token with an empty access token (a first refresh announced) is still read back', () => {
    const placeholder = { v: 1, accessToken: '', tokenType: 'Bearer', issuedAt: 1, expiresAt: 1, raw: {}, seq: 1 };
    expect(parseStoredToken(JSON.stringify(placeholder))?.accessToken).toBe('');
  });
});

describe('a refused refresh token, as stored', () => {
  const token = { accessToken: 'a', tokenType: 'Bearer', issuedAt: 1, refreshToken: 'r', raw: {} };

  it('round-trips with its error and status', () => {
    const text = serializeStoredToken(token, { seq: 3, refused: { error: 'invalid_grant', status: 400 } });
    expect(parseStoredEntry(text)).toMatchObject({ seq: 3, refused: { error: 'invalid_grant', status: 400 } });
    expect(parseStoredEntry(serializeStoredToken(token, { seq: 3 }))?.refused).toBeUndefined();
  });

  it.each<[string, unknown, { error: string; status?: number }]>([
    [
      'an error with a quote, a backslash or a control character',
      { error: 'bad"\\\u001b[2J' },
      { error: 'invalid_grant' },
    ],
    ['an error of 10 000 characters', { error: 'x'.repeat(10_000) }, { error: 'invalid_grant' }],
    ['an error that is not a string', { error: 42 }, { error: 'invalid_grant' }],
    ['null', null, { error: 'invalid_grant' }],
    ['a string', 'invalid_grant', { error: 'invalid_grant' }],
    ['a status outside 400–599', { error: 'invalid_grant', status: 200 }, { error: 'invalid_grant' }],
    ['a status that is not an integer', { error: 'invalid_grant', status: 400.5 }, { error: 'invalid_grant' }],
    [
      'another OAuth error code',
      { error: 'unauthorized_client', status: 401 },
      { error: 'unauthorized_client', status: 401 },
    ],
  ])('reads %s as a refusal still (nothing is spent), keeping only what is well-formed', (_name, refused, read) => {
    const entry = parseStoredEntry(JSON.stringify({ v: 1, ...token, seq: 1, refused }));
    expect(entry?.refused).toEqual(read);
  });
});

describe('refreshExpiry', () => {
  it.each([
    [{ refresh_expires_in: 1800 }, T0 + 1_800_000],
    [{ refresh_token_expires_in: '7200' }, T0 + 7_200_000],
    [{ refresh_expires_in: MAX_LIFETIME_MS / 1000 }, T0 + MAX_LIFETIME_MS],
    [{ refresh_expires_in: 0 }, undefined], // Keycloak's offline tokens: no limit
    [{ refresh_expires_in: -5 }, undefined],
    [{ refresh_expires_in: 'NaN' }, undefined],
    [{ refresh_expires_in: '1e400' }, undefined], // Infinity
    [{ refresh_expires_in: 1e308 }, undefined], // overflows to Infinity in milliseconds (JSON would write null)
    [{ refresh_expires_in: MAX_LIFETIME_MS / 1000 + 1 }, undefined], // longer than any lifetime believed
    [{ refresh_expires_in: [60] }, undefined],
    [{}, undefined],
  ])('%j → %s', (json, expected) => {
    expect(refreshExpiry(json, T0).refreshExpiresAt).toBe(expected);
  });
});
