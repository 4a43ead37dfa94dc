/**
 * importImage: OCI layouts (directory and tar) and docker archives into
 * committed snapshots named by chain ID, selection by ref and platform,
 * layer reuse between sibling images, every compression, progress, and
 * the image store's record.
 */
import assert from 'node:assert/strict';
import { chownSync, existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { type ImageProgress, type Info, type Snapshotter, chainIds, importImage, isInvalidArgument, isNotFound, listImages } from '../../lib/index.js';
import { OWNER_LABEL } from '../../lib/layers/index.js';
import { removeTree, tempDir, withMounted, withSnapshotter } from '../helpers/fixtures.js';
import { layerTar, makeDockerDir, makeLayout, tarDir, writeBlob, writeImage, writeIndex } from '../helpers/images.js';
import { mountTestOptions } from '../helpers/require-mount.js';

async function all(sn: Snapshotter): Promise<Info[]> {
  const out: Info[] = [];
  await sn.walk((i) => void out.push(i));
  return out.sort((a, b) => (a.name < b.name ? -1 : 1));
}

async function baseLayers(): Promise<Buffer[]> {
  return [
    await layerTar({ 'bin/': '', 'bin/tool': 'tool v1\n', 'etc/': '', 'etc/motd': 'base\n' }),
    await layerTar({ 'etc/': '', 'etc/motd': 'second\n', 'etc/.wh.gone': '' }),
  ];
}

describe('importImage', mountTestOptions(), () => {
  test('an OCI layout becomes committed snapshots named by chain ID, the top one a gc root, and the store records it', async () => {
    const dir = tempDir('ovl-img-');
    try {
      const layers = await baseLayers();
      const [w] = await makeLayout(join(dir, 'layout'), [{ ref: 'base', layers }]);
      await withSnapshotter(undefined, async (sn, root) => {
        const r = await importImage(sn, join(dir, 'layout'));
        const chains = chainIds(w!.diffIds);
        assert.equal(r.chainId, chains[1]);
        assert.equal(r.ref, 'base');
        assert.equal(r.manifestDigest, w!.manifest.digest);
        assert.equal(r.configDigest, w!.config.digest);
        assert.deepEqual(r.config.rootfs.diff_ids, w!.diffIds);
        assert.deepEqual(
          r.layers.map((l) => [l.chainId, l.digest, l.status]),
          [
            [chains[0], w!.layers[0]!.digest, 'applied'],
            [chains[1], w!.layers[1]!.digest, 'applied'],
          ],
        );
        const infos = await all(sn);
        assert.deepEqual(
          infos.map((i) => [i.name, i.kind, i.parent]),
          [
            [chains[0], 'committed', undefined],
            [chains[1], 'committed', chains[0]],
          ].sort((a, b) => (a[0]! < b[0]! ? -1 : 1)),
        );
        const top = infos.find((i) => i.name === chains[1])!;
        assert.ok(top.labels['containerd.io/gc.root'], 'the top layer is a gc root');
        for (const i of infos) assert.equal(i.labels[OWNER_LABEL], undefined, `${i.name} keeps no owner label`);
        await sn.view('look', r.chainId);
        await withMounted(await sn.mounts('look'), (target) => {
          assert.equal(readFileSync(join(target, 'etc/motd'), 'utf8'), 'second\n');
          assert.equal(readFileSync(join(target, 'bin/tool'), 'utf8'), 'tool v1\n');
        });
        await sn.remove('look');
        // The store is an OCI layout holding the image's blobs.
        const store = join(root, 'images');
        for (const d of [w!.manifest.digest, w!.config.digest, ...w!.layers.map((l) => l.digest)]) assert.ok(existsSync(join(store, 'blobs/sha256', d.slice(7))), d);
        const listed = await listImages(sn);
        assert.deepEqual(
          listed.map((i) => [i.ref, i.chainId, i.layers, i.present]),
          [['base', r.chainId, 2, true]],
        );
      });
    } finally {
      await removeTree(dir);
    }
  });

  test('a sibling image applies only its new layer; a second import of the same image applies nothing', async () => {
    const dir = tempDir('ovl-img-');
    try {
      const layers = await baseLayers();
      const extra = await layerTar({ 'app/': '', 'app/run': 'app\n' });
      await makeLayout(join(dir, 'a'), [{ ref: 'a', layers }]);
      await makeLayout(join(dir, 'b'), [{ ref: 'b', layers: [...layers, extra] }]);
      await withSnapshotter(undefined, async (sn) => {
        const a = await importImage(sn, join(dir, 'a'));
        const events: ImageProgress[] = [];
        const b = await importImage(sn, join(dir, 'b'), { onProgress: (p) => events.push(p) });
        assert.deepEqual(
          b.layers.map((l) => l.status),
          ['reused', 'reused', 'applied'],
        );
        assert.equal(b.layers[1]!.chainId, a.chainId);
        // Reused layers are not read: only the new one reports bytes as they flow.
        assert.deepEqual([...new Set(events.filter((e) => e.status === 'reading').map((e) => e.layer))], [2]);
        assert.deepEqual(
          events.filter((e) => e.status !== 'reading').map((e) => [e.layer, e.status]),
          [
            [0, 'reused'],
            [1, 'reused'],
            [2, 'applied'],
          ],
        );
        const last = events.at(-1)!;
        assert.equal(last.doneBytes, last.totalBytes);
        const again = await importImage(sn, join(dir, 'b'));
        assert.deepEqual(
          again.layers.map((l) => l.status),
          ['reused', 'reused', 'reused'],
        );
        assert.equal((await all(sn)).length, 3);
        assert.deepEqual(
          (await listImages(sn)).map((i) => i.ref),
          ['a', 'b'],
        );
      });
    } finally {
      await removeTree(dir);
    }
  });

  for (const compression of ['gzip', 'zstd', 'none'] as const) {
    test(`layers compressed with ${compression} import to the same chain ID`, async () => {
      const dir = tempDir('ovl-img-');
      try {
        const layers = await baseLayers();
        const [w] = await makeLayout(join(dir, 'layout'), [{ layers, compression }]);
        await withSnapshotter(undefined, async (sn) => {
          const r = await importImage(sn, join(dir, 'layout'));
          assert.equal(r.chainId, chainIds(w!.diffIds)[1]);
          assert.equal(r.ref, undefined);
          assert.deepEqual(
            (await listImages(sn)).map((i) => [i.ref, i.chainId]),
            [[undefined, r.chainId]],
          );
        });
      } finally {
        await removeTree(dir);
      }
    });
  }

  test('an OCI layout tar, a docker archive tar and its unpacked directory give the same chain ID', async () => {
    const dir = tempDir('ovl-img-');
    try {
      const layers = await baseLayers();
      const [w] = await makeLayout(join(dir, 'layout'), [{ ref: 'v1', layers }]);
      tarDir(join(dir, 'layout'), join(dir, 'layout.tar'));
      await makeDockerDir(join(dir, 'docker'), { layers, tags: ['example.com/app:v1'] });
      tarDir(join(dir, 'docker'), join(dir, 'docker.tar'));
      const expected = chainIds(w!.diffIds)[1];
      for (const source of ['layout.tar', 'docker.tar', 'docker']) {
        await withSnapshotter(undefined, async (sn) => {
          const r = await importImage(sn, join(dir, source));
          assert.equal(r.chainId, expected, source);
          assert.equal(r.ref, source.startsWith('docker') ? 'example.com/app:v1' : 'v1');
          // A docker archive's layers are stored as blobs too, with a manifest written for them.
          const again = await importImage(sn, join(dir, source));
          assert.equal(again.manifestDigest, r.manifestDigest);
        });
      }
    } finally {
      await removeTree(dir);
    }
  });

  test('ref selects among images, docker names match in short or full form, and a missing ref is NotFound naming the refs there', async () => {
    const dir = tempDir('ovl-img-');
    try {
      const one = [await layerTar({ one: '1' })];
      const two = [await layerTar({ two: '2' })];
      const [w1, w2] = await makeLayout(join(dir, 'layout'), [
        { ref: 'docker.io/library/busybox:1', layers: one },
        { ref: 'other', layers: two },
      ]);
      await withSnapshotter(undefined, async (sn) => {
        await assert.rejects(importImage(sn, join(dir, 'layout')), (err: Error) => isInvalidArgument(err) && /2 images match/.test(err.message) && /"other"/.test(err.message));
        const a = await importImage(sn, join(dir, 'layout'), { ref: 'busybox:1' });
        assert.equal(a.chainId, w1!.diffIds[0]);
        assert.equal(a.ref, 'docker.io/library/busybox:1');
        const b = await importImage(sn, join(dir, 'layout'), { ref: 'other' });
        assert.equal(b.chainId, w2!.diffIds[0]);
        await assert.rejects(importImage(sn, join(dir, 'layout'), { ref: 'nope' }), (err: Error) => isNotFound(err) && /"nope"/.test(err.message) && /"other"/.test(err.message));
      });
    } finally {
      await removeTree(dir);
    }
  });

  test('an image exported by containerd (its name in io.containerd.image.name, the tag alone in ref.name) is stored under its name', async () => {
    const dir = tempDir('ovl-img-');
    try {
      const layout = join(dir, 'layout');
      const [w] = await makeLayout(layout, [{ layers: [await layerTar({ f: 'x' })] }]);
      const annotations = { 'io.containerd.image.name': 'registry.example/team/app:2.1', 'org.opencontainers.image.ref.name': '2.1' };
      writeIndex(layout, [{ mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: w!.manifest.digest, size: w!.manifest.size, annotations }]);
      await withSnapshotter(undefined, async (sn) => {
        assert.equal((await importImage(sn, layout)).ref, 'registry.example/team/app:2.1');
        assert.equal((await importImage(sn, layout, { ref: '2.1' })).ref, '2.1', 'asked for by its tag, it keeps the tag');
      });
    } finally {
      await removeTree(dir);
    }
  });

  test('a multi-platform index yields the running platform by default, another when asked, and NotFound for one it lacks', async () => {
    const dir = tempDir('ovl-img-');
    try {
      const layout = join(dir, 'layout');
      const amd = await writeImage(layout, { layers: [await layerTar({ arch: 'amd64' })], platform: { os: 'linux', architecture: 'amd64' } });
      const arm = await writeImage(layout, { layers: [await layerTar({ arch: 'arm64' })], platform: { os: 'linux', architecture: 'arm64', variant: 'v8' } });
      const nested = Buffer.from(
        JSON.stringify({
          schemaVersion: 2,
          mediaType: 'application/vnd.oci.image.index.v1+json',
          manifests: [
            { mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: arm.manifest.digest, size: arm.manifest.size, platform: { os: 'linux', architecture: 'arm64', variant: 'v8' } },
            { mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: amd.manifest.digest, size: amd.manifest.size, platform: { os: 'linux', architecture: 'amd64' } },
          ],
        }),
      );
      const nestedDigest = writeBlob(layout, nested);
      writeIndex(layout, [{ mediaType: 'application/vnd.oci.image.index.v1+json', digest: nestedDigest, size: nested.length, annotations: { 'org.opencontainers.image.ref.name': 'multi' } }]);
      await withSnapshotter(undefined, async (sn) => {
        if (process.arch === 'x64') {
          const mine = await importImage(sn, layout);
          assert.equal(mine.chainId, amd.diffIds[0]);
          assert.deepEqual(mine.platform, { os: 'linux', architecture: 'amd64' });
        }
        const other = await importImage(sn, layout, { platform: 'linux/arm64' });
        assert.equal(other.chainId, arm.diffIds[0]);
        assert.equal(other.ref, 'multi');
        await assert.rejects(importImage(sn, layout, { platform: 'linux/s390x' }), (err: Error) => isNotFound(err) && /linux\/s390x/.test(err.message) && /linux\/arm64\/v8/.test(err.message));
        await assert.rejects(importImage(sn, layout, { platform: 'linux' }), (err: Error) => isInvalidArgument(err) && /linux\/amd64/.test(err.message));
      });
    } finally {
      await removeTree(dir);
    }
  });

  test('an image for another platform is NotFound unless that platform is asked for', async () => {
    const dir = tempDir('ovl-img-');
    try {
      const [w] = await makeLayout(join(dir, 'layout'), [{ layers: [await layerTar({ f: 'x' })], platform: { os: 'linux', architecture: 'riscv64' } }]);
      await withSnapshotter(undefined, async (sn) => {
        await assert.rejects(importImage(sn, join(dir, 'layout')), (err: Error) => isNotFound(err) && /linux\/riscv64/.test(err.message));
        assert.equal((await importImage(sn, join(dir, 'layout'), { platform: 'linux/riscv64' })).chainId, w!.diffIds[0]);
      });
    } finally {
      await removeTree(dir);
    }
  });

  test('a blob only root can change is linked into the store; one its owner (not root) can change is copied', async () => {
    const dir = tempDir('ovl-img-');
    try {
      const layout = join(dir, 'layout');
      const [w] = await makeLayout(layout, [{ layers: [await layerTar({ a: 'a' }), await layerTar({ b: 'b' })] }]);
      const userBlob = join(layout, 'blobs/sha256', w!.layers[1]!.digest.slice(7));
      chownSync(userBlob, 1000, 1000);
      await withSnapshotter(undefined, async (sn, root) => {
        await importImage(sn, layout);
        const stored = (d: string) => statSync(join(root, 'images/blobs/sha256', d.slice(7)));
        const rootBlob = join(layout, 'blobs/sha256', w!.layers[0]!.digest.slice(7));
        assert.equal(stored(w!.layers[0]!.digest).ino, statSync(rootBlob).ino, 'root-owned: linked');
        assert.notEqual(stored(w!.layers[1]!.digest).ino, statSync(userBlob).ino, 'user-owned: copied');
        assert.deepEqual(readFileSync(join(root, 'images/blobs/sha256', w!.layers[1]!.digest.slice(7))), readFileSync(userBlob));
        assert.deepEqual(readdirSync(join(root, 'images/ingest')), []);
      });
    } finally {
      await removeTree(dir);
    }
  });

  test('unknown options and a missing source are refused before anything is written', async () => {
    await withSnapshotter(undefined, async (sn, root) => {
      await assert.rejects(importImage(sn, '/nonexistent/image', { reff: 'x' } as never), (err: Error) => isInvalidArgument(err) && /reff/.test(err.message) && /ref/.test(err.message));
      await assert.rejects(importImage(sn, '/nonexistent/image'), (err: Error) => isNotFound(err) && /nonexistent/.test(err.message));
      assert.deepEqual(await all(sn), []);
      assert.deepEqual(readdirSync(join(root, 'images', 'blobs', 'sha256')), []);
    });
  });
});
