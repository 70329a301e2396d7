/**
 * docs/server.md "Caching guarantees" and the `negativeCacheMaxAge` default, broken on purpose: tokens from the
 * real authorization server's key (oidc-provider), the verifier on a ManualClock, cache use read from its `verify`
 * events.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ManualClock } from '../../src/clock.js';
import { createVerifier } from '../../src/server/index.js';
import {
  API_RESOURCE,
  type TestAuthorizationServer,
  startAuthorizationServer,
} from '../support/authorization-server.js';
import { forge } from '../server/support.js';

let as: TestAuthorizationServer;
beforeAll(async () => {
  as = await startAuthorizationServer({ accessTokenTtl: 300 });
});
afterAll(() => as.close());

function verifierOn(clock: ManualClock, extra: Record<string, unknown> = {}) {
  const verify = createVerifier({
    issuer: as.issuer,
    audience: API_RESOURCE,
    allowInsecureRequests: true,
    clock,
    ...extra,
  });
  const uses: (string | undefined)[] = [];
  verify.on('verify', ({ cache }) => uses.push(cache));
  return { verify, uses };
}

describe('the validation cache', () => {
  it('a token accepted within clockTolerance after its exp is not cached: refused once the tolerance is over', async () => {
    const clock = new ManualClock(Date.now());
    const { verify, uses } = verifierOn(clock, { clockTolerance: '30s' });
    const token = await forge(as, { exp: Math.floor(clock.now() / 1000) - 10 }); // expired 10 s ago
    expect((await verify(token)).ok).toBe(true);
    expect((await verify(token)).ok).toBe(true);
    expect(uses).toEqual(['miss', 'miss']);
    expect(verify.cacheSize).toBe(0);
    await clock.advance(21_000); // 31 s past exp: beyond the tolerance
    expect(await verify(token)).toMatchObject({ ok: false, failure: { error: 'invalid_token', status: 401 } });
  });

  it('a well-signed JWT with bad claims is remembered for negativeCacheMaxAge (30 s by default), then judged again', async () => {
    const clock = new ManualClock(Date.now());
    const { verify, uses } = verifierOn(clock);
    const token = await forge(as, { aud: 'https://elsewhere.example.test' });
    const refused = { ok: false, failure: { error: 'invalid_token', status: 401 } };
    expect(await verify(token)).toMatchObject(refused);
    await clock.advance(29_000);
    expect(await verify(token)).toMatchObject(refused);
    expect(uses).toEqual(['miss', 'hit']);
    await clock.advance(1_000);
    expect(await verify(token)).toMatchObject(refused);
    expect(uses).toEqual(['miss', 'hit', 'miss']);
  });

  it('negativeCacheMaxAge: a shorter memory for bad tokens', async () => {
    const clock = new ManualClock(Date.now());
    const { verify, uses } = verifierOn(clock, { negativeCacheMaxAge: '5s' });
    const token = await forge(as, { aud: 'https://elsewhere.example.test' });
    await verify(token);
    await clock.advance(4_000);
    await verify(token);
    await clock.advance(1_000);
    await verify(token);
    expect(uses).toEqual(['miss', 'hit', 'miss']);
  });
});
