/**
 * The copy-based driver (`driver: 'native'`) and the fallback it offers
 * where overlay cannot run: a root on overlayfs, a filesystem without
 * d_type. The conformance suite runs against it from snapshotter.test.ts;
 * these tests cover what only it does.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import {
  chmodSync,
  existsSync,
  linkSync,
  lchownSync,
  lstatSync,
  mkdirSync,
  readFileSync,
  readdirSync,
  readlinkSync,
  rmSync,
  symlinkSync,
  writeFileSync,
  type BigIntStats,
} from 'node:fs';
import { describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { Snapshotter, isFailedPrecondition, isInvalidArgument, isNotFound, isUnavailable, mountAll, unmountAll, type Mount } from '../../lib/index.js';
import { lutimesNs, mknod } from '../../lib/kernel/files.js';
import { lsetxattr, lxattrs } from '../../lib/kernel/xattr.js';
import { buildMounts } from '../../lib/model/specs.js';
import { isMounted, removeTree, snapshotEntries, tempDir, withMounted, withSnapshotter } from '../helpers/fixtures.js';
import { REQUIRE_MOUNT, mountTestOptions } from '../helpers/require-mount.js';

const mountOpts = mountTestOptions();
const REPO = fileURLToPath(new URL('../..', import.meta.url));
const CLEANUP_CHILD = fileURLToPath(new URL('../helpers/cleanup-loop-child.ts', import.meta.url));
const NATIVE = { driver: 'native' } as const;

/** A version 2 `security.capability` granting CAP_NET_BIND_SERVICE (10), permitted and effective. */
function fileCapability(): Buffer {
  const b = Buffer.alloc(20);
  b.writeUInt32LE(0x02000001, 0); // VFS_CAP_REVISION_2 | VFS_CAP_FLAGS_EFFECTIVE
  b.writeUInt32LE(1 << 10, 4); // permitted, low word
  return b;
}

const MTIME = 1_234_567_890_123_456_789n;

/** Fills `d` with one of everything a container image holds. Needs root (chown, mknod, trusted.* xattrs). */
function fillTree(d: string): void {
  writeFileSync(`${d}/setuid`, 'binary');
  lchownSync(`${d}/setuid`, 1234, 5678);
  chmodSync(`${d}/setuid`, 0o4755);
  lsetxattr(`${d}/setuid`, 'security.capability', fileCapability());
  lsetxattr(`${d}/setuid`, 'user.note', Buffer.from('kept'));
  lsetxattr(`${d}/setuid`, 'trusted.note', Buffer.from('kept too'));
  mkdirSync(`${d}/dir`, 0o750);
  lchownSync(`${d}/dir`, 42, 43);
  writeFileSync(`${d}/dir/h1`, 'linked');
  linkSync(`${d}/dir/h1`, `${d}/h2`);
  symlinkSync('dir/h1', `${d}/link`);
  lchownSync(`${d}/link`, 7, 8);
  mknod(`${d}/null`, 'character-device', 0o666, 1, 3);
  mknod(`${d}/pipe`, 'fifo', 0o640);
  writeFileSync(`${d}/sparse`, '');
  writeFileSync(`${d}/sparse`, 'x', { flag: 'r+', encoding: 'utf8' });
  // A 64 MiB hole then one byte: a copy that fills holes would show in blocks.
  spawnSync('truncate', ['-s', '64M', `${d}/sparse`]);
  for (const name of ['setuid', 'dir/h1', 'link', 'null', 'pipe', 'dir']) lutimesNs(`${d}/${name}`, MTIME, MTIME);
}

/** The facts of one entry that a copy must keep (inode numbers aside). */
function facts(path: string): Record<string, unknown> {
  const st = lstatSync(path, { bigint: true }) as BigIntStats;
  return {
    mode: st.mode.toString(8),
    uid: st.uid,
    gid: st.gid,
    size: st.size,
    rdev: st.rdev,
    nlink: st.nlink,
    mtimeNs: st.isDirectory() ? undefined : st.mtimeNs,
    xattrs: Object.fromEntries([...lxattrs(path)].map(([k, v]) => [k, v.toString('hex')])),
    link: st.isSymbolicLink() ? readlinkSync(path) : undefined,
  };
}

