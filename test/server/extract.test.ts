import { describe, expect, it } from 'vitest';
import { challenge, extractToken, failure, failureResponse } from '../../src/server/index.js';

const header = { locations: ['header'] as const, maxLength: 100 };
const all = { locations: ['header', 'query', 'body'] as const, maxLength: 100 };
const node = (headers: Record<string, string>, extra: Record<string, unknown> = {}) => ({
  headers,
  rawHeaders: Object.entries(headers).flat(),
  ...extra,
});

describe('extractToken (RFC 6750 §2)', () => {
  it('reads raw tokens and Bearer header values, any scheme case, one or more spaces', () => {
    expect(extractToken('abc.def', header)).toBe('abc.def');
    expect(extractToken('Bearer abc', header)).toBe('abc');
    expect(extractToken('bEaReR    abc', header)).toBe('abc');
    expect(extractToken(new Request('http://x/', { headers: { authorization: 'Bearer abc' } }), header)).toBe('abc');
    expect(extractToken(node({ authorization: 'Bearer abc' }), header)).toBe('abc');
  });

  it('no token, or another scheme: missing_token (401, no error in the challenge)', () => {
    for (const input of [undefined, null, '', 'Basic dXNlcjpwYXNz', node({}), new Request('http://x/')]) {
      expect(extractToken(input, header)).toMatchObject({ error: 'missing_token', status: 401 });
    }
  });

  it('malformed headers and two tokens: invalid_request (400)', () => {
    for (const input of ['Bearer', 'Bearer ', 'Bearer a b', 'Bearer a, Bearer b', 'Bearer a,b']) {
      expect(extractToken(input, header)).toMatchObject({ error: 'invalid_request', status: 400 });
    }
    // RFC 6750 §2.1 is `Bearer 1*SP b64token`: a tab as (or in) the separator, or a Unicode space after the
    // token, is a malformed Bearer header — not "no token", and not the token with the space dropped.
    for (const value of ['Bearer\tabc', 'Bearer \tabc', 'bearer\t \tabc', 'Bearer abc\u00a0', 'Bearer abc\ufeff']) {
      for (const input of [value, node({ authorization: value })]) {
        expect(extractToken(input, header), JSON.stringify(value)).toMatchObject({
          error: 'invalid_request',
          description: 'malformed Authorization header',
        });
      }
    }
    // What an HTTP parser drops around a field value (SP, HTAB) is dropped here too.
    expect(extractToken(node({ authorization: ' \tBearer abc \t' }), header)).toBe('abc');
    const twice = {
      headers: { authorization: 'Bearer a' },
      rawHeaders: ['Authorization', 'Bearer a', 'authorization', 'Bearer b'],
    };
    expect(extractToken(twice, header)).toMatchObject({
      error: 'invalid_request',
      description: 'more than one Authorization header',
    });
    const merged = new Headers();
    merged.append('authorization', 'Bearer a');
    merged.append('authorization', 'Bearer b');
    expect(extractToken(new Request('http://x/', { headers: merged }), header)).toMatchObject({
      error: 'invalid_request',
    });
  });

  it('refuses oversized header values before parsing them', () => {
    expect(extractToken(`Bearer ${'a'.repeat(1000)}`, header)).toMatchObject({
      error: 'invalid_token',
      description: 'token too large',
    });
    expect(extractToken('a'.repeat(1000), header)).toMatchObject({
      error: 'invalid_token',
      description: 'token too large',
    });
  });

  it('query and body only when enabled; a token in two places is invalid_request', () => {
    const query = node({}, { url: '/r?access_token=q1', method: 'GET' });
    expect(extractToken(query, header)).toMatchObject({ error: 'missing_token' });
    expect(extractToken(query, all)).toBe('q1');
    const form = node(
      { 'content-type': 'application/x-www-form-urlencoded' },
      { method: 'POST', body: { access_token: 'b1' } },
    );
    expect(extractToken(form, header)).toMatchObject({ error: 'missing_token' });
    expect(extractToken(form, all)).toBe('b1');
    // RFC 6750 §2.2: only form-encoded, non-GET bodies.
    expect(
      extractToken(node({ 'content-type': 'application/json' }, { method: 'POST', body: { access_token: 'b1' } }), all),
    ).toMatchObject({
      error: 'missing_token',
    });
    for (const method of ['GET', 'HEAD', undefined]) {
      const form = { 'content-type': 'application/x-www-form-urlencoded' };
      expect(extractToken(node(form, { method, body: { access_token: 'b1' } }), all), method).toMatchObject({
        error: 'missing_token',
      });
    }
    expect(extractToken(node({ authorization: 'Bearer h1' }, { url: '/r?access_token=q1' }), all)).toMatchObject({
      error: 'invalid_request',
      description: 'bearer token sent in more than one place',
    });
    expect(extractToken(node({}, { url: '/r?access_token=a&access_token=b' }), all)).toMatchObject({
      error: 'invalid_request',
    });
    expect(extractToken(new Request('http://x/r?access_token=q2'), all)).toBe('q2');
  });

  it('an empty access_token (query or form body): invalid_request that names the parameter, not the header', () => {
    const form = { 'content-type': 'application/x-www-form-urlencoded' };
    const empty = { error: 'invalid_request', status: 400, description: 'empty access_token parameter' };
    for (const input of [
      node({}, { url: '/r?access_token=', method: 'GET' }),
      node({ authorization: 'Basic dXNlcjpwYXNz' }, { url: '/r?access_token=', method: 'GET' }),
      new Request('http://x/r?access_token='),
      node(form, { method: 'POST', body: { access_token: '' } }),
      node(form, { method: 'POST', body: new URLSearchParams('access_token=') }),
    ]) {
      expect(extractToken(input, all)).toEqual(empty);
    }
    expect(failureResponse(extractToken(new Request('http://x/r?access_token='), all) as never)).toMatchObject({
      status: 400,
      body: { error: 'invalid_request', error_description: 'empty access_token parameter' },
      headers: {
        'www-authenticate':
          'Bearer realm="api", error="invalid_request", error_description="empty access_token parameter"',
      },
    });
    // An empty header token is still the header's fault.
    expect(extractToken(node({ authorization: 'Bearer ' }, { url: '/r' }), all)).toMatchObject({
      description: 'malformed Authorization header',
    });
  });

  it('a request target that is not a URL: invalid_request, not a thrown TypeError', () => {
    expect(extractToken(node({}, { url: '//a[b?access_token=q1', method: 'GET' }), all)).toMatchObject({
      error: 'invalid_request',
      status: 400,
    });
  });
});

