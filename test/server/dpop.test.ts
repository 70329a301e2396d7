/**
 * DPoP (RFC 9449) on the resource server: tokens bound to a key by the real authorization server, proofs
 * checked on every request (§4.3), key binding (§6), replay, server nonces (§9), answers (§7.1). The
 * frameworks' middleware with a real client (`manager.fetch`) is in adapters.test.ts.
 */
import { KeyObject, createHmac, generateKeyPairSync, randomBytes, sign } from 'node:crypto';
import { calculateJwkThumbprint, exportJWK, generateKeyPair } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ManualClock } from '../../src/clock.js';
import type { TokenwardenError } from '../../src/errors.js';
import { MemoryStore } from '../../src/stores/memory.js';
import { RedisStore } from '../../src/stores/redis.js';
import { ReplayCache, jwkThumbprint, normalizeHtu } from '../../src/server/dpop.js';
import {
  type NodeRequestLike,
  type Verifier,
  challenge,
  createVerifier,
  failure,
  failureResponse,
} from '../../src/server/index.js';
import {
  API_RESOURCE,
  OPAQUE_RESOURCE,
  type TestAuthorizationServer,
  startAuthorizationServer,
} from '../support/authorization-server.js';
import { REDIS_URL, redisAvailable, removeRedisKeys } from '../support/services.js';
import { ath, dpopProof, forge, issueDPoPToken, issueToken, segment } from './support.js';
import { seeded } from '../support/seeded.js';

const API = 'https://api.example.test/orders';
const ALGS = 'algs="RS256 RS384 RS512 PS256 PS384 PS512 ES256 ES384 ES512 EdDSA Ed25519"';

let as: TestAuthorizationServer;
let keys: CryptoKeyPair;
let other: CryptoKeyPair;
let token: string; // JWT bound to `keys`
let jkt: string;
let verify: Verifier;

const options = () => ({ issuer: as.issuer, audience: API_RESOURCE, allowInsecureRequests: true });

/** A Fetch request presenting `token` with the DPoP scheme and `proofs` (each in its own DPoP header). */
function request(url: string, proofs: string[], init: { method?: string; token?: string; scheme?: string } = {}) {
  const headers = new Headers({ authorization: `${init.scheme ?? 'DPoP'} ${init.token ?? token}` });
  for (const proof of proofs) headers.append('dpop', proof);
  return new Request(url, { method: init.method ?? 'GET', headers });
}

/** A Node request as node:http gives it (headers in lower case, rawHeaders as sent, a socket). */
function nodeRequest(
  url: string,
  headers: [string, string][],
  init: { method?: string; encrypted?: boolean } = {},
): NodeRequestLike {
  const lower: Record<string, string> = {};
  for (const [name, value] of headers) lower[name.toLowerCase()] ??= value;
  return {
    method: init.method ?? 'GET',
    url,
    headers: lower,
    rawHeaders: headers.flat(),
    socket: { encrypted: init.encrypted === true },
  };
}

const refused = (error: string, description?: string) => ({
  ok: false,
  failure: expect.objectContaining({ error, status: 401, ...(description !== undefined && { description }) }),
});

beforeAll(async () => {
  as = await startAuthorizationServer({ accessTokenTtl: 300 });
  keys = await generateKeyPair('ES256', { extractable: true });
  other = await generateKeyPair('ES256', { extractable: true });
  token = await issueDPoPToken(as, keys, { scope: 'read write' });
  jkt = await calculateJwkThumbprint(await exportJWK(keys.publicKey));
  verify = createVerifier({ ...options(), dpop: {} }); // DPoP configured: offered in challenges
});
afterAll(() => as.close());

