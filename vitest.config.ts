import { defineConfig } from 'vitest/config';

/**
 * The suites that run fleets of child processes against real servers (and break those servers on purpose), and
 * the demo: each one alone keeps both cores busy, so they run one file at a time, after the others.
 */
const FLEET = [
  'test/faults/**/*.test.ts',
  'test/stores/fleet.test.ts',
  'test/users/fleet.test.ts',
  'test/demo.test.ts',
];

export default defineConfig({
  test: {
    testTimeout: 30_000,
    hookTimeout: 30_000,
    // Real servers (oidc-provider, Redis, PostgreSQL) and child processes: keep the two cores for them.
    pool: 'forks',
    reporters: ['default'],
    projects: [
      {
        extends: true,
        test: {
          name: 'main',
          // The examples' vitest suites run too; node:test ones (*.node.test.ts) through test/examples.test.ts.
          include: ['test/**/*.test.ts', 'examples/**/*.test.ts'],
          exclude: ['**/node_modules/**', 'examples/**/*.node.test.ts', ...FLEET],
          maxWorkers: 2,
          fileParallelism: true,
        },
      },
      {
        extends: true,
        test: { name: 'fleet', include: FLEET, maxWorkers: 1, fileParallelism: false },
      },
    ],
  },
});
