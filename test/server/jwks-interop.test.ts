/**
 * JWKS documents as authorization servers other than oidc-provider publish them (Keycloak, Entra ID, Okta,
 * Auth0, ADFS, Google): keys without `alg`, encryption keys beside signing keys, `key_ops`, X.509 members,
 * kinds of key the verifier does not know, malformed members, duplicate `kid`s across key types. oidc-provider
 * validates the key set it publishes and cannot be made to serve most of these, so a local server publishes
 * them (served as `application/jwk-set+json`, as Keycloak does); the tokens are signed with real keys.
 */
import { generateKeyPairSync } from 'node:crypto';
import type { ServerResponse } from 'node:http';
import { type JWK, SignJWT, exportJWK, generateKeyPair, importJWK } from 'jose';
import { afterEach, describe, expect, it } from 'vitest';
import { createVerifier } from '../../src/server/index.js';
import { clientCredentials } from '../../src/sources/client-credentials.js';
import { newSigningKey, publicJwk } from '../support/authorization-server.js';
import { type FaultServer, startFaultServer } from '../support/fault-server.js';

const AUDIENCE = 'https://api.example.test';

let server: FaultServer | undefined;
afterEach(async () => {
  await server?.close();
  server = undefined;
});

/**
 * An issuer whose JWKS is `keys` (public parts), served with `content-type`; its metadata names it as
 * `named(url)` (Auth0's issuers end with a slash).
 */
async function issuerWith(
  keys: unknown[],
  contentType = 'application/jwk-set+json',
  named = (url: string) => url,
): Promise<string> {
  server = await startFaultServer();
  const url = server.url;
  server.handle((req, res: ServerResponse) => {
    if (req.url?.startsWith('/.well-known/')) {
      res
        .writeHead(200, { 'content-type': 'application/json' })
        .end(JSON.stringify({ issuer: named(url), jwks_uri: `${url}/jwks` }));
      return;
    }
    res.writeHead(200, { 'content-type': contentType }).end(JSON.stringify({ keys }));
  });
  return url;
}

async function token(
  issuer: string,
  key: JWK,
  alg: string,
  header: Record<string, unknown> = {},
  claims: Record<string, unknown> = {},
): Promise<string> {
  const now = Math.floor(Date.now() / 1000);
  return new SignJWT({ iss: issuer, aud: AUDIENCE, sub: 'alice', iat: now, exp: now + 300, ...claims })
    .setProtectedHeader({ alg, typ: 'JWT', ...header } as never)
    .sign(await importJWK(key, alg));
}

async function ecKey(kid: string): Promise<JWK> {
  const { privateKey } = await generateKeyPair('ES256', { extractable: true });
  return { ...(await exportJWK(privateKey)), kid };
}

/** The public JWK, with members added or removed (`undefined`). */
function published(key: JWK, members: Record<string, unknown> = {}): Record<string, unknown> {
  const jwk: Record<string, unknown> = { ...publicJwk(key), ...members };
  for (const [name, value] of Object.entries(jwk)) if (value === undefined) delete jwk[name];
  return jwk;
}

const verifierFor = (issuer: string) => createVerifier({ issuer, audience: AUDIENCE, allowInsecureRequests: true });

