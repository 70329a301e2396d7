import { createHmac, randomBytes } from 'node:crypto';
import { SignJWT, exportSPKI, generateKeyPair, importJWK } from 'jose';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { ManualClock } from '../../src/clock.js';
import { TokenwardenError } from '../../src/errors.js';
import { RecentKeys } from '../../src/server/cache.js';
import { bearerAuth as expressAuth } from '../../src/server/adapters/express.js';
import {
  ASYMMETRIC_ALGORITHMS,
  RFC9068_CLAIMS,
  type Verifier,
  createVerifier,
  protectedResource,
  requirements,
} from '../../src/server/index.js';
import {
  API_RESOURCE,
  type TestAuthorizationServer,
  newSigningKey,
  publicJwk,
  startAuthorizationServer,
} from '../support/authorization-server.js';
import { forge, issueToken, segment, signRaw } from './support.js';

let as: TestAuthorizationServer;
let verify: Verifier;
let readToken: string;
let readWriteToken: string;

const options = () => ({ issuer: as.issuer, audience: API_RESOURCE, allowInsecureRequests: true });

beforeAll(async () => {
  as = await startAuthorizationServer({ accessTokenTtl: 300 });
  verify = createVerifier(options());
  readToken = (await issueToken(as, { scope: 'read' })).accessToken;
  readWriteToken = (await issueToken(as, { scope: 'read write' })).accessToken;
});
afterAll(() => as.close());

const invalid = (description?: string) => ({
  ok: false,
  failure: expect.objectContaining({
    error: 'invalid_token',
    status: 401,
    ...(description !== undefined && { description }),
  }),
});

