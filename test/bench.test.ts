/**
 * Smoke test of the benchmark runner (bench/run.ts): a --quick run of two
 * cheap workloads writes the JSON report and prints the table. Only the
 * shape is checked; benchmarks are not tests, and their figures are not.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { removeTree, tempDir } from './helpers/fixtures.js';

const REPO = fileURLToPath(new URL('..', import.meta.url));

test('bench --quick --json writes every figure of the chosen workloads and prints the table', async () => {
  const dir = tempDir('ovl-bench-test-');
  try {
    const json = join(dir, 'report.json');
    const r = spawnSync(process.execPath, ['--import', 'tsx', 'bench/run.ts', '--quick', '--runs', '1', '--only', 'W3,W4', '--json', json, '--dir', join(dir, 'roots')], {
      cwd: REPO,
      encoding: 'utf8',
      timeout: 120_000,
    });
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /\| workload +\| figure +\| ours \(median\)/);
    assert.match(r.stdout, /\| W3 lookups +\| stat\/s/);

    const report = JSON.parse(readFileSync(json, 'utf8')) as Record<string, unknown> & { workloads: Record<string, unknown>[]; machine: Record<string, unknown> };
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
          assert.equal(m.met, null, 'goals are not judged at --quick sizes');
          assert.ok(Number.isFinite(m.containerd) && Number.isFinite(m.vsContainerd));
        }
      }
    }
  } finally {
    await removeTree(dir);
  }
});
