/**
 * The `tokenwarden` command (built, run as a child process) against hostile input: servers echoing the
 * credentials, tokens with terminal escapes, URLs with passwords under `--debug`, configuration files
 * others can write, JWTs with hostile claims, sink directories others can write, hostile requests to the
 * agent's loopback endpoint. Every refusal is a coded one-line error; nothing secret is printed.
 */
import { chmod, chown, mkdir, readdir, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TokenwardenError } from '../../src/errors.js';
import { formatError } from '../../src/cli/output.js';
import { type TestAuthorizationServer, startAuthorizationServer } from '../support/authorization-server.js';
import { type FaultServer, json, startFaultServer } from '../support/fault-server.js';
import {
  Agent,
  ONE_LINE_ERROR,
  type Result,
  assertBuilt,
  httpGet,
  removeHomes,
  runCli,
  tempHome,
} from '../cli/support.js';
import { CLIENT_ID, CLIENT_SECRET, ECHO_MODES, type EchoMode, leaksIn, startEchoServer } from './support.js';

const isRoot = process.geteuid?.() === 0;
const NOBODY = 65_534;

let echo: FaultServer;
let echoMode: EchoMode = 'description';
let hostile: FaultServer;
let hostileAnswer: Record<string, unknown> = {};
let as: TestAuthorizationServer;
const agents: Agent[] = [];

beforeAll(async () => {
  await assertBuilt();
  echo = await startEchoServer(() => echoMode);
  hostile = await startFaultServer((_req, res) => json(res, 200, hostileAnswer));
  as = await startAuthorizationServer({ accessTokenTtl: 60 });
});
afterAll(async () => {
  await Promise.all(agents.map((a) => a.stop()));
  await Promise.all([echo?.close(), hostile?.close(), as?.close()]);
  await removeHomes();
});

/** A failure printed as the command prints them: a coded line (plus a stack with --debug), nothing on stdout. */
function expectCodedFailure(result: Result, code: string, exit = 1): void {
  expect(result.code, result.stderr).toBe(exit);
  expect(result.stdout).toBe('');
  expect(result.stderr.startsWith(`tokenwarden: ${code}: `), result.stderr).toBe(true);
  expect(result.stderr).not.toContain('ERR_INTERNAL');
}

describe('tokenwarden token and a server echoing the credentials', () => {
  it('prints no form of the secret (or of the Basic credential) under --debug, for every kind of echo', async () => {
    const home = await tempHome();
    for (const method of ['client_secret_basic', 'client_secret_post']) {
      for (const m of method === 'client_secret_basic' ? ECHO_MODES : (['description', 'www-authenticate'] as const)) {
        echoMode = m;
        echo.requests.length = 0;
        const result = await runCli(
          [
            'token',
            '--token-endpoint',
            `${echo.url}/token`,
            '--client-id',
            CLIENT_ID,
            '--auth-method',
            method,
            '--allow-insecure-requests',
            '--no-cache',
            '--debug',
          ],
          { ...home.env, TOKENWARDEN_CLIENT_SECRET: CLIENT_SECRET },
        );
        expect(result.code, `${method} ${m}: ${result.stderr}`).toBe(1);
        expect(result.stdout).toBe('');
        const sent = echo.requests.map((r) => (r.headers.authorization ?? '').replace(/^\S+\s+/, ''));
        expect(leaksIn(result.stderr, [CLIENT_SECRET, ...sent.filter((s) => s !== '')]), `${method}, ${m}`).toEqual([]);
      }
    }
  });

  const escapes: [string, string][] = [
    ['an OSC title escape', '\u001b]0;pwned\u0007Zq9x'],
    ['a screen-clearing CSI', 'Zq9x\u001b[2J\u001b[H'],
    ['CR LF', 'Zq9x\r\nInjected: line'],
    ['a C1 CSI', 'Zq9x\u009b31m'],
    ['a bidi override', 'Zq9x\u202eneg'],
  ];
  for (const [what, accessToken] of escapes) {
    it(`refuses to print an access token holding ${what}: ERR_INVALID_RESPONSE, nothing on stdout`, async () => {
      const home = await tempHome();
      hostileAnswer = { access_token: accessToken, token_type: 'Bearer', expires_in: 300 };
      for (const extra of [[], ['--json']]) {
        const result = await runCli(
          [
            'token',
            '--token-endpoint',
            `${hostile.url}/token`,
            '--client-id',
            'svc',
            '--allow-insecure-requests',
            ...extra,
          ],
          { ...home.env, TOKENWARDEN_CLIENT_SECRET: 'a-secret-for-the-hostile-server' },
        );
        expectCodedFailure(result, 'ERR_INVALID_RESPONSE');
        expect(result.stderr).toMatch(ONE_LINE_ERROR);
        // eslint-disable-next-line no-control-regex
        expect(result.stderr).not.toMatch(/[\u0000-\u0009\u000b-\u001f\u007f-\u009f\u202e]/);
        expect(result.stderr).not.toContain('Zq9x');
      }
    });
  }
});

