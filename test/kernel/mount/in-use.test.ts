/** lib/kernel/mount/in-use.ts: which snapshot dirs are in use, from a mount table read again only after it changed. */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { test } from 'node:test';
import { snapshotMounts } from '../../../lib/kernel/mount/in-use.js';
import { isMounted, removeTree, tempDir } from '../../helpers/fixtures.js';
import { mountTestOptions } from '../../helpers/require-mount.js';

test('snapshotMounts sees every mount and unmount made between two calls, though it rereads the table only when the kernel flags a change', mountTestOptions(), async () => {
  const dir = tempDir();
  const snapshots = `${dir}/snapshots`;
  const mounted: string[] = [];
  try {
    for (const id of [4, 5]) mkdirSync(`${snapshots}/${id}/fs`, { recursive: true });
    assert.deepEqual([...snapshotMounts(snapshots).keys()], []);
    assert.deepEqual([...snapshotMounts(snapshots, 5).keys()], [], 'answered from the unchanged table');
    for (const id of [5, 4]) {
      execFileSync('mount', ['-t', 'tmpfs', 'tmpfs', `${snapshots}/${id}/fs`]);
      mounted.push(`${snapshots}/${id}/fs`);
      assert.deepEqual(snapshotMounts(snapshots, id).get(id), [`${snapshots}/${id}/fs`]);
    }
    assert.deepEqual([...snapshotMounts(snapshots).keys()].sort(), [4, 5]);
    execFileSync('umount', [mounted.shift()!]);
    assert.deepEqual([...snapshotMounts(snapshots).keys()], [4]);
    assert.equal(snapshotMounts(snapshots, 5).size, 0);
    execFileSync('umount', [mounted.shift()!]);
    assert.equal(snapshotMounts(snapshots).size, 0);
  } finally {
    for (const path of mounted) if (isMounted(path)) execFileSync('umount', ['-l', path]);
    await removeTree(dir);
  }
});
