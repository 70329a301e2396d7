/**
 * The fleet through the store faults an operator meets. Each scenario runs three processes (a fourth joins
 * in one) sharing one store, each calling getToken() every 10 ms for 15 s, all starting from the same
 * single-use rotating refresh token of a real authorization server that issues 2 s access tokens and
 * revokes the whole grant when a refresh token is presented twice. The store is a private server started
 * here (never the shared one) and broken for real: killed, frozen with SIGSTOP, restarted empty, failed over.
 *
 * Every scenario must end with: no `invalid_grant` (no refresh token spent twice), the grant alive, every
 * failed call a coded error made while the process held no valid token, and no call by a process that
 * held a valid token slower than 2.5 s.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import calculateSlot from 'cluster-key-slot';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TokenManager, refreshToken } from '../../src/index.js';
import { type TestAuthorizationServer, startAuthorizationServer } from '../support/authorization-server.js';
import {
  frozenFor,
  stoppedFor,
  skipWithout,
  hasPgBouncer,
  hasRedisServer,
  pgBin,
  sleep,
  startPgBouncer,
  startPostgresPair,
  startPrivatePostgres,
  startPrivateRedis,
  startRedisCluster,
  startSentinelSet,
  type PrivateRedisCluster,
} from '../support/private-servers.js';
import { type ChildConfig, type ChildResult, openFleetStore, runChild } from '../stores/fleet-support.js';

const PROCESSES = 3;
const DURATION_MS = 15_000;
const INTERVAL_MS = 10;
const BOOT_MS = 3_500;
/** When the fault starts, counted from the moment the processes start calling. */
const FAULT_AT_MS = 4_000;
const MAX_WHILE_VALID_MS = 2_500;
/** What a failed getToken() may be while no valid token exists and the store is away. */
const STORE_CODES = new Set(['ERR_STORE', 'ERR_STORE_TIMEOUT', 'ERR_LOCK_TIMEOUT']);

let as: TestAuthorizationServer;

beforeAll(async () => {
  as = await startAuthorizationServer({ accessTokenTtl: 2 });
});
afterAll(async () => {
  await as?.close();
});

type StoreConfig = ChildConfig['store'];

interface Outcome {
  rt: string;
  results: ChildResult[];
  invalidGrant: number;
  refreshes: number;
}

/**
 * Runs the fleet on `store`; `fault(startAt)` breaks and mends the store while it runs (it is awaited in
 * parallel with the processes). A `newcomer` process joins at the time `fault` resolves to.
 */
async function runScenario(options: {
  store: StoreConfig;
  fault: (startAt: number) => Promise<number | void>;
  newcomer?: boolean;
  grant?: 'refresh_token' | 'client_credentials';
  manager?: ChildConfig['manager'];
  /** How long the processes call (15 s unless said). */
  durationMs?: number;
}): Promise<Outcome> {
  const durationMs = options.durationMs ?? DURATION_MS;
  const login = await as.login(`faults-${randomUUID()}`);
  const rt = login['refresh_token'] as string;
  as.resetCounts();
  const startAt = Date.now() + BOOT_MS;
  const base: ChildConfig = {
    store: options.store,
    issuer: as.issuer,
    clientId: as.clients.app.clientId,
    clientSecret: as.clients.app.clientSecret,
    refreshToken: rt,
    startAt,
    durationMs,
    intervalMs: INTERVAL_MS,
    ...(options.grant && { grant: options.grant }),
    ...(options.manager && { manager: options.manager }),
  };
  const children = Array.from({ length: PROCESSES }, () => runChild(base));
  const joined = (async () => {
    const at = await options.fault(startAt);
    if (!options.newcomer || typeof at !== 'number') return [];
    // The newcomer is started (node, imports, discovery) so that its first call comes 0.5 s after `at`.
    const joinAt = at + 500;
    return [await runChild({ ...base, startAt: joinAt, durationMs: Math.max(2000, startAt + durationMs - joinAt) })];
  })();
  const results = [...(await Promise.all(children)), ...(await joined)];
  const invalidGrant = as.counts.errors['invalid_grant'] ?? 0;
  const refreshes = as.counts.byGrant['refresh_token'] ?? 0;
  return { rt, results, invalidGrant, refreshes };
}

