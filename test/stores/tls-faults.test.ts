/**
 * RedisStore and PostgresStore over TLS, as managed services require it, on a private Redis (`--tls-port`) and
 * a private PostgreSQL (`ssl=on`) with certificates of a test CA: a fleet shares tokens through the encrypted
 * connection, and the TLS faults an operator meets — a CA the client was not given, a certificate of another
 * CA, an expired one, one that names another host, TLS asked of a plain port (and the reverse) — are `ERR_STORE`
 * said in words, within the store's time limit, naming no host, user or password. A certificate rotated to an
 * expired one while the application runs (connections open, then dropped) leaves a valid token served from
 * memory and a refresh failing with nothing spent; once the certificate is right, one refresh spends once.
 */
import { randomUUID } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from 'vitest';
import type { TokenwardenError } from '../../src/errors.js';
import { RedisStore } from '../../src/redis.js';
import { PostgresStore } from '../../src/stores/postgres.js';
import { type TestAuthorizationServer, startAuthorizationServer } from '../support/authorization-server.js';
import { crashes, failure } from '../support/crashes.js';
import { type ClosableStore, sharedPair } from '../support/login-fleet.js';
import {
  type PrivatePostgres,
  type PrivateRedis,
  freePort,
  hasRedisServer,
  pgBin,
  skipWithout,
  startPrivatePostgres,
  startPrivateRedis,
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

/** A store call that must fail: its error, and how long it took (ms). */
async function refused(store: ClosableStore): Promise<{ err: unknown; ms: number }> {
  const started = Date.now();
  const err = await store.get('k').then(
    () => undefined,
    (e: unknown) => e,
  );
  const ms = Date.now() - started;
  await store.close();
  return { err, ms };
}

/** An `ERR_STORE` (or, for a server that never answers the handshake, `ERR_STORE_TIMEOUT`) in words, naming nobody. */
function expectSaidInWords(err: unknown, words: RegExp, host: string): void {
  const code = /took longer than/.test(words.source) ? 'ERR_STORE_TIMEOUT' : 'ERR_STORE';
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
  const seen = crashes();
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
  expect(seen).toEqual([]);
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
      const { a, b, spent, rejected } = await sharedPair(
        as,
        () => new RedisStore({ url: tlsUrl(), prefix: 'tls:', redisOptions: { tls: { ca: certs.ca } } }),
      );
      const fresh = await b.refresh();
      expect((await a.refresh()).accessToken).toBe(fresh.accessToken); // from the store: nothing spent
      expect(spent()).toBe(1);
      expect(rejected()).toBe(0);
      // The entry went through TLS to this server (read back on its plain port).
      expect(await redis.cli('--scan', '--pattern', 'tls:*')).not.toBe('');
    });

    const trusting = (): { tls: { ca: string } } => ({ tls: { ca: certs.ca } });
    for (const [what, cert, url, redisOptions, words] of [
      [
        'the CA not given (the system store does not know it)',
        'cert',
        () => tlsUrl(),
        () => ({}),
        /TLS certificate .*trusted/,
      ],
      [
        'a certificate of another CA',
        'cert',
        () => tlsUrl(),
        () => ({ tls: { ca: certs.otherCa } }),
        /TLS certificate .*trusted/,
      ],
      ['an expired certificate', 'expired', () => tlsUrl(), trusting, /TLS certificate has expired/],
      [
        'a certificate for another host',
        'wrongName',
        () => tlsUrl(),
        trusting,
        /TLS certificate does not name that host/,
      ],
      [
        'TLS asked of the plain port',
        'cert',
        () => tlsUrl('127.0.0.1', redis.port),
        trusting,
        / took longer than 1000 ms: .*never answered the TLS handshake/,
      ],
      [
        'no TLS asked of the TLS port',
        'cert',
        () => `redis://127.0.0.1:${tlsPort}`,
        () => ({}),
        /connection was (reset|closed)/,
      ],
    ] as const) {
      it(`${what}: a coded error in words within the time limit, naming no host, user or password`, async () => {
        await useCert(cert);
        onTestFinished(() => useCert('cert').then(() => undefined));
        const seen = crashes();
        const store = new RedisStore({
          url: withSecrets(url()),
          timeout: '1s',
          redisOptions: redisOptions(),
        });
        const { err, ms } = await refused(store);
        expectSaidInWords(err, words, '127.0.0.1');
        expect(ms).toBeLessThan(3000);
        expect((err as TokenwardenError).cause).toBeDefined();
        expect(seen).toEqual([]);
      });
    }

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

