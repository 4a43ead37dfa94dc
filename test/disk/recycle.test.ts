/**
 * Recycling removed snapshots' dirs (lib/disk/recycle.ts): a container's
 * dir left as it was made goes back to the staging pool and serves the next
 * prepare; anything a container changed that a fresh dir would not have
 * sends it to deletion instead, and a container on a recycled dir sees an
 * empty, plain upper.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { chmodSync, existsSync, lstatSync, mkdirSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { test } from 'node:test';
import type { Snapshotter } from '../../lib/index.js';
import { llistxattr, lsetxattr } from '../../lib/kernel/xattr.js';
import { isOwnPoolDir, snapshotEntries, withMounted, withSnapshotter } from '../helpers/fixtures.js';
import { mountTestOptions } from '../helpers/require-mount.js';

/** The pool's recycled dirs (named `...-r<n>`) under the root. */
function recycled(root: string): string[] {
  return readdirSync(`${root}/snapshots`).filter((n) => isOwnPoolDir(n) && /-r\d+$/.test(n));
}

/** The inode number of a snapshot's dir, by its upper path. */
function dirInode(upper: string): number {
  return statSync(`${upper}/..`).ino;
}

function upperOf(mounts: { options: string[] }[]): string {
  return mounts[0]!.options.find((o) => o.startsWith('upperdir='))!.slice('upperdir='.length);
}

/** A base layer with one file, and an active on it run once as a container that writes `files`. */
async function ranContainer(sn: Snapshotter, key: string, change?: (target: string, upper: string) => void): Promise<string> {
  if ((await sn.stat('base').catch(() => undefined)) === undefined) {
    const m = await sn.prepare('base-extract');
    writeFileSync(`${m[0]!.source}/from-base`, 'base\n');
    await sn.commit('base', 'base-extract');
  }
  const mounts = await sn.prepare(key, 'base');
  const upper = upperOf(mounts);
  await withMounted(mounts, (target) => {
    writeFileSync(`${target}/written`, 'by the container\n');
    change?.(target, upper);
  });
  return upper;
}

test('an unchanged container dir goes back to the pool on remove and is the next prepare\'s dir, which shows only the parent', mountTestOptions(), async () => {
  await withSnapshotter(undefined, async (sn, root) => {
    const upper = await ranContainer(sn, 'ctr-1');
    const ino = dirInode(upper);
    await sn.remove('ctr-1');
    assert.equal(existsSync(upper), false, 'the snapshot dir is gone from its place');
    assert.equal(recycled(root).length, 1, 'it waits in the pool');
    const mounts = await sn.prepare('ctr-2', 'base');
    const next = upperOf(mounts);
    assert.equal(dirInode(next), ino, 'the next prepare got the recycled dir');
    assert.deepEqual(recycled(root), []);
    assert.deepEqual(readdirSync(next), [], 'the upper starts empty');
    assert.deepEqual(readdirSync(`${next}/../work`), [], 'so does the work dir');
    assert.deepEqual(llistxattr(next), [], 'without the last mount\'s overlay uuid');
    await withMounted(mounts, (target) => {
      assert.deepEqual(readdirSync(target).sort(), ['from-base']);
      writeFileSync(`${target}/again`, 'x');
    });
    assert.deepEqual(readdirSync(next), ['again']);
    assert.equal((await sn.check()).ok, true);
  });
});

test('a container dir with anything a fresh one lacks is deleted, not recycled', mountTestOptions(), async () => {
  const changes: [string, (target: string, upper: string) => void][] = [
    ['a directory in the upper', (target) => mkdirSync(`${target}/etc`)],
    ['a changed mode on the upper', (target) => chmodSync(target, 0o700)],
    ['an xattr on the upper', (target) => lsetxattr(target, 'user.mark', Buffer.from('1'))],
    ['an inode flag on the upper', (target) => execFileSync('chattr', ['+S', target])],
    ['an owner other than ours', (_target, upper) => execFileSync('chown', ['1234:1234', upper])],
    ['a stray file beside fs and work', (_target, upper) => writeFileSync(`${upper}/../stray`, 'x')],
  ];
  await withSnapshotter(undefined, async (sn, root) => {
    for (const [i, [what, change]] of changes.entries()) {
      const upper = await ranContainer(sn, `ctr-${i}`, change);
      await sn.remove(`ctr-${i}`);
      assert.equal(existsSync(`${upper}/..`), false, `${what}: the dir is gone`);
      assert.deepEqual(recycled(root), [], `${what}: nothing went to the pool`);
    }
    assert.deepEqual(snapshotEntries(root), ['1']);
  });
});

test('views, committed snapshots and asyncRemove never recycle; close() deletes what waits in the pool', mountTestOptions(), async () => {
  await withSnapshotter(undefined, async (sn, root) => {
    await ranContainer(sn, 'ctr');
    await sn.view('v', 'base');
    await sn.remove('v');
    assert.deepEqual(recycled(root), [], 'a view has no work dir to reuse');
    await sn.remove('ctr');
    assert.equal(recycled(root).length, 1);
    await sn.close();
    assert.deepEqual(readdirSync(`${root}/snapshots`).filter((n) => n.startsWith('new-')), []);
  });
  await withSnapshotter({ asyncRemove: true }, async (sn, root) => {
    await ranContainer(sn, 'ctr');
    await sn.remove('ctr');
    assert.deepEqual(recycled(root), []);
    assert.equal((await sn.cleanup()).removed.length, 1);
  });
});

test('many removals at once recycle up to the pool\'s bound and delete the rest, and each later prepare gets an empty upper', mountTestOptions(), async () => {
  await withSnapshotter(undefined, async (sn, root) => {
    const keys = Array.from({ length: 40 }, (_, i) => `ctr-${i}`);
    for (const key of keys) await ranContainer(sn, key);
    await Promise.all(keys.map((k) => sn.remove(k)));
    const kept = recycled(root).length;
    assert.ok(kept > 0 && kept < keys.length, `${kept} of ${keys.length} recycled`);
    assert.deepEqual(snapshotEntries(root), ['1']);
    const mounts = await Promise.all(keys.map((k) => sn.prepare(`${k}-again`, 'base')));
    for (const m of mounts) {
      const upper = upperOf(m);
      assert.deepEqual(readdirSync(upper), []);
      assert.equal(lstatSync(upper).mode & 0o7777, 0o755);
    }
    assert.equal((await sn.check()).ok, true);
  });
});