describe('DPoP-bound tokens with a valid proof', () => {
  it('accepted from a Fetch request: tokenType DPoP and the key thumbprint in credentials', async () => {
    const result = await verify(request(API, [await dpopProof(keys, { htu: API, token })]));
    expect(result.ok).toBe(true);
    if (!result.ok) return;
    expect(result.auth.uid).toBe('svc');
    expect(result.auth.credentials).toMatchObject({ token, tokenType: 'DPoP', jkt, scopes: ['read', 'write'] });
    expect(result.auth.extra.claims['cnf']).toEqual({ jkt });
    expect(result.headers).toBeUndefined();
  });

  it('accepted from a Node request: Host, the connection and the original URL make the htu', async () => {
    const htu = 'http://api.example.test:8080/orders/7';
    const proof = await dpopProof(keys, { htu, htm: 'POST', token });
    const headers: [string, string][] = [
      ['Host', 'API.example.test:8080'],
      ['Authorization', `DPoP ${token}`],
      ['DPoP', proof],
    ];
    expect((await verify(nodeRequest('/orders/7?x=1', headers, { method: 'POST' }))).ok).toBe(true);
    // Express and Fastify keep the URL a router rewrote in originalUrl; Koa passes it per call.
    const mounted = { ...nodeRequest('/7', headers, { method: 'POST' }), originalUrl: '/orders/7' };
    const again = await dpopProof(keys, { htu, htm: 'POST', token });
    mounted.headers['dpop'] = again;
    mounted.rawHeaders = [...headers.slice(0, 2).flat(), 'DPoP', again];
    expect((await verify(mounted)).ok).toBe(true);
    const koa = nodeRequest(
      '/7',
      [...headers.slice(0, 2), ['DPoP', await dpopProof(keys, { htu, htm: 'POST', token })]],
      {
        method: 'POST',
      },
    );
    expect((await verify(koa, { originalUrl: '/orders/7' })).ok).toBe(true);
    // https when the connection is encrypted
    const tls = 'https://api.example.test/orders';
    const secure = nodeRequest(
      '/orders',
      [
        ['host', 'api.example.test'],
        ['authorization', `DPoP ${token}`],
        ['dpop', await dpopProof(keys, { htu: tls, token })],
      ],
      { encrypted: true },
    );
    expect((await verify(secure)).ok).toBe(true);
  });

  it('an opaque token: the binding comes from the introspection response', async () => {
    const opaque = await issueDPoPToken(as, keys, { resource: OPAQUE_RESOURCE });
    const introspect = createVerifier({
      issuer: as.issuer,
      introspection: { clientId: as.clients.rs.clientId, clientSecret: as.clients.rs.clientSecret },
      allowInsecureRequests: true,
    });
    const ok = await introspect(request(API, [await dpopProof(keys, { htu: API, token: opaque })], { token: opaque }));
    expect(ok.ok && ok.auth.credentials).toMatchObject({ tokenType: 'DPoP', jkt });
    expect(ok.ok && ok.auth.extra.strategy).toBe('introspection');
    expect(await introspect(`Bearer ${opaque}`)).toEqual(
      refused('invalid_token', 'sender-constrained token presented as bearer'),
    );
    const stranger = await dpopProof(other, { htu: API, token: opaque });
    expect(await introspect(request(API, [stranger], { token: opaque }))).toEqual(
      refused('invalid_token', 'invalid DPoP key binding'),
    );
  });

  it('the token is validated once and cached; the proof is checked on every request', async () => {
    const cached = createVerifier(options());
    as.resetCounts();
    for (let i = 0; i < 3; i++) {
      expect((await cached(request(API, [await dpopProof(keys, { htu: API, token })]))).ok).toBe(true);
    }
    expect(cached.cacheSize).toBe(1);
    expect(as.counts.jwks).toBe(1);
    // with the token cached, a bad proof is still refused
    expect(await cached(request(API, [await dpopProof(keys, { htu: `${API}/x`, token })]))).toEqual(
      refused('invalid_dpop_proof'),
    );
    expect(await cached(request(API, []))).toEqual(refused('invalid_dpop_proof', 'DPoP proof required'));
  });

  it('ignores the query and fragment, and normalizes the URL (RFC 3986 §6.2.2–6.2.3)', async () => {
    const url = 'https://API.example.test:443/a/../orders%7e?page=2';
    const proof = await dpopProof(keys, { htu: 'https://api.example.test/orders~#top', token });
    expect((await verify(request(url, [proof]))).ok).toBe(true);
    expect(normalizeHtu('HTTPS://API.example.com:443/a/../orders%7e%2f?x=1#f')).toBe(
      'https://api.example.com/orders~%2F',
    );
    expect(normalizeHtu('ftp://example.com/')).toBeUndefined();
    expect(normalizeHtu('not a url')).toBeUndefined();
  });
});

