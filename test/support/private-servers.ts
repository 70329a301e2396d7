/**
 * Private Redis, Redis Sentinel, PostgreSQL and PgBouncer servers for fault tests: each started on a free
 * loopback port in a temporary directory, stopped by PID, never the shared servers of the machine. Faults
 * are real: `stop()` kills the process, `freeze()` sends SIGSTOP, `restart({ empty: true })` starts it again
 * without its data.
 */
import { execFile, spawnSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import {
  appendFileSync,
  chownSync,
  existsSync,
  mkdirSync,
  readFileSync,
  readdirSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { connect, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

/** A free TCP port on 127.0.0.1. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}

/** Whether `port` can be bound on loopback now. */
function bindable(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = createServer();
    server.once('error', () => resolve(false));
    server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)));
  });
}

/**
 * A port for a Redis Cluster node: it also listens on port + 10000 (the cluster bus). Both are taken below the
 * kernel's ephemeral range (32768 and up on Linux): a port from `freePort()` could have its bus port held by one of
 * the many outgoing connections of a fleet test, and the node never started ("nothing listens on …", CI).
 */
export async function freeClusterPort(): Promise<number> {
  for (let i = 0; i < 200; i++) {
    const port = 20_000 + Math.floor(Math.random() * 2_700);
    if ((await bindable(port)) && (await bindable(port + 10_000))) return port;
  }
  throw new Error('no free pair of ports for a Redis Cluster node');
}

/** Resolves once something accepts TCP connections on `port` (or rejects after `ms`). */
export async function waitForPort(port: number, ms = 15_000): Promise<void> {
  const deadline = Date.now() + ms;
  for (;;) {
    const open = await new Promise<boolean>((resolve) => {
      const socket = connect({ host: '127.0.0.1', port });
      socket.once('connect', () => {
        socket.destroy();
        resolve(true);
      });
      socket.once('error', () => resolve(false));
    });
    if (open) return;
    if (Date.now() > deadline) throw new Error(`nothing listens on ${port} after ${ms} ms`);
    await sleep(25);
  }
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Polls `condition` every 10 ms until it holds (real time: for work real servers or the background do); throws after `ms`. */
export async function until(condition: () => boolean | Promise<boolean>, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`not within ${ms} ms: ${condition.toString().slice(0, 200)}`);
    await sleep(10);
  }
}

/** Stops `server` (its process killed) for `ms`, then starts it again (`options`: e.g. `{ empty: true }`). */
export async function stoppedFor<O>(
  server: { stop(): Promise<void>; start(options?: O): Promise<void> },
  ms: number,
  options?: O,
): Promise<void> {
  await server.stop();
  await sleep(ms);
  await server.start(options);
}

/** Freezes `server` (SIGSTOP: connections stay open, nothing answers) for `ms`, then thaws it. */
export async function frozenFor(server: { freeze(): Promise<void>; thaw(): void }, ms: number): Promise<void> {
  await server.freeze();
  try {
    await sleep(ms);
  } finally {
    server.thaw();
  }
}

/**
 * Resolves once every thread of `pid` is stopped (`T` in /proc/PID/task/TID/stat), after a SIGSTOP. A thread
 * in uninterruptible sleep (`D`: an fsync on a loaded disk) stops only when its system call returns, and
 * until then the process can still answer: a test that asserts "nothing answers" waits for this first.
 * Gives up after `ms` (not on Linux: at once).
 */
export async function untilStopped(pid: number, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  const states = (): string[] => {
    try {
      return readdirSync(`/proc/${pid}/task`).map((tid) => {
        const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
        return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
      });
    } catch {
      return []; // gone, or no /proc
    }
  };
  while (Date.now() < deadline) {
    // Stopped, or gone (a zombie a stopped parent has not reaped yet is gone too).
    if (states().every((state) => 'TtZX'.includes(state))) return;
    await sleep(5);
  }
  throw new Error(`process ${pid} did not stop within ${ms} ms of SIGSTOP`);
}

