/**
 * Run by test/rootless.test.ts inside `unshare --user --map-root-user
 * --mount`: opens a snapshotter on `argv[2]` (a directory the mapped user
 * owns), stacks layers with real mounts and reports what it saw as JSON on
 * the last line of stdout. With `argv[3] === 'tmpfs'` the root is a tmpfs
 * mounted in this (private) mount namespace first. Mounts die with the
 * namespace; they are still unmounted in `finally`, as a good citizen.
 */
import assert from 'node:assert/strict';
import { lstatSync, mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { Snapshotter, mountAll, unmountAll, type Mount } from '../../lib/index.js';
import { llistxattr } from '../../lib/kernel/xattr.js';

const base = process.argv[2];
const onTmpfs = process.argv[3] === 'tmpfs';
if (base === undefined) throw new Error('usage: rootless-child.ts <dir> [tmpfs]');

const target = `${base}/target`;
const report: Record<string, unknown> = { uidMap: readFileSync('/proc/self/uid_map', 'utf8').trim() };

async function mounted<T>(mounts: Mount[], fn: (dir: string) => T): Promise<T> {
  await mountAll(mounts, target);
  try {
    return fn(target);
  } finally {
    await unmountAll(target);
  }
}

async function overlayScenario(root: string): Promise<void> {
  const sn = await Snapshotter.open(root);
  try {
    report.capabilities = sn.capabilities;
    const base1 = await sn.prepare('l1-active');
    report.bindSpec = base1;
    await mounted(base1, (d) => {
      writeFileSync(`${d}/kept`, 'from l1');
      writeFileSync(`${d}/gone`, 'deleted by l2');
      mkdirSync(`${d}/dir`);
      writeFileSync(`${d}/dir/old`, 'old');
    });
    await sn.commit('l1', 'l1-active');

    const upper = await sn.prepare('l2-active', 'l1');
    report.activeSpec = upper;
    await mounted(upper, (d) => {
      assert.equal(readFileSync(`${d}/kept`, 'utf8'), 'from l1');
      rmSync(`${d}/gone`);
      // Removing a lower directory and making it again takes an opaque xattr.
      rmSync(`${d}/dir`, { recursive: true });
      mkdirSync(`${d}/dir`);
      writeFileSync(`${d}/dir/new`, 'new');
      writeFileSync(`${d}/kept`, 'changed by l2');
    });
    await sn.commit('l2', 'l2-active');
    const upperDir = `${root}/snapshots/2/fs`;
    report.whiteoutIsCharDevice = lstatSync(`${upperDir}/gone`).isCharacterDevice();
    report.opaqueXattrs = llistxattr(`${upperDir}/dir`).filter((n) => n.includes('overlay'));

    const view = await sn.view('v', 'l2');
    report.viewSpec = view;
    report.merged = await mounted(view, (d) => {
      let erofs = false;
      try {
        writeFileSync(`${d}/new`, 'no');
      } catch (err) {
        erofs = (err as NodeJS.ErrnoException).code === 'EROFS';
      }
      return { entries: readdirSync(d).sort(), dir: readdirSync(`${d}/dir`), kept: readFileSync(`${d}/kept`, 'utf8'), erofs };
    });
    await sn.remove('v');
    await sn.remove('l2');
    await sn.remove('l1');
    await sn.cleanup();
  } finally {
    await sn.close();
  }
  const again = await Snapshotter.open(root);
  report.reopenedFromCache = again.capabilities.cached;
  await again.close();
}

async function nativeScenario(root: string): Promise<void> {
  const sn = await Snapshotter.open(root, { driver: 'native' });
  try {
    await mounted(await sn.prepare('n1-active'), (d) => {
      writeFileSync(`${d}/f`, 'native');
      mkdirSync(`${d}/sub`);
    });
    await sn.commit('n1', 'n1-active');
    const child = await sn.prepare('n2', 'n1');
    report.nativeSpec = child;
    report.nativeSeen = await mounted(child, (d) => {
      rmSync(`${d}/sub`, { recursive: true });
      return readdirSync(d).sort();
    });
    report.nativeParentKept = readdirSync(`${root}/snapshots/1/fs`).sort();
  } finally {
    await sn.close();
  }
}

mkdirSync(target, { recursive: true });
const root = onTmpfs ? `${base}/tmpfs` : base;
if (onTmpfs) {
  mkdirSync(root, { recursive: true });
  await mountAll([{ type: 'tmpfs', source: 'tmpfs', options: ['mode=0755'] }], root);
}
try {
  await overlayScenario(`${root}/overlay-root`);
  await nativeScenario(`${root}/native-root`);
} finally {
  if (onTmpfs) await unmountAll(root);
}
process.stdout.write(`${JSON.stringify(report)}\n`);
