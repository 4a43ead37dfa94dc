/**
 * exportImage: a built snapshot over an imported base as an OCI layout or
 * a docker archive; base blobs reused, new layers diffed; the config's
 * diff_ids and history; byte-for-byte determinism across runs and roots;
 * round trips through importImage.
 */
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync, readdirSync, rmSync, unlinkSync, writeFileSync, chmodSync } from 'node:fs';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import {
  type Info,
  type Snapshotter,
  chainIds,
  exportImage,
  importImage,
  isFailedPrecondition,
  isInvalidArgument,
  listImages,
  removeImage,
} from '../../lib/index.js';
import { removeTree, tempDir, withMounted, withSnapshotter } from '../helpers/fixtures.js';
import { layerTar, makeLayout, sha } from '../helpers/images.js';
import { mountTestOptions } from '../helpers/require-mount.js';

interface Built {
  base: string;
  baseDigests: string[];
}

/** Imports a two-layer base and prepares `build` on it with a file added, one changed, one deleted and a mode changed. */
async function buildOnBase(sn: Snapshotter, dir: string): Promise<Built> {
  const layout = join(dir, 'base');
  const [w] = await makeLayout(layout, [
    {
      ref: 'base',
      layers: [await layerTar({ 'bin/': '', 'bin/tool': 'tool\n', 'etc/': '', 'etc/motd': 'hello\n', 'etc/old': 'old\n' }), await layerTar({ 'etc/': '', 'etc/extra': 'x\n' })],
      run: { Cmd: ['/bin/tool'] },
    },
  ]);
  const r = await importImage(sn, layout);
  await sn.prepare('build', r.chainId);
  await withMounted(await sn.mounts('build'), (root) => {
    mkdirSync(join(root, 'app'));
    writeFileSync(join(root, 'app/new'), 'new file\n');
    writeFileSync(join(root, 'etc/motd'), 'changed\n');
    unlinkSync(join(root, 'etc/old'));
    chmodSync(join(root, 'bin/tool'), 0o700);
  });
  return { base: r.chainId, baseDigests: w!.layers.map((l) => l.digest) };
}

function readJson(path: string): Record<string, unknown> & Record<string, any> {
  return JSON.parse(readFileSync(path, 'utf8'));
}

function blob(layout: string, digest: string): string {
  return join(layout, 'blobs', 'sha256', digest.slice(7));
}

/** Every file of a tree, relative path -> bytes (hex digest). */
function files(dir: string, rel = ''): Record<string, string> {
  const out: Record<string, string> = {};
  for (const name of readdirSync(join(dir, rel)).sort()) {
    const r = rel === '' ? name : `${rel}/${name}`;
    try {
      Object.assign(out, files(dir, r));
    } catch {
      out[r] = sha(readFileSync(join(dir, r)));
    }
  }
  return out;
}

async function walkAll(sn: Snapshotter): Promise<Info[]> {
  const out: Info[] = [];
  await sn.walk((i) => void out.push(i));
  return out;
}

