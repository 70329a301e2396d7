/**
 * The validation cache's keys: the SHA-256 of every character of a token, and the short-lived memory of
 * recent valid tokens that spares the hash on a repeated token without ever letting two tokens share a key.
 */
import { describe, expect, it } from 'vitest';
import { ManualClock } from '../../src/clock.js';
import { RECENT_MAX, RECENT_MS, RecentKeys, cacheKey } from '../../src/server/cache.js';

const SIGNATURE = 'S'.repeat(43);

/** The key as the verifier gets it: from memory, else hashed. */
const keyOf = (recent: RecentKeys, token: string, now: number): string => recent.known(token, now) ?? cacheKey(token);

/** What the verifier does for a token its cache accepted: look the key up, then remember it. */
function seen(recent: RecentKeys, token: string, now: number): string {
  const key = keyOf(recent, token, now);
  recent.remember(token, key, now);
  return key;
}

describe('RecentKeys', () => {
  it('gives every token its own SHA-256 key, also tokens that end alike (a JWT with its signature reused)', () => {
    const recent = new RecentKeys(new ManualClock(0));
    const genuine = `eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.${SIGNATURE}`;
    const forged = `eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJtYWxsb3J5In0.${SIGNATURE}`;
    expect(seen(recent, genuine, 0)).toBe(cacheKey(genuine));
    expect(keyOf(recent, forged, 1)).toBe(cacheKey(forged));
    expect(seen(recent, forged, 1)).toBe(cacheKey(forged));
    expect(keyOf(recent, genuine, 2)).toBe(cacheKey(genuine));
    expect(cacheKey(genuine)).not.toBe(cacheKey(forged));
    // Short tokens, and tokens that differ only before their last characters.
    for (const token of ['a', 'ab', `x${'t'.repeat(60)}`, `y${'t'.repeat(60)}`, `x${'t'.repeat(60)}`]) {
      expect(seen(recent, token, 3)).toBe(cacheKey(token));
    }
  });

  it('holds only what it is told to remember: looking a token up holds nothing', () => {
    const recent = new RecentKeys(new ManualClock(0));
    for (let i = 0; i < 100; i++) expect(keyOf(recent, `garbage-${i}`, 0)).toBe(cacheKey(`garbage-${i}`));
    expect(recent.size).toBe(0);
  });

  it('holds a token for about a second, then forgets it (a timer that the clock runs)', async () => {
    const clock = new ManualClock(0);
    const recent = new RecentKeys(clock);
    seen(recent, 'token-one', clock.now());
    seen(recent, 'token-two', clock.now());
    expect(recent.size).toBe(2);
    await clock.advance(RECENT_MS);
    expect(recent.size).toBe(0);
    // Seen again: held again, and swept again.
    expect(seen(recent, 'token-one', clock.now())).toBe(cacheKey('token-one'));
    expect(recent.size).toBe(1);
    await clock.advance(RECENT_MS);
    expect(recent.size).toBe(0);
  });

  it('an entry past its second is not used even before the sweep', () => {
    const recent = new RecentKeys(new ManualClock(0));
    const token = `abc.def.${SIGNATURE}`;
    seen(recent, token, 0);
    expect(keyOf(recent, token, RECENT_MS - 1)).toBe(cacheKey(token));
    expect(keyOf(recent, token, RECENT_MS + 5)).toBe(cacheKey(token));
  });

  it('holds at most RECENT_MAX tokens however many are remembered', () => {
    const recent = new RecentKeys(new ManualClock(0));
    for (let i = 0; i < RECENT_MAX * 3; i++) expect(seen(recent, `token-${i}`, 0)).toBe(cacheKey(`token-${i}`));
    expect(recent.size).toBe(RECENT_MAX);
  });
});
