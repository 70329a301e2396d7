/**
 * `tokenwarden token`, run as a child process (the built CLI) against a real authorization server issuing
 * 3 s tokens: the cache across invocations, concurrency, expiry, failures, profiles, secrets.
 */
import { chmod, mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { decodeJwt } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type TestAuthorizationServer, startAuthorizationServer } from '../support/authorization-server.js';
import {
  ONE_LINE_ERROR,
  type Result,
  assertBuilt,
  closedPort,
  filesUnder,
  removeHomes,
  runCli,
  sleep,
  tempHome,
} from './support.js';

let as: TestAuthorizationServer;
let secret: string;
beforeAll(async () => {
  await assertBuilt();
  as = await startAuthorizationServer({ accessTokenTtl: 3 });
  secret = as.clients.svc.clientSecret;
});
afterAll(async () => {
  await as?.close();
  await removeHomes();
});

const JWT = /^[\w-]+\.[\w-]+\.[\w-]+$/;
const base = (): string[] => [
  'token',
  '--issuer',
  as.issuer,
  '--client-id',
  'svc',
  '--scope',
  'read',
  '--allow-insecure-requests',
];

/** No output and no file may hold the secret; failures print one line without a stack trace. */
function expectCleanFailure(result: Result, code: number, errorCode: string): void {
  expect(result.code, result.stderr).toBe(code);
  expect(result.stdout).toBe('');
  expect(result.stderr).toMatch(ONE_LINE_ERROR);
  expect(result.stderr).toContain(`: ${errorCode}: `);
  expect(result.stderr).not.toMatch(/\n\s+at /);
  expect(result.stderr).not.toContain(secret);
}

describe('tokenwarden token (acceptance)', () => {
  it('two runs print the same JWT with one token request; the cache holds no secret and is private', async (ctx) => {
    const home = await tempHome();
    const env = { ...home.env, TOKENWARDEN_CLIENT_SECRET: secret };
    as.resetCounts();
    const started = Date.now();
    const first = await runCli(base(), env);
    const second = await runCli(base(), env);
    const ended = Date.now();
    expect(first.code, first.stderr).toBe(0);
    expect(second.code, second.stderr).toBe(0);
    expect(first.stdout).toMatch(/\n$/);
    expect(first.stdout.trimEnd()).toMatch(JWT);
    expect(first.stderr + second.stderr).toBe('');
    expect(decodeJwt(first.stdout.trim())['client_id']).toBe('svc');

    const files = await filesUnder(join(home.dir, 'cache'));
    expect(files.filter((f) => !f.isDir).length).toBeGreaterThan(0);
    for (const f of files) {
      expect(f.content).not.toContain(secret);
      expect(f.mode & 0o077, `${f.path} is private`).toBe(0);
    }
    expect(files.find((f) => f.path.endsWith('/tokenwarden'))?.mode).toBe(0o700);

    // A cached token is reused while it has 10 % of its life left. Only when the second run ended before the
    // earliest moment that can be (a machine starved of CPU can take seconds per run) must it have reused it.
    const exp = (decodeJwt(first.stdout.trim()).exp as number) * 1000;
    if (ended >= exp - 0.1 * (exp - started)) {
      ctx.skip(`the runs took ${ended - started} ms, longer than the 3 s token can be reused: too slow to judge`);
    }
    expect(second.stdout).toBe(first.stdout);
    expect(as.counts.token).toBe(1);
  });

  it('--json gives access_token, token_type, expires_at (ISO 8601) and scope', async () => {
    const home = await tempHome();
    const result = await runCli([...base(), '--json'], { ...home.env, TOKENWARDEN_CLIENT_SECRET: secret });
    expect(result.code, result.stderr).toBe(0);
    const json = JSON.parse(result.stdout) as Record<string, unknown>;
    expect(json['access_token']).toMatch(JWT);
    expect(json['token_type']).toBe('Bearer');
    expect(json['scope']).toBe('read');
    expect(json['expires_at']).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$/);
    const exp = decodeJwt(json['access_token'] as string).exp as number;
    expect(Math.abs(Date.parse(json['expires_at'] as string) - exp * 1000)).toBeLessThanOrEqual(2000);
  });

  it('an unreachable issuer exits 1 with one line, no stack trace, no secret', async () => {
    const home = await tempHome();
    const port = await closedPort();
    const result = await runCli(
      ['token', '--issuer', `http://127.0.0.1:${port}`, '--client-id', 'svc', '--allow-insecure-requests'],
      { ...home.env, TOKENWARDEN_CLIENT_SECRET: secret },
    );
    expectCleanFailure(result, 1, 'ERR_NETWORK');
    expect(result.stderr).toContain('Hint: ');
  });

  it('a wrong secret exits 1 with invalid_client — even while a token obtained with the right one is cached', async () => {
    const home = await tempHome();
    const good = await runCli(base(), { ...home.env, TOKENWARDEN_CLIENT_SECRET: secret });
    expect(good.code, good.stderr).toBe(0);
    const wrong = `${secret}-wrong`;
    const result = await runCli(base(), { ...home.env, TOKENWARDEN_CLIENT_SECRET: wrong });
    expectCleanFailure(result, 1, 'ERR_OAUTH');
    expect(result.stderr).toContain('invalid_client');
    expect(result.stderr).not.toContain(wrong);
    for (const f of await filesUnder(join(home.dir, 'cache'))) expect(f.content).not.toContain(wrong);
  });
});

