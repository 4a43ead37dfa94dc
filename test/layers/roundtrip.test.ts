/**
 * Round trip: layers made with GNU tar, applied in a chain into overlay
 * upper dirs, mounted, and compared entry by entry with the same layers
 * extracted on top of each other into a plain directory; then each upper
 * diffed back and compared with its layer's entry set.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { describe, test } from 'node:test';
import { gzipSync } from 'node:zlib';
import { applyLayer } from '../../lib/layers/apply.js';
import { diffLayer } from '../../lib/layers/diff.js';
import {
  type Spec,
  buildTree,
  collector,
  compareFingerprints,
  gnuTar,
  mountOverlay,
  referenceExtract,
  tarFingerprint,
  tempDir,
  treeFingerprint,
  unmount,
} from '../helpers/layers.js';
import { REQUIRE_MOUNT, assertCanMount, assertPrerequisite, mountTestOptions, toolSkipReason } from '../helpers/require-mount.js';

const T1 = 1_600_000_000;
const T2 = 1_700_000_000;
const T3 = 1_750_000_000;
const LONG_DIR = `long/${'d'.repeat(90)}`;
const LONG_FILE = `${LONG_DIR}/${'f'.repeat(120)}`;

const layer1: Spec[] = [
  { path: 'etc', type: 'dir', mtime: T1 },
  { path: 'etc/passwd', type: 'file', content: 'root:x:0:0\n', mtime: T1 },
  { path: 'etc/shadow', type: 'file', content: 'secret', mode: 0o640, gid: 42, mtime: T1 },
  { path: 'etc/hosts', type: 'file', content: '127.0.0.1 localhost\n', mtime: T1 },
  { path: 'bin', type: 'dir', mtime: T1 },
  { path: 'bin/tool', type: 'file', content: '#!tool v1', mode: 0o4755, mtime: T1 },
  { path: 'bin/sgid', type: 'file', content: 'sgid', mode: 0o2755, gid: 5, mtime: T1 },
  { path: 'bin/hard', type: 'hardlink', target: 'bin/tool' },
  { path: 'bin/sym', type: 'symlink', target: 'tool', mtime: T1 },
  { path: 'bin/abs', type: 'symlink', target: '/etc/passwd', mtime: T1 },
  { path: 'tmp', type: 'dir', mode: 0o1777, mtime: T1 },
  { path: 'dev', type: 'dir', mtime: T1 },
  { path: 'dev/null', type: 'char', major: 1, minor: 3, mode: 0o666, mtime: T1 },
  { path: 'dev/sda', type: 'block', major: 8, minor: 0, mode: 0o660, mtime: T1 },
  { path: 'dev/fifo', type: 'fifo', mode: 0o600, mtime: T1 },
  { path: 'opt', type: 'dir', mtime: T1 },
  { path: 'opt/keep', type: 'dir', mtime: T1 },
  { path: 'opt/keep/a', type: 'file', content: 'a', mtime: T1 },
  { path: 'opt/keep/b', type: 'file', content: 'b', mtime: T1 },
  { path: 'opt/gone', type: 'dir', mtime: T1 },
  { path: 'opt/gone/x', type: 'file', content: 'x', mtime: T1 },
  { path: 'opt/replace', type: 'dir', mtime: T1 },
  { path: 'opt/replace/old', type: 'file', content: 'old', mtime: T1 },
  { path: 'data', type: 'dir', xattrs: { 'user.dir': 'yes' }, mtime: T1 },
  { path: 'data/x', type: 'file', content: 'x', xattrs: { 'user.comment': 'hello', 'trusted.bin': Buffer.from([0x80, 0xff, 0x00, 0x01]) }, mtime: T1 },
  { path: 'long', type: 'dir', mtime: T1 },
  { path: LONG_DIR, type: 'dir', mtime: T1 },
  { path: LONG_FILE, type: 'file', content: 'long', mtime: T1 },
  { path: 'naïve-ünïcode.txt', type: 'file', content: 'u', mtime: T1 },
  { path: 'home', type: 'dir', mtime: T1 },
  { path: 'home/user', type: 'dir', uid: 1000, gid: 1000, mode: 0o700, mtime: T1 },
  { path: 'home/user/file', type: 'file', uid: 1000, gid: 1000, content: 'mine', mtime: T1 },
  { path: 'usr', type: 'dir', mtime: T1 },
  { path: 'usr/lib', type: 'dir', mtime: T1 },
  { path: 'usr/lib/libfoo.so', type: 'file', content: 'ELF', mode: 0o755, mtime: T1 },
];

const layer2: Spec[] = [
  { path: 'etc', type: 'dir', mtime: T2 },
  { path: 'etc/passwd', type: 'file', content: 'root:x:0:0\nuser:x:1000:1000\n', mtime: T2 },
  { path: 'etc/.wh.hosts', type: 'file', mtime: T2 },
  { path: 'opt', type: 'dir', mtime: T2 },
  { path: 'opt/.wh.gone', type: 'file', mtime: T2 },
  { path: 'opt/replace', type: 'dir', mtime: T2 },
  { path: 'opt/replace/.wh..wh..opq', type: 'file', mtime: T2 },
  { path: 'opt/replace/new', type: 'file', content: 'new', mtime: T2 },
  { path: 'bin', type: 'dir', mtime: T2 },
  { path: 'bin/newtool', type: 'file', content: 'new tool', mode: 0o755, mtime: T2 },
  { path: 'bin/.wh.sym', type: 'file', mtime: T2 },
  { path: 'data', type: 'dir', xattrs: { 'user.dir': 'yes' }, mtime: T2 },
  { path: 'data/y', type: 'file', content: 'y', xattrs: { 'user.k': 'v' }, mtime: T2 },
];

const layer3: Spec[] = [
  { path: 'opt', type: 'dir', mtime: T3 },
  { path: 'opt/gone', type: 'dir', mtime: T3 },
  { path: 'opt/gone/new', type: 'file', content: 'back', mtime: T3 },
  { path: 'opt/keep', type: 'dir', mtime: T3 },
  { path: 'opt/keep/a', type: 'dir', mode: 0o750, mtime: T3 },
  { path: 'opt/keep/a/inner', type: 'file', content: 'inner', mtime: T3 },
  { path: 'etc', type: 'dir', mtime: T3 },
  { path: 'etc/.wh..wh..opq', type: 'file', mtime: T3 },
  { path: 'etc/only', type: 'file', content: 'only', mtime: T3 },
  { path: 'bin', type: 'dir', mtime: T3 },
  { path: 'bin/tool', type: 'file', content: '#!tool v2', mode: 0o755, mtime: T3 },
];

function sha256(buf: Buffer): string {
  return `sha256:${createHash('sha256').update(buf).digest('hex')}`;
}

/** Why the zstd input cannot be made here (no zstd tool), or undefined. */
const ZSTD_MISSING = toolSkipReason('zstd', ['--version'], 'to compress the third layer');