const ENTRIES = ['setuid', 'dir', 'dir/h1', 'h2', 'link', 'null', 'pipe', 'sparse'];

describe('native driver', () => {
  test('driver takes only "overlay" or "native", and a misspelling names it', async () => {
    const root = tempDir();
    try {
      await assert.rejects(Snapshotter.open(root, { driver: 'vfs' } as never), (err: Error) => isInvalidArgument(err) && /`driver` to be 'overlay' or 'native', got "vfs"/.test(err.message));
      await assert.rejects(Snapshotter.open(root, { drivr: 'native' } as never), /Unknown option `drivr`.*did you mean `driver`/);
    } finally {
      await removeTree(root);
    }
  });

  test('every native mount is a bind: an active of its own tree, a view of its parent\'s (or its own when parentless)', () => {
    const settings = { snapshotsDir: '/r/snapshots', overlayOptions: ['userxattr', 'index=off'], driver: 'native' as const };
    const bind = (id: number, mode: 'rw' | 'ro') => [{ type: 'bind', source: `/r/snapshots/${id}/fs`, options: [mode, 'rbind'] }];
    assert.deepEqual(buildMounts(settings, 'active', 7, []), bind(7, 'rw'));
    assert.deepEqual(buildMounts(settings, 'active', 9, [5, 3, 1], ['uidmap=0:1000:10', 'gidmap=0:1000:10']), bind(9, 'rw'), 'no overlay options, no ID maps');
    assert.deepEqual(buildMounts(settings, 'view', 7, []), bind(7, 'ro'));
    assert.deepEqual(buildMounts(settings, 'view', 9, [5]), bind(5, 'ro'));
    assert.deepEqual(buildMounts(settings, 'view', 9, [5, 3, 1]), bind(5, 'ro'), 'the parent\'s tree is already merged');
  });

  test('a new active starts as a full copy of its parent: owners, modes, times, xattrs, hard links, symlinks, devices, FIFOs, holes', mountOpts, async () => {
    await withSnapshotter(NATIVE, async (sn, root) => {
      await sn.prepare('base-active');
      fillTree(`${root}/snapshots/1/fs`);
      chmodSync(`${root}/snapshots/1/fs`, 0o751);
      lchownSync(`${root}/snapshots/1/fs`, 99, 98);
      await sn.commit('base', 'base-active');
      await sn.prepare('child', 'base');
      const parent = `${root}/snapshots/1/fs`;
      const copy = `${root}/snapshots/2/fs`;
      for (const name of ['', ...ENTRIES]) assert.deepEqual(facts(`${copy}/${name}`), facts(`${parent}/${name}`), `entry ${name || '(root)'}`);
      assert.equal(lstatSync(`${copy}/dir/h1`).ino, lstatSync(`${copy}/h2`).ino, 'hard links stay linked in the copy');
      assert.notEqual(lstatSync(`${copy}/dir/h1`).ino, lstatSync(`${parent}/dir/h1`).ino, 'and are not the parent\'s inode');
      assert.ok(lstatSync(`${copy}/sparse`).blocks * 512 < 1024 * 1024, 'holes stay holes');
      assert.equal(readFileSync(`${copy}/h2`, 'utf8'), 'linked');
    });
  });

  test('writes, deletions and hard-link edits in a native active never reach its parent or siblings', mountOpts, async () => {
    await withSnapshotter(NATIVE, async (sn, root) => {
      await withMounted(await sn.prepare('base-active'), (d) => {
        writeFileSync(`${d}/h1`, 'original');
        linkSync(`${d}/h1`, `${d}/h2`);
        mkdirSync(`${d}/dir`);
        writeFileSync(`${d}/dir/f`, 'f');
      });
      await sn.commit('base', 'base-active');
      const [a, b] = [await sn.prepare('a', 'base'), await sn.prepare('b', 'base')];
      await withMounted(a, (d) => {
        writeFileSync(`${d}/h1`, 'changed in a');
        assert.equal(readFileSync(`${d}/h2`, 'utf8'), 'changed in a', 'the link pair is one inode in the copy');
        rmSync(`${d}/dir`, { recursive: true });
      });
      await withMounted(b, (d) => assert.deepEqual([readFileSync(`${d}/h2`, 'utf8'), readdirSync(`${d}/dir`)], ['original', ['f']]));
      assert.deepEqual(readdirSync(`${root}/snapshots/1/fs`).sort(), ['dir', 'h1', 'h2']);
      assert.equal(readFileSync(`${root}/snapshots/1/fs/h1`, 'utf8'), 'original');
      await sn.commit('a-done', 'a');
      await withMounted(await sn.view('v', 'a-done'), (d) => assert.deepEqual(readdirSync(d).sort(), ['h1', 'h2']));
    });
  });

  test('usage of a native active counts its whole tree, and so does its commit', async () => {
    await withSnapshotter(NATIVE, async (sn, root) => {
      await sn.prepare('base-active');
      for (let i = 0; i < 10; i++) writeFileSync(`${root}/snapshots/1/fs/f${i}`, Buffer.alloc(8192, i));
      await sn.commit('base', 'base-active');
      await sn.prepare('child', 'base');
      const before = await sn.usage('child');
      assert.equal(before.inodes, 11, 'the copied root and its ten files, though the child changed nothing');
      assert.ok(before.size >= 10 * 8192, `size ${before.size}`);
      writeFileSync(`${root}/snapshots/2/fs/new`, 'x');
      await sn.commit('child-done', 'child');
      assert.equal((await sn.usage('child-done')).inodes, 12);
    });
  });

  test('views and parentless snapshots copy nothing: a view binds its parent\'s tree read-only', async () => {
    await withSnapshotter(NATIVE, async (sn, root) => {
      await sn.prepare('base-active');
      writeFileSync(`${root}/snapshots/1/fs/f`, 'x');
      await sn.commit('base', 'base-active');
      assert.deepEqual(await sn.view('v', 'base'), [{ type: 'bind', source: `${root}/snapshots/1/fs`, options: ['ro', 'rbind'] }]);
      assert.deepEqual(readdirSync(`${root}/snapshots/2/fs`), [], 'the view\'s own fs stays empty');
      assert.deepEqual(await sn.usage('v'), { size: 0, inodes: 0 });
    });
  });

  test('another process cleaning up all the while never takes a copy in progress for an orphan: every new active is complete', async () => {
    await withSnapshotter(NATIVE, async (sn, root) => {
      await sn.prepare('base-active');
      const base = `${root}/snapshots/1/fs`;
      for (let d = 0; d < 5; d++) {
        mkdirSync(`${base}/d${d}`);
        for (let f = 0; f < 100; f++) writeFileSync(`${base}/d${d}/f${f}`, `${d}/${f}`);
      }
      await sn.commit('base', 'base-active');
      const stop = `${root}.stop`;
      const child = spawn(process.execPath, ['--import', 'tsx', CLEANUP_CHILD, root, stop], { cwd: REPO, stdio: ['ignore', 'pipe', 'pipe'] });
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (c: Buffer) => void (stdout += c));
      child.stderr.on('data', (c: Buffer) => void (stderr += c));
      const exited = new Promise<number | null>((done) => child.on('close', done));
      try {
        // Wait (not a timing assertion) until the other process is cleaning.
        for (let i = 0; i < 600 && !existsSync(`${stop}.ready`) && child.exitCode === null; i++) await sleep(50);
        assert.ok(existsSync(`${stop}.ready`), `the cleanup process did not start: ${stderr}`);
        for (let i = 0; i < 4; i++) await sn.prepare(`c${i}`, 'base');
      } finally {
        writeFileSync(stop, '');
      }
      assert.equal(await exited, 0, stderr);
      const { rounds, removed } = JSON.parse(stdout.trim().split('\n').at(-1)!) as { rounds: number; removed: string[] };
      assert.ok(rounds > 0);
      assert.deepEqual(removed, [], 'nothing live or being made was cleaned up');
      for (let id = 2; id <= 5; id++) {
        const copy = `${root}/snapshots/${id}/fs`;
        assert.equal(readdirSync(copy).length, 5, `snapshot ${id}`);
        assert.equal(readdirSync(`${copy}/d4`).length, 100, `snapshot ${id}`);
      }
      assert.deepEqual(snapshotEntries(root).sort((a, b) => Number(a) - Number(b)), ['1', '2', '3', '4', '5']);
      rmSync(stop);
      rmSync(`${stop}.ready`);
    });
  });

  test('a copy that fails leaves neither a record nor a staging dir, and fails with ERR_UNAVAILABLE naming the parent\'s tree', async () => {
    await withSnapshotter(NATIVE, async (sn, root) => {
      await sn.prepare('base-active');
      await sn.commit('base', 'base-active');
      // A damaged root: the committed parent's tree is gone.
      rmSync(`${root}/snapshots/1/fs`, { recursive: true });
      await assert.rejects(sn.prepare('child', 'base'), (err: Error) => isUnavailable(err) && err.message.includes(`${root}/snapshots/1/fs`));
      await assert.rejects(sn.stat('child'), (err: Error) => isNotFound(err));
      assert.deepEqual(snapshotEntries(root), ['1']);
    });
  });
});

