/** Small helpers shared by benchmarks. */

/** Runs `fn` `n` times (awaiting each) and returns operations per second, after a warm-up. */
export async function opsPerSecond(fn: () => unknown, options: { ms?: number; batch?: number } = {}): Promise<number> {
  const ms = options.ms ?? 1000;
  const batch = options.batch ?? 1000;
  const until = async (duration: number): Promise<number> => {
    let ops = 0;
    const start = performance.now();
    while (performance.now() - start < duration) {
      for (let i = 0; i < batch; i++) await fn();
      ops += batch;
      // Let timers and I/O run between batches, as in a real process (a loop of resolved awaits never
      // yields to the event loop; servers in this process would starve and drop connections).
      await new Promise((resolve) => setImmediate(resolve));
    }
    return (ops * 1000) / (performance.now() - start);
  };
  await until(Math.min(300, ms / 3));
  return until(ms);
}

/** Percentile of a list of numbers. */
export function percentile(values: number[], p: number): number {
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] as number;
}

/** 12345678 → "12.3 M". */
export function si(value: number): string {
  if (value >= 1e6) return `${(value / 1e6).toFixed(1)} M`;
  if (value >= 1e3) return `${(value / 1e3).toFixed(1)} k`;
  return value.toFixed(value < 10 ? 2 : 0);
}

export function ratio(ours: number, baseline: number): string {
  return `${(ours / baseline).toFixed(2)}×`;
}

/**
 * Measures `a` and `b` in alternation (a, b, a, b, …) and returns the median ops/s of each: order effects
 * (JIT warm-up, connection pools, GC) fall on both sides instead of favouring whichever runs second.
 */
export async function compare(
  a: () => unknown,
  b: () => unknown,
  options: { ms?: number; batch?: number; rounds?: number } = {},
): Promise<[number, number]> {
  const rounds = options.rounds ?? 3;
  const ms = (options.ms ?? 1500) / rounds;
  const as: number[] = [];
  const bs: number[] = [];
  for (let i = 0; i < rounds; i++) {
    as.push(await opsPerSecond(a, { ms, ...(options.batch !== undefined && { batch: options.batch }) }));
    bs.push(await opsPerSecond(b, { ms, ...(options.batch !== undefined && { batch: options.batch }) }));
  }
  return [percentile(as, 50), percentile(bs, 50)];
}

/**
 * Ops/s of each function in each round, measured in alternating slices of `sliceMs` (after one warm-up
 * slice each), so that a change in machine load during the run affects every contender alike. The order
 * turns each round (a, b, c; b, c, a; …): no contender always runs after the same one (measured: the
 * slice after one that leaves the thread pool busy runs slower).
 */
export async function alternateRounds(
  fns: (() => unknown)[],
  options: { rounds: number; sliceMs: number },
): Promise<number[][]> {
  const rates: number[][] = fns.map(() => []);
  for (let round = -1; round < options.rounds; round++) {
    for (let q = 0; q < fns.length; q++) {
      const i = (q + Math.max(0, round)) % fns.length;
      const fn = fns[i] as () => unknown;
      let n = 0;
      const start = performance.now();
      while (performance.now() - start < options.sliceMs) {
        for (let k = 0; k < 50; k++) await fn();
        n += 50;
      }
      if (round >= 0) (rates[i] as number[]).push((n * 1000) / (performance.now() - start));
    }
  }
  return rates;
}

/** The median ops/s of each function over {@link alternateRounds}. */
export async function alternate(
  fns: (() => unknown)[],
  options: { rounds: number; sliceMs: number },
): Promise<number[]> {
  return (await alternateRounds(fns, options)).map((rates) => percentile(rates, 50));
}

/** The median over rounds of `ours[round] ÷ theirs[round]`, as "1.23×". */
export function medianRatio(ours: number[], theirs: number[]): string {
  return `${percentile(
    ours.map((x, round) => x / (theirs[round] as number)),
    50,
  ).toFixed(2)}×`;
}
