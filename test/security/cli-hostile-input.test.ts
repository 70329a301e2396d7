/**
 * The `tokenwarden` command against input the other suites do not give it: a client secret of kilobytes (the
 * scrubbing that keeps it out of messages cannot be built for it), secret files that are huge, FIFOs or
 * devices, a time limit no timer can hold, a mistyped secret flag whose value holds a quote, and a reader that
 * goes away (stdout closed: `tokenwarden token | head -c0`, the agent's log collector stopping). Child
 * processes run the built command (`TOKENWARDEN_TEST_CLI=source`: the sources, through tsx).
 */
import { execFileSync, spawn } from 'node:child_process';
import { mkdir, open, readdir, stat, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadProfile, parseTimeout, readSecret } from '../../src/cli/config.js';
import { WITHHELD, formatError, keepSecret, printable } from '../../src/cli/output.js';
import { TokenwardenError, isTokenwardenError } from '../../src/errors.js';
import { type TestAuthorizationServer, startAuthorizationServer } from '../support/authorization-server.js';
import { CLI_ARGS, ONE_LINE_ERROR, ROOT, assertBuilt, removeHomes, runCli, sleep, tempHome } from '../cli/support.js';

let as: TestAuthorizationServer;
beforeAll(async () => {
  await assertBuilt();
  as = await startAuthorizationServer({ accessTokenTtl: 3 });
});
afterAll(async () => {
  await as?.close();
  await removeHomes();
});

/** What `promise` rejects with. */
const rejection = (promise: Promise<unknown>): Promise<unknown> =>
  promise.then(
    () => undefined,
    (err: unknown) => err,
  );

describe('client secrets of kilobytes (a wrong file)', () => {
  // 5000 bytes, most of them characters that need percent-encoding: before the library's redactor cut its
  // pattern into pieces, its forms (percent-encoded, base64, the Basic credential…) could not be compiled and the
  // error carried them — the secret, encoded — or the command crashed printing a SyntaxError holding them. Now
  // no client secret is that long: refused, in no form.
  const secret = `s3cr3t-${'!'.repeat(2500)}${'é'.repeat(1250)}`;
  const forms = ['!!!!!!!!', '%21%21%21', 'ISEhISEh', '%C3%A9%C3%A9', 'w6nDqcOp', 'éééé', '%25'];

  for (const [what, setup] of [
    ['$TOKENWARDEN_CLIENT_SECRET', async () => ({ env: { TOKENWARDEN_CLIENT_SECRET: secret }, args: [] })],
    [
      '--client-secret-file',
      async (dir: string) => {
        await writeFile(join(dir, 'secret'), `${secret}\n`, { mode: 0o600 });
        return { env: {}, args: ['--client-secret-file', join(dir, 'secret')] };
      },
    ],
  ] as const) {
    it(`a ${Buffer.byteLength(secret)}-byte secret from ${what} is refused (exit 2), in no form on stderr`, async () => {
      const home = await tempHome();
      const { env, args } = await setup(home.dir);
      const result = await runCli(
        [
          'token',
          '--issuer',
          as.issuer,
          '--allow-insecure-requests',
          '--client-id',
          'svc',
          '--no-cache',
          '--debug',
          ...args,
        ],
        { ...home.env, ...env },
      );
      expect(result.code, result.stderr).toBe(2);
      expect(result.stdout).toBe('');
      expect(result.stderr).toMatch(/^tokenwarden: ERR_CONFIG: .* bytes: longer than any client secret/);
      expect(result.stderr.split('\n').length, 'one line and its stack (--debug)').toBeGreaterThan(1);
      for (const form of forms) expect(result.stderr, form).not.toContain(form);
    });
  }

  it('the agent refuses it too', async () => {
    const home = await tempHome();
    const file = join(home.dir, 'agent.json');
    await writeFile(
      file,
      JSON.stringify({
        tokens: {
          svc: { issuer: as.issuer, clientId: 'svc', clientSecretEnv: 'SVC_SECRET', allowInsecureRequests: true },
        },
        listen: '127.0.0.1:0',
      }),
      { mode: 0o600 },
    );
    const result = await runCli(['agent', '--config', file], { ...home.env, SVC_SECRET: secret });
    expect(result.code, result.stderr).toBe(2);
    expect(result.stderr).toMatch(/ERR_CONFIG: the environment variable SVC_SECRET \(tokens\.svc\) holds/);
    for (const form of forms) expect(result.stderr, form).not.toContain(form);
  });

  it('a secret past any length check (10 000 characters) is still scrubbed from what is printed, in every form', () => {
    keepSecret('!'.repeat(10_000), 'svc');
    for (const form of ['!'.repeat(10_000), '%21'.repeat(10_000), Buffer.from('!'.repeat(10_000)).toString('base64')]) {
      const text = `the server said: ${form}`;
      expect(printable(text)).toBe('the server said: [redacted]');
      const line = formatError(new TokenwardenError('ERR_OAUTH', text), { debug: true });
      expect(line).not.toContain(form.slice(0, 64));
      expect(line).not.toContain(WITHHELD);
    }
  });
});

