/**
 * What a token response says the token is, and whether this client can use it as that: `token_type` against
 * the DPoP proof the request did or did not carry (RFC 9449 §5, RFC 6749 §7.1), and a token exchange's
 * `issued_token_type` (RFC 8693 §2.2.1). The real server answers correctly; a fault server answers the rest.
 */
import { generateKeyPair } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TokenwardenError } from '../../src/errors.js';
import { TokenManager } from '../../src/manager.js';
import { clientCredentials } from '../../src/sources/client-credentials.js';
import { jwtBearer } from '../../src/sources/jwt-bearer.js';
import { tokenExchange } from '../../src/sources/token-exchange.js';
import { type TestAuthorizationServer, startAuthorizationServer } from '../support/authorization-server.js';
import { type FaultServer, json, startFaultServer } from '../support/fault-server.js';
import { exchanger, robotAssertion } from './support.js';

const ISSUED = 'issued-access-token-value';

let server: FaultServer;
beforeAll(async () => {
  server = await startFaultServer();
});
afterAll(() => server?.close());

const endpoint = () => ({ tokenEndpoint: `${server.url}/token`, allowInsecureRequests: true, clientId: 'svc' });

async function refusal(promise: Promise<unknown>): Promise<TokenwardenError> {
  const error = await promise.then(
    () => undefined,
    (err: unknown) => err,
  );
  expect(error).toBeInstanceOf(TokenwardenError);
  const e = error as TokenwardenError;
  expect(`${e.message} ${JSON.stringify(e)}`).not.toContain(ISSUED);
  return e;
}

describe('token_type and the DPoP proof', () => {
  it('DPoP when the request carried no proof: refused, never stored nor sent (no key of this client is bound)', async () => {
    server.handle((_req, res) => json(res, 200, { access_token: ISSUED, token_type: 'DPoP', expires_in: 60 }));
    const source = clientCredentials({ ...endpoint(), clientSecret: 's' });
    expect(await refusal(source.fetchToken({}))).toMatchObject({
      code: 'ERR_INVALID_RESPONSE',
      message: expect.stringContaining('token_type DPoP although the request carried no DPoP proof'),
    });
    // In any case.
    server.handle((_req, res) => json(res, 200, { access_token: ISSUED, token_type: 'dpop', expires_in: 60 }));
    const manager = new TokenManager({ source });
    try {
      expect(await refusal(manager.getToken())).toMatchObject({ code: 'ERR_INVALID_RESPONSE' });
      expect(manager.peek().token).toBeUndefined();
    } finally {
      await manager.close();
    }
  });

  it('DPoP after a proof is DPoP', async () => {
    const dpop = await generateKeyPair('ES256', { extractable: true });
    server.handle((req, res) => {
      expect(req.headers['dpop']).toEqual(expect.any(String));
      json(res, 200, { access_token: ISSUED, token_type: 'DPoP', expires_in: 60 });
    });
    expect((await clientCredentials({ ...endpoint(), clientSecret: 's', dpop }).fetchToken({})).tokenType).toBe('DPoP');
  });

  describe('Bearer after a proof, from a real server (its JWT bearer grant does not bind)', () => {
    let as: TestAuthorizationServer;
    beforeAll(async () => {
      as = await startAuthorizationServer({ accessTokenTtl: 60 });
    });
    afterAll(() => as?.close());

    it('is a bearer token (RFC 9449 §5: the server did not bind it)', async () => {
      const dpop = await generateKeyPair('ES256', { extractable: true });
      const source = jwtBearer({
        ...exchanger(as),
        assertion: robotAssertion(as),
        scope: 'read',
        dpop,
      });
      expect((await source.fetchToken({})).tokenType).toBe('Bearer');
    });
  });
});

