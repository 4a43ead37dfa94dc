/**
 * Bulk deletion (lib/disk/trash.ts): many trees are spread over `rm-*` buckets
 * and deleted by parallel `rm -rf --one-file-system`, which never crosses
 * a mount inside a tree.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, readdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { test } from 'node:test';
import { Snapshotter } from '../../lib/index.js';
import { deleteTrees } from '../../lib/disk/trash.js';
import { isMounted, removeTree, snapshotEntries, tempDir, withSnapshotter } from '../helpers/fixtures.js';
import { mountTestOptions } from '../helpers/require-mount.js';

/** Prepares `n` actives with a small tree each in their upper dir, and removes them (records only). */
async function orphans(sn: Snapshotter, root: string, n: number): Promise<string[]> {
  const keys = Array.from({ length: n }, (_, i) => `ctr-${i}`);
  for (const key of keys) {
    await sn.prepare(key);
    const info = await sn.stat(key);
    const id = snapshotEntries(root).map(Number).sort((a, b) => b - a)[0];
    assert.equal(info.kind, 'active');
    mkdirSync(`${root}/snapshots/${id}/fs/etc/deep`, { recursive: true });
    writeFileSync(`${root}/snapshots/${id}/fs/etc/deep/file`, 'x'.repeat(5000));
  }
  for (const key of keys) await sn.remove(key);
  return keys;
}

test('cleanup of many removed snapshots deletes every tree, contents included, and leaves no bucket behind', async () => {
  await withSnapshotter({ asyncRemove: true }, async (sn, root) => {
    await sn.prepare('kept');
    await orphans(sn, root, 70);
    assert.equal(snapshotEntries(root).length, 71);
    const report = await sn.cleanup();
    assert.equal(report.removed.length, 70);
    assert.deepEqual(snapshotEntries(root), ['1'], 'only the live snapshot is left, no rm-* bucket');
    assert.equal((await sn.check()).ok, true);
    assert.deepEqual((await sn.cleanup()).removed, []);
  });
});

test('bulk deletion reports every tree once, whether it was still there or already gone', async () => {
  const dir = tempDir();
  try {
    const trees = Array.from({ length: 40 }, (_, i) => `${dir}/${i}`);
    for (const tree of trees.slice(1)) {
      mkdirSync(`${tree}/a/b`, { recursive: true });
      writeFileSync(`${tree}/a/b/f`, 'data');
    }
    const done: string[] = [];
    await deleteTrees(dir, trees, 'prune:mid', (tree) => done.push(tree));
    assert.deepEqual(done.sort(), [...trees].sort());
    assert.deepEqual(readdirSync(dir), []);
  } finally {
    await removeTree(dir);
  }
});

test('bulk deletion never crosses into another filesystem mounted inside a tree, and leaves that tree claimed for later', mountTestOptions(), async () => {
  const dir = tempDir();
  let mounted: string | undefined;
  try {
    const trees = Array.from({ length: 40 }, (_, i) => `${dir}/${i}`);
    for (const tree of trees) mkdirSync(`${tree}/fs/mnt`, { recursive: true });
    mounted = `${trees[7]}/fs/mnt`;
    execFileSync('mount', ['-t', 'tmpfs', 'tmpfs', mounted]);
    writeFileSync(`${mounted}/precious`, 'not a snapshot\'s');
    const done: string[] = [];
    await deleteTrees(dir, trees, 'prune:mid', (tree) => done.push(tree));
    const left = readdirSync(dir);
    assert.equal(left.length, 1, `one claimed bucket is left: ${left}`);
    assert.match(left[0]!, /^rm-/);
    mounted = `${dir}/${left[0]}/7/fs/mnt`;
    assert.ok(isMounted(mounted), 'the mount moved along with its tree');
    assert.equal(readFileSync(`${mounted}/precious`, 'utf8'), 'not a snapshot\'s', 'nothing under the mount was deleted');
    assert.ok(!done.includes(trees[7]!), 'the tree with the mount is not reported deleted');
    assert.ok(done.length >= 30 && done.length < 40, `the other buckets are reported: ${done.length}`);
    execFileSync('umount', [mounted]);
    mounted = undefined;
    await deleteTrees(dir, [`${dir}/${left[0]}`], 'prune:mid');
    assert.deepEqual(readdirSync(dir), []);
  } finally {
    if (mounted !== undefined && isMounted(mounted)) execFileSync('umount', ['-l', mounted]);
    await removeTree(dir);
  }
});

test('cleanup leaves alone a removed snapshot with a bind mount inside it, and deletes it once unmounted', mountTestOptions(), async () => {
  const outside = tempDir();
  writeFileSync(`${outside}/precious`, 'not a snapshot\'s');
  let target: string | undefined;
  try {
    await withSnapshotter({ asyncRemove: true }, async (sn, root) => {
      await orphans(sn, root, 40);
      const victim = snapshotEntries(root)[0]!;
      target = `${root}/snapshots/${victim}/fs/etc/deep`;
      execFileSync('mount', ['--bind', outside, target]);
      const report = await sn.cleanup();
      assert.deepEqual(report.skipped.map((s) => s.name), [victim]);
      assert.equal(report.removed.length, 39);
      assert.equal(readFileSync(`${outside}/precious`, 'utf8'), 'not a snapshot\'s', 'nothing under the mount was deleted');
      execFileSync('umount', [target]);
      target = undefined;
      assert.deepEqual((await sn.cleanup()).removed, [victim]);
      assert.deepEqual(snapshotEntries(root), []);
      assert.equal(readFileSync(`${outside}/precious`, 'utf8'), 'not a snapshot\'s');
    });
  } finally {
    if (target !== undefined && isMounted(target)) execFileSync('umount', ['-l', target]);
    await removeTree(outside);
  }
});

test('a synchronous remove deletes the whole tree of a snapshot whatever its upper holds: a few files, many files, a subtree, a symlink (not followed) and a fifo', async () => {
  await withSnapshotter({}, async (sn, root) => {
    const shapes: Record<string, (fs: string) => void> = {
      few: (fs) => {
        for (let i = 0; i < 3; i++) writeFileSync(`${fs}/f${i}`, 'x'.repeat(4096));
      },
      many: (fs) => {
        for (let i = 0; i < 100; i++) writeFileSync(`${fs}/f${i}`, 'x');
      },
      subtree: (fs) => {
        writeFileSync(`${fs}/top`, 'x');
        mkdirSync(`${fs}/a/b`, { recursive: true });
        writeFileSync(`${fs}/a/b/c`, 'x');
      },
      special: (fs) => {
        symlinkSync('/etc/passwd', `${fs}/link`);
        execFileSync('mkfifo', [`${fs}/fifo`]);
      },
    };
    for (const [key, fill] of Object.entries(shapes)) {
      await sn.prepare(key);
      fill(`${root}/snapshots/${snapshotEntries(root).map(Number).sort((a, b) => b - a)[0]}/fs`);
    }
    assert.equal(snapshotEntries(root).length, 4);
    for (const key of Object.keys(shapes)) await sn.remove(key);
    assert.deepEqual(snapshotEntries(root), [], 'every tree is gone, none left for cleanup');
    assert.ok(existsSync('/etc/passwd'), 'the symlink was unlinked, not followed');
    assert.deepEqual((await sn.cleanup()).removed, []);
  });
});
