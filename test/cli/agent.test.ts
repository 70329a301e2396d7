/**
 * `tokenwarden agent`, run as a child process (the built CLI) against a real authorization server issuing
 * 3 s tokens: the sink file stays valid (and private) while tokens are refreshed, through an outage, over
 * loopback HTTP, and the agent stops cleanly on SIGTERM / SIGINT.
 */
import { open, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { decodeJwt } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type TestAuthorizationServer, startAuthorizationServer } from '../support/authorization-server.js';
import {
  Agent,
  ONE_LINE_ERROR,
  assertBuilt,
  httpGet,
  removeHomes,
  runCli,
  sleep,
  tempHome,
  writeAgentConfig,
} from './support.js';

let as: TestAuthorizationServer;
let secret: string;
const agents: Agent[] = [];
beforeAll(async () => {
  await assertBuilt();
  as = await startAuthorizationServer({ accessTokenTtl: 3 });
  secret = as.clients.svc.clientSecret;
});
afterAll(async () => {
  await Promise.all(agents.map((a) => a.stop()));
  await as?.close();
  await removeHomes();
});

interface Sample {
  at: number;
  token: string | undefined;
  mode: number | undefined;
}

/** Reads the sink every 50 ms for `ms`: what it held, when, with which mode. */
async function watchSink(file: string, ms: number): Promise<Sample[]> {
  const samples: Sample[] = [];
  const end = Date.now() + ms;
  while (Date.now() < end) {
    // One open file: its content and its mode are of the same file (the agent replaces it by rename, and removes
    // it when its token runs out: a path read twice could be two files, or one and then none).
    const handle = await open(file, 'r').catch(() => undefined);
    const at = Date.now();
    let token: string | undefined;
    let mode: number | undefined;
    if (handle !== undefined) {
      try {
        mode = (await handle.stat()).mode & 0o777;
        token = await handle.readFile('utf8');
      } finally {
        await handle.close();
      }
    }
    samples.push({ at, token, mode });
    await sleep(50);
  }
  return samples;
}

async function waitForFile(file: string, timeoutMs = 10_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    if (
      await stat(file).then(
        () => true,
        () => false,
      )
    )
      return;
    await sleep(25);
  }
  throw new Error(`${file} did not appear`);
}

const expiredAt = (sample: Sample): boolean => (decodeJwt(sample.token as string).exp as number) * 1000 <= sample.at;

async function agentConfig(
  dir: string,
  extra: Record<string, unknown> = {},
  name = 'agent.json',
): Promise<{ file: string; sink: string }> {
  const sink = join(dir, 'run', 'svc.token');
  const file = await writeAgentConfig(dir, as.issuer, { svc: { sink: { file: sink } }, extra, name });
  return { file, sink };
}

function startAgentProcess(args: string[], env: Record<string, string>): Agent {
  const agent = new Agent(args, env);
  agents.push(agent);
  return agent;
}

