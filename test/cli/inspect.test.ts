/**
 * `tokenwarden inspect`, run as a child process: valid, expired and garbage input, stdin, `--json`, and
 * `--verify` against a real authorization server's JWKS.
 */
import { SignJWT } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  API_RESOURCE,
  type TestAuthorizationServer,
  startAuthorizationServer,
} from '../support/authorization-server.js';
import { ONE_LINE_ERROR, type Home, assertBuilt, removeHomes, runCli, tempHome } from './support.js';

let as: TestAuthorizationServer;
let home: Home;
let fresh: string;
beforeAll(async () => {
  await assertBuilt();
  as = await startAuthorizationServer({ accessTokenTtl: 300 });
  home = await tempHome();
  const result = await runCli(
    ['token', '--issuer', as.issuer, '--client-id', 'svc', '--scope', 'read', '--allow-insecure-requests'],
    { ...home.env, TOKENWARDEN_CLIENT_SECRET: as.clients.svc.clientSecret },
  );
  expect(result.code, result.stderr).toBe(0);
  fresh = result.stdout.trim();
});
afterAll(async () => {
  await as?.close();
  await removeHomes();
});

/** A JWT signed with a throwaway key, with claims of our choosing. */
async function localJwt(claims: Record<string, unknown>): Promise<string> {
  return new SignJWT(claims)
    .setProtectedHeader({ alg: 'HS256', typ: 'at+jwt' })
    .sign(new TextEncoder().encode('k'.repeat(32)));
}

describe('tokenwarden inspect', () => {
  it('decodes a valid token: header, claims, and when it expires', async () => {
    const result = await runCli(['inspect', fresh], home.env);
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout).toContain('"alg":"RS256"');
    expect(result.stdout).toContain('"client_id": "svc"');
    expect(result.stdout).toMatch(/Expires: \d{4}-\d\d-\d\dT[\d:.]+Z \(expires in [45] min\)/);
    expect(result.stdout).toContain('NOT verified');
  });

  it('says how long ago an expired token expired (and still exits 0: it decoded)', async () => {
    const now = Math.floor(Date.now() / 1000);
    const token = await localJwt({ sub: 'x', iat: now - 600, exp: now - 180 });
    const result = await runCli(['inspect', token], home.env);
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout).toContain('(expired 3 min ago)');
  });

  it('reads the token from stdin with -, a "Bearer " prefix and whitespace ignored', async () => {
    const result = await runCli(['inspect', '-', '--json'], home.env, { input: `Bearer ${fresh}\n` });
    expect(result.code, result.stderr).toBe(0);
    const json = JSON.parse(result.stdout) as Record<string, unknown>;
    expect(json['header']).toMatchObject({ alg: 'RS256' });
    expect(json['claims']).toMatchObject({ client_id: 'svc', iss: as.issuer });
    expect(json['expired']).toBe(false);
    expect(json['verified']).toBe(false);
    expect(json['expires_in']).toBeGreaterThan(200);
    expect(Date.parse(json['expires_at'] as string)).toBeGreaterThan(Date.now());
  });

  it.each([
    ['garbage', 'not-a-token'],
    ['three parts that are not JSON', 'abc.def.ghi'],
    ['an encrypted JWT', 'a.b.c.d.e'],
    [
      'a JSON array payload',
      `${Buffer.from('{"alg":"none"}').toString('base64url')}.${Buffer.from('[1]').toString('base64url')}.`,
    ],
  ])('refuses %s with ERR_INVALID_TOKEN (exit 1, one line)', async (_name, input) => {
    const result = await runCli(['inspect', input], home.env);
    expect(result.code).toBe(1);
    expect(result.stdout).toBe('');
    expect(result.stderr).toMatch(ONE_LINE_ERROR);
    expect(result.stderr).toContain('ERR_INVALID_TOKEN');
  });

  it('an empty stdin is a usage error', async () => {
    const result = await runCli(['inspect', '-'], home.env, { input: '' });
    expect(result.code).toBe(2);
    expect(result.stderr).toMatch(ONE_LINE_ERROR);
  });
});

describe('tokenwarden inspect --verify', () => {
  const verify = ['--verify', '--issuer', '', '--audience', API_RESOURCE, '--allow-insecure-requests'];
  const args = (): string[] => verify.map((a) => (a === '' ? as.issuer : a));

  it('verifies a token of the authorization server against its JWKS', async () => {
    const result = await runCli(['inspect', fresh, ...args()], home.env);
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout).toContain('Signature: verified');
  });

  it('a wrong audience or a foreign signature fails with ERR_INVALID_TOKEN', async () => {
    const wrongAudience = await runCli(
      [
        'inspect',
        fresh,
        '--verify',
        '--issuer',
        as.issuer,
        '--audience',
        'https://other.example.test',
        '--allow-insecure-requests',
      ],
      home.env,
    );
    expect(wrongAudience.code).toBe(1);
    expect(wrongAudience.stderr).toMatch(ONE_LINE_ERROR);
    expect(wrongAudience.stderr).toContain('ERR_INVALID_TOKEN');

    const now = Math.floor(Date.now() / 1000);
    const forged = await localJwt({ iss: as.issuer, aud: API_RESOURCE, iat: now, exp: now + 60 });
    const foreign = await runCli(['inspect', forged, ...args()], home.env);
    expect(foreign.code).toBe(1);
    expect(foreign.stderr).toContain('ERR_INVALID_TOKEN');
  });

  it('--verify without --audience is a usage error', async () => {
    const result = await runCli(['inspect', fresh, '--verify', '--issuer', as.issuer], home.env);
    expect(result.code).toBe(2);
    expect(result.stderr).toMatch(ONE_LINE_ERROR);
  });
});
