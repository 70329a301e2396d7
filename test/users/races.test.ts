/**
 * UserTokens: a sign-out or a new login racing a refresh, as a web app with several instances meets them. Two
 * instances in one process share a real store (one MemoryStore object; Redis and PostgreSQL with a client each),
 * a real authorization server (the test kit's, on a `ManualClock`: rotating single-use refresh tokens, reuse
 * revoking the grant), and a gate in the `fetch` of one instance holds its refresh request mid-flight.
 */
import { createHmac, randomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from 'vitest';
import { ManualClock } from '../../src/clock.js';
import { SETTLE_MS, SETTLING_MAX } from '../../src/fleet/fleet.js';
import type { TokenwardenError } from '../../src/errors.js';
import { MemoryStore } from '../../src/stores/memory.js';
import type {
  LockOptions,
  SetOptions,
  StoreEvents,
  StoreLock,
  StoreRecord,
  TokenStore,
} from '../../src/stores/store.js';
import { type TestAuthorizationServer, createTestAuthorizationServer } from '../../src/testing/index.js';
import { UserTokens, type UserTokensOptions } from '../../src/users/index.js';
import { FailingStore } from '../support/failing-store.js';
import { cleanupStores, openStore, storeFactories } from './stores.js';
import { until } from '../support/private-servers.js';

const clock = new ManualClock(Date.parse('2031-03-01T00:00:00Z'));
let as: TestAuthorizationServer;
beforeAll(async () => {
  as = await createTestAuthorizationServer({ accessTokenTtl: '60s', clock });
});
afterAll(async () => {
  await as.close();
  await cleanupStores();
});

function usersOn(store: TokenStore, options: Partial<UserTokensOptions> = {}): UserTokens {
  return new UserTokens({ issuer: as.issuer, ...as.client, allowInsecureRequests: true, store, clock, ...options });
}

/** A `fetch` holding refresh requests at a gate until `open()`; `issued` has the refresh tokens they brought back. */
function gated(): { fetch: typeof globalThis.fetch; arrived: Promise<void>; open: () => void; issued: string[] } {
  let open!: () => void;
  let arrive!: () => void;
  const opened = new Promise<void>((resolve) => (open = resolve));
  const arrived = new Promise<void>((resolve) => (arrive = resolve));
  const issued: string[] = [];
  const fetch: typeof globalThis.fetch = async (input, init) => {
    if (!String(init?.body ?? '').includes('grant_type=refresh_token')) return globalThis.fetch(input, init);
    arrive();
    await opened;
    const response = await globalThis.fetch(input, init);
    const body = (await response.clone().json()) as { refresh_token?: string };
    if (body.refresh_token !== undefined) issued.push(body.refresh_token);
    return response;
  };
  return { fetch, arrived, open, issued };
}

/** A POST to the server with the app client's credentials (Basic), form-encoded. */
function post(path: string, params: Record<string, string>): Promise<Response> {
  const { clientId, clientSecret } = as.client;
  return fetch(`${as.issuer}${path}`, {
    method: 'POST',
    headers: {
      authorization: `Basic ${Buffer.from(`${clientId}:${clientSecret}`).toString('base64')}`,
      'content-type': 'application/x-www-form-urlencoded',
    },
    body: new URLSearchParams(params),
  });
}

/** Spends a refresh token at the server directly: the error it answers (`invalid_grant` for a dead one), or 'live'. */
async function probe(refreshToken: string): Promise<string> {
  const res = await post('/token', { grant_type: 'refresh_token', refresh_token: refreshToken });
  return res.ok ? 'live' : ((await res.json()) as { error: string }).error;
}

/** Whether the server holds a refresh token live (RFC 7662 introspection: nothing is spent). */
async function active(refreshToken: string): Promise<boolean> {
  const res = await post('/introspect', { token: refreshToken, token_type_hint: 'refresh_token' });
  return ((await res.json()) as { active?: boolean }).active === true;
}

const outcome = (promise: Promise<unknown>): Promise<string> =>
  promise.then(
    () => 'ok',
    (err: unknown) => (err as TokenwardenError).code,
  );

// The stores a fleet shares over the network, and one MemoryStore object shared by two instances (kept short: the
// FileStore takes the same fleet paths as these).
for (const factory of storeFactories.filter((f) => f.name !== 'FileStore')) {
  describe.skipIf(factory.skip !== undefined)(`UserTokens on ${factory.name}: a refresh racing`, () => {
    /** Two instances' stores: one MemoryStore object (shared in this process only), or a client each. */
    const twoStores = async (): Promise<[TokenStore, TokenStore]> => {
      const spec = await factory.spec();
      if (spec.kind === 'memory') {
        const store = new MemoryStore({ clock });
        return [store, store];
      }
      return [openStore(spec), openStore(spec)];
    };

    /** A signed in on A, held by B, its token expired: B's next call refreshes, held at the gate. */
    async function refreshingOnB(sub: string): Promise<{
      a: UserTokens;
      b: UserTokens;
      store: TokenStore;
      gate: ReturnType<typeof gated>;
      call: Promise<string>;
    }> {
      const [sa, sb] = await twoStores();
      const gate = gated();
      const a = usersOn(sa);
      const b = usersOn(sb, { fetch: gate.fetch });
      await a.save(sub, await as.issueTokens({ sub, scope: 'openid' }));
      await b.getAccessToken(sub);
      await clock.advance(61_000);
      const call = outcome(b.getAccessToken(sub));
      await gate.arrived; // B holds the lock, has re-read the record, and is spending its refresh token
      return { a, b, store: sa, gate, call };
    }

    it('a sign-out (delete) on A: B does not write its refreshed record back, and revokes the refresh token it got', async () => {
      const sub = `out-${factory.name}`;
      const { a, b, store, gate, call } = await refreshingOnB(sub);
      await a.delete(sub);
      const revocations = as.stats().revocation;
      gate.open();

      expect(await call).toBe('ERR_LOGIN_REQUIRED');
      expect(await store.get(a.keyFor(sub))).toBeUndefined();
      expect([await outcome(a.getAccessToken(sub)), await outcome(b.getAccessToken(sub))]).toEqual([
        'ERR_LOGIN_REQUIRED',
        'ERR_LOGIN_REQUIRED',
      ]);
      await until(() => as.stats().revocation > revocations); // revoked off the caller's path
      expect(gate.issued).toHaveLength(1);
      expect(await probe(gate.issued[0] as string)).toBe('invalid_grant');
      await Promise.all([a.close(), b.close()]);
    });

    it("a new login (save) on A: B's refresh of the old login does not replace it, on either instance", async () => {
      const sub = `relogin-${factory.name}`;
      const { a, b, store, gate, call } = await refreshingOnB(sub);
      const login = await as.issueTokens({ sub, scope: 'openid' });
      await a.save(sub, login);
      gate.open();

      expect(await call).toBe('ok');
      expect((await store.get(a.keyFor(sub)))?.value).toContain(login['refresh_token']);
      expect((await b.getAccessToken(sub)).accessToken).toBe(login['access_token']);
      const invalidGrants = as.stats().errors['invalid_grant'] ?? 0;
      await clock.advance(61_000); // the new login's refresh token is the one spent, on either instance
      expect(await outcome(a.getAccessToken(sub))).toBe('ok');
      expect(await outcome(b.getAccessToken(sub))).toBe('ok');
      expect(as.stats().errors['invalid_grant'] ?? 0).toBe(invalidGrants);
      await Promise.all([a.close(), b.close()]);
    });
  });
}

describe('UserTokens: a store read that left before a sign-out here and answers after it', () => {
  it('does not sign the subject back in on this instance; a login saved afterwards is taken as usual', async () => {
    const store = new FailingStore(new MemoryStore({ clock }));
    const users = usersOn(store, { cache: { revalidate: '100ms' } });
    await users.save('ivy', await as.issueTokens({ sub: 'ivy', scope: 'openid' }));
    await users.getAccessToken('ivy');
    await clock.advance(200);
    // Two reads leave (the background revalidation of a served call, a listing) and answer late: a pooled
    // PostgreSQL client, or any store whose reads and deletes do not share one ordered connection.
    store.delayReads = true;
    await users.getAccessToken('ivy');
    const listing = users.listAccessTokens('ivy');
    await new Promise((resolve) => setImmediate(resolve));
    store.delayReads = false;
    await users.delete('ivy');
    await store.answer();
    await listing;

    // Without the fix the late reads put the deleted record back in the in-process layer, and its token was served
    // here after the sign-out, until the next revalidation.
    expect(await outcome(users.getAccessToken('ivy'))).toBe('ERR_LOGIN_REQUIRED');
    expect(users.cachedSubjects).toBe(0);

    const other = usersOn(store.inner);
    const login = await as.issueTokens({ sub: 'ivy', scope: 'openid' });
    await other.save('ivy', login);
    expect((await users.getAccessToken('ivy')).accessToken).toBe(login['access_token']);
    await Promise.all([users.close(), other.close()]);
  });
});

describe('UserTokens: a refresh whose write is pending when the subject signs out on another instance', () => {
  it('is not written back when the store answers again (the sign-out stands), and its refresh token is revoked', async () => {
    const memory = new MemoryStore({ clock });
    const failing = new FailingStore(memory);
    const a = usersOn(memory);
    const gate = gated();
    const b = usersOn(failing, { fetch: gate.fetch });
    gate.open();
    await a.save('zoe', await as.issueTokens({ sub: 'zoe', scope: 'openid' }));
    await b.getAccessToken('zoe');
    await clock.advance(61_000); // expired: B refreshes, and the store refuses the write
    failing.failing.add('set');
    const served = await b.getAccessToken('zoe');
    const key = b.keyFor('zoe');
    expect((await memory.get(key))?.value).not.toContain(served.accessToken); // pending on B
    expect(gate.issued).toHaveLength(1);
    await a.delete('zoe'); // signed out on A (which cannot forget B's pending write)
    failing.failing.clear();
    // B retries its pending write within 0.25–2 s: it finds the record deleted, drops the write, revokes the
    // refresh token it got. Without that, the write recreated the record: the subject signed in again everywhere.
    for (let i = 0; i < 30 && (await active(gate.issued[0]!)); i++) {
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    expect(await active(gate.issued[0]!)).toBe(false);
    expect(await memory.get(key)).toBeUndefined();
    expect(await outcome(b.getAccessToken('zoe'))).toBe('ERR_LOGIN_REQUIRED');
    await b.close();
    expect(await memory.get(key)).toBeUndefined();
    expect(await outcome(a.getAccessToken('zoe'))).toBe('ERR_LOGIN_REQUIRED');
    await a.close();
  });
});

/** Polls an asynchronous condition for up to 2 s. */
async function waitFor(condition: () => Promise<boolean>): Promise<void> {
  for (let i = 0; i < 200 && !(await condition()); i++) await new Promise((resolve) => setTimeout(resolve, 10));
}

/**
 * A shared store (a MemoryStore behind it) that an operator empties on command (and that then reports the reset,
 * as a real one does on its next read), and whose next create-if-absent write (`ifVersion: 0`: a write-back after a
 * reset) waits at a gate, as one queued behind a file lock or a slow connection does.
 */
class EmptiedStore extends EventEmitter<StoreEvents> implements TokenStore {
  #gate: { what: 'write' | 'answer'; arrived: () => void; opened: Promise<void>; landed: () => void } | undefined;
  /** `inner`: a MemoryStore, or a FailingStore around one (writes refused on command). */
  constructor(readonly inner: TokenStore) {
    super();
  }
  /** Removes the keys (the store restarts empty, FLUSHALL) and reports the reset. */
  async empty(...keys: string[]): Promise<void> {
    for (const key of keys) await this.inner.delete(key);
    this.emit('reset');
  }
  /**
   * Holds the next `ifVersion: 0` write: before it reaches the store, or (`'answer'`) after, holding back its
   * answer. Resolves once it arrived, to a function that lets it go on and resolves once it went through.
   */
  holdNextCreate(what: 'write' | 'answer' = 'write'): Promise<() => Promise<void>> {
    let open!: () => void;
    let landed!: () => void;
    const opened = new Promise<void>((resolve) => (open = resolve));
    const through = new Promise<void>((resolve) => (landed = resolve));
    const release = async (): Promise<void> => {
      open();
      await through;
    };
    return new Promise((resolve) => (this.#gate = { what, arrived: () => resolve(release), opened, landed }));
  }
  get(key: string): Promise<StoreRecord | undefined> {
    return this.inner.get(key);
  }
  #inFlight = 0;
  /** The most writes that were under way at once. */
  mostInFlight = 0;
  async set(key: string, value: string, options?: SetOptions): Promise<number | null> {
    this.mostInFlight = Math.max(this.mostInFlight, ++this.#inFlight);
    try {
      return await this.#set(key, value, options);
    } finally {
      this.#inFlight--;
    }
  }
  async #set(key: string, value: string, options?: SetOptions): Promise<number | null> {
    const gate = this.#gate;
    if (gate !== undefined && options?.ifVersion === 0) {
      this.#gate = undefined;
      const written = gate.what === 'answer' ? await this.inner.set(key, value, options) : undefined;
      gate.arrived();
      await gate.opened;
      const answer = written ?? (await this.inner.set(key, value, options));
      gate.landed();
      return answer;
    }
    return this.inner.set(key, value, options);
  }
  delete(key: string): Promise<void> {
    return this.inner.delete(key);
  }
  lock(key: string, options: LockOptions): Promise<StoreLock | undefined> {
    return this.inner.lock(key, options);
  }
  close(): Promise<void> {
    return Promise.resolve();
  }
}

describe('UserTokens: a write-back after a store reset that lands late', () => {
  it('writes of a subject go one at a time: invalidate() waits for a write-back the store holds, and the token it dropped does not come back', async () => {
    const store = new EmptiedStore(new MemoryStore({ clock }));
    const users = usersOn(store);
    await users.save('jane', await as.issueTokens({ sub: 'jane', scope: 'openid' }));
    const dropped = (await users.getAccessToken('jane')).accessToken;
    const key = users.keyFor('jane');
    // The store is emptied: the write-back of what this instance holds (jane with the token) waits in the store…
    const held = store.holdNextCreate();
    await store.empty(key);
    const release = await held;
    // …invalidate() finds the record missing; its own write-back waits its turn behind the one the store holds…
    const invalidating = users.invalidate('jane', dropped);
    await new Promise((resolve) => setTimeout(resolve, 50));
    // (Without the turns, it went in alongside: the older write then landed after invalidate()'s, into a store
    // emptied once more, and the dropped token was back in the store, and in memory as the newer version.)
    expect(store.mostInFlight).toBe(1);
    // …the store is emptied again, the held write-back lands in the empty store, and invalidate() goes on.
    await store.inner.delete(key);
    await release();
    await invalidating;
    const stored = async (): Promise<string | undefined> => (await store.inner.get(key))?.value;
    expect((await stored())?.includes(dropped)).toBe(false);
    expect(store.mostInFlight).toBe(1);
    // A later reset writes back what is held here: still without it.
    await store.empty(key);
    await waitFor(async () => (await stored()) !== undefined);
    const other = usersOn(store.inner);
    expect((await other.listAccessTokens('jane')).map((e) => e.token.accessToken.slice(-12))).not.toContain(
      dropped.slice(-12),
    );
    await Promise.all([users.close(), other.close()]);
  });

  it('does not sign back in a subject signed out here meanwhile: the entry it wrote is deleted again', async () => {
    const store = new EmptiedStore(new MemoryStore({ clock }));
    const users = usersOn(store);
    await users.save('karl', await as.issueTokens({ sub: 'karl', scope: 'openid' }));
    const key = users.keyFor('karl');
    const held = store.holdNextCreate();
    await store.empty(key);
    const release = await held;
    await users.delete('karl'); // signed out while the write-back waits in the store
    await release();
    await waitFor(async () => (await store.inner.get(key)) === undefined);
    // Without the fix, the write-back recreated the record: the subject signed in again on every instance.
    expect(await store.inner.get(key)).toBeUndefined();
    const other = usersOn(store.inner);
    expect(await outcome(other.getAccessToken('karl'))).toBe('ERR_LOGIN_REQUIRED');
    await clock.advance(SETTLE_MS); // (right after a reset, a missing record is read again once the fleet settled)
    expect(await outcome(users.getAccessToken('karl'))).toBe('ERR_LOGIN_REQUIRED');
    await Promise.all([users.close(), other.close()]);
  });

  it('a login saved again after the sign-out stands: the write-back, answered after it, deletes nothing', async () => {
    const store = new EmptiedStore(new MemoryStore({ clock }));
    const users = usersOn(store);
    await users.save('lisa', await as.issueTokens({ sub: 'lisa', scope: 'openid' }));
    const key = users.keyFor('lisa');
    const held = store.holdNextCreate('answer'); // written, its answer late
    await store.empty(key);
    const release = await held;
    await users.delete('lisa');
    const login = await as.issueTokens({ sub: 'lisa', scope: 'openid' });
    const saving = users.save('lisa', login); // written after the write-back (its turn comes after it)
    await release();
    await saving;
    await new Promise((resolve) => setTimeout(resolve, 50)); // (a delete would follow the answer at once)
    // Without telling a replacement from a sign-out, the write-back's answer deleted the new login from the store.
    expect((await store.inner.get(key))?.value.includes(login['access_token'] as string)).toBe(true);
    const other = usersOn(store.inner);
    expect((await other.getAccessToken('lisa')).accessToken).toBe(login['access_token']);
    await Promise.all([users.close(), other.close()]);
  });

  it('a refresh whose write was pending, retried into the emptied store when the subject signs out here: deleted again', async () => {
    const failing = new FailingStore(new MemoryStore({ clock }));
    const store = new EmptiedStore(failing);
    const users = usersOn(store);
    await users.save('mona', await as.issueTokens({ sub: 'mona', scope: 'openid' }));
    const key = users.keyFor('mona');
    await clock.advance(61_000); // expired: the next call refreshes, and the store refuses the write
    failing.failing.add('set');
    const refreshed = (await users.getAccessToken('mona')).accessToken;
    failing.failing.delete('set');
    const held = store.holdNextCreate();
    await store.empty(key); // the pending write's next try finds the record gone while the fleet settles
    const release = await held;
    await users.delete('mona');
    await release();
    await waitFor(async () => (await store.inner.get(key)) === undefined);
    // Without the fix, the pending write landed after the sign-out and signed the subject back in everywhere.
    expect((await store.inner.get(key))?.value.includes(refreshed) ?? false).toBe(false);
    expect(await store.inner.get(key)).toBeUndefined();
    const other = usersOn(store.inner);
    expect(await outcome(other.getAccessToken('mona'))).toBe('ERR_LOGIN_REQUIRED');
    await Promise.all([users.close(), other.close()]);
  });
});

describe('UserTokens: revoke() while a refresh of this instance waits to be written', () => {
  it('revokes the newest refresh token, the one held here, not only the spent one the store still has', async () => {
    const memory = new MemoryStore({ clock });
    const failing = new FailingStore(memory);
    const gate = gated();
    gate.open();
    // The tokens sent for revocation (a server may revoke a whole grant for a spent token; not every one does).
    const revoked: string[] = [];
    const fetch: typeof globalThis.fetch = (input, init) => {
      const body = new URLSearchParams(String(init?.body ?? ''));
      if (String(input).endsWith('/revoke') || String(input).includes('/token/revocation')) {
        revoked.push(body.get('token') ?? '');
      }
      return gate.fetch(input, init);
    };
    const users = usersOn(failing, { fetch, lock: { wait: '50ms' } });
    const login = await as.issueTokens({ sub: 'nina', scope: 'openid' });
    await users.save('nina', login);
    await clock.advance(61_000); // expired: the next call refreshes, and the store refuses the write
    failing.failing.add('set');
    await users.getAccessToken('nina');
    expect(gate.issued).toHaveLength(1);
    const [newest] = gate.issued as [string];
    expect(await active(newest)).toBe(true);
    const result = await users.revoke('nina'); // the store still has the spent refresh token
    // Without the fix only the store's (spent) refresh token was sent: on a server that does not revoke a grant
    // for a spent token, the newest stayed live — the user signed out here but not there.
    expect(revoked).toContain(newest);
    expect(await active(newest)).toBe(false);
    expect(result.refreshToken).toBe(true);
    failing.failing.clear();
    expect(await outcome(users.getAccessToken('nina'))).toBe('ERR_LOGIN_REQUIRED');
    await users.close();
    expect(await memory.get(users.keyFor('nina'))).toBeUndefined();
  });
});

describe('UserTokens: a store write that never answers', () => {
  it("holds up the subject's later writes for one storeTimeout, not for ever", async () => {
    const memory = new MemoryStore({ clock });
    const failing = new FailingStore(memory);
    const users = usersOn(failing, { storeTimeout: '200ms' });
    await users.save('olga', await as.issueTokens({ sub: 'olga', scope: 'openid' }));
    failing.hanging.add('set'); // this write never answers (nothing releases it)
    expect(await outcome(users.save('olga', await as.issueTokens({ sub: 'olga', scope: 'openid' })))).toBe(
      'ERR_STORE_TIMEOUT',
    );
    failing.hanging.delete('set');
    // The next write's turn came when the one before gave up: without that it waited for an answer that never
    // comes, and every later write of the subject failed.
    const login = await as.issueTokens({ sub: 'olga', scope: 'openid' });
    await users.save('olga', login);
    expect((await memory.get(users.keyFor('olga')))?.value.includes(login['access_token'] as string)).toBe(true);
    await users.close();
  });
});

/** An {@link EmptiedStore} that records the macrotask (`turn()`) each write went out and answered in. */
class MarkedStore extends EmptiedStore {
  readonly writes: { key: string; sent: number; answered: number }[] = [];
  constructor(
    inner: TokenStore,
    readonly turn: () => number,
  ) {
    super(inner);
  }
  override async set(key: string, value: string, options?: SetOptions): Promise<number | null> {
    const write = { key, sent: this.turn(), answered: -1 };
    this.writes.push(write);
    const answer = await super.set(key, value, options);
    write.answered = this.turn();
    return answer;
  }
  /** Each write of `key` after the first: whether it went out in a later macrotask than the one before answered. */
  later(key: string): boolean[] {
    const mine = this.writes.filter((w) => w.key === key);
    return mine.slice(1).map((w, i) => w.sent > mine[i]!.answered);
  }
}

describe('UserTokens: a subject written again in the macrotask its last write answered in', () => {
  const secret = 'macrotask-test-secret-0123456789abcdef';
  const b64 = (value: unknown): string => Buffer.from(JSON.stringify(value)).toString('base64url');
  /** A login response with an HS256 ID token (checked with the client secret: no server needed). */
  const login = (sub: string): Record<string, unknown> => {
    const iat = Math.floor(clock.now() / 1000);
    const claims = { sub, iss: 'https://issuer.test', aud: 'app', iat, exp: iat + 3600 };
    const signed = `${b64({ alg: 'HS256' })}.${b64(claims)}`;
    return {
      access_token: randomBytes(24).toString('base64url'),
      token_type: 'Bearer',
      expires_in: 3600,
      refresh_token: randomBytes(24).toString('base64url'),
      id_token: `${signed}.${createHmac('sha256', secret).update(signed).digest('base64url')}`,
    };
  };
  /** Counts macrotasks (check phases) until the test ends. */
  const turns = (): (() => number) => {
    let turn = 0;
    let running = true;
    const next = (): void => {
      turn++;
      if (running) setImmediate(next);
    };
    setImmediate(next);
    onTestFinished(() => void (running = false));
    return () => turn;
  };
  const instance = (store: TokenStore): UserTokens =>
    new UserTokens({ issuer: 'https://issuer.test', clientId: 'app', clientSecret: secret, store, clock });

  it('waits for the next macrotask (the caller of the last write has taken its answer)', async () => {
    const store = new MarkedStore(new MemoryStore({ clock }), turns());
    const users = instance(store);
    await users.save('ann', login('ann'));
    await users.save('ann', login('ann'));
    expect(store.writes[0]!.answered).toBe(store.writes[0]!.sent); // the premise: no macrotask in a save
    expect(store.later(users.keyFor('ann'))).toEqual([true]); // without the subject marked as just written: [false]
    await users.close();
  });

  it('also the one past the subjects marked one by one in a macrotask', async () => {
    const store = new MarkedStore(new MemoryStore({ clock }), turns());
    const users = instance(store);
    const subjects = Array.from({ length: SETTLING_MAX + 1 }, (_, i) => `user-${i}`);
    const logins = subjects.map(login);
    for (const [i, subject] of subjects.entries()) await users.save(subject, logins[i]!);
    const last = subjects.at(-1)!;
    await users.save(last, login(last));
    // The premise: all those went out in one macrotask, the last one past the marks.
    expect(new Set(store.writes.slice(0, subjects.length).map((w) => w.answered)).size).toBe(1);
    // Without every write waiting once the marks are full, its second write went out in that macrotask too.
    expect(store.later(users.keyFor(last))).toEqual([true]);
    await users.close();
  });
});
