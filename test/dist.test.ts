/**
 * The package as built (dist/), as an application runs it: every helper
 * thread must start from its compiled file. The other tests run the
 * sources under tsx, where threads start another way (kernel/threads.ts),
 * so a worker file missing from the build, or one that only loads under
 * tsx, would pass them.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { cpSync, existsSync, readFileSync, rmSync, symlinkSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { removeTree, tempDir } from './helpers/fixtures.js';
import { REQUIRE_MOUNT, assertPrerequisite, prerequisiteOptions, toolSkipReason } from './helpers/require-mount.js';

const DIST = new URL('../dist/', import.meta.url).pathname.replace(/\/$/, '');
const CHILD = new URL('./helpers/dist-child.mjs', import.meta.url).pathname;
const STRACE_MISSING = toolSkipReason('strace', ['-V'], 'to see which files the threads load');
const BUILT = existsSync(join(DIST, 'index.js')) ? undefined : 'needs the build in dist/ (npm run build)';
const MISSING = STRACE_MISSING ?? BUILT;

const THREADS = ['disk/staging-worker.cjs', 'disk/usage-worker.js', 'layers/hash-worker.cjs', 'layers/writer-worker.cjs', 'layers/walk-worker.js', 'layers/reader-worker.js'];

test('from dist/, every helper thread starts from its compiled file and does its work', prerequisiteOptions(MISSING), async () => {
  if (REQUIRE_MOUNT) assertPrerequisite(MISSING);
  const top = tempDir('ovl-dist-');
  try {
    const log = join(top, 'strace.log');
    // The threads are used where there is a second CPU; the variable makes it so on any machine.
    const env = { ...process.env, OVERLAY_SNAPSHOTTER_HASH_WORKER: '1' };
    const r = spawnSync('strace', ['-f', '-qq', '-e', 'trace=openat', '-o', log, process.execPath, CHILD, DIST, top], { encoding: 'utf8', timeout: 120_000, env });
    assert.equal(r.status, 0, r.stderr);
    const out = JSON.parse(r.stdout) as { pool: number; applied: number; big: number; digest: string; diffBytes: number; usage: number };
    assert.ok(out.pool > 0, 'the staging pool made dirs');
    assert.equal(out.applied, 6000);
    assert.equal(out.big, 12 << 20);
    assert.match(out.digest, /^sha256:[0-9a-f]{64}$/);
    assert.ok(out.diffBytes > 6000 * 512 + (12 << 20), `the diff holds every file (${out.diffBytes} bytes)`);
    assert.equal(out.usage, 1 + 30 * 301, "the upper, 30 dirs and their 9,000 files");
    const opened = readFileSync(log, 'utf8');
    for (const file of THREADS) assert.ok(opened.includes(`${DIST}/${file}"`), `${file} was loaded from dist/`);
  } finally {
    await removeTree(top);
  }
});

test('from a build whose writer threads cannot start, an apply makes its files on the main thread instead of waiting for them forever', prerequisiteOptions(BUILT), async () => {
  if (REQUIRE_MOUNT) assertPrerequisite(BUILT);
  const top = tempDir('ovl-dist-');
  try {
    // A copy of the build without the writer threads' file; packages resolve through the link.
    cpSync(DIST, join(top, 'pkg', 'dist'), { recursive: true });
    rmSync(join(top, 'pkg', 'dist', 'layers', 'writer-worker.cjs'));
    symlinkSync(new URL('../node_modules', import.meta.url).pathname, join(top, 'pkg', 'node_modules'));
    const env = { ...process.env, OVERLAY_SNAPSHOTTER_HASH_WORKER: '1' };
    const r = spawnSync(process.execPath, [CHILD, join(top, 'pkg', 'dist'), top], { encoding: 'utf8', timeout: 120_000, env });
    assert.equal(r.signal, null, 'the child finished (it was not killed by the timeout)');
    assert.equal(r.status, 0, r.stderr);
    const out = JSON.parse(r.stdout) as { applied: number; big: number };
    assert.equal(out.applied, 6000);
    assert.equal(out.big, 12 << 20);
  } finally {
    await removeTree(top);
  }
});