describe('tokenwarden agent', () => {
  it('with requireRequestHeader, serves the token only to requests that carry Tokenwarden-Request: 1', async () => {
    const home = await tempHome();
    const { file } = await agentConfig(home.dir, { requireRequestHeader: true });
    const agent = startAgentProcess(['agent', '--config', file], { ...home.env, SVC_SECRET: secret });
    const port = (await agent.waitForLog((l) => l['msg'] === 'listening'))['port'] as number;
    await agent.waitForLog((l) => l['msg'] === 'token obtained');
    expect((await httpGet(port, '/v1/token/svc')).status, 'without the request header').toBe(400);
    expect((await httpGet(port, '/v1/token/svc', { 'tokenwarden-request': '1' })).status).toBe(200);
    expect((await agent.stop()).code).toBe(0);
  });

  it('keeps the sink file holding a valid token for 6 s, serves it on loopback, stops on SIGTERM', async () => {
    const home = await tempHome();
    const { file, sink } = await agentConfig(home.dir);
    const agent = startAgentProcess(['agent', '--config', file], { ...home.env, SVC_SECRET: secret });
    const listening = await agent.waitForLog((l) => l['msg'] === 'listening');
    const port = listening['port'] as number;
    await waitForFile(sink);

    const samples = await watchSink(sink, 6000);
    const tokens = samples.map((s) => s.token);
    const logs = `\n${agent.stdout}${agent.stderr}`;
    expect(tokens.filter((t) => t === undefined).length, `the sink was never missing${logs}`).toBe(0);
    expect(samples.filter(expiredAt).length, `never an expired token${logs}`).toBe(0);
    expect(new Set(tokens).size, `several distinct tokens${logs}`).toBeGreaterThanOrEqual(3);
    expect(new Set(samples.map((s) => s.mode))).toEqual(new Set([0o600]));
    expect((await stat(join(home.dir, 'run'))).mode & 0o777).toBe(0o700);

    // The loopback endpoint.
    const ok = await httpGet(port, '/v1/token/svc');
    expect(ok.status).toBe(200);
    expect(ok.headers['cache-control']).toBe('no-store');
    const body = JSON.parse(ok.body) as Record<string, unknown>;
    expect(decodeJwt(body['access_token'] as string)['client_id']).toBe('svc');
    expect(body['token_type']).toBe('Bearer');
    expect(Date.parse(body['expires_at'] as string)).toBeGreaterThan(Date.now());
    const health = await httpGet(port, '/v1/health');
    expect(health.status).toBe(200);
    expect(JSON.parse(health.body)).toMatchObject({ status: 'ok', tokens: { svc: { valid: true } } });
    expect((await httpGet(port, '/v1/token/other', { 'tokenwarden-request': '1' })).status).toBe(404);
    expect((await httpGet(port, '/v1/tokens')).status).toBe(404);
    expect((await httpGet(port, '/v1/token/svc', { 'tokenwarden-request': '1' }, 'POST')).status).toBe(405);
    expect((await httpGet(port, '/v1/health', { host: 'attacker.example' })).status, 'DNS rebinding').toBe(403);
    expect((await httpGet(port, '/v1/health', { origin: 'https://attacker.example' })).status, 'browsers').toBe(403);

    const { code, signal } = await agent.stop();
    expect(signal).toBeNull();
    expect(code).toBe(0);
    expect(agent.logs().some((l) => l['msg'] === 'stopped')).toBe(true);
    await expect(stat(sink), 'the sink is removed on stop').rejects.toThrow(/ENOENT/);
    expect(agent.stdout + agent.stderr).not.toContain(secret);
    for (const line of agent.logs())
      expect(line).toMatchObject({ time: expect.any(String), level: expect.any(String) });
  });

  it('through a 2 s outage of the authorization server: never an expired token, fresh ones after (YAML config, SIGINT)', async () => {
    const home = await tempHome();
    const sink = join(home.dir, 'svc.token');
    const file = join(home.dir, 'agent.yaml');
    await writeFile(
      file,
      [
        'tokens:',
        '  svc:',
        `    issuer: ${as.issuer}`,
        '    clientId: svc',
        '    clientSecretFile: svc.secret',
        '    scope: read',
        '    allowInsecureRequests: true',
        '    sink:',
        '      file: svc.token',
        '',
      ].join('\n'),
    );
    await writeFile(join(home.dir, 'svc.secret'), `${secret}\n`, { mode: 0o600 });
    const agent = startAgentProcess(['agent', '--config', file], home.env);
    await waitForFile(sink);
    await sleep(500);

    // The outage is timed here (not by a timer in this busy process), so its end is the moment it really ended.
    const outageStart = Date.now();
    let outageEnd = Infinity;
    const outage = (async () => {
      await as.setFault('refuse');
      await sleep(2000);
      await as.clearFault();
      outageEnd = Date.now();
    })();
    const samples = await watchSink(sink, 7000);
    await outage;
    const logs = (): string => `\n${agent.stdout}${agent.stderr}`;

    const held = samples.filter((s) => s.token !== undefined);
    expect(held.filter(expiredAt).length, `never an expired token${logs()}`).toBe(0);
    expect(new Set(held.map((s) => s.mode))).toEqual(new Set([0o600]));
    const after = new Set(held.filter((s) => s.at > outageEnd + 2000).map((s) => s.token));
    const before = new Set(held.filter((s) => s.at < outageStart).map((s) => s.token));
    expect(after.size, `a token obtained after the outage${logs()}`).toBeGreaterThan(0);
    for (const t of after) expect(before.has(t)).toBe(false);
    const failures = agent.logs().filter((l) => l['msg'] === 'refresh failed; retrying');
    expect(failures.length).toBeGreaterThan(0);
    expect(failures[0]).toMatchObject({ level: 'warn', token: 'svc', code: 'ERR_NETWORK' });

    agent.child.kill('SIGINT');
    expect(await agent.exited).toEqual({ code: 0, signal: null });
    expect(agent.stdout + agent.stderr).not.toContain(secret);
  });

  it('a wrong secret at start-up exits 1 with one line, without the secret', async () => {
    const home = await tempHome();
    const { file, sink } = await agentConfig(home.dir);
    const wrong = `${secret}-wrong`;
    const agent = startAgentProcess(['agent', '--config', file], { ...home.env, SVC_SECRET: wrong });
    const { code } = await agent.exited;
    expect(code).toBe(1);
    const lastLine = agent.stderr.trimEnd().split('\n').at(-1) as string;
    expect(`${lastLine}\n`).toMatch(ONE_LINE_ERROR);
    expect(lastLine).toContain('invalid_client');
    expect(agent.stdout + agent.stderr).not.toContain(wrong);
    await expect(stat(sink)).rejects.toThrow(/ENOENT/);
  });
});

