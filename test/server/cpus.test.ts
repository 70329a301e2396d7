/**
 * The cores the signature checks are sized for: a container's cgroup CPU limit (v2 `cpu.max`, v1 CFS quota) lowers
 * `os.availableParallelism()`, read as the kernel lays the files out (an injected reader stands for /proc and
 * /sys: a quota cannot be set on the test machine). Hostile or odd contents are no limit, never a throw.
 */
import { describe, expect, it } from 'vitest';
import { cgroupCpuLimit, usableCores } from '../../src/server/cpus.js';

const files =
  (tree: Record<string, string>) =>
  (path: string): string | undefined =>
    tree[path];

describe('usableCores', () => {
  it('cgroup v2: a quota of 1.5 CPU in the namespace root makes 2 cores of 16; "max" is no limit', () => {
    const v2 = (max: string) => files({ '/proc/self/cgroup': '0::/\n', '/sys/fs/cgroup/cpu.max': `${max}\n` });
    expect(cgroupCpuLimit(v2('150000 100000'))).toBe(1.5);
    expect(usableCores(v2('150000 100000'), 16)).toBe(2);
    expect(usableCores(v2('max 100000'), 16)).toBe(16);
    expect(usableCores(v2('50000 100000'), 16)).toBe(1); // half a CPU: still one core
    expect(usableCores(v2('800000 100000'), 4)).toBe(4); // a limit above the CPUs it may run on changes nothing
  });

  it('cgroup v2: the lowest limit along the path counts (a parent slice limits its children)', () => {
    const read = files({
      '/proc/self/cgroup': '0::/kubepods.slice/pod1/ctr\n',
      '/sys/fs/cgroup/kubepods.slice/pod1/ctr/cpu.max': 'max 100000',
      '/sys/fs/cgroup/kubepods.slice/pod1/cpu.max': '200000 100000',
      '/sys/fs/cgroup/kubepods.slice/cpu.max': '1600000 100000',
    });
    expect(cgroupCpuLimit(read)).toBe(2);
    expect(usableCores(read, 64)).toBe(2);
  });

  it('cgroup v1: the CFS quota and period of the cpu controller, where a container mounts its own cgroup at the root', () => {
    const read = files({
      '/proc/self/cgroup': '4:memory:/docker/abc\n2:cpuacct,cpu:/docker/abc\n0::/\n',
      '/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us': '300000\n',
      '/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us': '100000\n',
    });
    expect(usableCores(read, 32)).toBe(3);
    const unlimited = files({
      '/proc/self/cgroup': '1:cpu:/\n',
      '/sys/fs/cgroup/cpu/cpu.cfs_quota_us': '-1\n',
      '/sys/fs/cgroup/cpu/cpu.cfs_period_us': '100000\n',
    });
    expect(cgroupCpuLimit(unlimited)).toBeUndefined();
    expect(usableCores(unlimited, 32)).toBe(32);
  });

  it('nothing readable (another OS, the permission model), or contents that are no limit: availableParallelism()', () => {
    expect(usableCores(() => undefined, 8)).toBe(8);
    const odd = [
      '0 100000',
      '100000 0',
      '-5 100000',
      '1e9 100000',
      'max',
      '',
      '100000',
      '99999999999999999999 1',
      'NaN NaN',
      '\u0000',
      '100000 100000 extra',
    ];
    for (const content of odd) {
      const read = files({ '/proc/self/cgroup': '0::/../../etc\n', '/sys/fs/cgroup/etc/cpu.max': content });
      const cores = usableCores(read, 8);
      if (content === '100000 100000 extra')
        expect(cores).toBe(1); // the two numbers it has are read
      else expect(cores).toBe(8);
    }
    // A /proc/self/cgroup that is not one: no limit, no throw.
    expect(usableCores(files({ '/proc/self/cgroup': 'garbage\n:::\n' + 'x'.repeat(10_000) }), 8)).toBe(8);
    expect(usableCores(files({}), 0)).toBe(1); // never less than one
  });

  it('on this machine: at most availableParallelism(), at least 1', async () => {
    const { availableParallelism } = await import('node:os');
    const cores = usableCores();
    expect(cores).toBeGreaterThanOrEqual(1);
    expect(cores).toBeLessThanOrEqual(availableParallelism());
  });
});
