/**
 * RedisStore and PostgresStore over TLS, as managed services require it, on a private Redis (`--tls-port`) and
 * a private PostgreSQL (`ssl=on`) with certificates of a test CA: a fleet shares tokens through the encrypted
 * connection, and the TLS faults an operator meets — a CA the client was not given, a certificate of another
 * CA, an expired one, one that names another host, TLS asked of a plain port (and the reverse), a client
 * certificate required — are `ERR_STORE` said in words as the server reports them (under a 10 s time limit, so a
 * store that waited instead would give `ERR_STORE_TIMEOUT`), naming no host, user or password; a plain Redis port
 * that never answers the handshake is `ERR_STORE_TIMEOUT` saying so. A certificate rotated to an
 * expired one while the application runs (connections open, then dropped) leaves a valid token served from
 * memory and a refresh failing with nothing spent; once the certificate is right, one refresh spends once.
 *
 * Through Redis Sentinel over TLS (a sentinel serving TLS only) and on a Redis Cluster over TLS, a fleet shares
 * tokens (and follows a Sentinel failover), and the faults ioredis reports only as "All sentinels are
 * unreachable" or "Failed to refresh slots cache" are said in words as each server refused.
 */
import { randomUUID } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import pg from 'pg';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it, onTestFinished } from 'vitest';
import { Cluster, type RedisOptions } from 'ioredis';
import type { Duration } from '../../src/duration.js';
import type { Token } from '../../src/index.js';
import type { TokenwardenError } from '../../src/errors.js';
import { RedisStore } from '../../src/redis.js';
import { PostgresStore } from '../../src/stores/postgres.js';
import { type TestAuthorizationServer, startAuthorizationServer } from '../support/authorization-server.js';
import { crashes, failure } from '../support/crashes.js';
import { type ClosableStore, sharedPair } from '../support/login-fleet.js';
import {
  type PrivatePostgres,
  type PrivateRedis,
  type PrivateRedisCluster,
  type PrivateSentinelSet,
  type ServerTls,
  freePort,
  hasRedisServer,
  pgBin,
  skipWithout,
  sleep,
  startPrivatePostgres,
  startPrivateRedis,
  startRedisCluster,
  startSentinelSet,
  until,
} from '../support/private-servers.js';
import { type TestCertificates, hasOpenssl, makeCertificates } from '../support/tls.js';

const USER = 'tls-user-7f3a';
const PASSWORD = 'tls-secret-9c1e';
let certs: TestCertificates;
let as: TestAuthorizationServer;

beforeAll(async () => {
  if (hasOpenssl) certs = makeCertificates();
  as = await startAuthorizationServer({ accessTokenTtl: 120 });
});
afterAll(async () => {
  certs?.remove();
  await as?.close();
});
// No test here may crash the process (an uncaught exception or an unhandled rejection), whatever TLS does.
let seen: unknown[];
beforeEach(() => {
  seen = crashes();
});
afterEach(() => {
  expect(seen).toEqual([]);
});

/** The files of the valid server certificate, its key and the test CA, for a private Redis set-up. */
const serverFiles = (): ServerTls => ({ cert: certs.file('cert'), key: certs.file('key'), ca: certs.file('ca') });

/** The error of a store call that must fail (the store closed after it). */
async function refused(store: ClosableStore): Promise<unknown> {
  const err = await failure(store.get('k'));
  await store.close();
  return err;
}

/**
 * Two processes on stores `open` makes share a rotating refresh token: one refreshes, the other takes the
 * result from the store — one refresh token spent, none presented twice. The pair and its counts, to go on.
 */
async function sharesOnce(open: () => ClosableStore): Promise<Awaited<ReturnType<typeof sharedPair>>> {
  const pair = await sharedPair(as, open);
  const fresh = await pair.b.refresh();
  expect((await pair.a.refresh()).accessToken).toBe(fresh.accessToken); // from the store: nothing spent
  expect(pair.spent()).toBe(1);
  expect(pair.rejected()).toBe(0);
  return pair;
}

/**
 * The store's time limit in a failure case: a failure the server reports fails long before this (`ERR_STORE`,
 * not the `ERR_STORE_TIMEOUT` of a store that waited it out); a server that never answers is waited for 1 s.
 */
const limitFor = (code: 'ERR_STORE' | 'ERR_STORE_TIMEOUT'): Duration => (code === 'ERR_STORE' ? '10s' : '1s');

