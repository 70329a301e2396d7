/**
 * What the resource server's validation cache may keep and for how long: no cached result outlives a deadline
 * the strategy would enforce (`maxTokenAge`), a flood of distinct bad tokens cannot push valid ones out, and a
 * provider's payload holding binary values (a PostgreSQL `bytea`, a MongoDB `ObjectId`) can be cached at all.
 */
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { ManualClock } from '../../src/clock.js';
import type { TokenwardenError } from '../../src/errors.js';
import { type VerifierProvider, createVerifier } from '../../src/server/index.js';
import {
  API_RESOURCE,
  type TestAuthorizationServer,
  startAuthorizationServer,
} from '../support/authorization-server.js';
import { type TestAuthorizationServer as KitServer, createTestAuthorizationServer } from '../../src/testing/index.js';
import { forge, segment } from '../server/support.js';

const T0 = Date.parse('2030-01-01T00:00:00Z');

/** An API-key provider that counts its lookups and remembers unknown keys for 10 s (as the docs suggest). */
function apiKeys(
  valid: Record<string, Record<string, unknown>>,
  lookups: string[],
): VerifierProvider<Record<string, unknown>> {
  return {
    async getPayload(token) {
      lookups.push(token);
      const row = valid[token];
      return row
        ? { ok: true, payload: row }
        : { ok: false, error: 'invalid_token', description: 'unknown key', cacheForMs: 10_000 };
    },
  };
}

describe('a flood of distinct bad tokens', () => {
  it('never pushes a valid token out of the cache, and the cache stays bounded', async () => {
    const clock = new ManualClock(T0);
    const lookups: string[] = [];
    const verify = createVerifier({
      clock,
      cache: { maxEntries: 100 },
      provider: apiKeys({ good: { sub: 'alice', scope: 'read' } }, lookups),
    });
    expect((await verify('Bearer good')).ok).toBe(true);
    // Three times the cache's size in unknown keys, each remembered as refused.
    for (let i = 0; i < 300; i++) {
      expect(await verify(`Bearer unknown-${i}`)).toMatchObject({ ok: false, failure: { error: 'invalid_token' } });
    }
    expect(verify.cacheSize).toBeLessThanOrEqual(100 + 25);
    lookups.length = 0;
    expect((await verify('Bearer good')).ok).toBe(true);
    expect(lookups).toEqual([]); // answered from the cache: no database lookup for a valid client
    // The refusals still spare the provider for the most recent bad keys.
    expect((await verify('Bearer unknown-299')).ok).toBe(false);
    expect(lookups).toEqual([]);
  });
});

describe('a flood of JWTs naming an untrusted issuer (refused before any signature check)', () => {
  let as: TestAuthorizationServer;
  beforeAll(async () => {
    as = await startAuthorizationServer({ accessTokenTtl: 300 });
  });
  afterAll(() => as.close());

  it('costs nothing to forge, and still never pushes a valid token out of the cache', async () => {
    const verify = createVerifier({
      issuer: [as.issuer, 'https://login.other.example'],
      audience: API_RESOURCE,
      allowInsecureRequests: true,
      cache: { maxEntries: 100 },
    });
    const caches: (string | undefined)[] = [];
    verify.on('verify', ({ cache }) => caches.push(cache));
    const token = await forge(as);
    expect((await verify(token)).ok).toBe(true);
    for (let i = 0; i < 300; i++) {
      const forged = `${segment({ alg: 'RS256', kid: 'k' })}.${segment({ iss: `https://evil.example/${i}` })}.AAAA`;
      expect(await verify(forged)).toMatchObject({ ok: false, failure: { description: 'unexpected issuer' } });
    }
    expect(verify.cacheSize).toBeLessThanOrEqual(100 + 25);
    caches.length = 0;
    expect((await verify(token)).ok).toBe(true);
    expect(caches).toEqual(['hit']);
  });
});

