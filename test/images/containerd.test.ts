/**
 * containerd loads what we export. A base image from busybox-static is
 * imported with importImage, changed in an active snapshot as a build step
 * would (a new file, a changed file, a deleted file, changed modes), and
 * exported with exportImage as an OCI layout tar and as a docker archive.
 * A containerd of the test's own (test/helpers/containerd.ts) imports each
 * with `ctr images import`, onto its own overlayfs snapshotter and onto ours
 * through the proxy plugin, and `ctr run --rm` shows the container the
 * build's changes.
 */
import assert from 'node:assert/strict';
import { chmodSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { v4 as uuidv4 } from 'uuid';
import { type ExportFormat, Snapshotter, exportImage, importImage } from '../../lib/index.js';
import { type Containerd, containerdSkipReason, startContainerd } from '../helpers/containerd.js';
import { removeTree, tempDir, withMounted } from '../helpers/fixtures.js';
import { type ServeProcess, startServe } from '../helpers/grpc.js';
import { IMAGE_FILES, writeBusyboxImage } from '../helpers/oci-image.js';
import { assertPrerequisite, prerequisiteOptions } from '../helpers/require-mount.js';

const PLUGIN = 'ovl';
const BASE = 'docker.io/library/ovl-base:1';
const NEW_FILE = 'added by the build step\n';
const CHANGED_FILE = 'changed by the build step\n';

/** What the container prints: the new and the changed file, whether the deleted one is there, the modes, and /etc. */
const SCRIPT = [
  'cat /etc/new.txt /etc/layer1.txt',
  'if [ -e /etc/layer2.txt ]; then echo layer2.txt present; else echo layer2.txt absent; fi',
  'busybox stat -c "%n %a" /tmp /etc/layer1.txt',
  'ls /etc',
].join('; ');
const EXPECTED = `${NEW_FILE}${CHANGED_FILE}layer2.txt absent\n/tmp 1777\n/etc/layer1.txt 600\nlayer1.txt\nnew.txt\n`;

const skipReason = containerdSkipReason();

test('ctr images import of our export runs a container that sees the build step, on containerd\'s overlayfs and on ours through the proxy', { ...prerequisiteOptions(skipReason), timeout: 300_000 }, async (t) => {
  assertPrerequisite(skipReason);
  const dir = tempDir('ovl-img-ctd-');
  const namespace = `ovl-img-${uuidv4().slice(0, 8)}`;
  let sn: Snapshotter | undefined;
  let server: ServeProcess | undefined;
  let containerd: Containerd | undefined;
  try {
    await writeBusyboxImage(join(dir, 'base.tar'), BASE);
    sn = await Snapshotter.open(join(dir, 'build'));
    const base = await importImage(sn, join(dir, 'base.tar'));
    assert.equal(base.ref, BASE);
    await withMounted(await sn.prepare('step', base.chainId), (rootfs) => {
      // The base has /etc/layer1.txt and /etc/layer2.txt (its second layer deleted /etc/doomed.txt).
      assert.equal(readFileSync(join(rootfs, 'etc/layer1.txt'), 'utf8'), IMAGE_FILES.layer1);
      writeFileSync(join(rootfs, 'etc/new.txt'), NEW_FILE);
      writeFileSync(join(rootfs, 'etc/layer1.txt'), CHANGED_FILE);
      chmodSync(join(rootfs, 'etc/layer1.txt'), 0o600);
      rmSync(join(rootfs, 'etc/layer2.txt'));
      chmodSync(join(rootfs, 'tmp'), 0o1777);
    });
    const exports: Record<Exclude<ExportFormat, 'oci'>, string> = { 'oci-archive': join(dir, 'built-oci.tar'), 'docker-archive': join(dir, 'built-docker.tar') };
    for (const format of ['oci-archive', 'docker-archive'] as const) {
      const out = await exportImage(sn, 'step', exports[format], { format, ref: `docker.io/library/ovl-built-${format}:1`, config: { Cmd: ['/bin/sh'] } });
      assert.deepEqual(out.layers.map((l) => l.status), ['reused', 'reused', 'diffed'], 'the base layers are reused, the step is diffed');
    }
    await sn.close();
    sn = undefined;

    server = await startServe(join(dir, 'ours'), join(dir, 'run/ovl.sock'));
    containerd = await startContainerd({ dir: join(dir, 'containerd'), namespace, proxies: { [PLUGIN]: server.address } });
    const ctr = containerd.ctr;
    for (const snapshotter of ['overlayfs', PLUGIN]) {
      for (const format of ['oci-archive', 'docker-archive'] as const) {
        await t.test(`${format} on ${snapshotter === PLUGIN ? 'our snapshotter (proxy)' : 'containerd\'s overlayfs'}`, async () => {
          const ref = `docker.io/library/ovl-built-${format}:1`;
          const imported = await ctr('images', 'import', '--snapshotter', snapshotter, exports[format]);
          assert.match(imported.stdout, new RegExp(`unpacking ${ref} .*done`));
          const { stdout } = await ctr('run', '--rm', '--snapshotter', snapshotter, ref, `c-${namespace}-${snapshotter}-${format}`, '/bin/sh', '-c', SCRIPT);
          assert.equal(stdout, EXPECTED);
          await ctr('images', 'rm', '--sync', ref);
        });
      }
    }
  } finally {
    await sn?.close();
    await containerd?.stop();
    await server?.stop('SIGKILL');
    await removeTree(dir);
  }
});