/** `err` has `code` and says `words`, naming none of the host, user and password. */
function expectSaidInWords(err: unknown, code: string, words: RegExp, host: string): void {
  expect(err).toMatchObject({ code, message: expect.stringMatching(words) });
  const text = `${(err as Error).message} ${JSON.stringify(err)}`;
  for (const secret of [PASSWORD, USER, host]) expect(text).not.toContain(secret);
}

/**
 * The certificate rotated to an expired one (`rotate`), the store's connections dropped (`drop`): a valid token
 * is served from memory, a refresh fails with ERR_STORE saying the certificate expired and spends nothing; the
 * right certificate back (`mend`), one refresh spends once and the other process takes its result.
 */
async function rotatedToExpired(
  open: () => ClosableStore,
  rotate: () => Promise<void>,
  drop: () => Promise<void>,
  mend: () => Promise<void>,
): Promise<void> {
  const { a, b, spent, rejected } = await sharedPair(as, open);
  const held = await a.getToken();
  await rotate();
  await drop();
  expect((await a.getToken()).accessToken).toBe(held.accessToken); // from memory: no store call
  for (const manager of [a, b]) {
    const err = await failure(manager.refresh());
    expect(err).toMatchObject({ code: 'ERR_STORE', message: expect.stringMatching(/certificate has expired/) });
  }
  expect(spent()).toBe(0);
  await mend();
  const fresh = await a.refresh();
  expect(fresh.accessToken).not.toBe(held.accessToken);
  expect(spent()).toBe(1);
  expect((await b.refresh()).accessToken).toBe(fresh.accessToken); // from the store: nothing spent
  expect(spent()).toBe(1);
  expect(rejected()).toBe(0); // no refresh token presented twice
}