describe('--debug and URLs with a password in them', () => {
  for (const flag of ['--token-endpoint', '--issuer']) {
    it(`${flag} with user:password is refused without printing the password`, async () => {
      const home = await tempHome();
      const url = `http://svc:pa55w0rd-in-url@127.0.0.1:${new URL(as.issuer).port}${flag === '--issuer' ? '' : '/token'}`;
      const result = await runCli(['token', flag, url, '--client-id', 'svc', '--allow-insecure-requests', '--debug'], {
        ...home.env,
        TOKENWARDEN_CLIENT_SECRET: as.clients.svc.clientSecret,
      });
      expectCodedFailure(result, 'ERR_CONFIG', 2);
      expect(result.stderr).not.toContain('pa55w0rd-in-url');
      expect(result.stderr).toContain('user name or password');
    });
  }

  it('the agent does not log the password of an issuer URL either', async () => {
    const home = await tempHome();
    const file = join(home.dir, 'agent.json');
    const issuer = as.issuer.replace('http://', 'http://svc:pa55w0rd-in-agent@');
    await writeFile(
      file,
      JSON.stringify({
        tokens: {
          svc: {
            issuer,
            clientId: 'svc',
            clientSecretEnv: 'SVC_SECRET',
            allowInsecureRequests: true,
            sink: { file: join(home.dir, 'run', 'svc.token') },
          },
        },
      }),
      { mode: 0o600 },
    );
    const result = await runCli(['agent', '--config', file, '--debug'], {
      ...home.env,
      SVC_SECRET: as.clients.svc.clientSecret,
    });
    expect(result.code, result.stderr).toBe(2);
    expect(result.stdout + result.stderr).not.toContain('pa55w0rd-in-agent');
    expect(result.stdout).toContain('***@127.0.0.1'); // the "starting" log line, scrubbed
  });

  it('a proxy URL with a password in an error cause is scrubbed from --debug output', () => {
    const cause = new Error('connect ECONNREFUSED via proxy http://proxyuser:pr0xy-pa55@proxy.internal:3128');
    const err = new TokenwardenError('ERR_NETWORK', 'request to https://as.example.com/token failed', { cause });
    const text = formatError(err, { debug: true, command: 'token' });
    expect(text).toContain('caused by');
    expect(text).not.toContain('pr0xy-pa55');
    expect(text).toContain('http://***@proxy.internal:3128');
  });
});

