import { TokenwardenError } from './errors.js';

/**
 * Lets one caller stop waiting for `promise` when `signal` aborts (rejecting with `ERR_ABORTED`), without
 * cancelling the shared work behind it — other callers of the same refresh still get its result.
 */
export function abortable<T>(promise: Promise<T>, signal: AbortSignal, what: string): Promise<T> {
  const aborted = (): TokenwardenError =>
    new TokenwardenError('ERR_ABORTED', `${what} was aborted`, { cause: signal.reason });
  if (signal.aborted) return Promise.reject(aborted());
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => reject(aborted());
    signal.addEventListener('abort', onAbort, { once: true });
    promise.then(
      (value) => {
        signal.removeEventListener('abort', onAbort);
        resolve(value);
      },
      (err: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(err as Error);
      },
    );
  });
}
