/**
 * Smoke test of the benchmark runner (bench/run.ts): a --quick run of two
 * cheap workloads writes the JSON report and prints the table, and one of
 * W8 (root) reports its floor, the bare cycle. W9's floor, the bare cycle on
 * many threads (bench/bare-concurrent.ts), is run on its own, small. Only
 * the shape is checked; benchmarks are not tests, and their figures are not.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { bareBurst } from '../bench/bare-concurrent.js';
import { removeTree, tempDir } from './helpers/fixtures.js';
import { assertCanMount, mountTestOptions } from './helpers/require-mount.js';

const REPO = fileURLToPath(new URL('..', import.meta.url));

/** Runs `bench/run.ts --quick --runs 1 --only <only>` with its roots and JSON report in `dir`; returns the table and the parsed report. */
function runBench<T>(dir: string, only: string): { stdout: string; report: T } {
  const json = join(dir, 'report.json');
  const r = spawnSync(process.execPath, ['--import', 'tsx', 'bench/run.ts', '--quick', '--runs', '1', '--only', only, '--json', json, '--dir', join(dir, 'roots')], {
    cwd: REPO,
    encoding: 'utf8',
    timeout: 120_000,
  });
  assert.equal(r.status, 0, r.stderr);
  return { stdout: r.stdout, report: JSON.parse(readFileSync(json, 'utf8')) as T };
}

test('bench --quick --json writes every figure of the chosen workloads and prints the table', async () => {
  const dir = tempDir('ovl-bench-test-');
  try {
    const r = runBench<Record<string, unknown> & { workloads: Record<string, unknown>[]; machine: Record<string, unknown> }>(dir, 'W3,W4');
    assert.match(r.stdout, /\| workload +\| figure +\| ours \(median\)/);
    assert.match(r.stdout, /\| W3 lookups +\| stat\/s/);

    const { report } = r;
    assert.equal(report.version, 1);
    assert.equal(report.quick, true);
    assert.equal(report.runs, 1);
    assert.equal(typeof report.date, 'string');
    for (const field of ['cpu', 'cpus', 'memoryGiB', 'kernel', 'node', 'filesystem', 'base']) assert.ok(field in report.machine, `machine.${field}`);
    assert.deepEqual(
      report.workloads.map((w) => w.id),
      ['W3', 'W4'],
    );
    for (const w of report.workloads) {
      assert.equal(typeof w.name, 'string');
      assert.equal(w.runs, 1);
      assert.ok(typeof w.peakRssMiB === 'number' && w.peakRssMiB > 0, 'peak RSS of the workload');
      assert.ok(typeof w.wallSeconds === 'number' && w.wallSeconds > 0);
      assert.ok(Object.values(w.size as Record<string, unknown>).every((n) => typeof n === 'number' && n > 0));
      const metrics = w.metrics as Record<string, unknown>[];
      assert.ok(metrics.length >= 2);
      for (const m of metrics) {
        assert.match(m.id as string, new RegExp(`^${w.id as string}\\.`));
        assert.equal(typeof m.label, 'string');
        assert.ok(['ops/s', 's', 'ms', 'µs', 'x', 'bytes'].includes(m.unit as string));
        assert.ok(Number.isFinite(m.median) && (m.median as number) > 0, `${m.id as string} median`);
        assert.equal((m.samples as number[]).length, 1);
        if (m.goal !== undefined) {
          assert.ok(['>=', '<='].includes((m.goal as { cmp: string }).cmp));
          assert.ok(Number.isFinite((m.goal as { value: number }).value), 'a goal is an absolute figure');
          assert.equal(m.met, null, 'goals are not judged at --quick sizes');
        }
        assertNoCrossDayRatio(m);
      }
    }
    // W3 and W4 show issue 6's containerd figures, labelled as another day's.
    assert.ok(report.workloads.every((w) => (w.metrics as Record<string, unknown>[]).some((m) => m.reference !== undefined)));
    assert.match(r.stdout, /containerd \(other day\)/);
    assert.doesNotMatch(r.stdout, /vs containerd/);
  } finally {
    await removeTree(dir);
  }
});

