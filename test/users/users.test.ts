import { inspect } from 'node:util';
import { decodeJwt } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ManualClock } from '../../src/clock.js';
import { TokenwardenError } from '../../src/errors.js';
import { MemoryStore } from '../../src/stores/memory.js';
import type { TokenStore } from '../../src/stores/store.js';
import type { UserTokens } from '../../src/users/index.js';
import {
  API_RESOURCE,
  OPAQUE_RESOURCE,
  type TestAuthorizationServer,
  startAuthorizationServer,
} from '../support/authorization-server.js';
import { type TestApi, startApi } from '../support/api.js';
import { hsIdToken, msUntilExpiry, sleep, subjectOf, syntheticResponse, untilExpired, usersFor } from './helpers.js';
import { cleanupStores, openStore, storeFactories, wipeStore } from './stores.js';

let as: TestAuthorizationServer;
/** Five-minute tokens: for tests that must not see a token expire on a loaded machine. */
let steady: TestAuthorizationServer;

beforeAll(async () => {
  [as, steady] = await Promise.all([
    startAuthorizationServer({ accessTokenTtl: 2 }),
    startAuthorizationServer({ accessTokenTtl: 300 }),
  ]);
});
afterAll(async () => {
  await Promise.all([as.close(), steady.close()]);
  await cleanupStores();
});

const refreshes = (): number => as.counts.byGrant['refresh_token'] ?? 0;
const steadyRefreshes = (): number => steady.counts.byGrant['refresh_token'] ?? 0;
const failure = (promise: Promise<unknown>): Promise<TokenwardenError> =>
  promise.then(
    () => {
      throw new Error('expected a rejection');
    },
    (err: unknown) => {
      expect(err).toBeInstanceOf(TokenwardenError);
      return err as TokenwardenError;
    },
  );

/** Spends a refresh token at the server directly (as another client or a leaked copy would). */
async function spend(refreshToken: string): Promise<{ status: number; body: Record<string, unknown> }> {
  const { clientId, clientSecret } = as.clients.app;
  const res = await fetch(`${as.issuer}/token`, {
    method: 'POST',
    headers: {
      authorization: `Basic ${Buffer.from(`${clientId}:${clientSecret}`).toString('base64')}`,
      'content-type': 'application/x-www-form-urlencoded',
    },
    body: new URLSearchParams({ grant_type: 'refresh_token', refresh_token: refreshToken }),
  });
  return { status: res.status, body: (await res.json()) as Record<string, unknown> };
}