/** Mounts an overlay on `dir/merged` (its own lower, upper and work beside it) and returns the merged dir. */
async function mountOverlayAt(dir: string): Promise<string> {
  for (const d of ['lower', 'upper', 'work', 'merged']) mkdirSync(`${dir}/${d}`, { recursive: true });
  const spec: Mount = { type: 'overlay', source: 'overlay', options: [`lowerdir=${dir}/lower`, `upperdir=${dir}/upper`, `workdir=${dir}/work`] };
  await mountAll([spec], `${dir}/merged`);
  return `${dir}/merged`;
}

/** Stacks two layers and a container on `sn` through real (bind) mounts, and checks what the container sees. */
async function stackAndRun(sn: Snapshotter): Promise<void> {
  await withMounted(await sn.prepare('l1-active'), (d) => {
    writeFileSync(`${d}/a`, 'l1');
    mkdirSync(`${d}/etc`);
    writeFileSync(`${d}/etc/conf`, 'v1');
  });
  await sn.commit('l1', 'l1-active');
  const l2 = await sn.prepare('l2-active', 'l1');
  assert.equal(l2[0]!.type, 'bind');
  await withMounted(l2, (d) => {
    rmSync(`${d}/a`);
    writeFileSync(`${d}/etc/conf`, 'v2');
  });
  await sn.commit('l2', 'l2-active');
  await withMounted(await sn.prepare('ctr', 'l2'), (d) => {
    assert.deepEqual(readdirSync(d), ['etc']);
    assert.equal(readFileSync(`${d}/etc/conf`, 'utf8'), 'v2');
    writeFileSync(`${d}/etc/conf`, 'runtime');
  });
  await withMounted(await sn.view('l1-view', 'l1'), (d) => assert.deepEqual([readdirSync(d).sort(), readFileSync(`${d}/etc/conf`, 'utf8')], [['a', 'etc'], 'v1']));
  await sn.remove('l1-view');
  await sn.remove('ctr');
}