describe('tokenwarden token (cache)', () => {
  it('an expired cache entry is replaced by a new request', async () => {
    const home = await tempHome();
    const env = { ...home.env, TOKENWARDEN_CLIENT_SECRET: secret };
    as.resetCounts();
    const first = await runCli(base(), env);
    expect(first.code, first.stderr).toBe(0);
    const exp = decodeJwt(first.stdout.trim()).exp as number;
    await sleep(Math.max(0, exp * 1000 - Date.now()) + 100);
    const before = Date.now();
    const second = await runCli(base(), env);
    expect(second.code, second.stderr).toBe(0);
    expect(second.stdout).not.toBe(first.stdout);
    expect(as.counts.token).toBe(2);
    expect((decodeJwt(second.stdout.trim()).exp as number) * 1000).toBeGreaterThan(before);
  });

  it('--min-ttl longer than the cached token has left asks for a new one (and says the server gives less)', async () => {
    const home = await tempHome();
    const env = { ...home.env, TOKENWARDEN_CLIENT_SECRET: secret };
    as.resetCounts();
    const first = await runCli(base(), env);
    const second = await runCli([...base(), '--min-ttl', '10m'], env);
    expect(second.code, second.stderr).toBe(0);
    expect(second.stdout).not.toBe(first.stdout);
    expect(second.stderr).toMatch(/^tokenwarden: warning: .*less than --min-ttl 10 min\n$/);
    expect(as.counts.token).toBe(2);
  });

  it('--no-cache asks every time and writes nothing', async () => {
    const home = await tempHome();
    const env = { ...home.env, TOKENWARDEN_CLIENT_SECRET: secret };
    as.resetCounts();
    const a = await runCli([...base(), '--no-cache'], env);
    const b = await runCli([...base(), '--no-cache'], env);
    expect([a.code, b.code]).toEqual([0, 0]);
    expect(a.stdout).not.toBe(b.stdout);
    expect(as.counts.token).toBe(2);
    await expect(filesUnder(join(home.dir, 'cache'))).rejects.toThrow(/ENOENT/);
  });

  it('uses $HOME/.cache/tokenwarden when XDG_CACHE_HOME is not set', async () => {
    const home = await tempHome();
    const result = await runCli(base(), { HOME: home.dir, TOKENWARDEN_CLIENT_SECRET: secret });
    expect(result.code, result.stderr).toBe(0);
    const files = await filesUnder(join(home.dir, '.cache', 'tokenwarden'));
    expect(files.some((f) => f.path.endsWith('.json') && f.mode === 0o600)).toBe(true);
  });
});