describe('createVerifier: JWT access tokens from a real authorization server', () => {
  it('accepts a valid token given raw, as a header value, or in a Fetch Request', async () => {
    for (const input of [
      readWriteToken,
      `Bearer ${readWriteToken}`,
      `bearer   ${readWriteToken}`,
      new Request('http://api.test/', { headers: { authorization: `Bearer ${readWriteToken}` } }),
    ]) {
      const result = await verify(input);
      expect(result.ok).toBe(true);
      if (!result.ok) continue;
      expect(result.auth.uid).toBe('svc');
      expect(result.auth.issuer).toBe(as.issuer);
      expect(result.auth.credentials).toMatchObject({
        token: readWriteToken,
        tokenType: 'Bearer',
        scopes: ['read', 'write'],
      });
      expect(result.auth.credentials.expiresAt).toBe((result.auth.extra.claims['exp'] as number) * 1000);
      expect(result.auth.info.clientId).toBe('svc');
      expect(result.auth.extra).toMatchObject({ strategy: 'jwt', header: { alg: 'RS256', typ: 'at+jwt' } });
      expect(result.auth.ttl).toBeGreaterThan(0);
      expect(result.auth.ttl).toBeLessThanOrEqual(300_000);
    }
  });

  it('refuses a token for another audience', async () => {
    const other = createVerifier({ ...options(), audience: 'https://other.example.test' });
    expect(await other(readToken)).toEqual(invalid('unexpected audience'));
    const either = createVerifier({ ...options(), audience: ['https://other.example.test', API_RESOURCE] });
    expect((await either(readToken)).ok).toBe(true);
  });

  it('refuses a token from another issuer, even signed with a trusted key', async () => {
    expect(await verify(await forge(as, { iss: 'https://evil.example.test' }))).toEqual(invalid('unexpected issuer'));
    const several = createVerifier({ ...options(), issuer: ['https://other.example.test', as.issuer] });
    expect((await several(readToken)).ok).toBe(true);
    expect(await several(await forge(as, { iss: 'https://evil.example.test' }))).toEqual(invalid('unexpected issuer'));
  });

  it('trusts issuers chosen by a resolver, with an explicit jwksUri', async () => {
    const seen: string[] = [];
    const resolved = createVerifier({
      ...options(),
      issuer: (iss) => {
        seen.push(iss);
        return iss === as.issuer;
      },
      jwksUri: `${as.issuer}/jwks`,
    });
    expect((await resolved(readToken)).ok).toBe(true);
    expect(await resolved(await forge(as, { iss: 'https://evil.example.test' }))).toEqual(invalid('unexpected issuer'));
    expect(seen).toEqual([as.issuer, 'https://evil.example.test']);
  });

  it('checks scopes (all, any) and the claim check on every call: 403 insufficient_scope', async () => {
    expect(await verify(readToken, { requiredScopes: ['write'] })).toEqual({
      ok: false,
      failure: { error: 'insufficient_scope', description: 'insufficient scope', status: 403, scope: 'write' },
    });
    expect((await verify(readWriteToken, { requiredScopes: ['read', 'write'] })).ok).toBe(true);
    expect((await verify(readToken, { anyScopes: ['write', 'read'] })).ok).toBe(true);
    expect(await verify(readToken, { anyScopes: ['write', 'admin'] })).toMatchObject({
      failure: { error: 'insufficient_scope', status: 403, scope: 'write admin' },
    });
    const tenant = createVerifier({ ...options(), claimCheck: (auth) => auth.extra.claims['client_id'] === 'other' });
    expect(await tenant(readToken)).toMatchObject({
      failure: { error: 'insufficient_scope', description: 'claim check failed', status: 403 },
    });
    // The requirement of the verifier, then of a call: the cached validation is the same.
    const writer = createVerifier({ ...options(), requiredScopes: ['write'] });
    expect((await writer(readToken)).ok).toBe(false);
    expect((await writer(readToken, { requiredScopes: ['read'] })).ok).toBe(true);
  });

  it('reads scopes from scp (array, as Okta writes it; a space-separated string, as Entra ID does) too', async () => {
    const result = await verify(await forge(as, { scope: undefined, scp: ['read', 'admin'] }));
    expect(result.ok && result.auth.credentials.scopes).toEqual(['read', 'admin']);
    const entra = await verify(await forge(as, { scope: undefined, scp: 'read  admin' }));
    expect(entra.ok && entra.auth.credentials.scopes).toEqual(['read', 'admin']);
  });

  it('typ as other servers write it: absent, JWT, at+jwt, application/at+jwt in any case; aud a string or a list', async () => {
    for (const typ of [undefined, 'JWT', 'jwt', 'at+jwt', 'AT+JWT', 'application/at+jwt', 'application/jwt']) {
      expect((await verify(await forge(as, {}, { typ }))).ok, String(typ)).toBe(true);
    }
    const strict = createVerifier({ ...options(), strict: true });
    expect((await strict(await forge(as, {}, { typ: 'application/at+jwt' }))).ok).toBe(true);
    expect(await strict(await forge(as, {}, { typ: undefined }))).toEqual(invalid('unexpected token type'));
    expect((await verify(await forge(as, { aud: ['https://other.example.test', API_RESOURCE] }))).ok).toBe(true);
  });
});