/**
 * A figure from another day is shown labelled as such, and nothing is
 * computed from it: no ratio against it (the old `vsContainerd`).
 */
function assertNoCrossDayRatio(m: Record<string, unknown>): void {
  assert.ok(!('vsContainerd' in m) && !('containerd' in m), `${m.id as string}: no unlabelled containerd figure or ratio`);
  if (m.reference === undefined) return;
  const ref = m.reference as { value: unknown; source: unknown };
  assert.ok(Number.isFinite(ref.value), `${m.id as string}: reference value`);
  assert.match(ref.source as string, /another day/, `${m.id as string}: the reference says it is not from this run`);
}

test('bench W8 --quick reports each phase of each variant beside the bare cycle run in the same process', mountTestOptions(), async () => {
  assertCanMount();
  const dir = tempDir('ovl-bench-test-');
  try {
    const r = runBench<{ workloads: { id: string; skipped?: string; metrics: Record<string, unknown>[] }[] }>(dir, 'W8');
    const [w8] = r.report.workloads;
    assert.equal(w8?.id, 'W8');
    assert.equal(w8.skipped, undefined);
    const ids = w8.metrics.map((m) => m.id);
    for (const v of ['W8', 'W8v', 'W8w', 'W8vw']) {
      assert.deepEqual(
        ids.filter((id) => (id as string).startsWith(`${v}.`)),
        ['cycles', 'prepare', 'mount', 'unmount', 'remove'].map((p) => `${v}.${p}`),
      );
    }
    for (const m of w8.metrics) {
      const floor = m.floor as { label: string; median: number; samples: number[] };
      assert.match(floor.label, /^bare/, `${m.id as string}: the floor is the bare cycle`);
      assert.ok(Number.isFinite(floor.median) && floor.median > 0 && floor.samples.length === 1, `${m.id as string}: floor measured in this run`);
      assert.equal(m.vsFloor, (m.median as number) / floor.median);
      assertNoCrossDayRatio(m);
    }
    assert.match(r.stdout, /\| W8 mount +\| cycles\/s \(20-layer overlay\) +\| +[\d,.]+ \| +[\d,.]+ \| +\d+ % \|/);
    assert.match(r.stdout, /\| +\| unmount \(median cycle\) \[ms\] +\| +[\d.]+ ms \| +[\d.]+ ms \| +[\d.]+× \|/);
    // Nothing is left mounted below the roots.
    assert.ok(!readFileSync('/proc/self/mountinfo', 'utf8').includes(dir), 'nothing left mounted');
  } finally {
    await removeTree(dir);
  }
});

test("W9's floor runs every thread's bare cycles, shares the commits' syncs among them and leaves no snapshot dir", async () => {
  const dir = tempDir('ovl-bench-test-');
  try {
    const threads = 4;
    const n = 12;
    const before = Date.now();
    const r = await bareBurst(dir, threads, n);
    assert.equal(r.calls.length, threads);
    for (const c of r.calls) {
      assert.equal(c.prepare.length, n);
      assert.equal(c.remove.length, n);
      // Each cycle's prepare ends before its remove starts, on a clock shared with this thread.
      c.prepare.forEach(([s, e], i) => assert.ok(s >= before && s <= e && e <= c.remove[i]![0], `call ${i}: ${s}..${e}`));
      assert.ok(c.start <= c.prepare[0]![0] && c.end >= c.remove.at(-1)![1]);
    }
    assert.equal(r.commits, 2 * threads * n, 'two commits a cycle');
    assert.ok(r.syncs >= 1 && r.syncs <= r.commits, `${r.syncs} syncs for ${r.commits} commits`);
    assert.deepEqual(readdirSync(join(dir, 'snapshots')), [], 'every snapshot dir is gone');
    assert.ok(existsSync(join(dir, 'wal')));
  } finally {
    await removeTree(dir);
  }
});
