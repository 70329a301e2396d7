/**
 * Claims from the ID token, merged with the UserInfo endpoint when asked — against an oidc-provider whose
 * default access tokens are for UserInfo.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MemoryStore } from '../../src/stores/memory.js';
import { type TestAuthorizationServer, startAuthorizationServer } from '../support/authorization-server.js';
import { sleep, usersFor } from './helpers.js';

let as: TestAuthorizationServer;
beforeAll(async () => {
  as = await startAuthorizationServer({ accessTokenTtl: 2, userinfoTokens: true });
});
afterAll(async () => {
  await as.close();
});

describe('UserTokens claims', () => {
  it('merges UserInfo claims over the ID token claims, at most every maxAge', async () => {
    const store = new MemoryStore();
    const users = usersFor(as, { store });
    await users.save('alice', await as.login('alice', { resource: null }));
    const fromIdToken = await users.getClaimsInfo('alice');
    expect(fromIdToken?.from).toBe('id_token');

    const calls = as.counts.userinfo;
    const merged = await users.getClaimsInfo('alice', { userinfo: { maxAge: '1h' } });
    expect(as.counts.userinfo).toBe(calls + 1);
    expect(merged).toMatchObject({ from: 'userinfo', claims: { sub: 'alice', email: 'alice@example.test' } });
    expect(merged!.updatedAt).toBeGreaterThanOrEqual(fromIdToken!.updatedAt);

    // Within maxAge: the stored claims, also for another instance.
    const other = usersFor(as, { store });
    expect(await other.getClaims('alice', { userinfo: { maxAge: '1h' } })).toEqual(merged!.claims);
    expect(as.counts.userinfo).toBe(calls + 1);
    // `true`: every time.
    await sleep(5);
    const again = await users.getClaimsInfo('alice', { userinfo: true });
    expect(as.counts.userinfo).toBe(calls + 2);
    expect(again!.updatedAt).toBeGreaterThan(merged!.updatedAt);
    // The refresh token survived the claim updates (compare-and-set on the whole record).
    await sleep(2_100);
    expect((await users.getAccessToken('alice')).accessToken).toBeTruthy();
    expect(as.counts.errors).toEqual({});
    await users.close();
    await other.close();
  });
});