describe('hostile requests: 401, never a throw', () => {
  it('no proof, or a raw token / header value that cannot carry one', async () => {
    expect(await verify(request(API, []))).toEqual(refused('invalid_dpop_proof', 'DPoP proof required'));
    expect(await verify(`DPoP ${token}`)).toEqual(refused('invalid_dpop_proof', 'DPoP proof required'));
    // A raw token is a bearer token: this one is bound to a key.
    expect(await verify(token)).toEqual(refused('invalid_token', 'sender-constrained token presented as bearer'));
  });

  it('a DPoP-bound token presented as Bearer, with or without a proof', async () => {
    const proof = await dpopProof(keys, { htu: API, token });
    for (const input of [
      `Bearer ${token}`,
      request(API, [], { scheme: 'Bearer' }),
      request(API, [proof], { scheme: 'Bearer' }),
    ]) {
      const result = await verify(input);
      expect(result).toEqual(refused('invalid_token', 'sender-constrained token presented as bearer'));
      // Refused as Bearer, with the scheme this token needs offered beside it (RFC 9449 §7.1).
      if (!result.ok) {
        expect(challenge(result.failure)).toMatch(
          /^Bearer realm="api", error="invalid_token", error_description="[^"]*", DPoP realm="api", algs="[^"]+"$/,
        );
      }
    }
  });

  it('a proof for another method or URL', async () => {
    const cases = [
      { htm: 'POST', htu: API },
      { htu: 'https://api.example.test/admin' },
      { htu: 'https://evil.example.test/orders' },
      { htu: 'http://api.example.test/orders' },
      { htu: 'https://api.example.test:8443/orders' },
    ];
    for (const claims of cases) {
      const result = await verify(request(API, [await dpopProof(keys, { ...claims, token })]));
      expect(result, JSON.stringify(claims)).toEqual(refused('invalid_dpop_proof'));
    }
    expect(await verify(request(API, [await dpopProof(keys, { htm: 'get', htu: API, token })]))).toEqual(
      refused('invalid_dpop_proof', 'DPoP proof htm does not match the request method'),
    );
  });

  it('a replayed proof: the second use is refused, also when both arrive at once', async () => {
    const proof = await dpopProof(keys, { htu: API, token });
    expect((await verify(request(API, [proof]))).ok).toBe(true);
    expect(await verify(request(API, [proof]))).toEqual(refused('invalid_dpop_proof', 'DPoP proof already used'));
    const twice = await dpopProof(keys, { htu: API, token });
    const results = await Promise.all([verify(request(API, [twice])), verify(request(API, [twice]))]);
    expect(results.filter((r) => r.ok)).toHaveLength(1);
    // The same jti in a new proof is a replay too.
    const jti = randomBytes(8).toString('hex');
    expect((await verify(request(API, [await dpopProof(keys, { htu: API, token, jti })]))).ok).toBe(true);
    expect(
      await verify(
        request(API, [await dpopProof(keys, { htu: API, token, jti, iat: Math.floor(Date.now() / 1000) - 1 })]),
      ),
    ).toEqual(refused('invalid_dpop_proof', 'DPoP proof already used'));
  });

  it('a proof for another access token (ath), or without ath', async () => {
    const forOther = await dpopProof(keys, { htu: API, token: 'another-token' });
    expect(await verify(request(API, [forOther]))).toEqual(
      refused('invalid_dpop_proof', 'DPoP proof ath does not match the access token'),
    );
    expect(await verify(request(API, [await dpopProof(keys, { htu: API })]))).toEqual(
      refused('invalid_dpop_proof', 'DPoP proof ath missing'),
    );
  });

  it('a proof signed by another key than the one the token is bound to (cnf.jkt)', async () => {
    const result = await verify(request(API, [await dpopProof(other, { htu: API, token })]));
    expect(result).toEqual(refused('invalid_token', 'invalid DPoP key binding'));
    if (!result.ok) {
      expect(challenge(result.failure)).toBe(
        `DPoP realm="api", error="invalid_token", error_description="invalid DPoP key binding", ${ALGS}`,
      );
    }
  });

  it('a proof whose header names one key and whose signature is by another', async () => {
    const proof = await dpopProof(other, { htu: API, token, header: { jwk: await exportJWK(keys.publicKey) } });
    expect(await verify(request(API, [proof]))).toEqual(refused('invalid_dpop_proof', 'invalid DPoP proof signature'));
    const [h, p, s] = (await dpopProof(keys, { htu: API, token })).split('.');
    const tampered = `${h}.${segment({ ...JSON.parse(Buffer.from(p!, 'base64url').toString()), htu: `${API}/x` })}.${s}`;
    expect(await verify(request(`${API}/x`, [tampered]))).toEqual(
      refused('invalid_dpop_proof', 'invalid DPoP proof signature'),
    );
  });

  it('a stale or future iat, on the injected clock; iatWindow and clockTolerance widen it', async () => {
    const clock = new ManualClock(Date.now());
    const timed = createVerifier({ ...options(), clock });
    const now = Math.floor(clock.now() / 1000);
    for (const iat of [now - 61, now + 61, now - 3600]) {
      expect(await timed(request(API, [await dpopProof(keys, { htu: API, token, iat })]))).toEqual(
        refused('invalid_dpop_proof', 'DPoP proof iat outside the accepted window'),
      );
    }
    for (const iat of [now - 59, now + 59]) {
      expect((await timed(request(API, [await dpopProof(keys, { htu: API, token, iat })]))).ok).toBe(true);
    }
    const old = await dpopProof(keys, { htu: API, token, iat: now });
    await clock.advance(61_000);
    expect(await timed(request(API, [old]))).toEqual(refused('invalid_dpop_proof'));
    const wide = createVerifier({ ...options(), clock, clockTolerance: '30s', dpop: { iatWindow: '5m' } });
    const later = Math.floor(clock.now() / 1000);
    expect((await wide(request(API, [await dpopProof(keys, { htu: API, token, iat: later - 320 })]))).ok).toBe(true);
    expect(await wide(request(API, [await dpopProof(keys, { htu: API, token, iat: later - 340 })]))).toEqual(
      refused('invalid_dpop_proof'),
    );
  });

  it('alg none, HS256 (with the public key as secret), or an algorithm not allowed', async () => {
    const claims = { jti: 'n1', htm: 'GET', htu: API, iat: Math.floor(Date.now() / 1000), ath: ath(token) };
    const jwk = await exportJWK(keys.publicKey);
    const none = `${segment({ alg: 'none', typ: 'dpop+jwt', jwk })}.${segment(claims)}.`;
    expect(await verify(request(API, [none]))).toEqual(
      refused('invalid_dpop_proof', 'DPoP proof algorithm not allowed'),
    );
    const input = `${segment({ alg: 'HS256', typ: 'dpop+jwt', jwk })}.${segment({ ...claims, jti: 'h1' })}`;
    const mac = createHmac('sha256', JSON.stringify(jwk)).update(input).digest('base64url');
    expect(await verify(request(API, [`${input}.${mac}`]))).toEqual(
      refused('invalid_dpop_proof', 'DPoP proof algorithm not allowed'),
    );
    const onlyEdDSA = createVerifier({ ...options(), dpop: { algorithms: ['EdDSA'] } });
    const result = await onlyEdDSA(request(API, [await dpopProof(keys, { htu: API, token })]));
    expect(result).toEqual(refused('invalid_dpop_proof', 'DPoP proof algorithm not allowed'));
    if (!result.ok) expect(failureResponse(result.failure).headers['www-authenticate']).toContain('algs="EdDSA"');
  });

  it('a private key in the proof header, a symmetric key, or no key', async () => {
    const privateJwk = await exportJWK(keys.privateKey);
    expect(
      await verify(request(API, [await dpopProof(keys, { htu: API, token, header: { jwk: privateJwk } })])),
    ).toEqual(refused('invalid_dpop_proof', 'DPoP proof key must be a public key'));
    const oct = { kty: 'oct', k: randomBytes(32).toString('base64url') };
    expect(await verify(request(API, [await dpopProof(keys, { htu: API, token, header: { jwk: oct } })]))).toEqual(
      refused('invalid_dpop_proof', 'DPoP proof key must be a public key'),
    );
    expect(
      await verify(request(API, [await dpopProof(keys, { htu: API, token, header: { jwk: undefined } })])),
    ).toEqual(refused('invalid_dpop_proof', 'DPoP proof has no jwk'));
    const wrongCurve = { ...(await exportJWK(keys.publicKey)), crv: 'P-384' };
    expect(
      await verify(request(API, [await dpopProof(keys, { htu: API, token, header: { jwk: wrongCurve } })])),
    ).toEqual(refused('invalid_dpop_proof'));
  });

  it('a key of another curve or size than its algorithm: refused, however well it signed', async () => {
    const claims = {
      jti: randomBytes(8).toString('hex'),
      htm: 'GET',
      htu: API,
      iat: Math.floor(Date.now() / 1000),
      ath: ath(token),
    };
    const signed = (alg: string, pair: { publicKey: KeyObject; privateKey: KeyObject }, p1363: boolean): string => {
      const input = `${segment({ alg, typ: 'dpop+jwt', jwk: pair.publicKey.export({ format: 'jwk' }) })}.${segment(claims)}`;
      const key = pair.privateKey;
      const signature = sign('sha256', Buffer.from(input), p1363 ? { key, dsaEncoding: 'ieee-p1363' } : key);
      return `${input}.${signature.toString('base64url')}`;
    };
    // A P-384 key signing SHA-256 under "ES256": a valid ECDSA signature, of the wrong algorithm.
    const p384 = generateKeyPairSync('ec', { namedCurve: 'P-384' });
    expect(await verify(request(API, [signed('ES256', p384, true)]))).toEqual(
      refused('invalid_dpop_proof', 'DPoP proof key invalid'),
    );
    // RSA under 2048 bits (RFC 7518 §3.3).
    const small = generateKeyPairSync('rsa', { modulusLength: 1024 });
    expect(await verify(request(API, [signed('RS256', small, false)]))).toEqual(refused('invalid_dpop_proof'));
  });

  it('an unknown critical header, or an exp in the past', async () => {
    const jwk = await exportJWK(keys.publicKey);
    const claims = { jti: 'c1', htm: 'GET', htu: API, iat: Math.floor(Date.now() / 1000), ath: ath(token) };
    const input = `${segment({ alg: 'ES256', typ: 'dpop+jwt', jwk, crit: ['urn:x'], 'urn:x': 1 })}.${segment(claims)}`;
    const signature = sign('sha256', Buffer.from(input), {
      key: KeyObject.from(keys.privateKey),
      dsaEncoding: 'ieee-p1363',
    });
    expect(await verify(request(API, [`${input}.${signature.toString('base64url')}`]))).toEqual(
      refused('invalid_dpop_proof', 'DPoP proof not supported'),
    );
    const expired = await dpopProof(keys, { htu: API, token, claims: { exp: Math.floor(Date.now() / 1000) - 10 } });
    expect(await verify(request(API, [expired]))).toEqual(refused('invalid_dpop_proof', 'DPoP proof expired'));
  });

  it('another typ, missing claims, two proofs, garbage', async () => {
    for (const typ of ['JWT', 'at+jwt', undefined]) {
      expect(await verify(request(API, [await dpopProof(keys, { htu: API, token, header: { typ } })]))).toEqual(
        refused('invalid_dpop_proof', 'DPoP proof typ must be dpop+jwt'),
      );
    }
    for (const claim of ['jti', 'htm', 'htu', 'iat']) {
      const proof = await dpopProof(keys, { htu: API, token, claims: { [claim]: undefined } });
      expect(await verify(request(API, [proof])), claim).toEqual(refused('invalid_dpop_proof'));
    }
    const two = [await dpopProof(keys, { htu: API, token }), await dpopProof(keys, { htu: API, token })];
    expect(await verify(request(API, two))).toEqual(refused('invalid_dpop_proof', 'more than one DPoP proof'));
    const raw = nodeRequest('/orders', [
      ['host', 'api.example.test'],
      ['authorization', `DPoP ${token}`],
      ['dpop', two[0]!],
      ['DPoP', two[1]!],
    ]);
    expect(await verify(raw)).toEqual(refused('invalid_dpop_proof', 'more than one DPoP proof'));
    for (const garbage of ['', 'a.b', 'x.y.z', `${segment('[]')}.${segment({})}.x`, 'e'.repeat(9000)]) {
      expect(await verify(request(API, [garbage]))).toEqual(refused('invalid_dpop_proof'));
    }
  });

  it('a token that is not bound to a key, presented with DPoP', async () => {
    const bearer = (await issueToken(as, { scope: 'read' })).accessToken;
    const result = await verify(request(API, [await dpopProof(keys, { htu: API, token: bearer })], { token: bearer }));
    expect(result).toEqual(refused('invalid_token', 'token is not bound to a DPoP key'));
    // A token also bound to something else (an mTLS certificate) cannot be fully checked: refused.
    const both = await forge(as, { cnf: { jkt, 'x5t#S256': 'abc' } });
    expect(await verify(request(API, [await dpopProof(keys, { htu: API, token: both })], { token: both }))).toEqual(
      refused('invalid_token', 'token is not bound to a DPoP key'),
    );
    // A bearer token with a stray DPoP header is a bearer token.
    expect(
      (
        await verify(
          request(API, [await dpopProof(keys, { htu: API, token: bearer })], { token: bearer, scheme: 'Bearer' }),
        )
      ).ok,
    ).toBe(true);
  });

  it('a bad token presented with DPoP is answered in the DPoP scheme', async () => {
    const expired = await forge(as, { exp: Math.floor(Date.now() / 1000) - 60, cnf: { jkt } });
    const result = await verify(
      request(API, [await dpopProof(keys, { htu: API, token: expired })], { token: expired }),
    );
    expect(result).toEqual(refused('invalid_token', 'token expired'));
    if (!result.ok) {
      expect(failureResponse(result.failure).headers['www-authenticate']).toBe(
        `DPoP realm="api", error="invalid_token", error_description="token expired", ${ALGS}`,
      );
    }
    const scoped = await verify(request(API, [await dpopProof(keys, { htu: API, token })]), {
      requiredScopes: ['admin'],
    });
    expect(scoped).toMatchObject({ ok: false, failure: { error: 'insufficient_scope', status: 403, scheme: 'DPoP' } });
    if (!scoped.ok) {
      expect(challenge(scoped.failure, { realm: 'orders' })).toBe(
        `DPoP realm="orders", error="insufficient_scope", error_description="insufficient scope", scope="admin", ${ALGS}`,
      );
    }
  });
});

