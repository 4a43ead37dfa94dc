/**
 * Hostile images: every one is refused with InvalidArgumentError, and the
 * store is left as it was, except for layers below the bad one that were
 * completely applied and verified (committed, reusable).
 */
import assert from 'node:assert/strict';
import { closeSync, openSync, readFileSync, renameSync, symlinkSync, truncateSync, writeFileSync, ftruncateSync } from 'node:fs';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { type Info, type Snapshotter, chainIds, importImage, isInvalidArgument, listImages } from '../../lib/index.js';
import { removeTree, tempDir, withSnapshotter } from '../helpers/fixtures.js';
import { type WrittenImage, layerTar, makeDockerDir, makeLayout, sha, tarDir, writeBlob, writeIndex } from '../helpers/images.js';
import { mountTestOptions } from '../helpers/require-mount.js';

async function names(sn: Snapshotter): Promise<string[]> {
  const out: Info[] = [];
  await sn.walk((i) => void out.push(i));
  return out.map((i) => `${i.kind}:${i.name}`).sort();
}

/** A three-layer image whose layout `spoil` then damages; the import must fail with a message matching `message`. */
async function refused(
  spoil: (layout: string, w: WrittenImage) => void | Promise<void>,
  message: RegExp,
  expectCommitted: (w: WrittenImage) => string[] = () => [],
): Promise<void> {
  const dir = tempDir('ovl-img-bad-');
  try {
    const layout = join(dir, 'layout');
    const [w] = await makeLayout(layout, [
      { ref: 'x', layers: [await layerTar({ a: 'a'.repeat(5000) }), await layerTar({ b: 'b'.repeat(5000) }), await layerTar({ c: 'c'.repeat(5000) })] },
    ]);
    await spoil(layout, w!);
    await withSnapshotter(undefined, async (sn) => {
      await assert.rejects(importImage(sn, layout), (err: Error) => {
        assert.ok(isInvalidArgument(err), `expected InvalidArgumentError, got ${err.name}: ${err.message}`);
        assert.match(err.message, message);
        return true;
      });
      assert.deepEqual(await names(sn), expectCommitted(w!).map((n) => `committed:${n}`).sort(), 'only verified layers stay, and no active');
      assert.deepEqual(await listImages(sn), []);
    });
  } finally {
    await removeTree(dir);
  }
}

function blobFile(layout: string, digest: string): string {
  return join(layout, 'blobs', 'sha256', digest.slice(7));
}

/** Rewrites the manifest with `change` applied and points index.json at the result. */
function rewriteManifest(layout: string, w: WrittenImage, change: (m: Record<string, unknown> & { layers: Record<string, unknown>[]; config: Record<string, unknown> }) => void): void {
  const m = JSON.parse(w.manifest.bytes.toString());
  change(m);
  const bytes = Buffer.from(JSON.stringify(m));
  const digest = writeBlob(layout, bytes);
  writeIndex(layout, [{ mediaType: 'application/vnd.oci.image.manifest.v1+json', digest, size: bytes.length }]);
}

