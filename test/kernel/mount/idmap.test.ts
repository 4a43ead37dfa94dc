/**
 * ID-mapped mounts made by mountAll (lib/kernel/mount/idmap.ts, lib/kernel/userns.ts),
 * for real: what a container in a user namespace mapping its root to host
 * id 100000 would see through the mount, where its writes land, and that
 * nothing (helper process, user namespace, temporary mount point) is left
 * once the mount is made or taken off.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, test } from 'node:test';
import { InvalidArgumentError } from '../../../lib/model/errors.js';
import { mountAll, unmountAll, type OverlayStrategy } from '../../../lib/kernel/mount/index.js';
import { setLayerFdsProbe } from '../../../lib/kernel/mount/idmap.js';
import { RECORDS_DIR } from '../../../lib/kernel/mount/records.js';
import { snapshotMounts } from '../../../lib/kernel/mount/in-use.js';
import { openUserNamespaces } from '../../../lib/kernel/userns.js';
import type { Mount } from '../../../lib/model/types.js';
import { mountPoints, removeTree } from '../../helpers/fixtures.js';
import { assertPrerequisite, mountSkipReason, prerequisiteOptions, toolSkipReason } from '../../helpers/require-mount.js';

const MAP = ['uidmap=0:100000:65536', 'gidmap=0:100000:65536'];
const SETPRIV_MISSING = toolSkipReason('setpriv', ['--version'], '(util-linux) to write as the host id of container root');
const opts = prerequisiteOptions(mountSkipReason());

/**
 * The processes whose parent is this one (a helper left behind would be
 * one), but for tsx's esbuild service, which compiles the sources on a cold cache.
 */
function children(): string[] {
  const out: string[] = [];
  for (const pid of fs.readdirSync('/proc').filter((n) => /^\d+$/.test(n))) {
    try {
      const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      const name = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'));
      if (Number(fields[1]) === process.pid && name !== 'esbuild') out.push(`${pid} ${name}`);
    } catch {
      // Gone meanwhile.
    }
  }
  return out;
}

/** Temporary layer mount points of idmap.ts: mounted ones, and dirs left in the temp dir. */
function temporaryPoints(): string[] {
  const mounted = mountPoints().filter((p) => p.includes('/overlay-snapshotter-idmap-'));
  const dirs = fs.readdirSync(tmpdir()).filter((n) => n.startsWith('overlay-snapshotter-idmap-'));
  return [...mounted, ...dirs];
}

/** A fake store root, so that mountAll's records (records.ts) apply: `<root>/metadata.db` and `<root>/snapshots/<id>/fs`. */
function storeLayout(base: string): { root: string; layer: (id: number) => string; upper: string; work: string } {
  const root = join(base, 'root');
  fs.mkdirSync(`${root}/snapshots`, { recursive: true });
  fs.writeFileSync(`${root}/metadata.db`, '');
  const layer = (id: number) => `${root}/snapshots/${id}/fs`;
  for (const id of [1, 2, 3]) fs.mkdirSync(layer(id), { recursive: true });
  fs.mkdirSync(`${root}/snapshots/3/work`);
  // Layers hold the image's ids unmapped; the upper belongs to the mapped root.
  fs.writeFileSync(`${layer(1)}/base-file`, 'base');
  fs.mkdirSync(`${layer(2)}/etc`);
  fs.writeFileSync(`${layer(2)}/etc/owned-by-7`, 'seven');
  fs.chownSync(`${layer(2)}/etc/owned-by-7`, 7, 8);
  fs.chownSync(layer(3), 100000, 100000);
  return { root, layer, upper: layer(3), work: `${root}/snapshots/3/work` };
}

async function withBase(fn: (base: string) => Promise<void>): Promise<void> {
  const base = fs.realpathSync(fs.mkdtempSync(join(tmpdir(), 'ovl-idmap-test-')));
  try {
    await fn(base);
  } finally {
    await removeTree(base);
  }
}

function owner(path: string): string {
  const st = fs.lstatSync(path);
  return `${st.uid}:${st.gid}`;
}

afterEach(() => setLayerFdsProbe(undefined));

