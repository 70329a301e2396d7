/**
 * Helpers of the fault suites: what a rejected promise rejected with, and the crashes a test provoked.
 */
import { onTestFinished } from 'vitest';
import type { TokenwardenError } from '../../src/errors.js';

/** What `promise` rejected with (`undefined` when it resolved). */
export const failure = (promise: Promise<unknown>): Promise<TokenwardenError | undefined> =>
  promise.then(
    () => undefined,
    (err: unknown) => err as TokenwardenError,
  );

/** Uncaught exceptions and unhandled rejections while the test runs (each one a crash in production). */
export function crashes(): unknown[] {
  const seen: unknown[] = [];
  const record = (err: unknown): void => {
    seen.push(err);
  };
  process.on('uncaughtException', record);
  process.on('unhandledRejection', record);
  onTestFinished(() => {
    process.off('uncaughtException', record);
    process.off('unhandledRejection', record);
  });
  return seen;
}
