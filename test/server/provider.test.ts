import { describe, expect, it } from 'vitest';
import { ManualClock } from '../../src/clock.js';
import type { TokenwardenError } from '../../src/errors.js';
import { type VerifierProvider, createVerifier } from '../../src/server/index.js';

const T0 = Date.parse('2030-01-01T00:00:00Z');

interface Row {
  owner: string;
  scope: string;
  exp?: number;
}

/** A home-grown API-key scheme: the seed's provider behaviour, in a few lines. */
function apiKeys(rows: Record<string, Row>, calls: string[] = []): VerifierProvider<Row> {
  return {
    async getPayload(token) {
      calls.push(token);
      const row = rows[token];
      return row ? { ok: true, payload: row } : { ok: false, error: 'invalid_token', description: 'unknown key' };
    },
    getUid: (row) => row.owner,
    getInfo: (row) => ({ username: row.owner }),
    getExtra: (row) => ({ claims: { ...row }, plan: 'gold' }),
    getTtl: () => 60_000,
  };
}

describe('provider: any scheme plugs in', () => {
  it('builds the auth from the provider, caches for getTtl, and refuses what it refuses', async () => {
    const clock = new ManualClock(T0);
    const calls: string[] = [];
    const verify = createVerifier({ provider: apiKeys({ k1: { owner: 'alice', scope: 'read' } }, calls), clock });
    expect(verify.strategy).toBe('provider');
    const result = await verify('Bearer k1');
    expect(result).toEqual({
      ok: true,
      auth: {
        uid: 'alice',
        issuer: undefined,
        credentials: { token: 'k1', tokenType: 'Bearer', scopes: ['read'], expiresAt: undefined },
        info: { username: 'alice' },
        extra: { claims: { owner: 'alice', scope: 'read' }, plan: 'gold', strategy: 'provider' },
        ttl: 60_000,
      },
    });
    await verify('k1');
    expect(calls).toEqual(['k1']);
    await clock.advance(60_000);
    await verify('k1');
    expect(calls).toEqual(['k1', 'k1']);
    expect(await verify('k2')).toEqual({
      ok: false,
      failure: { error: 'invalid_token', description: 'unknown key', status: 401 },
    });
  });

  it('defaults read standard claims, and the default validity checks exp and nbf', async () => {
    const clock = new ManualClock(T0);
    const claims: Record<string, Record<string, unknown>> = {
      good: { sub: 'bob', scope: 'a b', iss: 'https://as.test', exp: T0 / 1000 + 60 },
      expired: { sub: 'bob', exp: T0 / 1000 - 1 },
      early: { sub: 'bob', nbf: T0 / 1000 + 60 },
    };
    const verify = createVerifier({
      clock,
      provider: { getPayload: async (token) => ({ ok: true, payload: claims[token] ?? {} }) },
    });
    const good = await verify('good');
    expect(good.ok && good.auth).toMatchObject({
      uid: 'bob',
      issuer: 'https://as.test',
      credentials: { scopes: ['a', 'b'], expiresAt: T0 + 60_000 },
      ttl: 60_000,
    });
    expect(await verify('expired')).toMatchObject({ ok: false, failure: { error: 'invalid_token', status: 401 } });
    expect(await verify('early')).toMatchObject({ ok: false, failure: { error: 'invalid_token', status: 401 } });
  });

  it('a provider that throws or says unavailable is a 503, reported, and not cached', async () => {
    const errors: TokenwardenError[] = [];
    let mode: 'throw' | 'unavailable' | 'ok' = 'throw';
    const verify = createVerifier({
      onError: (e) => errors.push(e),
      provider: {
        async getPayload() {
          if (mode === 'throw') throw new Error('database down');
          if (mode === 'unavailable') {
            return { ok: false, error: 'temporarily_unavailable', description: 'db down', cause: new Error('x') };
          }
          return { ok: true, payload: { sub: 'carol' } };
        },
      },
    });
    expect(await verify('t')).toMatchObject({ ok: false, failure: { error: 'temporarily_unavailable', status: 503 } });
    mode = 'unavailable';
    expect(await verify('t')).toMatchObject({ ok: false, failure: { error: 'temporarily_unavailable', status: 503 } });
    mode = 'ok';
    expect(await verify('t')).toMatchObject({ ok: true, auth: { uid: 'carol' } });
    expect(errors.map((e) => e.code)).toEqual(['ERR_PROVIDER', 'ERR_PROVIDER']);
  });

  it('remembers a failure for cacheForMs, no longer', async () => {
    const clock = new ManualClock(T0);
    let calls = 0;
    const verify = createVerifier({
      clock,
      provider: {
        async getPayload() {
          calls++;
          return { ok: false, error: 'invalid_token', description: 'revoked', cacheForMs: 5_000 };
        },
      },
    });
    await verify('t');
    await verify('t');
    expect(calls).toBe(1);
    await clock.advance(5_000);
    await verify('t');
    expect(calls).toBe(2);
  });

  it('needs getPayload', () => {
    expect(() => createVerifier({ provider: {} as never })).toThrow(
      expect.objectContaining({ code: 'ERR_CONFIG' }) as unknown as Error,
    );
  });
});
