/**
 * Access tokens as two major servers shape them, minted by the test kit's authorization server (real keys,
 * real JWKS, real discovery): Amazon Cognito's (no `aud`; `client_id` and `token_use`) and Microsoft Entra
 * ID's (application permissions in `roles`, delegated ones in `scp`).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createVerifier } from '../../src/server/index.js';
import { type TestAuthorizationServer, createTestAuthorizationServer } from '../../src/testing/index.js';

const API = 'https://api.test';
const APP_CLIENT = '4a1b2c3d4e5f6g7h8i9j0k1l2m';
const OTHER_CLIENT = '9z8y7x6w5v4u3t2s1r0q9p8o7n';

let as: TestAuthorizationServer;
beforeAll(async () => {
  as = await createTestAuthorizationServer({ audience: API });
});
afterAll(() => as.close());

const insecure = { allowInsecureRequests: true } as const;

const refused = (description: string) => ({
  ok: false,
  failure: expect.objectContaining({ status: 401, error: 'invalid_token', description }),
});

/** An access token as Cognito issues it: no `aud`, the app client in `client_id`, `token_use: "access"`. */
const cognitoAccessToken = (claims: Record<string, unknown> = {}) =>
  as.mintAccessToken({
    sub: 'b1c2d3e4-user',
    clientId: APP_CLIENT,
    scope: 'orders-api/read',
    claims: { aud: undefined, token_use: 'access', username: 'alice', ...claims },
  });

/** An ID token as Cognito issues it: `aud` = the app client, `token_use: "id"`, no `client_id`. */
const cognitoIdToken = () =>
  as.mintAccessToken({
    sub: 'b1c2d3e4-user',
    audience: APP_CLIENT,
    claims: { client_id: undefined, token_use: 'id', email: 'alice@example.test' },
  });

describe('Amazon Cognito: clientIdsWithoutAudience', () => {
  it('accepts an access token without aud whose client_id is listed; refuses another client, or none', async () => {
    const verify = createVerifier({ issuer: as.issuer, clientIdsWithoutAudience: [APP_CLIENT], ...insecure });
    const accepted = await verify(await cognitoAccessToken());
    expect(accepted.ok).toBe(true);
    expect(accepted.ok && accepted.auth).toMatchObject({
      uid: 'b1c2d3e4-user',
      info: { clientId: APP_CLIENT },
      credentials: { scopes: ['orders-api/read'] },
    });
    expect(await verify(await cognitoAccessToken({ client_id: OTHER_CLIENT }))).toEqual(refused('unexpected client'));
    expect(await verify(await cognitoAccessToken({ client_id: undefined }))).toEqual(refused('missing required claim'));
    expect(await verify(await cognitoAccessToken({ client_id: [APP_CLIENT] }))).toEqual(refused('unexpected client'));
  });

  it('refuses a Cognito ID token, with or without the client id configured as the audience', async () => {
    const idToken = await cognitoIdToken();
    const verify = createVerifier({ issuer: as.issuer, clientIdsWithoutAudience: APP_CLIENT, ...insecure });
    expect(await verify(idToken)).toEqual(refused('unexpected token use'));
    // "aud should match the app client id", as guides say of ID tokens: still not an access token.
    const both = createVerifier({
      issuer: as.issuer,
      audience: APP_CLIENT,
      clientIdsWithoutAudience: APP_CLIENT,
      ...insecure,
    });
    expect(await both(idToken)).toEqual(refused('unexpected token use'));
    expect((await both(await cognitoAccessToken())).ok).toBe(true);
  });

  it('a token with aud is judged by aud alone: a listed client_id neither rescues nor is required', async () => {
    const verify = createVerifier({
      issuer: as.issuer,
      audience: API,
      clientIdsWithoutAudience: [APP_CLIENT],
      ...insecure,
    });
    const forOther = await as.mintAccessToken({ audience: 'https://other.test', clientId: APP_CLIENT });
    expect(await verify(forOther)).toEqual(refused('unexpected audience'));
    const emptyAud = await as.mintAccessToken({ audience: [], clientId: APP_CLIENT });
    expect(await verify(emptyAud)).toEqual(refused('unexpected audience'));
    expect((await verify(await as.mintAccessToken({ audience: API, clientId: OTHER_CLIENT }))).ok).toBe(true);
    // Without an audience configured, no token with aud is accepted.
    const cognitoOnly = createVerifier({ issuer: as.issuer, clientIdsWithoutAudience: [APP_CLIENT], ...insecure });
    expect(await cognitoOnly(await as.mintAccessToken({ audience: API, clientId: APP_CLIENT }))).toEqual(
      refused('unexpected audience'),
    );
  });

  it('without the option nothing changes: audience required, a token without aud refused', async () => {
    expect(() => createVerifier({ issuer: as.issuer, ...insecure })).toThrow(/audience is required/);
    const verify = createVerifier({ issuer: as.issuer, audience: API, ...insecure });
    expect(await verify(await cognitoAccessToken())).toEqual(refused('missing required claim'));
    expect(() =>
      createVerifier({ issuer: as.issuer, clientIdsWithoutAudience: [APP_CLIENT], strict: true, ...insecure }),
    ).toThrow(/strict/);
    expect(() => createVerifier({ issuer: as.issuer, clientIdsWithoutAudience: [''], ...insecure })).toThrow(
      /clientIdsWithoutAudience/,
    );
  });
});