function readPid(file: string): number | undefined {
  try {
    // The first line (a postmaster.pid goes on with the data directory, the port, …).
    const pid = Number(readFileSync(file, 'utf8').split('\n')[0]?.trim());
    return Number.isInteger(pid) && pid > 0 ? pid : undefined;
  } catch {
    return undefined;
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  // A daemon killed here is reparented to init; until init reaps it, it is a zombie: dead all the same.
  try {
    return !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return true;
  }
}

/** The processes whose parent is `pid` (a postmaster's backends and helpers). */
function childrenOf(pid: number): number[] {
  const children: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      // The command may hold spaces and parentheses: the parent PID comes after the last ')'.
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      if (Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]) === pid) children.push(Number(entry));
    } catch {
      // gone
    }
  }
  return children;
}

async function killAndWait(pid: number | undefined, signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
  if (pid === undefined || !alive(pid)) return;
  try {
    process.kill(pid, 'SIGCONT'); // a frozen process must be able to die
    process.kill(pid, signal);
  } catch {
    return;
  }
  const deadline = Date.now() + 10_000;
  while (alive(pid) && Date.now() < deadline) await sleep(20);
}

/** Processes started here, killed when the test process exits even if a test forgot. */
const started = new Set<() => number | undefined>();
process.once('exit', () => {
  for (const pid of started) {
    const p = pid();
    if (p !== undefined && alive(p)) {
      try {
        process.kill(p, 'SIGCONT');
        process.kill(p, 'SIGKILL');
      } catch {
        // gone
      }
    }
  }
});

export const hasRedisServer = spawnSync('redis-server', ['--version']).status === 0;

/**
 * Whether a fault suite needing `tool` should skip: only off CI (with one line saying why). In CI a missing
 * tool is a failure, as a missing service is (`.ci/run` installs them).
 */
export function skipWithout(tool: string, available: boolean): boolean {
  if (available) return false;
  if (process.env.CI) return false; // run, and fail loudly
  console.warn(`skipping the fault tests that need ${tool}: it is not installed (see .ci/run)`);
  return true;
}

export interface PrivateRedis {
  readonly port: number;
  readonly url: string;
  readonly pid: number | undefined;
  /** Kills the server (SIGKILL: no chance to save). */
  stop(): Promise<void>;
  /** Starts it again on the same port; `empty: true` drops what it held (its data files are removed). */
  start(options?: { empty?: boolean }): Promise<void>;
  /** SIGSTOP: the server keeps its connections but answers nothing (resolves once it is stopped: {@link untilStopped}). */
  freeze(): Promise<void>;
  /** SIGCONT. */
  thaw(): void;
  /** Runs a redis-cli command against it. */
  cli(...args: string[]): Promise<string>;
  close(): Promise<void>;
}

export interface PrivateRedisOptions {
  /** Keep data across `stop()`/`start()` (append-only file, fsync on every write). Default false. */
  persist?: boolean;
  /** Extra `redis-server` arguments (`--replicaof`, …). */
  args?: string[];
  port?: number;
}