for (const factory of storeFactories) {
  describe.skipIf(factory.skip !== undefined)(`UserTokens on ${factory.name}`, () => {
    const open = async (): Promise<TokenStore> => openStore(await factory.spec());

    it('saves a login and serves its access token, claims and ID token', async () => {
      const store = await open();
      const users = usersFor(steady, { store });
      const json = await steady.login('alice');
      const saved = await users.save('alice', json);
      expect(saved.accessToken).toBe(json['access_token']);

      const token = await users.getAccessToken('alice');
      expect(token.accessToken).toBe(json['access_token']);
      expect(token.tokenType).toBe('Bearer');
      expect(token.refreshToken).toBeUndefined(); // kept once, in the record; never handed out
      expect(token.expiresAt).toBe((decodeJwt(json['access_token'] as string).exp as number) * 1000);

      const claims = await users.getClaims('alice');
      expect(claims).toMatchObject({ sub: 'alice', email: 'alice@example.test', name: 'User alice' });
      expect(claims).not.toHaveProperty('aud');
      expect(claims).not.toHaveProperty('nonce');
      const info = await users.getClaimsInfo('alice');
      expect(info?.from).toBe('id_token');
      expect(info?.updatedAt).toBeGreaterThan(Date.now() - 10_000);
      expect(await users.getIdToken('alice')).toBe(json['id_token']);

      const list = await users.listAccessTokens('alice');
      expect(list).toHaveLength(1);
      expect(list[0]?.token.accessToken).toBe(json['access_token']);
      expect(list[0]?.scope).toBeUndefined();
      expect(users.keyFor('alice')).toMatch(/^tw1:user:[A-Za-z0-9_-]{43}:[A-Za-z0-9_-]{43}$/);
      expect((await store.get(users.keyFor('alice')))?.value).toContain(json['refresh_token'] as string);
      await users.close();
      await store.close();
    });

    it('refreshes an expired token once, persisting the rotated refresh token for every instance', async () => {
      const store = await open();
      const a = usersFor(as, { store });
      const json = await as.login('bob');
      await a.save('bob', json);
      await untilExpired(json['access_token'] as string);

      const before = refreshes();
      const invalidGrants = as.counts.errors['invalid_grant'] ?? 0;
      const tokens = await Promise.all(Array.from({ length: 20 }, () => a.getAccessToken('bob')));
      expect(refreshes() - before).toBe(1);
      expect(new Set(tokens.map((t) => t.accessToken)).size).toBe(1);
      expect(subjectOf(tokens[0]!.accessToken)).toBe('bob');
      expect(msUntilExpiry(tokens[0]!.accessToken)).toBeGreaterThan(0);

      // A second instance (another process, say) has an empty cache: it adopts the stored token…
      const b = usersFor(as, { store });
      expect((await b.getAccessToken('bob')).accessToken).toBe(tokens[0]!.accessToken);
      // …and, once that expires, refreshes with the rotated refresh token (the spent one would be invalid_grant).
      await untilExpired(tokens[0]!.accessToken);
      const next = await b.getAccessToken('bob');
      expect(next.accessToken).not.toBe(tokens[0]!.accessToken);
      expect(refreshes() - before).toBe(2);
      expect(as.counts.errors['invalid_grant'] ?? 0).toBe(invalidGrants);
      await a.close();
      await b.close();
      await store.close();
    });

    it('several instances sharing the store refresh each user once and never mix users up', async () => {
      const store = await open();
      const instances = [usersFor(as, { store }), usersFor(as, { store }), usersFor(as, { store })];
      const subjects = ['u1', 'u2', 'u3', 'u4'];
      const logins = await Promise.all(subjects.map((s) => as.login(s)));
      await Promise.all(subjects.map((s, i) => instances[i % 3]!.save(s, logins[i]!)));
      await sleep(Math.max(...logins.map((l) => msUntilExpiry(l['access_token'] as string))) + 20);

      const before = refreshes();
      const results = await Promise.all(
        instances.flatMap((users) =>
          subjects.flatMap((s) => Array.from({ length: 5 }, async () => [s, await users.getAccessToken(s)] as const)),
        ),
      );
      for (const [subject, token] of results) {
        expect(subjectOf(token.accessToken)).toBe(subject);
        expect(token.expiresAt).toBeGreaterThan(Date.now());
      }
      expect(refreshes() - before).toBe(subjects.length);
      await Promise.all(instances.map((u) => u.close()));
      await store.close();
    });

    it('a subject whose refresh token the server rejects must log in again, without retries', async () => {
      const store = await open();
      const users = usersFor(as, { store });
      const json = await as.login('carol');
      await users.save('carol', json);
      // Another party spends the refresh token first: presenting it again revokes the grant.
      expect((await spend(json['refresh_token'] as string)).status).toBe(200);
      await untilExpired(json['access_token'] as string);

      const events: string[] = [];
      users.on('loginRequired', ({ subject }) => events.push(subject));
      const before = refreshes();
      const err = await failure(users.getAccessToken('carol'));
      expect(err.code).toBe('ERR_LOGIN_REQUIRED');
      expect(err.error).toBe('invalid_grant');
      expect(err.status).toBe(400);
      expect((err.cause as TokenwardenError).code).toBe('ERR_OAUTH');
      expect(events).toEqual(['carol']);
      // The dead refresh token is gone from the store: nobody, here or elsewhere, tries it again.
      expect((await store.get(users.keyFor('carol')))?.value).not.toContain(json['refresh_token'] as string);
      const other = usersFor(as, { store });
      for (const u of [users, other, users])
        expect((await failure(u.getAccessToken('carol'))).code).toBe('ERR_LOGIN_REQUIRED');
      expect(refreshes() - before).toBe(1);
      // What the subject had is still there for logout.
      expect(await users.getIdToken('carol')).toBe(json['id_token']);
      await users.close();
      await other.close();
      await store.close();
    });

    it('revoke() revokes at the server and forgets the subject; others are untouched', async () => {
      const store = await open();
      const users = usersFor(as, { store });
      const [alice, bob] = await Promise.all([as.login('alice'), as.login('bob')]);
      await users.save('alice', alice);
      await users.save('bob', bob);
      const revocations = as.counts.revocation;

      const result = await users.revoke('alice');
      expect(result.refreshToken).toBe(true);
      expect(as.counts.revocation).toBeGreaterThan(revocations);
      expect(await store.get(users.keyFor('alice'))).toBeUndefined();
      const err = await failure(users.getAccessToken('alice'));
      expect(typeof err.code).toBe('string');
      expect(err.code).toBe('ERR_LOGIN_REQUIRED');
      expect(await users.getClaims('alice')).toBeUndefined();
      expect(await users.listAccessTokens('alice')).toEqual([]);
      // The server agrees: the refresh token is dead.
      expect((await spend(alice['refresh_token'] as string)).body['error']).toBe('invalid_grant');

      expect(subjectOf((await users.getAccessToken('bob')).accessToken)).toBe('bob');
      await untilExpired(bob['access_token'] as string);
      expect(subjectOf((await users.getAccessToken('bob')).accessToken)).toBe('bob');
      await users.close();
      await store.close();
    });

    it('stores attacker-chosen subjects under their own keys, reading each back without touching others', async () => {
      const store = await open();
      const users = usersFor(as, { store });
      const alice = await as.login('alice');
      await users.save('alice', alice);
      const subjects = [
        '*',
        '?',
        '[a-z]*',
        '../',
        '../../etc/passwd',
        "'; drop table tokens; --",
        'alice\u0000',
        'ALICE',
        'alice ',
        'tw1:user:x',
        '{"sub":"alice"}',
        '🙂\u202e',
        'x'.repeat(10 * 1024),
      ];
      const responses = new Map<string, Record<string, unknown>>();
      for (const subject of subjects) {
        const json = await syntheticResponse(as, subject);
        responses.set(subject, json);
        await users.save(subject, json);
      }
      const keys = new Set([users.keyFor('alice'), ...subjects.map((s) => users.keyFor(s))]);
      expect(keys.size).toBe(subjects.length + 1);
      for (const key of keys) expect(key).toMatch(/^tw1:user:[A-Za-z0-9_-]{43}:[A-Za-z0-9_-]{43}$/);

      const fresh = usersFor(as, { store }); // nothing cached: everything comes from the store
      for (const subject of subjects) {
        const token = await fresh.getAccessToken(subject);
        expect(token.accessToken).toBe(responses.get(subject)!['access_token']);
        expect((await fresh.getClaims(subject))?.sub).toBe(subject);
        expect(await fresh.getIdToken(subject)).toBe(responses.get(subject)!['id_token']);
      }
      expect(subjectOf((await fresh.getAccessToken('alice')).accessToken)).toBe('alice');
      expect((await fresh.getClaims('alice'))?.sub).toBe('alice');
      await fresh.delete('*');
      expect((await failure(fresh.getAccessToken('*'))).code).toBe('ERR_LOGIN_REQUIRED');
      expect((await fresh.getAccessToken('?')).accessToken).toBe(responses.get('?')!['access_token']);
      expect(subjectOf((await fresh.getAccessToken('alice')).accessToken)).toBe('alice');
      await users.close();
      await fresh.close();
      await store.close();
    });

    it("treats another subject's record copied under a key as a miss", async () => {
      const store = await open();
      const users = usersFor(as, { store });
      await users.save('mallory', await syntheticResponse(as, 'mallory'));
      const copied = (await store.get(users.keyFor('mallory')))!.value;
      await store.set(users.keyFor('victim'), copied);
      const errors: string[] = [];
      const fresh = usersFor(as, { store });
      fresh.on('storeError', ({ error }) => errors.push(error.code));
      expect((await failure(fresh.getAccessToken('victim'))).code).toBe('ERR_LOGIN_REQUIRED');
      expect(await fresh.getClaims('victim')).toBeUndefined();
      expect(errors[0]).toBe('ERR_STORE');
      await store.set(users.keyFor('victim'), 'not json');
      expect(await fresh.getIdToken('victim')).toBeUndefined();
      await users.close();
      await fresh.close();
      await store.close();
    });

    it('20 calls on two instances get a 401 for one token at once: one drop, one refresh, every call sent again and answered', async () => {
      const store = await open();
      const [a, b] = [usersFor(steady, { store }), usersFor(steady, { store })];
      await a.save('ines', await steady.login('ines'));
      const refused = (await b.getAccessToken('ines')).accessToken;
      // The API checks each JWT (bearerAuth) and keeps a list of tokens it no longer takes (revoked at logout
      // elsewhere, say): those get 401 invalid_token.
      const api = await startApi(
        { issuer: steady.issuer, audience: API_RESOURCE, allowInsecureRequests: true },
        (token) => token === refused,
      );
      const url = api.url;
      const before = steadyRefreshes();
      const answers = await Promise.all(
        Array.from({ length: 20 }, async (_, i) => (await (i % 2 ? a : b).fetchAs('ines')(url)).status),
      );
      expect(answers).toEqual(Array.from({ length: 20 }, () => 200));
      expect(steadyRefreshes() - before).toBe(1);
      const fresh = (await a.getAccessToken('ines')).accessToken;
      expect(api.seen.filter((t) => t === `Bearer ${refused}`)).toHaveLength(20);
      expect(api.seen.filter((t) => t === `Bearer ${fresh}`)).toHaveLength(20);
      await Promise.all([a.close(), b.close()]);
      await api.close();
      await store.close();
    });

    it('invalidate() on one instance drops the token for all: one refresh between them, two forced per window in all', async () => {
      const store = await open();
      // Both read the store before each call (by default, another instance's drop is seen within 1 s).
      const [a, b] = [0, 0].map((revalidate) => usersFor(steady, { store, cache: { revalidate } })) as [
        UserTokens,
        UserTokens,
      ];
      await a.save('hugo', await steady.login('hugo'));
      const t1 = (await b.getAccessToken('hugo')).accessToken;
      const before = steadyRefreshes();
      await a.invalidate('hugo', t1);
      const t2 = (await b.getAccessToken('hugo')).accessToken; // b reads the store: t1 is gone, b refreshes
      expect(t2).not.toBe(t1);
      expect((await a.getAccessToken('hugo')).accessToken).toBe(t2); // a takes b's refresh: no second one
      await b.invalidate('hugo', t2);
      const t3 = (await a.getAccessToken('hugo')).accessToken;
      expect(t3).not.toBe(t2);
      await b.invalidate('hugo', t3); // the third within the window, whoever asks: ignored
      expect((await b.getAccessToken('hugo')).accessToken).toBe(t3);
      expect((await a.getAccessToken('hugo')).accessToken).toBe(t3);
      expect(steadyRefreshes() - before).toBe(2);
      await Promise.all([a.close(), b.close()]);
      await store.close();
    });

    it.skipIf(!factory.shared)(
      'a store emptied behind its back (FLUSHALL, TRUNCATE, rm): invalidate(), listAccessTokens() and getClaimsInfo() right then write back what this instance holds; nobody is signed out',
      async () => {
        const spec = await factory.spec();
        const store = openStore(spec);
        const users = usersFor(steady, { store });
        const subjects = ['jane', 'kurt', 'lena'];
        for (const subject of subjects) await users.save(subject, await steady.login(subject));
        const dropped = (await users.getAccessToken('jane')).accessToken;
        // Each call's own read is the one that finds the store empty (and reports the reset).
        await wipeStore(spec);
        await users.invalidate('jane', dropped);
        await wipeStore(spec);
        expect(await users.listAccessTokens('kurt')).toHaveLength(1);
        await wipeStore(spec);
        expect((await users.getClaimsInfo('lena'))?.claims.sub).toBe('lena');
        // Every record is back in the store (jane's without the dropped token), and served from there.
        const other = usersFor(steady, { store: openStore(spec) });
        expect((await other.listAccessTokens('jane')).map((e) => e.token.accessToken)).not.toContain(dropped);
        for (const subject of ['kurt', 'lena']) expect(await other.listAccessTokens(subject)).toHaveLength(1);
        const before = steadyRefreshes();
        const fresh = (await other.getAccessToken('jane')).accessToken; // once the fleet has settled
        expect(fresh).not.toBe(dropped);
        expect(steadyRefreshes() - before).toBe(1);
        await Promise.all([users.close(), other.close()]);
        await store.close();
      },
      20_000,
    );

    it('with the default cache.revalidate (1 s), another instance stops serving a dropped token after 1 s and one store read', async () => {
      const store = await open();
      const clock = new ManualClock(Date.now());
      const [a, b] = [0, 1].map(() => usersFor(steady, { store, clock })) as [UserTokens, UserTokens];
      await a.save('iris', await steady.login('iris'));
      const t1 = (await b.getAccessToken('iris')).accessToken;
      await a.invalidate('iris', t1);
      await clock.advance(999);
      expect((await b.getAccessToken('iris')).accessToken).toBe(t1); // within the window: held, no I/O
      await clock.advance(2);
      // Past it: still served at once, while the record is read again in the background…
      expect((await b.getAccessToken('iris')).accessToken).toBe(t1);
      // …and once that read has answered, the dropped token is gone here too.
      const deadline = Date.now() + 5_000;
      let next = t1;
      while (next === t1 && Date.now() < deadline) {
        await sleep(10);
        next = (await b.getAccessToken('iris')).accessToken;
      }
      expect(next).not.toBe(t1);
      expect((await a.getAccessToken('iris')).accessToken).toBe(next);
      await Promise.all([a.close(), b.close()]);
      await store.close();
    });
  });
}