describe('JWKS members as other authorization servers publish them', () => {
  it('keys without alg or use (Entra ID, ADFS), with key_ops (verify), with x5c/x5t beside n/e: each verifies', async () => {
    const [bare, ops, x509] = [await newSigningKey(), await newSigningKey(), await newSigningKey()];
    const issuer = await issuerWith([
      published(bare, { alg: undefined, use: undefined }),
      published(ops, { use: undefined, key_ops: ['verify'] }),
      // The certificate chain is not what the key is made from (n and e are): a broken one changes nothing.
      published(x509, { x5c: ['MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA'], x5t: 'bm90LWEtdGh1bWJwcmludA' }),
    ]);
    const verify = verifierFor(issuer);
    for (const key of [bare, ops, x509]) {
      expect((await verify(await token(issuer, key, 'RS256', { kid: key.kid }))).ok, key.kid).toBe(true);
    }
  });

  it('an encryption key (use enc, or key_ops without verify) never verifies a signature, even named by kid', async () => {
    const [signing, encryption, wrapping] = [await newSigningKey(), await newSigningKey(), await newSigningKey()];
    const issuer = await issuerWith([
      published(signing),
      published(encryption, { use: 'enc', alg: 'RSA-OAEP' }), // Keycloak publishes its RSA-OAEP key so
      published(wrapping, { use: undefined, alg: undefined, key_ops: ['encrypt', 'wrapKey'] }),
    ]);
    const verify = verifierFor(issuer);
    expect((await verify(await token(issuer, signing, 'RS256', { kid: signing.kid }))).ok).toBe(true);
    for (const key of [encryption, wrapping]) {
      expect(await verify(await token(issuer, key, 'RS256', { kid: key.kid }))).toMatchObject({
        ok: false,
        failure: { status: 401, error: 'invalid_token', description: 'unknown signing key' },
      });
      expect(await verify(await token(issuer, key, 'RS256'))).toMatchObject({
        ok: false,
        failure: { status: 401, error: 'invalid_token' },
      });
    }
  });

  it('one RSA and one EC key under the same kid: each token is checked with the key of its algorithm', async () => {
    const rsa = { ...(await newSigningKey()), kid: 'shared', alg: undefined, use: undefined };
    const ec = await ecKey('shared');
    const issuer = await issuerWith([published(rsa), published(ec, { use: 'sig' })]);
    const verify = verifierFor(issuer);
    expect((await verify(await token(issuer, rsa, 'RS256', { kid: 'shared' }))).ok).toBe(true);
    expect((await verify(await token(issuer, ec, 'ES256', { kid: 'shared' }))).ok).toBe(true);
  });

  it('a token without kid: the only key of its kind, or each that fits it', async () => {
    const only = await newSigningKey();
    const ec = await ecKey('ec-1');
    const issuer = await issuerWith([published(only), published(ec)]);
    const verify = verifierFor(issuer);
    expect((await verify(await token(issuer, only, 'RS256'))).ok).toBe(true);
    expect((await verify(await token(issuer, ec, 'ES256'))).ok).toBe(true);
  });
});

describe('one bad member does not make the set unusable', () => {
  /** Members no verifier can use, as real key sets have had them. */
  const badMembers = (): unknown[] => [
    { kty: 'AKP', alg: 'ML-DSA-44', kid: 'pq', pub: 'AAAA' }, // a kind jose may know but no allowed alg uses
    { kty: 'unknown', kid: 'odd' },
    { kty: 'RSA', kid: 'broken-n', n: '!!not base64url!!', e: 'AQAB', use: 'sig' },
    { kty: 'RSA', kid: 'no-e', n: 'AQAB' },
    { kty: 'EC', crv: 'P-256', kid: 'no-y', x: 'AAAA' },
    { kty: 'oct', kid: 'hmac', k: 'c2VjcmV0' },
    { kid: 'no-kty' },
  ];

  it('unknown kinds and malformed keys beside good ones: tokens of the good ones verify, with and without kid', async () => {
    const good = await newSigningKey();
    const issuer = await issuerWith([...badMembers(), published(good)]);
    const verify = verifierFor(issuer);
    expect((await verify(await token(issuer, good, 'RS256', { kid: good.kid }))).ok).toBe(true);
    expect((await verify(await token(issuer, good, 'RS256'))).ok).toBe(true);
    // A kid naming a member that is no signing key of its algorithm: no such key (401).
    for (const kid of ['pq', 'odd', 'hmac', 'no-kty', 'no-y']) {
      const result = await verify(await token(issuer, good, 'RS256', { kid }));
      expect(result, kid).toMatchObject({
        ok: false,
        failure: { status: 401, error: 'invalid_token', description: 'unknown signing key' },
      });
    }
  });

  it('a token naming a malformed or too weak key is not judged (503), and onError says which key problem', async () => {
    const good = await newSigningKey();
    const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 1024 });
    const weak = { ...(privateKey.export({ format: 'jwk' }) as JWK), kid: 'weak', alg: 'RS256' };
    const issuer = await issuerWith([...badMembers(), published(weak), published(good)]);
    const reported: unknown[] = [];
    const verify = createVerifier({
      issuer,
      audience: AUDIENCE,
      allowInsecureRequests: true,
      onError: (err) => reported.push(err),
    });
    // Signed by the good key under each kid: what signed it does not matter when the key named is unusable.
    for (const kid of ['broken-n', 'no-e', 'weak']) {
      expect(await verify(await token(issuer, good, 'RS256', { kid })), kid).toMatchObject({
        ok: false,
        failure: { status: 503, error: 'temporarily_unavailable' },
      });
      expect(reported.pop(), kid).toMatchObject({
        code: 'ERR_INVALID_RESPONSE',
        message: 'the JWKS key for this token cannot be used (malformed, or too weak for its algorithm)',
      });
    }
    expect((await verify(await token(issuer, good, 'RS256', { kid: good.kid }))).ok).toBe(true);
  });

  it('members that are not objects (null, a string, an array) are left out, the rest used', async () => {
    const good = await newSigningKey();
    const issuer = await issuerWith([null, 'key', [published(good)], 7, published(good)]);
    const verify = verifierFor(issuer);
    expect((await verify(await token(issuer, good, 'RS256', { kid: good.kid }))).ok).toBe(true);
    expect(verify.health().keys[0]).toMatchObject({ keys: 1 });
  });

  it('an RSA key under 2048 bits beside a good one: a token without kid is checked with the good one', async () => {
    const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 1024 });
    const weak = { ...(privateKey.export({ format: 'jwk' }) as JWK), kid: 'weak', alg: 'RS256' };
    const good = await newSigningKey();
    const issuer = await issuerWith([published(weak), published(good)]);
    const verify = verifierFor(issuer);
    expect((await verify(await token(issuer, good, 'RS256'))).ok).toBe(true);
    expect((await verify(await token(issuer, good, 'RS256', { kid: good.kid }))).ok).toBe(true);
  });
});

