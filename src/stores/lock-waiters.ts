import { type Clock, sleep } from '../clock.js';

/**
 * Waits for an in-process lock to become free: wakes on `notify(key)` or when the holder's lease runs
 * out, until `deadline`. Shared by stores whose locks live in this process (memory) or that can be
 * woken locally (file).
 */
export class LockWaiters {
  readonly #waiters = new Map<string, Set<() => void>>();

  constructor(readonly clock: Clock) {}

  /** Wakes everyone waiting on `key`. */
  notify(key: string): void {
    const set = this.#waiters.get(key);
    if (!set) return;
    this.#waiters.delete(key);
    for (const wake of set) wake();
  }

  /** Resolves when notified for `key` or after `ms`, whichever is first; rejects when `signal` aborts. */
  async wait(key: string, ms: number, signal?: AbortSignal): Promise<void> {
    let wake!: () => void;
    const notified = new Promise<void>((resolve) => {
      wake = resolve;
    });
    let set = this.#waiters.get(key);
    if (!set) this.#waiters.set(key, (set = new Set()));
    set.add(wake);
    const controller = new AbortController();
    const onAbort = (): void => controller.abort(signal?.reason);
    signal?.addEventListener('abort', onAbort, { once: true });
    try {
      await Promise.race([notified, sleep(this.clock, Math.max(0, ms), controller.signal)]);
    } finally {
      set.delete(wake);
      signal?.removeEventListener('abort', onAbort);
      controller.abort();
    }
    if (signal?.aborted) throw signal.reason as Error;
  }
}
