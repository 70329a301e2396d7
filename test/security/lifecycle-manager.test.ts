/**
 * TokenManager's token lifecycle against a red-team checklist: time — a token request slower than the token's
 * life, a wall clock stepped back (an NTP step, a VM restored from a snapshot: `ManualClock.set()`, which moves
 * the wall clock and not the elapsed time timers count). A real authorization server (the test kit's, on the same
 * `ManualClock`).
 */
import { once } from 'node:events';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ManualClock } from '../../src/clock.js';
import { TokenManager } from '../../src/manager.js';
import { clientCredentials } from '../../src/sources/client-credentials.js';
import { type TestAuthorizationServer, createTestAuthorizationServer } from '../../src/testing/index.js';

const clock = new ManualClock(Date.parse('2031-03-01T00:00:00Z'));
/** One-second access tokens: shorter than a slow token request. */
let brief: TestAuthorizationServer;
/** One-minute access tokens. */
let as: TestAuthorizationServer;
beforeAll(async () => {
  [brief, as] = await Promise.all([
    createTestAuthorizationServer({ accessTokenTtl: '1s', clock }),
    createTestAuthorizationServer({ accessTokenTtl: '60s', clock }),
  ]);
});
afterAll(async () => {
  await Promise.all([brief.close(), as.close()]);
});

const HOUR = 3_600_000;

function managerOn(server: TestAuthorizationServer, background: boolean): TokenManager {
  const source = clientCredentials({ issuer: server.issuer, ...server.client, allowInsecureRequests: true, clock });
  return new TokenManager({ source, clock, random: () => 0.5, refresh: { background } });
}

describe('TokenManager: a token request slower than the token lives', () => {
  it('getToken() never resolves to an expired token: ERR_INVALID_RESPONSE, retried with a growing backoff', async () => {
    let slow = true;
    // Every token request takes 1.5 s (a loaded server, a slow network) for a token that lives 1 s.
    const fetch: typeof globalThis.fetch = async (input, init) => {
      if (slow && String(input instanceof Request ? input.url : input).endsWith('/token')) await clock.advance(1500);
      return globalThis.fetch(input, init);
    };
    const source = clientCredentials({
      issuer: brief.issuer,
      ...brief.client,
      allowInsecureRequests: true,
      clock,
      fetch,
    });
    const manager = new TokenManager({ source, clock, random: () => 0.5, refresh: { background: false } });
    const failures: number[] = [];
    manager.on('refreshFailed', (e) => failures.push(e.failures));

    // Without the fix: resolved with a token already 500 ms past its expiry (peek() says 'expired'), which every
    // API refuses — and each call made one more token request at once, failures never counted.
    await expect(manager.getToken()).rejects.toMatchObject({
      code: 'ERR_INVALID_RESPONSE',
      message: expect.stringMatching(/expired by the time it arrived/),
    });
    for (let i = 0; i < 3; i++) {
      await clock.advance(60_000); // past any backoff
      await expect(manager.getToken()).rejects.toMatchObject({ code: 'ERR_INVALID_RESPONSE' });
    }
    expect(failures).toEqual([1, 2, 3, 4]); // one run of failures: the backoff grows

    slow = false;
    await clock.advance(60_000);
    const token = await manager.getToken();
    expect(token.expiresAt).toBeGreaterThan(clock.now());
    expect(manager.peek().status).toBe('fresh');
    await manager.close();
  });
});

describe('TokenManager: the wall clock stepped back an hour', () => {
  it('a held token is judged by the time that has passed: not served past its real expiry', async () => {
    const manager = managerOn(as, false);
    const first = await manager.getToken();
    clock.set(clock.now() - HOUR);
    await clock.advance(61_000); // the first token has really expired
    const next = await manager.getToken();
    // Without the fix: the first token again, 'fresh' for another hour by the wall clock (every API refuses it).
    expect(next.accessToken).not.toBe(first.accessToken);
    expect(manager.peek().status).toBe('fresh');
    await clock.advance(40_000); // the new token is stale by the time passed, not by the wall
    expect(manager.peek().status).toBe('stale');
    await manager.close();
  });

  it('a failure just before the step does not keep callers failing, without a request, for the hour', async () => {
    const manager = managerOn(as, false);
    for (const fault of ['500', '503'] as const) {
      await as.fault(fault, { times: 1 }); // 503 comes with Retry-After: 1
      await expect(manager.getToken()).rejects.toMatchObject({ code: 'ERR_HTTP_STATUS' });
      clock.set(clock.now() - HOUR);
      await clock.advance(2000); // the server is fine again, and the backoff (or Retry-After) is over
      const before = as.stats().token;
      // Without the fix: the failure again (ERR_HTTP_STATUS, then ERR_RETRY_LATER for 503) for an hour.
      await expect(manager.getToken()).resolves.toMatchObject({ tokenType: 'Bearer' });
      expect(as.stats().token - before).toBe(1);
      await manager.invalidate();
    }
    await manager.close();
  });

  it('the background refresh still runs when the token turns stale by the time passed', async () => {
    const manager = managerOn(as, true);
    const first = await manager.getToken();
    clock.set(clock.now() - HOUR);
    const refreshed = once(manager, 'token');
    await clock.advance(30_000); // stale after 27 s (30 s margin, 3 s of jitter)
    // Without the fix the timer found the token 'fresh' by the wall clock and waited an hour more.
    const [info] = (await Promise.race([refreshed, new Promise((r) => setTimeout(r, 5000, [undefined]))])) as [
      { from: string } | undefined,
    ];
    expect(info?.from).toBe('source');
    expect((await manager.getToken()).accessToken).not.toBe(first.accessToken);
    await manager.close();
  });
});
