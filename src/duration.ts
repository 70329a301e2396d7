import { TokenwardenError } from './errors.js';

/**
 * A duration: milliseconds as a number, or a string with a unit — `'250ms'`, `'30s'`, `'5m'`, `'1h'`, `'1d'`.
 *
 * @example
 * ```ts
 * const refresh: RefreshPolicyOptions = { beforeExpiry: '30s', every: '5m' };
 * ```
 */
export type Duration = number | `${number}${'ms' | 's' | 'm' | 'h' | 'd'}`;

const UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/**
 * Converts a {@link Duration} to milliseconds; throws `ERR_CONFIG` naming the option when it is invalid.
 *
 * @example
 * ```ts
 * toMs('30s', 'beforeExpiry'); // 30000
 * ```
 */
export function toMs(value: Duration, name: string): number {
  if (typeof value === 'number') {
    if (Number.isFinite(value) && value >= 0) return value;
  } else if (typeof value === 'string') {
    const match = /^(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)$/.exec(value.trim());
    if (match) return Number(match[1]) * (UNITS[match[2] as string] as number);
  }
  throw new TokenwardenError(
    'ERR_CONFIG',
    `${name} must be a non-negative number of milliseconds or a string like '30s', '5m', '1h'`,
  );
}