describe('ID-mapped overlay', () => {
  // Descriptors where the kernel takes them (6.13+); the temporary mount points as older kernels need, with either strategy.
  const ways: { name: string; fds: boolean; strategy: OverlayStrategy }[] = [
    { name: 'layers by descriptor', fds: true, strategy: 'mount-api' },
    { name: 'layers through temporary mount points, mount API', fds: false, strategy: 'mount-api' },
    { name: 'layers through temporary mount points, one mount(2)', fds: false, strategy: 'legacy' },
  ];
  for (const way of ways) {
    test(`${way.name}: a layer's 0:0 shows as 100000:100000, root's writes land in the upper as 0:0, and nothing is left but the overlay`, opts, async () => {
      await withBase(async (base) => {
        const { root, layer, upper, work } = storeLayout(base);
        const target = join(base, 'rootfs');
        fs.mkdirSync(target);
        setLayerFdsProbe(way.fds);
        const before = temporaryPoints();
        const spec: Mount = { type: 'overlay', source: 'overlay', options: [...MAP, `workdir=${work}`, `upperdir=${upper}`, `lowerdir=${layer(2)}:${layer(1)}`, 'index=off'] };
        await mountAll([spec], target, { strategy: way.strategy });
        try {
          assert.equal(owner(`${target}/base-file`), '100000:100000', 'a layer file owned by 0:0 shows as the mapped host ids');
          assert.equal(owner(`${target}/etc/owned-by-7`), '100007:100008', 'every id is shifted by the map');
          assert.equal(owner(target), '100000:100000', 'the root of the mount is the upper, not mapped again');
          fs.writeFileSync(`${target}/written-by-root`, 'x');
          assert.equal(owner(`${upper}/written-by-root`), '0:0', 'the upper is not ID-mapped: a write keeps the writer\'s ids');
          fs.appendFileSync(`${target}/base-file`, '+');
          assert.equal(owner(`${upper}/base-file`), '100000:100000', 'a copy-up keeps the owner it showed');
          assert.equal(fs.readFileSync(`${layer(1)}/base-file`, 'utf8'), 'base', 'the layer itself is untouched');
          assert.deepEqual(children(), [], 'the helper that made the user namespace is gone');
          assert.equal(openUserNamespaces(), 0, 'no user namespace is held once the mount is made');
          assert.deepEqual(temporaryPoints(), before, 'no temporary mount point is left');
          const top = fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').filter((l) => l.split(' ')[4] === target);
          assert.equal(top.length, 1);
          assert.doesNotMatch(top[0]!, /snapshots\/[12]\/fs/, 'the mount table does not name the layers');
          const records = fs.readdirSync(`${root}/${RECORDS_DIR}`);
          assert.equal(records.length, 1, 'so the mount is recorded');
          assert.deepEqual([...snapshotMounts(`${root}/snapshots`).keys()].sort(), [1, 2, 3], 'and the layers count as in use');
        } finally {
          await unmountAll(target);
        }
        assert.equal(mountPoints().filter((p) => p.startsWith(base)).length, 0, 'nothing mounted after unmountAll');
        assert.deepEqual(fs.readdirSync(`${root}/${RECORDS_DIR}`), [], 'the record goes with the mount');
        assert.deepEqual(children(), []);
      });
    });
  }

  test('a process running as the host id of container root writes through the mount, and its files land in the upper with that id', prerequisiteOptions(mountSkipReason() ?? SETPRIV_MISSING), async () => {
    assertPrerequisite(SETPRIV_MISSING);
    await withBase(async (base) => {
      const { layer, upper, work } = storeLayout(base);
      const target = join(base, 'rootfs');
      fs.mkdirSync(target);
      fs.chmodSync(base, 0o755);
      await mountAll([{ type: 'overlay', source: 'overlay', options: [...MAP, `workdir=${work}`, `upperdir=${upper}`, `lowerdir=${layer(1)}`] }], target);
      try {
        const r = spawnSync('setpriv', ['--reuid=100000', '--regid=100000', '--clear-groups', 'sh', '-c', `echo hi > ${target}/by-container && echo more >> ${target}/base-file`], { encoding: 'utf8' });
        assert.equal(r.status, 0, r.stderr);
        assert.equal(owner(`${upper}/by-container`), '100000:100000');
        assert.equal(fs.readFileSync(`${upper}/base-file`, 'utf8'), 'basemore\n', 'container root owns the layer\'s files through the map, so it may write them');
      } finally {
        await unmountAll(target);
      }
    });
  });

  test('a view (an overlay without upper) has its layers ID-mapped the same way', opts, async () => {
    await withBase(async (base) => {
      const { layer } = storeLayout(base);
      const target = join(base, 'view');
      fs.mkdirSync(target);
      await mountAll([{ type: 'overlay', source: 'overlay', options: [...MAP, `lowerdir=${layer(2)}:${layer(1)}`] }], target);
      try {
        assert.equal(owner(`${target}/base-file`), '100000:100000');
        assert.throws(() => fs.writeFileSync(`${target}/x`, 'x'), { code: 'EROFS' });
      } finally {
        await unmountAll(target);
      }
      assert.deepEqual(children(), []);
    });
  });

  test('mounts made at the same time with one mapping share one user namespace, and it is closed after', opts, async () => {
    await withBase(async (base) => {
      const { layer } = storeLayout(base);
      const targets = [0, 1, 2].map((i) => join(base, `t${i}`));
      for (const t of targets) fs.mkdirSync(t);
      await Promise.all(targets.map((t) => mountAll([{ type: 'overlay', source: 'overlay', options: [...MAP, `lowerdir=${layer(2)}:${layer(1)}`] }], t)));
      try {
        for (const t of targets) assert.equal(owner(`${t}/base-file`), '100000:100000');
        assert.equal(openUserNamespaces(), 0);
      } finally {
        for (const t of targets) await unmountAll(t);
      }
    });
  });
});

