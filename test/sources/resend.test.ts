/**
 * The one resend a token request may make — a DPoP nonce demanded (RFC 9449 §8), a connection reset before
 * any answer — follows a request the server may have read. A JWT it remembers by `jti` (RFC 7523 §3: an
 * assertion, a subject or actor token made for one use) must not be sent twice: tokenwarden makes it anew.
 */
import { inspect } from 'node:util';
import { decodeJwt, generateKeyPair } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TokenwardenError } from '../../src/errors.js';
import { TokenManager } from '../../src/manager.js';
import { clientCredentials } from '../../src/sources/client-credentials.js';
import { jwtBearer } from '../../src/sources/jwt-bearer.js';
import { tokenExchange } from '../../src/sources/token-exchange.js';
import { type TestAuthorizationServer, startAuthorizationServer } from '../support/authorization-server.js';
import { type FaultServer, json, startFaultServer } from '../support/fault-server.js';
import { exchanger, robotAssertion, tokenEndpointFetch } from './support.js';

describe('a resend after a reset, against a real authorization server', () => {
  let as: TestAuthorizationServer;
  beforeAll(async () => {
    as = await startAuthorizationServer({ accessTokenTtl: 60 });
  });
  afterAll(() => as?.close());

  it('JWT bearer with a signed assertion: the resend carries a new one (another jti)', async () => {
    const wire = tokenEndpointFetch();
    const source = jwtBearer({
      ...exchanger(as),
      assertion: robotAssertion(as),
      scope: 'read',
      fetch: wire.fetch,
    });
    wire.arm();
    const token = await source.fetchToken({});
    expect(decodeJwt(token.accessToken).scope).toBe('read');
    const [first, second] = wire.forms.map((form) => decodeJwt(form.get('assertion')!));
    expect(wire.forms).toHaveLength(2);
    expect(first!.jti).toEqual(expect.any(String));
    expect(second!.jti).not.toBe(first!.jti);
    // Everything else about the request is the same.
    expect(second!.sub).toBe(first!.sub);
    expect(wire.forms[1]!.get('scope')).toBe('read');
  });

  it('JWT bearer with an assertion function, token exchange with a subject function: each is called again', async () => {
    const own = new TokenManager({
      source: clientCredentials({
        ...exchanger(as),
        scope: 'read',
      }),
    });
    try {
      let subjects = 0;
      const wire = tokenEndpointFetch();
      const exchange = tokenExchange({
        ...exchanger(as),
        subjectToken: () => {
          subjects++;
          return own.getAccessToken();
        },
        audience: ['https://orders.example.test'],
        fetch: wire.fetch,
      });
      wire.arm();
      expect(decodeJwt((await exchange.fetchToken({})).accessToken).aud).toBe('https://orders.example.test');
      expect(subjects).toBe(2);
      expect(wire.forms.map((f) => f.getAll('audience'))).toEqual([
        ['https://orders.example.test'],
        ['https://orders.example.test'],
      ]);
    } finally {
      await own.close();
    }

    let assertions = 0;
    const wire = tokenEndpointFetch();
    const bearer = jwtBearer({
      ...exchanger(as),
      assertion: () => {
        assertions++;
        return jwtFor(as);
      },
      fetch: wire.fetch,
    });
    wire.arm();
    await bearer.fetchToken({});
    expect(assertions).toBe(2);
  });
});

/** An assertion the real server accepts for its JWT bearer grant, signed as tokenwarden would. */
async function jwtFor(as: TestAuthorizationServer): Promise<string> {
  const { SignJWT, importJWK } = await import('jose');
  const key = await importJWK(as.clients.jwt.privateJwk, 'ES256');
  return new SignJWT({})
    .setProtectedHeader({ alg: 'ES256' })
    .setIssuer('exchanger')
    .setSubject('robot@example.test')
    .setAudience(as.issuer)
    .setIssuedAt()
    .setExpirationTime('1m')
    .setJti(crypto.randomUUID())
    .sign(key);
}

describe('a server that remembers every jti (a fault the real server cannot produce: a DPoP nonce on this grant)', () => {
  let server: FaultServer;
  beforeAll(async () => {
    server = await startFaultServer();
  });
  afterAll(() => server?.close());

  /**
   * The token endpoint of a server that refuses an assertion whose jti it has read before (RFC 7523 §3), and
   * demands a DPoP nonce of the first request (RFC 9449 §8) or drops its connection after reading it.
   */
  function jtiServer(fault: 'nonce' | 'reset'): void {
    const seen = new Set<unknown>();
    let n = 0;
    server.handle((req, res, body) => {
      const { jti } = decodeJwt(new URLSearchParams(body).get('assertion')!);
      const replayed = seen.has(jti);
      seen.add(jti);
      if (n++ === 0) {
        if (fault === 'reset') return void req.socket.destroy();
        return json(
          res,
          400,
          { error: 'use_dpop_nonce', error_description: 'a nonce is required' },
          { 'dpop-nonce': 'n-1', 'cache-control': 'no-store' },
        );
      }
      if (replayed) return json(res, 400, { error: 'invalid_grant', error_description: 'jti already used' });
      json(res, 200, { access_token: 'granted', token_type: fault === 'nonce' ? 'DPoP' : 'Bearer', expires_in: 60 });
    });
  }

  it.each(['nonce', 'reset'] as const)(
    'after a %s, a tokenwarden-signed assertion is not refused as a replay',
    async (fault) => {
      jtiServer(fault);
      const { privateKey } = await generateKeyPair('ES256');
      const dpop = await generateKeyPair('ES256', { extractable: true });
      const source = jwtBearer({
        tokenEndpoint: `${server.url}/token`,
        allowInsecureRequests: true,
        clientId: 'robot',
        clientAuth: 'none',
        assertion: { privateKey, subject: 'robot@example.test' },
        ...(fault === 'nonce' && { dpop }),
      });
      const sent = server.requests.length;
      expect((await source.fetchToken({})).accessToken).toBe('granted');
      expect(server.requests.length - sent).toBe(2);
    },
  );
});

describe('an error after a resend echoing what either request sent', () => {
  let server: FaultServer;
  beforeAll(async () => {
    server = await startFaultServer();
  });
  afterAll(() => server?.close());

  it('both subject tokens and both actor tokens are redacted from every rendering of the error', async () => {
    const subjects = ['subject-token-one-7f3a9c', 'subject-token-two-b81e44'];
    const actors = ['actor-token-one-52d0e1', 'actor-token-two-c9a7f3'];
    let n = 0;
    server.handle((req, res) => {
      if (n++ === 0) return void req.socket.destroy();
      json(res, 400, {
        error: 'invalid_grant',
        error_description: `refused ${[...subjects, ...actors].join(' and ')}`,
      });
    });
    let s = 0;
    let a = 0;
    const source = tokenExchange({
      tokenEndpoint: `${server.url}/token`,
      allowInsecureRequests: true,
      clientId: 'gw',
      clientAuth: 'none',
      subjectToken: () => subjects[s++]!,
      actorToken: () => actors[a++]!,
    });
    const error = await source.fetchToken({}).then(
      () => undefined,
      (err: unknown) => err,
    );
    expect(error).toBeInstanceOf(TokenwardenError);
    expect(error).toMatchObject({ code: 'ERR_OAUTH', error: 'invalid_grant' });
    expect([s, a]).toEqual([2, 2]);
    const e = error as TokenwardenError;
    const renderings = [e.message, JSON.stringify(e), inspect(e, { depth: 10 }), String(e.error_description)];
    for (const secret of [...subjects, ...actors]) for (const text of renderings) expect(text).not.toContain(secret);
  });
});
