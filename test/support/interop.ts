/**
 * What every real authorization server must show the client side doing, whatever its habits: client
 * credentials with both secret methods (and a wrong secret or scope said as the server said it, the secret
 * nowhere), rotating refresh tokens spent once by a TokenManager, and a fleet of managers on one FileStore that
 * never presents a refresh token twice. One suite, run against each server (`test/node-oauth2-server.test.ts`,
 * `test/django-oauth-toolkit.test.ts`, `test/authlib.test.ts`, `test/glewlwyd.test.ts`; oidc-provider has its
 * own, deeper suites).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect, it, onTestFinished } from 'vitest';
import {
  type ClientCredentialsOptions,
  FileStore,
  TokenManager,
  type TokenSource,
  TokenwardenError,
  clientCredentials,
} from '../../src/index.js';
import { basicUserPass } from '../../src/sources/client-secret-basic.js';
import { renderings } from '../security/support.js';

/** A server under test, as the suite needs it. */
export interface InteropServer {
  /** A confidential client allowed the client credentials grant (scopes `read` and `write`; not `admin`). */
  client(): Pick<
    ClientCredentialsOptions,
    'issuer' | 'tokenEndpoint' | 'clientId' | 'clientSecret' | 'allowInsecureRequests'
  >;
  /** The access token lifetime the server is configured with, in seconds. */
  readonly accessTokenTtl: number;
  /** A new login's token response, with a refresh token. */
  login(): Promise<{ refresh_token: string }>;
  /** The refresh token grant of the client the logins are for. */
  refreshSource(refreshToken: string): TokenSource;
  /**
   * What the server was sent and answered so far: every refresh token presented, refusals by OAuth error code (by
   * status when the answer had none).
   */
  record(): Promise<{ refreshTokensPresented: readonly string[]; errors: Readonly<Record<string, number>> }>;
  /** What the server's access tokens look like. */
  readonly accessToken: RegExp;
  /** How the server refuses, where it departs from RFC 6749 §5.2 (each default: as the RFC says). */
  readonly refusals?: {
    /** A wrong client secret. Default `{ code: 'ERR_OAUTH', error: 'invalid_client', status: 401 }`. */
    readonly client?: Refusal;
    /** A scope the client may not have. Default `{ code: 'ERR_OAUTH', error: 'invalid_scope' }`. */
    readonly scope?: Refusal;
    /** A refresh token already spent. Default `{ code: 'ERR_OAUTH', error: 'invalid_grant' }`. */
    readonly spentRefreshToken?: Refusal;
    /** Whether presenting a spent refresh token also disables the newest of its chain (reuse detection). */
    readonly reuseBreaksChain?: boolean;
  };
}

/** A refusal as tokenwarden reports it: the error's code, and the OAuth `error` and status when there are. */
export interface Refusal {
  readonly code: 'ERR_OAUTH' | 'ERR_HTTP_STATUS';
  readonly error?: string;
  readonly status?: number;
}

/** How `server` refuses: RFC 6749 §5.2's answers, replaced by what it declares in `refusals`. */
function refusalsOf(server: InteropServer): Required<NonNullable<InteropServer['refusals']>> {
  return {
    client: { code: 'ERR_OAUTH', error: 'invalid_client', status: 401 },
    scope: { code: 'ERR_OAUTH', error: 'invalid_scope' },
    spentRefreshToken: { code: 'ERR_OAUTH', error: 'invalid_grant' },
    reuseBreaksChain: false,
    ...server.refusals,
  };
}

/** The key under which a server's record counts a refusal: its OAuth error, or its status when it gave none. */
const recorded = (refusal: Refusal) => refusal.error ?? String(refusal.status);

/** Refresh tokens presented more than once since `from` (an index into the server's record). */
async function spentTwice(server: InteropServer, from: number): Promise<string[]> {
  const seen = new Set<string>();
  return (await server.record()).refreshTokensPresented.slice(from).filter((t) => seen.has(t) || !seen.add(t));
}

