/**
 * Moving a manual clock while something waits on it: waits that begin only after a few store calls (a settle, a
 * lock wait) cannot be reached by one `advance()`, which fires only the timers set before it.
 */
import type { ManualClock } from '../../src/clock.js';

/**
 * Moves `clock` in steps of `stepMs` until `promise` settles (at most 1000 steps), yielding between steps: to the
 * next macrotask, or for `realMs` of real time when the waiter does real I/O in between (a FileStore).
 */
export async function whileMoving<T>(
  clock: ManualClock,
  promise: Promise<T>,
  { stepMs = 100, realMs = 0 }: { stepMs?: number; realMs?: number } = {},
): Promise<T> {
  let done = false;
  promise.then(
    () => (done = true),
    () => (done = true),
  );
  for (let i = 0; i < 1000 && !done; i++) {
    await clock.advance(stepMs);
    await new Promise((resolve) => (realMs > 0 ? setTimeout(resolve, realMs) : setImmediate(resolve)));
  }
  return promise;
}