describe.skipIf(skipWithout('redis-server', hasRedisServer) || skipWithout('openssl', hasOpenssl))(
  'RedisStore over TLS (rediss://)',
  () => {
    let redis: PrivateRedis;
    let tlsPort: number;
    const tlsUrl = (host = '127.0.0.1', port = tlsPort): string => `rediss://${host}:${port}`;
    const withSecrets = (url: string): string => url.replace('//', `//${USER}:${PASSWORD}@`);
    const useCert = (name: 'cert' | 'expired' | 'wrongName'): Promise<string> =>
      redis.cli('CONFIG', 'SET', 'tls-cert-file', certs.file(name));

    beforeAll(async () => {
      tlsPort = await freePort();
      redis = await startPrivateRedis({
        args: [
          '--tls-port',
          String(tlsPort),
          '--tls-cert-file',
          certs.file('cert'),
          '--tls-key-file',
          certs.file('key'),
          '--tls-ca-cert-file',
          certs.file('ca'),
          '--tls-auth-clients',
          'no',
        ],
      });
    });
    afterAll(async () => {
      await redis?.close();
    });

    it('with the CA given, a fleet shares a rotating refresh token through the TLS connection, and spends it once', async () => {
      await sharesOnce(
        () => new RedisStore({ url: tlsUrl(), prefix: 'tls:', redisOptions: { tls: { ca: certs.ca } } }),
      );
      // The entry went through TLS to this server (read back on its plain port).
      expect(await redis.cli('--scan', '--pattern', 'tls:*')).not.toBe('');
    });

    const trusting = (): { tls: { ca: string } } => ({ tls: { ca: certs.ca } });
    for (const [what, cert, url, redisOptions, code, words] of [
      [
        'the CA not given (the system store does not know it)',
        'cert',
        () => tlsUrl(),
        () => ({}),
        'ERR_STORE',
        /TLS certificate .*trusted/,
      ],
      [
        'a certificate of another CA',
        'cert',
        () => tlsUrl(),
        () => ({ tls: { ca: certs.otherCa } }),
        'ERR_STORE',
        /TLS certificate .*trusted/,
      ],
      ['an expired certificate', 'expired', () => tlsUrl(), trusting, 'ERR_STORE', /TLS certificate has expired/],
      [
        'a certificate for another host',
        'wrongName',
        () => tlsUrl(),
        trusting,
        'ERR_STORE',
        /TLS certificate does not name that host/,
      ],
      [
        'TLS asked of the plain port',
        'cert',
        () => tlsUrl('127.0.0.1', redis.port),
        trusting,
        'ERR_STORE_TIMEOUT',
        / took longer than 1000 ms: .*never answered the TLS handshake/,
      ],
      [
        'no TLS asked of the TLS port',
        'cert',
        () => `redis://127.0.0.1:${tlsPort}`,
        () => ({}),
        'ERR_STORE',
        /connection was (reset|closed)/,
      ],
    ] as const) {
      it(`${what}: ${code} in words, naming no host, user or password`, async () => {
        await useCert(cert);
        onTestFinished(() => useCert('cert').then(() => undefined));
        const store = new RedisStore({
          url: withSecrets(url()),
          timeout: limitFor(code),
          redisOptions: redisOptions(),
        });
        const err = await refused(store);
        expectSaidInWords(err, code, words, '127.0.0.1');
        expect((err as TokenwardenError).cause).toBeDefined();
      });
    }

    it('a server that requires a client certificate (tls-auth-clients yes): without one, ERR_STORE saying one may be required; with one, the store works', async () => {
      await redis.cli('CONFIG', 'SET', 'tls-auth-clients', 'yes');
      onTestFinished(() => redis.cli('CONFIG', 'SET', 'tls-auth-clients', 'no').then(() => undefined));
      const without = new RedisStore({
        url: withSecrets(tlsUrl()),
        timeout: limitFor('ERR_STORE'),
        redisOptions: { tls: { ca: certs.ca } },
      });
      expectSaidInWords(await refused(without), 'ERR_STORE', /client certificate/, '127.0.0.1');
      // The same server asked as a sentinel (it refuses the connection before any command): asked again, said so.
      const throughSentinel = new RedisStore({
        sentinels: [{ host: '127.0.0.1', port: tlsPort }],
        name: 'tokens',
        timeout: limitFor('ERR_STORE'),
        redisOptions: { sentinelTLS: { ca: certs.ca }, sentinelPassword: PASSWORD },
      });
      expectSaidInWords(
        await refused(throughSentinel),
        'ERR_STORE',
        /no sentinel gave the master's address; .*client certificate/,
        '127.0.0.1',
      );
      const store = new RedisStore({
        url: tlsUrl(),
        prefix: `mtls-${randomUUID()}:`,
        redisOptions: { tls: { ca: certs.ca, cert: certs.cert, key: certs.key } }, // a certificate of the CA
      });
      onTestFinished(() => store.close());
      await store.set('k', 'v');
      expect((await store.get('k'))?.value).toBe('v');
    });

    it('the certificate rotated to an expired one while in use (CONFIG SET, clients dropped): served from memory, nothing spent; mended, one refresh', async () => {
      const prefix = `rot-${randomUUID()}:`;
      await rotatedToExpired(
        () =>
          new RedisStore({
            url: tlsUrl(),
            prefix,
            timeout: '1s',
            redisOptions: { tls: { ca: certs.ca } },
          }),
        () => useCert('expired').then(() => undefined),
        () => redis.cli('CLIENT', 'KILL', 'TYPE', 'normal').then(() => undefined),
        () => useCert('cert').then(() => undefined),
      );
    });
  },
);

