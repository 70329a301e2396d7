/**
 * `npm run bench`: runs every `bench/*.bench.ts` (or those named on the command line) in this one
 * process and prints one table. Each module exports `run(): Promise<BenchRow[]>`; a row compares ours
 * with a baseline or a peer measured in the same run.
 */
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

const rows: (BenchRow & { suite: string })[] = [];
for (const file of files) {
  const suite = file.replace(/\.bench\.ts$/, '');
  process.stderr.write(`running ${suite}…\n`);
  const mod = (await import(pathToFileURL(join(here, file)).href)) as { run: () => Promise<BenchRow[]> };
  for (const row of await mod.run()) rows.push({ suite, ...row });
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
