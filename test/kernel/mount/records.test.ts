/**
 * Never deleting through a mount, whatever form `mountAll` named the
 * layers in: the mount API names paths over 255 bytes by descriptor, and
 * mount(2) with a chain that does not fit in a page names them relative to
 * a directory, or by descriptor. The mount table then does not show the
 * snapshots' paths, and the mount records (lib/kernel/mount/records.ts) must
 * protect them, in this process, in another one, and after the mounting
 * process is gone.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, realpathSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import Database from 'better-sqlite3';
import { Snapshotter, mountAll, unmountAll } from '../../../lib/index.js';
import { STRATEGY_ENV } from '../../../lib/kernel/mount/index.js';
import { setMountApiProbe } from '../../../lib/kernel/mount/overlay.js';
import { RECORDS_DIR } from '../../../lib/kernel/mount/records.js';
import { isMounted, removeTree, tempDir, upperOf } from '../../helpers/fixtures.js';
import { mountTestOptions } from '../../helpers/require-mount.js';

const CHILD = new URL('../../helpers/mount-user-child.ts', import.meta.url).pathname;

/** A root whose snapshot paths exceed the 255 bytes one fsconfig value takes. */
const LONG = `${'long-root-'.repeat(20)}/${'x'.repeat(60)}`;

interface Config {
  name: string;
  /** `auto-legacy`: `auto` as it behaves on a kernel without `lowerdir+`. */
  strategy: 'mount-api' | 'legacy' | 'auto' | 'auto-legacy';
  long: boolean;
  depth: number;
  /** Allocate ids from here, so that even relative names do not fit in a page. */
  firstId?: number;
  /** How the mount table names the upper dir: the real path, or not. */
  hidden: boolean;
}

const CONFIGS: Config[] = [
  { name: 'mount-api, a root over 255 bytes, 1 layer', strategy: 'mount-api', long: true, depth: 1, hidden: true },
  { name: 'mount-api, a root over 255 bytes, 17 layers', strategy: 'mount-api', long: true, depth: 17, hidden: true },
  { name: 'legacy, a root over 255 bytes, 17 layers', strategy: 'legacy', long: true, depth: 17, hidden: true },
  { name: 'auto without lowerdir+, a root over 255 bytes, 17 layers', strategy: 'auto-legacy', long: true, depth: 17, hidden: true },
  { name: 'legacy, a short root, 91 layers', strategy: 'legacy', long: false, depth: 91, hidden: true },
  { name: 'legacy, 500 layers named by descriptor', strategy: 'legacy', long: true, depth: 500, firstId: 1_000_000, hidden: true },
  { name: 'auto, short paths, 2 layers', strategy: 'auto', long: false, depth: 2, hidden: false },
];

interface Outcome {
  op: string;
  ok: boolean;
  code?: string;
  message?: string;
  report?: {
    skipped?: { name: string; mountPoints: string[] }[];
    removed?: unknown[];
    kept?: { name: string; reason: string }[];
    problems?: { problem: string; path: string; repaired: boolean; mountPoints?: string[] }[];
  };
}

/** Runs `operations` in a second process on `root` (test/helpers/mount-user-child.ts). */
function inChild(root: string, ...operations: string[]): Outcome[] {
  const result = spawnSync(process.execPath, ['--import', 'tsx', CHILD, root, ...operations], { encoding: 'utf8', timeout: 120_000 });
  assert.equal(result.status, 0, `child failed: ${result.stderr}`);
  return result.stdout.trim().split('\n').map((line) => JSON.parse(line) as Outcome);
}

/** Runs `fn` with `auto` seeing (or not) `lowerdir+`, and no strategy forced from the environment. */
async function withStrategy<T>(config: Config, fn: (strategy: 'mount-api' | 'legacy' | 'auto') => Promise<T>): Promise<T> {
  if (config.strategy !== 'auto-legacy') return fn(config.strategy);
  const saved = process.env[STRATEGY_ENV];
  delete process.env[STRATEGY_ENV];
  setMountApiProbe('legacy');
  try {
    return await fn('auto');
  } finally {
    setMountApiProbe(undefined);
    if (saved !== undefined) process.env[STRATEGY_ENV] = saved;
  }
}

