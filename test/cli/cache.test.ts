/**
 * `tokenwarden token`: the cache shared by processes — concurrent invocations, encryption at rest. Against
 * a server issuing 5 min tokens: these tests are about sharing, not expiry, and must not depend on how fast
 * a busy machine starts processes. (Expiry, with 3 s tokens, is in token.test.ts.)
 */
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type TestAuthorizationServer, startAuthorizationServer } from '../support/authorization-server.js';
import { assertBuilt, filesUnder, removeHomes, runCli, tempHome } from './support.js';

let as: TestAuthorizationServer;
beforeAll(async () => {
  await assertBuilt();
  as = await startAuthorizationServer({ accessTokenTtl: 300 });
});
afterAll(async () => {
  await as?.close();
  await removeHomes();
});

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

describe('tokenwarden token (cache shared by processes)', () => {
  it('5 concurrent invocations on a cold cache make one token request and print the same token', async () => {
    const home = await tempHome();
    const env = { ...home.env, TOKENWARDEN_CLIENT_SECRET: as.clients.svc.clientSecret };
    as.resetCounts();
    const results = await Promise.all(Array.from({ length: 5 }, () => runCli(base(), env)));
    for (const r of results) expect(r.code, r.stderr).toBe(0);
    expect(new Set(results.map((r) => r.stdout)).size).toBe(1);
    expect(as.counts.token).toBe(1);
  });

  it('TOKENWARDEN_ENCRYPTION_KEY encrypts the cache at rest and still shares the token', async () => {
    const home = await tempHome();
    const env = {
      ...home.env,
      TOKENWARDEN_CLIENT_SECRET: as.clients.svc.clientSecret,
      TOKENWARDEN_ENCRYPTION_KEY: 'a'.repeat(64),
    };
    as.resetCounts();
    const a = await runCli(base(), env);
    const b = await runCli(base(), env);
    expect(a.code, a.stderr).toBe(0);
    expect(b.stdout).toBe(a.stdout);
    expect(as.counts.token).toBe(1);
    const files = (await filesUnder(join(home.dir, 'cache'))).filter((f) => !f.isDir);
    for (const f of files) expect(f.content).not.toContain(a.stdout.trim());
  });

  it('a cached token past its reuse margin is replaced; while the server is down it is still printed, with a warning', async () => {
    const home = await tempHome();
    const env = { ...home.env, TOKENWARDEN_CLIENT_SECRET: as.clients.svc.clientSecret };
    as.resetCounts();
    const first = await runCli(base(), env);
    expect(first.code, first.stderr).toBe(0);

    // Age the cached entry: 20 s left of a 300 s token is under the margin, min(30 s, 10 % of 300 s).
    const [entryFile] = (await filesUnder(join(home.dir, 'cache'))).filter((f) => f.path.endsWith('.json'));
    const entry = JSON.parse(entryFile!.content) as { value: string };
    const token = JSON.parse(entry.value) as Record<string, unknown>;
    const now = Date.now();
    const aged = { ...entry, value: JSON.stringify({ ...token, issuedAt: now - 280_000, expiresAt: now + 20_000 }) };
    await writeFile(entryFile!.path, JSON.stringify(aged));

    await as.setFault('refuse');
    let during;
    try {
      during = await runCli(base(), env);
    } finally {
      await as.clearFault();
    }
    expect(during.code, during.stderr).toBe(0);
    expect(during.stdout).toBe(first.stdout);
    expect(during.stderr).toMatch(
      /^tokenwarden: warning: could not refresh the cached token \(ERR_NETWORK: .*; it is still valid for \d+ s\n$/,
    );

    const after = await runCli(base(), env);
    expect(after.code, after.stderr).toBe(0);
    expect(after.stdout).not.toBe(first.stdout);
    expect(as.counts.token).toBe(2);
    expect(await readFile(entryFile!.path, 'utf8')).not.toContain(String(now + 20_000));
  });
});