describe.skipIf(skipWithout('redis-server', hasRedisServer) || skipWithout('openssl', hasOpenssl))(
  'RedisStore through Redis Sentinel over TLS (sentinels on a TLS port only; masters named by their TLS port)',
  () => {
    let set: PrivateSentinelSet;
    const sentinelStore = (
      redisOptions: RedisOptions,
      more: { name?: string; prefix?: string; timeout?: Duration } = {},
    ): RedisStore =>
      new RedisStore({
        sentinels: set.sentinels,
        name: more.name ?? set.name,
        prefix: more.prefix ?? 'tls-sentinel:',
        timeout: more.timeout ?? limitFor('ERR_STORE'),
        redisOptions,
      });

    beforeAll(async () => {
      set = await startSentinelSet({ tls: serverFiles() });
    }, 60_000);
    afterAll(async () => {
      await set?.close();
    });

    it("`tls` (without ioredis's enableTLSForSentinelMode) and sentinelTLS: a fleet shares a rotating refresh token over TLS, and follows an operator's failover to the new master over TLS, spending once", async () => {
      const prefix = `tls-sentinel-${randomUUID()}:`;
      // `tls` alone: ioredis would connect to the master in the clear (refused by its TLS port); the store asks
      // ioredis for TLS to the master when `tls` is given.
      const options = { tls: { ca: certs.ca }, sentinelTLS: { ca: certs.ca } };
      const { a, b, spent, rejected } = await sharesOnce(() => sentinelStore(options, { prefix, timeout: '2s' }));

      await set.failover(); // the sentinel names the replica (its TLS port) as the master
      await set.master.stop(); // and the old master is gone: only the new one, over TLS, can answer
      let fresh: Token | undefined; // (a refresh while the store reconnects fails before spending)
      await until(async () => (fresh = await a.refresh().catch(() => undefined)) !== undefined);
      expect(spent()).toBe(2);
      expect((await b.refresh()).accessToken).toBe(fresh?.accessToken); // from the new master: nothing spent
      expect(spent()).toBe(2);
      expect(rejected()).toBe(0);
      expect(await set.replica.cli('--scan', '--pattern', `${prefix}*`)).not.toBe('');
    }, 60_000);

    // ioredis says only "All sentinels are unreachable" for each of these (the sentinel's own error is
    // swallowed): the store asks the sentinels again to say why.
    for (const [what, redisOptions, name, words] of [
      [
        'sentinelTLS not given (the sentinel serves TLS only)',
        () => ({ tls: { ca: certs.ca } }),
        undefined,
        /no sentinel gave the master's address; .*\(ECONNRESET\).* no sentinelTLS given/,
      ],
      [
        "the sentinel's CA not given",
        () => ({ tls: { ca: certs.ca }, sentinelTLS: {} }),
        undefined,
        /no sentinel gave the master's address; a sentinel's connection failed \(SELF_SIGNED_CERT_IN_CHAIN\): .*TLS certificate .*untrusted/,
      ],
      [
        'a sentinel certificate of another CA',
        () => ({ tls: { ca: certs.ca }, sentinelTLS: { ca: certs.otherCa } }),
        undefined,
        /no sentinel gave the master's address; a sentinel's connection failed .*TLS certificate .*trusted/,
      ],
      [
        'a master name the sentinels do not monitor',
        () => ({ tls: { ca: certs.ca }, sentinelTLS: { ca: certs.ca } }),
        'no-such-master',
        /no sentinel gave the master's address; a sentinel answered that it monitors no master of that name/,
      ],
      [
        'enableTLSForSentinelMode: false given with tls (kept: the master asked in the clear)',
        () => ({ tls: { ca: certs.ca }, sentinelTLS: { ca: certs.ca }, enableTLSForSentinelMode: false }),
        undefined,
        /\(ECONNRESET\): the connection was reset/,
      ],
      [
        "the master's CA not given (the sentinels trusted)",
        () => ({ tls: {}, sentinelTLS: { ca: certs.ca } }),
        undefined,
        /\(SELF_SIGNED_CERT_IN_CHAIN\): .*TLS certificate .*untrusted/,
      ],
    ] as const) {
      it(`${what}: ERR_STORE in words at once, naming no host or password`, async () => {
        const store = sentinelStore({ ...redisOptions(), password: PASSWORD }, { ...(name !== undefined && { name }) });
        expectSaidInWords(await refused(store), 'ERR_STORE', words, '127.0.0.1');
      });
    }
  },
);