/** A private `redis-server --daemonize yes --pidfile F` on a free loopback port. */
export async function startPrivateRedis(options: PrivateRedisOptions = {}): Promise<PrivateRedis> {
  const port = options.port ?? (await freePort());
  const dir = join(tmpdir(), `tw-redis-${randomUUID()}`);
  mkdirSync(dir, { recursive: true });
  const pidfile = join(dir, 'redis.pid');
  let pid: number | undefined;
  started.add(() => pid);
  const start = async (startOptions: { empty?: boolean } = {}): Promise<void> => {
    if (startOptions.empty) {
      for (const name of readdirSync(dir)) if (name !== 'redis.pid') rmSync(join(dir, name), { recursive: true });
    }
    rmSync(pidfile, { force: true });
    const persistence = options.persist
      ? ['--appendonly', 'yes', '--appendfsync', 'always', '--save', '']
      : ['--appendonly', 'no', '--save', ''];
    await run('redis-server', [
      '--port',
      String(port),
      '--bind',
      '127.0.0.1',
      '--daemonize',
      'yes',
      '--pidfile',
      pidfile,
      '--dir',
      dir,
      '--logfile',
      join(dir, 'redis.log'),
      ...persistence,
      ...(options.args ?? []),
    ]);
    await waitForPort(port);
    const deadline = Date.now() + 5000;
    while ((pid = readPid(pidfile)) === undefined && Date.now() < deadline) await sleep(10);
    // Loading an append-only file: wait until it answers PING with PONG.
    while (Date.now() < deadline) {
      const pong = await run('redis-cli', ['-p', String(port), 'ping']).then(
        (r) => r.stdout.trim(),
        () => '',
      );
      if (pong === 'PONG') return;
      await sleep(25);
    }
  };
  await start();
  return {
    port,
    url: `redis://127.0.0.1:${port}`,
    get pid() {
      return pid;
    },
    stop: () => killAndWait(pid),
    start,
    freeze: async () => {
      if (pid === undefined) return;
      process.kill(pid, 'SIGSTOP');
      await untilStopped(pid);
    },
    thaw: () => pid !== undefined && process.kill(pid, 'SIGCONT'),
    cli: async (...args) => (await run('redis-cli', ['-p', String(port), ...args])).stdout.trim(),
    close: async () => {
      await killAndWait(pid);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

export interface PrivateSentinelSet {
  readonly name: string;
  readonly master: PrivateRedis;
  readonly replica: PrivateRedis;
  readonly sentinels: { host: string; port: number }[];
  /** The port of the current master, as the sentinel says. */
  masterPort(): Promise<number>;
  /** `SENTINEL FAILOVER`: an operator's failover, the master alive; resolves once the sentinel names the replica. */
  failover(): Promise<void>;
  close(): Promise<void>;
}

/**
 * TLS for a {@link startSentinelSet} or {@link startRedisCluster}: the files of a server certificate, its key and
 * the CA that signed it.
 */
export interface ServerTls {
  cert: string;
  key: string;
  ca: string;
}

/**
 * A master, a replica and one sentinel (quorum 1, `down-after-milliseconds` 500): killing the master makes
 * the sentinel promote the replica within a couple of seconds.
 *
 * With `tls`, the set speaks TLS as a managed one does: the sentinel listens on a TLS port only, the master and
 * the replica each on a TLS port (which the sentinel names, `tls-replication yes`) beside a plain one the test
 * administers them through; replication and the sentinel's own connections are TLS too.
 */
export async function startSentinelSet(options: { tls?: ServerTls } = {}): Promise<PrivateSentinelSet> {
  const name = 'twmaster';
  const tls = options.tls;
  const tlsFiles = tlsArgs(tls);
  /** A data server: with TLS, its TLS port (the one replication and the sentinel use) beside its plain one. */
  const dataServer = async (args: string[]): Promise<{ server: PrivateRedis; port: number }> => {
    const tlsPort = tls ? await freePort() : undefined;
    const server = await startPrivateRedis({
      args: [
        ...(tlsPort !== undefined ? ['--tls-port', String(tlsPort), '--tls-replication', 'yes', ...tlsFiles] : []),
        ...args,
      ],
    });
    return { server, port: tlsPort ?? server.port };
  };
  const { server: master, port: masterAt } = await dataServer([]);
  const { server: replica, port: replicaAt } = await dataServer(['--replicaof', '127.0.0.1', String(masterAt)]);
  const port = await freePort();
  const dir = join(tmpdir(), `tw-sentinel-${randomUUID()}`);
  mkdirSync(dir, { recursive: true });
  const conf = join(dir, 'sentinel.conf');
  writeFileSync(
    conf,
    [
      ...(tls
        ? [
            'port 0',
            `tls-port ${port}`,
            `tls-cert-file ${tls.cert}`,
            `tls-key-file ${tls.key}`,
            `tls-ca-cert-file ${tls.ca}`,
            'tls-auth-clients no',
            'tls-replication yes',
          ]
        : [`port ${port}`]),
      'bind 127.0.0.1',
      `dir ${dir}`,
      `sentinel monitor ${name} 127.0.0.1 ${masterAt} 1`,
      `sentinel down-after-milliseconds ${name} 500`,
      `sentinel failover-timeout ${name} 5000`,
      `sentinel parallel-syncs ${name} 1`,
      '',
    ].join('\n'),
  );
  const pidfile = join(dir, 'sentinel.pid');
  await run('redis-server', [
    conf,
    '--sentinel',
    '--daemonize',
    'yes',
    '--pidfile',
    pidfile,
    '--logfile',
    join(dir, 'sentinel.log'),
  ]);
  await waitForPort(port);
  let pid: number | undefined;
  const deadline = Date.now() + 5000;
  while ((pid = readPid(pidfile)) === undefined && Date.now() < deadline) await sleep(10);
  started.add(() => pid);
  // Wait until the replica is in sync, so that a failover has data to promote.
  while (Date.now() < deadline + 10_000) {
    const info = await replica.cli('info', 'replication');
    if (info.includes('master_link_status:up')) break;
    await sleep(50);
  }
  const sentinelCli = (...args: string[]): Promise<{ stdout: string }> =>
    run('redis-cli', [...(tls ? ['--tls', '--cacert', tls.ca] : []), '-p', String(port), ...args]);
  const masterPort = async (): Promise<number> => {
    const out = await sentinelCli('sentinel', 'get-master-addr-by-name', name);
    return Number(out.stdout.trim().split('\n')[1]);
  };
  return {
    name,
    master,
    replica,
    sentinels: [{ host: '127.0.0.1', port }],
    masterPort,
    failover: async () => {
      await sentinelCli('sentinel', 'failover', name);
      const until = Date.now() + 10_000;
      while ((await masterPort()) !== replicaAt) {
        if (Date.now() > until) throw new Error('the sentinel did not fail over');
        await sleep(50);
      }
    },
    close: async () => {
      await killAndWait(pid);
      await master.close();
      await replica.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** The `redis-server` arguments of a server's certificate (clients not asked for one), or none. */
function tlsArgs(tls: ServerTls | undefined): string[] {
  if (tls === undefined) return [];
  return [
    '--tls-cert-file',
    tls.cert,
    '--tls-key-file',
    tls.key,
    '--tls-ca-cert-file',
    tls.ca,
    '--tls-auth-clients',
    'no',
  ];
}

/** The PostgreSQL server binaries (initdb, pg_ctl, postgres), if installed. */
export const pgBin: string | undefined = (() => {
  const root = '/usr/lib/postgresql';
  if (!existsSync(root)) return undefined;
  const versions = readdirSync(root).sort((a, b) => Number(b) - Number(a));
  for (const v of versions) if (existsSync(join(root, v, 'bin', 'initdb'))) return join(root, v, 'bin');
  return undefined;
})();

/** Sends `name` to `pid`, if it still runs. */
function signal(pid: number, name: NodeJS.Signals): void {
  try {
    process.kill(pid, name);
  } catch {
    // gone already
  }
}

/** Runs a command as the `postgres` user when we are root (initdb and postgres refuse to run as root). */
async function asPostgres(command: string, args: string[]): Promise<{ stdout: string }> {
  if (process.getuid?.() === 0) return run('runuser', ['-u', 'postgres', '--', command, ...args]);
  return run(command, args);
}

function postgresUid(): { uid: number; gid: number } | undefined {
  if (process.getuid?.() !== 0) return undefined;
  const out = spawnSync('id', ['-u', 'postgres']).stdout.toString().trim();
  const gid = spawnSync('id', ['-g', 'postgres']).stdout.toString().trim();
  return out === '' ? undefined : { uid: Number(out), gid: Number(gid) };
}

export interface PrivatePostgres {
  readonly port: number;
  readonly url: string;
  stop(): Promise<void>;
  start(): Promise<void>;
  /** SIGSTOP to the postmaster and every backend and worker (a paused VM): connections stay open, nothing answers. */
  freeze(): Promise<void>;
  /** SIGCONT to what `freeze()` stopped. */
  thaw(): void;
  close(): Promise<void>;
}

/** A new directory, mode 0700, owned by the postgres user (when there is one): for data and sockets. */
function postgresDir(path: string): string {
  mkdirSync(path, { recursive: true, mode: 0o700 });
  const owner = postgresUid();
  if (owner) chownSync(path, owner.uid, owner.gid);
  return path;
}

export interface PrivatePostgresOptions {
  /**
   * Files written into the data directory before the server starts (owned by the server's user, mode 0600, as
   * PostgreSQL wants a key file), by name: `{ 'server.key': pem }`. Settings name them by that name alone
   * (`ssl_key_file = 'server.key'`): PostgreSQL reads relative paths from the data directory.
   */
  files?: Record<string, string>;
  /**
   * Extra `name = value` settings (`ssl = on`, …), written to `postgresql.conf`: `ALTER SYSTEM` can change them,
   * and `ALTER SYSTEM RESET` bring them back.
   */
  settings?: string[];
}

/** A private PostgreSQL cluster (`initdb` into a temporary directory, trust auth) on a free loopback port. */
export async function startPrivatePostgres(extra: PrivatePostgresOptions = {}): Promise<PrivatePostgres> {
  if (pgBin === undefined) throw new Error('PostgreSQL server binaries are not installed');
  const port = await freePort();
  const dir = postgresDir(join(tmpdir(), `tw-pg-${randomUUID()}`));
  const data = join(dir, 'data');
  await asPostgres(join(pgBin, 'initdb'), ['-D', data, '-U', 'postgres', '-A', 'trust', '--no-sync', '-E', 'UTF8']);
  const owner = postgresUid();
  for (const [name, content] of Object.entries(extra.files ?? {})) {
    writeFileSync(join(data, name), content, { mode: 0o600 });
    if (owner) chownSync(join(data, name), owner.uid, owner.gid);
  }
  const log = join(dir, 'pg.log');
  const settings = extra.settings ?? [];
  if (settings.length > 0) appendFileSync(join(data, 'postgresql.conf'), `\n${settings.join('\n')}\n`);
  const options = `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=100`;
  let pid: number | undefined;
  let frozen: number[] = [];
  started.add(() => pid);
  const start = async (): Promise<void> => {
    await asPostgres(join(pgBin as string, 'pg_ctl'), ['-D', data, '-l', log, '-o', options, '-w', 'start']);
    pid = readPid(join(data, 'postmaster.pid'));
    await waitForPort(port);
  };
  const stop = async (): Promise<void> => {
    // Immediate shutdown: what an operator's restart or a crash looks like to clients.
    await asPostgres(join(pgBin as string, 'pg_ctl'), ['-D', data, '-m', 'immediate', '-w', 'stop']).catch(() =>
      killAndWait(pid),
    );
  };
  await start();
  return {
    port,
    url: `postgres://postgres@127.0.0.1:${port}/postgres`,
    start,
    stop,
    // The postmaster first (it starts no backend meanwhile), then every process it started: a paused VM.
    freeze: async () => {
      if (pid === undefined) return;
      process.kill(pid, 'SIGSTOP');
      frozen = [pid, ...childrenOf(pid)];
      for (const child of frozen.slice(1)) signal(child, 'SIGSTOP');
      for (const p of frozen) await untilStopped(p);
    },
    thaw: () => {
      for (const p of frozen) signal(p, 'SIGCONT');
      frozen = [];
    },
    close: async () => {
      for (const p of frozen) signal(p, 'SIGCONT');
      if (pid !== undefined && alive(pid)) process.kill(pid, 'SIGCONT');
      await stop();
      await killAndWait(pid);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

export interface PrivatePostgresPair {
  /** The address clients use: the primary's port, and after {@link PrivatePostgresPair.failover} the promoted replica's. */
  readonly port: number;
  readonly url: string;
  /** Where the replica answers before the failover (hot standby, read-only). */
  readonly replicaUrl: string;
  /**
   * Cuts the replication link (the replica's `primary_conninfo` emptied and reloaded): from now on the replica
   * receives nothing, as an asynchronous replica that lags when the primary dies.
   */
  cutReplication(): Promise<void>;
  /**
   * The primary killed (SIGKILL to the postmaster: no shutdown checkpoint, no last WAL sent), the replica
   * promoted (`pg_ctl promote`), then `beforeMove` (e.g. read what the promoted replica holds while no client
   * reaches it), then the promoted replica restarted on the primary's port: the address clients use moves to it.
   */
  failover(beforeMove?: (promotedUrl: string) => Promise<void>): Promise<void>;
  close(): Promise<void>;
}

/**
 * A private PostgreSQL primary and an asynchronous streaming replica (`initdb` as the `postgres` user into a
 * temporary directory, `wal_level=replica`, `pg_basebackup -R`), on free loopback ports.
 *
 * The failover moves the clients' address the simplest way that keeps what production does to them: the promoted
 * replica is restarted on the old primary's port, as a virtual IP or a DNS name moves to the new primary. Every
 * connection to the old primary breaks and the clients reconnect to the same address, now the promoted replica
 * (a proxy such as PgBouncer repointed with `RELOAD` would keep the client connections instead).
 */
export async function startPostgresPair(): Promise<PrivatePostgresPair> {
  if (pgBin === undefined) throw new Error('PostgreSQL server binaries are not installed');
  const bin = (tool: string) => join(pgBin as string, tool);
  const port = await freePort();
  const replicaPort = await freePort();
  const dir = postgresDir(join(tmpdir(), `tw-pgpair-${randomUUID()}`));
  const primaryData = join(dir, 'primary');
  const replicaData = join(dir, 'replica');
  // A socket directory per server: a killed postmaster leaves its socket lock file behind (and, not reaped by
  // an init that does not reap, looks alive to the server that takes its port over).
  const sockets = [postgresDir(join(dir, 's0')), postgresDir(join(dir, 's1'))];
  const options = (p: number, slot: 0 | 1) =>
    `-p ${p} -k ${sockets[slot]} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=100 ` +
    '-c wal_level=replica -c max_wal_senders=5 -c hot_standby=on';
  const pids: (number | undefined)[] = [undefined, undefined];
  started.add(() => pids[0]);
  started.add(() => pids[1]);
  const start = async (data: string, p: number, slot: 0 | 1): Promise<void> => {
    const log = join(dir, `pg-${slot}.log`);
    await asPostgres(bin('pg_ctl'), ['-D', data, '-l', log, '-o', options(p, slot), '-w', 'start']).catch(
      (err: unknown) => {
        const tail = existsSync(log) ? readFileSync(log, 'utf8').split('\n').slice(-6).join('\n') : '';
        throw new Error(`pg_ctl start on ${p} failed: ${tail}`, { cause: err });
      },
    );
    pids[slot] = readPid(join(data, 'postmaster.pid'));
    await waitForPort(p);
  };
  const stop = async (data: string, slot: 0 | 1, mode: 'immediate' | 'fast'): Promise<void> => {
    await asPostgres(bin('pg_ctl'), ['-D', data, '-m', mode, '-w', 'stop']).catch(() => killAndWait(pids[slot]));
  };
  const psql = (p: number, sql: string) =>
    asPostgres('psql', ['-h', '127.0.0.1', '-p', String(p), '-U', 'postgres', '-Atqc', sql]).then((r) =>
      r.stdout.trim(),
    );
  try {
    await asPostgres(bin('initdb'), ['-D', primaryData, '-U', 'postgres', '-A', 'trust', '--no-sync', '-E', 'UTF8']);
    await start(primaryData, port, 0);
    // initdb's pg_hba.conf lets 127.0.0.1 replicate with trust.
    await asPostgres(bin('pg_basebackup'), [
      '-h',
      '127.0.0.1',
      '-p',
      String(port),
      '-U',
      'postgres',
      '-D',
      replicaData,
      '-R',
      '-X',
      'stream',
      '--no-sync',
    ]);
    await start(replicaData, replicaPort, 1);
    const deadline = Date.now() + 15_000;
    while ((await psql(port, "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")) !== '1') {
      if (Date.now() > deadline) throw new Error('the replica did not start streaming');
      await sleep(50);
    }
  } catch (err) {
    await stop(replicaData, 1, 'immediate');
    await stop(primaryData, 0, 'immediate');
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
  return {
    port,
    url: `postgres://postgres@127.0.0.1:${port}/postgres`,
    replicaUrl: `postgres://postgres@127.0.0.1:${replicaPort}/postgres`,
    cutReplication: async () => {
      await psql(replicaPort, "ALTER SYSTEM SET primary_conninfo = ''");
      await psql(replicaPort, 'SELECT pg_reload_conf()');
      const deadline = Date.now() + 10_000;
      while ((await psql(port, 'SELECT count(*) FROM pg_stat_replication')) !== '0') {
        if (Date.now() > deadline) throw new Error('the replica still streams');
        await sleep(20);
      }
    },
    failover: async (beforeMove) => {
      // SIGKILL to the postmaster and every process of it, as a crashed host.
      const primary = pids[0];
      const children = primary === undefined ? [] : childrenOf(primary);
      await Promise.all([primary, ...children].map((pid) => killAndWait(pid)));
      pids[0] = undefined; // dead: close() and the exit hook must not signal a process that reuses the pid
      await asPostgres(bin('pg_ctl'), ['-D', replicaData, '-w', 'promote']);
      await beforeMove?.(`postgres://postgres@127.0.0.1:${replicaPort}/postgres`);
      await stop(replicaData, 1, 'fast');
      await start(replicaData, port, 1);
    },
    close: async () => {
      for (const slot of [0, 1] as const) {
        const pid = pids[slot];
        if (pid !== undefined && alive(pid)) process.kill(pid, 'SIGCONT');
      }
      await stop(replicaData, 1, 'immediate');
      await stop(primaryData, 0, 'immediate');
      await killAndWait(pids[0]);
      await killAndWait(pids[1]);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

export const hasPgBouncer = spawnSync('pgbouncer', ['--version']).status === 0 || existsSync('/usr/sbin/pgbouncer');

export interface PrivatePgBouncer {
  readonly port: number;
  readonly url: string;
  /** Kills PgBouncer (SIGKILL). */
  stop(): Promise<void>;
  /** Starts it again on the same port. */
  start(): Promise<void>;
  /**
   * Points it at another server, as a failover runbook does (the config rewritten, then `SIGHUP`: PgBouncer
   * reloads; its clients stay connected, and their next transactions reach the new server).
   */
  repoint(postgresPort: number): Promise<void>;
  close(): Promise<void>;
}

/** PgBouncer in front of `postgresPort`, with its default settings but for `pool_mode`. */
export async function startPgBouncer(postgresPort: number, mode: 'transaction' | 'session'): Promise<PrivatePgBouncer> {
  const port = await freePort();
  const dir = join(tmpdir(), `tw-pgb-${randomUUID()}`);
  mkdirSync(dir, { recursive: true });
  const owner = postgresUid();
  const ini = join(dir, 'pgbouncer.ini');
  const users = join(dir, 'users.txt');
  const pidfile = join(dir, 'pgbouncer.pid');
  writeFileSync(users, '"postgres" ""\n');
  const config = (target: number): string =>
    [
      '[databases]',
      `postgres = host=127.0.0.1 port=${target} dbname=postgres`,
      '[pgbouncer]',
      'listen_addr = 127.0.0.1',
      `listen_port = ${port}`,
      `unix_socket_dir = ${dir}`,
      'auth_type = trust',
      `auth_file = ${users}`,
      `pool_mode = ${mode}`,
      `logfile = ${join(dir, 'pgbouncer.log')}`,
      `pidfile = ${pidfile}`,
      '',
    ].join('\n');
  writeFileSync(ini, config(postgresPort));
  if (owner) chownSync(dir, owner.uid, owner.gid);
  for (const f of [ini, users]) if (owner) chownSync(f, owner.uid, owner.gid);
  const binary = existsSync('/usr/sbin/pgbouncer') ? '/usr/sbin/pgbouncer' : 'pgbouncer';
  let pid: number | undefined;
  started.add(() => pid);
  const start = async (): Promise<void> => {
    rmSync(pidfile, { force: true });
    await asPostgres(binary, ['-d', ini]);
    await waitForPort(port);
    const deadline = Date.now() + 5000;
    while ((pid = readPid(pidfile)) === undefined && Date.now() < deadline) await sleep(10);
  };
  await start();
  return {
    port,
    url: `postgres://postgres@127.0.0.1:${port}/postgres`,
    stop: () => killAndWait(pid),
    start,
    repoint: async (target) => {
      writeFileSync(ini, config(target));
      if (pid !== undefined) process.kill(pid, 'SIGHUP');
      await sleep(200); // the reload is asynchronous
    },
    close: async () => {
      await killAndWait(pid, 'SIGTERM');
      await killAndWait(pid);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

export interface PrivateRedisCluster {
  readonly nodes: { host: string; port: number }[];
  /** With `tls`: the nodes' TLS ports (a TLS client is told TLS ports in CLUSTER SLOTS; a plain one, plain ones). */
  readonly tlsNodes: { host: string; port: number }[];
  /** Every server, masters first (a restart keeps a node's cluster config: its slots, without its data). */
  readonly servers: readonly PrivateRedis[];
  /** The server that is master of `slot` now, and its replicas (as CLUSTER SLOTS says). */
  slotOwners(slot: number): Promise<{ master: PrivateRedis; replicas: PrivateRedis[] }>;
  close(): Promise<void>;
}

/**
 * A Redis Cluster of `masters` private nodes and `replicas` replicas of each (a replica is promoted
 * `cluster-node-timeout` 2 s after its master fails), every slot assigned, state ok, replicas in sync.
 *
 * With `tls`, each node also listens on a TLS port, and the nodes speak TLS to each other (`tls-cluster yes`, the
 * bus port kept at the plain port + 10000, where `redis-cli --cluster create` looks for it).
 */
export async function startRedisCluster(
  masters = 3,
  replicas = 0,
  options: { tls?: ServerTls } = {},
): Promise<PrivateRedisCluster> {
  const servers: PrivateRedis[] = [];
  const tlsPorts: number[] = [];
  try {
    for (let i = 0; i < masters * (1 + replicas); i++) {
      const port = await freeClusterPort();
      const tlsPort = options.tls === undefined ? undefined : await freePort();
      if (tlsPort !== undefined) tlsPorts.push(tlsPort);
      servers.push(
        await startPrivateRedis({
          port,
          args: [
            ...['--cluster-enabled', 'yes', '--cluster-config-file', 'nodes.conf', '--cluster-node-timeout', '2000'],
            ...(tlsPort === undefined
              ? []
              : ['--cluster-port', String(port + 10000), '--tls-port', String(tlsPort), '--tls-cluster', 'yes']),
            ...tlsArgs(options.tls),
          ],
        }),
      );
    }
    await run('redis-cli', [
      '--cluster',
      'create',
      ...servers.map((s) => `127.0.0.1:${s.port}`),
      '--cluster-replicas',
      String(replicas),
      '--cluster-yes',
    ]);
    const deadline = Date.now() + 20_000;
    for (const server of servers) {
      for (;;) {
        // State ok, every replica known to this node as one, and in sync if this node is one.
        const info = await server.cli('cluster', 'info');
        const nodes = await server.cli('cluster', 'nodes');
        const role = await server.cli('info', 'replication');
        const flags = nodes.split('\n').map((line) => line.split(' ')[2]?.split(',') ?? []);
        const known = flags.filter((f) => f.includes('slave') || f.includes('replica')).length;
        if (
          info.includes('cluster_state:ok') &&
          known === masters * replicas &&
          (role.includes('role:master') || role.includes('master_link_status:up'))
        )
          break;
        if (Date.now() > deadline) throw new Error('the Redis Cluster did not become ready');
        await sleep(100);
      }
    }
  } catch (err) {
    await Promise.all(servers.map((s) => s.close()));
    throw err;
  }
  const byPort = (port: number): PrivateRedis => servers.find((s) => s.port === port) as PrivateRedis;
  return {
    nodes: servers.map((s) => ({ host: '127.0.0.1', port: s.port })),
    tlsNodes: tlsPorts.map((port) => ({ host: '127.0.0.1', port })),
    servers,
    slotOwners: async (slot) => {
      // CLUSTER NODES: `id host:port@bus flags master-id … slot-ranges`. (CLUSTER SLOTS leaves out a replica
      // whose offset is still 0, as on a cluster that has taken no write yet.)
      for (const server of servers) {
        const out = await server.cli('cluster', 'nodes').catch(() => undefined);
        if (out === undefined || out === '') continue; // a node that is down
        const lines = out.split('\n').map((line) => line.split(' '));
        const portOf = (fields: string[]): number => Number(fields[1]!.split('@')[0]!.split(':').at(-1));
        const owner = lines.find(
          (fields) =>
            !fields[2]!.includes('fail') &&
            fields.slice(8).some((range) => {
              const [first, last = first] = range.split('-').map(Number) as [number, number?];
              return slot >= first && slot <= last;
            }),
        );
        if (owner === undefined) continue;
        const copies = lines.filter((fields) => fields[3] === owner[0] && !fields[2]!.includes('fail'));
        return { master: byPort(portOf(owner)), replicas: copies.map((fields) => byPort(portOf(fields))) };
      }
      throw new Error(`no node of the cluster serves slot ${slot}`);
    },
    close: async () => {
      await Promise.all(servers.map((s) => s.close()));
    },
  };
}
