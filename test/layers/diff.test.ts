/** diffLayer: empty diffs, kernel-made changes diffed and re-applied, determinism, compression, options. */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, mkdirSync, readFileSync, readdirSync, renameSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Readable, Writable } from 'node:stream';
import { describe, test } from 'node:test';
import { gunzipSync } from 'node:zlib';
import { InvalidArgumentError } from '../../lib/model/errors.js';
import { applyLayer } from '../../lib/layers/apply.js';
import { diffLayer } from '../../lib/layers/diff.js';
import { batchReader } from '../../lib/layers/reader.js';
import { type Spec, buildTree, collector, compareFingerprints, inMode, mountOverlay, tarFingerprint, tempDir, treeFingerprint, unmount } from '../helpers/layers.js';
import { REQUIRE_MOUNT, assertCanMount, mountTestOptions } from '../helpers/require-mount.js';

const sha256 = (b: Buffer): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;
const EMPTY_LAYER = Buffer.alloc(1024);

async function withDirs(fn: (top: string) => Promise<void>): Promise<void> {
  if (REQUIRE_MOUNT) assertCanMount();
  const top = tempDir('layers-diff-');
  try {
    await fn(top);
  } finally {
    for (const m of ['mnt', 'mnt2']) unmount(join(top, m));
    rmSync(top, { recursive: true, force: true });
  }
}

async function diffToBuffer(upper: string, lowers: string[], opts?: Parameters<typeof diffLayer>[2]) {
  const out = collector();
  const res = await diffLayer({ upper, lowers }, out.stream, opts);
  return { res, bytes: out.bytes() };
}

/** Mounts upper over lowers read-write with a workdir, as an active snapshot is mounted. */
function mountActive(upper: string, work: string, lowers: string[], target: string): void {
  execFileSync('mount', ['-t', 'overlay', 'overlay', '-o', `lowerdir=${lowers.join(':')},upperdir=${upper},workdir=${work}`, target]);
}

