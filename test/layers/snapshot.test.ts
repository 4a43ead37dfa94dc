/** Snapshot-level calls: targets from mount specs, chain IDs, importLayers and apply/diff on a real Snapshotter. */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { describe, test } from 'node:test';
import { gzipSync } from 'node:zlib';
import { FailedPreconditionError, InvalidArgumentError } from '../../lib/model/errors.js';
import { Snapshotter, mountAll, unmountAll } from '../../lib/index.js';
import { apply, chainIds, diff, importLayers, targetFromMounts } from '../../lib/layers/index.js';
import { collector, compareFingerprints, packTar, tempDir, treeFingerprint } from '../helpers/layers.js';
import { REQUIRE_MOUNT, assertCanMount, mountTestOptions } from '../helpers/require-mount.js';

const sha256 = (s: string | Buffer): string => `sha256:${createHash('sha256').update(s).digest('hex')}`;

describe('targetFromMounts', () => {
  test('an active overlay gives its upperdir and lowerdirs (immediate parent first), lowerdir+= and userxattr included', () => {
    assert.deepEqual(
      targetFromMounts([{ type: 'overlay', source: 'overlay', options: ['workdir=/r/3/work', 'upperdir=/r/3/fs', 'lowerdir=/r/2/fs:/r/1/fs', 'index=off'] }]),
      { upper: '/r/3/fs', lowers: ['/r/2/fs', '/r/1/fs'] },
    );
    assert.deepEqual(
      targetFromMounts([{ type: 'overlay', source: 'overlay', options: ['upperdir=/u', 'lowerdir+=/a', 'lowerdir+=/b', 'userxattr'] }]),
      { upper: '/u', lowers: ['/a', '/b'], userxattr: true },
    );
  });
  test('a parentless active gives its bind source and no lowers', () => {
    assert.deepEqual(targetFromMounts([{ type: 'bind', source: '/r/1/fs', options: ['rw', 'rbind'] }]), { upper: '/r/1/fs', lowers: [] });
  });
  test('views are FailedPrecondition; other shapes InvalidArgument', () => {
    assert.throws(() => targetFromMounts([{ type: 'bind', source: '/r/1/fs', options: ['ro', 'rbind'] }]), FailedPreconditionError);
    assert.throws(() => targetFromMounts([{ type: 'overlay', source: 'overlay', options: ['lowerdir=/a:/b'] }]), FailedPreconditionError);
    assert.throws(() => targetFromMounts([]), InvalidArgumentError);
    assert.throws(() => targetFromMounts([{ type: 'tmpfs', source: 'tmpfs', options: [] }]), InvalidArgumentError);
    assert.throws(() => targetFromMounts([{ type: 'overlay', source: 'overlay', options: ['upperdir=u', 'lowerdir=/a'] }]), InvalidArgumentError);
  });
});

describe('chainIds', () => {
  test('follow the OCI definition: the first is the diffID, then sha256 of "<parent chain> <diffID>"', () => {
    const d = [sha256('a'), sha256('b'), sha256('c')];
    const c1 = sha256(`${d[0]} ${d[1]}`);
    assert.deepEqual(chainIds(d), [d[0], c1, sha256(`${c1} ${d[2]}`)]);
    assert.throws(() => chainIds(['sha256:abc']), InvalidArgumentError);
  });
});

async function withSnapshotter(fn: (sn: Snapshotter, top: string) => Promise<void>): Promise<void> {
  if (REQUIRE_MOUNT) assertCanMount();
  const top = tempDir('layers-sn-');
  const sn = await Snapshotter.open(join(top, 'root'));
  try {
    await fn(sn, top);
  } finally {
    await sn.close();
    for (const m of ['mnt', 'mnt2']) await unmountAll(join(top, m)).catch(() => {});
    rmSync(top, { recursive: true, force: true });
  }
}

async function keys(sn: Snapshotter): Promise<string[]> {
  const out: string[] = [];
  await sn.walk((info) => {
    out.push(`${info.kind}:${info.name}`);
  });
  return out.sort();
}