describe.skipIf(
  skipWithout('the PostgreSQL server binaries', pgBin !== undefined) || skipWithout('openssl', hasOpenssl),
)('PostgresStore over TLS (ssl)', () => {
  let server: PrivatePostgres;
  let admin: pg.Pool;
  /** The cluster's directory, which holds the certificate files. */
  let dir: string;
  const url = (host = '127.0.0.1'): string => `postgres://postgres@${host}:${server.port}/postgres`;
  const withSecrets = (u: string): string => u.replace('postgres@', `${USER}:${PASSWORD}@`);
  /** Points the server at another certificate file, or turns TLS off, and reloads (new sessions see it). */
  const configure = async (setting: 'ssl' | 'ssl_cert_file', value: string): Promise<void> => {
    await admin.query(`ALTER SYSTEM SET ${setting} = '${value}'`);
    await admin.query('SELECT pg_reload_conf()');
    await new Promise((r) => setTimeout(r, 200)); // the postmaster reads it, then forks sessions with it
  };
  const reset = async (): Promise<void> => {
    await admin.query('ALTER SYSTEM RESET ALL');
    await admin.query('SELECT pg_reload_conf()');
    await new Promise((r) => setTimeout(r, 200));
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
      settings: (where) => {
        dir = where;
        return [
          'ssl = on',
          `ssl_cert_file = '${where}/server.crt'`,
          `ssl_key_file = '${where}/server.key'`,
          `ssl_ca_file = '${where}/ca.crt'`, // the CA of client certificates, for clientcert=verify-ca
        ];
      },
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
    const { a, b, spent, rejected } = await sharedPair(
      as,
      () => new PostgresStore({ connectionString: url(), table, poolOptions: { ssl: { ca: certs.ca } } }),
    );
    const fresh = await b.refresh();
    expect((await a.refresh()).accessToken).toBe(fresh.accessToken); // from the store: nothing spent
    expect(spent()).toBe(1);
    expect(rejected()).toBe(0);
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
    it(`${what}: a coded error in words within the time limit, naming no host, user or password`, async () => {
      if (change === 'off') await configure('ssl', 'off');
      else if (change !== undefined) await configure('ssl_cert_file', `${dir}/${change}`);
      onTestFinished(reset);
      const seen = crashes();
      const store = new PostgresStore({ ...connection(), timeout: '1s', table: 'tls_refused' });
      const { err, ms } = await refused(store);
      expectSaidInWords(err, words, '127.0.0.1');
      expect(ms).toBeLessThan(3000);
      expect(seen).toEqual([]);
    });
  }

  it('a pg_hba.conf entry that requires a client certificate (Cloud SQL-style): without one, ERR_STORE saying what may be required; with one, the store works', async () => {
    const hba = (await admin.query<{ hba_file: string }>('SHOW hba_file')).rows[0]!.hba_file;
    const before = readFileSync(hba, 'utf8');
    // Over TCP from here: TLS with a certificate of the CA, or nothing (the administrator's socket is untouched).
    writeFileSync(hba, 'local all all trust\nhostssl all all 127.0.0.1/32 trust clientcert=verify-ca\n');
    await admin.query('SELECT pg_reload_conf()');
    onTestFinished(async () => {
      writeFileSync(hba, before);
      await admin.query('SELECT pg_reload_conf()');
    });
    await new Promise((r) => setTimeout(r, 200));
    const table = `mtls_${randomUUID().slice(0, 8)}`;
    const without = new PostgresStore({
      connectionString: withSecrets(url()),
      table,
      timeout: '1s',
      poolOptions: { ssl: { ca: certs.ca } },
    });
    const { err } = await refused(without);
    expectSaidInWords(err, /\(28000\): .*client certificate/, '127.0.0.1');
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
      () => configure('ssl_cert_file', `${dir}/expired.crt`),
      async () => {
        await admin.query('SELECT pg_terminate_backend(pid) FROM pg_stat_ssl WHERE ssl AND pid <> pg_backend_pid()');
      },
      reset,
    );
  });
});
