/**
 * Several processes, and many promises in one process, on one root: no
 * error but the expected typed ones (no leaked SQLITE_BUSY), no lost or
 * duplicated snapshot, and every record keeps its directory.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { dirname, join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { Snapshotter } from '../lib/index.js';
import { removeTree, tempDir } from './helpers/fixtures.js';
import { type LoadCounts, mixedLoad } from './helpers/load.js';

const worker = join(dirname(fileURLToPath(import.meta.url)), 'helpers', 'concurrency-worker.ts');

function run(root: string, seed: number, ops: number): Promise<LoadCounts> {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, ['--import', 'tsx', worker, root, String(seed), String(ops)], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    p.stdout.on('data', (d: Buffer) => (out += d.toString()));
    p.stderr.on('data', (d: Buffer) => (err += d.toString()));
    p.on('close', (code) => (code === 0 ? resolve(JSON.parse(out) as LoadCounts) : reject(new Error(`worker ${seed} exited ${code}: ${err}`))));
  });
}

async function assertConsistent(sn: Snapshotter, counts: LoadCounts[]): Promise<void> {
  let records = 0;
  await sn.walk(() => void records++);
  const created = counts.reduce((n, c) => n + c.created, 0);
  const removed = counts.reduce((n, c) => n + c.removed, 0);
  assert.equal(records, created - removed, 'every successful creation and removal is accounted for: nothing lost or duplicated');
  await sn.cleanup();
  const report = await sn.check();
  assert.deepEqual(report.problems, [], 'every record has its directory and cleanup leaves no orphan');
}

test('four processes running 1,000 mixed operations each on one root see only typed errors and lose nothing', async () => {
  const top = tempDir();
  const root = join(top, 'root');
  try {
    await (await Snapshotter.open(root)).close();
    // Every worker is waited for, so that one failing does not leave the others writing while the root is deleted.
    const settled = await Promise.allSettled([1, 2, 3, 4].map((seed) => run(root, seed, 1000)));
    const failed = settled.filter((s) => s.status === 'rejected').map((s) => String(s.reason));
    assert.deepEqual(failed, [], 'every worker finishes');
    const counts = settled.map((s) => (s as PromiseFulfilledResult<LoadCounts>).value);
    assert.equal(counts.reduce((n, c) => n + c.ops, 0), 4000);
    assert.ok(counts.every((c) => c.created > 0 && c.removed > 0 && c.committed > 0), JSON.stringify(counts));
    const sn = await Snapshotter.open(root);
    try {
      await assertConsistent(sn, counts);
    } finally {
      await sn.close();
    }
  } finally {
    await removeTree(top);
  }
});

test('1,000 concurrent promises on one Snapshotter see only typed errors and lose nothing', async () => {
  const top = tempDir();
  try {
    const sn = await Snapshotter.open(join(top, 'root'));
    try {
      const counts = await mixedLoad(sn, 42, 1000, true);
      assert.equal(counts.ops, 1000);
      await assertConsistent(sn, [counts]);
    } finally {
      await sn.close();
    }
  } finally {
    await removeTree(top);
  }
});
