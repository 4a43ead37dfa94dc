/**
 * DirectWriter (lib/layers/direct-writer.ts): a file written in order past
 * the page cache where the filesystem allows it, through it where not, the
 * same bytes either way; bounded write-ahead; a failed write reported.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { DirectWriter } from '../../lib/layers/index.js';
import { removeTree, tempDir } from '../helpers/fixtures.js';
import { mountTestOptions } from '../helpers/require-mount.js';

/** Chunks of awkward sizes (a byte, less than a block, more than a slot, ...) cut from `data`. */
function chunksOf(data: Buffer): Buffer[] {
  const sizes = [1, 4095, 4097, 1024 * 1024 + 3, 511, 2 * 1024 * 1024, 7];
  const out: Buffer[] = [];
  for (let off = 0, i = 0; off < data.length; i++) {
    const n = Math.min(sizes[i % sizes.length]!, data.length - off);
    out.push(data.subarray(off, off + n));
    off += n;
  }
  return out;
}

async function writeFile(path: string, data: Buffer, options?: { direct?: boolean }): Promise<DirectWriter> {
  const w = DirectWriter.create(path, options);
  try {
    for (const chunk of chunksOf(data)) {
      w.write(chunk);
      await w.drained();
    }
    await w.flushed();
  } finally {
    await w.close();
  }
  return w;
}

/** Mounts a filesystem of `type` on a fresh dir under `top` for `fn`, and always unmounts it. */
async function withFs(top: string, type: string, options: string, fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = join(top, type);
  mkdirSync(dir);
  execFileSync('mount', ['-t', type, '-o', options, type, dir]);
  try {
    await fn(dir);
  } finally {
    execFileSync('umount', [dir]);
  }
}

test('bytes written in chunks of any size come back the same, the file exactly as long, directly or through the page cache', async () => {
  const top = tempDir('ovl-direct-');
  try {
    const data = randomBytes(9 * 1024 * 1024 + 4321);
    const direct = await writeFile(join(top, 'direct'), data);
    assert.equal(direct.direct, true, 'the test root takes O_DIRECT');
    const buffered = await writeFile(join(top, 'buffered'), data, { direct: false });
    assert.equal(buffered.direct, false);
    for (const name of ['direct', 'buffered']) {
      assert.equal(statSync(join(top, name)).size, data.length);
      assert.ok(readFileSync(join(top, name)).equals(data), `${name}: same bytes`);
    }
    const empty = await writeFile(join(top, 'empty'), Buffer.alloc(0));
    assert.equal(empty.size, 0);
    assert.equal(statSync(join(top, 'empty')).size, 0);
    assert.throws(() => DirectWriter.create(join(top, 'direct')), /EEXIST/);
  } finally {
    await removeTree(top);
  }
});

test('where the filesystem refuses O_DIRECT (ramfs), the file is written through the page cache', mountTestOptions(), async () => {
  const top = tempDir('ovl-direct-');
  try {
    await withFs(top, 'ramfs', 'mode=0755', async (dir) => {
      const data = randomBytes(3 * 1024 * 1024 + 5);
      const w = await writeFile(join(dir, 'blob'), data);
      assert.equal(w.direct, false);
      assert.ok(readFileSync(join(dir, 'blob')).equals(data));
    });
  } finally {
    await removeTree(top);
  }
});

test('past 16 MiB waiting, drained() makes the writer wait; a full disk fails flushed() and later writes with ENOSPC', mountTestOptions(), async () => {
  const top = tempDir('ovl-direct-');
  try {
    await withFs(top, 'tmpfs', 'size=4m', async (dir) => {
      const w = DirectWriter.create(join(dir, 'blob'));
      try {
        // Written in one go: no write can complete before the event loop turns.
        w.write(Buffer.alloc(8 * 1024 * 1024, 1));
        assert.equal(w.drained(), undefined);
        w.write(Buffer.alloc(9 * 1024 * 1024, 2));
        assert.ok(w.drained() instanceof Promise);
        await assert.rejects(w.flushed(), /ENOSPC/);
        assert.throws(() => w.write(Buffer.alloc(1)), /ENOSPC/);
      } finally {
        await w.close();
      }
    });
  } finally {
    await removeTree(top);
  }
});
