/**
 * ID-mapped containers through the Snapshotter (`remapIds` and containerd's
 * mapping labels) mounted by mountAll for real: what the container sees, and
 * that the layers of an ID-mapped mount, which the mount table does not
 * name, are still never deleted from under it (kernel/mount/records.ts).
 */
import assert from 'node:assert/strict';
import { chownSync, lstatSync, writeFileSync } from 'node:fs';
import { test } from 'node:test';
import { FailedPreconditionError, type Snapshotter } from '../lib/index.js';
import { withMounted, withSnapshotter } from './helpers/fixtures.js';
import { mountTestOptions } from './helpers/require-mount.js';

const opts = mountTestOptions();
const MAPPED = { labels: { 'containerd.io/snapshot/uidmapping': '0:100000:65536', 'containerd.io/snapshot/gidmapping': '0:100000:65536' } };

function owner(path: string): string {
  const st = lstatSync(path);
  return `${st.uid}:${st.gid}`;
}

/** Two committed layers as an image unpacks them (ids unmapped): `l1` with `/etc/passwd` 0:0, `l2` with `/home/user` 1000:1000. */
async function image(sn: Snapshotter, root: string): Promise<void> {
  await sn.prepare('u1');
  writeFileSync(`${root}/snapshots/1/fs/passwd`, 'root:x:0:0');
  await sn.commit('l1', 'u1');
  await sn.prepare('u2', 'l1');
  writeFileSync(`${root}/snapshots/2/fs/user-file`, 'u');
  chownSync(`${root}/snapshots/2/fs/user-file`, 1000, 1000);
  await sn.commit('l2', 'u2');
}

test('a container with mapping labels sees the image\'s files owned by its mapped root, and writes to an upper owned by it', opts, async () => {
  await withSnapshotter({ remapIds: true }, async (sn, root) => {
    await image(sn, root);
    const mounts = await sn.prepare('ctr', 'l2', MAPPED);
    assert.deepEqual(mounts[0]!.options.slice(0, 2), ['uidmap=0:100000:65536', 'gidmap=0:100000:65536']);
    await withMounted(mounts, async (target) => {
      assert.equal(owner(`${target}/passwd`), '100000:100000');
      assert.equal(owner(`${target}/user-file`), '101000:101000');
      assert.equal(owner(target), '100000:100000', 'the upper belongs to the mapped root');
      await assert.rejects(sn.remove('ctr'), FailedPreconditionError, 'mounted');
    });
    assert.equal(owner(`${root}/snapshots/1/fs/passwd`), '0:0', 'the layer on disk is unchanged');
  });
});

test('a view of one layer is an ID-mapped bind, and a view of two an overlay of ID-mapped layers', opts, async () => {
  await withSnapshotter({ remapIds: true }, async (sn, root) => {
    await image(sn, root);
    const one = await sn.view('v1', 'l1', MAPPED);
    assert.equal(one[0]!.type, 'bind');
    await withMounted(one, (d) => assert.equal(owner(`${d}/passwd`), '100000:100000'));
    const two = await sn.view('v2', 'l2', MAPPED);
    assert.equal(two[0]!.type, 'overlay');
    await withMounted(two, (d) => assert.equal(owner(`${d}/user-file`), '101000:101000'));
  });
});

test('the layers under a mounted ID-mapped view cannot be removed, though the mount table does not name them', opts, async () => {
  await withSnapshotter({ remapIds: true }, async (sn, root) => {
    await image(sn, root);
    await withMounted(await sn.view('v', 'l2', MAPPED), async (target) => {
      // The view's own dir is not part of the mount, so the view itself may go; its layers then have no children.
      await sn.remove('v');
      await assert.rejects(sn.remove('l2'), (err: Error) => err instanceof FailedPreconditionError && err.message.includes(target));
      assert.equal(owner(`${target}/user-file`), '101000:101000', 'still there through the mount');
      assert.equal(owner(`${root}/snapshots/2/fs/user-file`), '1000:1000');
    });
    await sn.remove('l2');
  });
});