describe('hostile tokens: always { ok: false, invalid_token, 401 }, never a throw', () => {
  it('alg: none', async () => {
    const claims = JSON.parse(Buffer.from(readToken.split('.')[1] as string, 'base64url').toString());
    const none = `${segment({ alg: 'none', typ: 'at+jwt' })}.${segment(claims)}.`;
    expect(await verify(none)).toEqual(invalid('algorithm not allowed'));
    expect(await verify(`${none}${segment('x')}`)).toEqual(invalid('algorithm not allowed'));
  });

  it('the exported algorithm lists cannot be widened by another module (a push of none or HS256)', () => {
    for (const list of [ASYMMETRIC_ALGORITHMS, RFC9068_CLAIMS] as unknown as string[][]) {
      expect(() => list.push('none')).toThrow(TypeError);
    }
    expect(ASYMMETRIC_ALGORITHMS).not.toContain('none');
  });

  it('HS256 signed with the RSA public key (key confusion)', async () => {
    const pub = publicJwk(as.signingKeys[0]!);
    const pem = await exportSPKI((await importJWK(pub, 'RS256', { extractable: true })) as CryptoKey);
    const claims = JSON.parse(Buffer.from(readToken.split('.')[1] as string, 'base64url').toString());
    for (const secret of [pem, JSON.stringify(pub), pub.n as string]) {
      const input = `${segment({ alg: 'HS256', typ: 'at+jwt', kid: pub.kid })}.${segment(claims)}`;
      const mac = createHmac('sha256', secret).update(input).digest('base64url');
      expect(await verify(`${input}.${mac}`)).toEqual(invalid('algorithm not allowed'));
    }
  });

  it('an unknown crit header', async () => {
    const key = as.signingKeys[0]!;
    const claims = JSON.parse(Buffer.from(readToken.split('.')[1] as string, 'base64url').toString());
    const header = { alg: 'RS256', typ: 'at+jwt', kid: key.kid, crit: ['urn:example:ext'], 'urn:example:ext': true };
    expect(await verify(signRaw(header, claims, key))).toEqual(invalid('unsupported token'));
    // The same token without crit is fine: only the unknown critical extension is refused.
    const { crit: _c, 'urn:example:ext': _e, ...plain } = header;
    expect((await verify(signRaw(plain, claims, key))).ok).toBe(true);
  });

  it('a typ other than JWT / at+jwt; strict mode wants at+jwt', async () => {
    expect(await verify(await forge(as, {}, { typ: 'dpop+jwt' }))).toEqual(invalid('unexpected token type'));
    expect(await verify(await forge(as, {}, { typ: 'logout+jwt' }))).toEqual(invalid('unexpected token type'));
    expect((await verify(await forge(as, {}, { typ: 'JWT' }))).ok).toBe(true);
    const strict = createVerifier({ ...options(), strict: true });
    expect(await strict(await forge(as, {}, { typ: 'JWT' }))).toEqual(invalid('unexpected token type'));
    expect(await strict(await forge(as, { jti: undefined }))).toEqual(invalid('missing required claim'));
    expect((await strict(await forge(as))).ok).toBe(true);
  });

  it('nbf and iat in the future: within clockTolerance accepted, beyond it refused (iat only with maxTokenAge)', async () => {
    const now = Math.floor(Date.now() / 1000);
    const tolerant = createVerifier({ ...options(), clockTolerance: '30s' });
    expect((await tolerant(await forge(as, { nbf: now + 20 }))).ok).toBe(true);
    expect(await tolerant(await forge(as, { nbf: now + 60 }))).toEqual(invalid('token not yet valid'));
    // RFC 7519 does not say an iat in the future makes a token invalid: only maxTokenAge looks at it.
    expect((await verify(await forge(as, { iat: now + 3600 }))).ok).toBe(true);
    const young = createVerifier({ ...options(), maxTokenAge: '5m', clockTolerance: '30s' });
    expect((await young(await forge(as, { iat: now + 20 }))).ok).toBe(true);
    expect(await young(await forge(as, { iat: now + 60 }))).toEqual(invalid('token issued in the future'));
  });

  it('expired, not yet valid, no exp, too old', async () => {
    const now = Math.floor(Date.now() / 1000);
    expect(await verify(await forge(as, { exp: now - 10 }))).toEqual(invalid('token expired'));
    expect(await verify(await forge(as, { nbf: now + 60 }))).toEqual(invalid('token not yet valid'));
    expect(await verify(await forge(as, { exp: undefined }))).toEqual(invalid('missing required claim'));
    const young = createVerifier({ ...options(), maxTokenAge: '1m' });
    expect(await young(await forge(as, { iat: now - 120 }))).toEqual(invalid('token too old'));
    const tolerant = createVerifier({ ...options(), clockTolerance: '30s' });
    expect((await tolerant(await forge(as, { exp: now - 10 }))).ok).toBe(true);
  });

  it('a tampered payload or signature', async () => {
    const [h, p, s] = readToken.split('.') as [string, string, string];
    const claims = JSON.parse(Buffer.from(p, 'base64url').toString());
    expect(await verify(`${h}.${segment({ ...claims, scope: 'read write admin' })}.${s}`)).toEqual(
      invalid('invalid signature'),
    );
    const flipped = s.slice(0, 10) + (s[10] === 'A' ? 'B' : 'A') + s.slice(11);
    expect(await verify(`${h}.${p}.${flipped}`)).toEqual(invalid('invalid signature'));
  });

  it('a token sharing all but its signature with a cached valid one gets no cache hit (GHSA-rp9m-7r4c-75qg)', async () => {
    const fresh = createVerifier(options());
    expect((await fresh(readToken)).ok).toBe(true);
    const [h, p] = readToken.split('.');
    expect(await fresh(`${h}.${p}.${segment('forged-signature')}`)).toEqual(invalid('invalid signature'));
    expect(await fresh(`${h}.${p}`)).toEqual(invalid('malformed token'));
  });

  it("a token carrying a cached valid token's signature under another payload gets no hit (recent keys compare whole tokens)", async () => {
    const fresh = createVerifier(options());
    expect((await fresh(readToken)).ok).toBe(true);
    const [h, , sig] = readToken.split('.');
    const forged = `${h}.${segment({ sub: 'mallory', scope: 'admin' })}.${sig}`;
    expect(await fresh(forged)).toEqual(invalid('invalid signature'));
    expect(await fresh(`Bearer ${forged}`)).toEqual(invalid('invalid signature'));
    expect((await fresh(readToken)).ok).toBe(true);
  });

  it('malformed base64, malformed JSON, garbage', async () => {
    for (const token of [
      'garbage',
      'a.b.c',
      'eyJ.eyJ.eyJ',
      `${segment('{"alg":"RS256"')}.${segment({ sub: 'x' })}.sig`,
      `${segment({ alg: 'RS256', kid: as.signingKeys[0]!.kid })}.${segment('not json')}.sig`,
      `${segment([1, 2])}.${segment({})}.sig`,
      `${readToken}.extra`,
      'x'.repeat(500),
    ]) {
      expect(await verify(token)).toEqual(invalid());
    }
    // Characters no bearer token can have (RFC 6750 b64token).
    for (const token of ['ab$cd', 'ab%20cd', 'a"b', '日本語'])
      expect(await verify(token)).toEqual(invalid('malformed token'));
  });

  it('100 KB tokens are refused before any parsing or network call', async () => {
    const fresh = createVerifier(options());
    const before = { ...as.counts };
    const big = 'eyJ' + 'A'.repeat(100 * 1024);
    for (const input of [
      big,
      `Bearer ${big}`,
      new Request('http://api.test/', { headers: { authorization: `Bearer ${big}` } }),
    ]) {
      expect(await fresh(input)).toEqual(invalid('token too large'));
    }
    expect(as.counts.jwks).toBe(before.jwks);
    expect(as.counts.discovery).toBe(before.discovery);
  });

  it('100 random kids cause at most one JWKS fetch more', async () => {
    const fresh = createVerifier(options());
    expect((await fresh(readToken)).ok).toBe(true);
    const attacker = await generateKeyPair('RS256');
    const tokens = await Promise.all(
      Array.from({ length: 100 }, () =>
        new SignJWT({ iss: as.issuer, aud: API_RESOURCE, sub: 'x', exp: Math.floor(Date.now() / 1000) + 60 })
          .setProtectedHeader({ alg: 'RS256', kid: randomBytes(8).toString('hex') })
          .sign(attacker.privateKey),
      ),
    );
    as.resetCounts();
    const concurrent = await Promise.all(tokens.slice(0, 50).map((t) => fresh(t)));
    for (const t of tokens.slice(50)) expect(await fresh(t)).toEqual(invalid('unknown signing key'));
    for (const r of concurrent) expect(r).toEqual(invalid('unknown signing key'));
    expect(as.counts.jwks).toBeLessThanOrEqual(1);
    // A cold verifier: the first fetch is shared by all, and unknown kids add none within the cooldown.
    const cold = createVerifier(options());
    as.resetCounts();
    await Promise.all(tokens.map((t) => cold(t)));
    expect(as.counts.jwks).toBe(1);
  });

  it('a token signed by a key the JWKS does not have', async () => {
    const stranger = await newSigningKey();
    expect(await verify(await forge(as, {}, {}, stranger))).toEqual(invalid('unknown signing key'));
  });

  it('a sender-constrained (cnf) token presented as bearer', async () => {
    expect(await verify(await forge(as, { cnf: { jkt: 'abc' } }))).toEqual(
      invalid('sender-constrained token presented as bearer'),
    );
  });
});