/**
 * The grant is alive: a new process on the same store, configured like the fleet, refreshes twice from
 * what the store holds (with the long-spent initial refresh token in its configuration, as a restarted
 * process would be).
 */
async function expectGrantAlive(store: StoreConfig, initialRefreshToken: string): Promise<void> {
  const { store: shared, close } = openFleetStore(store);
  const m = new TokenManager({
    source: refreshToken({
      issuer: as.issuer,
      clientId: as.clients.app.clientId,
      clientSecret: as.clients.app.clientSecret,
      refreshToken: initialRefreshToken,
      allowInsecureRequests: true,
    }),
    store: shared,
  });
  try {
    const first = await m.refresh();
    const second = await m.refresh();
    expect(second.expiresAt).toBeGreaterThan(Date.now());
    expect(second.refreshToken).not.toBe(first.refreshToken);
  } finally {
    await m.close();
    await close();
  }
  expect(as.counts.errors['invalid_grant'] ?? 0).toBe(0);
}

function expectFleetKeptTheGrant(outcome: Outcome, label: string): void {
  const summary = JSON.stringify(
    outcome.results.map(({ latenciesMs: _l, errors, ...r }) => ({
      ...r,
      errors: errors.length,
      codes: [...new Set(errors)],
    })),
  );
  const all = outcome.results;
  expect(outcome.invalidGrant, `${label}: invalid_grant ${summary}`).toBe(0);
  expect(
    all.flatMap((r) => r.uncoded),
    `${label}: uncoded errors`,
  ).toEqual([]);
  expect(
    all.flatMap((r) => r.errorsWhileValid),
    `${label}: errors while a valid token was held ${summary}`,
  ).toEqual([]);
  for (const code of all.flatMap((r) => r.errors)) expect(STORE_CODES, `${label}: ${summary}`).toContain(code);
  expect(
    Math.max(...all.map((r) => r.maxWhileValidMs)),
    `${label}: slow call with a valid token ${summary}`,
  ).toBeLessThan(MAX_WHILE_VALID_MS);
  expect(
    all.reduce((n, r) => n + r.expired, 0),
    `${label}: expired tokens served ${summary}`,
  ).toBe(0);
  // The fleet worked (calls succeeded before and after the fault) and refreshed as one.
  for (const r of all) expect(r.calls - r.errors.length, summary).toBeGreaterThan(100);
  expect(outcome.refreshes, summary).toBeGreaterThanOrEqual(3);
}

/** Sleeps until `ms` after the fleet started calling. */
const at = (startAt: number, ms: number): Promise<void> => sleep(startAt + ms - Date.now());

/**
 * The plain scenario: a private server started, the fleet run on it with `fault` done to the server
 * {@link FAULT_AT_MS} after the fleet started calling, the grant kept throughout and alive after; the server
 * stopped whatever happens.
 */
async function faultOn(
  server: { close(): Promise<void> },
  store: StoreConfig,
  label: string,
  fault: () => Promise<void>,
): Promise<void> {
  try {
    const outcome = await runScenario({
      store,
      fault: async (startAt) => {
        await at(startAt, FAULT_AT_MS);
        await fault();
      },
    });
    expectFleetKeptTheGrant(outcome, label);
    await expectGrantAlive(store, outcome.rt);
  } finally {
    await server.close();
  }
}