describe('request URL behind a proxy', () => {
  const viaProxy = async (extra: [string, string][], htu: string, verifier: Verifier, url = '/orders') =>
    verifier(
      nodeRequest(url, [
        ['host', '10.0.0.7:3000'],
        ['authorization', `DPoP ${token}`],
        ['dpop', await dpopProof(keys, { htu, token })],
        ...extra,
      ]),
    );

  it('by default the proof must name the URL the server sees', async () => {
    expect((await viaProxy([], 'http://10.0.0.7:3000/orders', verify)).ok).toBe(true);
    expect(await viaProxy([['x-forwarded-proto', 'https']], API, verify)).toEqual(refused('invalid_dpop_proof'));
  });

  it('publicUrl: its origin and path prefix replace the request’s; Host and X-Forwarded-* are ignored', async () => {
    const pub = createVerifier({ ...options(), dpop: { publicUrl: 'https://api.example.test/' } });
    expect((await viaProxy([], API, pub)).ok).toBe(true);
    expect(
      await viaProxy([['x-forwarded-host', 'evil.example.test']], 'https://evil.example.test/orders', pub),
    ).toEqual(refused('invalid_dpop_proof'));
    const prefixed = createVerifier({ ...options(), dpop: { publicUrl: 'https://example.test/shop/' } });
    expect((await viaProxy([], 'https://example.test/shop/orders', prefixed)).ok).toBe(true);
    // Fetch requests too (Hono behind a proxy)
    const fetchRequest = request('http://10.0.0.7:3000/orders', [await dpopProof(keys, { htu: API, token })]);
    expect((await pub(fetchRequest)).ok).toBe(true);
  });

  it('trustProxy: X-Forwarded-Proto and X-Forwarded-Host (first value)', async () => {
    const proxied = createVerifier({ ...options(), dpop: { trustProxy: true } });
    const forwarded: [string, string][] = [
      ['x-forwarded-proto', 'https, http'],
      ['x-forwarded-host', 'api.example.test, 10.0.0.7:3000'],
    ];
    expect((await viaProxy(forwarded, API, proxied)).ok).toBe(true);
    expect((await viaProxy([], 'http://10.0.0.7:3000/orders', proxied)).ok).toBe(true);
    expect(await viaProxy([['x-forwarded-host', 'a/b']], 'http://a/b/orders', proxied)).toEqual(
      refused('invalid_dpop_proof'),
    );
  });

  it('no Host, a malformed Host, a path that looks like a host: refused', async () => {
    const noHost = nodeRequest('/orders', [
      ['authorization', `DPoP ${token}`],
      ['dpop', await dpopProof(keys, { htu: API, token })],
    ]);
    expect(await verify(noHost)).toEqual(refused('invalid_dpop_proof', 'request URL unknown'));
    expect(await viaProxy([], 'http://evil.example.test/orders', verify, '//evil.example.test/orders')).toEqual(
      refused('invalid_dpop_proof'),
    );
    const badHost = nodeRequest('/orders', [
      ['host', 'api.example.test/x?'],
      ['authorization', `DPoP ${token}`],
      ['dpop', await dpopProof(keys, { htu: 'http://api.example.test/x', token })],
    ]);
    expect(await verify(badHost)).toEqual(refused('invalid_dpop_proof', 'request URL unknown'));
  });
});

