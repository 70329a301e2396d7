import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ManualClock } from '../../src/clock.js';
import type { TokenwardenError } from '../../src/errors.js';
import { createVerifier } from '../../src/server/index.js';
import { startFaultServer, json } from '../support/fault-server.js';
import {
  API_RESOURCE,
  OPAQUE_RESOURCE,
  type TestAuthorizationServer,
  startAuthorizationServer,
} from '../support/authorization-server.js';
import { issueToken } from './support.js';

let as: TestAuthorizationServer;
let opaque: string;

const options = () => ({
  issuer: as.issuer,
  introspection: { clientId: as.clients.rs.clientId, clientSecret: as.clients.rs.clientSecret },
  allowInsecureRequests: true,
});

beforeAll(async () => {
  as = await startAuthorizationServer({ accessTokenTtl: 3600 });
  opaque = (await issueToken(as, { resource: OPAQUE_RESOURCE, scope: 'read write' })).accessToken;
});
afterAll(() => as.close());

describe('introspection (RFC 7662) against a real authorization server', () => {
  it('accepts an active opaque token: uid, scopes, expiry, claims', async () => {
    const verify = createVerifier(options());
    expect(verify.strategy).toBe('introspection');
    const result = await verify(`Bearer ${opaque}`);
    if (!result.ok) throw new Error(`expected ok, got ${JSON.stringify(result.failure)}`);
    expect(result.auth.uid).toBe('svc');
    expect(result.auth.issuer).toBe(as.issuer);
    expect(result.auth.credentials).toMatchObject({ token: opaque, scopes: ['read', 'write'] });
    expect(result.auth.credentials.expiresAt).toBe((result.auth.extra.claims['exp'] as number) * 1000);
    expect(result.auth.extra).toMatchObject({ strategy: 'introspection', claims: { active: true, client_id: 'svc' } });
  });

  it('50 concurrent checks of one token make one introspection call, and the answer is cached', async () => {
    const verify = createVerifier(options());
    as.resetCounts();
    const results = await Promise.all(Array.from({ length: 50 }, () => verify(opaque)));
    for (const r of results) expect(r.ok).toBe(true);
    expect(as.counts.introspection).toBe(1);
    for (let i = 0; i < 10; i++) expect((await verify(opaque)).ok).toBe(true);
    expect(as.counts.introspection).toBe(1);
  });

  it('re-introspects after cacheMaxAge, and never serves an entry past exp', async () => {
    const clock = new ManualClock(Date.now());
    const verify = createVerifier({
      ...options(),
      clock,
      introspection: { ...options().introspection, cacheMaxAge: '10s' },
    });
    as.resetCounts();
    const first = await verify(opaque);
    expect(first.ok && first.auth.ttl).toBe(10_000);
    await clock.advance(9_000);
    expect((await verify(opaque)).ok).toBe(true);
    expect(as.counts.introspection).toBe(1);
    await clock.advance(1_000);
    expect((await verify(opaque)).ok).toBe(true);
    expect(as.counts.introspection).toBe(2);

    const long = createVerifier({
      ...options(),
      clock,
      cache: { maxAge: '1d' },
      introspection: { ...options().introspection, cacheMaxAge: '1d' },
    });
    const cached = await long(opaque);
    if (!cached.ok) throw new Error('expected ok');
    const exp = cached.auth.credentials.expiresAt as number;
    expect(cached.auth.ttl).toBe(exp - clock.now());
    await clock.advance(exp - clock.now());
    // The server still says active (its clock did not move); ours says the token has expired.
    expect(await long(opaque)).toMatchObject({
      ok: false,
      failure: { error: 'invalid_token', description: 'token expired' },
    });
  });

  it('refuses inactive tokens and remembers that briefly', async () => {
    const clock = new ManualClock(Date.now());
    const verify = createVerifier({ ...options(), clock });
    as.resetCounts();
    for (let i = 0; i < 3; i++) {
      expect(await verify('no-such-token')).toEqual({
        ok: false,
        failure: { error: 'invalid_token', description: 'token is not active', status: 401 },
      });
    }
    expect(as.counts.introspection).toBe(1);
    await clock.advance(10_000);
    await verify('no-such-token');
    expect(as.counts.introspection).toBe(2);
  });

  it('refuses a revoked token', async () => {
    const token = (await issueToken(as, { resource: OPAQUE_RESOURCE })).accessToken;
    const verify = createVerifier(options());
    expect((await verify(token)).ok).toBe(true);
    const res = await fetch(new URL('/token/revocation', as.issuer), {
      method: 'POST',
      headers: {
        'content-type': 'application/x-www-form-urlencoded',
        authorization: `Basic ${Buffer.from(`svc:${as.clients.svc.clientSecret}`).toString('base64')}`,
      },
      body: new URLSearchParams({ token }),
    });
    expect(res.status).toBe(200);
    verify.clearCache();
    expect(await verify(token)).toMatchObject({ ok: false, failure: { description: 'token is not active' } });
  });

  it('an issuer function trusts an iss only when it answers true, for introspection as for JWTs', async () => {
    const jwt = (await issueToken(as, { scope: 'read' })).accessToken;
    const answers: [string, () => unknown, boolean][] = [
      ['true', () => true, true],
      ['a promise of true', () => Promise.resolve(true), true],
      ['false', () => false, false],
      ["'yes' (truthy, no decision)", () => 'yes', false],
      ['1', () => 1, false],
      ['an object', () => ({ trusted: false }), false],
      ["a promise of 'no'", () => Promise.resolve('no'), false],
    ];
    for (const [name, answer, trusted] of answers) {
      const seen: string[] = [];
      const issuer = (iss: string) => (seen.push(iss), answer()) as boolean;
      const introspected = await createVerifier({
        ...options(),
        issuer,
        introspectionEndpoint: new URL('/token/introspection', as.issuer).href,
      })(opaque);
      const verified = await createVerifier({
        issuer,
        jwksUri: new URL('/jwks', as.issuer).href,
        audience: API_RESOURCE,
        allowInsecureRequests: true,
      })(jwt);
      expect(seen, name).toEqual([as.issuer, as.issuer]); // the function was asked, in both paths
      for (const result of [introspected, verified]) {
        if (trusted) expect(result.ok, name).toBe(true);
        else expect(result, name).toMatchObject({ ok: false, failure: { status: 401, error: 'invalid_token' } });
      }
    }
  });

  it('checks the audience when one is configured', async () => {
    const right = createVerifier({ ...options(), audience: OPAQUE_RESOURCE, strategy: 'introspection' });
    expect((await right(opaque)).ok).toBe(true);
    const wrong = createVerifier({ ...options(), audience: 'https://other.example.test', strategy: 'introspection' });
    expect(await wrong(opaque)).toMatchObject({
      ok: false,
      failure: { description: 'unexpected audience', status: 401 },
    });
  });

  it("'auto': JWTs are verified locally, other tokens introspected", async () => {
    const verify = createVerifier({ ...options(), audience: [API_RESOURCE, OPAQUE_RESOURCE] });
    expect(verify.strategy).toBe('auto');
    const jwt = (await issueToken(as)).accessToken;
    as.resetCounts();
    const local = await verify(jwt);
    expect(local.ok && local.auth.extra.strategy).toBe('jwt');
    expect(as.counts.introspection).toBe(0);
    const remote = await verify(opaque);
    expect(remote.ok && remote.auth.extra.strategy).toBe('introspection');
    expect(as.counts.introspection).toBe(1);
  });

  it('a JWT the server will not introspect is an invalid token, not an outage', async () => {
    const verify = createVerifier(options());
    const jwt = (await issueToken(as)).accessToken;
    expect(await verify(jwt)).toMatchObject({ ok: false, failure: { error: 'invalid_token', status: 401 } });
  });

  it('the endpoint down, failing or slow: 503 temporarily_unavailable, not cached, reported without the token', async () => {
    const errors: TokenwardenError[] = [];
    // Each failure backs the endpoint off (at most 16 s after five): the clock moves past it between faults.
    const clock = new ManualClock(Date.now());
    const verify = createVerifier({ ...options(), timeout: '400ms', clock, onError: (e) => errors.push(e) });
    expect((await verify('warm-up-discovery')).ok).toBe(false);
    as.resetCounts();
    for (const fault of ['refuse', 'reset', '503', 'html500', 'slow'] as const) {
      await as.setFault(fault);
      expect(await verify(opaque)).toEqual({
        ok: false,
        failure: {
          error: 'temporarily_unavailable',
          description: 'token could not be verified now',
          status: 503,
          retryAfter: expect.any(Number),
        },
      });
      await as.clearFault();
      await clock.advance(20_000);
    }
    expect(errors.map((e) => e.code)).toEqual([
      'ERR_NETWORK',
      'ERR_NETWORK',
      'ERR_HTTP_STATUS',
      'ERR_HTTP_STATUS',
      'ERR_TIMEOUT',
    ]);
    for (const e of errors) {
      expect(JSON.stringify(e.toJSON())).not.toContain(opaque);
      expect(e.message).not.toContain(opaque);
    }
    expect((await verify(opaque)).ok).toBe(true);
  });

  it('wrong resource server credentials: 503 (our configuration), never 401 (the token)', async () => {
    const errors: TokenwardenError[] = [];
    const verify = createVerifier({
      ...options(),
      introspection: { clientId: 'rs', clientSecret: 'wrong' },
      onError: (e) => errors.push(e),
    });
    expect(await verify(opaque)).toMatchObject({ ok: false, failure: { status: 503 } });
    expect(errors[0]).toMatchObject({ code: 'ERR_OAUTH', error: 'invalid_client' });
    expect(JSON.stringify(errors[0]?.toJSON())).not.toContain('wrong');
  });

  it('an explicit endpoint needs no discovery; garbage answers are 503', async () => {
    const fault = await startFaultServer();
    // A garbage answer backs the endpoint off: the clock moves past it before the next case.
    const clock = new ManualClock(Date.now());
    const next = () => clock.advance(60_000);
    try {
      const verify = createVerifier({
        introspection: { endpoint: `${fault.url}/introspect`, clientId: 'rs', clientSecret: 's' },
        allowInsecureRequests: true,
        clock,
      });
      fault.handle((_req, res) =>
        json(res, 200, { active: true, sub: 'alice', scope: 'read', exp: Math.floor(clock.now() / 1000) + 60 }),
      );
      const ok = await verify('tok-1');
      expect(ok.ok && ok.auth.uid).toBe('alice');
      expect(fault.requests[0]).toMatchObject({ method: 'POST', path: '/introspect' });
      expect(fault.requests[0]?.body).toContain('token=tok-1');
      expect(fault.requests[0]?.headers.authorization).toMatch(/^Basic /);
      fault.handle((_req, res) => json(res, 200, 'not json at all'));
      expect(await verify('tok-2')).toMatchObject({ failure: { status: 503 } });
      await next();
      fault.handle((_req, res) => json(res, 200, { active: 'yes' }));
      expect(await verify('tok-3')).toMatchObject({ failure: { status: 503 } });
      await next();
      fault.handle((_req, res) => json(res, 200, { active: true, cnf: { jkt: 'x' } }));
      expect(await verify('tok-4')).toMatchObject({
        failure: { status: 401, description: 'sender-constrained token presented as bearer' },
      });
      fault.handle((_req, res) => json(res, 200, { active: true, token_type: 'refresh_token' }));
      expect(await verify('tok-5')).toMatchObject({ failure: { status: 401, description: 'not an access token' } });
      fault.handle((_req, res) => json(res, 200, { active: true, iss: 'https://evil.example.test' }));
      const pinned = createVerifier({
        issuer: 'https://login.example.test',
        introspection: { endpoint: `${fault.url}/introspect`, clientId: 'rs', clientSecret: 's' },
        allowInsecureRequests: true,
      });
      expect(await pinned('tok-6')).toMatchObject({ failure: { status: 401, description: 'unexpected issuer' } });
    } finally {
      await fault.close();
    }
  });

  it('a redirect from the introspection endpoint (Django without the trailing slash): 503, and the error says where it points', async () => {
    const fault = await startFaultServer((req, res) => {
      res.writeHead(301, { location: `${req.url}/?token=echoed-${'t'.repeat(8)}` });
      res.end();
    });
    const errors: TokenwardenError[] = [];
    try {
      const verify = createVerifier({
        introspection: { endpoint: `${fault.url}/o/introspect`, clientId: 'rs', clientSecret: 's3cret-value' },
        allowInsecureRequests: true,
        onError: (e) => errors.push(e),
      });
      expect(await verify('opaque-token-value')).toMatchObject({ ok: false, failure: { status: 503 } });
      expect(fault.requests).toHaveLength(1); // not followed
      expect(errors[0]).toMatchObject({ code: 'ERR_HTTP_STATUS', status: 301 });
      expect(errors[0]?.message).toContain(`redirected (301) to ${fault.url}/o/introspect/, which is not followed`);
      expect(JSON.stringify(errors[0]?.toJSON())).not.toMatch(/echoed|opaque-token-value|s3cret-value/);
    } finally {
      await fault.close();
    }
  });

  it('introspectionEndpoint: for an issuer whose metadata has none (no discovery needed then)', async () => {
    const server = await startFaultServer();
    server.handle((req, res) => {
      if (req.url?.startsWith('/.well-known/'))
        return json(res, 200, { issuer: server.url, jwks_uri: `${server.url}/jwks` });
      return json(res, 200, { active: true, iss: server.url, sub: 'alice', exp: Math.floor(Date.now() / 1000) + 60 });
    });
    try {
      const errors: TokenwardenError[] = [];
      const base = {
        issuer: server.url,
        introspection: { clientId: 'rs', clientSecret: 's' },
        allowInsecureRequests: true,
      };
      const discovered = createVerifier({ ...base, onError: (e) => errors.push(e) });
      expect(await discovered('tok')).toMatchObject({ ok: false, failure: { status: 503 } });
      expect(errors[0]).toMatchObject({ code: 'ERR_UNSUPPORTED' });
      expect(errors[0]?.message).toContain('introspectionEndpoint');

      server.requests.length = 0;
      const explicit = createVerifier({ ...base, introspectionEndpoint: `${server.url}/introspect` });
      const result = await explicit('tok');
      expect(result.ok && result.auth).toMatchObject({ uid: 'alice', issuer: server.url });
      expect(server.requests.map((r) => r.path)).toEqual(['/introspect']);
      // The same option nested, and both agreeing, work; two different endpoints are a configuration error.
      const nested = { ...base, introspection: { ...base.introspection, endpoint: `${server.url}/introspect` } };
      expect((await createVerifier(nested)('tok')).ok).toBe(true);
      expect((await createVerifier({ ...nested, introspectionEndpoint: `${server.url}/introspect` })('tok')).ok).toBe(
        true,
      );
      expect(() => createVerifier({ ...nested, introspectionEndpoint: `${server.url}/other` })).toThrow(
        expect.objectContaining({ code: 'ERR_CONFIG' }) as unknown as Error,
      );
    } finally {
      await server.close();
    }
  });
});