describe.skipIf(skipWithout('redis-server', hasRedisServer))('a fleet through Redis faults', () => {
  const prefix = () => `tw-faults:${randomUUID()}:`;

  it('Redis stopped for 3 s across an expiry (data kept), then back', async () => {
    const redis = await startPrivateRedis({ persist: true });
    await faultOn(redis, { kind: 'redis', url: redis.url, prefix: prefix() }, 'redis stopped 3 s', () =>
      stoppedFor(redis, 3000),
    );
  }, 90_000);

  it('Redis stopped for 3 s across an expiry and restarted empty', async () => {
    const redis = await startPrivateRedis();
    await faultOn(redis, { kind: 'redis', url: redis.url, prefix: prefix() }, 'redis stopped 3 s, back empty', () =>
      stoppedFor(redis, 3000, { empty: true }),
    );
  }, 90_000);

  it('Redis frozen (SIGSTOP) for 5 s, then SIGCONT', async () => {
    const redis = await startPrivateRedis();
    await faultOn(redis, { kind: 'redis', url: redis.url, prefix: prefix() }, 'redis frozen 5 s', () =>
      frozenFor(redis, 5000),
    );
  }, 90_000);

  it('Redis restarted empty, and a fourth process starts 0.5 s later', async () => {
    const redis = await startPrivateRedis();
    try {
      const store: StoreConfig = { kind: 'redis', url: redis.url, prefix: prefix() };
      const outcome = await runScenario({
        store,
        newcomer: true,
        fault: async (startAt) => {
          await at(startAt, FAULT_AT_MS);
          await redis.stop();
          await redis.start({ empty: true });
          return Date.now();
        },
      });
      expect(outcome.results).toHaveLength(PROCESSES + 1);
      expectFleetKeptTheGrant(outcome, 'redis restarted empty + newcomer');
      await expectGrantAlive(store, outcome.rt);
    } finally {
      await redis.close();
    }
  }, 90_000);

  for (const how of ['the master killed with SIGKILL', "an operator's SENTINEL FAILOVER"] as const) {
    // A manual failover leaves the old master up, taking writes, until a sentinel converts it to a replica about
    // 10 s later: the fleet runs 25 s, and a process joins (on the new master) while the old one still takes writes.
    const manual = how !== 'the master killed with SIGKILL';
    it(`Redis Sentinel failover: ${how}, the replica promoted${manual ? '; a process joins meanwhile' : ''}`, async () => {
      const set = await startSentinelSet();
      try {
        const store: StoreConfig = {
          kind: 'redis-sentinel',
          sentinels: set.sentinels,
          name: set.name,
          prefix: prefix(),
        };
        const outcome = await runScenario({
          store,
          ...(manual && { newcomer: true, durationMs: 25_000 }),
          fault: async (startAt) => {
            await at(startAt, FAULT_AT_MS);
            if (!manual) return void (await set.master.stop());
            await set.failover();
            return Date.now();
          },
        });
        expect(await set.masterPort()).toBe(set.replica.port); // it did fail over
        // and the old master was made a replica
        if (manual) expect(await set.master.cli('role')).toMatch(/^slave/);
        expectFleetKeptTheGrant(outcome, `sentinel failover, ${how}`);
        await expectGrantAlive(store, outcome.rt);
      } finally {
        await set.close();
      }
    }, 120_000);
  }

  /** The fleet's one entry (the store's prefix is the test's own) and its master and replicas now. */
  async function entryOwners(
    own: PrivateRedisCluster,
    keyPrefix: string,
  ): Promise<{ key: string } & Awaited<ReturnType<PrivateRedisCluster['slotOwners']>>> {
    for (const server of own.servers) {
      const keys = await server.cli('--scan', '--pattern', `${keyPrefix}entry:*`).catch(() => '');
      const key = keys.split('\n').find((k) => k !== '');
      if (key !== undefined) return { key, ...(await own.slotOwners(calculateSlot(key))) };
    }
    throw new Error('the fleet wrote no entry');
  }

  for (const how of [
    'killed right after a refresh its replica never got',
    'handed over by CLUSTER FAILOVER',
  ] as const) {
    it(`Redis Cluster: the master holding the entry ${how}, the replica promoted; a process joins after`, async () => {
      const own = await startRedisCluster(3, 1);
      try {
        const keyPrefix = prefix();
        const store: StoreConfig = { kind: 'redis-cluster', nodes: own.nodes, prefix: keyPrefix };
        let promoted: number | undefined;
        const outcome = await runScenario({
          store,
          newcomer: true,
          // A replica is promoted 3–5 s after its master fails (cluster-node-timeout 2 s), now and then later.
          durationMs: 25_000,
          fault: async (startAt) => {
            await at(startAt, FAULT_AT_MS);
            const { key, master, replicas } = await entryOwners(own, keyPrefix);
            const replica = replicas[0]!;
            if (how === 'handed over by CLUSTER FAILOVER') {
              // An operator's maintenance: the replica catches up with the master, then takes over.
              await replica.cli('cluster', 'failover');
            } else {
              // The replica cut from its master and frozen (so that it cannot connect again: what the master
              // writes then reaches no replica); the master killed the moment the next refresh is stored; the
              // replica woken: it is promoted without that write.
              const version = await master.cli('hget', key, 'version');
              await replica.cli('client', 'kill', 'type', 'master');
              await replica.freeze();
              try {
                const until = Date.now() + 5000;
                while ((await master.cli('hget', key, 'version')) === version) {
                  if (Date.now() > until) throw new Error('no refresh within 5 s');
                  await sleep(10);
                }
                await master.stop();
              } finally {
                replica.thaw();
              }
            }
            const until = Date.now() + 15_000;
            while (!(await replica.cli('role')).startsWith('master')) {
              if (Date.now() > until) throw new Error('the replica was not promoted');
              await sleep(50);
            }
            promoted = replica.port;
            return Date.now();
          },
        });
        expect((await entryOwners(own, keyPrefix)).master.port).toBe(promoted); // it did fail over
        expectFleetKeptTheGrant(outcome, `cluster master ${how}`);
        await expectGrantAlive(store, outcome.rt);
      } finally {
        await own.close();
      }
    }, 120_000);
  }

  it('client credentials, Redis frozen for 5 s: no call that holds a valid token waits', async () => {
    const redis = await startPrivateRedis();
    try {
      const store: StoreConfig = { kind: 'redis', url: redis.url, prefix: prefix() };
      const outcome = await runScenario({
        store,
        grant: 'client_credentials',
        fault: async (startAt) => {
          await at(startAt, FAULT_AT_MS);
          await frozenFor(redis, 5000);
        },
      });
      const all = outcome.results;
      expect(Math.max(...all.map((r) => r.maxWhileValidMs))).toBeLessThan(MAX_WHILE_VALID_MS);
      // Client credentials spend nothing single-use: without the store, each process fetches its own.
      expect(
        all.flatMap((r) => r.errors),
        JSON.stringify(all.map((r) => r.messages)),
      ).toEqual([]);
    } finally {
      await redis.close();
    }
  }, 90_000);
});

