import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    // The examples' vitest suites run too; node:test ones (*.node.test.ts) through test/examples.test.ts.
    include: ['test/**/*.test.ts', 'examples/**/*.test.ts'],
    exclude: ['**/node_modules/**', 'examples/**/*.node.test.ts'],
    testTimeout: 30_000,
    hookTimeout: 30_000,
    // Real servers (oidc-provider, Redis, PostgreSQL) and child processes: keep the two cores for them.
    pool: 'forks',
    maxWorkers: 2,
    fileParallelism: true,
    reporters: process.env.CI ? ['default'] : ['default'],
  },
});
