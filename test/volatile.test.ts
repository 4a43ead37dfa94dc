/**
 * Volatile containers (prepare's `volatile`, lib/disk/volatile.ts) for real:
 * the overlay is mounted with `volatile`, the kernel leaves its mark in the
 * work dir at unmount, commit waits for sync(), a mount of the same boot
 * can be made again, and open removes a volatile snapshot whose upper was
 * mounted when the machine went down. A reboot cannot be made in a test:
 * it is stood for by the one thing a reboot changes here, the boot id in
 * the snapshot's `volatile-boot`; the kernel's mark is the one a real
 * volatile mount left.
 */
import assert from 'node:assert/strict';
import { existsSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { describe, test } from 'node:test';
import {
  FailedPreconditionError,
  InvalidArgumentError,
  NotFoundError,
  Snapshotter,
  UnavailableError,
  VOLATILE_LABEL,
  mountAll,
  type Mount,
} from '../lib/index.js';
import { isMounted, removeTree, tempDir, withMounted, withSnapshotter } from './helpers/fixtures.js';
import { mountTestOptions } from './helpers/require-mount.js';

const opts = mountTestOptions();
const OTHER_BOOT = '00000000-0000-4000-8000-000000000000';

/** A store with a committed base layer holding `base-file`. */
async function withBase(fn: (sn: Snapshotter, root: string) => Promise<void>): Promise<void> {
  await withSnapshotter({}, async (sn, root) => {
    await sn.prepare('base-active');
    writeFileSync(`${root}/snapshots/1/fs/base-file`, 'base');
    await sn.commit('base', 'base-active');
    await fn(sn, root);
  });
}

const mark = (root: string, id: number) => `${root}/snapshots/${id}/work/work/incompat/volatile`;

/** Mounts `mounts`, writes `file` through them, and unmounts, as a container that ran and stopped. */
async function run(mounts: Mount[], file: string): Promise<void> {
  await withMounted(mounts, (target) => writeFileSync(`${target}/${file}`, file));
}

describe('volatile', () => {
  test('prepare with volatile (or its label) mounts the overlay with volatile and records the label', opts, async () => {
    await withBase(async (sn) => {
      const [m] = await sn.prepare('ctr', 'base', { volatile: true });
      assert.equal(m!.type, 'overlay');
      assert.equal(m!.options.at(-1), 'volatile');
      assert.equal((await sn.stat('ctr')).labels[VOLATILE_LABEL], 'true');
      assert.deepEqual((await sn.mounts('ctr'))[0]!.options, m!.options);
      const [byLabel] = await sn.prepare('ctr2', 'base', { labels: { [VOLATILE_LABEL]: 'true' } });
      assert.ok(byLabel!.options.includes('volatile'));
      const [plain] = await sn.prepare('ctr3', 'base');
      assert.ok(!plain!.options.includes('volatile'));
    });
  });

  test('volatile without a parent (a bind) or on a view is InvalidArgumentError, and nothing is made', opts, async () => {
    await withBase(async (sn, root) => {
      await assert.rejects(sn.prepare('solo', undefined, { volatile: true }), InvalidArgumentError);
      await assert.rejects(sn.view('v', 'base', { volatile: true } as object), InvalidArgumentError);
      await assert.rejects(sn.stat('solo'), NotFoundError);
      assert.deepEqual(readdirSync(`${root}/snapshots`).filter((n) => /^\d+$/.test(n)), ['1']);
    });
  });

  test('a native store refuses volatile with UnavailableError', async () => {
    await withSnapshotter({ driver: 'native' }, async (sn) => {
      await sn.prepare('a');
      await sn.commit('base', 'a');
      await assert.rejects(sn.prepare('ctr', 'base', { volatile: true }), (err: Error) => err instanceof UnavailableError && /native driver/.test(err.message));
    });
  });

  test('a volatile container runs for real; the kernel leaves its mark at unmount, and commit is refused until sync', opts, async () => {
    await withBase(async (sn, root) => {
      await run(await sn.prepare('ctr', 'base', { volatile: true }), 'written');
      assert.equal(readFileSync(`${root}/snapshots/2/fs/written`, 'utf8'), 'written');
      assert.ok(existsSync(mark(root, 2)), 'overlayfs marked the work dir, and the mark stays after a clean unmount');
      await assert.rejects(sn.commit('layer', 'ctr'), (err: Error) => err instanceof FailedPreconditionError && /never made durable/.test(err.message) && /sync\("ctr"\)/.test(err.message));
      await assert.rejects(sn.stat('layer'), NotFoundError, 'nothing was committed');
    });
  });

  test('in the same boot, mounts() clears the mark of an unmounted upper so that it mounts again; an old spec names the mark', opts, async () => {
    await withBase(async (sn, root) => {
      const first = await sn.prepare('ctr', 'base', { volatile: true });
      await run(first, 'one');
      const target = tempDir('ovl-mnt-');
      try {
        await assert.rejects(mountAll(first, target), (err: Error) => err instanceof FailedPreconditionError && /incompat\/volatile/.test(err.message), 'the kernel refuses the marked work dir');
        assert.equal(isMounted(target), false);
      } finally {
        await removeTree(target);
      }
      await run(await sn.mounts('ctr'), 'two');
      assert.deepEqual(readdirSync(`${root}/snapshots/2/fs`).sort(), ['one', 'two'], 'the restarted container sees what it wrote before');
    });
  });

  test('mounts() leaves the mark of an upper that is mounted now', opts, async () => {
    await withBase(async (sn, root) => {
      await withMounted(await sn.prepare('ctr', 'base', { volatile: true }), async () => {
        await sn.mounts('ctr');
        assert.ok(existsSync(mark(root, 2)));
      });
    });
  });

  test('sync() refuses a mounted volatile snapshot, then makes it durable: label and marks gone, commit works and keeps the data', opts, async () => {
    await withBase(async (sn, root) => {
      await withMounted(await sn.prepare('ctr', 'base', { volatile: true }), async (target) => {
        writeFileSync(`${target}/data`, 'kept');
        await assert.rejects(sn.sync('ctr'), (err: Error) => err instanceof FailedPreconditionError && /while it is mounted at/.test(err.message));
      });
      await sn.sync('ctr');
      assert.equal((await sn.stat('ctr')).labels[VOLATILE_LABEL], undefined);
      assert.equal(existsSync(mark(root, 2)), false);
      assert.ok(!(await sn.mounts('ctr'))[0]!.options.includes('volatile'), 'its mounts are ordinary ones now');
      await run(await sn.mounts('ctr'), 'after-sync');
      await sn.commit('layer', 'ctr');
      await withMounted(await sn.view('v', 'layer'), (d) => assert.equal(readFileSync(`${d}/data`, 'utf8'), 'kept'));
    });
  });

  test('sync() of a view or a committed snapshot is FailedPrecondition; of a missing key NotFound; of a plain active a syncfs', async () => {
    await withSnapshotter({}, async (sn) => {
      await sn.prepare('a');
      await sn.sync('a');
      await sn.commit('c', 'a');
      await sn.view('v', 'c');
      await assert.rejects(sn.sync('c'), FailedPreconditionError);
      await assert.rejects(sn.sync('v'), FailedPreconditionError);
      await assert.rejects(sn.sync('nope'), NotFoundError);
    });
  });

  test('update cannot add, change or remove the volatile label, and commit cannot set it', opts, async () => {
    await withBase(async (sn) => {
      await sn.prepare('ctr', 'base', { volatile: true, labels: { a: '1' } });
      await assert.rejects(sn.update({ name: 'ctr', labels: { a: '2' } }), InvalidArgumentError, 'replacing all labels would drop it');
      await assert.rejects(sn.update({ name: 'ctr', labels: {} }, `labels.${VOLATILE_LABEL}`), InvalidArgumentError);
      const kept = await sn.update({ name: 'ctr', labels: { a: '2', [VOLATILE_LABEL]: 'true' } });
      assert.deepEqual(kept.labels, { a: '2', [VOLATILE_LABEL]: 'true' });
      await sn.prepare('plain', 'base');
      await assert.rejects(sn.update({ name: 'plain', labels: { [VOLATILE_LABEL]: 'true' } }, `labels.${VOLATILE_LABEL}`), InvalidArgumentError);
      await assert.rejects(sn.commit('x', 'plain', { labels: { [VOLATILE_LABEL]: 'true' } }), InvalidArgumentError);
    });
  });

  test('after a crash: open removes the volatile snapshot whose upper was mounted in the boot that ended, and keeps the others', opts, async () => {
    const top = tempDir();
    const root = `${top}/root`;
    try {
      let sn = await Snapshotter.open(root);
      await sn.prepare('base-active');
      await sn.commit('base', 'base-active');
      await run(await sn.prepare('lost', 'base', { volatile: true }), 'gone'); // id 2
      await sn.prepare('never-mounted', 'base', { volatile: true }); // id 3
      await run(await sn.prepare('this-boot', 'base', { volatile: true }), 'stays'); // id 4
      await run(await sn.prepare('durable', 'base'), 'plain'); // id 5
      await sn.close();
      // The boot in which 2 and 3 were handed out ended; 2's upper was mounted in it, 3's never was.
      for (const id of [2, 3]) writeFileSync(`${root}/snapshots/${id}/volatile-boot`, `${OTHER_BOOT}\n`);
      assert.ok(existsSync(mark(root, 2)));

      sn = await Snapshotter.open(root);
      try {
        assert.deepEqual(sn.volatileLost, ['lost']);
        await assert.rejects(sn.stat('lost'), NotFoundError);
        assert.equal(existsSync(`${root}/snapshots/2`), false, 'its directory is deleted');
        for (const key of ['never-mounted', 'this-boot', 'durable', 'base']) await sn.stat(key);
        await run(await sn.mounts('never-mounted'), 'fine');
        await run(await sn.mounts('this-boot'), 'again');
        assert.deepEqual(readdirSync(`${root}/snapshots/4/fs`).sort(), ['again', 'stays']);
      } finally {
        await sn.close();
      }
      sn = await Snapshotter.open(root);
      assert.deepEqual(sn.volatileLost, [], 'nothing more at the next open');
      await sn.close();
    } finally {
      await removeTree(top);
    }
  });

  test('while open, a volatile upper lost in an earlier boot is refused by mounts() and sync()', opts, async () => {
    await withBase(async (sn, root) => {
      await run(await sn.prepare('ctr', 'base', { volatile: true }), 'x');
      writeFileSync(`${root}/snapshots/2/volatile-boot`, `${OTHER_BOOT}\n`);
      await assert.rejects(sn.mounts('ctr'), (err: Error) => err instanceof FailedPreconditionError && /went down/.test(err.message) && /remove it/.test(err.message));
      await assert.rejects(sn.sync('ctr'), FailedPreconditionError);
      await sn.remove('ctr');
    });
  });
});

