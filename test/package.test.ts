/**
 * The package as users get it: `npm pack`, install the tarball in an empty project (without the optional
 * drivers and frameworks), import every subpath export, and lint the package contract (publint,
 * are-the-types-wrong).
 */
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';

const run = promisify(execFile);
const root = new URL('..', import.meta.url).pathname;
const dirs: string[] = [];
afterAll(async () => {
  await Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true })));
});

describe('the published package', () => {
  it('installs from its tarball and every subpath export imports', async () => {
    const pkg = JSON.parse(await readFile(join(root, 'package.json'), 'utf8')) as {
      name: string;
      exports: Record<string, unknown>;
    };
    const packDir = await mkdtemp(join(tmpdir(), 'tw-pack-'));
    const appDir = await mkdtemp(join(tmpdir(), 'tw-app-'));
    dirs.push(packDir, appDir);
    const { stdout } = await run('npm', ['pack', '--pack-destination', packDir, '--json'], { cwd: root });
    const [{ filename, files }] = JSON.parse(stdout) as [{ filename: string; files: { path: string }[] }];
    // Only the build, README and license ship: no tests, no sources maps, no fixtures.
    expect(files.every((f) => /^(dist\/|README\.md$|LICENSE$|package\.json$)/.test(f.path))).toBe(true);
    expect(files.some((f) => f.path.endsWith('.d.ts'))).toBe(true);

    await writeFile(join(appDir, 'package.json'), JSON.stringify({ name: 'app', private: true, type: 'module' }));
    await run('npm', ['install', '--no-audit', '--no-fund', '--prefer-offline', join(packDir, filename)], {
      cwd: appDir,
    });
    const subpaths = Object.keys(pkg.exports).filter((p) => !p.endsWith('.json'));
    const script = `
      const results = {};
      for (const sub of ${JSON.stringify(subpaths)}) {
        const spec = sub === '.' ? '${pkg.name}' : '${pkg.name}/' + sub.slice(2);
        const mod = await import(spec);
        results[sub] = Object.keys(mod).sort();
      }
      console.log(JSON.stringify(results));
    `;
    const out = await run('node', ['--input-type=module', '-e', script], { cwd: appDir });
    const exported = JSON.parse(out.stdout) as Record<string, string[]>;
    expect(exported['.']).toEqual(
      expect.arrayContaining(['TokenManager', 'clientCredentials', 'refreshToken', 'TokenwardenError']),
    );
    for (const sub of subpaths) expect(exported[sub]?.length, `${sub} exports something`).toBeGreaterThan(0);
    expect(exported['./testing']).toContain('createTestAuthorizationServer');

    // The test kit works from the tarball alone: no optional peer, no dev dependency.
    const kit = `
      import { createTestAuthorizationServer } from '${pkg.name}/testing';
      import { TokenManager, clientCredentials } from '${pkg.name}';
      const as = await createTestAuthorizationServer({ algorithm: 'ES256' });
      const manager = new TokenManager({ source: clientCredentials({ issuer: as.issuer, ...as.client, allowInsecureRequests: true }) });
      console.log((await manager.getToken()).tokenType);
      await manager.close();
      await as.close();
    `;
    const started = await run('node', ['--input-type=module', '-e', kit], { cwd: appDir });
    expect(started.stdout.trim()).toBe('Bearer');

    // Without the optional @opentelemetry/api: managers work, and the registry (the agent's) still counts.
    const telemetry = `
      import { TokenManager } from 'tokenwarden';
      import { MetricsRegistry } from 'tokenwarden/telemetry';
      let missing = false;
      try { await import('@opentelemetry/api'); } catch { missing = true; }
      const registry = new MetricsRegistry();
      const source = { key: 'k', fetchToken: async () => ({ accessToken: 'a', tokenType: 'Bearer', issuedAt: Date.now(), expiresAt: Date.now() + 60000, raw: {} }) };
      const manager = new TokenManager({ source, name: 'pkg' });
      await manager.getToken();
      console.log(JSON.stringify({ missing, text: registry.text() }));
      await manager.close();
    `;
    const result = JSON.parse(
      (await run('node', ['--input-type=module', '-e', telemetry], { cwd: appDir })).stdout,
    ) as {
      missing: boolean;
      text: string;
    };
    expect(result.missing, '@opentelemetry/api is not installed with the package').toBe(true);
    expect(result.text).toMatch(/^tokenwarden_token_time_to_expiry_seconds\{[^}]*tokenwarden_name="pkg"\} \d/m);
  }, 180_000);

  it('passes publint and are-the-types-wrong', async () => {
    await run('npx', ['publint', '--strict'], { cwd: root });
    await run('npx', ['attw', '--pack', '.', '--profile', 'esm-only'], { cwd: root });
  }, 180_000);
});
