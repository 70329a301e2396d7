/**
 * The README's first command: `npm run demo` ends by itself with a summary, and exits 0 only when no caller
 * failed and no expired token was served (through the outage it stages). Run in the `fleet` project: its two
 * workers call getToken() as fast as they can for 25 s, which would slow the suites running beside it.
 */
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const ROOT = fileURLToPath(new URL('..', import.meta.url));

describe('npm run demo', () => {
  it('rides out the outage: exit 0, no failed call, no expired token, no request to the AS after the restart', async () => {
    const child = spawn(process.execPath, ['--import', 'tsx', 'demo/demo.ts'], {
      cwd: ROOT,
      env: { ...process.env, NO_COLOR: '1' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout.on('data', (chunk: Buffer) => (out += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (out += chunk.toString()));
    const code = await new Promise<number | null>((resolve) => child.on('exit', resolve));
    expect(out).toMatch(/authorization server DOWN/);
    expect(out).toMatch(/authorization server back/);
    expect(out).toMatch(/after a restart: token \w{8} read from the store, 0 request\(s\) to the AS/);
    expect(out).toMatch(/failed getToken\(\) calls +0\n/);
    expect(out).toMatch(/expired tokens served +0\n/);
    expect(out).toMatch(/outage ridden out +2\.5 s, callers kept the still-valid token/);
    expect(code).toBe(0);
  }, 90_000);
});
