/**
 * docs/users.md promises about when a user's held access token is served, broken on purpose: UserTokens on a
 * ManualClock against the test kit's authorization server, whose token endpoint is made to fail so that only the
 * held token could answer.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ManualClock, MemoryStore, UserTokens } from '../../src/index.js';
import { type TestAuthorizationServer, createTestAuthorizationServer } from '../../src/testing/index.js';

let as: TestAuthorizationServer;
beforeAll(async () => {
  as = await createTestAuthorizationServer({ accessTokenTtl: '60s' });
});
afterAll(() => as.close());

describe('UserTokens: a held access token', () => {
  it('is served while stale and its refresh fails, but not within min(5 s, 15 %) of its expiry', async () => {
    // A 60 s token: stale at 45 s (refresh.maxBeforeExpiryRatio 0.25, no jitter), served until 55 s (5 s before
    // expiry, less than 15 %) so that it is still valid when it reaches the API; never up to its last millisecond.
    // (Its expiry follows the JWT's whole-second `exp`: up to a second earlier. The checks keep 2 s either side.)
    const clock = new ManualClock();
    const users = new UserTokens({
      issuer: as.issuer,
      ...as.client,
      store: new MemoryStore(),
      clock,
      random: () => 0,
      allowInsecureRequests: true,
    });
    try {
      await users.save('alice', await as.issueTokens({ sub: 'alice', scope: 'openid' }));
      const held = await users.getAccessToken('alice');
      await as.fault('503');
      await clock.advance(50_000);
      expect((await users.getAccessToken('alice')).accessToken).toBe(held.accessToken); // stale, served
      await clock.advance(7_000); // 57 s: 2–3 s left, within the leeway
      const late = await users.getAccessToken('alice').then(
        (token) => token.accessToken,
        (err: { code?: string }) => err.code,
      );
      expect(late).not.toBe(held.accessToken);
      expect(late).toBe('ERR_HTTP_STATUS'); // the server's failure, not a token about to expire
    } finally {
      await as.fault('ok');
      await users.close();
    }
  });
});
