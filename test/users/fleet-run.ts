/**
 * Runs UserTokens worker processes (fleet-worker.ts) together: the users fleet test and the users fault test.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import type { WorkerConfig, WorkerResult } from './fleet-worker.js';

const worker = fileURLToPath(new URL('./fleet-worker.ts', import.meta.url));

/** Starts `count` workers, waits until all are ready, starts them together and collects their results. */
export async function runFleet(count: number, config: WorkerConfig, started?: () => void): Promise<WorkerResult[]> {
  const children: ChildProcess[] = [];
  try {
    const workers = Array.from({ length: count }, () => {
      const child = spawn(process.execPath, ['--import', 'tsx', worker, JSON.stringify(config)], {
        stdio: ['pipe', 'pipe', 'inherit'],
      });
      children.push(child);
      const lines = createInterface({ input: child.stdout! });
      const ready = new Promise<void>((resolve, reject) => {
        lines.once('line', (line) => (line === 'ready' ? resolve() : reject(new Error(`worker said ${line}`))));
        child.once('exit', (code) => reject(new Error(`worker exited with ${code} before it was ready`)));
      });
      // The result counts once the worker has exited by itself (after closing cleanly).
      const result = new Promise<WorkerResult>((resolve, reject) => {
        let last: WorkerResult | undefined;
        lines.on('line', (line) => {
          if (line.startsWith('{')) last = JSON.parse(line) as WorkerResult;
        });
        child.once('exit', (code) =>
          code === 0 && last !== undefined ? resolve(last) : reject(new Error(`worker exited with ${code}`)),
        );
      });
      result.catch(() => undefined);
      return { child, ready, result };
    });
    await Promise.all(workers.map((s) => s.ready));
    for (const { child } of workers) child.stdin!.write('go\n');
    started?.();
    return await Promise.all(workers.map((s) => s.result));
  } finally {
    // Only after a failure: a worker killed mid-refresh loses the rotated refresh token.
    for (const child of children) if (child.exitCode === null) child.kill();
  }
}