describe('issuers are compared exactly (RFC 9068 §4, OpenID Connect Discovery §4.3)', () => {
  it('a trailing slash of difference: the token is from an unexpected issuer; metadata naming the other form is a clear discovery error', async () => {
    const key = await newSigningKey();
    // Auth0: the issuer is "https://tenant.auth0.com/", with the slash, in the metadata and in every token.
    const url = await issuerWith([published(key)], 'application/json', (u) => `${u}/`);
    const exact = verifierFor(`${url}/`);
    expect((await exact(await token(`${url}/`, key, 'RS256', { kid: key.kid }))).ok).toBe(true);
    expect(await exact(await token(url, key, 'RS256', { kid: key.kid }))).toMatchObject({
      ok: false,
      failure: { status: 401, description: 'unexpected issuer' },
    });
    // Configured without the slash: discovery compares URLs (equal), tokens would all be refused 401 with no
    // word to the operator. Instead the mismatch is a discovery error naming the value to configure.
    const reported: unknown[] = [];
    const loose = createVerifier({
      issuer: url,
      audience: AUDIENCE,
      allowInsecureRequests: true,
      onError: (err) => reported.push(err),
    });
    const expected = {
      code: 'ERR_DISCOVERY',
      message: `the metadata of "${url}" names its issuer "${url}/": tokens carry that exact value in iss, so set issuer to it`,
    };
    await expect(loose.ready()).rejects.toMatchObject(expected);
    expect(await loose(await token(`${url}/`, key, 'RS256', { kid: key.kid }))).toMatchObject({
      ok: false,
      failure: { status: 503, error: 'temporarily_unavailable' },
    });
    const first = reported[0] as { code: string; cause?: unknown };
    expect(first.code === 'ERR_DISCOVERY' ? first : first.cause).toMatchObject(expected);
    expect(loose.health().lastError).toMatchObject({ code: expect.stringMatching(/^ERR_/) });
  });
});

describe('metadata whose jwks_uri is not usable', () => {
  it('missing, not a string, relative, javascript: or file:: ERR_DISCOVERY from ready(), and tokens 503 (never 401)', async () => {
    server = await startFaultServer();
    const url = server.url;
    const token = `eyJhbGciOiJSUzI1NiIsImtpZCI6ImsifQ.eyJpc3MiOiJ4In0.${'a'.repeat(342)}`;
    let n = 0;
    for (const jwksUri of [undefined, 5, '/jwks', 'javascript:alert(1)', 'file:///etc/passwd']) {
      const issuer = `${url}/issuer-${n++}`;
      server.handle((_req, res) => {
        res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ issuer, jwks_uri: jwksUri }));
      });
      const verify = createVerifier({ issuer, audience: AUDIENCE, allowInsecureRequests: true });
      await expect(verify.ready(), String(jwksUri)).rejects.toMatchObject({ code: 'ERR_DISCOVERY' });
      const result = await verify(token);
      expect(result.ok).toBe(false);
      expect(result.ok ? undefined : result.failure.status, String(jwksUri)).toBe(503);
    }
  });
});

