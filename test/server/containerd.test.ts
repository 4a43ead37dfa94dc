/**
 * A real containerd drives our snapshotter: `overlay-snapshotter serve` is
 * its proxy plugin, `ctr` imports an image we build from busybox-static,
 * runs a container on it with runc, works the snapshots by hand, and
 * containerd's garbage collector empties our store once the image is gone.
 */
import assert from 'node:assert/strict';
import { readdirSync, writeFileSync } from 'node:fs';
import { test } from 'node:test';
import { v4 as uuidv4 } from 'uuid';
import { Snapshotter, chainIds } from '../../lib/index.js';
import { connect } from '../../lib/server/index.js';
import { type Containerd, containerdSkipReason, startContainerd } from '../helpers/containerd.js';
import { removeTree, tempDir } from '../helpers/fixtures.js';
import { type ServeProcess, startServe } from '../helpers/grpc.js';
import { IMAGE_FILES, writeBusyboxImage } from '../helpers/oci-image.js';
import { REQUIRE_MOUNT } from '../helpers/require-mount.js';

const PLUGIN = 'ovl';
const IMAGE = 'docker.io/library/ovl-test:1';

const skipReason = containerdSkipReason();

/** Rows of a `ctr` table, split on runs of spaces, header dropped. */
function rows(table: string): string[][] {
  return table
    .trim()
    .split('\n')
    .slice(1)
    .filter((l) => l.trim() !== '')
    .map((l) => l.trim().split(/\s+/));
}

/** The names our store holds, as containerd's metadata layer named them (`<namespace>/<n>/<name>`). */
async function storeNames(address: string): Promise<string[]> {
  const client = connect(address);
  try {
    const names: string[] = [];
    await client.walk((info) => void names.push(info.name));
    return names;
  } finally {
    await client.close();
  }
}