describe('UserTokens', () => {
  let users: UserTokens;
  beforeAll(() => {
    users = usersFor(as, { store: new MemoryStore() });
  });
  afterAll(async () => {
    await users.close();
  });

  it("close() does not wait out another instance's lock: a refresh waiting for it ends with ERR_CLOSED at once, nothing spent", async () => {
    const store = new MemoryStore();
    // A lock wait longer than the test may run: close() waiting for it would fail the test by its timeout.
    const mine = usersFor(steady, { store, lock: { wait: '10m' } });
    await mine.save('nina', await steady.login('nina'));
    const elsewhere = await store.lock(mine.keyFor('nina'), { ttlMs: 60_000, waitMs: 0 }); // refreshing elsewhere
    const before = steadyRefreshes();
    const pending = mine.getAccessToken('nina', { scope: 'openid' }); // not held: a refresh, behind the lock
    pending.catch(() => undefined);
    for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
    await mine.close(); // while the other instance still holds the lock
    await expect(pending).rejects.toMatchObject({ code: 'ERR_CLOSED' });
    expect(steadyRefreshes() - before).toBe(0);
    await elsewhere?.release();
  });

  it('checks that an ID token belongs to this issuer, client and subject, and stores nothing otherwise', async () => {
    const [alice, bob] = await Promise.all([as.login('alice'), as.login('bob')]);
    const invalid = async (subject: string, json: Record<string, unknown>, u = users): Promise<string> => {
      const err = await failure(u.save(subject, json));
      expect(err.code).toBe('ERR_ID_TOKEN_INVALID');
      expect((await failure(u.getAccessToken(subject))).code).toBe('ERR_LOGIN_REQUIRED');
      return err.message;
    };
    // Another subject's login.
    expect(await invalid('bob', alice)).toMatch(/another subject/);
    // Another client's view: the ID token's audience is `app`.
    const other = usersFor(as, { clientId: as.clients.svc.clientId, clientSecret: as.clients.svc.clientSecret });
    expect(await invalid('alice', alice, other)).toMatch(/another client/);
    await other.close();
    // bob's signed ID token with its subject changed to alice: the claims fit, the signature does not.
    const [h, p, s] = (bob['id_token'] as string).split('.');
    const forged = { ...JSON.parse(Buffer.from(p!, 'base64url').toString()), sub: 'mallory' };
    const forgedToken = `${h}.${Buffer.from(JSON.stringify(forged)).toString('base64url')}.${s}`;
    expect(await invalid('mallory', { ...bob, id_token: forgedToken })).toMatch(/signature/);
    // Signed with a secret that is not the client's; issued by someone else; not signed at all.
    expect(
      await invalid('dave', { ...bob, id_token: await hsIdToken(as, 'dave', {}, 'not-the-client-secret-at-all') }),
    ).toMatch(/signature/);
    expect(
      await invalid('dave', { ...bob, id_token: await hsIdToken(as, 'dave', { iss: 'https://evil.example' }) }),
    ).toMatch(/issuer/);
    const unsigned = `${Buffer.from('{"alg":"none"}').toString('base64url')}.${p}.`;
    expect(await invalid('bob', { ...bob, id_token: unsigned })).toMatch(/not signed/);
    // Several audiences need azp = this client.
    expect(await invalid('dave', { ...bob, id_token: await hsIdToken(as, 'dave', { aud: ['app', 'other'] }) })).toMatch(
      /azp/,
    );
    await users.save('dave', { ...bob, id_token: await hsIdToken(as, 'dave', { aud: ['app', 'other'], azp: 'app' }) });
    // A response without an ID token is accepted (plain OAuth), and a malformed one is not.
    const { id_token: _omit, ...plain } = alice;
    await users.save('erin', plain);
    expect(await users.getClaims('erin')).toBeUndefined();
    expect((await failure(users.save('erin', { token_type: 'Bearer' }))).code).toBe('ERR_INVALID_RESPONSE');
    expect((await failure(users.save('', plain))).code).toBe('ERR_CONFIG');
    // Read by the rules token endpoint answers are read by: no token_type is Bearer, null members are absent,
    // a numeric-string expires_in is a number, any other string is refused.
    const { token_type: _type, ...untyped } = plain;
    const savedAt = Date.now();
    await users.save('erin', { ...untyped, expires_in: '600', refresh_token: null, scope: null });
    const served = await users.getAccessToken('erin');
    expect(served).toMatchObject({ accessToken: plain['access_token'], tokenType: 'Bearer' });
    // The lifetime is the string's 600 s (not the JWT's own exp, which the server set otherwise).
    expect(Math.abs((served.expiresAt as number) - (savedAt + 600_000))).toBeLessThan(5_000);
    expect((await failure(users.save('erin', { ...plain, expires_in: '' }))).code).toBe('ERR_INVALID_RESPONSE');
    expect((await failure(users.save('erin', { ...plain, expires_in: '600s' }))).code).toBe('ERR_INVALID_RESPONSE');
  });

  it('returns an expired ID token (for logout), and save() accepts a response whose ID token expired', async () => {
    const json = await as.login('frank');
    const idToken = json['id_token'] as string;
    await sleep(msUntilExpiry(idToken) + 50);
    await users.save('frank', json);
    expect(await users.getIdToken('frank')).toBe(idToken);
    expect((decodeJwt(idToken).exp as number) * 1000).toBeLessThan(Date.now());
    expect((await users.getClaims('frank'))?.sub).toBe('frank');
  });

  it('serves a token that covers the requested scope, and down-scopes by refresh otherwise', async () => {
    const users = usersFor(steady, { store: new MemoryStore() });
    const refreshes = (): number => steady.counts.byGrant['refresh_token'] ?? 0;
    const json = await steady.login('grace');
    await users.save('grace', json);
    const before = refreshes();
    // The login's token has "read write": it covers "read" and "write read".
    expect((await users.getAccessToken('grace', { scope: 'read' })).accessToken).toBe(json['access_token']);
    expect((await users.getAccessToken('grace', { scope: ['write', 'read'] })).accessToken).toBe(json['access_token']);
    expect(refreshes()).toBe(before);

    // A request for a resource is another token: one refresh with scope=read&resource=…, down-scoped.
    const narrow = await users.getAccessToken('grace', { scope: 'read', resource: API_RESOURCE });
    expect(refreshes()).toBe(before + 1);
    expect(decodeJwt(narrow.accessToken).scope).toBe('read');
    expect(narrow.scope).toBe('read');
    expect((await users.getAccessToken('grace', { scope: 'read', resource: API_RESOURCE })).accessToken).toBe(
      narrow.accessToken,
    );
    // The default token is still the login's, and both are listed.
    expect((await users.getAccessToken('grace')).accessToken).toBe(json['access_token']);
    const listed = await users.listAccessTokens('grace');
    expect(listed.map((e) => [e.scope, e.resource])).toEqual([
      [undefined, undefined],
      ['read', [API_RESOURCE]],
    ]);

    // A scope the grant does not have is the server's refusal — not a login problem, and the grant survives.
    const err = await failure(users.getAccessToken('grace', { scope: 'admin' }));
    expect(err.code).toBe('ERR_OAUTH');
    expect(err.error).toBe('invalid_scope');
    const write = await users.getAccessToken('grace', { scope: 'write', resource: API_RESOURCE });
    expect(decodeJwt(write.accessToken)).toMatchObject({ sub: 'grace', scope: 'write' });
    expect(refreshes()).toBe(before + 3);
    expect(steady.counts.errors).toEqual({ invalid_scope: 1 });
    // extraParams are part of a token's identity, and cannot smuggle in the parameters UserTokens sets.
    await expect(users.getAccessToken('grace', { extraParams: { scope: 'x' } })).rejects.toMatchObject({
      code: 'ERR_CONFIG',
    });
    await users.close();
  });

  it('serves a stale token at once while one background refresh replaces it', async () => {
    const eager = usersFor(as, {
      store: new MemoryStore(),
      refresh: { beforeExpiry: '5s', maxBeforeExpiryRatio: 1, jitter: 0 }, // stale at once
    });
    const json = await as.login('heidi');
    await eager.save('heidi', json);
    const refreshed = new Promise<void>((resolve) => eager.once('token', () => resolve()));
    const before = refreshes();
    const stale = await Promise.all(Array.from({ length: 10 }, () => eager.getAccessToken('heidi')));
    expect(stale.every((t) => t.accessToken === json['access_token'])).toBe(true);
    await refreshed;
    expect(refreshes()).toBe(before + 1);
    const next = await eager.getAccessToken('heidi');
    expect(next.accessToken).not.toBe(json['access_token']);
    expect(subjectOf(next.accessToken)).toBe('heidi');
    await eager.close();
  });

  it('keeps the in-process layer bounded, serving evicted subjects from the store', async () => {
    const store = new MemoryStore();
    const small = usersFor(as, { store, cache: { max: 5 } });
    const responses = await Promise.all(Array.from({ length: 30 }, (_, i) => syntheticResponse(as, `user-${i}`)));
    for (const [i, json] of responses.entries()) await small.save(`user-${i}`, json);
    expect(small.cachedSubjects).toBeLessThanOrEqual(5);
    for (const [i, json] of responses.entries()) {
      expect((await small.getAccessToken(`user-${i}`)).accessToken).toBe(json['access_token']);
    }
    expect(small.cachedSubjects).toBeLessThanOrEqual(5);
    expect(store.size).toBe(30);
    await small.close();
  });

  it("a refresh token's own lifetime (Keycloak refresh_expires_in; Entra ID, GitHub Apps refresh_token_expires_in) is kept: expired, it is not spent; 0 is no limit", async () => {
    const cases = [
      ['refresh_expires_in', 1, 'ERR_LOGIN_REQUIRED'],
      ['refresh_token_expires_in', '1', 'ERR_LOGIN_REQUIRED'],
      ['refresh_expires_in', 0, 'refreshed'], // Keycloak's offline tokens
    ] as const;
    const rejected = as.counts.errors['invalid_grant'] ?? 0; // (this server is shared by the file's tests)
    await Promise.all(
      cases.map(async ([field, seconds, expected], n) => {
        const sub = `rx-${n}`;
        const json = { ...(await as.login(sub)), [field]: seconds };
        await users.save(sub, json);
        await untilExpired(json['access_token'] as string); // and past the refresh token's second
        const outcome = await users.getAccessToken(sub).then(
          (t) => (t.accessToken !== json['access_token'] ? 'refreshed' : 'served the old one'),
          (e: TokenwardenError) => e.code,
        );
        expect(outcome, field).toBe(expected);
      }),
    );
    expect(as.counts.errors['invalid_grant'] ?? 0).toBe(rejected);
  });

  it('delete() forgets without calling the server', async () => {
    const json = await as.login('ivan');
    await users.save('ivan', json);
    const revocations = as.counts.revocation;
    await users.delete('ivan');
    expect(as.counts.revocation).toBe(revocations);
    expect((await failure(users.getAccessToken('ivan'))).code).toBe('ERR_LOGIN_REQUIRED');
    expect(await users.getIdToken('ivan')).toBeUndefined();
  });

  it('refuses subjects that are not well-formed Unicode: two lone surrogates must not share a key', async () => {
    const users = usersFor(as);
    for (const subject of ['\ud800', '\udc00', 'a\ud83d', '\ude00b']) {
      expect(() => users.keyFor(subject)).toThrow(expect.objectContaining({ code: 'ERR_CONFIG' }));
      await expect(users.getAccessToken(subject)).rejects.toMatchObject({ code: 'ERR_CONFIG' });
    }
    expect(users.keyFor('\ud83d\ude00')).not.toBe(users.keyFor('\ufffd')); // a pair is fine, and distinct
    await users.close();
  });

  it('a malformed request (scope, resource or extraParams of the wrong type) is ERR_CONFIG, for getAccessToken and fetchAs alike', async () => {
    const users = usersFor(as);
    await users.save('mallory', await as.login('mallory'));
    const bad: unknown[] = [
      { scope: 5 },
      { scope: { read: true } },
      { scope: [5] },
      { scope: [''] },
      { resource: 7 },
      { resource: [null] },
      { extraParams: 'audience=x' },
      { extraParams: ['x'] },
      { extraParams: null },
      { extraParams: { audience: 5 } },
      { extraParams: { grant_type: 'password' } },
      { scope: 'read\uD800' }, // a lone surrogate: sent as U+FFFD, not as asked
      { resource: ['https://api.example.test/\uDC00'] },
      { extraParams: { audience: 'x\uDBFF' } },
    ];
    for (const request of bad) {
      const label = JSON.stringify(request);
      await expect(users.getAccessToken('mallory', request as never), label).rejects.toMatchObject({
        code: 'ERR_CONFIG',
      });
      await expect(users.fetchAs('mallory', request as never)('http://127.0.0.1:9/'), label).rejects.toMatchObject({
        code: 'ERR_CONFIG',
      });
    }
    await users.close();
  });

  it('save() with malformed options (issuedAt NaN, Infinity, a string; scope of the wrong type) is ERR_CONFIG, and the login before it stays readable', async () => {
    const store = new MemoryStore();
    const users = usersFor(steady, { store });
    const first = await syntheticResponse(steady, 'nina');
    await users.save('nina', first);
    const stored = (await store.get(users.keyFor('nina')))?.value;
    const bad: unknown[] = [
      { issuedAt: Number.NaN },
      { issuedAt: Number.POSITIVE_INFINITY },
      { issuedAt: -1 },
      { issuedAt: 1e20 },
      { issuedAt: '2026-11-30' },
      { scope: 5 },
      { resource: { url: API_RESOURCE } },
      { extraParams: 'audience=x' },
    ];
    for (const options of bad) {
      await expect(
        users.save('nina', await syntheticResponse(steady, 'nina'), options as never),
        JSON.stringify(options),
      ).rejects.toMatchObject({ code: 'ERR_CONFIG' });
    }
    expect((await store.get(users.keyFor('nina')))?.value).toBe(stored);
    const other = usersFor(steady, { store });
    expect((await other.getAccessToken('nina')).accessToken).toBe(first['access_token']);
    await Promise.all([users.close(), other.close()]);
  });

  it('rejects per-request options in the constructor, and never shows the secret', () => {
    expect(() => usersFor(as, { scope: 'read' } as never)).toThrow(/getAccessToken/);
    const text = JSON.stringify(users) + inspect(users);
    expect(text).not.toContain(as.clients.app.clientSecret);
  });
});