describe('configuration files that others can change', () => {
  async function profileHome(mode: number) {
    const home = await tempHome();
    const dir = join(home.dir, 'config', 'tokenwarden');
    await mkdir(dir, { recursive: true });
    const file = join(dir, 'config.json');
    await writeFile(
      file,
      JSON.stringify({
        profiles: { p: { tokenEndpoint: `${as.issuer}/token`, clientId: 'svc', allowInsecureRequests: true } },
      }),
    );
    await chmod(file, mode);
    return { home, file };
  }

  it('a profile file every user may write is refused (exit 2) before anything is sent', async () => {
    const { home, file } = await profileHome(0o666);
    const before = as.counts.token;
    const result = await runCli(['token', '--profile', 'p'], {
      ...home.env,
      TOKENWARDEN_CLIENT_SECRET: as.clients.svc.clientSecret,
    });
    expectCodedFailure(result, 'ERR_CONFIG', 2);
    expect(result.stderr).toContain('can be changed by any user');
    expect(result.stderr).toContain(`chmod o-w ${file}`);
    expect(as.counts.token).toBe(before);
  });

  it('a profile file its group may write gives a warning, and works', async () => {
    const { home } = await profileHome(0o664);
    const result = await runCli(['token', '--profile', 'p'], {
      ...home.env,
      TOKENWARDEN_CLIENT_SECRET: as.clients.svc.clientSecret,
    });
    expect(result.code, result.stderr).toBe(0);
    expect(result.stderr).toMatch(
      /^tokenwarden: warning: the configuration file .* can be changed by its group \(mode 664\)/,
    );
  });

  it.skipIf(!isRoot)('a profile file that belongs to another user gives a warning', async () => {
    const { home, file } = await profileHome(0o644);
    await chown(file, NOBODY, NOBODY);
    const result = await runCli(['token', '--profile', 'p'], {
      ...home.env,
      TOKENWARDEN_CLIENT_SECRET: as.clients.svc.clientSecret,
    });
    expect(result.code, result.stderr).toBe(0);
    expect(result.stderr).toContain('belongs to another user');
  });

  it('an agent configuration every user may write is refused (exit 2)', async () => {
    const home = await tempHome();
    const file = join(home.dir, 'agent.json');
    await writeFile(
      file,
      JSON.stringify({
        tokens: {
          svc: { issuer: as.issuer, clientId: 'svc', clientSecretEnv: 'S', sink: { file: join(home.dir, 's.token') } },
        },
      }),
    );
    await chmod(file, 0o646);
    const result = await runCli(['agent', '--config', file], { ...home.env, S: 'x' });
    expectCodedFailure(result, 'ERR_CONFIG', 2);
    expect(result.stderr).toContain('can be changed by any user');
  });
});

describe('tokenwarden inspect on hostile claims', () => {
  const b64 = (text: string): string => Buffer.from(text).toString('base64url');
  const jwt = (payloadJson: string, headerJson = '{"alg":"RS256","typ":"JWT"}'): string =>
    `${b64(headerJson)}.${b64(payloadJson)}.c2ln`;

  const cases: [string, string][] = [
    ['exp: 1e300', jwt('{"sub":"x","exp":1e300}')],
    ['iat: 1e20', jwt('{"sub":"x","iat":1e20}')],
    ['exp: 1e400 (Infinity once parsed)', jwt('{"sub":"x","exp":1e400}')],
    ['nbf: -1e300', jwt('{"sub":"x","nbf":-1e300}')],
    ['exp as a string', jwt('{"sub":"x","exp":"tomorrow"}')],
    ['claims nested 100 000 deep', jwt(`{"a":${'['.repeat(100_000)}${']'.repeat(100_000)}}`)],
    [
      'a header nested 100 000 deep',
      jwt('{"sub":"x"}', `{"alg":"RS256","x":${'{"a":'.repeat(100_000)}1${'}'.repeat(100_000)}}`),
    ],
    ['claims that are an array', jwt('[1,2,3]')],
    ['claims that are not JSON', `${b64('{"alg":"none"}')}.${b64('{"sub":')}.`],
  ];
  for (const [what, token] of cases) {
    it(`${what}: ERR_INVALID_TOKEN (exit 1), never ERR_INTERNAL`, async () => {
      const home = await tempHome();
      const result = await runCli(['inspect', '-'], home.env, { input: token });
      expectCodedFailure(result, 'ERR_INVALID_TOKEN');
      expect(result.stderr).toMatch(ONE_LINE_ERROR);
    });
  }

  it('more than 1 MiB on stdin is ERR_INVALID_TOKEN', async () => {
    const home = await tempHome();
    const result = await runCli(['inspect', '-'], home.env, { input: jwt(`{"big":"${'x'.repeat(1_100_000)}"}`) });
    expectCodedFailure(result, 'ERR_INVALID_TOKEN');
  });

  it('claims holding terminal controls are printed escaped (human and --json output)', async () => {
    const home = await tempHome();
    const token = jwt(
      JSON.stringify({
        sub: 'a\u001b[2Jb',
        name: 'c\u009b31md',
        nick: 'e\u202ef',
        note: 'g\u2028h',
        exp: 4_000_000_000,
      }),
    );
    for (const extra of [[], ['--json']]) {
      const result = await runCli(['inspect', ...extra, '-'], home.env, { input: token });
      expect(result.code, result.stderr).toBe(0);
      // eslint-disable-next-line no-control-regex
      expect(result.stdout).not.toMatch(/[\u0000-\u0009\u000b-\u001f\u007f-\u009f\u202e\u2028]/);
      expect(result.stdout).toContain('\\u009b');
      if (extra.length > 0) expect(JSON.parse(result.stdout).claims.name).toBe('c\u009b31md'); // still the same JSON
    }
  });
});

