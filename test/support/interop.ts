/**
 * What every real authorization server must show the client side doing, whatever its habits: rotating refresh
 * tokens spent once by a TokenManager, and a fleet of managers on one FileStore that never presents a refresh
 * token twice. One suite, run against each server (`test/node-oauth2-server.test.ts`,
 * `test/django-oauth-toolkit.test.ts`; oidc-provider has its own, deeper fleet suites).
 */
import { join } from 'node:path';
import { expect, it } from 'vitest';
import { FileStore, TokenManager, type TokenSource } from '../../src/index.js';

/** A server under test, as the suite needs it. */
export interface InteropServer {
  /** A new login's token response, with a refresh token. */
  login(): Promise<{ refresh_token: string }>;
  /** The refresh token grant of the client the logins are for. */
  refreshSource(refreshToken: string): TokenSource;
  /** What the server was sent and answered so far: every refresh token presented, OAuth errors by code. */
  record(): Promise<{ refreshTokensPresented: readonly string[]; errors: Readonly<Record<string, number>> }>;
  /** What the server's access tokens look like. */
  readonly accessToken: RegExp;
  /** A directory the FileStore of the fleet test may use. */
  readonly dir: string;
}

/** Refresh tokens presented more than once since `from` (an index into the server's record). */
async function spentTwice(server: InteropServer, from: number): Promise<string[]> {
  const seen = new Set<string>();
  return (await server.record()).refreshTokensPresented.slice(from).filter((t) => seen.has(t) || !seen.add(t));
}

/** The refresh-token tests every server runs; `server()` is called in each test (after `beforeAll`). */
export function rotationSuite(server: () => InteropServer): void {
  it('rotating refresh tokens: each spent once by a TokenManager; a spent one is refused (invalid_grant), the newest works', async () => {
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
    await expect(s.refreshSource(first).fetchToken({})).rejects.toMatchObject({
      code: 'ERR_OAUTH',
      error: 'invalid_grant',
    });
    expect((await s.refreshSource(c.refreshToken as string).fetchToken({})).accessToken).toMatch(s.accessToken);
  });

  it('a fleet of four managers on one FileStore, refreshing at once ten times: no refresh token presented twice, no invalid_grant', async () => {
    const s = server();
    const before = await s.record();
    const from = before.refreshTokensPresented.length;
    const first = (await s.login()).refresh_token;
    const path = join(s.dir, `fleet-${from}`);
    const managers = Array.from(
      { length: 4 },
      () => new TokenManager({ source: s.refreshSource(first), store: new FileStore({ path }) }),
    );
    await Promise.all(managers.map((m) => m.getToken()));
    for (let round = 0; round < 10; round++) await Promise.all(managers.map((m) => m.refresh()));
    const after = await s.record();
    expect(await spentTwice(s, from)).toEqual([]);
    expect(after.errors['invalid_grant'] ?? 0).toBe(before.errors['invalid_grant'] ?? 0);
    // One refresh at a time across the fleet: a manager that waited for the lock finds the token just refreshed.
    const spent = after.refreshTokensPresented.length - from;
    expect(spent).toBeGreaterThanOrEqual(1 + 10);
    expect(spent).toBeLessThanOrEqual(1 + 10 * 4);
    await Promise.all(managers.map((m) => m.close()));
  });
}
