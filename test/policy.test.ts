import { describe, expect, it } from 'vitest';
import { backoffDelay, parseRetryAfter, resolvePolicy, staleAt, statusAt } from '../src/policy.js';
import type { Token } from '../src/token.js';

const T0 = 1_000_000;
const token = (lifetimeMs: number | undefined): Token => ({
  accessToken: 'a',
  tokenType: 'Bearer',
  issuedAt: T0,
  ...(lifetimeMs !== undefined && { expiresAt: T0 + lifetimeMs }),
  raw: {},
});

describe('refresh policy', () => {
  const policy = resolvePolicy();

  it('refreshes a one-hour token 30 s before expiry plus up to 60 s of jitter', () => {
    expect(staleAt(token(3_600_000), policy, 0)).toBe(T0 + 3_600_000 - 30_000);
    expect(staleAt(token(3_600_000), policy, 0.999999)).toBeCloseTo(T0 + 3_600_000 - 90_000, -1);
  });

  it('caps the margin at half the lifetime, so a 4 s token is refreshed after 1.6–2 s, not on every call', () => {
    const early = staleAt(token(4000), policy, 0.999999);
    const late = staleAt(token(4000), policy, 0);
    expect(late).toBe(T0 + 2000);
    expect(early).toBeGreaterThanOrEqual(T0 + 1600);
    expect(statusAt(token(4000), late, T0 + 1000)).toBe('fresh');
    expect(statusAt(token(4000), late, T0 + 2500)).toBe('stale');
    expect(statusAt(token(4000), late, T0 + 4000)).toBe('expired');
  });

  it('refreshes by age with every, whichever comes first', () => {
    const every = resolvePolicy({ every: '5m' });
    expect(staleAt(token(3_600_000), every, 0)).toBe(T0 + 300_000);
    expect(staleAt(token(60_000), every, 0)).toBe(T0 + 30_000);
  });

  it('refreshes a token of unknown lifetime every 5 minutes by default, and never calls it expired', () => {
    expect(staleAt(token(undefined), policy, 0)).toBe(T0 + 300_000);
    expect(statusAt(token(undefined), T0 + 300_000, T0 + 1e12)).toBe('stale');
  });

  it('backs off exponentially with jitter, capped', () => {
    expect(backoffDelay(policy, 1, 0)).toBe(100);
    expect(backoffDelay(policy, 1, 1)).toBe(200);
    expect(backoffDelay(policy, 3, 1)).toBe(800);
    expect(backoffDelay(policy, 30, 1)).toBe(30_000);
    expect(backoffDelay(policy, 30, 0)).toBe(15_000);
  });

  it('honours Retry-After when it asks for longer', () => {
    expect(backoffDelay(policy, 1, 0, 5000)).toBe(5000);
    expect(backoffDelay(policy, 30, 1, 10)).toBe(30_000);
  });

  it('parses Retry-After in seconds and as a date', () => {
    expect(parseRetryAfter('120', 0)).toBe(120_000);
    expect(parseRetryAfter(new Date(T0 + 5000).toUTCString(), T0)).toBeGreaterThan(3000);
    expect(parseRetryAfter('soon', 0)).toBeUndefined();
    expect(parseRetryAfter(null, 0)).toBeUndefined();
  });

  it('rejects invalid options with ERR_CONFIG', () => {
    expect(() => resolvePolicy({ beforeExpiry: '30 parsecs' as never })).toThrow(
      expect.objectContaining({ code: 'ERR_CONFIG' }),
    );
    expect(() => resolvePolicy({ maxBeforeExpiryRatio: 2 })).toThrow(expect.objectContaining({ code: 'ERR_CONFIG' }));
    expect(() => resolvePolicy({ every: 0 })).toThrow(expect.objectContaining({ code: 'ERR_CONFIG' }));
  });
});