describe('tokenwarden token (secrets and profiles)', () => {
  it('--client-secret-file reads the secret from a file (its trailing newline ignored)', async () => {
    const home = await tempHome();
    const file = join(home.dir, 'svc.secret');
    await writeFile(file, `${secret}\n`, { mode: 0o600 });
    const result = await runCli([...base(), '--client-secret-file', file], home.env);
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout.trim()).toMatch(JWT);
    expect(result.stderr).toBe('');
  });

  it('warns when the secret file is readable by others', async () => {
    const home = await tempHome();
    const file = join(home.dir, 'svc.secret');
    await writeFile(file, secret);
    await chmod(file, 0o644);
    const result = await runCli([...base(), '--client-secret-file', file], home.env);
    expect(result.code, result.stderr).toBe(0);
    expect(result.stderr).toMatch(/warning: .*can be read by other users/);
    expect(result.stderr).not.toContain(secret);
  });

  it('a profile from $XDG_CONFIG_HOME/tokenwarden/config.json, flags overriding it', async () => {
    const home = await tempHome();
    const dir = join(home.env.XDG_CONFIG_HOME as string, 'tokenwarden');
    await mkdir(dir, { recursive: true });
    await writeFile(join(dir, 'svc.secret'), `${secret}\n`, { mode: 0o600 });
    await writeFile(
      join(dir, 'config.json'),
      JSON.stringify({
        profiles: {
          svc: {
            issuer: as.issuer,
            clientId: 'svc',
            clientSecretFile: 'svc.secret',
            scope: 'read',
            allowInsecureRequests: true,
          },
        },
      }),
    );
    const viaProfile = await runCli(['token', '--profile', 'svc', '--json'], home.env);
    expect(viaProfile.code, viaProfile.stderr).toBe(0);
    expect(JSON.parse(viaProfile.stdout)['scope']).toBe('read');
    const overridden = await runCli(['token', '--profile', 'svc', '--scope', 'write', '--json'], home.env);
    expect(overridden.code, overridden.stderr).toBe(0);
    expect(JSON.parse(overridden.stdout)['scope']).toBe('write');

    const unknown = await runCli(['token', '--profile', 'nope'], home.env);
    expectCleanFailure(unknown, 2, 'ERR_CONFIG');
    expect(unknown.stderr).toContain('known profiles: svc');
  });

  it('a YAML profile file; a secret written into a profile is refused, naming the field', async () => {
    const home = await tempHome();
    const dir = join(home.env.XDG_CONFIG_HOME as string, 'tokenwarden');
    await mkdir(dir, { recursive: true });
    await writeFile(
      join(dir, 'config.yaml'),
      `profiles:\n  svc:\n    issuer: ${as.issuer}\n    clientId: svc\n    clientSecretEnv: SVC_SECRET\n    scope: [read]\n    allowInsecureRequests: true\n  bad:\n    issuer: ${as.issuer}\n    clientId: svc\n    clientSecret: ${secret}\n`,
    );
    const ok = await runCli(['token', '--profile', 'svc'], { ...home.env, SVC_SECRET: secret });
    expect(ok.code, ok.stderr).toBe(0);
    expect(ok.stdout.trim()).toMatch(JWT);
    const bad = await runCli(['token', '--profile', 'bad'], home.env);
    expectCleanFailure(bad, 2, 'ERR_CONFIG');
    expect(bad.stderr).toContain('profiles.bad.clientSecret');
  });
});

describe('tokenwarden token with a hostile YAML profile file', () => {
  it.each([
    [
      'an unknown tag (read as a string before)',
      'profiles:\n  svc:\n    issuer: !!js/function "x"\n',
      /TAG_RESOLVE_FAILED/,
    ],
    ['a duplicate key', 'profiles:\n  svc:\n    clientId: a\n    clientId: b\n', /DUPLICATE_KEY/],
    [
      'an alias bomb',
      `a: &a [x,x,x,x,x,x,x,x,x]\n${['b', 'c', 'd', 'e', 'f', 'g', 'h']
        .map(
          (k, i) =>
            `${k}: &${k} [${Array(9)
              .fill(`*${i === 0 ? 'a' : ['b', 'c', 'd', 'e', 'f', 'g'][i - 1]}`)
              .join(',')}]`,
        )
        .join('\n')}\nprofiles: {}\n`,
      /not valid YAML/,
    ],
  ])('%s: exit 2, one line saying where, no library warning', async (_name, text, said) => {
    const home = await tempHome();
    const dir = join(home.env.XDG_CONFIG_HOME as string, 'tokenwarden');
    await mkdir(dir, { recursive: true });
    await writeFile(join(dir, 'config.yaml'), text, { mode: 0o600 });
    const result = await runCli(['token', '--profile', 'svc'], { ...home.env, TOKENWARDEN_CLIENT_SECRET: secret });
    expectCleanFailure(result, 2, 'ERR_CONFIG');
    expect(result.stderr).toMatch(said);
    expect(result.stderr).not.toMatch(/Warning|YAMLWarning/);
  });
});

