/**
 * Damaged stores are reported, never silently reset; nothing is deleted
 * through a mount.
 */
import assert from 'node:assert/strict';
import { mkdirSync, rmSync, statSync, truncateSync, writeFileSync, existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { Snapshotter, mountAll, unmountAll } from '../lib/index.js';
import { isMounted, removeTree, tempDir, withMounted, withSnapshotter } from './helpers/fixtures.js';
import { mountTestOptions } from './helpers/require-mount.js';

const UNAVAILABLE = (path: string) => (err: Error & { code?: string }) => {
  assert.equal(err.code, 'ERR_UNAVAILABLE', String(err));
  assert.ok(err.message.includes(path), `message names ${path}: ${err.message}`);
  return true;
};

async function withRoot(fn: (root: string) => Promise<void>): Promise<void> {
  const top = tempDir();
  try {
    await fn(join(top, 'root'));
  } finally {
    await removeTree(top);
  }
}

async function populated(root: string): Promise<void> {
  const sn = await Snapshotter.open(root);
  await sn.prepare('a');
  await sn.commit('base', 'a');
  await sn.prepare('ctr', 'base');
  await sn.close();
}

describe('damaged stores', () => {
  test('a garbage metadata.db fails open with ERR_UNAVAILABLE naming the file, and is left as it was', async () => {
    await withRoot(async (root) => {
      await populated(root);
      const db = join(root, 'metadata.db');
      for (const suffix of ['-wal', '-shm']) rmSync(db + suffix, { force: true });
      writeFileSync(db, Buffer.alloc(8192, 0x5a));
      await assert.rejects(Snapshotter.open(root), UNAVAILABLE(db));
      assert.deepEqual(readFileSync(db), Buffer.alloc(8192, 0x5a), 'never reset');
    });
  });

  test('a metadata.db truncated mid-file fails with ERR_UNAVAILABLE naming the file', async () => {
    await withRoot(async (root) => {
      const sn = await Snapshotter.open(root);
      for (let i = 0; i < 300; i++) await sn.prepare(`k${i}`, undefined, { labels: { pad: 'x'.repeat(500) } });
      await sn.close();
      const db = join(root, 'metadata.db');
      const size = statSync(db).size;
      truncateSync(db, Math.floor(size / 2));
      await assert.rejects(
        (async () => {
          const again = await Snapshotter.open(root);
          try {
            await again.walk(() => {});
          } finally {
            await again.close();
          }
        })(),
        UNAVAILABLE(db),
      );
    });
  });

  test('a metadata.db emptied beside snapshot directories is refused, not started afresh', async () => {
    await withRoot(async (root) => {
      await populated(root);
      const db = join(root, 'metadata.db');
      for (const suffix of ['-wal', '-shm']) rmSync(db + suffix, { force: true });
      truncateSync(db, 0);
      await assert.rejects(Snapshotter.open(root), (err: Error & { code?: string }) => err.code === 'ERR_UNAVAILABLE' && /holds 2 snapshot directories/.test(err.message));
      assert.ok(existsSync(join(root, 'snapshots', '1', 'fs')), 'layers untouched');
    });
  });

  test('a record whose directory was deleted by hand is reported by check and by the calls that need it', async () => {
    await withSnapshotter({}, async (sn, root) => {
      await sn.prepare('a');
      await sn.commit('base', 'a');
      await sn.prepare('ctr');
      rmSync(join(root, 'snapshots', '1'), { recursive: true });
      rmSync(join(root, 'snapshots', '2', 'work'), { recursive: true });
      writeFileSync(join(root, 'snapshots', 'stray'), '');
      const report = await sn.check();
      assert.equal(report.ok, false);
      assert.deepEqual(
        report.problems.map((p) => [p.problem, p.key ?? p.path]),
        [
          ['missing-directory', 'base'],
          ['missing-work', 'ctr'],
          ['orphan', join(root, 'snapshots', 'stray')],
        ],
      );
      await assert.rejects(sn.prepare('child', 'base'), UNAVAILABLE(join(root, 'snapshots', '1', 'fs')));
      await assert.rejects(sn.stat('child'), { code: 'ERR_NOT_FOUND' });
      const repaired = await sn.check({ repair: true });
      assert.deepEqual(repaired.problems.map((p) => [p.problem, p.repaired]), [
        ['missing-directory', false],
        ['missing-work', true],
        ['orphan', true],
      ]);
      assert.ok(existsSync(join(root, 'snapshots', '2', 'work')));
      assert.equal(existsSync(join(root, 'snapshots', 'stray')), false);
      rmSync(join(root, 'snapshots', '2', 'fs'), { recursive: true });
      await assert.rejects(sn.usage('ctr'), UNAVAILABLE(join(root, 'snapshots', '2', 'fs')));
      await assert.rejects(sn.commit('c', 'ctr'), UNAVAILABLE(join(root, 'snapshots', '2', 'fs')));
    });
  });

  test('a read-only root fails open with ERR_UNAVAILABLE naming it', mountTestOptions(), async () => {
    await withRoot(async (root) => {
      mkdirSync(root, { recursive: true });
      const ro = `${root}-ro`;
      mkdirSync(ro);
      try {
        await mountAll([{ type: 'bind', source: root, options: ['ro', 'rbind'] }], ro);
        await assert.rejects(Snapshotter.open(join(ro, 'store')), UNAVAILABLE(join(ro, 'store')));
      } finally {
        await unmountAll(ro);
      }
    });
  });
});

describe('never delete through a mount', () => {
  test('remove of a mounted snapshot fails with ERR_FAILED_PRECONDITION naming the mount point, and keeps it', mountTestOptions(), async () => {
    for (const asyncRemove of [false, true]) {
      await withSnapshotter({ asyncRemove }, async (sn) => {
        await sn.prepare('a');
        await sn.commit('base', 'a');
        const mounts = await sn.prepare('ctr', 'base');
        await withMounted(mounts, async (target) => {
          writeFileSync(join(target, 'running'), 'yes');
          await assert.rejects(sn.remove('ctr'), (err: Error & { code?: string }) => err.code === 'ERR_FAILED_PRECONDITION' && err.message.includes(target));
          assert.equal(readFileSync(join(target, 'running'), 'utf8'), 'yes');
        });
        await sn.remove('ctr');
      });
    }
  });

  test('a mounted read-only bind view is detected too', mountTestOptions(), async () => {
    await withSnapshotter({}, async (sn) => {
      await sn.prepare('a');
      await sn.commit('base', 'a');
      const mounts = await sn.view('v', 'base');
      await withMounted(mounts, async (target) => {
        await assert.rejects(sn.remove('base'), { code: 'ERR_FAILED_PRECONDITION' });
        await sn.remove('v');
        await assert.rejects(sn.remove('base'), (err: Error) => err.message.includes(target), 'the parent is mounted through its view');
      });
      await sn.remove('base');
    });
  });

  test('with unmountOnRemove, remove unmounts the container first', mountTestOptions(), async () => {
    await withSnapshotter({ unmountOnRemove: true }, async (sn, root) => {
      await sn.prepare('a');
      await sn.commit('base', 'a');
      const target = join(root, '..', 'target');
      mkdirSync(target);
      await mountAll(await sn.prepare('ctr', 'base'), target);
      try {
        await sn.remove('ctr');
        assert.equal(isMounted(target), false);
        await assert.rejects(sn.stat('ctr'), { code: 'ERR_NOT_FOUND' });
      } finally {
        await unmountAll(target);
      }
    });
  });

  test('cleanup skips a mounted orphan and reports it', mountTestOptions(), async () => {
    await withSnapshotter({}, async (sn, root) => {
      const orphan = join(root, 'snapshots', '999');
      mkdirSync(join(orphan, 'fs'), { recursive: true });
      writeFileSync(join(orphan, 'fs', 'f'), 'in use');
      await withMounted([{ type: 'bind', source: join(orphan, 'fs'), options: ['rw', 'rbind'] }], async (target) => {
        const report = await sn.cleanup();
        assert.deepEqual(report.skipped, [{ name: '999', mountPoints: [target] }]);
        assert.equal(readFileSync(join(target, 'f'), 'utf8'), 'in use');
        const check = await sn.check();
        assert.deepEqual(check.problems.map((p) => p.problem), ['orphan-mounted']);
      });
      assert.deepEqual((await sn.cleanup()).removed, ['999']);
    });
  });
});
