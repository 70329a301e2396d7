/**
 * The time-to-expiry gauge holds each manager weakly. A manager dropped without `close()` leaves it when a
 * gauge is read — and, in a process where nothing reads it (no SDK, no registry), when the set has doubled:
 * memory stays proportional to the live managers, not to every manager the process ever made.
 */
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { describe, expect, it } from 'vitest';
import { TokenManager } from '../../src/index.js';
import { watchedCount } from '../../src/telemetry/hooks.js';

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

const source = {
  key: 'dropped',
  fetchToken: () => Promise.reject(new Error('not asked')),
};

describe('the time-to-expiry gauge without a reader', () => {
  it('forgets managers dropped without close()', async () => {
    const before = watchedCount();
    const batch = 3000;
    for (let round = 0; round < 6; round++) {
      for (let i = 0; i < batch; i++) new TokenManager({ source });
      // WeakRef targets stay alive until the job that made them ends: collect after it.
      await new Promise((resolve) => setImmediate(resolve));
      gc();
      await new Promise((resolve) => setImmediate(resolve));
    }
    new TokenManager({ source });
    // 18 000 managers made, none alive: at most a few batches' worth of dead references wait for a sweep.
    expect(watchedCount() - before).toBeLessThanOrEqual(3 * batch);
  });
});