describe('validation cache', () => {
  it('serves repeated tokens from the cache and never past exp (injected clock)', async () => {
    const clock = new ManualClock(Date.now());
    const cached = createVerifier({ ...options(), clock });
    const token = await forge(as, { exp: Math.floor(clock.now() / 1000) + 60 });
    expect((await cached(token)).ok).toBe(true);
    expect(cached.cacheSize).toBe(1);
    await clock.advance(30_000);
    const hit = await cached(token);
    expect(hit.ok && hit.auth.ttl).toBeLessThanOrEqual(30_000);
    await clock.advance(31_000);
    expect(await cached(token)).toEqual(invalid('token expired'));
  });

  it('caps an entry at cache.maxAge, then verifies again', async () => {
    const clock = new ManualClock(Date.now());
    const cached = createVerifier({ ...options(), clock, cache: { maxAge: '10s' } });
    const result = await cached(readToken);
    expect(result.ok && result.auth.ttl).toBe(10_000);
    await clock.advance(10_000);
    const again = await cached(readToken);
    expect(again.ok && again.auth.ttl).toBe(10_000);
  });

  it('honours nbf: a not-yet-valid token is not remembered as bad', async () => {
    const clock = new ManualClock(Date.now());
    const cached = createVerifier({ ...options(), clock });
    const token = await forge(as, { nbf: Math.floor(clock.now() / 1000) + 30 });
    expect(await cached(token)).toEqual(invalid('token not yet valid'));
    await clock.advance(31_000);
    expect((await cached(token)).ok).toBe(true);
  });

  it('is bounded (LRU) and can be disabled', async () => {
    const small = createVerifier({ ...options(), cache: { maxEntries: 2 } });
    for (let i = 0; i < 5; i++) await small(await forge(as));
    expect(small.cacheSize).toBe(2);
    const none = createVerifier({ ...options(), cache: false });
    expect((await none(readToken)).ok).toBe(true);
    expect(none.cacheSize).toBe(0);
  });

  it('gives out frozen results: one request cannot change what the next one sees', async () => {
    const result = await verify(readToken);
    if (!result.ok) throw new Error('expected ok');
    expect(Object.isFrozen(result.auth.credentials.scopes)).toBe(true);
    expect(Object.isFrozen(result.auth.extra.claims)).toBe(true);
    expect(() => (result.auth.credentials.scopes as string[]).push('admin')).toThrow(TypeError);
  });
});

