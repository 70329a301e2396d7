/**
 * The assertion `jwtBearer()` signs (RFC 7523 §3, RFC 7523bis), as the real server receives it: who issued it,
 * for whom, for which audience, when, for how long, and a `jti` no other request repeats.
 */
import { decodeJwt, decodeProtectedHeader } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ManualClock } from '../../src/clock.js';
import type { FetchLike } from '../../src/http/transport.js';
import { jwtBearer } from '../../src/sources/jwt-bearer.js';
import { type TestAuthorizationServer, startAuthorizationServer } from '../support/authorization-server.js';

let as: TestAuthorizationServer;
beforeAll(async () => {
  as = await startAuthorizationServer({ accessTokenTtl: 60 });
});
afterAll(() => as?.close());

/** A fetch to the real server that keeps each assertion sent to its token endpoint. */
function recording(): { fetch: FetchLike; assertions: string[] } {
  const assertions: string[] = [];
  return {
    assertions,
    fetch: (input, init) => {
      const url = input instanceof Request ? input.url : String(input);
      if (new URL(url).pathname.endsWith('/token')) {
        assertions.push(new URLSearchParams(String(init?.body)).get('assertion') ?? '');
      }
      return fetch(input, init);
    },
  };
}

describe('the JWT bearer assertion tokenwarden signs', () => {
  it('iss the client id, sub, aud the issuer identifier as one string, iat from the clock, exp = iat + lifetime, a new jti each time', async () => {
    const clock = new ManualClock(Date.now());
    const wire = recording();
    const source = jwtBearer({
      issuer: as.issuer,
      allowInsecureRequests: true,
      clientId: 'exchanger',
      clientSecret: as.clients.exchanger.clientSecret,
      assertion: { privateKey: as.clients.jwt.privateJwk, subject: 'robot@example.test', lifetime: '2m' },
      clock,
      fetch: wire.fetch,
    });
    await source.fetchToken({});
    await clock.advance(1_000);
    await source.fetchToken({});
    const [a, b] = wire.assertions.map((jwt) => decodeJwt(jwt));
    expect(a).toMatchObject({
      iss: 'exchanger',
      sub: 'robot@example.test',
      aud: as.issuer,
      iat: Math.floor((clock.now() - 1_000) / 1000),
    });
    expect(a!.exp! - a!.iat!).toBe(120);
    expect(b!.iat! - a!.iat!).toBe(1);
    expect(new Set([a!.jti, b!.jti]).size).toBe(2);
    expect(decodeProtectedHeader(wire.assertions[0]!)).toMatchObject({
      alg: 'ES256',
      typ: 'JWT',
      kid: as.clients.jwt.privateJwk.kid,
    });
  });

  it('claims given cannot replace the ones that make it single-use and short-lived', async () => {
    const wire = recording();
    const source = jwtBearer({
      issuer: as.issuer,
      allowInsecureRequests: true,
      clientId: 'exchanger',
      clientSecret: as.clients.exchanger.clientSecret,
      assertion: {
        privateKey: as.clients.jwt.privateJwk,
        subject: 'robot@example.test',
        claims: { jti: 'fixed', exp: 4_102_444_800, tenant: 'acme' },
      },
      fetch: wire.fetch,
    });
    await source.fetchToken({});
    const claims = decodeJwt(wire.assertions[0]!);
    expect(claims.jti).not.toBe('fixed');
    expect(claims.exp! - claims.iat!).toBe(300);
    expect(claims['tenant']).toBe('acme');
  });

  it('a lifetime of 0 (an assertion expired when signed) is refused at construction', () => {
    for (const lifetime of [0, '0s', '0ms'] as const) {
      expect(() =>
        jwtBearer({
          issuer: as.issuer,
          allowInsecureRequests: true,
          clientId: 'exchanger',
          assertion: { privateKey: as.clients.jwt.privateJwk, subject: 'robot@example.test', lifetime },
        }),
      ).toThrow(
        expect.objectContaining({ code: 'ERR_CONFIG', message: expect.stringContaining('assertion.lifetime') }),
      );
    }
  });
});
