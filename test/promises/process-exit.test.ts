/**
 * "Timers are unref()'d so a library never keeps a process alive" (STYLE.md §3; README: `background` refreshes on
 * an `unref()`'d timer). Each case is a real program (a child process) that uses one piece of tokenwarden against
 * the test kit's authorization server and ends its main module without calling `close()`: it must exit by itself.
 * A timer, socket or interval left ref'd (a background refresh, a backoff retry, a store's generation watch, a
 * verifier's key refresh or cache sweep) keeps it running, and the test fails naming the case.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type TestAuthorizationServer, createTestAuthorizationServer } from '../../src/testing/index.js';
import type { ExitCase, ExitConfig } from './exit-child.js';

const CHILD = fileURLToPath(new URL('./exit-child.ts', import.meta.url));
/** How long a program that is done may take to exit (tsx compiles it first). Not a speed check: a kept-alive one never exits. */
const EXIT_WITHIN_MS = 20_000;

let as: TestAuthorizationServer;
let dir: string;
let deadEndpoint: string;
beforeAll(async () => {
  as = await createTestAuthorizationServer({ accessTokenTtl: '60s' });
  dir = await mkdtemp(join(tmpdir(), 'tokenwarden-exit-'));
  const probe = createServer().listen(0, '127.0.0.1');
  await once(probe, 'listening');
  const { port } = probe.address() as { port: number };
  await new Promise((resolve) => probe.close(resolve));
  deadEndpoint = `http://127.0.0.1:${port}/token`;
});
afterAll(async () => {
  await as.close();
  await rm(dir, { recursive: true, force: true });
});

/** Runs the child; resolves to how it ended, or `'kept alive'` if it had not exited within {@link EXIT_WITHIN_MS}. */
async function run(
  config: ExitConfig,
): Promise<{ code: number | null; stdout: string; stderr: string } | 'kept alive'> {
  const child: ChildProcess = spawn(process.execPath, ['--import', 'tsx', CHILD, JSON.stringify(config)], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, NODE_NO_WARNINGS: '1' },
  });
  let stdout = '';
  let stderr = '';
  child.stdout?.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
  let timer: NodeJS.Timeout | undefined;
  const exited = once(child, 'exit').then(([code]) => ({ code: code as number | null, stdout, stderr }));
  const deadline = new Promise<'kept alive'>((resolve) => {
    timer = setTimeout(() => resolve('kept alive'), EXIT_WITHIN_MS);
  });
  const outcome = await Promise.race([exited, deadline]);
  clearTimeout(timer);
  if (outcome === 'kept alive') {
    child.kill('SIGKILL');
    await exited;
    return stdout.includes('done') ? 'kept alive' : { code: null, stdout, stderr: `${stderr}(never got done)` };
  }
  return outcome;
}

async function config(which: ExitCase): Promise<ExitConfig> {
  const base = {
    case: which,
    issuer: as.issuer,
    ...as.client,
    audience: as.audience,
    dir: join(dir, which),
    deadEndpoint,
  };
  if (which === 'users') return { ...base, login: { ...(await as.issueTokens({ sub: 'alice', scope: 'openid' })) } };
  if (which.startsWith('verifier')) return { ...base, accessToken: await as.mintAccessToken({ sub: 'alice' }) };
  return base;
}

describe('a program that leaves tokenwarden open exits by itself (no ref’d timer, socket or interval)', () => {
  const cases: [ExitCase, string][] = [
    ['manager', 'a TokenManager holding a token on a FileStore (background refresh scheduled)'],
    ['manager-failing', 'a TokenManager whose server is unreachable (background retries pending)'],
    ['users', 'UserTokens with a signed-in user on a FileStore'],
    ['verifier', 'a verifier with keys loaded (their background refresh, the recent-token sweep)'],
    ['verifier-introspection', 'an introspecting verifier with a cached answer'],
  ];
  for (const [which, what] of cases) {
    it(which + ': ' + what, { timeout: EXIT_WITHIN_MS + 10_000 }, async () => {
      const outcome = await run(await config(which));
      expect(outcome).not.toBe('kept alive');
      if (outcome === 'kept alive') return;
      expect(outcome.stderr).toBe('');
      expect(outcome).toMatchObject({ code: 0, stdout: 'done\n' });
    });
  }
});