describe('agent sinks in directories that others can write', () => {
  async function agentWithSinkIn(dirMode: number, options: { owner?: number; issuer?: string } = {}) {
    const home = await tempHome();
    const dir = join(home.dir, 'shared');
    await mkdir(dir);
    await chmod(dir, dirMode);
    const file = join(home.dir, 'agent.json');
    await writeFile(
      file,
      JSON.stringify({
        tokens: {
          svc: {
            issuer: options.issuer ?? as.issuer,
            clientId: 'svc',
            clientSecretEnv: 'SVC_SECRET',
            allowInsecureRequests: true,
            sink: { file: join(dir, 'svc.token') },
          },
        },
      }),
      { mode: 0o600 },
    );
    return { home, dir, file, sink: join(dir, 'svc.token') };
  }

  it('a world-writable directory that is not sticky is refused (exit 2); nothing is written there', async () => {
    const { home, dir, file } = await agentWithSinkIn(0o777);
    const result = await runCli(['agent', '--config', file], { ...home.env, SVC_SECRET: as.clients.svc.clientSecret });
    expect(result.code, result.stderr).toBe(2);
    expect(result.stderr).toMatch(/^tokenwarden: ERR_CONFIG: tokens\.svc\.sink: the sink directory .* not sticky/m);
    expect(await readdir(dir)).toEqual([]);
  });

  it('a sticky world-writable directory (like /tmp) is accepted; a group-writable one gives a warning', async () => {
    for (const [mode, warned] of [
      [0o1777, false],
      [0o770, true],
    ] as const) {
      const { home, file, sink } = await agentWithSinkIn(mode);
      const agent = new Agent(['agent', '--config', file], { ...home.env, SVC_SECRET: as.clients.svc.clientSecret });
      agents.push(agent);
      await agent.waitForLog((l) => l['msg'] === 'token obtained');
      for (let i = 0; i < 100 && (await stat(sink).catch(() => undefined)) === undefined; i++) {
        await new Promise((r) => setTimeout(r, 20));
      }
      expect((await stat(sink)).mode & 0o777).toBe(0o600);
      expect(agent.logs().some((l) => String(l['msg']).includes('can be written by its group'))).toBe(warned);
      await agent.stop();
    }
  });

  it.skipIf(!isRoot)('an existing sink file that belongs to another user is refused', async () => {
    const { home, dir, file, sink } = await agentWithSinkIn(0o1777);
    await writeFile(sink, 'planted');
    await chown(sink, NOBODY, NOBODY);
    const result = await runCli(['agent', '--config', file], { ...home.env, SVC_SECRET: as.clients.svc.clientSecret });
    expect(result.code, result.stderr).toBe(2);
    expect(result.stderr).toContain('belongs to another user');
    expect(await readdir(dir)).toEqual(['svc.token']);
  });
});

