/**
 * The one place time comes from. Everything in tokenwarden that reads the time or waits takes a
 * {@link Clock}, so tests move time instead of sleeping.
 *
 * @module
 */

/**
 * A scheduled callback; `cancel()` is idempotent.
 *
 * @example
 * ```ts
 * const timer: Timer = clock.setTimer(() => console.log('due'), 1000);
 * timer.cancel();
 * ```
 */
export interface Timer {
  cancel(): void;
}

/**
 * A source of time and timers.
 *
 * @example
 * ```ts
 * import { TokenManager, ManualClock } from 'tokenwarden';
 * const clock = new ManualClock(Date.parse('2030-01-01T00:00:00Z'));
 * const manager = new TokenManager({ source, clock });
 * clock.advance(60_000); // one minute later, instantly
 * ```
 */
export interface Clock {
  /** Current time in epoch milliseconds. */
  now(): number;
  /**
   * Runs `callback` after `ms` milliseconds. Implementations must not keep the process alive
   * (Node timers are `unref()`'d).
   */
  setTimer(callback: () => void, ms: number): Timer;
  /**
   * Milliseconds from an arbitrary origin that never go back, whatever happens to the wall clock (an NTP step, a
   * VM restored): what timers count in. Optional; with it, a wall clock stepped back does not make a held token
   * look younger than it is, nor stretch a backoff by the size of the step.
   */
  monotonic?(): number;
}

/** Longest delay Node's timers accept; longer ones fire at once, so we wait in steps. */
export const MAX_TIMER_MS = 2_147_483_647;

/**
 * The real clock: `Date.now()` and `unref()`'d Node timers.
 *
 * @example
 * ```ts
 * import { systemClock } from 'tokenwarden';
 * console.log(new Date(systemClock.now()));
 * ```
 */
export const systemClock: Clock = {
  now: () => Date.now(),
  monotonic: () => performance.now(),
  setTimer(callback, ms) {
    let handle: NodeJS.Timeout | undefined;
    const arm = (remaining: number): void => {
      const step = Math.min(Math.max(0, remaining), MAX_TIMER_MS);
      const due = Date.now() + step;
      handle = setTimeout(() => {
        const left = remaining - step;
        if (left > 0) arm(left + (due - Date.now()));
        else callback();
      }, step);
      handle.unref();
    };
    arm(ms);
    return {
      cancel: () => {
        if (handle !== undefined) clearTimeout(handle);
        handle = undefined;
      },
    };
  },
};

/**
 * A clock that moves only when told to. Timers due by the new time run, in order, during
 * {@link ManualClock.advance}. {@link ManualClock.set} steps the wall clock alone, as NTP or a restored VM
 * does: timers, like Node's, count elapsed time ({@link ManualClock.monotonic}), which only `advance` moves. For
 * tests (yours and ours).
 *
 * @example
 * ```ts
 * import { ManualClock } from 'tokenwarden';
 * const clock = new ManualClock(0);
 * clock.setTimer(() => console.log('fired'), 1000);
 * await clock.advance(1000); // logs "fired"
 * ```
 */
export class ManualClock implements Clock {
  #now: number;
  /** Time advanced so far: the monotonic clock, on which timers fall due. */
  #elapsed = 0;
  #timers: { at: number; seq: number; callback: () => void; cancelled: boolean }[] = [];
  #seq = 0;

  constructor(start = Date.now()) {
    this.#now = start;
  }

  now(): number {
    return this.#now;
  }

  /** The time advanced since the clock was made (`set()` does not move it). */
  monotonic(): number {
    return this.#elapsed;
  }

  setTimer(callback: () => void, ms: number): Timer {
    const timer = { at: this.#elapsed + Math.max(0, ms), seq: this.#seq++, callback, cancelled: false };
    this.#timers.push(timer);
    return {
      cancel: () => {
        timer.cancelled = true;
      },
    };
  }

  /** Number of timers that have not fired or been cancelled. */
  get pendingTimers(): number {
    return this.#timers.filter((t) => !t.cancelled).length;
  }

  /**
   * Moves time forward by `ms`, running every timer that falls due, and lets pending promise callbacks
   * settle between timers (so async work a timer starts can schedule the next one).
   */
  async advance(ms: number): Promise<void> {
    const target = this.#elapsed + ms;
    const move = (to: number): void => {
      const step = Math.max(0, to - this.#elapsed);
      this.#elapsed += step;
      this.#now += step;
    };
    for (;;) {
      await settle();
      this.#timers = this.#timers.filter((t) => !t.cancelled);
      this.#timers.sort((a, b) => a.at - b.at || a.seq - b.seq);
      const next = this.#timers[0];
      if (next === undefined || next.at > target) break;
      this.#timers.shift();
      move(next.at);
      next.callback();
    }
    move(target);
    await settle();
  }

  /**
   * Sets the wall clock (forward or backward) without running timers or moving {@link ManualClock.monotonic}:
   * an NTP step, a VM restored from a snapshot.
   */
  set(epochMs: number): void {
    this.#now = epochMs;
  }
}

async function settle(): Promise<void> {
  // Several macrotask turns: lets chains of awaits started by a timer run to their next real wait.
  for (let i = 0; i < 5; i++) await new Promise<void>((resolve) => setImmediate(resolve));
}

/** Waits `ms` on `clock`, rejecting with the signal's reason when `signal` aborts. */
export function sleep(clock: Clock, ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason as Error);
      return;
    }
    const onAbort = (): void => {
      timer.cancel();
      reject(signal?.reason as Error);
    };
    const timer = clock.setTimer(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}