/** The top mount's options on `target`. */
function superOptions(target: string): string {
  const line = readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .filter((l) => l.split(' ')[4] === target)
    .at(-1);
  assert.ok(line !== undefined, `${target} is mounted`);
  return line.split(' - ')[1]!.split(' ')[2]!;
}

/** Deletes a record behind the store's back, as a damaged or older store would have it: its directory becomes an orphan. */
function dropRecord(root: string, key: string): void {
  const db = new Database(join(root, 'metadata.db'));
  try {
    db.transaction(() => {
      const row = db.prepare<[string], { id: number }>('SELECT id FROM snapshots WHERE key = ?').get(key)!;
      db.prepare('DELETE FROM labels WHERE snapshot = ?').run(row.id);
      db.prepare('DELETE FROM snapshots WHERE id = ?').run(row.id);
    })();
  } finally {
    db.close();
  }
}

/** A store at `root` with a chain of `depth` committed layers `l1..l<depth>`, each adding a file; returns the top's name. */
async function chain(root: string, depth: number, firstId?: number): Promise<Snapshotter> {
  if (firstId !== undefined) {
    await (await Snapshotter.open(root)).close();
    const db = new Database(join(root, 'metadata.db'));
    db.prepare("INSERT OR REPLACE INTO sqlite_sequence (name, seq) VALUES ('snapshots', ?)").run(firstId);
    db.close();
  }
  const sn = await Snapshotter.open(root);
  let parent: string | undefined;
  for (let i = 1; i <= depth; i++) {
    const mounts = await sn.prepare(`a${i}`, parent);
    // The upper dir of the new active, whatever the spec's form.
    const upper = mounts[0]!.type === 'bind' ? mounts[0]!.source : mounts[0]!.options.find((o) => o.startsWith('upperdir='))!.slice('upperdir='.length);
    writeFileSync(join(upper, `f${i}`), `layer ${i}`);
    await sn.commit(`l${i}`, `a${i}`);
    parent = `l${i}`;
  }
  return sn;
}

/** The mount records of the store at `root`. */
function recordFiles(root: string): string[] {
  const dir = join(root, RECORDS_DIR);
  return existsSync(dir) ? readdirSync(dir).filter((f) => f.endsWith('.json')) : [];
}

const REFUSED = (target: string) => (err: Error & { code?: string }) => {
  assert.equal(err.code, 'ERR_FAILED_PRECONDITION', String(err));
  assert.ok(err.message.includes(target), `names the mount point ${target}: ${err.message}`);
  return true;
};