describe.skipIf(skipWithout('redis-server', hasRedisServer) || skipWithout('openssl', hasOpenssl))(
  'RedisStore on a Redis Cluster over TLS (a Cluster client of yours; nodes speak TLS to each other too)',
  () => {
    let cluster: PrivateRedisCluster;
    /** A Cluster client of the test's own on the TLS ports (closed after the test), and a store on it. */
    const clusterStore = (
      redisOptions: RedisOptions,
      more: { prefix?: string; timeout?: Duration } = {},
    ): RedisStore & { client: Cluster } => {
      const client = new Cluster(cluster.tlsNodes, { redisOptions });
      onTestFinished(() => client.disconnect());
      const store = new RedisStore({
        client,
        prefix: more.prefix ?? 'tls-cluster:',
        timeout: more.timeout ?? limitFor('ERR_STORE'),
      });
      return Object.assign(store, { client });
    };

    beforeAll(async () => {
      cluster = await startRedisCluster(3, 0, { tls: serverFiles() });
    }, 60_000);
    afterAll(async () => {
      await cluster?.close();
    });

    it('with the CA given, a fleet shares a rotating refresh token through the TLS connections, and spends it once', async () => {
      const prefix = `tls-cluster-${randomUUID()}:`;
      await sharesOnce(() => clusterStore({ tls: { ca: certs.ca } }, { prefix, timeout: '2s' }));
    });

    // ioredis says only "Failed to refresh slots cache" for each of these (every node's own error is
    // swallowed): the store asks the startup nodes again to say why — on the first call, and on a call made
    // while the client reconnects (where it said only "redis is not connected (reconnecting)").
    for (const [what, redisOptions, words] of [
      [
        'the CA not given',
        () => ({ tls: {} }),
        /no cluster node gave the slot table; a cluster node's connection failed \(SELF_SIGNED_CERT_IN_CHAIN\): .*TLS certificate .*untrusted/,
      ],
      [
        'a certificate of another CA',
        () => ({ tls: { ca: certs.otherCa } }),
        /no cluster node gave the slot table; a cluster node's connection failed .*TLS certificate .*trusted/,
      ],
      [
        'no TLS asked of the TLS ports',
        () => ({}),
        /no cluster node gave the slot table; a cluster node's connection failed \(ECONNRESET\).* no redisOptions.tls given/,
      ],
    ] as const) {
      for (const when of ['on the first call', 'while the client reconnects'] as const) {
        it(`${what}, ${when}: ERR_STORE in words at once, naming no host or password`, async () => {
          const store = clusterStore({ ...redisOptions(), password: PASSWORD });
          if (when === 'while the client reconnects') await until(() => store.client.status === 'reconnecting');
          const err = await refused(store);
          expectSaidInWords(err, 'ERR_STORE', words, '127.0.0.1');
          if (when === 'while the client reconnects') {
            expect((err as Error).message).toMatch(/^redis is not connected \(reconnecting\): /);
          }
        });
      }
    }
  },
);