describe('policy', () => {
  it('required: bearer tokens are refused before any check, and the challenge offers only DPoP', async () => {
    const strict = createVerifier({ ...options(), dpop: { required: true } });
    const bearer = (await issueToken(as, { scope: 'read' })).accessToken;
    const result = await strict(`Bearer ${bearer}`);
    expect(result).toEqual({
      ok: false,
      failure: expect.objectContaining({ error: 'missing_token', description: 'DPoP-bound token required' }),
    });
    if (!result.ok) expect(challenge(result.failure)).toBe(`DPoP realm="api", ${ALGS}`);
    const none = await strict(undefined);
    expect(none.ok).toBe(false);
    if (!none.ok) expect(challenge(none.failure)).toBe(`DPoP realm="api", ${ALGS}`);
    expect((await strict(request(API, [await dpopProof(keys, { htu: API, token })]))).ok).toBe(true);
  });

  it('a request without a token is offered Bearer by default, and both schemes once dpop is configured (RFC 9449 §7.2)', async () => {
    const plainDefault = createVerifier(options());
    const none = await plainDefault(undefined);
    expect(none.ok).toBe(false);
    if (!none.ok) expect(challenge(none.failure)).toBe('Bearer realm="api"');
    const result = await verify(undefined);
    expect(result.ok).toBe(false);
    if (!result.ok) expect(challenge(result.failure)).toBe(`Bearer realm="api", DPoP realm="api", ${ALGS}`);
    const basic = await verify('Basic dXNlcjpwYXNz');
    expect(basic.ok).toBe(false);
    if (!basic.ok) expect(challenge(basic.failure, { realm: 'x' })).toBe(`Bearer realm="x", DPoP realm="x", ${ALGS}`);
  });

  it('dpop: false takes no DPoP tokens: the scheme is unknown, a bound token is still refused as bearer', async () => {
    const plain = createVerifier({ ...options(), dpop: false });
    expect(plain.dpop).toBe(false);
    const result = await plain(request(API, [await dpopProof(keys, { htu: API, token })]));
    expect(result).toEqual(refused('missing_token'));
    if (!result.ok) expect(challenge(result.failure)).toBe('Bearer realm="api"');
    expect(await plain(`Bearer ${token}`)).toEqual(
      refused('invalid_token', 'sender-constrained token presented as bearer'),
    );
  });

  it('bad options throw ERR_CONFIG at construction', () => {
    const bad: unknown[] = [
      'yes',
      { required: 'yes' },
      { algorithms: ['HS256'] },
      { algorithms: [] },
      { iatWindow: 'soon' },
      { replayCache: { maxEntries: 0 } },
      { nonce: 'abc' },
      { publicUrl: 'api.example.test' },
      { publicUrl: 'https://api.example.test/?x=1' },
      { publicUrl: 'https://api.example.test', trustProxy: true },
    ];
    for (const dpop of bad) {
      expect(() => createVerifier({ ...options(), dpop: dpop as never }), JSON.stringify(dpop)).toThrow(
        expect.objectContaining({ code: 'ERR_CONFIG' }),
      );
    }
  });
});

