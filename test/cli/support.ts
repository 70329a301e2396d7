/**
 * Running the BUILT `tokenwarden` command as a child process, in a private HOME / XDG directory, with only
 * the environment a test gives it.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { request } from 'node:http';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const ROOT = new URL('../..', import.meta.url).pathname;
export const CLI = join(ROOT, 'dist/cli/main.js');
/**
 * With `TOKENWARDEN_TEST_CLI=source`, the command runs from the TypeScript sources (through tsx) instead of
 * the build: for checking a change to src/cli without `npm run build`. CI tests the build.
 */
const FROM_SOURCE = process.env['TOKENWARDEN_TEST_CLI'] === 'source';
/** The node arguments that run the command. */
export const CLI_ARGS = FROM_SOURCE ? ['--import', 'tsx', join(ROOT, 'src/cli/main.ts')] : [CLI];

/** Fails clearly when the build is missing or older than the sources it is tested for. */
export async function assertBuilt(): Promise<void> {
  if (FROM_SOURCE) return;
  const built = await stat(CLI).catch(() => undefined);
  if (built === undefined) throw new Error('dist/cli/main.js is missing: run `npm run build` before these tests');
  for (const dir of ['src', 'src/cli', 'src/sources', 'src/stores']) {
    for (const name of await readdir(join(ROOT, dir))) {
      if (!name.endsWith('.ts')) continue;
      const source = await stat(join(ROOT, dir, name));
      if (source.mtimeMs > built.mtimeMs + 1000) {
        throw new Error(`${dir}/${name} is newer than dist/cli/main.js: run \`npm run build\` before these tests`);
      }
    }
  }
}

export interface Home {
  dir: string;
  env: Record<string, string>;
}

const homes: string[] = [];

/** An empty HOME with XDG_CACHE_HOME and XDG_CONFIG_HOME inside it. */
export async function tempHome(): Promise<Home> {
  const dir = await mkdtemp(join(tmpdir(), 'tw-cli-'));
  homes.push(dir);
  return {
    dir,
    env: { HOME: dir, XDG_CACHE_HOME: join(dir, 'cache'), XDG_CONFIG_HOME: join(dir, 'config') },
  };
}

/**
 * Writes an agent configuration to `dir/name` and returns its path: one token `svc` (client credentials at
 * `issuer`, secret from SVC_SECRET, scope read, plain HTTP allowed) served on a free loopback port; `svc`
 * adds to that token's entry, `extra` to the top level.
 */
export async function writeAgentConfig(
  dir: string,
  issuer: string,
  { svc = {}, extra = {}, name = 'agent.json' }: { svc?: object; extra?: object; name?: string } = {},
): Promise<string> {
  const config = {
    tokens: {
      svc: {
        issuer,
        clientId: 'svc',
        clientSecretEnv: 'SVC_SECRET',
        scope: 'read',
        allowInsecureRequests: true,
        ...svc,
      },
    },
    listen: '127.0.0.1:0',
    ...extra,
  };
  const file = join(dir, name);
  await writeFile(file, JSON.stringify(config));
  return file;
}

export async function removeHomes(): Promise<void> {
  await Promise.all(homes.splice(0).map((d) => rm(d, { recursive: true, force: true })));
}

export interface Result {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Runs `tokenwarden ...args` to completion. The child sees only PATH and `env`. */
export function runCli(
  args: string[],
  env: Record<string, string>,
  options: { input?: string; timeoutMs?: number } = {},
): Promise<Result> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [...CLI_ARGS, ...args], {
      cwd: ROOT,
      env: { PATH: process.env['PATH'] ?? '/usr/bin:/bin', ...env },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs ?? 20_000);
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
    child.stdin.on('error', () => undefined); // the command may exit before reading all its input
    child.stdin.end(options.input ?? '');
  });
}

/** A long-running child (the agent) whose output is collected line by line. */
export class Agent {
  readonly child: ChildProcess;
  stdout = '';
  stderr = '';
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;

  constructor(args: string[], env: Record<string, string>) {
    this.child = spawn(process.execPath, [...CLI_ARGS, ...args], {
      cwd: ROOT,
      env: { PATH: process.env['PATH'] ?? '/usr/bin:/bin', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.child.stdout?.setEncoding('utf8').on('data', (d: string) => (this.stdout += d));
    this.child.stderr?.setEncoding('utf8').on('data', (d: string) => (this.stderr += d));
    this.exited = new Promise((resolve) => this.child.on('exit', (code, signal) => resolve({ code, signal })));
  }

  /** Every JSON log line so far (stdout and stderr). */
  logs(): Record<string, unknown>[] {
    return `${this.stdout}\n${this.stderr}`
      .split('\n')
      .filter((l) => l.trim() !== '')
      .map((l) => {
        try {
          return JSON.parse(l) as Record<string, unknown>;
        } catch {
          return { unparsed: l }; // the one-line error of a failed start
        }
      });
  }

  /** Waits for a log line matching `test`. */
  async waitForLog(
    test: (line: Record<string, unknown>) => boolean,
    timeoutMs = 10_000,
  ): Promise<Record<string, unknown>> {
    const end = Date.now() + timeoutMs;
    while (Date.now() < end) {
      const hit = this.logs().find(test);
      if (hit) return hit;
      if (this.child.exitCode !== null) break;
      await sleep(25);
    }
    throw new Error(`no such log line; stdout:\n${this.stdout}\nstderr:\n${this.stderr}`);
  }

  async stop(): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill('SIGTERM');
    return this.exited;
  }
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Every file under `dir`, recursively, with its mode and content. */
export async function filesUnder(
  dir: string,
): Promise<{ path: string; mode: number; isDir: boolean; content: string }[]> {
  const out: { path: string; mode: number; isDir: boolean; content: string }[] = [];
  const walk = async (d: string): Promise<void> => {
    const info = await stat(d);
    out.push({ path: d, mode: info.mode & 0o777, isDir: true, content: '' });
    for (const entry of await readdir(d, { withFileTypes: true })) {
      const path = join(d, entry.name);
      if (entry.isDirectory()) await walk(path);
      else {
        const s = await stat(path);
        out.push({ path, mode: s.mode & 0o777, isDir: false, content: await readFile(path, 'utf8') });
      }
    }
  };
  await walk(dir);
  return out;
}

/** A loopback port nothing listens on (bound, then released). */
export async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const { port } = server.address() as { port: number };
  await new Promise<void>((r) => server.close(() => r()));
  return port;
}

/** The one-line error format: `tokenwarden: CODE: message. Hint: …`, nothing else, no stack trace. */
export const ONE_LINE_ERROR = /^tokenwarden: ERR_[A-Z_]+: [^\n]+\n$/;

/** A plain HTTP request to the loopback endpoint (node:http, so that any Host header can be sent). */
export function httpGet(
  port: number,
  path: string,
  headers: Record<string, string> = {},
  method = 'GET',
): Promise<{ status: number; headers: Record<string, unknown>; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path, method, headers }, (res) => {
      let body = '';
      res.setEncoding('utf8').on('data', (d: string) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
    });
    req.on('error', reject);
    req.end();
  });
}