describe('configuration errors throw at construction', () => {
  const cases: [string, Record<string, unknown>, string][] = [
    ['no audience', { audience: undefined }, 'ERR_CONFIG'],
    ['no issuer', { issuer: undefined }, 'ERR_CONFIG'],
    ['http issuer without allowInsecureRequests', { allowInsecureRequests: false }, 'ERR_INSECURE_ISSUER'],
    ['HS256', { algorithms: ['HS256'] }, 'ERR_CONFIG'],
    ['none', { algorithms: ['none'] }, 'ERR_CONFIG'],
    ['empty algorithms', { algorithms: [] }, 'ERR_CONFIG'],
    ['introspection strategy without introspection', { strategy: 'introspection' }, 'ERR_CONFIG'],
    ['unknown strategy', { strategy: 'magic' }, 'ERR_CONFIG'],
    ['bad tokenLocations', { tokenLocations: ['cookie'] }, 'ERR_CONFIG'],
    ['scope with a space', { requiredScopes: ['read write'] }, 'ERR_CONFIG'],
    ['bad duration', { clockTolerance: 'soon' }, 'ERR_CONFIG'],
    ['resolver without jwksUri', { issuer: () => true }, 'ERR_CONFIG'],
  ];
  it.each(cases)('%s', (_name, overrides, code) => {
    expect(() => createVerifier({ ...options(), ...overrides } as never)).toThrow(
      expect.objectContaining({ code }) as unknown as Error,
    );
    try {
      createVerifier({ ...options(), ...overrides } as never);
    } catch (err) {
      expect(err).toBeInstanceOf(TokenwardenError);
    }
  });
});

