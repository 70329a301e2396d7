/**
 * The 401 rule reads `WWW-Authenticate` by its grammar (RFC 9110 §11.6.1), for fetch, axios and undici alike:
 * `error="invalid_token"` retries, the same words inside a description or a longer value do not, and no header
 * — however hostile — throws or takes long.
 */
import { describe, expect, it } from 'vitest';
import { challengeErrors, isDpopNonceChallenge, isRetryable401 } from '../../src/http/authorize.js';

const retries = (header: string): boolean =>
  isRetryable401('invalid_token', 401, new Headers({ 'www-authenticate': header }));

describe('WWW-Authenticate challenges', () => {
  it.each([
    ['Bearer error="invalid_token"', true],
    ['Bearer realm="api", error="invalid_token", error_description="The access token expired"', true],
    ['Bearer realm="api",error="invalid_token"', true],
    ['Bearer error=invalid_token', true],
    ['Bearer ERROR = "invalid_token"', true],
    ['Bearer error="INVALID_TOKEN"', true],
    ['Bearer error=invalid_token, error_description=Token expired', true], // sloppy, but says it
    ['Basic realm="x", Bearer realm="api", error="invalid_token"', true],
    ['Basic dXNlcjpwYXNz, Bearer error="invalid_token"', true],
    ['DPoP algs="ES256", error="invalid_token"', true],
    ['Bearer error="insufficient_scope", error_description="error=\\"invalid_token\\" is not it"', false],
    ['Bearer error_description="error=invalid_token"', false],
    ['Bearer xerror="invalid_token"', false],
    ['Bearer error="invalid_token_type"', false],
    ['Bearer error="invalid_tokens"', false],
    ['Bearer error="not_invalid_token"', false],
    ['Bearer realm="error=invalid_token"', false],
    ['Bearer error="insufficient_scope", error="invalid_token"', false], // given twice: the first counts
    ['Bearer error="invalid_token', false], // an unterminated quoted string
    ['Bearer', false],
    ['', false],
    ['invalid_token', false],
  ])('%s → retried: %s', (header, expected) => {
    expect(retries(header)).toBe(expected);
  });

  it.each([
    ['DPoP error="use_dpop_nonce", error_description="Resource server requires nonce in DPoP proof"', true],
    ['Bearer realm="api", DPoP realm="api", algs="ES256 PS256", error="use_dpop_nonce"', true],
    ['dpop error=use_dpop_nonce', true],
    ['Bearer error="use_dpop_nonce"', false], // not a DPoP challenge
    ['DPoP error="invalid_dpop_proof", error_description="use_dpop_nonce"', false],
    ['DPoP realm="use_dpop_nonce"', false],
    ['DPoP error="use_dpop_nonce_please"', false],
  ])('%s → a DPoP nonce challenge: %s', (header, expected) => {
    expect(isDpopNonceChallenge(401, header)).toBe(expected);
    expect(isDpopNonceChallenge(403, header)).toBe(false);
  });

  it('only a 401 is retried, and the rule can be turned off or replaced', () => {
    const headers = new Headers({ 'www-authenticate': 'Bearer error="invalid_token"' });
    expect(isRetryable401('invalid_token', 403, headers)).toBe(false);
    expect(isRetryable401('never', 401, headers)).toBe(false);
    expect(isRetryable401('always', 401, new Headers())).toBe(true);
    expect(isRetryable401((r) => r.headers.has('x-retry'), 401, new Headers({ 'x-retry': '1' }))).toBe(true);
  });

  it('2 000 hostile headers: never a throw; long ones read at once (a backtracking expression would time the test out)', () => {
    const parts = ['Bearer', 'DPoP', ' ', ',', '=', '"', '\\', 'error', 'invalid_token', 'a=b', '\t', '\u0000', 'é'];
    let seed = 7;
    const random = (n: number): number => ((seed = (seed * 1103515245 + 12345) % 2 ** 31), seed % n);
    for (let k = 0; k < 2000; k++) {
      const header = Array.from({ length: 1 + random(40) }, () => parts[random(parts.length)]).join('');
      expect(() => challengeErrors(header)).not.toThrow();
    }
    // Long runs of what the expressions could backtrack on.
    for (const header of [
      `Bearer ${'a=b, '.repeat(20_000)}error="invalid_token"`,
      `Bearer error="${'\\"'.repeat(50_000)}`,
      `Bearer ${' '.repeat(100_000)}x`,
      `Bearer ${'a'.repeat(100_000)}=`,
      `${'Bearer, '.repeat(20_000)}`,
    ]) {
      expect(challengeErrors(header).length, header.slice(0, 30)).toBeGreaterThan(0);
    }
    expect(retries(`Bearer ${'a=b, '.repeat(20_000)}error="invalid_token"`)).toBe(true);
  });
});