describe('fallback where overlay cannot run', () => {
  test('a new root on overlayfs picks native by itself and its containers see every layer; driver overlay there fails with ERR_UNAVAILABLE naming overlayfs', mountOpts, async () => {
    const dir = tempDir('ovl-native-');
    try {
      const merged = await mountOverlayAt(dir);
      const root = `${merged}/root`;
      await assert.rejects(Snapshotter.open(root, { driver: 'overlay' }), (err: Error) => isUnavailable(err) && /is on overlayfs/.test(err.message) && /driver: 'native'/.test(err.message));
      const sn = await Snapshotter.open(root);
      try {
        assert.equal(sn.driver, 'native', 'chosen with no option, although the refused open left a store file behind');
        assert.match(sn.driverReason, /^chosen when the store was created, as overlay is not used here: snapshotter root .* is on overlayfs/);
        const caps = sn.capabilities;
        assert.equal(caps.rootFilesystem, 'overlay');
        assert.equal(caps.rootOnOverlay, true);
        assert.equal(caps.multipleLowerDirs, null, 'no overlay mount is tried on an overlayfs root');
        assert.match(caps.overlayUnavailable ?? '', /overlayfs/);
        assert.equal(caps.defaultDriver, 'native');
        assert.match(caps.defaultDriverReason, /is on overlayfs/);
        await stackAndRun(sn);
      } finally {
        await sn.close();
      }
      const again = await Snapshotter.open(root);
      assert.equal(again.capabilities.cached, true, 'the probes are kept for the next open');
      assert.equal(again.driver, 'native', 'and the driver is the recorded one');
      await again.close();
      await assert.rejects(Snapshotter.open(root, { driver: 'overlay' }), (err: Error) => isFailedPrecondition(err) && /uses the "native" driver/.test(err.message));
      await unmountAll(merged);
      assert.equal(isMounted(merged), false);
    } finally {
      await removeTree(dir);
    }
  });

  const tools = ['mkfs.ext4', 'losetup'].filter((t) => spawnSync('sh', ['-c', `command -v ${t}`]).status !== 0);
  const noDtypeOpts = tools.length > 0 && !REQUIRE_MOUNT ? { skip: `needs ${tools.join(' and ')}` } : mountOpts;

  test('a filesystem without d_type (ext4 without filetype): driver overlay fails with ERR_UNAVAILABLE naming d_type, and a new store picks native there by itself', noDtypeOpts, async () => {
    const dir = tempDir('ovl-nodtype-');
    let loop: string | undefined;
    const mnt = `${dir}/mnt`;
    try {
      const image = `${dir}/fs.img`;
      const mkfs = spawnSync('mkfs.ext4', ['-q', '-F', '-O', '^filetype', image, '32M'], { encoding: 'utf8' });
      assert.equal(mkfs.status, 0, mkfs.stderr);
      const setup = spawnSync('losetup', ['--find', '--show', image], { encoding: 'utf8' });
      assert.equal(setup.status, 0, `losetup: ${setup.stderr}`);
      loop = setup.stdout.trim();
      mkdirSync(mnt);
      await mountAll([{ type: 'ext4', source: loop, options: [] }], mnt);
      const root = `${mnt}/root`;
      await assert.rejects(Snapshotter.open(root, { driver: 'overlay' }), (err: Error) => isUnavailable(err) && /d_type/.test(err.message) && /driver: 'native'/.test(err.message));
      const sn = await Snapshotter.open(root);
      try {
        assert.equal(sn.driver, 'native');
        assert.match(sn.driverReason, /does not record file types in directory entries \(d_type\)/);
        assert.equal(sn.capabilities.dType, false);
        assert.equal(sn.capabilities.rootFilesystem, 'ext4');
        await stackAndRun(sn);
      } finally {
        await sn.close();
      }
    } finally {
      await unmountAll(mnt).catch(() => undefined);
      if (loop !== undefined) spawnSync('losetup', ['-d', loop]);
      await removeTree(dir);
    }
    assert.equal(existsSync(dir), false);
  });
});
