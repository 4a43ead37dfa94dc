/** The conformance suite against every configuration, plus behaviour specific to options. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Snapshotter } from '../lib/index.js';
import { tempDir, removeTree, withSnapshotter } from './helpers/fixtures.js';
import { conformance } from './helpers/suite.js';

conformance({ name: 'sync removal', options: {} });
conformance({ name: 'async removal', options: { asyncRemove: true } });
conformance({
  name: 'long root path, upperdir label, extra mount options',
  options: { upperdirLabel: true, mountOptions: ['redirect_dir=off'] },
  rootExtra: `${'deep-directory-name-'.repeat(8)}/root`,
});
conformance({ name: 'native driver', options: { driver: 'native' } });

test('upperdirLabel shows the upper dir of actives and views, not of committed snapshots, and filters ignore it', async () => {
  await withSnapshotter({ upperdirLabel: true }, async (sn, root) => {
    await sn.prepare('a');
    await sn.commit('c', 'a');
    await sn.prepare('b', 'c');
    await sn.view('v', 'c');
    assert.equal((await sn.stat('b')).labels['containerd.io/snapshot/overlay.upperdir'], `${root}/snapshots/2/fs`);
    assert.equal((await sn.stat('v')).labels['containerd.io/snapshot/overlay.upperdir'], `${root}/snapshots/3/fs`);
    assert.deepEqual((await sn.stat('c')).labels, {});
    const seen: string[] = [];
    await sn.walk((i) => void seen.push(i.name), 'labels."containerd.io/snapshot/overlay.upperdir"');
    assert.deepEqual(seen, []);
  });
});

test('index=off is left out when mountOptions already set index=', async () => {
  await withSnapshotter({ mountOptions: ['index=on'] }, async (sn) => {
    await sn.prepare('a');
    await sn.commit('c', 'a');
    const [m] = await sn.prepare('b', 'c');
    assert.ok(m!.options.includes('index=on'));
    assert.ok(!m!.options.includes('index=off'));
  });
});

test('open refuses unknown, misspelt and mistyped options with ERR_INVALID_ARGUMENT naming them', async () => {
  const root = tempDir();
  try {
    await assert.rejects(Snapshotter.open(root, { asyncRemoval: true } as never), /Unknown option `asyncRemoval`.*asyncRemove/);
    await assert.rejects(Snapshotter.open(root, { asyncRemove: 'yes' } as never), { code: 'ERR_INVALID_ARGUMENT', message: /`asyncRemove` to be a boolean, got string/ });
    await assert.rejects(Snapshotter.open(root, { mountOptions: 'index=off' } as never), { code: 'ERR_INVALID_ARGUMENT' });
    await assert.rejects(Snapshotter.open(root, { mountOptions: ['lowerdir=/x'] }), { code: 'ERR_INVALID_ARGUMENT', message: /lowerdir/ });
    await assert.rejects(Snapshotter.open(root, { mountOptions: ['a,b'] }), { code: 'ERR_INVALID_ARGUMENT' });
    await assert.rejects(Snapshotter.open('', {}), { code: 'ERR_INVALID_ARGUMENT' });
  } finally {
    await removeTree(root);
  }
});

test('open refuses a root that is a file with ERR_UNAVAILABLE naming the path', async () => {
  const dir = tempDir();
  try {
    const { writeFileSync } = await import('node:fs');
    writeFileSync(`${dir}/file`, '');
    await assert.rejects(Snapshotter.open(`${dir}/file`), (err: Error & { code?: string }) => err.code === 'ERR_UNAVAILABLE' && err.message.includes(`${dir}/file`));
  } finally {
    await removeTree(dir);
  }
});

test('open creates the root with mode 0700', async () => {
  const dir = tempDir();
  try {
    const sn = await Snapshotter.open(`${dir}/new/root`);
    await sn.close();
    const { statSync } = await import('node:fs');
    assert.equal(statSync(`${dir}/new/root`).mode & 0o777, 0o700);
  } finally {
    await removeTree(dir);
  }
});