describe.skipIf(skipWithout('the PostgreSQL server binaries', pgBin !== undefined))(
  'a fleet through PostgreSQL faults',
  () => {
    const table = () => `tw_faults_${randomBytes(5).toString('hex')}`;

    it('PostgreSQL stopped for 5 s across an expiry, then back', async () => {
      const pg = await startPrivatePostgres();
      await faultOn(pg, { kind: 'postgres', connectionString: pg.url, table: table() }, 'postgres stopped 5 s', () =>
        stoppedFor(pg, 5000),
      );
    }, 90_000);

    it('PostgreSQL frozen (every process SIGSTOP) for 5 s across an expiry, then SIGCONT', async () => {
      const pg = await startPrivatePostgres();
      await faultOn(
        pg,
        { kind: 'postgres', connectionString: pg.url, table: table() },
        'postgres frozen 5 s',
        () => frozenFor(pg, 5000), // statements sent meanwhile run when it resumes, after their callers gave up
      );
    }, 90_000);

    /** The newest state in `table` (one key in these scenarios): its `seq`, and whether it was written back. */
    async function storedSeq(client: pg.Client, name: string): Promise<{ seq: number; healed: boolean } | undefined> {
      // (The row keyed '' is the store's generation marker, not an entry.)
      const { rows } = await client.query<{ value: string }>(`SELECT value FROM "${name}" WHERE key <> ''`);
      const entries = rows.map((r) => JSON.parse(r.value) as { seq: number; healedAt?: number });
      const newest = entries.sort((a, b) => b.seq - a.seq)[0];
      return newest && { seq: newest.seq, healed: newest.healedAt !== undefined };
    }

    /** A connection of the test's own to `url`. */
    async function open(url: string): Promise<pg.Client> {
      const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 1000 });
      client.on('error', () => undefined);
      await client.connect();
      return client;
    }

    /**
     * Resolves to what `table` holds once its `seq` passes `seq`: polled every 2 ms on one connection, so that
     * the test acts within a few milliseconds of a refresh's write.
     */
    async function seqAfter(url: string, name: string, seq: number, ms = 8_000) {
      const deadline = Date.now() + ms;
      let client: pg.Client | undefined;
      try {
        for (;;) {
          client ??= await open(url).catch(() => undefined);
          const reading = client;
          const now =
            reading === undefined
              ? undefined
              : await storedSeq(reading, name).catch(() => {
                  void reading.end().catch(() => undefined);
                  client = undefined;
                  return undefined;
                });
          if (now !== undefined && now.seq > seq) return now;
          if (Date.now() > deadline) throw new Error(`${name} did not pass seq ${seq} in ${ms} ms`);
          await sleep(client === undefined ? 20 : 2);
        }
      } finally {
        await client?.end().catch(() => undefined);
      }
    }

    it('PostgreSQL failover: the primary killed right after a refresh its lagging replica never got, the replica promoted', async () => {
      const pair = await startPostgresPair();
      try {
        const name = table();
        const store: StoreConfig = { kind: 'postgres', connectionString: pair.url, table: name };
        const seen: { killedAt?: number; promotedHeld?: number; healed?: { seq: number; healed: boolean } } = {};
        const outcome = await runScenario({
          store,
          fault: async (startAt) => {
            await at(startAt, FAULT_AT_MS);
            // Between two refreshes, the replica stops receiving; the next refresh lands on the primary alone,
            // and the primary is killed right after it: the failover loses that write.
            const before = await seqAfter(pair.url, name, 0);
            await seqAfter(pair.url, name, before.seq); // a refresh that the replica received
            await sleep(200);
            await pair.cutReplication();
            // A refresh that landed while replication was being cut may have reached the replica: wait for one
            // written after the cut, which cannot have.
            const cut = await seqAfter(pair.url, name, -1);
            const last = await seqAfter(pair.url, name, cut.seq);
            await pair.failover(async (promoted) => {
              seen.killedAt = last.seq;
              const client = await open(promoted);
              seen.promotedHeld = (await storedSeq(client, name).finally(() => client.end()))?.seq;
            });
            // A process holding the lost state writes it back to the promoted replica.
            seen.healed = await seqAfter(pair.url, name, (seen.promotedHeld ?? 0) as number);
          },
        });
        const label = `postgres failover ${JSON.stringify(seen)}`;
        expect(seen.promotedHeld, label).toBeLessThan(seen.killedAt as number); // the write was lost
        expect(seen.healed, label).toEqual({ seq: seen.killedAt, healed: true }); // and put back, not re-spent
        expectFleetKeptTheGrant(outcome, label);
        await expectGrantAlive(store, outcome.rt);
      } finally {
        await pair.close();
      }
    }, 90_000);

    for (const mode of ['transaction', 'session'] as const) {
      // (PostgreSQL restarting behind a default PgBouncer means 15 s of `server_login_retry` refusals, whoever
      // the client: PgBouncer itself restarting is the fault here.)
      it.skipIf(skipWithout('pgbouncer', hasPgBouncer))(
        `behind PgBouncer in ${mode} mode (default settings), PgBouncer killed for 3 s`,
        async () => {
          const pg = await startPrivatePostgres();
          const bouncer = await startPgBouncer(pg.port, mode);
          try {
            const store: StoreConfig = { kind: 'postgres', connectionString: bouncer.url, table: table() };
            const outcome = await runScenario({
              store,
              fault: async (startAt) => {
                await at(startAt, FAULT_AT_MS);
                await stoppedFor(bouncer, 3000);
              },
            });
            expectFleetKeptTheGrant(outcome, `pgbouncer ${mode}`);
            await expectGrantAlive(store, outcome.rt);
          } finally {
            await bouncer.close();
            await pg.close();
          }
        },
        90_000,
      );
    }
  },
);