describe('RFC 6750 §3 challenges and responses', () => {
  it('formats WWW-Authenticate per failure', () => {
    expect(challenge(failure('missing_token', 'bearer token required'))).toBe('Bearer realm="api"');
    expect(challenge(failure('invalid_token', 'token expired'), { realm: 'orders' })).toBe(
      'Bearer realm="orders", error="invalid_token", error_description="token expired"',
    );
    expect(challenge(failure('insufficient_scope', 'insufficient scope', 'read write'))).toBe(
      'Bearer realm="api", error="insufficient_scope", error_description="insufficient scope", scope="read write"',
    );
    expect(challenge(failure('temporarily_unavailable', 'x'))).toBeUndefined();
  });

  it('keeps quotes, backslashes and control characters out of the header', () => {
    expect(challenge(failure('invalid_token', 'a "quoted"\\ \r\nInjected: yes'))).toBe(
      'Bearer realm="api", error="invalid_token", error_description="a quoted Injected: yes"',
    );
  });

  it('503 has Retry-After and no challenge; every answer is no-store', () => {
    expect(failureResponse(failure('temporarily_unavailable', 'token could not be verified now'))).toEqual({
      status: 503,
      headers: { 'cache-control': 'no-store', 'retry-after': '5' },
      body: { error: 'temporarily_unavailable', error_description: 'token could not be verified now' },
    });
    expect(failureResponse(failure('insufficient_scope', 'insufficient scope', 'write')).body).toEqual({
      error: 'insufficient_scope',
      error_description: 'insufficient scope',
      scope: 'write',
    });
  });
});