describe('exportImage', mountTestOptions(), () => {
  test('an active over an imported base: base blobs reused, one new layer, config with diff_ids, history and the base config', async () => {
    const dir = tempDir('ovl-img-exp-');
    try {
      await withSnapshotter(undefined, async (sn) => {
        const built = await buildOnBase(sn, dir);
        const out = join(dir, 'out');
        const r = await exportImage(sn, 'build', out, { ref: 'app:1', sourceDateEpoch: 1_700_000_000, history: [{ created_by: 'RUN make' }], config: { Env: ['A=1'] } });
        assert.deepEqual(
          r.layers.map((l) => [l.status, l.snapshot]),
          [
            ['reused', chainIds(r.layers.slice(0, 1).map((l) => l.diffId))[0]],
            ['reused', built.base],
            ['diffed', 'build'],
          ],
        );
        assert.deepEqual(r.layers.slice(0, 2).map((l) => l.digest), built.baseDigests, 'the base blobs, byte for byte');
        assert.equal(r.layers[2]!.mediaType, 'application/vnd.oci.image.layer.v1.tar+gzip');
        const index = readJson(join(out, 'index.json'));
        assert.equal(index.manifests.length, 1);
        assert.equal(index.manifests[0].digest, r.manifestDigest);
        assert.equal(index.manifests[0].annotations['org.opencontainers.image.ref.name'], 'app:1');
        assert.deepEqual(readJson(join(out, 'oci-layout')), { imageLayoutVersion: '1.0.0' });
        const manifest = readJson(blob(out, r.manifestDigest));
        assert.deepEqual(manifest.layers.map((l: { digest: string }) => l.digest), r.layers.map((l) => l.digest));
        const config = readJson(blob(out, manifest.config.digest));
        assert.deepEqual(config.rootfs.diff_ids, r.layers.map((l) => l.diffId));
        assert.equal(chainIds(config.rootfs.diff_ids).at(-1), r.chainId);
        assert.equal(config.created, '2023-11-14T22:13:20Z');
        assert.deepEqual(config.config, { Env: ['A=1'], Cmd: ['/bin/tool'] });
        assert.deepEqual(
          config.history.map((h: { created_by: string }) => h.created_by),
          ['step 0', 'step 1', 'RUN make'],
        );
        for (const l of r.layers) assert.equal(sha(readFileSync(blob(out, l.digest))), l.digest);
        // No helper view is left behind.
        assert.deepEqual((await walkAll(sn)).filter((i) => i.kind === 'view'), []);
      });
    } finally {
      await removeTree(dir);
    }
  });

  test('the same build in two roots exports the same bytes, and so does a second run', async () => {
    const dir = tempDir('ovl-img-exp-');
    try {
      const trees: Record<string, string>[] = [];
      for (const run of [1, 2]) {
        await withSnapshotter(undefined, async (sn) => {
          mkdirSync(join(dir, `run${run}`));
          await buildOnBase(sn, join(dir, `run${run}`));
          for (const again of [1, 2]) {
            const out = join(dir, `run${run}`, `out${again}`);
            process.env.SOURCE_DATE_EPOCH = '1700000000';
            try {
              await exportImage(sn, 'build', out, { ref: 'app' });
            } finally {
              delete process.env.SOURCE_DATE_EPOCH;
            }
            trees.push(files(out));
            await exportImage(sn, 'build', `${out}.tar`, { ref: 'app', format: 'docker-archive', sourceDateEpoch: 1_700_000_000 });
            trees.push({ tar: sha(readFileSync(`${out}.tar`)) });
          }
        });
      }
      assert.deepEqual(trees[2], trees[0]);
      assert.deepEqual(trees[4], trees[0]);
      assert.deepEqual(trees[6], trees[0]);
      assert.deepEqual(trees[3], trees[1]);
      assert.deepEqual(trees[7], trees[1]);
    } finally {
      await removeTree(dir);
    }
  });

  test('our export, imported again (OCI, zstd, docker archive), gives the chain ID the export reports and the tree we built', async () => {
    const dir = tempDir('ovl-img-exp-');
    try {
      await withSnapshotter(undefined, async (sn) => {
        await buildOnBase(sn, dir);
        const want = await withMounted(await sn.mounts('build'), (root) => readFileSync(join(root, 'etc/motd'), 'utf8'));
        const outputs = [
          await exportImage(sn, 'build', join(dir, 'oci'), { ref: 'gz' }),
          await exportImage(sn, 'build', join(dir, 'zst'), { ref: 'zst', compression: 'zstd' }),
          await exportImage(sn, 'build', join(dir, 'docker.tar'), { ref: 'example.com/app:v2', format: 'docker-archive' }),
          await exportImage(sn, 'build', join(dir, 'oci.tar'), { format: 'oci-archive' }),
        ];
        assert.equal(outputs[1]!.layers[2]!.mediaType, 'application/vnd.oci.image.layer.v1.tar+zstd');
        assert.ok(outputs[2]!.layers.every((l) => l.mediaType === 'application/vnd.oci.image.layer.v1.tar' && l.digest === l.diffId), 'a docker archive holds plain tars');
        const docker = JSON.parse(readFileSync(join(dir, 'docker.tar')).toString('latin1').match(/\[\{"Config".*?\}\]/)![0]);
        assert.deepEqual(docker[0].RepoTags, ['example.com/app:v2']);
        for (const [i, target] of ['oci', 'zst', 'docker.tar', 'oci.tar'].entries()) {
          await withSnapshotter(undefined, async (other) => {
            const back = await importImage(other, join(dir, target));
            assert.equal(back.chainId, outputs[i]!.chainId, target);
            await other.view('look', back.chainId);
            await withMounted(await other.mounts('look'), (root) => {
              assert.equal(readFileSync(join(root, 'etc/motd'), 'utf8'), want);
              assert.equal(readFileSync(join(root, 'app/new'), 'utf8'), 'new file\n');
              assert.throws(() => readFileSync(join(root, 'etc/old')), /ENOENT/);
            });
          });
        }
      });
    } finally {
      await removeTree(dir);
    }
  });

  test('a committed chain of our own layers is diffed layer by layer through views, and an export of just the base is the base itself', async () => {
    const dir = tempDir('ovl-img-exp-');
    try {
      await withSnapshotter(undefined, async (sn) => {
        await buildOnBase(sn, dir);
        await sn.commit('step1', 'build');
        await sn.prepare('build2', 'step1');
        await withMounted(await sn.mounts('build2'), (root) => writeFileSync(join(root, 'second'), '2\n'));
        await sn.commit('step2', 'build2');
        const r = await exportImage(sn, 'step2', join(dir, 'out'), { layerHistory: { created_by: 'RUN step' } });
        assert.deepEqual(
          r.layers.map((l) => l.status),
          ['reused', 'reused', 'diffed', 'diffed'],
        );
        const config = readJson(blob(join(dir, 'out'), readJson(blob(join(dir, 'out'), r.manifestDigest)).config.digest));
        assert.deepEqual(config.history.map((h: { created_by: string }) => h.created_by).slice(2), ['RUN step', 'RUN step']);
        assert.equal(config.created, undefined, 'no time without sourceDateEpoch');
        assert.deepEqual((await walkAll(sn)).filter((i) => i.kind === 'view'), []);
        const [base] = await listImages(sn);
        const same = await exportImage(sn, base!.chainId, join(dir, 'base'));
        assert.equal(same.manifestDigest, base!.manifestDigest, 'nothing added: the base manifest as imported');
      });
    } finally {
      await removeTree(dir);
    }
  });

  test('a second export into the same layout adds the image; a directory that is not a layout is refused', async () => {
    const dir = tempDir('ovl-img-exp-');
    try {
      await withSnapshotter(undefined, async (sn) => {
        const built = await buildOnBase(sn, dir);
        const out = join(dir, 'out');
        await exportImage(sn, built.base, out, { ref: 'base' });
        const r = await exportImage(sn, 'build', out, { ref: 'app' });
        const index = readJson(join(out, 'index.json'));
        assert.deepEqual(index.manifests.map((m: { annotations: Record<string, string> }) => m.annotations['org.opencontainers.image.ref.name']), ['base', 'app']);
        const again = await exportImage(sn, 'build', out, { ref: 'app', config: { Cmd: ['other'] } });
        assert.notEqual(again.manifestDigest, r.manifestDigest);
        assert.equal(readJson(join(out, 'index.json')).manifests.length, 2, 'same ref replaced');
        mkdirSync(join(dir, 'junk'));
        writeFileSync(join(dir, 'junk', 'file'), 'x');
        await assert.rejects(exportImage(sn, 'build', join(dir, 'junk')), (err: Error) => isFailedPrecondition(err) && /not an OCI image layout/.test(err.message));
      });
    } finally {
      await removeTree(dir);
    }
  });

  test('a view, bad options and a history of the wrong length are refused; nothing is left at the target', async () => {
    const dir = tempDir('ovl-img-exp-');
    try {
      await withSnapshotter(undefined, async (sn) => {
        const built = await buildOnBase(sn, dir);
        await sn.view('v', built.base);
        await assert.rejects(exportImage(sn, 'v', join(dir, 'o1')), (err: Error) => isFailedPrecondition(err) && /view/.test(err.message));
        await assert.rejects(exportImage(sn, 'build', join(dir, 'o2'), { compresion: 'zstd' } as never), (err: Error) => isInvalidArgument(err) && /compresion/.test(err.message));
        await assert.rejects(exportImage(sn, 'build', join(dir, 'o3'), { history: [{}, {}] }), (err: Error) => isInvalidArgument(err) && /2 entries for 1 new layers/.test(err.message));
        await assert.rejects(exportImage(sn, 'build', join(dir, 'o4.tar'), { format: 'docker-archive', ref: 'Not A Ref' }), (err: Error) => isInvalidArgument(err) && /docker reference/.test(err.message));
        assert.deepEqual(readdirSync(dir).filter((n) => n.startsWith('o') || n.startsWith('.o')), []);
      });
    } finally {
      await removeTree(dir);
    }
  });

  test('image rm drops the record, the blobs no other image uses and the gc root; prune then removes the layers', async () => {
    const dir = tempDir('ovl-img-exp-');
    try {
      await withSnapshotter(undefined, async (sn, root) => {
        const built = await buildOnBase(sn, dir);
        await sn.remove('build');
        const blobsBefore = readdirSync(join(root, 'images/blobs/sha256')).length;
        assert.equal(blobsBefore, 4);
        const r = await removeImage(sn, 'base');
        assert.deepEqual(r.released, [built.base]);
        assert.deepEqual(readdirSync(join(root, 'images/blobs/sha256')), []);
        assert.equal((await sn.stat(built.base)).labels['containerd.io/gc.root'], undefined);
        const pruned = await sn.prune();
        assert.equal(pruned.removed.length, 2);
        assert.deepEqual(await listImages(sn), []);
        rmSync(join(dir, 'base'), { recursive: true });
      });
    } finally {
      await removeTree(dir);
    }
  });
});