describe('server nonces (RFC 9449 §9)', () => {
  it('a proof without the nonce gets use_dpop_nonce and the nonce; with it, it passes', async () => {
    const nonced = createVerifier({ ...options(), dpop: { nonce: () => 'n-1' } });
    const result = await nonced(request(API, [await dpopProof(keys, { htu: API, token })]));
    expect(result).toEqual(refused('use_dpop_nonce'));
    if (result.ok) return;
    expect(failureResponse(result.failure)).toEqual({
      status: 401,
      headers: {
        'cache-control': 'no-store',
        'www-authenticate': `DPoP realm="api", error="use_dpop_nonce", error_description="resource server requires nonce in DPoP proof", ${ALGS}`,
        'dpop-nonce': 'n-1',
      },
      body: { error: 'use_dpop_nonce', error_description: 'resource server requires nonce in DPoP proof' },
    });
    expect(await nonced(request(API, [await dpopProof(keys, { htu: API, token, nonce: 'n-0' })]))).toEqual(
      refused('use_dpop_nonce'),
    );
    const ok = await nonced(request(API, [await dpopProof(keys, { htu: API, token, nonce: 'n-1' })]));
    expect(ok.ok).toBe(true);
    expect(ok.ok && ok.headers).toBeUndefined();
  });

  it('the previous nonce still passes, and the answer carries the current one', async () => {
    let nonce = { current: 'n-2', previous: 'n-1' };
    const nonced = createVerifier({ ...options(), dpop: { nonce: async () => nonce } });
    const ok = await nonced(request(API, [await dpopProof(keys, { htu: API, token, nonce: 'n-1' })]));
    expect(ok).toMatchObject({ ok: true, headers: { 'dpop-nonce': 'n-2' } });
    nonce = { current: 'n-3', previous: 'n-2' };
    expect(await nonced(request(API, [await dpopProof(keys, { htu: API, token, nonce: 'n-1' })]))).toEqual(
      refused('use_dpop_nonce'),
    );
  });

  it('a nonce function that throws or returns garbage is a 503, reported', async () => {
    const errors: string[] = [];
    for (const nonce of [
      () => {
        throw new Error('store down');
      },
      () => 'has "quotes"',
    ]) {
      const broken = createVerifier({ ...options(), dpop: { nonce }, onError: (err) => errors.push(err.code) });
      const result = await broken(request(API, [await dpopProof(keys, { htu: API, token })]));
      expect(result).toMatchObject({ ok: false, failure: { error: 'temporarily_unavailable', status: 503 } });
    }
    expect(errors).toEqual(['ERR_PROVIDER', 'ERR_CONFIG']);
  });
});