describe('client secret files that are not one', () => {
  it('a huge file, /dev/zero, a FIFO or a directory: ERR_CONFIG at once, nothing read whole', async () => {
    const home = await tempHome();
    const huge = join(home.dir, 'huge.secret');
    await writeFile(huge, '', { mode: 0o600 });
    await truncate(huge, 512 * 1024 * 1024); // sparse: 512 MiB of zeros to read, without the disk space
    const fifo = join(home.dir, 'fifo.secret');
    execFileSync('mkfifo', ['-m', '600', fifo]);
    for (const file of [huge, '/dev/zero', fifo, home.dir]) {
      const started = Date.now();
      const heapBefore = process.memoryUsage().rss;
      const err = await rejection(readSecret({ file }, '--client-secret-file', () => undefined));
      expect(isTokenwardenError(err) && err.code, `${file}: ${String(err)}`).toBe('ERR_CONFIG');
      expect(Date.now() - started, file).toBeLessThan(2000);
      expect(process.memoryUsage().rss - heapBefore, `${file}: memory taken`).toBeLessThan(64 * 1024 * 1024);
    }
    // Nobody opened the FIFO for writing: it was not waited on.
    expect((await stat(fifo)).isFIFO()).toBe(true);
  });
});

describe('profile names that are names of Object.prototype', () => {
  it('--profile __proto__, toString or constructor is a profile that is not there', async () => {
    const home = await tempHome();
    const dir = join(home.env['XDG_CONFIG_HOME'] as string, 'tokenwarden');
    await mkdir(dir, { recursive: true });
    await writeFile(join(dir, 'config.json'), JSON.stringify({ profiles: { billing: { clientId: 'b' } } }), {
      mode: 0o600,
    });
    for (const name of ['__proto__', 'toString', 'constructor', 'hasOwnProperty']) {
      const err = await rejection(loadProfile(name, home.env));
      expect(isTokenwardenError(err) && err.code, `${name}: ${String(err)}`).toBe('ERR_CONFIG');
      expect((err as Error).message, name).toBe(`profile '${name}' is not in ${join(dir, 'config.json')}`);
    }
    expect(await loadProfile('billing', home.env)).toEqual({ clientId: 'b' });
  });
});

describe('durations no timer can hold', () => {
  it('--timeout 0 or of years is a usage error (exit 2), not a request that times out at once', async () => {
    expect(() => parseTimeout('99999999999', '--timeout')).toThrow(/at most 24 days/);
    expect(() => parseTimeout('0', '--timeout')).toThrow(/more than 0/);
    expect(parseTimeout('10s', '--timeout')).toBe(10_000);
    const home = await tempHome();
    const result = await runCli(
      ['token', '--issuer', as.issuer, '--allow-insecure-requests', '--client-id', 'svc', '--timeout', '99999999999'],
      { ...home.env, TOKENWARDEN_CLIENT_SECRET: as.clients.svc.clientSecret },
    );
    expect(result.code, result.stderr).toBe(2);
    expect(result.stderr).toMatch(ONE_LINE_ERROR);
    expect(result.stderr).toContain('ERR_CONFIG: --timeout must be');
  });
});