describe('diffLayer', mountTestOptions(), () => {
  test('the diff of an unchanged active is an empty layer: just the two end blocks', () =>
    withDirs(async (top) => {
      const lower = join(top, 'lower');
      const upper = join(top, 'upper');
      buildTree(lower, [{ path: 'f', type: 'file', content: 'f' }]);
      mkdirSync(upper);
      const { res, bytes } = await diffToBuffer(upper, [lower]);
      assert.deepEqual(bytes, EMPTY_LAYER);
      assert.equal(res.digest, sha256(EMPTY_LAYER));
      assert.equal(res.size, 1024);
      const gz = await diffToBuffer(upper, [lower], { compression: 'gzip' });
      assert.deepEqual(gunzipSync(gz.bytes), EMPTY_LAYER);
      assert.equal(gz.res.digest, sha256(EMPTY_LAYER));
      assert.equal(gz.res.compressedDigest, sha256(gz.bytes));
      assert.equal(gz.res.compressedSize, gz.bytes.length);
    }));

  test('changes made through a mounted overlay, diffed and applied onto the parent, reproduce the child', () =>
    withDirs(async (top) => {
      const lower = join(top, 'lower');
      buildTree(lower, [
        { path: 'etc', type: 'dir' },
        { path: 'etc/hosts', type: 'file', content: 'hosts' },
        { path: 'etc/gone', type: 'file', content: 'gone' },
        { path: 'var', type: 'dir' },
        { path: 'var/cache', type: 'dir' },
        { path: 'var/cache/a', type: 'file', content: 'a' },
        { path: 'var/cache/b', type: 'file', content: 'b' },
        { path: 'bin', type: 'dir' },
        { path: 'bin/sh', type: 'file', content: 'sh', mode: 0o755 },
      ]);
      const upper = join(top, 'upper');
      const work = join(top, 'work');
      const mnt = join(top, 'mnt');
      for (const d of [upper, work, mnt]) mkdirSync(d);
      mountActive(upper, work, [lower], mnt);
      try {
        writeFileSync(join(mnt, 'etc/hosts'), 'changed');
        rmSync(join(mnt, 'etc/gone')); // kernel whiteout
        rmSync(join(mnt, 'var/cache'), { recursive: true });
        mkdirSync(join(mnt, 'var/cache')); // kernel opaque dir
        writeFileSync(join(mnt, 'var/cache/c'), 'c');
        chmodSync(join(mnt, 'bin/sh'), 0o4755); // metadata-only copy-up
        mkdirSync(join(mnt, 'new'));
        writeFileSync(join(mnt, 'new/file'), 'x'.repeat(3 * 1024 * 1024)); // streamed in chunks
        execFileSync('ln', [join(mnt, 'new/file'), join(mnt, 'new/link')]);
        renameSync(join(mnt, 'new/link'), join(mnt, 'new/link2'));
      } finally {
        unmount(mnt);
      }
      const { res, bytes } = await diffToBuffer(upper, [lower]);
      const names = [...(await tarFingerprint(bytes)).entries.keys()];
      assert.ok(names.includes('etc/.wh.gone'));
      assert.ok(names.includes('var/cache/.wh..wh..opq'));
      assert.ok(names.indexOf('var/cache/.wh..wh..opq') < names.indexOf('var/cache/c'), 'the opaque marker comes before the dir\'s entries');

      const upper2 = join(top, 'upper2');
      mkdirSync(upper2);
      const applied = await applyLayer(Readable.from([bytes]), { upper: upper2, lowers: [lower] });
      assert.equal(applied.digest, res.digest);
      const mnt2 = join(top, 'mnt2');
      mkdirSync(mnt2);
      mountOverlay([upper, lower], mnt);
      mountOverlay([upper2, lower], mnt2);
      try {
        const a = treeFingerprint(mnt, { dirMtimes: true });
        const b = treeFingerprint(mnt2, { dirMtimes: true });
        assert.deepEqual(compareFingerprints(a.entries, b.entries, ['child', 'reapplied']), []);
        assert.deepEqual(a.links, b.links);
        assert.equal(a.entries.get('etc/gone'), undefined);
        assert.deepEqual(
          [...a.entries.keys()].filter((k) => k.startsWith('var/cache/')),
          ['var/cache/c'],
        );
      } finally {
        unmount(mnt);
        unmount(mnt2);
      }
      // Diffing the re-applied upper gives the same bytes.
      assert.equal((await diffToBuffer(upper2, [lower])).res.digest, res.digest);
    }));

  test('the output is deterministic, and sourceDateEpoch clamps mtimes so different times give the same digest', () =>
    withDirs(async (top) => {
      const specs: Spec[] = [
        { path: 'b', type: 'dir' as const },
        { path: 'b/z', type: 'file' as const, content: 'z' },
        { path: 'a', type: 'file' as const, content: 'a', xattrs: { 'user.x': Buffer.from([0xc3, 0x28, 0xff]) } },
        { path: `${'l'.repeat(150)}`, type: 'file' as const, content: 'long', xattrs: { 'trusted.bin': Buffer.from([0x80]) } },
      ];
      const one = join(top, 'one');
      const two = join(top, 'two');
      buildTree(one, specs);
      buildTree(two, specs);
      utimesSync(join(two, 'a'), 1_700_000_000, 1_700_000_000);
      const d1 = await diffToBuffer(one, []);
      const d1again = await diffToBuffer(one, []);
      assert.equal(d1.res.digest, d1again.res.digest);
      const d2 = await diffToBuffer(two, []);
      assert.notEqual(d1.res.digest, d2.res.digest);
      const epoch = 1_500_000_000;
      const c1 = await diffToBuffer(one, [], { sourceDateEpoch: epoch });
      const c2 = await diffToBuffer(two, [], { sourceDateEpoch: epoch });
      assert.equal(c1.res.digest, c2.res.digest);
      for (const fp of (await tarFingerprint(c1.bytes)).entries.values()) assert.ok(fp.mtime <= epoch);
      // Entries come sorted, parents first.
      const names = [...(await tarFingerprint(d1.bytes)).entries.keys()];
      assert.deepEqual(names, ['a', 'b', 'b/z', 'l'.repeat(150)]);
      // Binary xattrs and long names survive diff → apply.
      const back = join(top, 'back');
      mkdirSync(back);
      await applyLayer(Readable.from([d1.bytes]), { upper: back, lowers: [] });
      assert.deepEqual(compareFingerprints(treeFingerprint(one).entries, treeFingerprint(back).entries), []);
      // GNU tar reads it too.
      const listed = execFileSync('tar', ['-tf', '-'], { input: d1.bytes }).toString().trim().split('\n');
      assert.deepEqual(listed, ['a', 'b/', 'b/z', 'l'.repeat(150)]);
    }));

  test('owners and times too large for ustar fields travel in PAX records', () =>
    withDirs(async (top) => {
      const dir = join(top, 'src');
      const far = 4_102_444_800; // 2100-01-01, past tar-stream's 32-bit header time
      buildTree(dir, [{ path: 'f', type: 'file', content: 'f', uid: 3_000_000, gid: 4_000_000, mtime: far }]);
      const d = await diffToBuffer(dir, []);
      const back = join(top, 'back');
      mkdirSync(back);
      await applyLayer(Readable.from([d.bytes]), { upper: back, lowers: [] });
      const fp = treeFingerprint(back).entries.get('f');
      assert.deepEqual([fp?.uid, fp?.gid, fp?.mtime], [3_000_000, 4_000_000, far]);
      const listed = execFileSync('tar', ['--numeric-owner', '-tvf', '-'], { input: d.bytes }).toString();
      assert.match(listed, /3000000\/4000000/);
      assert.match(listed, /2100-01-01/);
    }));

  test('large streams hash the same in the worker thread as inline', () =>
    withDirs(async (top) => {
      const dir = join(top, 'big');
      buildTree(dir, [{ path: 'blob', type: 'file', content: Buffer.alloc(9 * 1024 * 1024 + 17, 0x5a) }]);
      const viaWorker = await inMode('1', () => diffToBuffer(dir, []));
      assert.equal(viaWorker.res.digest, sha256(viaWorker.bytes));
      const back = join(top, 'back');
      mkdirSync(back);
      const applied = await applyLayer(Readable.from([viaWorker.bytes]), { upper: back, lowers: [] });
      assert.equal(applied.digest, viaWorker.res.digest);
      const inline = await inMode('0', () => diffToBuffer(dir, []));
      assert.equal(inline.res.digest, viaWorker.res.digest);
    }));

  test('the walk lays out the same tar in the worker as inline: xattrs, whiteouts, opaque dirs, links, devices, a few chunks of entries', () =>
    withDirs(async (top) => {
      const dir = join(top, 'tree');
      const many = Array.from({ length: 700 }, (_, i) => ({ path: `many/f${i}`, type: 'file' as const, content: 'x'.repeat(i % 600) }));
      buildTree(dir, [
        { path: 'a', type: 'dir', xattrs: { 'user.note': 'dir', 'trusted.overlay.opaque': 'y' } },
        { path: 'a/bin', type: 'file', content: 'elf', xattrs: { 'trusted.blob': Buffer.from([1, 0, 0, 2, 0xff, 0, 0, 0]), 'user.b': 'text' } },
        { path: 'a/hard', type: 'hardlink', target: 'a/bin' },
        { path: 'a/ln', type: 'symlink', target: '../many/f1' },
        { path: 'a/null', type: 'char', major: 1, minor: 3 },
        { path: 'a/.wh.gone', type: 'char', major: 0, minor: 0 },
        { path: 'a/pipe', type: 'fifo' },
        { path: 'many', type: 'dir' },
        ...many,
      ]);
      const viaWorker = await inMode('1', () => diffToBuffer(dir, []));
      const inline = await inMode('0', () => diffToBuffer(dir, []));
      assert.deepEqual(viaWorker.bytes, inline.bytes);
      assert.equal(viaWorker.res.digest, sha256(inline.bytes));
      const listed = execFileSync('tar', ['-tf', '-'], { input: inline.bytes }).toString().trim().split('\n');
      assert.deepEqual(listed.slice(0, 9), ['a/', 'a/.wh..wh..opq', 'a/.wh..wh.gone', 'a/bin', 'a/hard', 'a/ln', 'a/null', 'a/pipe', 'many/']);
      assert.equal(listed.length, 9 + many.length);
    }));

  test('bodies read by the walk (up to 64 KiB, chunks cut short by their size) and by the reader come out byte for byte, in the worker and inline', () =>
    withDirs(async (top) => {
      const dir = join(top, 'tree');
      const body = (n: number, seed: number): Buffer => Buffer.from(Array.from({ length: n }, (_, i) => (i * 31 + seed * 7) & 0xff));
      const sizes = [0, 1, 511, 512, 65_535, 65_536, 65_537, 3 * 1024 * 1024 + 5];
      buildTree(dir, [
        { path: 'edge', type: 'dir' },
        { path: 'many', type: 'dir' },
        ...sizes.map((n, i) => ({ path: `edge/s${n}`, type: 'file' as const, content: body(n, i) })),
        // 60 KiB each: a chunk's data buffer holds 17 of them, so these span several chunks.
        ...Array.from({ length: 40 }, (_, i) => ({ path: `many/m${String(i).padStart(2, '0')}`, type: 'file' as const, content: body(60_000, 100 + i) })),
      ]);
      const viaWorker = await inMode('1', () => diffToBuffer(dir, []));
      const inline = await inMode('0', () => diffToBuffer(dir, []));
      assert.deepEqual(viaWorker.bytes, inline.bytes);
      assert.equal(inline.res.digest, sha256(inline.bytes));
      const back = join(top, 'back');
      mkdirSync(back);
      execFileSync('tar', ['-xf', '-', '-C', back], { input: inline.bytes });
      for (const [i, n] of sizes.entries()) assert.deepEqual(readFileSync(join(back, 'edge', `s${n}`)), body(n, i), `edge/s${n}`);
      for (let i = 0; i < 40; i++) assert.deepEqual(readFileSync(join(back, 'many', `m${String(i).padStart(2, '0')}`)), body(60_000, 100 + i), `many/m${i}`);
    }));

  test('no descriptor stays open after a diff that succeeds, one the walk fails deep in the tree, or one whose output fails', () =>
    withDirs(async (top) => {
      const good = join(top, 'good');
      buildTree(good, [
        ...Array.from({ length: 30 }, (_, i) => ({ path: `d${i}`, type: 'dir' as const })),
        ...Array.from({ length: 3000 }, (_, i) => ({ path: `d${i % 30}/f${i}`, type: 'file' as const, content: 'x'.repeat(i % 900) })),
      ]);
      const bad = join(top, 'bad');
      buildTree(bad, [
        { path: 'a', type: 'dir' },
        { path: 'a/b', type: 'dir' },
        { path: 'a/b/c', type: 'dir' },
        { path: 'a/b/c/early', type: 'file', content: 'fine' },
        { path: 'a/b/c/moved', type: 'dir', xattrs: { 'trusted.overlay.redirect': '/elsewhere' } },
        { path: 'a/b/c/moved/x', type: 'file', content: 'x' },
        { path: 'a/z', type: 'file', content: 'z' },
      ]);
      const openFds = (): number => readdirSync('/proc/self/fd').length;
      // Settles once a worker has handled what it was sent (the walk worker closes what a closed walk had open).
      const settle = async (want: number): Promise<number> => {
        for (let i = 0; i < 200 && openFds() !== want; i++) await new Promise((r) => setTimeout(r, 10));
        return openFds();
      };
      const failing = (): Writable =>
        new Writable({
          write(_chunk, _enc, cb) {
            cb(new Error('disk full'));
          },
        });
      for (const mode of ['1', '0'] as const) {
        await inMode(mode, async () => {
          await diffToBuffer(good, []); // starts the helper threads, which keep descriptors of their own
          const before = openFds();
          await diffToBuffer(good, []);
          assert.equal(await settle(before), before, `mode ${mode}: after a diff`);
          await assert.rejects(diffLayer({ upper: bad, lowers: [] }, collector().stream), /redirect metadata/);
          assert.equal(await settle(before), before, `mode ${mode}: after a failed walk`);
          await assert.rejects(diffLayer({ upper: good, lowers: [] }, failing()), /disk full/);
          assert.equal(await settle(before), before, `mode ${mode}: after a failed output`);
        });
      }
    }));

  test('the reader opens files relative to their directories and never through a symlink planted under the root, in the worker and inline', () =>
    withDirs(async (top) => {
      const root = join(top, 'root');
      const outside = join(top, 'outside');
      buildTree(outside, [{ path: 'secret', type: 'file', content: 'host data' }]);
      buildTree(root, [
        { path: 'd', type: 'dir' },
        { path: 'd/ok', type: 'file', content: 'fine' },
        { path: 'd/file-link', type: 'symlink', target: join(outside, 'secret') },
        { path: 'dir-link', type: 'symlink', target: outside },
      ]);
      for (const mode of ['1', '0'] as const) {
        await inMode(mode, async () => {
          const read = async (rel: string, len: number) => {
            const reader = batchReader(root);
            const ab = reader.alloc(4096);
            new Uint8Array(ab).fill(0);
            try {
              const failure = await reader.fill(ab, len, [{ rel, fileOff: 0, len, bufOff: 0 }]);
              return { failure, bytes: Buffer.from(ab, 0, len).toString() };
            } finally {
              reader.close();
            }
          };
          assert.deepEqual(await read('d/ok', 4), { failure: undefined, bytes: 'fine' });
          for (const rel of ['d/file-link', 'dir-link/secret']) {
            const { failure, bytes } = await read(rel, 9);
            assert.match(failure?.code ?? '', /^(ELOOP|ENOTDIR)$/, `mode ${mode}: ${rel}`);
            assert.equal(bytes, '\0'.repeat(9), `mode ${mode}: nothing of ${rel} read`);
          }
        });
      }
    }));

  test('a tree deeper than PATH_MAX diffs, small and large files alike', () =>
    withDirs(async (top) => {
      const root = join(top, 'deep');
      mkdirSync(root);
      // 20 levels of 250-character names: 5,000+ bytes, past PATH_MAX (4096). Made one level at a
      // time from inside the previous one (synchronously, so nothing else runs meanwhile), and
      // removed by rm, which works relative to each directory as node:fs does not.
      const level = 'd'.repeat(250);
      const big = Buffer.from(Array.from({ length: 100_000 }, (_, i) => (i * 13) & 0xff));
      const want = new Map([
        ['big', createHash('sha256').update(big).digest('hex')],
        ['small', createHash('sha256').update('small').digest('hex')],
      ]);
      try {
        const cwd = process.cwd();
        try {
          process.chdir(root);
          for (let i = 0; i < 20; i++) {
            mkdirSync(level);
            process.chdir(level);
          }
          writeFileSync('big', big);
          writeFileSync('small', 'small');
        } finally {
          process.chdir(cwd);
        }
        for (const mode of ['1', '0'] as const) {
          const { res, bytes } = await inMode(mode, () => diffToBuffer(root, []));
          assert.equal(res.digest, sha256(bytes));
          const { entries } = await tarFingerprint(bytes);
          const deepest = Array(20).fill(level).join('/');
          assert.equal(entries.get(`${deepest}/big`)?.sha, want.get('big'), `mode ${mode}: big`);
          assert.equal(entries.get(`${deepest}/small`)?.sha, want.get('small'), `mode ${mode}: small`);
        }
      } finally {
        execFileSync('rm', ['-rf', root]);
      }
    }));

  test('an upper carrying overlay redirect metadata is refused with ERR_FAILED_PRECONDITION, in the worker and inline', () =>
    withDirs(async (top) => {
      const dir = join(top, 'tree');
      buildTree(dir, [
        { path: 'ok', type: 'file', content: 'fine' },
        { path: 'moved', type: 'dir', xattrs: { 'trusted.overlay.redirect': '/elsewhere' } },
      ]);
      for (const mode of ['1', '0'] as const) {
        await inMode(mode, () =>
          assert.rejects(diffLayer({ upper: dir, lowers: [] }, collector().stream), (err: Error & { code?: string }) => {
            assert.equal(err.code, 'ERR_FAILED_PRECONDITION');
            assert.match(err.message, /cannot diff "moved": it carries overlayfs redirect metadata/);
            return true;
          }),
        );
      }
    }));

  test('bad options and a missing source are InvalidArgumentError', () =>
    withDirs(async (top) => {
      const out = collector();
      await assert.rejects(diffLayer({ upper: top, lowers: [] }, out.stream, { compression: 'xz' as 'gzip' }), InvalidArgumentError);
      await assert.rejects(diffLayer({ upper: top, lowers: [] }, out.stream, { sourceDateEpoch: -1 }), InvalidArgumentError);
      await assert.rejects(diffLayer({ upper: top, lowers: [] }, out.stream, { gzipLevel: 12 }), InvalidArgumentError);
      await assert.rejects(diffLayer({ upper: top, lowers: [] }, out.stream, { compresion: 'gzip' } as never), /Unknown diff option "compresion"/);
      await assert.rejects(diffLayer({ upper: join(top, 'nope'), lowers: [] }, out.stream), InvalidArgumentError);
    }));
});