describe('replay cache and thumbprints', () => {
  it('is bounded: a full cache forgets its oldest proof and refuses proofs not newer than it', () => {
    const cache = new ReplayCache(2);
    const now = 1_000_000;
    expect(cache.add('a', now + 10, now)).toBe('ok');
    expect(cache.add('b', now + 30, now)).toBe('ok');
    expect(cache.add('a', now + 10, now)).toBe('replayed');
    expect(cache.add('c', now + 20, now)).toBe('ok'); // 'a' (until +10) forgotten
    expect(cache.size).toBe(2);
    expect(cache.add('a', now + 10, now)).toBe('too old'); // might be a replay of what was forgotten
    expect(cache.add('d', now + 5, now)).toBe('too old');
    expect(cache.add('e', now + 40, now)).toBe('ok'); // 'c' forgotten
    expect(cache.add('c', now + 20, now)).toBe('too old');
    // entries leave once their proofs would be refused by the iat check anyway
    expect(cache.add('f', now + 100, now + 35)).toBe('ok');
    expect(cache.size).toBe(2);
  });

  it('a verifier with a small replay cache never accepts a proof twice', async () => {
    const small = createVerifier({ ...options(), dpop: { replayCache: { maxEntries: 2 } } });
    const iat = Math.floor(Date.now() / 1000);
    const proofs = await Promise.all([-3, -2, -1, 0].map((d) => dpopProof(keys, { htu: API, token, iat: iat + d })));
    for (const proof of proofs) expect((await small(request(API, [proof]))).ok).toBe(true);
    for (const proof of proofs) expect((await small(request(API, [proof]))).ok).toBe(false);
  });

  it('replayStore: a proof one instance accepted is refused by every other, also when both get it at once', async () => {
    const shared = new MemoryStore();
    const [a, b] = [0, 1].map(() => createVerifier({ ...options(), dpop: { replayStore: shared } }));
    const proof = await dpopProof(keys, { htu: API, token });
    expect((await a!(request(API, [proof]))).ok).toBe(true);
    expect(await b!(request(API, [proof]))).toEqual(refused('invalid_dpop_proof', 'DPoP proof already used'));
    const twice = await dpopProof(keys, { htu: API, token });
    const results = await Promise.all([a!(request(API, [twice])), b!(request(API, [twice]))]);
    expect(results.filter((r) => r.ok)).toHaveLength(1);
    // A fresh proof passes on both; each id is kept until its iat leaves the window (60 s), not longer.
    expect((await b!(request(API, [await dpopProof(keys, { htu: API, token })]))).ok).toBe(true);
    expect(shared.size).toBe(3);
    await shared.close();
  });

  it.skipIf(!redisAvailable)('replayStore on Redis: two verifiers, one proof, one acceptance', async () => {
    const prefix = `tw-dpop-${randomBytes(6).toString('hex')}:`;
    const stores = [0, 1].map(() => new RedisStore({ url: REDIS_URL, prefix }));
    try {
      const [a, b] = stores.map((replayStore) => createVerifier({ ...options(), dpop: { replayStore } }));
      for (let i = 0; i < 5; i++) {
        const proof = await dpopProof(keys, { htu: API, token });
        const results = await Promise.all([a!(request(API, [proof])), b!(request(API, [proof]))]);
        expect(results.filter((r) => r.ok)).toHaveLength(1);
        expect(results.find((r) => !r.ok)).toEqual(refused('invalid_dpop_proof', 'DPoP proof already used'));
      }
    } finally {
      await Promise.all(stores.map((s) => s.close()));
      await removeRedisKeys(prefix);
    }
  });

  it('replayStore that cannot answer: 503, reported without the proof or token; never accepted unchecked', async () => {
    const reported: TokenwardenError[] = [];
    const proof = await dpopProof(keys, { htu: API, token });
    const jti = JSON.parse(Buffer.from(proof.split('.')[1]!, 'base64url').toString()).jti as string;
    const down = new MemoryStore();
    await down.close(); // every call now fails with ERR_CLOSED
    const failing = createVerifier({
      ...options(),
      dpop: { replayStore: down },
      onError: (e) => reported.push(e),
    });
    const result = await failing(request(API, [proof]));
    expect(result).toMatchObject({ ok: false, failure: { error: 'temporarily_unavailable', status: 503 } });
    expect(reported.map((e) => e.code)).toEqual(['ERR_CLOSED']);
    // A store whose error echoes the proof id and the token it was given: neither may reach the report.
    const second = await dpopProof(keys, { htu: API, token });
    const secondJti = JSON.parse(Buffer.from(second.split('.')[1]!, 'base64url').toString()).jti as string;
    const thrower = createVerifier({
      ...options(),
      dpop: {
        replayStore: {
          ...down,
          set: async (key: string) => {
            throw new Error(`store down (${secondJti}, ${token}, ${key})`);
          },
        } as unknown as MemoryStore,
      },
      onError: (e) => reported.push(e),
    });
    expect(await thrower(request(API, [second]))).toMatchObject({
      ok: false,
      failure: { error: 'temporarily_unavailable', status: 503 },
    });
    expect(reported.map((e) => e.code)).toEqual(['ERR_CLOSED', 'ERR_STORE']);
    for (const e of reported) {
      const text = `${e.message} ${JSON.stringify(e)}`;
      for (const secret of [token, jti, secondJti]) expect(text).not.toContain(secret);
    }
    expect(() => createVerifier({ ...options(), dpop: { replayStore: {} as MemoryStore } })).toThrow(
      expect.objectContaining({ code: 'ERR_CONFIG' }),
    );
  });

  it('computes RFC 7638 thumbprints as jose does, for EC, RSA and OKP keys', async () => {
    for (const alg of ['ES256', 'ES384', 'RS256', 'EdDSA'] as const) {
      const pair = await generateKeyPair(alg, { extractable: true });
      const jwk = await exportJWK(pair.publicKey);
      expect(jwkThumbprint({ ...jwk, alg, kid: 'ignored' })?.jkt, alg).toBe(await calculateJwkThumbprint(jwk));
    }
    expect(jwkThumbprint({ kty: 'EC', crv: 'P-256', x: 'abc' })).toBeUndefined();
    expect(jwkThumbprint({ kty: 'oct', k: 'abc' })).toBeUndefined();
  });

  it('RSA and EdDSA proofs are accepted too', async () => {
    for (const alg of ['PS256', 'RS256', 'EdDSA'] as const) {
      const pair = await generateKeyPair(alg, { extractable: true });
      // oidc-provider binds tokens to ES256 and EdDSA keys only: a token bound by hand.
      const bound = await forge(as, { cnf: { jkt: await calculateJwkThumbprint(await exportJWK(pair.publicKey)) } });
      const proof = await dpopProof(pair, { htu: API, token: bound, header: { alg } });
      const result = await verify(request(API, [proof], { token: bound }));
      expect(result.ok, alg).toBe(true);
    }
  });
});