describe('scope names outside RFC 6749 §3.3 scope-token syntax are refused, as protectedResource refuses them', () => {
  const bad = ['"admin"', 'wr\\ite', 'read write', 'écrire', 'read\u0000', 'tab\tbed', '', 'read\u00a0'];
  const config = expect.objectContaining({ code: 'ERR_CONFIG' }) as unknown as Error;

  it('at construction: createVerifier, bearerAuth with its own verifier or a shared one, protectedResource', () => {
    const verifier = createVerifier(options());
    for (const scope of bad) {
      for (const name of ['requiredScopes', 'anyScopes'] as const) {
        const route = { [name]: ['read', scope] };
        expect(() => createVerifier({ ...options(), ...route }), JSON.stringify(scope)).toThrow(config);
        expect(() => expressAuth({ ...options(), ...route }), JSON.stringify(scope)).toThrow(config);
        expect(() => expressAuth({ verifier, ...route }), JSON.stringify(scope)).toThrow(config);
        expect(() => requirements(route), JSON.stringify(scope)).toThrow(config);
      }
      // The same rule protectedResource applies to scopes_supported.
      expect(() =>
        protectedResource({ resource: 'https://api.example.com', scopesSupported: ['read', scope] }),
      ).toThrow(config);
    }
    // Every scope-token is fine: Entra ID's URIs, Cognito's resource-server/scope, punctuation.
    for (const scope of [
      'api://3f2a8c91-1234/Orders.Read',
      'orders-api/read',
      'a:b',
      "x!#$%&'()*+,-./;<=>?@[]^_`{|}~",
    ]) {
      expect(() => createVerifier({ ...options(), requiredScopes: [scope], anyScopes: [scope] })).not.toThrow();
    }
  });

  it('per call: verify() rejects with ERR_CONFIG (the caller’s mistake), and names no token', async () => {
    for (const scope of bad) {
      for (const name of ['requiredScopes', 'anyScopes'] as const) {
        const refused = verify(`Bearer ${readToken}`, { [name]: [scope] });
        await expect(refused, JSON.stringify(scope)).rejects.toThrow(config);
        await expect(refused).rejects.toBeInstanceOf(TokenwardenError);
        await expect(refused).rejects.not.toThrow(readToken);
      }
    }
    expect(
      await verify(`Bearer ${readToken}`, { requiredScopes: ['read'], anyScopes: ['read', 'write'] }),
    ).toMatchObject({ ok: true });
  });
});

describe('key rotation (restart the authorization server with new keys on the same issuer)', () => {
  it('fetches the new key once, after the cooldown; old tokens follow the published JWKS', async () => {
    const first = await startAuthorizationServer({ accessTokenTtl: 300 });
    const { issuer, port } = first;
    const oldKey = first.signingKeys[0]!;
    const oldToken = (await issueToken(first)).accessToken;
    const rotating = createVerifier({
      issuer,
      audience: API_RESOURCE,
      allowInsecureRequests: true,
      jwks: { cooldown: '300ms' },
    });
    expect((await rotating(oldToken)).ok).toBe(true);
    expect(first.counts.jwks).toBe(1);
    await first.close();

    // New key first, old key still published (the usual overlap).
    const newKey = await newSigningKey();
    const second = await startAuthorizationServer({ accessTokenTtl: 300, port, signingKeys: [newKey, oldKey] });
    try {
      const newToken = (await issueToken(second)).accessToken;
      expect(JSON.parse(Buffer.from(newToken.split('.')[0]!, 'base64url').toString()).kid).toBe(newKey.kid);
      // Once the cooldown since the last fetch has passed (unknown kids within it: see the random-kid test),
      // concurrent checks of the new kid share one fetch.
      await new Promise((r) => setTimeout(r, 350));
      const results = await Promise.all(Array.from({ length: 10 }, () => rotating(newToken)));
      for (const r of results) expect(r.ok).toBe(true);
      expect(second.counts.jwks).toBe(1);
      rotating.clearCache();
      expect((await rotating(oldToken)).ok).toBe(true); // still published
    } finally {
      await second.close();
    }

    // The old key withdrawn: old tokens are refused once the JWKS is fetched again.
    const third = await startAuthorizationServer({ accessTokenTtl: 300, port, signingKeys: [newKey] });
    try {
      await new Promise((r) => setTimeout(r, 350));
      const stranger = await forge(third, {}, {}, await newSigningKey()); // unknown kid → refetch
      expect(await rotating(stranger)).toEqual(invalid('unknown signing key'));
      expect(third.counts.jwks).toBe(1);
      rotating.clearCache();
      expect(await rotating(oldToken)).toEqual(invalid('unknown signing key'));
    } finally {
      await third.close();
    }
  });
});

