/**
 * The benches and the tests type-check with the library: `npm run build`
 * compiles lib/ alone, and tsx runs the rest without checking types, so a
 * change of a library type could leave bench/ or test/ wrong unnoticed.
 * One `tsc --noEmit` over all three, with the project's own compiler
 * options (a tsconfig written to a temp dir that extends the repo's).
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { removeTree, tempDir } from './helpers/fixtures.js';

const REPO = fileURLToPath(new URL('..', import.meta.url)).replace(/\/$/, '');

test('lib, bench and test type-check together under the project\'s compiler options', { timeout: 180_000 }, async () => {
  const dir = tempDir('ovl-typecheck-');
  try {
    const config = join(dir, 'tsconfig.json');
    writeFileSync(
      config,
      JSON.stringify({
        extends: `${REPO}/tsconfig.json`,
        compilerOptions: { noEmit: true, rootDir: REPO, typeRoots: [`${REPO}/node_modules/@types`] },
        include: ['bench/**/*.ts', 'lib/**/*.ts', 'lib/**/*.cts', 'test/**/*.ts'].map((glob) => `${REPO}/${glob}`),
      }),
    );
    const r = spawnSync(process.execPath, [`${REPO}/node_modules/typescript/bin/tsc`, '-p', config], { encoding: 'utf8' });
    assert.equal(r.status, 0, `tsc found type errors:\n${r.stdout}${r.stderr}`);
  } finally {
    await removeTree(dir);
  }
});