describe('layer round trip through overlayfs', mountTestOptions(), () => {
  test('GNU tar layers applied as a chain and mounted equal the same layers extracted into a plain dir, and each diff has its layer\'s entries', async () => {
    if (REQUIRE_MOUNT) assertCanMount();
    const top = tempDir();
    const mnt = join(top, 'mnt');
    try {
      const layers = [layer1, layer2, layer3].map((specs, i) => {
        const dir = join(top, `stage${i + 1}`);
        buildTree(dir, specs);
        return gnuTar(dir);
      });
      const uppers = [1, 2, 3].map((i) => join(top, `upper${i}`));
      for (const u of uppers) mkdirSync(u);
      mkdirSync(mnt);

      // Plain, gzip and zstd inputs (plain again where the zstd tool is missing, which fails the run under REQUIRE_MOUNT).
      if (REQUIRE_MOUNT) assertPrerequisite(ZSTD_MISSING);
      const inputs = [layers[0]!, gzipSync(layers[1]!), ZSTD_MISSING === undefined ? execFileSync('zstd', ['-q', '-c'], { input: layers[2]! }) : layers[2]!];
      for (let i = 0; i < 3; i++) {
        const res = await applyLayer(Readable.from([inputs[i]!]), { upper: uppers[i]!, lowers: uppers.slice(0, i).reverse() });
        assert.equal(res.digest, sha256(layers[i]!), `diffID of layer ${i + 1}`);
        assert.equal(res.size, layers[i]!.length);
      }

      const ref = join(top, 'reference');
      referenceExtract(layers, ref);
      mountOverlay([...uppers].reverse(), mnt);
      let merged;
      try {
        merged = treeFingerprint(mnt, { dirMtimes: true });
      } finally {
        unmount(mnt);
      }
      const expected = treeFingerprint(ref, { dirMtimes: true });
      assert.deepEqual(compareFingerprints(expected.entries, merged.entries, ['reference', 'overlay']), []);
      assert.deepEqual(merged.links, expected.links);
      // Spot checks that the comparison saw what this test is about.
      assert.equal(merged.entries.get('bin/tool')?.mode, 0o755);
      assert.equal(merged.entries.get('bin/hard')?.mode, 0o4755, 'the lower hard link keeps the old inode');
      assert.equal(merged.entries.get('etc/hosts'), undefined);
      assert.equal(merged.entries.get('etc/passwd'), undefined, 'opaque etc hides the lower passwd');
      assert.equal(merged.entries.get('opt/gone/x'), undefined);
      assert.equal(merged.entries.get('opt/replace/old'), undefined);
      assert.ok(merged.entries.get(LONG_FILE));
      assert.match(merged.entries.get('data/x')?.xattrs ?? '', /trusted\.bin=80ff0001/);

      for (let i = 0; i < 3; i++) {
        const out = collector();
        const res = await diffLayer({ upper: uppers[i]!, lowers: uppers.slice(0, i).reverse() }, out.stream);
        const got = await tarFingerprint(out.bytes());
        const want = await tarFingerprint(layers[i]!);
        assert.deepEqual(compareFingerprints(want.entries, got.entries, [`layer ${i + 1}`, `diff ${i + 1}`]), []);
        assert.deepEqual(got.links, want.links);
        assert.equal(res.digest, sha256(out.bytes()));
      }
    } finally {
      unmount(mnt);
      rmSync(top, { recursive: true, force: true });
    }
  });
});