describe("a token exchange's issued_token_type (RFC 8693 §2.2.1)", () => {
  const exchange = () => tokenExchange({ ...endpoint(), clientSecret: 's', subjectToken: 'subject' });
  const answer = (body: Record<string, unknown>) =>
    server.handle((_req, res) => json(res, 200, { access_token: ISSUED, expires_in: 60, ...body }));

  it('absent with token_type Bearer: an access token, accepted (as oauth4webapi, google-auth-library, golang/oauth2)', async () => {
    answer({ token_type: 'Bearer' });
    expect((await exchange().fetchToken({})).tokenType).toBe('Bearer');
  });

  it('absent with token_type N_A: nothing says what was issued; refused', async () => {
    answer({ token_type: 'N_A' });
    expect(await refusal(exchange().fetchToken({}))).toMatchObject({
      code: 'ERR_INVALID_RESPONSE',
      message: expect.stringContaining('no issued_token_type'),
    });
    answer({ token_type: 'N_A', issued_token_type: 'urn:ietf:params:oauth:token-type:id_token' });
    expect((await exchange().fetchToken({})).tokenType).toBe('N_A');
  });

  it('not a URI (a number, an object, a control character, a space): refused without echoing it', async () => {
    for (const issued of [
      42,
      { uri: 'urn:x' },
      ['urn:ietf:params:oauth:token-type:access_token'],
      'urn:ietf:params:oauth:token-type:access_token\u001b[2J',
      'access token',
      '',
    ]) {
      answer({ token_type: 'Bearer', issued_token_type: issued });
      const e = await refusal(exchange().fetchToken({}));
      expect(e).toMatchObject({ code: 'ERR_INVALID_RESPONSE', message: expect.stringContaining('issued_token_type') });
      expect(e.message).not.toContain('\u001b');
    }
    answer({ token_type: 'Bearer', issued_token_type: 'urn:ietf:params:oauth:token-type:access_token' });
    expect((await exchange().fetchToken({})).tokenType).toBe('Bearer');
  });

  it('other grants are not judged by it', async () => {
    answer({ token_type: 'Bearer', issued_token_type: 42 });
    expect((await clientCredentials({ ...endpoint(), clientSecret: 's' }).fetchToken({})).tokenType).toBe('Bearer');
  });
});

describe('token exchange request rules (RFC 8693 §2.1)', () => {
  it('actor_token_type only with an actor_token: actorTokenType alone is a configuration error', () => {
    expect(() =>
      tokenExchange({ ...endpoint(), subjectToken: 'subject', actorTokenType: 'urn:ietf:params:oauth:token-type:jwt' }),
    ).toThrow(expect.objectContaining({ code: 'ERR_CONFIG', message: expect.stringContaining('actorTokenType') }));
  });

  it('every resource and audience, the requested type, and the actor with its type are sent', async () => {
    server.handle((_req, res) =>
      json(res, 200, {
        access_token: ISSUED,
        token_type: 'Bearer',
        issued_token_type: 'urn:ietf:params:oauth:token-type:access_token',
      }),
    );
    const sent = server.requests.length;
    await tokenExchange({
      ...endpoint(),
      clientSecret: 's',
      subjectToken: 'subject',
      actorToken: () => 'actor',
      requestedTokenType: 'urn:ietf:params:oauth:token-type:access_token',
      resource: ['https://a.example', 'https://b.example'],
      audience: ['orders', 'billing'],
    }).fetchToken({});
    const form = new URLSearchParams(server.requests[sent]!.body);
    expect(form.getAll('resource')).toEqual(['https://a.example', 'https://b.example']);
    expect(form.getAll('audience')).toEqual(['orders', 'billing']);
    expect(form.get('actor_token')).toBe('actor');
    expect(form.get('actor_token_type')).toBe('urn:ietf:params:oauth:token-type:access_token');
    expect(form.get('requested_token_type')).toBe('urn:ietf:params:oauth:token-type:access_token');
    expect(form.get('subject_token_type')).toBe('urn:ietf:params:oauth:token-type:access_token');
  });
});