test('containerd imports, runs and garbage-collects an image on our snapshotter through ctr', { skip: REQUIRE_MOUNT ? false : (skipReason ?? false), timeout: 300_000 }, async (t) => {
  if (skipReason !== undefined) throw new Error(`OVERLAY_SNAPSHOTTER_REQUIRE_MOUNT=1 but ${skipReason}`);
  const dir = tempDir('ovl-ctd-');
  const root = `${dir}/ours`;
  const namespace = `ovl-test-${uuidv4().slice(0, 8)}`;
  let server: ServeProcess | undefined;
  let containerd: Containerd | undefined;
  try {
    server = await startServe(root, `${dir}/run/ovl.sock`);
    containerd = await startContainerd({ dir: `${dir}/containerd`, namespace, proxies: { [PLUGIN]: server.address } });
    const ctr = containerd.ctr;
    const snapshots = (...args: string[]) => ctr('snapshots', '--snapshotter', PLUGIN, ...args);
    const { layers } = await writeBusyboxImage(`${dir}/image.tar`, IMAGE);
    const [chain1, chain2] = chainIds(layers);
    /** Our name of a snapshot containerd calls `name`. */
    const ours = async (name: string) => {
      const found = (await storeNames(server!.address)).filter((n) => n.startsWith(`${namespace}/`) && n.endsWith(`/${name}`));
      assert.equal(found.length, 1, `one snapshot of ours for ${name}, got ${JSON.stringify(found)}`);
      return found[0]!;
    };

    await t.test('ctr images import unpacks both layers into our store', async () => {
      const { stdout } = await ctr('images', 'import', '--snapshotter', PLUGIN, `${dir}/image.tar`);
      assert.match(stdout, new RegExp(`unpacking ${IMAGE} .*done`));
      assert.deepEqual(rows((await snapshots('ls')).stdout).sort(), [[chain1!, 'Committed'], [chain2!, chain1!, 'Committed']].sort());
      const names = await storeNames(server!.address);
      assert.equal(names.length, 2, `two committed layers, got ${JSON.stringify(names)}`);
      for (const name of names) assert.match(name, new RegExp(`^${namespace}/\\d+/sha256:[0-9a-f]{64}$`), 'containerd\'s keys pass through untouched');
    });

    await t.test('ctr run on our snapshotter sees both layers and the whiteout', async () => {
      const script = 'cat /etc/layer1.txt /etc/layer2.txt; if [ -e /etc/doomed.txt ]; then echo doomed present; else echo doomed absent; fi; ls /etc';
      const { stdout } = await ctr('run', '--rm', '--snapshotter', PLUGIN, IMAGE, `c-${namespace}`, '/bin/sh', '-c', script);
      assert.equal(stdout, `${IMAGE_FILES.layer1}${IMAGE_FILES.layer2}doomed absent\nlayer1.txt\nlayer2.txt\n`);
      // containerd forgets the container's snapshot at once; its garbage collector removes ours later (checked below).
      assert.equal(rows((await snapshots('ls')).stdout).length, 2);
    });

    await t.test('ctr snapshots info and tree show the chain', async () => {
      const info = JSON.parse((await snapshots('info', chain2!)).stdout) as { Kind: string; Name: string; Parent: string };
      assert.equal(info.Kind, 'Committed');
      assert.equal(info.Name, chain2);
      assert.equal(info.Parent, chain1);
      const tree = (await snapshots('tree')).stdout.split('\n').filter(Boolean);
      assert.deepEqual(tree, [` ${chain1}`, `  \\_ ${chain2}`]);
    });

    await t.test('ctr snapshots usage reports what our store measured', async () => {
      const usage = rows((await snapshots('usage', '-b')).stdout);
      const client = connect(server!.address);
      try {
        for (const chain of [chain1!, chain2!]) {
          const row = usage.find((r) => r[0] === chain);
          assert.ok(row, `a usage row for ${chain}`);
          const expected = await client.usage(await ours(chain));
          assert.deepEqual([Number(row[1]), Number(row[2])], [expected.size, expected.inodes]);
        }
        const layer1 = usage.find((r) => r[0] === chain1)!;
        assert.ok(Number(layer1[1]) >= 1_000_000, 'layer 1 holds busybox');
        assert.equal(Number(layer1[2]), 14, 'the root, 6 dirs, busybox, 4 links, 2 files');
      } finally {
        await client.close();
      }
    });

    await t.test('ctr snapshots prepare, mounts, label, commit, view and rm work by hand', async () => {
      await snapshots('prepare', 'work-1', chain2!);
      const mountLine = (await snapshots('mounts', '/mnt/target', 'work-1')).stdout.trim();
      const upper = /upperdir=([^,\s]+)/.exec(mountLine)?.[1];
      assert.match(mountLine, /^mount -t overlay overlay \/mnt\/target -o workdir=.*,upperdir=.*,lowerdir=/);
      assert.ok(upper?.startsWith(`${root}/snapshots/`), `the upper dir is ours: ${mountLine}`);
      const lowers = /lowerdir=([^,\s]+)/.exec(mountLine)![1]!.split(':');
      assert.equal(lowers.length, 2);
      writeFileSync(`${upper}/added.txt`, 'by hand\n');
      await snapshots('label', 'work-1', 'containerd.io/snapshot/probe=yes');
      const client = connect(server!.address);
      try {
        assert.equal((await client.stat(await ours('work-1'))).labels['containerd.io/snapshot/probe'], 'yes', 'containerd passes containerd.io/snapshot/ labels on');
      } finally {
        await client.close();
      }
      await snapshots('commit', 'layer-3', 'work-1');
      const listed = rows((await snapshots('ls')).stdout);
      assert.deepEqual(listed.find((r) => r[0] === 'layer-3'), ['layer-3', chain2, 'Committed']);
      const view = JSON.parse((await snapshots('view', '--mounts', 'view-1', 'layer-3')).stdout) as { Type: string; Options: string[] }[];
      assert.equal(view[0]?.Type, 'overlay');
      assert.equal(view[0]?.Options.find((o) => o.startsWith('lowerdir='))?.split(':').length, 3, 'a view of layer 3 stacks three layers');
      await snapshots('rm', 'view-1', 'layer-3');
      assert.deepEqual(rows((await snapshots('ls')).stdout).map((r) => r[0]).sort(), [chain1, chain2].sort());
    });

    await t.test('after ctr images rm, containerd\'s garbage collector empties our store', async () => {
      await ctr('images', 'rm', '--sync', IMAGE);
      assert.deepEqual(rows((await snapshots('ls')).stdout), []);
      // The collector removes backend snapshots after its own records; give it a moment.
      const deadline = Date.now() + 30_000;
      while ((await storeNames(server!.address)).length > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
      assert.deepEqual(await storeNames(server!.address), []);
      assert.deepEqual(readdirSync(`${root}/snapshots`).filter((n) => /^\d+$/.test(n)), [], 'Cleanup left no snapshot directory');
    });

    await t.test('SIGTERM stops the server: socket removed, store closed, one line on stderr', async () => {
      await containerd!.stop();
      const { code, stderr } = await server!.stop('SIGTERM');
      assert.equal(code, 0, stderr);
      const lines = stderr.trim().split('\n');
      assert.equal(lines.length, 2, stderr);
      assert.match(lines[0]!, /^overlay-snapshotter: serving .*\/ours on .*\/run\/ovl\.sock \(pid \d+\)$/);
      assert.equal(lines[1], 'overlay-snapshotter: stopped on SIGTERM: socket removed, store closed');
      assert.deepEqual(readdirSync(`${dir}/run`), []);
      const sn = await Snapshotter.open(root);
      try {
        assert.equal((await sn.check()).ok, true);
      } finally {
        await sn.close();
      }
    });
  } finally {
    await containerd?.stop();
    await server?.stop('SIGKILL');
    await removeTree(dir);
  }
});
