/**
 * `npm run bench`: runs every `bench/*.bench.ts` (or those named on the command line), each in a Node
 * process of its own, and prints one table. Each module exports `run(): Promise<BenchRow[]>`; a row compares
 * ours with a baseline or a peer measured in the same process, in alternating rounds. A process per suite:
 * what one suite leaves behind (a heap of 50 000 users, servers, worker threads) does not weigh on the next.
 */
import { spawn } from 'node:child_process';
import { readdir } from 'node:fs/promises';
import { cpus } from 'node:os';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { dirname, join } from 'node:path';

export interface BenchRow {
  /** What is compared, e.g. "getToken() hot path". */
  case: string;
  /** Ours, with unit, e.g. "41.2 M ops/s". */
  ours: string;
  /** The baseline or peer, with its name, e.g. "Map lookup: 52.0 M ops/s". */
  baseline: string;
  /** ours ÷ baseline in the direction where higher is better, e.g. "0.79×". */
  ratio: string;
}

const here = dirname(fileURLToPath(import.meta.url));
const only = process.argv.slice(2);
const files = (await readdir(here))
  .filter((f) => f.endsWith('.bench.ts'))
  .filter((f) => only.length === 0 || only.some((o) => f.includes(o)))
  .sort();

/** The line a suite's process prints its rows on (anything else it prints passes through). */
const ROWS = 'BENCH_ROWS ';

const child = process.env.BENCH_SUITE_FILE;
if (child !== undefined) {
  const mod = (await import(pathToFileURL(join(here, child)).href)) as { run: () => Promise<BenchRow[]> };
  process.stdout.write(`\n${ROWS}${JSON.stringify(await mod.run())}\n`);
  process.exit(0);
}

/** Runs one suite in a process of its own (this one's Node flags: `--import tsx`) and returns its rows. */
function runSuite(file: string): Promise<BenchRow[]> {
  return new Promise((resolve, reject) => {
    const proc = spawn(process.execPath, [...process.execArgv, fileURLToPath(import.meta.url)], {
      env: { ...process.env, BENCH_SUITE_FILE: file },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let out = '';
    proc.stdout.setEncoding('utf8').on('data', (chunk: string) => (out += chunk));
    proc.on('error', reject);
    proc.on('close', (code) => {
      const lines = out.split('\n');
      const rows = lines.find((l) => l.startsWith(ROWS));
      process.stdout.write(
        lines
          .filter((l) => !l.startsWith(ROWS) && l !== '')
          .map((l) => `${l}\n`)
          .join(''),
      );
      if (code !== 0 || rows === undefined) reject(new Error(`bench/${file} failed (exit code ${code})`));
      else resolve(JSON.parse(rows.slice(ROWS.length)) as BenchRow[]);
    });
  });
}

const rows: (BenchRow & { suite: string })[] = [];
for (const file of files) {
  const suite = file.replace(/\.bench\.ts$/, '');
  process.stderr.write(`running ${suite}…\n`);
  for (const row of await runSuite(file)) rows.push({ suite, ...row });
}

const header = ['suite', 'case', 'ours', 'baseline', 'ratio'] as const;
const table = [header.map(String), ...rows.map((r) => header.map((h) => r[h]))];
const widths = header.map((_, i) => Math.max(...table.map((line) => (line[i] as string).length)));
const line = (cells: string[]) => `| ${cells.map((c, i) => c.padEnd(widths[i] as number)).join(' | ')} |`;
console.log(
  `\n${new Date().toISOString().slice(0, 10)} · Node ${process.version} · ${cpus().length} × ${cpus()[0]?.model.trim()}\n`,
);
console.log(line(table[0] as string[]));
console.log(`| ${widths.map((w) => '-'.repeat(w)).join(' | ')} |`);
for (const r of table.slice(1)) console.log(line(r));
process.exit(0);