describe('hostile images', mountTestOptions(), () => {
  test('a layer blob whose digest does not match is refused, and the layers below it stay committed', async () => {
    await refused(
      async (layout, w) => {
        // Same size, other content: only the digest tells.
        const other = Buffer.from(readFileSync(blobFile(layout, w.layers[1]!.digest)));
        const tar = await layerTar({ b: 'B'.repeat(5000) });
        const { gzipSync } = await import('node:zlib');
        const forged = gzipSync(tar);
        writeFileSync(blobFile(layout, w.layers[1]!.digest), forged.length === other.length ? forged : Buffer.concat([forged, Buffer.alloc(0)]));
        rewriteManifest(layout, w, (m) => {
          m.layers[1]!.size = forged.length;
        });
      },
      /does not match its digest|diffID/,
      (w) => [chainIds(w.diffIds)[0]!],
    );
  });

  test('a truncated layer blob is refused', async () => {
    await refused((layout, w) => truncateSync(blobFile(layout, w.layers[0]!.digest), w.layers[0]!.size - 10), /is \d+ bytes, its descriptor declares|truncated|unexpected end|not a valid/);
  });

  test('a layer longer than its descriptor says is refused as it is read', async () => {
    await refused(
      (layout, w) =>
        rewriteManifest(layout, w, (m) => {
          m.layers[2]!.size = (m.layers[2]!.size as number) - 1;
        }),
      /larger than the \d+ bytes its descriptor declares/,
      (w) => chainIds(w.diffIds).slice(0, 2),
    );
  });

  test('a manifest naming a blob outside the layout (../) is refused', async () => {
    await refused(
      (layout, w) =>
        rewriteManifest(layout, w, (m) => {
          m.layers[0]!.digest = 'sha256:../../../etc/passwd';
        }),
      /malformed digest/,
    );
  });

  test('a docker archive naming a layer outside itself (../) is refused', async () => {
    const dir = tempDir('ovl-img-bad-');
    try {
      await makeDockerDir(join(dir, 'docker'), { layers: [await layerTar({ a: 'a' })] });
      const manifest = JSON.parse(readFileSync(join(dir, 'docker', 'manifest.json'), 'utf8'));
      manifest[0].Layers[0] = '../../etc/passwd';
      writeFileSync(join(dir, 'docker', 'manifest.json'), JSON.stringify(manifest));
      tarDir(join(dir, 'docker'), join(dir, 'docker.tar'));
      for (const source of ['docker', 'docker.tar']) {
        await withSnapshotter(undefined, async (sn) => {
          await assert.rejects(importImage(sn, join(dir, source)), (err: Error) => isInvalidArgument(err) && /outside the image/.test(err.message));
          assert.deepEqual(await names(sn), []);
        });
      }
    } finally {
      await removeTree(dir);
    }
  });

  test('a config declared (or found) to be gigabytes is refused without being read', async () => {
    await refused(
      (layout, w) =>
        rewriteManifest(layout, w, (m) => {
          m.config.size = 5 * 1024 ** 3;
        }),
      /declares 5368709120 bytes, more than the \d+ allowed/,
    );
  });

  test('an index.json of gigabytes is refused without being read', async () => {
    await refused((layout) => {
      const fd = openSync(join(layout, 'index.json'), 'r+');
      ftruncateSync(fd, 3 * 1024 ** 3); // sparse: no disk used
      closeSync(fd);
    }, /index\.json" is 3221225472 bytes, more than/);
  });

  test('a layout whose blobs/ is a symlink is refused, not followed', async () => {
    await refused((layout) => {
      renameSync(join(layout, 'blobs'), join(layout, '..', 'elsewhere'));
      symlinkSync('../elsewhere', join(layout, 'blobs'));
    }, /"blobs" is a symlink/);
  });

  test('a blob that is a symlink is refused, not followed', async () => {
    await refused((layout, w) => {
      const path = blobFile(layout, w.config.digest);
      renameSync(path, `${path}.real`);
      symlinkSync(`${path}.real`, path);
    }, /is a symlink/);
  });

  test('a config or manifest that does not match its digest is refused', async () => {
    await refused((layout, w) => {
      const path = blobFile(layout, w.config.digest);
      const bytes = readFileSync(path);
      bytes[bytes.length - 2] = '}'.charCodeAt(0) === bytes[bytes.length - 2] ? 0x20 : bytes[bytes.length - 2]! ^ 1;
      writeFileSync(path, bytes);
    }, /does not match its digest/);
  });

  test('a foreign (non-distributable) layer and an unknown media type are refused, naming the type', async () => {
    await refused(
      (layout, w) =>
        rewriteManifest(layout, w, (m) => {
          m.layers[1]!.mediaType = 'application/vnd.oci.image.layer.nondistributable.v1.tar+gzip';
          m.layers[1]!.urls = ['https://example.invalid/layer'];
        }),
      /foreign \(non-distributable\) layer/,
    );
    await refused(
      (layout, w) =>
        rewriteManifest(layout, w, (m) => {
          m.layers[0]!.mediaType = 'application/vnd.example.squashfs';
        }),
      /unsupported layer media type "application\/vnd\.example\.squashfs"/,
    );
  });

  test('a layer whose content is not what its media type declares is refused', async () => {
    await refused(
      (layout, w) =>
        rewriteManifest(layout, w, (m) => {
          m.layers[0]!.mediaType = 'application/vnd.oci.image.layer.v1.tar+zstd';
        }),
      /media type says zstd, its content is gzip/,
    );
  });

  test('a config whose diff_ids do not match the layers is refused before the layer is committed', async () => {
    await refused((layout, w) => {
      const config = JSON.parse(w.config.bytes.toString());
      config.rootfs.diff_ids[0] = sha(Buffer.from('something else'));
      const bytes = Buffer.from(JSON.stringify(config));
      const digest = writeBlob(layout, bytes);
      rewriteManifest(layout, w, (m) => {
        m.config = { ...m.config, digest, size: bytes.length };
      });
    }, /diffID is sha256:[0-9a-f]+, expected/);
  });

  test('a compressed archive is refused with what to do', async () => {
    const dir = tempDir('ovl-img-bad-');
    try {
      writeFileSync(join(dir, 'image.tar.gz'), Buffer.from([0x1f, 0x8b, 8, 0, 0, 0, 0, 0]));
      await withSnapshotter(undefined, async (sn) => {
        await assert.rejects(importImage(sn, join(dir, 'image.tar.gz')), (err: Error) => isInvalidArgument(err) && /decompress it first/.test(err.message));
      });
    } finally {
      await removeTree(dir);
    }
  });
});