describe('tokenwarden agent configuration errors (exit 2, ERR_CONFIG naming the field)', () => {
  it.each([
    ['a listen address that is not loopback', { listen: '0.0.0.0:8790' }, 'not a loopback address'],
    ['a listen address without a port', { listen: '127.0.0.1' }, 'listen'],
    ['an unknown top-level field', { tokenz: {} }, 'unknown field tokenz'],
    ['no tokens', { tokens: {} }, 'tokens is empty'],
    [
      'a secret in the file',
      { tokens: { a: { issuer: 'https://x.example', clientId: 'a', clientSecret: 'hunter2-secret' } } },
      'tokens.a.clientSecret',
    ],
    [
      'a token without a secret source',
      { tokens: { a: { issuer: 'https://x.example', clientId: 'a', sink: { file: 'a' } } } },
      'clientSecretEnv or clientSecretFile',
    ],
    [
      'a token without an issuer',
      { tokens: { a: { clientId: 'a', clientSecretEnv: 'A', sink: { file: 'a' } } } },
      'issuer or tokenEndpoint',
    ],
    [
      'a misspelt field',
      {
        tokens: {
          a: { issuer: 'https://x.example', clientId: 'a', clientSecretEnv: 'A', scopes: 'r', sink: { file: 'a' } },
        },
      },
      'tokens.a.scopes',
    ],
    [
      'a bad scope',
      {
        tokens: {
          a: { issuer: 'https://x.example', clientId: 'a', clientSecretEnv: 'A', scope: 3, sink: { file: 'a' } },
        },
      },
      'tokens.a.scope',
    ],
    [
      'nowhere to publish',
      { listen: undefined, tokens: { a: { issuer: 'https://x.example', clientId: 'a', clientSecretEnv: 'A' } } },
      'no sink',
    ],
    [
      'an unset secret variable',
      {
        tokens: {
          a: { issuer: 'https://x.example', clientId: 'a', clientSecretEnv: 'UNSET_VARIABLE', sink: { file: 'a' } },
        },
      },
      'UNSET_VARIABLE',
    ],
  ])('%s', async (_name, extra, mentions) => {
    const home = await tempHome();
    const { file } = await agentConfig(home.dir, extra);
    const result = await runCli(['agent', '--config', file], { ...home.env, SVC_SECRET: secret });
    expect(result.code, result.stderr).toBe(2);
    expect(result.stderr).toMatch(ONE_LINE_ERROR);
    expect(result.stderr).toContain('ERR_CONFIG');
    expect(result.stderr).toContain(mentions);
    expect(result.stderr).not.toContain('hunter2');
  });

  it('invalid JSON names the position, not the content', async () => {
    const home = await tempHome();
    const file = join(home.dir, 'agent.json');
    await writeFile(file, '{ "tokens": { "a": { "clientSecret": "hunter2-secret", } } }');
    const result = await runCli(['agent', '--config', file], home.env);
    expect(result.code).toBe(2);
    expect(result.stderr).toMatch(ONE_LINE_ERROR);
    expect(result.stderr).toMatch(/not valid JSON \(line 1, column \d+\)/);
    expect(result.stderr).not.toContain('hunter2');
  });

  it('a missing --config is a usage error', async () => {
    const home = await tempHome();
    const result = await runCli(['agent'], home.env);
    expect(result.code).toBe(2);
    expect(result.stderr).toMatch(ONE_LINE_ERROR);
  });
});