describe("hostile requests to the agent's loopback endpoint", () => {
  it('are answered 4xx without the token; a proper request still gets it', async () => {
    const home = await tempHome();
    const file = join(home.dir, 'agent.json');
    await writeFile(
      file,
      JSON.stringify({
        tokens: {
          svc: { issuer: as.issuer, clientId: 'svc', clientSecretEnv: 'SVC_SECRET', allowInsecureRequests: true },
        },
        listen: '127.0.0.1:0',
        requireRequestHeader: true,
      }),
      { mode: 0o600 },
    );
    const agent = new Agent(['agent', '--config', file], { ...home.env, SVC_SECRET: as.clients.svc.clientSecret });
    agents.push(agent);
    const port = (await agent.waitForLog((l) => l['msg'] === 'listening'))['port'] as number;
    await agent.waitForLog((l) => l['msg'] === 'token obtained');
    const good = await httpGet(port, '/v1/token/svc', { 'tokenwarden-request': '1' });
    expect(good.status).toBe(200);
    const token = (JSON.parse(good.body) as { access_token: string }).access_token;

    const h = { 'tokenwarden-request': '1' };
    const attempts: [string, string, Record<string, string>, string?][] = [
      ['DNS rebinding: a foreign Host', '/v1/token/svc', { ...h, host: 'attacker.example' }],
      ['a Host that starts like loopback', '/v1/token/svc', { ...h, host: '127.0.0.1.attacker.example' }],
      ['a Host with credentials', '/v1/token/svc', { ...h, host: `x@127.0.0.1:${port}` }],
      ['localhost under another domain', '/v1/token/svc', { ...h, host: 'localhost.attacker.example' }],
      ['a browser (Origin)', '/v1/token/svc', { ...h, origin: 'http://127.0.0.1' }],
      ['a null Origin (sandboxed frame)', '/v1/token/svc', { ...h, origin: 'null' }],
      ['no request header (SSRF)', '/v1/token/svc', {}],
      ['a request header with another value', '/v1/token/svc', { 'tokenwarden-request': 'true' }],
      ['POST', '/v1/token/svc', h, 'POST'],
      ['PUT', '/v1/token/svc', h, 'PUT'],
      ['DELETE', '/v1/token/svc', h, 'DELETE'],
      ['OPTIONS (CORS preflight)', '/v1/token/svc', h, 'OPTIONS'],
      ['a traversal', '/v1/token/../token/svc/..', h],
      ['an encoded traversal', '/v1/token/..%2f..%2fsvc', h],
      ['an encoded slash in the name', '/v1/token/svc%2f', h],
      ['a NUL in the name', '/v1/token/svc%00', h],
      ['a bad percent-encoding', '/v1/token/%E0%A4%A', h],
      ['a trailing slash', '/v1/token/svc/', h],
      ['a doubled slash', '/v1//token/svc', h],
      ['a name with a different case', '/v1/token/SVC', h],
      ['a huge path', `/v1/token/${'a'.repeat(8000)}`, h],
      ['the prototype of the token map', '/v1/token/__proto__', h],
      ['a constructor name', '/v1/token/constructor', h],
    ];
    for (const [what, path, headers, method] of attempts) {
      const res = await httpGet(port, path, headers, method).catch((err: Error) => ({
        status: 0,
        body: err.message,
        headers: {},
      }));
      expect(res.status, what).toBeGreaterThanOrEqual(400);
      expect(res.status, what).toBeLessThan(500);
      expect(res.body, what).not.toContain(token);
    }
    expect((await agent.stop()).code).toBe(0);
  });
});