/** The tests every server runs; `server()` is called in each test (after `beforeAll`). */
export function interopSuite(server: () => InteropServer): void {
  it('client credentials with client_secret_basic and client_secret_post: the lifetime from expires_in, the scope granted', async () => {
    const s = server();
    for (const clientAuth of ['client_secret_basic', 'client_secret_post'] as const) {
      const before = Date.now();
      const token = await clientCredentials({ ...s.client(), clientAuth, scope: 'read write' }).fetchToken({});
      expect(token).toMatchObject({ tokenType: 'Bearer', scope: 'read write' });
      expect(token.accessToken).toMatch(s.accessToken);
      expect(token.expiresAt! - before).toBeGreaterThan((s.accessTokenTtl - 5) * 1000);
      expect(token.expiresAt! - before).toBeLessThanOrEqual((s.accessTokenTtl + 1) * 1000);
    }
  });

  it('a wrong secret → ERR_OAUTH invalid_client (401), the secret nowhere in any form', async () => {
    const s = server();
    const { clientId, clientSecret } = s.client();
    const secret = `${clientSecret as string}-wrong`;
    const err = await clientCredentials({ ...s.client(), clientSecret: secret })
      .fetchToken({})
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(TokenwardenError);
    expect(err).toMatchObject(refusalsOf(s).client);
    // The hint about Basic's encoding only for a secret it percent-encodes (one a server may not decode).
    const encoded = basicUserPass(clientId, secret) !== `${clientId}:${secret}`;
    expect((err as Error).message.includes("clientAuth: 'client_secret_post'")).toBe(encoded);
    const everything = renderings(err);
    for (const form of [secret, encodeURIComponent(secret), Buffer.from(`${clientId}:${secret}`).toString('base64')]) {
      expect(everything).not.toContain(form);
    }
  });

  it('a scope the server does not grant → ERR_OAUTH invalid_scope (or what the server says instead)', async () => {
    const s = server();
    await expect(clientCredentials({ ...s.client(), scope: 'admin' }).fetchToken({})).rejects.toMatchObject(
      refusalsOf(s).scope,
    );
  });

  it('rotating refresh tokens: each spent once by a TokenManager; a spent one is refused (invalid_grant), then the newest works — or not, where reuse breaks the chain', async () => {
    const s = server();
    const from = (await s.record()).refreshTokensPresented.length;
    const first = (await s.login()).refresh_token;
    const manager = new TokenManager({ source: s.refreshSource(first) });
    const a = await manager.getToken();
    const b = await manager.refresh();
    const c = await manager.refresh();
    expect(new Set([first, a.refreshToken, b.refreshToken, c.refreshToken]).size).toBe(4);
    expect(await spentTwice(s, from)).toEqual([]);
    await manager.close();
    const { spentRefreshToken: spent, reuseBreaksChain } = refusalsOf(s);
    await expect(s.refreshSource(first).fetchToken({})).rejects.toMatchObject(spent);
    const newest = s.refreshSource(c.refreshToken as string).fetchToken({});
    // Reuse detection: the one reuse above cost the whole grant — what a fleet spending twice would do.
    if (reuseBreaksChain) await expect(newest).rejects.toMatchObject(spent);
    else expect((await newest).accessToken).toMatch(s.accessToken);
  });

  it('a fleet of four managers on one FileStore, refreshing at once ten times: no refresh token presented twice, none refused', async () => {
    const s = server();
    const before = await s.record();
    const from = before.refreshTokensPresented.length;
    const first = (await s.login()).refresh_token;
    const path = await mkdtemp(join(tmpdir(), 'tw-interop-fleet-'));
    onTestFinished(() => rm(path, { recursive: true, force: true }));
    const managers = Array.from(
      { length: 4 },
      () => new TokenManager({ source: s.refreshSource(first), store: new FileStore({ path }) }),
    );
    await Promise.all(managers.map((m) => m.getToken()));
    for (let round = 0; round < 10; round++) await Promise.all(managers.map((m) => m.refresh()));
    const after = await s.record();
    expect(await spentTwice(s, from)).toEqual([]);
    const refused = recorded(refusalsOf(s).spentRefreshToken);
    expect(after.errors[refused] ?? 0).toBe(before.errors[refused] ?? 0);
    // One refresh at a time across the fleet: a manager that waited for the lock finds the token just refreshed.
    const spent = after.refreshTokensPresented.length - from;
    expect(spent).toBeGreaterThanOrEqual(1 + 10);
    expect(spent).toBeLessThanOrEqual(1 + 10 * 4);
    await Promise.all(managers.map((m) => m.close()));
  });
}