describe('JWKS or discovery unreachable: 503 temporarily_unavailable, never cached, never thrown', () => {
  it('answers 503 while the server is down and recovers after', async () => {
    const down = await startAuthorizationServer({ accessTokenTtl: 300 });
    const token = (await issueToken(down)).accessToken;
    const errors: TokenwardenError[] = [];
    // Each failure backs the endpoint off (at most 8 s after four): the clock moves past it between faults.
    const clock = new ManualClock(Date.now());
    const fresh = createVerifier({
      issuer: down.issuer,
      audience: API_RESOURCE,
      allowInsecureRequests: true,
      timeout: '500ms',
      clock,
      onError: (e) => errors.push(e),
    });
    const unavailable = {
      ok: false,
      failure: {
        error: 'temporarily_unavailable',
        description: 'token could not be verified now',
        status: 503,
        retryAfter: expect.any(Number),
      },
    };
    try {
      for (const fault of ['refuse', '503', 'reset', 'slow'] as const) {
        await down.setFault(fault);
        expect(await fresh(token)).toEqual(unavailable);
        await down.clearFault();
        await clock.advance(10_000);
      }
      expect(errors.map((e) => e.code)).toEqual(['ERR_NETWORK', 'ERR_HTTP_STATUS', 'ERR_NETWORK', 'ERR_TIMEOUT']);
      expect((await fresh(token)).ok).toBe(true);

      // Discovery cached, JWKS not yet fetched: the JWKS request itself fails.
      const second = createVerifier({
        issuer: down.issuer,
        audience: API_RESOURCE,
        allowInsecureRequests: true,
        timeout: '500ms',
        clock,
        onError: (e) => errors.push(e),
      });
      errors.length = 0;
      for (const fault of ['503', 'html500', 'refuse'] as const) {
        await down.setFault(fault);
        expect(await second(token)).toEqual(unavailable);
        await down.clearFault();
        await clock.advance(10_000);
      }
      expect(errors.map((e) => e.code)).toEqual(['ERR_HTTP_STATUS', 'ERR_HTTP_STATUS', 'ERR_NETWORK']);
      expect(errors[0]?.message).toMatch(/^JWKS request to http:\/\/127\.0\.0\.1:\d+\/jwks answered 503$/);
      for (const e of errors) expect(JSON.stringify(e.toJSON())).not.toContain(token);
      expect((await second(token)).ok).toBe(true);
    } finally {
      await down.close();
    }
  });
});

describe('the recent-token memory holds only tokens the cache accepted', () => {
  it('remembers a valid token on its cache hit, never a forged, expired or garbage one, however often sent', async () => {
    const remembered: string[] = [];
    const spy = vi.spyOn(RecentKeys.prototype, 'remember').mockImplementation(function (this: RecentKeys, token) {
      remembered.push(token);
    });
    try {
      const fresh = createVerifier(options());
      const forged = await forge(as, {}, {}, { ...(await newSigningKey()), kid: as.signingKeys[0]!.kid as string });
      const expired = await forge(as, { exp: Math.floor(Date.now() / 1000) - 60 });
      const garbage = `${segment({ alg: 'RS256' })}.${segment({ sub: 'x' })}.AAAA`;
      // Each refused token three times: the second and third are negative cache hits.
      for (const token of [forged, expired, garbage]) {
        for (let i = 0; i < 3; i++) expect((await fresh(`Bearer ${token}`)).ok).toBe(false);
      }
      expect(remembered).toEqual([]);
      // A valid token: a miss, then a cache hit that remembers it.
      for (let i = 0; i < 3; i++) expect((await fresh(`Bearer ${readToken}`)).ok).toBe(true);
      expect(remembered).toEqual([readToken, readToken]);
    } finally {
      spy.mockRestore();
    }
  });
});