describe('clearCache() while a check is in flight', () => {
  it('does not let the answer judged before it be cached after it (revoke, clear, still accepted)', async () => {
    const clock = new ManualClock(T0);
    let revoked = false;
    let release: (() => void) | undefined;
    const lookups: string[] = [];
    const verify = createVerifier({
      clock,
      provider: {
        async getPayload(token) {
          lookups.push(token);
          const active = !revoked; // read from the database before the revocation commits
          if (lookups.length === 1) await new Promise<void>((r) => (release = r));
          return active
            ? { ok: true, payload: { sub: 'alice' } }
            : { ok: false, error: 'invalid_token', description: 'revoked' };
        },
      },
    });
    const first = verify('Bearer k1');
    await vi.waitFor(() => expect(release).toBeDefined());
    revoked = true;
    verify.clearCache(); // what the docs prescribe after revoking tokens out of band
    const during = verify('Bearer k1'); // arrives after the clear: its own check, not the stale one
    release?.();
    expect((await first).ok).toBe(true); // it arrived before the revocation
    expect(await during).toMatchObject({ ok: false, failure: { description: 'revoked' } });
    expect(await verify('Bearer k1')).toMatchObject({ ok: false, failure: { description: 'revoked' } });
    expect(lookups).toEqual(['k1', 'k1', 'k1']);
  });
});

describe('a provider payload with binary values', () => {
  /** Like bson 6's ObjectId: its 12 bytes are an own `buffer` property. */
  class ObjectIdLike {
    readonly buffer = Uint8Array.from([0x65, 0x1f, 0x2a, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
  }

  it('is accepted and cached (a bytea column, an ObjectId), not answered 503 by the freeze', async () => {
    const clock = new ManualClock(T0);
    const errors: TokenwardenError[] = [];
    const lookups: string[] = [];
    const row = { _id: new ObjectIdLike(), sub: 'alice', scope: 'read', hash: Buffer.from('c2VjcmV0', 'base64') };
    const verify = createVerifier({ clock, onError: (e) => errors.push(e), provider: apiKeys({ k1: row }, lookups) });
    const result = await verify('Bearer k1');
    expect(result).toMatchObject({ ok: true, auth: { uid: 'alice', credentials: { scopes: ['read'] } } });
    expect(errors).toEqual([]);
    expect((await verify('Bearer k1')).ok).toBe(true);
    expect(lookups).toEqual(['k1']);
    // The rest of the result is frozen as before; the binary values are the provider's own, untouched.
    if (result.ok) {
      expect(Object.isFrozen(result.auth.extra.claims)).toBe(true);
      expect(result.auth.extra.claims['hash']).toBe(row.hash);
      expect(Buffer.isBuffer(result.auth.extra.claims['hash'])).toBe(true);
    }
  });
});

describe('maxTokenAge is a deadline the cache keeps', () => {
  let as: TestAuthorizationServer;
  beforeAll(async () => {
    as = await startAuthorizationServer({ accessTokenTtl: 300 });
  });
  afterAll(() => as.close());

  it('a token cached a moment before it turned too old is refused once it has', async () => {
    const clock = new ManualClock(Date.now());
    const verify = createVerifier({
      issuer: as.issuer,
      audience: API_RESOURCE,
      allowInsecureRequests: true,
      maxTokenAge: '1m',
      clock,
    });
    const now = Math.floor(clock.now() / 1000);
    const token = await forge(as, { iat: now - 50, exp: now + 3600 });
    expect((await verify(token)).ok).toBe(true);
    const cached = await verify(token);
    expect(cached.ok && cached.auth.ttl).toBeLessThanOrEqual(10_000);
    await clock.advance(15_000); // iat is now 65 s ago
    expect(await verify(token)).toEqual({
      ok: false,
      failure: expect.objectContaining({ error: 'invalid_token', description: 'token too old' }),
    });
  });
});

describe('clearCache() after an emergency key revocation, as the docs prescribe', () => {
  let as: KitServer;
  const clock = new ManualClock(Date.now());
  beforeAll(async () => {
    as = await createTestAuthorizationServer({ clock });
  });
  afterAll(() => as.close());

  it('refuses a token of the withdrawn key at once, without waiting out jwks.cacheMaxAge', async () => {
    const verify = createVerifier({ issuer: as.issuer, audience: as.audience, allowInsecureRequests: true, clock });
    const compromised = await as.mintAccessToken();
    expect((await verify(compromised)).ok).toBe(true);
    await as.rotateKeys({ keepPrevious: false }); // the key-compromise drill
    verify.clearCache();
    expect(await verify(compromised)).toMatchObject({
      ok: false,
      failure: { error: 'invalid_token', description: 'unknown signing key' },
    });
    // A token of the new key verifies (one JWKS fetch served both).
    expect((await verify(await as.mintAccessToken())).ok).toBe(true);
  });
});