describe('UserTokens.fetchAs', () => {
  it("sends the subject's token for the request asked for, and nothing when no one is signed in", async () => {
    const users = usersFor(steady);
    await users.save('alice', await steady.login('alice'));
    const seen: { url: string; authorization: string | null }[] = [];
    const recording = async (input: string | URL | Request, init?: RequestInit) => {
      seen.push({ url: String(input), authorization: new Headers(init?.headers).get('authorization') });
      return new Response('ok');
    };
    const api = users.fetchAs('alice', { resource: API_RESOURCE }, { fetch: recording });
    expect(await (await api('https://api.example/orders')).text()).toBe('ok');
    const token = await users.getAccessToken('alice', { resource: API_RESOURCE });
    expect(seen).toEqual([{ url: 'https://api.example/orders', authorization: `Bearer ${token.accessToken}` }]);
    expect(decodeJwt(token.accessToken).aud).toBe(API_RESOURCE);
    // retryOn401: 'never' returns a 401 invalid_token as the API sent it, and drops nothing.
    const refusing = users.fetchAs('alice', undefined, {
      retryOn401: 'never',
      fetch: async (input, init) => (
        await recording(input, init),
        new Response(null, { status: 401, headers: { 'www-authenticate': 'Bearer error="invalid_token"' } })
      ),
    });
    const before = (await users.listAccessTokens('alice')).map((e) => e.token.accessToken);
    expect((await refusing('https://api.example/x')).status).toBe(401);
    expect(seen).toHaveLength(2);
    expect((await users.listAccessTokens('alice')).map((e) => e.token.accessToken)).toEqual(before);
    await expect(
      users.fetchAs('nobody', undefined, { fetch: recording })('https://api.example/'),
    ).rejects.toMatchObject({
      code: 'ERR_LOGIN_REQUIRED',
    });
    expect(seen).toHaveLength(2);
    await users.close();
  });

  /** An API introspecting every token at the server (no cache). */
  const introspectingApi = (): Promise<TestApi> =>
    startApi({
      issuer: steady.issuer,
      introspection: {
        clientId: steady.clients.rs.clientId,
        clientSecret: steady.clients.rs.clientSecret,
        cacheMaxAge: 0,
        inactiveCacheMaxAge: 0,
      },
      allowInsecureRequests: true,
    });

  it('a token revoked at oidc-provider (which revokes every token of the grant): the API answers 401, the retry finds the grant gone, ERR_LOGIN_REQUIRED', async () => {
    const api = await introspectingApi();
    const users = usersFor(steady);
    const signedOut: string[] = [];
    users.on('loginRequired', ({ subject }) => signedOut.push(subject));
    // A login for the API of opaque tokens, which checks each one at the server (RFC 7662).
    await users.save('alice', await steady.login('alice', { resource: OPAQUE_RESOURCE }));
    const call = users.fetchAs('alice');
    expect((await call(api.url)).status).toBe(200);
    const revoked = (await users.getAccessToken('alice')).accessToken;
    await users.client.revoke(revoked, 'access_token');
    const before = steadyRefreshes();
    await expect(call(api.url, { method: 'POST', body: '{}' })).rejects.toMatchObject({
      code: 'ERR_LOGIN_REQUIRED',
      error: 'invalid_grant',
    });
    expect(steadyRefreshes() - before).toBe(1); // one refresh, refused; not retried
    expect(api.seen).toEqual([`Bearer ${revoked}`, `Bearer ${revoked}`]);
    expect(signedOut).toEqual(['alice']);
    expect(await users.listAccessTokens('alice')).toEqual([]);
    await expect(call(api.url)).rejects.toMatchObject({ code: 'ERR_LOGIN_REQUIRED' });
    expect(api.seen).toHaveLength(2);
    await users.close();
    await api.close();
  });

  it('an API that refuses every token of a user costs two forced refreshes per window across instances, not one per call', async () => {
    // The API expects another audience: every token the user gets is refused with 401 invalid_token.
    const api = await startApi({
      issuer: steady.issuer,
      audience: 'https://elsewhere.example.test',
      allowInsecureRequests: true,
    });
    const clock = new ManualClock(Date.now());
    const store = new MemoryStore({ clock });
    const [a, b] = [usersFor(steady, { store, clock }), usersFor(steady, { store, clock })];
    await a.save('carol', await steady.login('carol'));
    const before = steadyRefreshes();
    const statuses: number[] = [];
    for (let round = 0; round < 3; round++) {
      for (const users of [a, b])
        statuses.push((await users.fetchAs('carol', { resource: API_RESOURCE })(api.url)).status);
    }
    expect(statuses).toEqual([401, 401, 401, 401, 401, 401]);
    // One refresh for the resource's first token, two forced: the window's allowance is the subject's, fleet-wide.
    expect(steadyRefreshes() - before).toBe(3);
    const sent = api.seen.length;
    await clock.advance(31_000);
    expect((await b.fetchAs('carol', { resource: API_RESOURCE })(api.url)).status).toBe(401);
    expect(steadyRefreshes() - before).toBe(4); // a new window: one more forced refresh, one more request
    expect(api.seen.length - sent).toBe(2);
    await Promise.all([a.close(), b.close()]);
    await api.close();
  });

  it('invalidate() of a token already replaced by another instance takes the newer one: no second refresh', async () => {
    const store = new MemoryStore();
    const [a, b] = [usersFor(steady, { store }), usersFor(steady, { store })];
    await a.save('dave', await steady.login('dave'));
    const t1 = (await a.getAccessToken('dave')).accessToken;
    expect((await b.getAccessToken('dave')).accessToken).toBe(t1);
    const before = steadyRefreshes();
    await a.invalidate('dave', t1);
    const t2 = (await a.getAccessToken('dave')).accessToken;
    expect(t2).not.toBe(t1);
    // b still holds t1 in memory (its revalidation is not due): its own 401 for t1 finds t2 in the store.
    await b.invalidate('dave', t1);
    expect((await b.getAccessToken('dave')).accessToken).toBe(t2);
    expect(steadyRefreshes() - before).toBe(1);
    // A token never held, and malformed calls.
    await a.invalidate('dave', 'not-a-token-of-dave');
    expect((await a.getAccessToken('dave')).accessToken).toBe(t2);
    await a.invalidate('nobody', t2);
    for (const bad of [undefined, '', 5]) {
      await expect(a.invalidate('dave', bad as never)).rejects.toMatchObject({ code: 'ERR_CONFIG' });
    }
    await expect(a.invalidate('', t2)).rejects.toMatchObject({ code: 'ERR_CONFIG' });
    expect(steadyRefreshes() - before).toBe(1);
    await Promise.all([a.close(), b.close()]);
  });
});