describe('tokenwarden token (usage)', () => {
  it.each([
    ['no client id', ['token', '--issuer', 'https://login.example.test']],
    ['no issuer', ['token', '--client-id', 'svc']],
    ['an unknown option', ['token', '--issuer', 'https://login.example.test', '--client-id', 'svc', '--frobnicate']],
    ['a bad --min-ttl', ['token', '--issuer', 'https://login.example.test', '--client-id', 'svc', '--min-ttl', 'soon']],
    [
      'a bad --auth-method',
      ['token', '--issuer', 'https://login.example.test', '--client-id', 'svc', '--auth-method', 'magic'],
    ],
    ['an unknown command', ['frobnicate']],
  ])('%s exits 2 with one line', async (_name, args) => {
    const home = await tempHome();
    const result = await runCli(args, { ...home.env, TOKENWARDEN_CLIENT_SECRET: secret });
    expectCleanFailure(result, 2, 'ERR_CONFIG');
  });

  it('no secret anywhere exits 2 and says where a secret may come from', async () => {
    const home = await tempHome();
    const result = await runCli(['token', '--issuer', 'https://login.example.test', '--client-id', 'svc'], home.env);
    expectCleanFailure(result, 2, 'ERR_CONFIG');
    expect(result.stderr).toContain('TOKENWARDEN_CLIENT_SECRET');
  });

  it('a secret on the command line is refused without being echoed', async () => {
    const home = await tempHome();
    for (const args of [['--client-secret', 'hunter2-secret'], ['--client-secret=hunter2-secret']]) {
      const result = await runCli(['token', '--issuer', as.issuer, '--client-id', 'svc', ...args], home.env);
      expectCleanFailure(result, 2, 'ERR_CONFIG');
      expect(result.stderr).not.toContain('hunter2');
    }
    const unknown = await runCli(['token', '--issuer', as.issuer, '--password=hunter2-secret'], home.env);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).not.toContain('hunter2');
  });

  it('an http: issuer without --allow-insecure-requests is a usage error', async () => {
    const home = await tempHome();
    const result = await runCli(['token', '--issuer', as.issuer, '--client-id', 'svc'], {
      ...home.env,
      TOKENWARDEN_CLIENT_SECRET: secret,
    });
    expectCleanFailure(result, 2, 'ERR_INSECURE_ISSUER');
  });

  it('--debug adds the stack trace, still without the secret', async () => {
    const home = await tempHome();
    const port = await closedPort();
    const result = await runCli(
      ['token', '--issuer', `http://127.0.0.1:${port}`, '--client-id', 'svc', '--allow-insecure-requests', '--debug'],
      { ...home.env, TOKENWARDEN_CLIENT_SECRET: secret },
    );
    expect(result.code).toBe(1);
    expect(result.stderr).toMatch(/^tokenwarden: ERR_NETWORK: /);
    expect(result.stderr).toMatch(/\n\s+at /);
    expect(result.stderr).not.toContain(secret);
  });

  it.each([['token'], ['inspect'], ['agent']])('%s --help shows an example and exits 0', async (command) => {
    const home = await tempHome();
    const result = await runCli([command, '--help'], home.env);
    expect(result.code).toBe(0);
    expect(result.stdout).toMatch(/\nExamples?:\n/);
    expect(result.stdout).toContain(`tokenwarden ${command} `);
    expect(result.stderr).toBe('');
  });

  it('--version prints the package version', async () => {
    const home = await tempHome();
    const result = await runCli(['--version'], home.env);
    expect(result.code).toBe(0);
    expect(result.stdout).toMatch(/^\d+\.\d+\.\d+/);
  });
});
