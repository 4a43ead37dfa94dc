/** applyLayer: the behaviours beyond the round trip (copy-up, type changes, whiteout order, inputs). */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { lstatSync, mkdirSync, readFileSync, readdirSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { describe, test } from 'node:test';
import { deflateSync, gzipSync } from 'node:zlib';
import { InvalidArgumentError } from '../../lib/model/errors.js';
import { applyLayer } from '../../lib/layers/apply.js';
import { writerBatches, writersReady } from '../../lib/layers/writer.js';
import { detectCompression } from '../../lib/layers/compression.js';
import { lgetxattr } from '../../lib/kernel/xattr.js';
import { buildTree, compareFingerprints, inMode, mountOverlay, packTar, tempDir, treeFingerprint, unmount } from '../helpers/layers.js';
import { REQUIRE_MOUNT, assertCanMount, mountTestOptions } from '../helpers/require-mount.js';

const OPAQUE = 'trusted.overlay.opaque';

async function withDirs(fn: (top: string) => Promise<void>): Promise<void> {
  if (REQUIRE_MOUNT) assertCanMount();
  const top = tempDir('layers-apply-');
  try {
    await fn(top);
  } finally {
    unmount(join(top, 'mnt'));
    rmSync(top, { recursive: true, force: true });
  }
}

const src = (buf: Buffer): Readable => Readable.from([buf]);

/** A lower and an upper under `top` that both hold the dir `d`, each with a file of its own: what an opaque marker on the upper's `d` would hide. */
function layersSharingD(top: string, suffix = ''): { lower: string; upper: string } {
  const lower = join(top, `lower${suffix}`);
  const upper = join(top, `upper${suffix}`);
  buildTree(lower, [
    { path: 'd', type: 'dir' },
    { path: 'd/from-lower', type: 'file', content: 'lower' },
  ]);
  buildTree(upper, [
    { path: 'd', type: 'dir' },
    { path: 'd/from-upper', type: 'file', content: 'upper' },
  ]);
  return { lower, upper };
}

/** The upper is entry for entry as `before` (overlay xattrs included), and no undo dir is left beside it. */
function assertAsBefore(top: string, upper: string, before: ReturnType<typeof treeFingerprint>): void {
  assert.deepEqual(compareFingerprints(before.entries, treeFingerprint(upper, { dirMtimes: true }).entries, ['before', 'after']), []);
  assert.deepEqual(readdirSync(top).filter((n) => n.startsWith('.apply-undo')), []);
}

describe('applyLayer', mountTestOptions(), () => {
  test('a hard link to a lower file copies the file up and links to the copy', () =>
    withDirs(async (top) => {
      const lower = join(top, 'lower');
      const upper = join(top, 'upper');
      buildTree(lower, [
        { path: 'usr', type: 'dir', mode: 0o751, uid: 3, gid: 4, xattrs: { 'user.tag': 'usr' } },
        { path: 'usr/lib', type: 'dir', mode: 0o755 },
        { path: 'usr/lib/libfoo.so', type: 'file', content: 'ELF', mode: 0o4755, uid: 7, gid: 8, xattrs: { 'user.cap': 'c' } },
      ]);
      mkdirSync(upper);
      const layer = await packTar([{ header: { name: 'usr/lib/libfoo.so.1', type: 'link', linkname: 'usr/lib/libfoo.so' } }]);
      await applyLayer(src(layer), { upper, lowers: [lower] });
      const a = lstatSync(join(upper, 'usr/lib/libfoo.so'));
      const b = lstatSync(join(upper, 'usr/lib/libfoo.so.1'));
      assert.equal(a.ino, b.ino);
      assert.equal(a.nlink, 2);
      assert.equal(a.mode & 0o7777, 0o4755);
      assert.deepEqual([a.uid, a.gid], [7, 8]);
      assert.equal(readFileSync(join(upper, 'usr/lib/libfoo.so'), 'utf8'), 'ELF');
      assert.equal(lgetxattr(join(upper, 'usr/lib/libfoo.so'), 'user.cap')?.toString(), 'c');
      // The parents were copied up with their metadata, not made 0755 root.
      const usr = lstatSync(join(upper, 'usr'));
      assert.equal(usr.mode & 0o7777, 0o751);
      assert.deepEqual([usr.uid, usr.gid], [3, 4]);
      assert.equal(lgetxattr(join(upper, 'usr'), 'user.tag')?.toString(), 'usr');
      assert.equal(lgetxattr(join(upper, 'usr'), OPAQUE), undefined);
      // The lower is untouched.
      assert.equal(lstatSync(join(lower, 'usr/lib/libfoo.so')).nlink, 1);
    }));

  test('a missing parent is created 0755 and owned by root', () =>
    withDirs(async (top) => {
      const upper = join(top, 'upper');
      mkdirSync(upper);
      await applyLayer(src(await packTar([{ header: { name: 'a/b/c', type: 'file' }, body: 'c' }])), { upper, lowers: [] });
      assert.equal(lstatSync(join(upper, 'a/b')).mode & 0o7777, 0o755);
      assert.equal(readFileSync(join(upper, 'a/b/c'), 'utf8'), 'c');
    }));

  test('a whiteout hides only lower layers: the lower entry it names is gone from the mount, an entry of the same layer stays, before or after the marker', () =>
    withDirs(async (top) => {
      const lower = join(top, 'lower');
      const upper = join(top, 'upper');
      buildTree(lower, [
        { path: 'w', type: 'dir' },
        { path: 'w/gone', type: 'file', content: 'lower gone' },
        { path: 'w/kept', type: 'file', content: 'lower kept' },
        { path: 'w/x', type: 'file', content: 'lower x' },
        { path: 'd', type: 'dir' },
        { path: 'd/old', type: 'file', content: 'old' },
        { path: 'd/x', type: 'file', content: 'lower x' },
      ]);
      mkdirSync(upper);
      const layer = await packTar([
        // w is not opaque: only the whiteouts decide what of the lower w shows.
        { header: { name: 'w', type: 'directory' } },
        { header: { name: 'w/.wh.gone', type: 'file' }, body: '' },
        { header: { name: 'w/x', type: 'file' }, body: 'layer x' },
        { header: { name: 'w/.wh.x', type: 'file' }, body: '' },
        { header: { name: 'w/.wh.mine', type: 'file' }, body: '' },
        { header: { name: 'w/mine', type: 'file' }, body: 'mine' },
        // d is opaque, and the marker comes after entries of the same layer.
        { header: { name: 'd', type: 'directory' } },
        { header: { name: 'd/x', type: 'file' }, body: 'layer x' },
        { header: { name: 'd/.wh.x', type: 'file' }, body: '' },
        { header: { name: 'd/mine', type: 'file' }, body: 'mine' },
        { header: { name: 'd/.wh..wh..opq', type: 'file' }, body: '' },
        { header: { name: 'd/after', type: 'file' }, body: 'after' },
      ]);
      await applyLayer(src(layer), { upper, lowers: [lower] });
      assert.equal(lgetxattr(join(upper, 'w'), OPAQUE), undefined);
      assert.equal(lgetxattr(join(upper, 'd'), OPAQUE)?.toString(), 'y');
      const mnt = join(top, 'mnt');
      mkdirSync(mnt);
      mountOverlay([upper, lower], mnt);
      try {
        assert.deepEqual(readdirSync(join(mnt, 'w')).sort(), ['kept', 'mine', 'x'], 'the whiteout hides the lower w/gone; w/kept shows through');
        assert.equal(readFileSync(join(mnt, 'w/kept'), 'utf8'), 'lower kept');
        assert.equal(readFileSync(join(mnt, 'w/x'), 'utf8'), 'layer x');
        assert.equal(readFileSync(join(mnt, 'w/mine'), 'utf8'), 'mine');
        assert.deepEqual(readdirSync(join(mnt, 'd')).sort(), ['after', 'mine', 'x']);
        assert.equal(readFileSync(join(mnt, 'd/x'), 'utf8'), 'layer x');
      } finally {
        unmount(mnt);
      }
    }));

  test('in a parentless snapshot whiteouts and opaque markers delete, and no marker is left', () =>
    withDirs(async (top) => {
      const upper = join(top, 'upper');
      buildTree(upper, [
        { path: 'gone', type: 'file' },
        { path: 'd', type: 'dir' },
        { path: 'd/old', type: 'file' },
        { path: 'e', type: 'dir' },
        { path: 'e/deep', type: 'dir' },
        { path: 'e/deep/f', type: 'file' },
      ]);
      const layer = await packTar([
        { header: { name: '.wh.gone', type: 'file' }, body: '' },
        { header: { name: 'd/new', type: 'file' }, body: 'n' },
        { header: { name: 'd/.wh..wh..opq', type: 'file' }, body: '' },
        { header: { name: '.wh.e', type: 'file' }, body: '' },
        { header: { name: 'nothere/.wh.x', type: 'file' }, body: '' },
      ]);
      await applyLayer(src(layer), { upper, lowers: [] });
      assert.deepEqual(readdirSync(upper).sort(), ['d']);
      assert.deepEqual(readdirSync(join(upper, 'd')), ['new']);
    }));

  test('a dir replacing a whiteout or a file of the upper is made opaque when a lower has that dir', () =>
    withDirs(async (top) => {
      const lower = join(top, 'lower');
      const upper = join(top, 'upper');
      buildTree(lower, [
        { path: 'd', type: 'dir' },
        { path: 'd/lowerchild', type: 'file' },
        { path: 'f', type: 'dir' },
        { path: 'f/lowerchild', type: 'file' },
        { path: 'g', type: 'dir' },
        { path: 'g/lowerchild', type: 'file' },
      ]);
      mkdirSync(upper);
      // First layer: delete d, replace f by a file; second: bring both back as dirs.
      await applyLayer(src(await packTar([{ header: { name: '.wh.d', type: 'file' }, body: '' }, { header: { name: 'f', type: 'file' }, body: 'file' }])), { upper, lowers: [lower] });
      await applyLayer(
        src(
          await packTar([
            { header: { name: 'd', type: 'directory' } },
            { header: { name: 'd/new', type: 'file' }, body: 'n' },
            { header: { name: 'f', type: 'directory' } },
            { header: { name: 'g', type: 'directory', mode: 0o700 } },
          ]),
        ),
        { upper, lowers: [lower] },
      );
      assert.equal(lgetxattr(join(upper, 'd'), OPAQUE)?.toString(), 'y');
      assert.equal(lgetxattr(join(upper, 'f'), OPAQUE)?.toString(), 'y');
      assert.equal(lgetxattr(join(upper, 'g'), OPAQUE), undefined, 'a dir over a lower dir merges');
      const mnt = join(top, 'mnt');
      mkdirSync(mnt);
      mountOverlay([upper, lower], mnt);
      try {
        assert.deepEqual(readdirSync(join(mnt, 'd')), ['new']);
        assert.deepEqual(readdirSync(join(mnt, 'f')), []);
        assert.deepEqual(readdirSync(join(mnt, 'g')), ['lowerchild']);
        assert.equal(lstatSync(join(mnt, 'g')).mode & 0o7777, 0o700);
      } finally {
        unmount(mnt);
      }
    }));

  test('a file replacing a symlink replaces the link and never writes through it', () =>
    withDirs(async (top) => {
      const outside = join(top, 'outside');
      const upper = join(top, 'upper');
      const lower = join(top, 'lower');
      buildTree(outside, [{ path: 'target', type: 'file', content: 'untouched' }]);
      buildTree(lower, [{ path: 'lowlink', type: 'symlink', target: join(outside, 'target') }]);
      buildTree(upper, [{ path: 'uplink', type: 'symlink', target: join(outside, 'target') }]);
      const layer = await packTar([
        { header: { name: 'uplink', type: 'file' }, body: 'evil' },
        { header: { name: 'lowlink', type: 'file' }, body: 'evil' },
        { header: { name: 'dirlink', type: 'symlink', linkname: outside } },
        { header: { name: 'dirlink', type: 'directory' } },
      ]);
      await applyLayer(src(layer), { upper, lowers: [lower] });
      assert.equal(readFileSync(join(outside, 'target'), 'utf8'), 'untouched');
      assert.deepEqual(readdirSync(outside), ['target']);
      assert.equal(readFileSync(join(upper, 'uplink'), 'utf8'), 'evil');
      assert.equal(readFileSync(join(upper, 'lowlink'), 'utf8'), 'evil');
      assert.ok(lstatSync(join(upper, 'dirlink')).isDirectory());
    }));

  test('a directory of the upper replaced by a file or by a symlink goes away with its contents', () =>
    withDirs(async (top) => {
      const upper = join(top, 'upper');
      buildTree(upper, [
        { path: 'd', type: 'dir' },
        { path: 'd/x', type: 'file', content: 'x' },
        { path: 'd/sub', type: 'dir' },
        { path: 'd/sub/y', type: 'file', content: 'y' },
        { path: 'e', type: 'dir' },
        { path: 'e/z', type: 'file', content: 'z' },
      ]);
      const layer = await packTar([
        { header: { name: 'd', type: 'file' }, body: 'now a file' },
        { header: { name: 'e', type: 'symlink', linkname: 'elsewhere' } },
      ]);
      await applyLayer(src(layer), { upper, lowers: [] });
      assert.ok(lstatSync(join(upper, 'd')).isFile());
      assert.equal(readFileSync(join(upper, 'd'), 'utf8'), 'now a file');
      assert.ok(lstatSync(join(upper, 'e')).isSymbolicLink());
      assert.equal(readlinkSync(join(upper, 'e')), 'elsewhere');
      assert.deepEqual([...treeFingerprint(upper).entries.keys()], ['d', 'e'], 'nothing of the old dirs is left in the upper');
      assert.deepEqual(readdirSync(top), ['upper'], 'nor beside it (no undo dir)');
    }));

  test('the digest covers the whole uncompressed stream, padding included, and gzip is detected', () =>
    withDirs(async (top) => {
      const upper = join(top, 'upper');
      mkdirSync(upper);
      const tarBuf = Buffer.concat([await packTar([{ header: { name: 'f', type: 'file' }, body: 'hello' }]), Buffer.alloc(8192)]);
      const res = await applyLayer(src(gzipSync(tarBuf)), { upper, lowers: [] });
      assert.equal(res.digest, `sha256:${createHash('sha256').update(tarBuf).digest('hex')}`);
      assert.equal(res.size, tarBuf.length);
      assert.equal(res.compression, 'gzip');
    }));

  test('garbage, a truncated tar and xz are InvalidArgumentError, and the upper is untouched', () =>
    withDirs(async (top) => {
      const upper = join(top, 'upper');
      buildTree(upper, [{ path: 'keep', type: 'file', content: 'k' }]);
      const before = treeFingerprint(upper, { dirMtimes: true });
      const good = await packTar([
        { header: { name: 'a', type: 'file' }, body: 'a'.repeat(3000) },
        { header: { name: 'keep', type: 'file' }, body: 'changed' },
      ]);
      const inputs: Array<[string, Buffer]> = [
        ['garbage', Buffer.from('this is not a tar archive at all'.repeat(40))],
        ['truncated', good.subarray(0, 1500)],
        ['truncated gzip', gzipSync(good).subarray(0, 60)],
        ['xz', Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00, 0, 0])],
        ['zlib without gzip header', deflateSync(good)],
      ];
      for (const [what, buf] of inputs) {
        await assert.rejects(applyLayer(src(buf), { upper, lowers: [] }), InvalidArgumentError, what);
        assert.deepEqual(treeFingerprint(upper, { dirMtimes: true }), before, what);
      }
    }));

  test('an empty stream is an empty layer, as in containerd: nothing changes and the digest is that of no bytes', () =>
    withDirs(async (top) => {
      const upper = join(top, 'upper');
      buildTree(upper, [{ path: 'keep', type: 'file', content: 'k' }]);
      const before = treeFingerprint(upper, { dirMtimes: true });
      const res = await applyLayer(src(Buffer.alloc(0)), { upper, lowers: [] });
      assert.deepEqual(res, { digest: `sha256:${createHash('sha256').digest('hex')}`, size: 0, compression: 'none' });
      assert.deepEqual(treeFingerprint(upper, { dirMtimes: true }), before);
      assert.deepEqual(readdirSync(top), ['upper']);
    }));

  test('files made by the writer threads match files made inline, and a failure in a writer thread undoes the apply', () =>
    withDirs(async (top) => {
      const entries: Array<{ header: Record<string, unknown> & { name: string }; body?: string | Buffer }> = [{ header: { name: 'd/', type: 'directory', mode: 0o750, uid: 5, gid: 6 } }];
      for (let i = 0; i < 700; i++) {
        entries.push({
          header: { name: `d/f${i}`, type: 'file', mode: i % 7 === 0 ? 0o4755 : 0o640, uid: i % 3, gid: i % 5, mtime: new Date((1_600_000_000 + i) * 1000) },
          body: Buffer.alloc((i * 997) % 5000, i & 0xff),
        });
      }
      // A later entry replaces one of them, and a hard link points at another: both wait for the threads.
      entries.push({ header: { name: 'd/f3', type: 'symlink', linkname: 'f4' } });
      entries.push({ header: { name: 'd/link', type: 'link', linkname: 'd/f5' } });
      const layer = await packTar(entries);
      const fingerprints = [];
      for (const mode of ['1', '0'] as const) {
        const upper = join(top, `upper${mode}`);
        mkdirSync(upper);
        // The threads are seen running first, so that this apply hands its files to them (a first apply otherwise makes those it reaches before they start).
        await inMode(mode, async () => {
          if (mode === '1') assert.equal(await writersReady(), true, 'the writer threads run');
          const before = writerBatches();
          await applyLayer(src(layer), { upper, lowers: [] });
          if (mode === '1') assert.ok(writerBatches() > before, 'the writer threads made files of this apply');
        });
        fingerprints.push(treeFingerprint(upper, { dirMtimes: true }));
      }
      assert.deepEqual(fingerprints[0], fingerprints[1]);
      assert.equal(fingerprints[0]!.entries.get('d/f7')?.mode, 0o4755);
      assert.equal(fingerprints[0]!.entries.get('d/f3')?.type, 'symlink');
      // A name too long for the filesystem fails in open(2) on a writer thread: the error surfaces and nothing stays,
      // not even the opaque marker the layer put first on a dir of the upper (which would hide the lower's d/from-lower).
      const bad = await packTar([
        { header: { name: 'd/.wh..wh..opq', type: 'file' }, body: '' },
        ...entries.slice(0, 300),
        { header: { name: `d/${'n'.repeat(300)}`, type: 'file' }, body: 'x' },
        ...entries.slice(300, 400),
      ]);
      const { lower, upper } = layersSharingD(top, '-bad');
      const before = treeFingerprint(upper, { dirMtimes: true });
      await inMode('1', () => assert.rejects(applyLayer(src(bad), { upper, lowers: [lower] }), { code: 'ENAMETOOLONG' }));
      assertAsBefore(top, upper, before);
      assert.equal(lgetxattr(join(upper, 'd'), OPAQUE), undefined);
    }));

  for (const userxattr of [false, true]) {
    const xattr = userxattr ? 'user.overlay.opaque' : OPAQUE;
    test(`a refused layer that first made a directory of the upper opaque leaves it without ${xattr}, and the lower's entries show through again`, () =>
      withDirs(async (top) => {
        const { lower, upper } = layersSharingD(top);
        const before = treeFingerprint(upper, { dirMtimes: true });
        const opaque = [
          { header: { name: 'd/.wh..wh..opq', type: 'file' }, body: '' },
          { header: { name: 'd/new', type: 'file' }, body: 'new' },
        ];
        const refused = await packTar([...opaque, { header: { name: 'd/../../escape', type: 'file' }, body: 'x' }]);
        await assert.rejects(applyLayer(src(refused), { upper, lowers: [lower], userxattr }), InvalidArgumentError);
        assertAsBefore(top, upper, before);
        assert.equal(lgetxattr(join(upper, 'd'), xattr), undefined);
        const mnt = join(top, 'mnt');
        mkdirSync(mnt);
        const options = userxattr ? ['userxattr'] : [];
        mountOverlay([upper, lower], mnt, options);
        try {
          assert.deepEqual(readdirSync(join(mnt, 'd')).sort(), ['from-lower', 'from-upper']);
        } finally {
          unmount(mnt);
        }
        // The same entries without the refused one do make d opaque: the rollback above had a marker to remove.
        await applyLayer(src(await packTar(opaque)), { upper, lowers: [lower], userxattr });
        assert.equal(lgetxattr(join(upper, 'd'), xattr)?.toString(), 'y');
        mountOverlay([upper, lower], mnt, options);
        try {
          assert.deepEqual(readdirSync(join(mnt, 'd')), ['new']);
        } finally {
          unmount(mnt);
        }
      }));
  }

  test('a target that is not a directory is InvalidArgumentError', () =>
    withDirs(async (top) => {
      writeFileSync(join(top, 'file'), '');
      await assert.rejects(applyLayer(src(Buffer.alloc(1024)), { upper: join(top, 'file'), lowers: [] }), InvalidArgumentError);
      await assert.rejects(applyLayer(src(Buffer.alloc(1024)), { upper: join(top, 'missing'), lowers: [] }), InvalidArgumentError);
    }));
});

describe('detectCompression', () => {
  test('recognises gzip, zstd, xz and bzip2 magic bytes, and plain tar otherwise', () => {
    assert.equal(detectCompression(Buffer.from([0x1f, 0x8b, 8, 0])), 'gzip');
    assert.equal(detectCompression(Buffer.from([0x28, 0xb5, 0x2f, 0xfd])), 'zstd');
    assert.equal(detectCompression(Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00])), 'xz');
    assert.equal(detectCompression(Buffer.from('BZh9')), 'bzip2');
    assert.equal(detectCompression(Buffer.from('etc/passwd')), 'none');
    assert.equal(detectCompression(Buffer.alloc(0)), 'none');
  });
});
