/**
 * Our images as other tools see them. A base image is built with umoci
 * from busybox-static, imported, changed in an active snapshot (a new
 * file with an xattr and another owner, a changed file, a deleted file, a
 * changed mode), and exported; then:
 *
 * - `skopeo inspect` reads the layout and reports our layers and diff IDs;
 * - `skopeo copy` converts it to a docker archive, whose import gives the
 *   same chain ID;
 * - `umoci unpack` of it yields the tree our own mount of the snapshot shows.
 *
 * `ctr images import` of the export, running a container on it, is
 * test/images/containerd.test.ts.
 *
 * Needs skopeo, umoci and busybox-static (Debian packages; .ci/run installs
 * them). Without them the test is skipped with the reason, except under
 * OVERLAY_SNAPSHOTTER_REQUIRE_MOUNT=1 (CI), where it fails.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { chmodSync, chownSync, copyFileSync, mkdirSync, readFileSync, symlinkSync, unlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { chainIds, exportImage, importImage } from '../../lib/index.js';
import { lsetxattr } from '../../lib/kernel/xattr.js';
import { removeTree, tempDir, withMounted, withSnapshotter } from '../helpers/fixtures.js';
import { compareFingerprints, treeFingerprint } from '../helpers/layers.js';
import { REQUIRE_MOUNT, mountSkipReason } from '../helpers/require-mount.js';

const BUSYBOX = '/bin/busybox';

function missingTools(): string | undefined {
  for (const tool of ['skopeo', 'umoci']) {
    if (spawnSync(tool, ['--version']).status !== 0) return `needs ${tool} (Debian package ${tool})`;
  }
  if (spawnSync(BUSYBOX, ['true']).status !== 0) return `needs ${BUSYBOX} (Debian package busybox-static)`;
  return mountSkipReason();
}

function options(): { skip?: string } {
  const reason = missingTools();
  return reason === undefined || REQUIRE_MOUNT ? {} : { skip: reason };
}

function run(cmd: string, args: string[]): string {
  return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

/** An OCI layout `dir` with the image `base`: busybox-static, its sh link, an /etc/motd and a file to delete; Cmd /bin/sh. */
function umociBase(dir: string, work: string): void {
  run('umoci', ['init', '--layout', dir]);
  run('umoci', ['new', '--image', `${dir}:base`]);
  const bundle = join(work, 'bundle');
  run('umoci', ['unpack', '--image', `${dir}:base`, bundle]);
  const rootfs = join(bundle, 'rootfs');
  mkdirSync(join(rootfs, 'bin'), { mode: 0o755 });
  mkdirSync(join(rootfs, 'etc'), { mode: 0o755 });
  copyFileSync(BUSYBOX, join(rootfs, 'bin/busybox'));
  chmodSync(join(rootfs, 'bin/busybox'), 0o755);
  symlinkSync('busybox', join(rootfs, 'bin/sh'));
  writeFileSync(join(rootfs, 'etc/motd'), 'welcome\n');
  writeFileSync(join(rootfs, 'etc/obsolete'), 'to be deleted\n');
  run('umoci', ['repack', '--image', `${dir}:base`, bundle]);
  run('umoci', ['config', '--image', `${dir}:base`, '--config.cmd', '/bin/sh']);
}

describe('images and other tools', options(), () => {
  test('skopeo and umoci read our export of a build on a umoci-made busybox image', async () => {
    const reason = missingTools();
    if (reason !== undefined) throw new Error(`OVERLAY_SNAPSHOTTER_REQUIRE_MOUNT=1 but this test ${reason}`);
    const dir = tempDir('ovl-img-tools-');
    try {
      umociBase(join(dir, 'base'), dir);
      await withSnapshotter(undefined, async (sn) => {
        const base = await importImage(sn, join(dir, 'base'), { ref: 'base' });
        assert.equal(base.layers.length, 1);
        await sn.prepare('build', base.chainId);
        const ours = await withMounted(await sn.mounts('build'), (root) => {
          mkdirSync(join(root, 'app'), { mode: 0o750 });
          writeFileSync(join(root, 'app/hello'), 'hello from the build\n');
          chownSync(join(root, 'app/hello'), 1000, 1000);
          lsetxattr(join(root, 'app/hello'), 'user.origin', Buffer.from('build step'));
          writeFileSync(join(root, 'etc/motd'), 'changed by the build\n');
          unlinkSync(join(root, 'etc/obsolete'));
          chmodSync(join(root, 'bin/busybox'), 0o750);
          assert.equal(execFileSync('chroot', [root, '/bin/busybox', 'cat', '/etc/motd']).toString(), 'changed by the build\n');
          return treeFingerprint(root);
        });
        const out = join(dir, 'out');
        const exported = await exportImage(sn, 'build', out, { ref: 'built', history: [{ created_by: 'test build step' }] });
        assert.deepEqual(
          exported.layers.map((l) => l.status),
          ['reused', 'diffed'],
        );

        // skopeo reads the layout: our two layers, our diff IDs, the base's command.
        const inspect = JSON.parse(run('skopeo', ['inspect', `oci:${out}:built`])) as { Layers: string[]; Architecture: string };
        assert.deepEqual(inspect.Layers, exported.layers.map((l) => l.digest));
        const config = JSON.parse(run('skopeo', ['inspect', '--config', `oci:${out}:built`])) as { rootfs: { diff_ids: string[] }; config: { Cmd: string[] }; history: unknown[] };
        assert.deepEqual(config.rootfs.diff_ids, exported.layers.map((l) => l.diffId));
        assert.deepEqual(config.config.Cmd, ['/bin/sh']);
        assert.equal(config.history.filter((h) => !(h as { empty_layer?: boolean }).empty_layer).length, 2);

        // skopeo converts it to a docker archive; importing that (into a fresh root, so every layer is applied) gives our chain ID.
        const archive = join(dir, 'built.tar');
        run('skopeo', ['copy', '-q', `oci:${out}:built`, `docker-archive:${archive}:example.com/built:v1`]);
        await withSnapshotter(undefined, async (other) => {
          const back = await importImage(other, archive);
          assert.equal(back.chainId, exported.chainId);
          assert.equal(back.chainId, chainIds(config.rootfs.diff_ids).at(-1));
          assert.deepEqual(back.layers.map((l) => l.status), ['applied', 'applied']);
          assert.equal(back.ref, 'example.com/built:v1');
        });

        // umoci unpacks the same tree as our mount shows: names, types, modes, owners, contents, xattrs, mtimes.
        const bundle = join(dir, 'unpacked');
        run('umoci', ['unpack', '--image', `${out}:built`, bundle]);
        const theirs = treeFingerprint(join(bundle, 'rootfs'));
        assert.deepEqual(compareFingerprints(ours.entries, theirs.entries, ['our mount', 'umoci unpack']), []);
        assert.deepEqual(theirs.links, ours.links);
        assert.equal(readFileSync(join(bundle, 'rootfs/app/hello'), 'utf8'), 'hello from the build\n');
      });
    } finally {
      await removeTree(dir);
    }
  });
});
