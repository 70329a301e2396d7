/**
 * How many cores this process can keep busy: what `os.availableParallelism()` says (the CPUs it may run on),
 * lowered to a container's CPU limit. A cgroup quota (`docker run --cpus=1`, Kubernetes `resources.limits.cpu`)
 * lets a process run on every core of a 64-core node for 1 core's worth of time: the libuv of Node 20 (before
 * 1.49) does not read it, and threads sized to 64 cores would only be throttled. Read as Go's runtime does since
 * 1.25 (the limit of the process's cgroup and of its ancestors, rounded up), from cgroup v2 (`cpu.max`) or v1
 * (`cpu.cfs_quota_us` / `cpu.cfs_period_us`), once.
 */
import { readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';

/** Reads a small file; `undefined` when it is not there or cannot be read (another OS, Node's permission model). */
export type ReadSmallFile = (path: string) => string | undefined;

const readSmallFile: ReadSmallFile = (path) => {
  try {
    return readFileSync(path, 'utf8').slice(0, 4096);
  } catch {
    return undefined;
  }
};

/**
 * The CPU limit of this process's cgroup in cores (`1.5` for 150 000 µs every 100 000 µs), the lowest along its
 * path and at the mount's root; `undefined` when there is none (`max`, `-1`), or nothing can be read.
 *
 * @example
 * ```ts
 * cgroupCpuLimit(); // 2 in a container started with --cpus=2; undefined on a machine without a limit
 * ```
 */
export function cgroupCpuLimit(read: ReadSmallFile = readSmallFile): number | undefined {
  const limits: number[] = [];
  const lines = (read('/proc/self/cgroup') ?? '').split('\n').slice(0, 64);
  for (const line of lines) {
    const match = /^\d+:([^:]*):(\/.*)$/.exec(line.trim());
    if (match === null) continue;
    const [, controllers = '', path = '/'] = match;
    if (controllers === '') {
      // cgroup v2: `cpu.max` is "<quota> <period>" or "max <period>".
      for (const dir of upwards('/sys/fs/cgroup', path)) {
        const limit = ratio(read(`${dir}/cpu.max`)?.trim().split(/\s+/));
        if (limit !== undefined) limits.push(limit);
      }
    } else if (controllers.split(',').includes('cpu')) {
      for (const mount of ['/sys/fs/cgroup/cpu', '/sys/fs/cgroup/cpu,cpuacct', '/sys/fs/cgroup/cpuacct,cpu']) {
        for (const dir of upwards(mount, path)) {
          const quota = read(`${dir}/cpu.cfs_quota_us`)?.trim();
          const period = read(`${dir}/cpu.cfs_period_us`)?.trim();
          const limit = ratio([quota, period]);
          if (limit !== undefined) limits.push(limit);
        }
      }
    }
  }
  return limits.length === 0 ? undefined : Math.min(...limits);
}

/**
 * The cores to size work for: `os.availableParallelism()`, at most the cgroup CPU limit rounded up, at least 1.
 *
 * @example
 * ```ts
 * usableCores(); // 1 in a container limited to 0.5 CPU on a 16-core host; 16 without a limit
 * ```
 */
export function usableCores(read: ReadSmallFile = readSmallFile, available = availableParallelism()): number {
  const limit = cgroupCpuLimit(read);
  return Math.max(1, Math.min(available, limit === undefined ? available : Math.ceil(limit)));
}

/** A cgroup's directory and its ancestors' under a mount point, the deepest first (at most 32 levels). */
function* upwards(mount: string, path: string): Generator<string> {
  const parts = path.split('/').filter((p) => p !== '' && p !== '.' && p !== '..');
  for (let n = Math.min(parts.length, 32); n >= 0; n--) yield [mount, ...parts.slice(0, n)].join('/');
}

/** Quota over period, when both are positive whole numbers (a quota of `max` or `-1` is no limit). */
function ratio(fields: readonly (string | undefined)[] | undefined): number | undefined {
  const [quota, period] = fields ?? [];
  if (quota === undefined || period === undefined || !/^\d{1,15}$/.test(quota) || !/^\d{1,15}$/.test(period)) {
    return undefined;
  }
  const q = Number(quota);
  const p = Number(period);
  return q > 0 && p > 0 ? q / p : undefined;
}

let measured: number | undefined;

/**
 * {@link usableCores} of this process, read once.
 *
 * @example
 * ```ts
 * const lanes = Math.min(processCores() - 1, 4);
 * ```
 */
export function processCores(): number {
  return (measured ??= usableCores());
}
