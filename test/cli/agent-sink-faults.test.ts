/**
 * The agent's sinks when the file system is not on its side, in process (`startAgent`, no build needed),
 * against the real authorization server issuing 3 s tokens: a sink that cannot be updated must not keep a
 * token past its margin ("a sink holds a valid token or nothing"); a sink under a directory another user
 * owns is refused, like one in a world-writable directory; a path through a file, a directory in place of
 * the sink and a listen port in use are configuration errors (ERR_CONFIG), never an internal error.
 */
import { chmod, chown, mkdir, open, readdir, stat, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { decodeJwt } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Logger, type RunningAgent, startAgent } from '../../src/cli/agent.js';
import type { AgentConfig, AgentTokenConfig } from '../../src/cli/config.js';
import { isTokenwardenError } from '../../src/errors.js';
import { type TestAuthorizationServer, startAuthorizationServer } from '../support/authorization-server.js';
import { removeHomes, sleep, tempHome } from './support.js';

const isRoot = process.geteuid?.() === 0;
const NOBODY = 65_534;

let as: TestAuthorizationServer;
const running: RunningAgent[] = [];
beforeAll(async () => {
  as = await startAuthorizationServer({ accessTokenTtl: 3 });
});
afterAll(async () => {
  await Promise.all(running.map((a) => a.stop()));
  await as?.close();
  await removeHomes();
});

/** A logger keeping its lines. */
function memoryLog(): Logger & { lines: { level: string; msg: string; fields: Record<string, unknown> }[] } {
  const lines: { level: string; msg: string; fields: Record<string, unknown> }[] = [];
  const at =
    (level: string) =>
    (msg: string, fields: Record<string, unknown> = {}): void => {
      lines.push({ level, msg, fields });
    };
  return { lines, debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error') };
}

/** A configuration with one token `svc` (secret from a 0600 file in `dir`) and the sink `sink`. */
async function config(dir: string, sink: string | undefined, extra: Partial<AgentConfig> = {}): Promise<AgentConfig> {
  const secretFile = join(dir, 'svc.secret');
  await writeFile(secretFile, as.clients.svc.clientSecret, { mode: 0o600 });
  const token: AgentTokenConfig = {
    issuer: as.issuer,
    clientId: 'svc',
    clientSecretFile: secretFile,
    allowInsecureRequests: true,
    ...(sink !== undefined && { sink: { file: sink, format: 'token' } }),
  };
  return { file: join(dir, 'agent.json'), tokens: { svc: token }, ...extra };
}

/** What `startAgent` rejects with. */
async function startError(cfg: AgentConfig): Promise<unknown> {
  return startAgent(cfg, memoryLog()).then(
    (agent) => {
      running.push(agent);
      return undefined;
    },
    (err: unknown) => err,
  );
}

/** The sink's token and when it was read, or `undefined` when there is no file (read from one open file). */
async function readSink(file: string): Promise<{ at: number; token: string } | undefined> {
  const handle = await open(file, 'r').catch(() => undefined);
  if (handle === undefined) return undefined;
  try {
    const at = Date.now();
    return { at, token: await handle.readFile('utf8') };
  } finally {
    await handle.close();
  }
}

const expired = (sample: { at: number; token: string }): boolean =>
  (decodeJwt(sample.token).exp as number) * 1000 <= sample.at;

describe('tokenwarden agent: a sink that cannot be updated', () => {
  it('does not keep a token past its expiry while writes fail; holds a valid one again once they work', async () => {
    const home = await tempHome();
    const dir = join(home.dir, 'run');
    const sink = join(dir, 'svc.token');
    const log = memoryLog();
    const agent = await startAgent(await config(home.dir, sink), log);
    running.push(agent);
    for (let i = 0; i < 200 && (await readSink(sink)) === undefined; i++) await sleep(25);
    expect(await readSink(sink)).toBeDefined();

    // Every user may now write the directory: each write is refused (the agent's own check) — a failure that
    // lasts, as a full disk would. The file keeps what was written before.
    await chmod(dir, 0o777);
    const samples: { at: number; token: string }[] = [];
    let absent = 0;
    for (const end = Date.now() + 5000; Date.now() < end; await sleep(50)) {
      const sample = await readSink(sink);
      if (sample === undefined) absent++;
      else samples.push(sample);
    }
    expect(
      log.lines.some((l) => l.msg === 'cannot update the sink file; trying again'),
      'the writes failed',
    ).toBe(true);
    expect(samples.filter(expired), 'samples holding an expired token').toEqual([]);
    expect(absent, 'the file was removed once its token ran out').toBeGreaterThan(0);

    // Writable again: the next attempt (within 5 s) puts a valid token back.
    await chmod(dir, 0o700);
    let back: { at: number; token: string } | undefined;
    for (const end = Date.now() + 8000; back === undefined && Date.now() < end; await sleep(50)) {
      back = await readSink(sink);
    }
    expect(back, 'a token is back in the sink').toBeDefined();
    expect(expired(back as { at: number; token: string })).toBe(false);
    await agent.stop();
    expect(await readSink(sink)).toBeUndefined();
  }, 30_000);
});

describe('tokenwarden agent: where a sink may be', () => {
  it.skipIf(!isRoot)('a sink directory, or a directory above it, that belongs to another user is refused', async () => {
    const home = await tempHome();
    const theirs = join(home.dir, 'theirs');
    await mkdir(theirs, { mode: 0o755 });
    await chown(theirs, NOBODY, NOBODY); // another user's directory, which only they may write: they can swap files
    for (const sink of [join(theirs, 'svc.token'), join(theirs, 'sub', 'svc.token')]) {
      const err = await startError(await config(home.dir, sink));
      expect(isTokenwardenError(err) && err.code, String(err)).toBe('ERR_CONFIG');
      expect((err as Error).message).toContain('belongs to another user');
    }
    expect(await readdir(theirs), 'nothing was created in their directory').toEqual([]);
  });

  it('a path through a file and a directory in place of the sink are configuration errors', async () => {
    const home = await tempHome();
    await writeFile(join(home.dir, 'a-file'), '');
    await mkdir(join(home.dir, 'a-dir'), { mode: 0o700 });
    for (const sink of [join(home.dir, 'a-file', 'svc.token'), join(home.dir, 'a-dir')]) {
      const err = await startError(await config(home.dir, sink));
      expect(isTokenwardenError(err) && err.code, String(err)).toBe('ERR_CONFIG');
      expect((err as Error).message).toMatch(/tokens\.svc\.sink: .*not a (file|directory)/);
    }
    expect((await stat(join(home.dir, 'a-dir'))).isDirectory()).toBe(true);
  });

  it('a listen address in use is a configuration error naming listen', async () => {
    const home = await tempHome();
    const taken = createServer();
    await new Promise<void>((r) => taken.listen(0, '127.0.0.1', () => r()));
    try {
      const { port } = taken.address() as { port: number };
      const err = await startError(await config(home.dir, undefined, { listen: { host: '127.0.0.1', port } }));
      expect(isTokenwardenError(err) && err.code, String(err)).toBe('ERR_CONFIG');
      expect((err as Error).message).toContain(`listen: cannot listen on 127.0.0.1:${port} (EADDRINUSE)`);
    } finally {
      await new Promise<void>((r) => taken.close(() => r()));
    }
  });
});