describe('a mistyped secret flag', () => {
  it('is named without its value, even when the value holds a quote', async () => {
    const home = await tempHome();
    const result = await runCli(['token', "--client-secrte=ab'cd-s3cr3t-tail"], home.env);
    expect(result.code, result.stderr).toBe(2);
    expect(result.stderr).toMatch(ONE_LINE_ERROR);
    expect(result.stderr).toContain("unknown option '--client-secrte=…'");
    expect(result.stderr).not.toContain('s3cr3t');
    expect(result.stderr).not.toContain('cd');
  });
});

/**
 * Runs the command with its stdout closed by the reader at once, for as long as `whileRunning` (default: until
 * it exits), then stops it with SIGTERM if it still runs; resolves with its exit and stderr.
 */
function withStdoutClosed(
  args: string[],
  env: Record<string, string>,
  whileRunning?: () => Promise<void>,
): Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string; alive: boolean }> {
  const child = spawn(process.execPath, [...CLI_ARGS, ...args], {
    cwd: ROOT,
    env: { PATH: process.env['PATH'] ?? '/usr/bin:/bin', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  child.stdout.destroy(); // the reader went away: every write to stdout fails with EPIPE
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.on('close', (code, signal) => resolve({ code, signal })),
  );
  return (async () => {
    await (whileRunning ?? (() => Promise.race([exited.then(() => undefined), sleep(20_000)])))();
    const alive = child.exitCode === null && child.signalCode === null;
    if (alive) child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
    const result = await exited;
    clearTimeout(timer);
    return { ...result, stderr, alive };
  })();
}

describe('a reader that goes away', () => {
  it('tokenwarden token with its stdout closed exits 1, without a stack trace', async () => {
    const home = await tempHome();
    const result = await withStdoutClosed(
      ['token', '--issuer', as.issuer, '--allow-insecure-requests', '--client-id', 'svc', '--no-cache'],
      { ...home.env, TOKENWARDEN_CLIENT_SECRET: as.clients.svc.clientSecret },
    );
    expect(result.code, result.stderr).toBe(1);
    expect(result.stderr).not.toContain('EPIPE');
    expect(result.stderr).not.toMatch(/^\s+at /m);
  });

  it('the agent with its log collector gone keeps its sink fresh, and still stops cleanly', async () => {
    const home = await tempHome();
    const sink = join(home.dir, 'run', 'svc.token');
    const file = join(home.dir, 'agent.json');
    await writeFile(
      file,
      JSON.stringify({
        tokens: {
          svc: {
            issuer: as.issuer,
            clientId: 'svc',
            clientSecretEnv: 'SVC_SECRET',
            allowInsecureRequests: true,
            sink: { file: sink },
          },
        },
      }),
      { mode: 0o600 },
    );
    const seen = new Set<string>();
    const result = await withStdoutClosed(
      ['agent', '--config', file],
      { ...home.env, SVC_SECRET: as.clients.svc.clientSecret },
      async () => {
        // 3 s tokens, each replaced (and logged to the closed stdout) at about half their life.
        for (const end = Date.now() + 6000; Date.now() < end; await sleep(100)) {
          const handle = await open(sink, 'r').catch(() => undefined);
          if (handle === undefined) continue;
          seen.add(await handle.readFile('utf8'));
          await handle.close();
        }
      },
    );
    expect(result.alive, `the agent was still running; stderr:\n${result.stderr}`).toBe(true);
    expect(result.code, result.stderr).toBe(0);
    expect(seen.size, 'tokens seen in the sink').toBeGreaterThan(2);
    expect(result.stderr).not.toContain('EPIPE');
    expect(await readdir(join(home.dir, 'run')), 'the sink is removed on stop').toEqual([]);
  }, 30_000);
});