describe.skipIf(
  skipWithout('the PostgreSQL server binaries', pgBin !== undefined) || skipWithout('openssl', hasOpenssl),
)('PostgresStore over TLS (ssl)', () => {
  let server: PrivatePostgres;
  let admin: pg.Pool;
  const url = (host = '127.0.0.1'): string => `postgres://postgres@${host}:${server.port}/postgres`;
  const withSecrets = (u: string): string => u.replace('postgres@', `${USER}:${PASSWORD}@`);
  /** Has the server read its configuration files again: the postmaster does on SIGHUP, and sessions it starts next see them. */
  const reload = async (): Promise<void> => {
    await admin.query('SELECT pg_reload_conf()');
    await sleep(200);
  };
  /** Points the server at another certificate file, or turns TLS off (new sessions see it). */
  const configure = async (setting: 'ssl' | 'ssl_cert_file', value: string): Promise<void> => {
    await admin.query(`ALTER SYSTEM SET ${setting} = '${value}'`);
    await reload();
  };
  const reset = async (): Promise<void> => {
    await admin.query('ALTER SYSTEM RESET ALL');
    await reload();
  };

  beforeAll(async () => {
    server = await startPrivatePostgres({
      files: {
        'ca.crt': certs.ca,
        'server.crt': certs.cert,
        'server.key': certs.key,
        'expired.crt': certs.expired,
        'other.crt': certs.wrongName,
      },
      settings: [
        'ssl = on',
        "ssl_cert_file = 'server.crt'",
        "ssl_key_file = 'server.key'",
        "ssl_ca_file = 'ca.crt'", // the CA of client certificates, for clientcert=verify-ca
      ],
    });
    // The administrator's own connection is plain (the server takes both).
    admin = new pg.Pool({ connectionString: url(), max: 2 });
    admin.on('error', () => undefined);
  });
  afterAll(async () => {
    await admin?.end();
    await server?.close();
  });

  it('with the CA given, a fleet shares a rotating refresh token through the TLS connection, and spends it once', async () => {
    const table = `tls_${randomUUID().slice(0, 8)}`;
    await sharesOnce(
      () => new PostgresStore({ connectionString: url(), table, poolOptions: { ssl: { ca: certs.ca } } }),
    );
    // The store's sessions are encrypted (pg_stat_ssl), not plain.
    const sessions = await admin.query<{ ssl: boolean }>(
      "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.query ILIKE '%' || $1 || '%'",
      [table],
    );
    expect(sessions.rows.length).toBeGreaterThan(0);
    expect(sessions.rows.every((r) => r.ssl)).toBe(true);
  });

  it('the CA as a file in the URL (sslmode=verify-full&sslrootcert=…), as libpq takes it: works', async () => {
    const store = new PostgresStore({
      connectionString: `${url()}?sslmode=verify-full&sslrootcert=${encodeURIComponent(certs.file('ca'))}`,
      table: `tls_${randomUUID().slice(0, 8)}`,
    });
    onTestFinished(() => store.close());
    await store.set('k', 'v');
    expect((await store.get('k'))?.value).toBe('v');
  });

  for (const [what, change, connection, words] of [
    [
      'the CA not given (verify-full, the system store does not know it)',
      undefined,
      () => ({ connectionString: withSecrets(`${url()}?sslmode=verify-full`) }),
      /TLS certificate .*trusted/,
    ],
    [
      'a certificate of another CA',
      undefined,
      () => ({ connectionString: withSecrets(url()), poolOptions: { ssl: { ca: certs.otherCa } } }),
      /TLS certificate .*trusted/,
    ],
    [
      'an expired certificate',
      'expired.crt',
      () => ({ connectionString: withSecrets(url()), poolOptions: { ssl: { ca: certs.ca } } }),
      /TLS certificate has expired/,
    ],
    [
      'a certificate for another host',
      'other.crt',
      () => ({ connectionString: withSecrets(url()), poolOptions: { ssl: { ca: certs.ca } } }),
      /TLS certificate does not name that host/,
    ],
    [
      'TLS asked of a server without it (ssl=off)',
      'off',
      () => ({ connectionString: withSecrets(`${url()}?sslmode=require`) }),
      /TLS was asked \(ssl, sslmode\) of a server that has it off/,
    ],
  ] as const) {
    it(`${what}: ERR_STORE in words, naming no host, user or password`, async () => {
      if (change === 'off') await configure('ssl', 'off');
      else if (change !== undefined) await configure('ssl_cert_file', change);
      onTestFinished(reset);
      // Every case here is reported by the server: ERR_STORE long before the limit, never its ERR_STORE_TIMEOUT.
      const store = new PostgresStore({ ...connection(), timeout: limitFor('ERR_STORE'), table: 'tls_refused' });
      expectSaidInWords(await refused(store), 'ERR_STORE', words, '127.0.0.1');
    });
  }

  it('a pg_hba.conf entry that requires a client certificate (Cloud SQL-style): without one, ERR_STORE saying what may be required; with one, the store works', async () => {
    const hba = (await admin.query<{ hba_file: string }>('SHOW hba_file')).rows[0]!.hba_file;
    const before = readFileSync(hba, 'utf8');
    // TLS over TCP only with a certificate of the CA; the administrator's plain connection as before.
    writeFileSync(
      hba,
      [
        'local all all trust',
        'hostnossl all postgres 127.0.0.1/32 trust',
        'hostssl all all 127.0.0.1/32 trust clientcert=verify-ca',
        '',
      ].join('\n'),
    );
    await reload();
    onTestFinished(async () => {
      writeFileSync(hba, before);
      await reload();
    });
    const table = `mtls_${randomUUID().slice(0, 8)}`;
    // The same role as the store below, which gives a certificate: only the certificate differs.
    const without = new PostgresStore({
      connectionString: url().replace('postgres@', `postgres:${PASSWORD}@`),
      table,
      timeout: limitFor('ERR_STORE'),
      poolOptions: { ssl: { ca: certs.ca } },
    });
    expectSaidInWords(await refused(without), 'ERR_STORE', /\(28000\): .*client certificate/, '127.0.0.1');
    const store = new PostgresStore({
      connectionString: url(),
      table,
      poolOptions: { ssl: { ca: certs.ca, cert: certs.cert, key: certs.key } }, // a certificate of the CA
    });
    onTestFinished(() => store.close());
    await store.set('k', 'v');
    expect((await store.get('k'))?.value).toBe('v');
  });

  it('the certificate rotated to an expired one while in use (reload, sessions terminated): served from memory, nothing spent; mended, one refresh', async () => {
    const table = `rot_${randomUUID().slice(0, 8)}`;
    await rotatedToExpired(
      () =>
        new PostgresStore({ connectionString: url(), table, timeout: '1s', poolOptions: { ssl: { ca: certs.ca } } }),
      () => configure('ssl_cert_file', 'expired.crt'),
      async () => {
        await admin.query('SELECT pg_terminate_backend(pid) FROM pg_stat_ssl WHERE ssl AND pid <> pg_backend_pid()');
      },
      reset,
    );
  });
});