describe('ID-mapped bind', () => {
  test('a read-only bind of one layer is ID-mapped and stays read-only, with no remount and no helper left', opts, async () => {
    await withBase(async (base) => {
      const { layer } = storeLayout(base);
      const target = join(base, 'bind');
      fs.mkdirSync(target);
      await mountAll([{ type: 'bind', source: layer(2), options: [...MAP, 'ro', 'rbind'] }], target);
      try {
        assert.equal(owner(`${target}/etc/owned-by-7`), '100007:100008');
        assert.throws(() => fs.writeFileSync(`${target}/x`, 'x'), { code: 'EROFS' });
        const line = fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').find((l) => l.split(' ')[4] === target)!;
        assert.match(line, /\bidmapped\b/, 'the mount table says it is ID-mapped');
        assert.equal(line.split(' ')[3], layer(2), 'and names its source, so the layer counts as in use');
        assert.deepEqual(children(), []);
      } finally {
        await unmountAll(target);
      }
    });
  });
});

describe('malformed ID maps', () => {
  const cases: [string, string[]][] = [
    ['overlapping ranges', ['uidmap=0:100000:1000,500:300000:10', 'gidmap=0:100000:65536']],
    ['a non-numeric range', ['uidmap=0:100000:65536', 'gidmap=root:100000:65536']],
    ['more than the kernel\'s 340 extents', [`uidmap=${Array.from({ length: 341 }, (_, i) => `${i}:${100000 + i}:1`).join(',')}`, 'gidmap=0:100000:65536']],
    ['a map too long for the kernel\'s one write', [`uidmap=${Array.from({ length: 300 }, (_, i) => `${4000000000 + i}:${4000000000 + i}:1`).join(',')}`, 'gidmap=0:100000:65536']],
  ];
  for (const [name, map] of cases) {
    test(`${name} is InvalidArgumentError, before any helper or mount`, opts, async () => {
      await withBase(async (base) => {
        const { layer } = storeLayout(base);
        const target = join(base, 'rootfs');
        fs.mkdirSync(target);
        await assert.rejects(mountAll([{ type: 'overlay', source: 'overlay', options: [...map, `lowerdir=${layer(2)}:${layer(1)}`] }], target), InvalidArgumentError);
        assert.equal(mountPoints().filter((p) => p.startsWith(base)).length, 0);
        assert.deepEqual(children(), []);
        assert.equal(openUserNamespaces(), 0);
      });
    });
  }
});
