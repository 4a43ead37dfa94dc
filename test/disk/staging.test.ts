/**
 * The staging pool (lib/disk/staging.ts): ready `new-<pid>.<start>-<uuid>-<n>` dirs
 * that a live process owns are never taken for leftovers; those of a dead
 * process are.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { test } from 'node:test';
import { Snapshotter } from '../../lib/index.js';
import { processStart } from '../../lib/kernel/liveness.js';
import { isOwnPoolDir, removeTree, tempDir, withSnapshotter } from '../helpers/fixtures.js';

/** Waits (up to 5 s) until the pool's thread has made `n` dirs under `root`. */
async function poolReady(root: string, n = 1): Promise<string[]> {
  for (let i = 0; i < 500; i++) {
    const pool = readdirSync(`${root}/snapshots`).filter(isOwnPoolDir);
    if (pool.length >= n) return pool;
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  throw new Error('the staging pool made no dirs within 5 s');
}

function fakeStaging(root: string, name: string): void {
  mkdirSync(`${root}/snapshots/${name}/fs`, { recursive: true });
  mkdirSync(`${root}/snapshots/${name}/work`);
}

test('open and cleanup keep the pool dirs of a live process and remove those of dead ones', async () => {
  const top = tempDir();
  const root = `${top}/root`;
  try {
    const first = await Snapshotter.open(root);
    await first.close();
    const live = `new-${process.pid}.${processStart(process.pid)}-00000000-0000-4000-8000-000000000001`;
    const dead = 'new-999999999.1-00000000-0000-4000-8000-000000000002';
    const reused = `new-${process.pid}.1-00000000-0000-4000-8000-000000000003`;
    for (const name of [live, dead, reused]) fakeStaging(root, name);
    const sn = await Snapshotter.open(root);
    try {
      assert.deepEqual(readdirSync(`${root}/snapshots`), [live], 'open removes the leftovers of a dead process and of a reused pid');
      assert.equal((await sn.check()).ok, true, 'a live process\'s pool is not a problem');
      assert.deepEqual((await sn.cleanup()).removed, []);
      assert.ok(existsSync(`${root}/snapshots/${live}/work`));
    } finally {
      await sn.close();
    }
  } finally {
    await removeTree(top);
  }
});

test('prepare takes ready dirs from the pool and still works when they were deleted behind its back', async () => {
  const top = tempDir();
  const root = `${top}/root`;
  const sn = await Snapshotter.open(root);
  try {
    await sn.prepare('a');
    const pool = await poolReady(root, 4);
    const stamps = new Map(pool.map((name) => [statSync(`${root}/snapshots/${name}`).ino, name]));
    await sn.prepare('b');
    assert.ok(stamps.has(statSync(`${root}/snapshots/2`).ino), 'b\'s dir is a pool dir renamed into place');
    for (const name of await poolReady(root, 4)) rmSync(`${root}/snapshots/${name}`, { recursive: true });
    await sn.prepare('c');
    assert.equal(statSync(`${root}/snapshots/3/fs`).mode & 0o777, 0o755);
    assert.equal(statSync(`${root}/snapshots/3/work`).mode & 0o777, 0o711);
    assert.equal((await sn.check()).ok, true);
  } finally {
    await sn.close();
    await removeTree(top);
  }
  assert.equal(existsSync(top), false);
});

test('a creation that fails its checks leaves the pool as it was, and close removes the pool', async () => {
  await withSnapshotter({}, async (sn, root) => {
    await sn.prepare('a');
    const before = (await poolReady(root, 4)).sort();
    await assert.rejects(sn.prepare('a'), { code: 'ERR_ALREADY_EXISTS' });
    await assert.rejects(sn.prepare('b', 'missing'), { code: 'ERR_NOT_FOUND' });
    assert.deepEqual(readdirSync(`${root}/snapshots`).filter(isOwnPoolDir).sort(), before, 'the same dirs, none taken, leaked or lost');
    await sn.close();
    assert.deepEqual(readdirSync(`${root}/snapshots`), ['1']);
  });
});

test('when the pool\'s thread cannot make a dir, prepare stages its own and the dirs already made are still used', async () => {
  await withSnapshotter({}, async (sn, root) => {
    await sn.prepare('a');
    const pool = (await poolReady(root, 4)).sort((x, y) => Number(x.split('-').at(-1)) - Number(y.split('-').at(-1)));
    const last = pool.at(-1)!;
    const next = `${last.slice(0, last.lastIndexOf('-'))}-${Number(last.split('-').at(-1)) + 1}`;
    const ready = new Set(pool.map((name) => statSync(`${root}/snapshots/${name}`).ino));
    writeFileSync(`${root}/snapshots/${next}`, 'in the way');
    for (let i = 0; i < 8; i++) await sn.prepare(`c${i}`);
    for (let id = 2; id <= 5; id++) assert.ok(ready.has(statSync(`${root}/snapshots/${id}`).ino), `snapshot ${id} got a dir made before the failure`);
    const left = readdirSync(`${root}/snapshots`).filter(isOwnPoolDir);
    assert.deepEqual(left, [next], 'no more dirs were made after the failure');
    for (let id = 2; id <= 9; id++) assert.equal(statSync(`${root}/snapshots/${id}/work`).mode & 0o777, 0o711);
    rmSync(`${root}/snapshots/${next}`);
  });
});
