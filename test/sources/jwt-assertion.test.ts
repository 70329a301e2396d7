/**
 * The assertion `jwtBearer()` signs (RFC 7523 §3, RFC 7523bis), as the real server receives it: who issued it,
 * for whom, for which audience, when, for how long, and a `jti` no other request repeats.
 */
import { decodeJwt, decodeProtectedHeader } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ManualClock } from '../../src/clock.js';
import { jwtBearer } from '../../src/sources/jwt-bearer.js';
import { type TestAuthorizationServer, startAuthorizationServer } from '../support/authorization-server.js';
import { exchanger, robotAssertion, tokenEndpointFetch } from './support.js';

let as: TestAuthorizationServer;
beforeAll(async () => {
  as = await startAuthorizationServer({ accessTokenTtl: 60 });
});
afterAll(() => as?.close());

/** The assertions `wire` carried to the token endpoint. */
const assertionsOf = (wire: ReturnType<typeof tokenEndpointFetch>): string[] =>
  wire.forms.map((form) => form.get('assertion') ?? '');

describe('the JWT bearer assertion tokenwarden signs', () => {
  it('iss the client id, sub, aud the issuer identifier as one string, iat from the clock, exp = iat + lifetime, a new jti each time', async () => {
    const clock = new ManualClock(Date.now());
    const wire = tokenEndpointFetch();
    const source = jwtBearer({
      ...exchanger(as),
      assertion: robotAssertion(as, { lifetime: '2m' }),
      clock,
      fetch: wire.fetch,
    });
    await source.fetchToken({});
    await clock.advance(1_000);
    await source.fetchToken({});
    const [a, b] = assertionsOf(wire).map((jwt) => decodeJwt(jwt));
    expect(a).toMatchObject({
      iss: 'exchanger',
      sub: 'robot@example.test',
      aud: as.issuer,
      iat: Math.floor((clock.now() - 1_000) / 1000),
    });
    expect(a!.exp! - a!.iat!).toBe(120);
    expect(b!.iat! - a!.iat!).toBe(1);
    expect(new Set([a!.jti, b!.jti]).size).toBe(2);
    expect(decodeProtectedHeader(assertionsOf(wire)[0]!)).toMatchObject({
      alg: 'ES256',
      typ: 'JWT',
      kid: as.clients.jwt.privateJwk.kid,
    });
  });

  it('claims given cannot replace the ones that make it single-use and short-lived', async () => {
    const wire = tokenEndpointFetch();
    const source = jwtBearer({
      ...exchanger(as),
      assertion: robotAssertion(as, { claims: { jti: 'fixed', exp: 4_102_444_800, tenant: 'acme' } }),
      fetch: wire.fetch,
    });
    await source.fetchToken({});
    const claims = decodeJwt(assertionsOf(wire)[0]!);
    expect(claims.jti).not.toBe('fixed');
    expect(claims.exp! - claims.iat!).toBe(300);
    expect(claims['tenant']).toBe('acme');
  });

  it('a lifetime of 0 (an assertion expired when signed) is refused at construction', () => {
    for (const lifetime of [0, '0s', '0ms'] as const) {
      expect(() =>
        jwtBearer({
          ...exchanger(as),
          assertion: robotAssertion(as, { lifetime }),
        }),
      ).toThrow(
        expect.objectContaining({ code: 'ERR_CONFIG', message: expect.stringContaining('assertion.lifetime') }),
      );
    }
  });
});
