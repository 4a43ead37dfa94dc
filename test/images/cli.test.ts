/**
 * `overlay-snapshotter image import|export|ls|rm`: JSON shapes, human
 * output, exit codes, and the progress bar on a terminal.
 */
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { chainIds } from '../../lib/index.js';
import { cliAt, inTerminal, json, terminalSkipReason } from '../helpers/cli.js';
import { removeTree, tempDir } from '../helpers/fixtures.js';
import { layerTar, makeLayout } from '../helpers/images.js';
import { mountTestOptions } from '../helpers/require-mount.js';

describe('image commands', mountTestOptions(), () => {
  test('import --json prints the chain ID; export, ls and rm work on it; errors keep their exit codes', async () => {
    const dir = tempDir('ovl-img-cli-');
    try {
      const root = join(dir, 'root');
      const [w] = await makeLayout(join(dir, 'layout'), [{ ref: 'base', layers: [await layerTar({ 'etc/': '', 'etc/motd': 'hi\n' }), await layerTar({ 'app': 'app\n' })] }]);
      const imp = await cliAt(root, ['--json', 'image', 'import', join(dir, 'layout'), '--ref', 'base']);
      assert.equal(imp.code, 0, imp.stderr);
      const got = json<{ chainId: string; ref: string; layers: { status: string }[] }>(imp);
      assert.equal(got.chainId, chainIds(w!.diffIds)[1]);
      assert.equal(got.ref, 'base');
      assert.deepEqual(got.layers.map((l) => l.status), ['applied', 'applied']);

      const human = await cliAt(root, ['image', 'import', join(dir, 'layout')]);
      assert.equal(human.code, 0, human.stderr);
      assert.match(human.stdout, /^LAYER +STATUS +SIZE +CHAIN ID\n +0 +reused /);
      assert.match(human.stdout, new RegExp(`Chain ID: +${got.chainId}`));

      assert.equal((await cliAt(root, ['prepare', 'build', got.chainId])).code, 0);
      const exp = await cliAt(root, ['--json', 'image', 'export', 'build', join(dir, 'out'), '--ref', 'app', '--source-date-epoch', '0', '--created-by', 'RUN nothing']);
      assert.equal(exp.code, 0, exp.stderr);
      const e = json<{ manifestDigest: string; chainId: string; layers: { status: string }[] }>(exp);
      assert.deepEqual(e.layers.map((l) => l.status), ['reused', 'reused', 'diffed']);
      assert.ok(existsSync(join(dir, 'out', 'blobs', 'sha256', e.manifestDigest.slice(7))));
      const config = JSON.parse(readFileSync(join(dir, 'out', 'blobs', 'sha256', JSON.parse(readFileSync(join(dir, 'out', 'blobs', 'sha256', e.manifestDigest.slice(7)), 'utf8')).config.digest.slice(7)), 'utf8'));
      assert.equal(config.history.at(-1).created_by, 'RUN nothing');
      assert.equal(config.created, '1970-01-01T00:00:00Z');

      const tar = await cliAt(root, ['image', 'export', 'build', join(dir, 'app.tar'), '--format', 'docker-archive', '--ref', 'app:v1']);
      assert.equal(tar.code, 0, tar.stderr);
      assert.match(tar.stdout, /\(docker-archive\)/);

      const ls = await cliAt(root, ['--json', 'image', 'ls']);
      assert.deepEqual(json<{ ref: string; chainId: string; present: boolean }[]>(ls).map((i) => [i.ref, i.chainId, i.present]), [['base', got.chainId, true]]);
      const lsHuman = await cliAt(root, ['image', 'ls']);
      assert.match(lsHuman.stdout, /^REF +PLATFORM +LAYERS +SIZE +CHAIN ID +SNAPSHOT\nbase +linux\/\w+ +2 /);

      assert.equal((await cliAt(root, ['image', 'import', join(dir, 'layout'), '--ref', 'nope'])).code, 3);
      assert.equal((await cliAt(root, ['image', 'import', join(dir, 'layout'), '--platform', 'bogus'])).code, 2);
      assert.equal((await cliAt(root, ['view', 'v', got.chainId])).code, 0);
      const viewExport = await cliAt(root, ['image', 'export', 'v', join(dir, 'v-out')]);
      assert.equal(viewExport.code, 5, viewExport.stderr);
      assert.equal((await cliAt(root, ['image', 'export', 'build', join(dir, 'x'), '--format', 'squashfs'])).code, 2);

      const rm = await cliAt(root, ['--json', 'image', 'rm', 'base']);
      assert.equal(rm.code, 0, rm.stderr);
      assert.deepEqual(json<{ released: string[] }>(rm).released, [got.chainId]);
      assert.equal((await cliAt(root, ['image', 'rm', 'base'])).code, 3);
    } finally {
      await removeTree(dir);
    }
  });

  test('image import draws a progress bar of layers and bytes on a terminal', { skip: terminalSkipReason() }, async () => {
    const dir = tempDir('ovl-img-cli-');
    try {
      const root = join(dir, 'root');
      await makeLayout(join(dir, 'layout'), [{ layers: [await layerTar({ a: 'a'.repeat(100_000) }), await layerTar({ b: 'b'.repeat(100_000) })] }]);
      const r = await inTerminal(['--root', root, 'image', 'import', join(dir, 'layout')]);
      assert.equal(r.code, 0, r.output);
      assert.match(r.output, /import \[█+\] 100% \| 2\/2 layers \| [\d.]+ [KM]?i?B\/[\d.]+ [KM]?i?B \| /);
    } finally {
      await removeTree(dir);
    }
  });
});