async function threeLayers(): Promise<Buffer[]> {
  return [
    await packTar([
      { header: { name: 'etc/', type: 'directory' } },
      { header: { name: 'etc/os-release', type: 'file' }, body: 'base' },
      { header: { name: 'etc/hosts', type: 'file' }, body: 'hosts' },
    ]),
    await packTar([
      { header: { name: 'etc/', type: 'directory' } },
      { header: { name: 'etc/.wh.hosts', type: 'file' }, body: '' },
      { header: { name: 'app/', type: 'directory' } },
      { header: { name: 'app/main', type: 'file', mode: 0o755 }, body: 'main' },
    ]),
    await packTar([
      { header: { name: 'app/', type: 'directory' } },
      { header: { name: 'app/config', type: 'file' }, body: 'config' },
      { header: { name: 'app/main.link', type: 'link', linkname: 'app/main' } },
    ]),
  ];
}

describe('importLayers and apply/diff on a Snapshotter', mountTestOptions(), () => {
  test('imports a chain under chain-ID names and returns the top one, whose view shows the merged image', () =>
    withSnapshotter(async (sn, top) => {
      const layers = await threeLayers();
      const diffIds = layers.map((l) => sha256(l));
      const chain = chainIds(diffIds);
      const events: string[] = [];
      const name = await importLayers(
        sn,
        layers.map((l, i) => (i === 1 ? Readable.from([gzipSync(l)]) : Readable.from([l]))),
        { labels: { 'containerd.io/gc.root': 'x' }, onLayer: (e) => events.push(`${e.index}:${e.skipped}`) },
      );
      assert.equal(name, chain[2]);
      assert.deepEqual(events, ['0:false', '1:false', '2:false']);
      const info = await sn.stat(name);
      assert.equal(info.kind, 'committed');
      assert.equal(info.parent, chain[1]);
      assert.equal((await sn.stat(chain[1]!)).parent, chain[0]);
      assert.deepEqual(info.labels, { 'containerd.io/gc.root': 'x' });
      assert.deepEqual(await keys(sn), chain.map((c) => `committed:${c}`).sort(), 'no active left over');

      const mnt = join(top, 'mnt');
      mkdirSync(mnt);
      await mountAll(await sn.view('v', name), mnt);
      try {
        assert.deepEqual(readdirSync(join(mnt, 'etc')), ['os-release']);
        assert.deepEqual(readdirSync(join(mnt, 'app')).sort(), ['config', 'main', 'main.link']);
        assert.equal(readFileSync(join(mnt, 'app/main.link'), 'utf8'), 'main');
      } finally {
        await unmountAll(mnt);
      }
      await sn.remove('v');
    }));

  test('layers whose diffIDs are given and already present are skipped unread; unknown ones are applied then dropped', () =>
    withSnapshotter(async (sn) => {
      const layers = await threeLayers();
      const diffIds = layers.map((l) => sha256(l));
      const top1 = await importLayers(sn, layers.map((l) => Readable.from([l])));
      let opened = 0;
      const events: string[] = [];
      const top2 = await importLayers(
        sn,
        layers.map((l, i) => ({
          diffID: diffIds[i]!,
          stream: () => {
            opened++;
            return Readable.from([l]);
          },
        })),
        { onLayer: (e) => events.push(`${e.index}:${e.skipped}`) },
      );
      assert.equal(top2, top1);
      assert.equal(opened, 0, 'no stream opened');
      assert.deepEqual(events, ['0:true', '1:true', '2:true']);
      // Without diffIDs each layer must be read to learn its chain ID; the duplicate is then removed.
      events.length = 0;
      const top3 = await importLayers(sn, layers.map((l) => Readable.from([l])), { onLayer: (e) => events.push(`${e.index}:${e.skipped}`) });
      assert.equal(top3, top1);
      assert.deepEqual(events, ['0:true', '1:true', '2:true']);
      assert.equal((await keys(sn)).filter((k) => !k.startsWith('committed:')).length, 0);
    }));

  test('a refused layer or a wrong diffID fails the import and leaves no active behind', () =>
    withSnapshotter(async (sn) => {
      const layers = await threeLayers();
      const evil = await packTar([{ header: { name: '../escape', type: 'file' }, body: 'x' }]);
      await assert.rejects(importLayers(sn, [Readable.from([layers[0]!]), Readable.from([evil])]), (err: unknown) => err instanceof InvalidArgumentError && /\.\.\/escape/.test((err as Error).message));
      assert.deepEqual(await keys(sn), [`committed:${sha256(layers[0]!)}`]);
      await assert.rejects(importLayers(sn, [{ stream: Readable.from([layers[1]!]), diffID: sha256('not it') }]), /diffID is sha256:/);
      assert.deepEqual(await keys(sn), [`committed:${sha256(layers[0]!)}`]);
      await assert.rejects(importLayers(sn, []), InvalidArgumentError);
    }));

  test('diff of a changed active, applied to a fresh active on the same parent, commits to the same tree', () =>
    withSnapshotter(async (sn, top) => {
      const base = await importLayers(sn, (await threeLayers()).map((l) => Readable.from([l])));
      const mnt = join(top, 'mnt');
      mkdirSync(mnt);
      await mountAll(await sn.prepare('work', base), mnt);
      try {
        writeFileSync(join(mnt, 'app/config'), 'changed');
        rmSync(join(mnt, 'etc/os-release'));
        mkdirSync(join(mnt, 'srv'));
        writeFileSync(join(mnt, 'srv/data'), 'data');
      } finally {
        await unmountAll(mnt);
      }
      const empty = collector();
      await sn.prepare('untouched', base);
      const e = await diff(sn, 'untouched', empty.stream);
      assert.deepEqual(empty.bytes(), Buffer.alloc(1024), 'an unchanged active diffs to an empty layer');
      assert.equal(e.size, 1024);

      const out = collector();
      const d = await diff(sn, 'work', out.stream, { compression: 'gzip' });
      await sn.prepare('replay', base);
      const a = await apply(sn, 'replay', Readable.from([out.bytes()]));
      assert.equal(a.digest, d.digest);
      assert.equal(a.compression, 'gzip');
      await sn.commit('work-c', 'work');
      await sn.commit('replay-c', 'replay');
      const mnt2 = join(top, 'mnt2');
      mkdirSync(mnt2);
      await mountAll(await sn.view('v1', 'work-c'), mnt);
      await mountAll(await sn.view('v2', 'replay-c'), mnt2);
      try {
        const x = treeFingerprint(mnt, { dirMtimes: true });
        const y = treeFingerprint(mnt2, { dirMtimes: true });
        assert.deepEqual(compareFingerprints(x.entries, y.entries, ['original', 'replayed']), []);
        assert.equal(x.entries.get('etc/os-release'), undefined);
        assert.equal(readFileSync(join(mnt2, 'app/config'), 'utf8'), 'changed');
      } finally {
        await unmountAll(mnt);
        await unmountAll(mnt2);
      }
      await assert.rejects(diff(sn, 'v1', collector().stream), FailedPreconditionError);
    }));

  test('with the native driver, import applies into full copies and diff of a child active is refused, not mis-diffed', async () => {
    if (REQUIRE_MOUNT) assertCanMount();
    const top = tempDir('layers-native-');
    const sn = await Snapshotter.open(join(top, 'root'), { driver: 'native' });
    try {
      const name = await importLayers(sn, (await threeLayers()).map((l) => Readable.from([l])));
      const mnt = join(top, 'mnt');
      mkdirSync(mnt);
      await mountAll(await sn.view('v', name), mnt);
      try {
        assert.deepEqual(readdirSync(join(mnt, 'etc')), ['os-release']);
        assert.deepEqual(readdirSync(join(mnt, 'app')).sort(), ['config', 'main', 'main.link']);
      } finally {
        await unmountAll(mnt);
      }
      await sn.prepare('child', name);
      await assert.rejects(diff(sn, 'child', collector().stream), FailedPreconditionError);
    } finally {
      await sn.close();
      await unmountAll(join(top, 'mnt')).catch(() => {});
      rmSync(top, { recursive: true, force: true });
    }
  });
});
