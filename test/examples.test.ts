/**
 * The examples' node:test suites run as users run them (their vitest suites are in vitest's include): a
 * documented pattern that stopped working would fail here.
 */
import { execFile } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';

const run = promisify(execFile);
const root = new URL('..', import.meta.url).pathname;
const suites = readdirSync(new URL('../examples/testing/', import.meta.url)).filter((f) => f.endsWith('.node.test.ts'));

describe('examples run with node:test', () => {
  it.each(suites)(
    'examples/testing/%s passes',
    async (file) => {
      const { stdout } = await run('node', ['--import', 'tsx', '--test', `examples/testing/${file}`], {
        cwd: root,
        timeout: 60_000,
      });
      expect(stdout).toMatch(/# fail 0/);
      expect(stdout).toMatch(/# pass [1-9]/);
    },
    90_000,
  );
});