describe('never delete through a mount, whatever form the layers were named in', mountTestOptions(), () => {
  let top = '';
  before(() => {
    top = realpathSync(tempDir('ovl-records-'));
  });
  after(async () => {
    if (top !== '') await removeTree(top);
  });

  let n = 0;
  const fresh = (long: boolean) => {
    const dir = join(top, `t${++n}`);
    const root = long ? join(dir, LONG) : join(dir, 'root');
    const target = join(dir, 'mnt');
    mkdirSync(target, { recursive: true });
    return { root, target };
  };

  for (const config of CONFIGS) {
    test(`${config.name}: remove, cleanup, prune and check({repair}) from this process and a second one leave the mounted container alone`, async () => {
      const { root, target } = fresh(config.long);
      const sn = await chain(root, config.depth, config.firstId);
      try {
        const mounts = await sn.prepare('ctr', `l${config.depth}`);
        const upper = upperOf(mounts);
        if (config.long) assert.ok(Buffer.byteLength(upper) > 255, `upperdir is ${Buffer.byteLength(upper)} bytes`);
        await withStrategy(config, (strategy) => mountAll(mounts, target, { strategy }));
        try {
          const shown = superOptions(target);
          assert.equal(shown.includes(upper), !config.hidden, `the mount table ${config.hidden ? 'hides' : 'shows'} the upper dir: ${shown.slice(0, 200)}`);
          if (config.firstId !== undefined) assert.match(shown, /lowerdir=\d+:\d+:/, 'layers named by descriptor');
          writeFileSync(join(target, 'written'), 'by the container');
          assert.equal(readFileSync(join(target, `f${config.depth}`), 'utf8'), `layer ${config.depth}`);

          // This process.
          await assert.rejects(sn.remove('ctr'), REFUSED(target));
          const pruned = await sn.prune({ includeActive: true });
          assert.deepEqual(pruned.removed, []);
          assert.equal(pruned.kept.find((k) => k.name === 'ctr')?.reason, 'mounted');

          // A second process.
          const [remove, prune] = inChild(root, 'remove:ctr', 'prune');
          assert.equal(remove!.code, 'ERR_FAILED_PRECONDITION', remove!.message);
          assert.ok(remove!.message!.includes(target), remove!.message);
          assert.deepEqual(prune!.report!.removed, []);
          assert.equal(prune!.report!.kept!.find((k) => k.name === 'ctr')?.reason, 'mounted');

          // The container's record lost (a damaged store): its directory is an orphan that is still mounted.
          const id = readdirSync(join(root, 'snapshots')).map(Number).filter(Number.isSafeInteger).sort((a, b) => b - a)[0]!;
          dropRecord(root, 'ctr');
          const [childCleanup, childRepair] = inChild(root, 'cleanup', 'repair');
          assert.deepEqual(childCleanup!.report!.skipped, [{ name: String(id), mountPoints: [target] }]);
          assert.deepEqual(childRepair!.report!.problems!.map((p) => [p.problem, p.repaired]), [['orphan-mounted', false]]);
          const cleaned = await sn.cleanup();
          assert.deepEqual(cleaned.skipped, [{ name: String(id), mountPoints: [target] }]);
          const repaired = await sn.check({ repair: true });
          assert.deepEqual(repaired.problems.map((p) => [p.problem, p.repaired, p.mountPoints]), [['orphan-mounted', false, [target]]]);

          assert.equal(readFileSync(join(target, 'written'), 'utf8'), 'by the container');
          assert.equal(readFileSync(join(upper, 'written'), 'utf8'), 'by the container');
        } finally {
          await unmountAll(target);
        }
        assert.equal(isMounted(target), false);
        assert.deepEqual(recordFiles(root), [], config.hidden ? 'unmountAll clears the record' : 'nothing was recorded');
        assert.equal((await sn.cleanup()).removed.length, 1, 'unmounted, the orphan goes');
      } finally {
        await sn.close();
      }
    });
  }

  for (const config of CONFIGS.filter((c) => c.hidden && c.depth >= 2 && c.depth <= 91)) {
    test(`${config.name}: a committed layer under a mounted view is never deleted, from either process`, async () => {
      const { root, target } = fresh(config.long);
      const sn = await chain(root, config.depth);
      try {
        // A view of two or more layers is an overlay of lowers only: its own directory is not in the mount.
        const mounts = await sn.view('v', `l${config.depth}`);
        assert.equal(mounts[0]!.type, config.depth >= 2 ? 'overlay' : 'bind');
        await withStrategy(config, (strategy) => mountAll(mounts, target, { strategy }));
        try {
          await sn.remove('v');
          await assert.rejects(sn.remove(`l${config.depth}`), REFUSED(target));
          const [remove] = inChild(root, `remove:l${config.depth}`);
          assert.equal(remove!.code, 'ERR_FAILED_PRECONDITION', remove!.message);
          assert.ok(remove!.message!.includes(target));
          const pruned = await sn.prune();
          assert.deepEqual(pruned.removed, [], 'every layer under the mount is kept');
          assert.equal(pruned.kept.find((k) => k.name === `l${config.depth}`)?.reason, 'mounted');
          assert.equal(readFileSync(join(target, 'f1'), 'utf8'), 'layer 1');
        } finally {
          await unmountAll(target);
        }
        await sn.remove(`l${config.depth}`);
      } finally {
        await sn.close();
      }
    });
  }

  test('after the mounting process exited, its mounts still protect their snapshots; once unmounted, the stale record is ignored and deleted', async () => {
    const { root, target } = fresh(true);
    const sn = await chain(root, 3);
    try {
      await sn.prepare('ctr', 'l3');
      await sn.close();
      const [mounted] = inChild(root, `mount:ctr:${target}:mount-api`);
      assert.ok(mounted!.ok, mounted!.message);
      assert.ok(isMounted(target));
      const again = await Snapshotter.open(root);
      try {
        writeFileSync(join(target, 'written'), 'after the mounter exited');
        await assert.rejects(again.remove('ctr'), REFUSED(target));
        const [remove] = inChild(root, 'remove:ctr');
        assert.equal(remove!.code, 'ERR_FAILED_PRECONDITION', remove!.message);
        // Taken off by this process, which did not mount it: the record is stale, not a protection.
        await unmountAll(target);
        assert.equal(recordFiles(root).length, 1, 'the record outlives an unmount by another process');
        await again.remove('ctr');
        assert.deepEqual(recordFiles(root), [], 'found stale and deleted');
      } finally {
        await again.close();
      }
    } finally {
      await sn.close();
    }
  });

  test('a root opened through a symlink: a mounted container and a mounted bind of a layer are still found', async () => {
    const { root: real, target } = fresh(false);
    mkdirSync(real, { recursive: true });
    const root = `${real}-link`;
    symlinkSync(real, root);
    const sn = await chain(root, 2);
    const bindTarget = `${target}-bind`;
    mkdirSync(bindTarget);
    try {
      const mounts = await sn.prepare('ctr', 'l2');
      assert.ok(upperOf(mounts).startsWith(`${root}/`), 'specs name the root as it was given');
      // A view of one layer is a bind of it, which the mount table shows by its real path.
      await sn.prepare('s');
      await sn.commit('solo', 's');
      const bind = await sn.view('v', 'solo');
      assert.equal(bind[0]!.type, 'bind');
      await mountAll(mounts, target);
      await mountAll(bind, bindTarget);
      try {
        await assert.rejects(sn.remove('ctr'), REFUSED(target));
        await sn.remove('v');
        await assert.rejects(sn.remove('solo'), REFUSED(bindTarget));
        const [removeCtr, removeSolo] = inChild(root, 'remove:ctr', 'remove:solo');
        assert.equal(removeCtr!.code, 'ERR_FAILED_PRECONDITION', removeCtr!.message);
        assert.equal(removeSolo!.code, 'ERR_FAILED_PRECONDITION', removeSolo!.message);
      } finally {
        await unmountAll(target);
        await unmountAll(bindTarget);
      }
      await sn.remove('ctr');
      await sn.remove('solo');
    } finally {
      await sn.close();
    }
  });

  test('with unmountOnRemove, remove takes the hidden-form mount off first, and the container goes', async () => {
    const { root, target } = fresh(true);
    const sn = await chain(root, 17);
    await sn.close();
    const un = await Snapshotter.open(root, { unmountOnRemove: true });
    try {
      await mountAll(await un.prepare('ctr', 'l17'), target, { strategy: 'mount-api' });
      try {
        await un.remove('ctr');
        assert.equal(isMounted(target), false);
        await assert.rejects(un.stat('ctr'), { code: 'ERR_NOT_FOUND' });
        assert.deepEqual(recordFiles(root), []);
      } finally {
        await unmountAll(target);
      }
    } finally {
      await un.close();
    }
  });

  test('a record that cannot be written refuses the mount with ERR_UNAVAILABLE naming the folder, and nothing is mounted', async () => {
    const { root, target } = fresh(true);
    const sn = await chain(root, 2);
    try {
      const mounts = await sn.prepare('ctr', 'l2');
      // A file where the records folder goes.
      writeFileSync(join(root, RECORDS_DIR), '');
      await assert.rejects(mountAll(mounts, target, { strategy: 'mount-api' }), (err: Error & { code?: string }) => {
        assert.equal(err.code, 'ERR_UNAVAILABLE', String(err));
        assert.ok(err.message.includes(join(root, RECORDS_DIR)), err.message);
        return true;
      });
      assert.equal(isMounted(target), false);
      assert.ok(existsSync(upperOf(mounts)));
    } finally {
      await sn.close();
    }
  });
});
