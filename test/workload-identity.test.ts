/**
 * Workload identity files against the real authorization server: a client assertion (`private_key_jwt`
 * signed elsewhere) read from a file the test rotates between token requests, and a token exchange whose
 * subject token is a file; what the server received is recorded. Missing, empty, unreadable and oversized
 * files are coded errors naming the path and never holding the content.
 */
import { randomUUID } from 'node:crypto';
import { mkdir, mkdtemp, rename, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { inspect } from 'node:util';
import { SignJWT, decodeJwt, importJWK } from 'jose';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import {
  MAX_CREDENTIAL_FILE_BYTES,
  TokenManager,
  clientCredentials,
  isTokenwardenError,
  tokenExchange,
} from '../src/index.js';
import {
  TOKEN_EXCHANGE,
  type TestAuthorizationServer,
  startAuthorizationServer,
} from './support/authorization-server.js';

let as: TestAuthorizationServer;
let dir: string;

beforeAll(async () => {
  as = await startAuthorizationServer({ accessTokenTtl: 60 });
  dir = await mkdtemp(join(tmpdir(), 'tw-wi-'));
});
afterAll(async () => {
  await as.close();
  await rm(dir, { recursive: true, force: true });
});
beforeEach(() => {
  as.resetCounts();
});
/** What the token endpoint received, per request. */
const received = () => as.tokenRequests;

/** A client assertion for the `jwt` client, signed with its key — what a platform would write. */
async function assertion(): Promise<string> {
  const { clientId, privateJwk } = as.clients.jwt;
  const key = await importJWK(privateJwk, 'ES256');
  return new SignJWT({})
    .setProtectedHeader({ alg: 'ES256', kid: privateJwk.kid as string })
    .setIssuer(clientId)
    .setSubject(clientId)
    .setAudience(as.issuer)
    .setIssuedAt()
    .setExpirationTime('2m')
    .setJti(randomUUID())
    .sign(key);
}

/** Rotates the file the way the kubelet does: a new file, then an atomic rename over the old one. */
async function rotate(path: string, content: string): Promise<void> {
  const next = `${path}.${randomUUID()}`;
  await writeFile(next, content);
  await rename(next, path);
}

const jwtClient = () => ({ issuer: as.issuer, clientId: as.clients.jwt.clientId, allowInsecureRequests: true });

describe('clientAssertion: { file }', () => {
  it('sends the file’s current content as client_assertion, and a rewrite is used by the next request', async () => {
    const path = join(dir, 'token');
    const first = await assertion();
    await rotate(path, `${first}\n`);
    const manager = new TokenManager({
      source: clientCredentials({ ...jwtClient(), clientAssertion: { file: path } }),
    });
    try {
      const token = await manager.getToken();
      expect(decodeJwt(token.accessToken)['client_id']).toBe(as.clients.jwt.clientId);
      const second = await assertion();
      await rotate(path, second);
      await manager.refresh();
      expect(received()).toEqual([
        {
          grant: 'client_credentials',
          clientAssertion: first,
          clientAssertionType: 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer',
          status: 200,
        },
        {
          grant: 'client_credentials',
          clientAssertion: second,
          clientAssertionType: 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer',
          status: 200,
        },
      ]);
    } finally {
      await manager.close();
    }
  });

  it('a function is called for every token request', async () => {
    let calls = 0;
    const source = clientCredentials({
      ...jwtClient(),
      clientAssertion: async () => {
        calls++;
        return assertion();
      },
    });
    await source.fetchToken({});
    await source.fetchToken({});
    expect(calls).toBe(2);
    expect(received().map((r) => r.status)).toEqual([200, 200]);
    expect(received()[0]?.clientAssertion).not.toBe(received()[1]?.clientAssertion);
  });

  it('a missing, empty, oversized or unreadable file is ERR_CREDENTIAL naming the path, never the content', async () => {
    const cases: [string, string | undefined, RegExp][] = [
      [join(dir, 'missing'), undefined, /does not exist/],
      [join(dir, 'empty'), ' \n\t\n', /is empty/],
      [join(dir, 'huge'), `SECRET-CONTENT-${'x'.repeat(MAX_CREDENTIAL_FILE_BYTES)}`, /larger than/],
      [join(dir, 'a-directory'), undefined, /is a directory/],
    ];
    await mkdir(join(dir, 'a-directory'), { recursive: true });
    for (const [path, content, why] of cases) {
      if (content !== undefined) await writeFile(path, content);
      const source = clientCredentials({ ...jwtClient(), clientAssertion: { file: path } });
      const err = await source.fetchToken({}).catch((e: unknown) => e);
      expect(isTokenwardenError(err, 'ERR_CREDENTIAL'), String(err)).toBe(true);
      expect((err as Error).message).toContain(path);
      expect((err as Error).message).toMatch(why);
      const everything = `${String(err)} ${inspect(err, { depth: 20 })} ${JSON.stringify(err)}`;
      expect(everything).not.toContain('SECRET-CONTENT');
    }
    expect(received()).toEqual([]); // nothing was sent
  });

  it('a file the server refuses is its OAuth error, without the file’s content', async () => {
    const path = join(dir, 'garbage');
    await writeFile(path, 'not-a-jwt-SECRET-CONTENT');
    const err = await clientCredentials({ ...jwtClient(), clientAssertion: { file: path } })
      .fetchToken({})
      .catch((e: unknown) => e);
    expect(isTokenwardenError(err, 'ERR_OAUTH')).toBe(true);
    expect(['invalid_client', 'invalid_request']).toContain((err as { error?: string }).error);
    expect(`${String(err)} ${JSON.stringify(err)}`).not.toContain('SECRET-CONTENT');
  });

  it('a function that throws or returns nothing is ERR_CREDENTIAL', async () => {
    const failing = clientCredentials({
      ...jwtClient(),
      clientAssertion: () => {
        throw new Error('kms unavailable');
      },
    });
    const err = await failing.fetchToken({}).catch((e: unknown) => e);
    expect(isTokenwardenError(err, 'ERR_CREDENTIAL')).toBe(true);
    expect((err as Error).cause).toBeInstanceOf(Error);
    const empty = clientCredentials({ ...jwtClient(), clientAssertion: () => '' });
    expect(isTokenwardenError(await empty.fetchToken({}).catch((e: unknown) => e), 'ERR_CREDENTIAL')).toBe(true);
  });

  it('refuses conflicting or malformed options at construction', () => {
    const file = { file: join(dir, 'token') };
    expect(() => clientCredentials({ ...jwtClient(), clientAssertion: file, clientSecret: 's' })).toThrow(
      /clientAssertion/,
    );
    expect(() =>
      clientCredentials({ ...jwtClient(), clientAssertion: file, clientAuth: 'client_secret_basic' }),
    ).toThrow(/clientAssertion/);
    expect(() => clientCredentials({ ...jwtClient(), clientAssertion: { file: '' } })).toThrow(/clientAssertion/);
    expect(() => clientCredentials({ ...jwtClient(), clientAssertion: 'eyJ...' as never })).toThrow(/clientAssertion/);
  });

  it('shows the path, never the assertion, in JSON and inspect', async () => {
    const path = join(dir, 'shown');
    await writeFile(path, 'SECRET-CONTENT');
    const source = clientCredentials({ ...jwtClient(), clientAssertion: { file: path } });
    for (const text of [JSON.stringify(source), inspect(source, { depth: 10 })]) {
      expect(text).toContain(path);
      expect(text).toContain('private_key_jwt');
      expect(text).not.toContain('SECRET-CONTENT');
    }
  });
});

describe('tokenExchange({ subjectToken: { file } })', () => {
  it('exchanges the file’s current token, and a rewrite is used by the next exchange', async () => {
    const issue = () =>
      clientCredentials({
        issuer: as.issuer,
        clientId: as.clients.svc.clientId,
        clientSecret: as.clients.svc.clientSecret,
        allowInsecureRequests: true,
      }).fetchToken({});
    const path = join(dir, 'subject');
    const first = (await issue()).accessToken;
    await rotate(path, first);
    const options = {
      issuer: as.issuer,
      clientId: as.clients.exchanger.clientId,
      clientSecret: as.clients.exchanger.clientSecret,
      allowInsecureRequests: true,
      subjectToken: { file: path },
      audience: 'https://orders.example.test',
    };
    const source = tokenExchange(options);
    // Processes reading the same file share the exchanged token (same store key).
    expect(tokenExchange(options).key).toBe(source.key);
    expect(tokenExchange({ ...options, subjectToken: { file: `${path}-other` } }).key).not.toBe(source.key);
    await source.fetchToken({});
    const second = (await issue()).accessToken;
    await rotate(path, second);
    const exchanged = await source.fetchToken({});
    expect(decodeJwt(exchanged.accessToken)['aud']).toBe('https://orders.example.test');
    const exchanges = received().filter((r) => r.grant === TOKEN_EXCHANGE);
    expect(exchanges.map((r) => [r.subjectToken, r.status])).toEqual([
      [first, 200],
      [second, 200],
    ]);
  });

  it('a missing subject token file is ERR_CREDENTIAL naming the path; nothing is sent', async () => {
    const path = join(dir, 'no-subject');
    const err = await tokenExchange({
      issuer: as.issuer,
      clientId: as.clients.exchanger.clientId,
      clientSecret: as.clients.exchanger.clientSecret,
      allowInsecureRequests: true,
      subjectToken: { file: path },
    })
      .fetchToken({})
      .catch((e: unknown) => e);
    expect(isTokenwardenError(err, 'ERR_CREDENTIAL')).toBe(true);
    expect((err as Error).message).toContain(path);
    expect(received()).toEqual([]);
  });
});
