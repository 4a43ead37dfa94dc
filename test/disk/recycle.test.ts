/**
 * Recycling removed snapshots' dirs (lib/disk/recycle.ts): a container's
 * dir and its work dir go back to the staging pool on remove and serve the
 * next prepare, with an upper dir made afresh, so that nothing a container
 * did to its upper carries over, not even through an overlay that still
 * holds it in another mount namespace; a dir holding more than a fresh one
 * is deleted instead.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { chmodSync, closeSync, constants, existsSync, fstatSync, lstatSync, mkdirSync, openSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { test } from 'node:test';
import type { Snapshotter } from '../../lib/index.js';
import { VOLATILE_BOOT_FILE } from '../../lib/disk/volatile.js';
import { llistxattr, lsetxattr } from '../../lib/kernel/xattr.js';
import { isOwnPoolDir, snapshotEntries, upperOf, withMounted, withSnapshotter } from '../helpers/fixtures.js';
import { mountTestOptions } from '../helpers/require-mount.js';

/** The pool's recycled dirs (named `...-r<n>`) under the root. */
function recycled(root: string): string[] {
  return readdirSync(`${root}/snapshots`).filter((n) => isOwnPoolDir(n) && /-r\d+$/.test(n));
}

/** `lsattr -d` flags of a dir. */
function flags(path: string): string {
  return execFileSync('lsattr', ['-d', path], { encoding: 'utf8' }).split(' ')[0]!;
}

/** A base layer with one file (made once), and an active on it run once as a container that writes a file, then `change`. */
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

test('a container\'s dir goes back to the pool on remove and is the next prepare\'s, with a new, empty upper that shows only the parent', mountTestOptions(), async () => {
  await withSnapshotter(undefined, async (sn, root) => {
    const upper = await ranContainer(sn, 'ctr-1');
    const dirIno = statSync(`${upper}/..`).ino;
    const oldUpper = openSync(upper, constants.O_RDONLY | constants.O_DIRECTORY);
    try {
      await sn.remove('ctr-1');
      assert.equal(fstatSync(oldUpper).nlink, 0, 'the old upper dir itself was deleted');
    } finally {
      closeSync(oldUpper);
    }
    assert.equal(existsSync(`${upper}/..`), false, 'the snapshot dir is gone from its place');
    assert.equal(recycled(root).length, 1, 'it waits in the pool');
    const mounts = await sn.prepare('ctr-2', 'base');
    const next = upperOf(mounts);
    assert.equal(statSync(`${next}/..`).ino, dirIno, 'the next prepare got the recycled dir');
    assert.deepEqual(recycled(root), []);
    assert.deepEqual(readdirSync(next), [], 'the upper starts empty');
    assert.deepEqual(readdirSync(`${next}/../work`), [], 'so does the work dir');
    await withMounted(mounts, (target) => {
      assert.deepEqual(readdirSync(target).sort(), ['from-base']);
      writeFileSync(`${target}/again`, 'x');
    });
    assert.deepEqual(readdirSync(next), ['again']);
    assert.equal((await sn.check()).ok, true);
  });
});

test('nothing a container did to its upper reaches the next container on a recycled dir', mountTestOptions(), async () => {
  await withSnapshotter(undefined, async (sn, root) => {
    await ranContainer(sn, 'ctr', (target) => {
      chmodSync(target, 0o700);
      lsetxattr(target, 'user.mark', Buffer.from('1'));
      execFileSync('chattr', ['+S', target]);
      execFileSync('chown', ['1234:1234', target]);
    });
    await sn.remove('ctr');
    assert.equal(recycled(root).length, 1);
    const next = upperOf(await sn.prepare('next', 'base'));
    const st = lstatSync(next);
    const want = { mode: 0o40755, uid: process.geteuid!(), gid: process.getegid!(), flags: flags(`${next}/../work`) };
    assert.deepEqual({ mode: st.mode, uid: st.uid, gid: st.gid, flags: flags(next) }, want, 'as the pool makes it (work is never shown to a container)');
    assert.deepEqual(llistxattr(next), []);
  });
});

test('a container dir holding more than a fresh one is deleted, not recycled', mountTestOptions(), async () => {
  const changes: [string, (target: string, upper: string) => void][] = [
    ['a directory in the upper', (target) => mkdirSync(`${target}/etc`)],
    ['a volatile snapshot\'s boot file beside fs and work', (_target, upper) => writeFileSync(`${upper}/../${VOLATILE_BOOT_FILE}`, 'x')],
    ['a dir beside fs and work', (_target, upper) => mkdirSync(`${upper}/../extra`)],
    ['an index dir in work', (_target, upper) => mkdirSync(`${upper}/../work/index`)],
    ['an index dir in place of work/work', (_target, upper) => execFileSync('mv', [`${upper}/../work/work`, `${upper}/../work/index`])],
    ['a chown of work', (_target, upper) => execFileSync('chown', ['1234:1234', `${upper}/../work`])],
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

test('an overlay still holding a removed container\'s upper in another mount namespace writes nowhere the next container sees', mountTestOptions(), async () => {
  await withSnapshotter(undefined, async (sn, root) => {
    await ranContainer(sn, 'warm');
    await sn.remove('warm');
    const mounts = await sn.prepare('ctr', 'base');
    // A process in a mount namespace of its own, made while the container is mounted, working inside it: its copy of
    // the mount outlives ours (deleting the mount point detaches it there too, but the process's cwd keeps it alive).
    let holder: ReturnType<typeof spawn> | undefined;
    try {
      await withMounted(mounts, async (mounted) => {
        holder = spawn('unshare', ['--mount', '--propagation', 'private', 'sh', '-c', `cd ${mounted} && echo ready && read line; { echo leaked > leak; } 2>/dev/null; echo done`], { stdio: ['pipe', 'pipe', 'inherit'] });
        await new Promise<void>((resolve) => holder!.stdout!.once('data', () => resolve()));
      });
      await sn.remove('ctr');
      assert.equal(recycled(root).length, 1, 'the dir went back to the pool');
      const next = upperOf(await sn.prepare('next', 'base'));
      const h = holder!;
      const out = new Promise<string>((resolve) => {
        let text = '';
        h.stdout!.on('data', (d: Buffer) => (text += d.toString()));
        h.once('close', () => resolve(text));
      });
      h.stdin!.end('go\n');
      assert.match(await out, /done/, 'the process tried its write');
      assert.deepEqual(readdirSync(next), [], 'the next container\'s upper did not get it');
    } finally {
      holder?.kill();
    }
  });
});

test('views and asyncRemove never recycle; close() deletes what waits in the pool', mountTestOptions(), async () => {
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