describe('challenges without a verifier', () => {
  it('a hand-made failure is answered as before (RFC 6750)', () => {
    expect(challenge(failure('missing_token', 'x'))).toBe('Bearer realm="api"');
    expect(challenge({ ...failure('invalid_dpop_proof', 'bad'), scheme: 'DPoP' })).toBe(
      'DPoP realm="api", error="invalid_dpop_proof", error_description="bad"',
    );
    expect(failure('use_dpop_nonce', 'x').status).toBe(401);
  });
});

describe('proofs made at random from a valid one (a fixed seed)', () => {
  it('400 proofs, each with one to three changes that each make it invalid: every one refused (401), never a throw; the unchanged proof passes', async () => {
    const pick = seeded(9449);
    const choose = <T>(list: readonly T[]): T => list[pick(list.length)] as T;
    const now = Math.floor(Date.now() / 1000);
    const otherJwk = await exportJWK(other.publicKey);
    const { privateKey: rsa } = generateKeyPairSync('rsa', { modulusLength: 2048 });
    const elsewhere = await dpopProof(other, { htu: API, token });
    const ownJwk = await exportJWK(keys.publicKey);
    const ownKey = KeyObject.from(keys.privateKey);
    type Change = { claims?: Record<string, unknown>; header?: Record<string, unknown>; signature?: string };
    /** Each makes a proof invalid whatever else is changed with it. */
    const CHANGES: (() => Change)[] = [
      () => ({ claims: { htm: choose(['POST', 'get', '', 'GET ', 7, null]) } }),
      () => ({
        claims: {
          htu: choose([
            'https://api.example.test/admin',
            'https://evil.example.test/orders',
            'http://api.example.test/orders',
            'https://api.example.test:8443/orders',
            'orders',
            '',
            42,
            undefined,
          ]),
        },
      }),
      () => ({ claims: { iat: choose([now - 3600, now + 3600, String(now), null, undefined, 1e308]) } }),
      () => ({ claims: { ath: choose([ath('another-token'), '', 42, undefined, ath(token).toUpperCase()]) } }),
      () => ({ claims: { jti: choose(['', 42, undefined, null]) } }),
      () => ({ header: { typ: choose(['jwt', 'at+jwt', undefined, 7]) } }),
      () => ({
        header: {
          jwk: choose([otherJwk, { ...otherJwk, d: 'AAAA' }, undefined, {}, 'jwk', { kty: 'oct', k: 'AAAA' }]),
        },
      }),
      () => ({ header: { alg: choose(['none', 'HS256', 'RS256', 'ES384']) } }),
      () => ({ signature: choose(['', 'AAAA', elsewhere.split('.')[2] as string]) }),
      () => ({ header: { crit: ['exp'] } }),
      () => ({ claims: { exp: now - 60 } }),
    ];
    /** A proof made by hand (jose would refuse to sign some of these): ES256 by the bound key, unless changed. */
    const handMade = (claims: Record<string, unknown>, header: Record<string, unknown>, signature?: string) => {
      const fullClaims: Record<string, unknown> = { htm: 'GET', htu: API, iat: now, ath: ath(token), ...claims };
      const fullHeader: Record<string, unknown> = { alg: 'ES256', typ: 'dpop+jwt', jwk: ownJwk, ...header };
      for (const part of [fullClaims, fullHeader]) {
        for (const [name, value] of Object.entries(part)) if (value === undefined) delete part[name];
      }
      const input = `${segment(fullHeader)}.${segment(fullClaims)}`;
      signature ??=
        fullHeader['alg'] === 'RS256'
          ? sign('sha256', Buffer.from(input), rsa).toString('base64url') // a real signature that cannot fit the EC jwk
          : sign('sha256', Buffer.from(input), { key: ownKey, dsaEncoding: 'ieee-p1363' }).toString('base64url');
      return `${input}.${signature}`;
    };
    // Unchanged, the hand-made proof passes: what refuses the changed ones is the change.
    expect((await verify(request(API, [handMade({ jti: 'unchanged' }, {})]))).ok).toBe(true);
    const problems: string[] = [];
    for (let n = 0; n < 400; n++) {
      const claims: Record<string, unknown> = { jti: randomBytes(12).toString('base64url') };
      const header: Record<string, unknown> = {};
      let signature: string | undefined;
      const made: Change[] = [];
      for (let k = 1 + pick(3); k > 0; k--) {
        const change = choose(CHANGES)();
        made.push(change);
        Object.assign(claims, change.claims);
        Object.assign(header, change.header);
        signature = change.signature ?? signature;
      }
      const proof = handMade(claims, header, signature);
      const described = `case ${n}: ${JSON.stringify(made).slice(0, 200)}`;
      try {
        const result = await verify(request(API, [proof]));
        if (result.ok) problems.push(`ACCEPTED ${described}`);
        else if (result.failure.status !== 401) problems.push(`status ${result.failure.status}: ${described}`);
      } catch (err) {
        problems.push(`threw ${String(err)}: ${described}`);
      }
    }
    expect(problems).toEqual([]);
  });
});