describe("Microsoft Entra ID's multi-tenant endpoints (common, organizations)", () => {
  const TENANTS = ['8d3f2a51-6b7c-4e10-9a2b-1c2d3e4f5a6b', '0b1c2d3e-4f5a-46b7-8c9d-0e1f2a3b4c5d'];
  const STRANGER = 'ffffffff-0000-4000-8000-000000000000';
  /** An Entra-like server: `common` metadata names `{tenantid}`, one key set signs for every tenant. */
  async function entraLike(key: JWK): Promise<string> {
    server = await startFaultServer();
    const url = server.url;
    server.handle((req, res: ServerResponse) => {
      if (req.url?.includes('/.well-known/')) {
        res.writeHead(200, { 'content-type': 'application/json' }).end(
          JSON.stringify({
            issuer: `${url}/{tenantid}/v2.0`,
            jwks_uri: `${url}/common/discovery/v2.0/keys`,
            token_endpoint: `${url}/common/oauth2/v2.0/token`,
          }),
        );
        return;
      }
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ keys: [published(key)] }));
    });
    return url;
  }

  it('configured as the issuer, it says what to do instead (client and resource server), never a bare mismatch', async () => {
    const url = await entraLike(await ecKey('k1'));
    const common = `${url}/common/v2.0`;
    await expect(verifierFor(common).ready()).rejects.toMatchObject({
      code: 'ERR_DISCOVERY',
      message: expect.stringMatching(/\{tenantid\}.*multi-tenant.*function of iss.*jwksUri/),
    });
    const client = clientCredentials({
      issuer: common,
      clientId: 'svc',
      clientSecret: 's',
      allowInsecureRequests: true,
    });
    await expect(client.fetchToken({})).rejects.toMatchObject({
      code: 'ERR_DISCOVERY',
      message: expect.stringMatching(/multi-tenant.*tokenEndpoint/),
    });
  });

  it('the recipe: issuer a function accepting your tenants, jwksUri the common keys, claimCheck tying iss to tid', async () => {
    const key = await ecKey('k1');
    const url = await entraLike(key);
    const issuerOf = (tid: string) => `${url}/${tid}/v2.0`;
    const verify = createVerifier({
      issuer: (iss) => TENANTS.some((tid) => iss === issuerOf(tid)),
      jwksUri: `${url}/common/discovery/v2.0/keys`,
      audience: AUDIENCE,
      allowInsecureRequests: true,
      claimCheck: (auth) => auth.extra.claims['iss'] === issuerOf(String(auth.extra.claims['tid'])),
    });
    for (const tid of TENANTS) {
      const result = await verify(await token(issuerOf(tid), key, 'ES256', {}, { tid }));
      expect(result.ok, tid).toBe(true);
    }
    const stranger = await verify(await token(issuerOf(STRANGER), key, 'ES256', {}, { tid: STRANGER }));
    expect(stranger.ok ? 200 : stranger.failure.status).toBe(401);
    const mixed = await verify(await token(issuerOf(TENANTS[0] as string), key, 'ES256', {}, { tid: TENANTS[1] }));
    expect(mixed.ok ? 200 : mixed.failure.status).toBe(403);
  });
});

describe('Google ID tokens as bearer tokens', () => {
  it("iss is 'https://accounts.google.com' or, in some, 'accounts.google.com' (no scheme): an issuer function takes both", async () => {
    const key = await ecKey('g1');
    const url = await issuerWith([published(key)]);
    const verify = createVerifier({
      issuer: (iss) => iss === 'https://accounts.google.com' || iss === 'accounts.google.com',
      jwksUri: `${url}/jwks`,
      audience: AUDIENCE,
      allowInsecureRequests: true,
    });
    for (const iss of ['https://accounts.google.com', 'accounts.google.com']) {
      expect((await verify(await token(iss, key, 'ES256'))).ok, iss).toBe(true);
    }
    const other = await verify(await token('https://accounts.google.com.evil.example', key, 'ES256'));
    expect(other.ok ? 200 : other.failure.status).toBe(401);
  });
});
