/**
 * Every public export (of every subpath in package.json "exports") has TSDoc with an example.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import ts from 'typescript';
import { describe, expect, it } from 'vitest';

const root = new URL('..', import.meta.url).pathname;
const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as {
  exports: Record<string, { default?: string } | string>;
};

/** dist/foo/bar.js → src/foo/bar.ts */
const entries = Object.entries(pkg.exports)
  .filter(([sub]) => !sub.endsWith('.json'))
  .map(([sub, target]) => {
    const file = typeof target === 'string' ? target : (target.default as string);
    return { sub, file: join(root, file.replace(/^\.\/dist\//, 'src/').replace(/\.js$/, '.ts')) };
  });

const program = ts.createProgram(
  entries.map((e) => e.file),
  {
    module: ts.ModuleKind.NodeNext,
    moduleResolution: ts.ModuleResolutionKind.NodeNext,
    target: ts.ScriptTarget.ES2023,
    strict: true,
    skipLibCheck: true,
  },
);
const checker = program.getTypeChecker();

function hasExample(symbol: ts.Symbol): boolean {
  const target = symbol.flags & ts.SymbolFlags.Alias ? checker.getAliasedSymbol(symbol) : symbol;
  if (target.getJsDocTags(checker).some((tag) => tag.name === 'example')) return true;
  // Classes and interfaces may carry the example on the declaration's JSDoc directly.
  return (target.declarations ?? []).some((d) => ts.getJSDocTags(d).some((tag) => tag.tagName.text === 'example'));
}

describe('documentation', () => {
  it.each(entries)('every export of $sub has TSDoc with an @example', ({ file }) => {
    const source = program.getSourceFile(file);
    expect(source, file).toBeDefined();
    const moduleSymbol = checker.getSymbolAtLocation(source as ts.SourceFile);
    const missing = checker
      .getExportsOfModule(moduleSymbol as ts.Symbol)
      .filter((symbol) => !hasExample(symbol))
      .map((symbol) => symbol.getName());
    expect(missing, `exports without an @example in ${file}`).toEqual([]);
  });
});
