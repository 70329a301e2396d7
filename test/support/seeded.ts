/**
 * A seeded pseudo-random source for tests that make cases at random: the same seed gives the same cases on
 * every machine, so a failure names its case and reproduces.
 */

/**
 * `pick(n)`: an integer in `[0, n)`, from a linear congruential generator started at `seed`.
 *
 * @example
 * ```ts
 * const pick = seeded(7662);
 * const value = VALUES[pick(VALUES.length)];
 * ```
 */
export function seeded(seed: number): (n: number) => number {
  let state = seed >>> 0;
  return (n) => {
    state = (Math.imul(state, 1103515245) + 12345) >>> 0;
    return (state >>> 8) % n;
  };
}
