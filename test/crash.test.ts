/**
 * Crash safety: a child process is killed with SIGKILL at each fault point
 * of lib/faults.ts; the test then reopens the root and checks that the
 * store tells the truth and recovers.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { Snapshotter } from '../lib/index.js';
import { FAULT_ENV, FAULT_POINTS, type FaultPoint } from '../lib/faults.js';
import { removeTree, tempDir } from './helpers/fixtures.js';

const here = dirname(fileURLToPath(import.meta.url));
const child = join(here, 'helpers', 'crash-child.ts');

interface Scenario {
  point: FaultPoint;
  operation: 'prepare' | 'view' | 'commit' | 'remove' | 'cleanup' | 'prune';
  mode?: 'async';
  /** Builds the state the crashed call starts from. */
  setup(sn: Snapshotter, root: string): Promise<void>;
  /** The two acceptable outcomes of the crashed call: it did not happen, or it happened completely. */
  outcomes: { before: string[]; after: string[] };
}

async function base(sn: Snapshotter): Promise<void> {
  await sn.prepare('base-active');
  await sn.commit('base', 'base-active');
}

const creation = (point: FaultPoint, operation: 'prepare' | 'view'): Scenario => ({
  point,
  operation,
  setup: base,
  outcomes: { before: ['base'], after: ['base', 'victim'] },
});

const SCENARIOS: Scenario[] = [
  creation('create:after-staging', 'prepare'),
  creation('create:after-record', 'prepare'),
  creation('create:after-rename', 'prepare'),
  creation('create:after-rename', 'view'),
  ...(['commit:before-transaction', 'commit:after-transaction'] as const).map((point) => ({
    point,
    operation: 'commit' as const,
    async setup(sn: Snapshotter, root: string) {
      await base(sn);
      await sn.prepare('victim-active', 'base');
      writeFileSync(join(root, 'snapshots', '2', 'fs', 'data'), 'layer data');
    },
    outcomes: { before: ['base', 'victim-active'], after: ['base', 'victim'] },
  })),
  ...(['remove:after-record', 'remove:mid-delete'] as const).map((point) => ({
    point,
    operation: 'remove' as const,
    async setup(sn: Snapshotter, root: string) {
      await base(sn);
      await sn.prepare('victim', 'base');
      mkdirSync(join(root, 'snapshots', '2', 'fs', 'dir'));
      writeFileSync(join(root, 'snapshots', '2', 'fs', 'dir', 'file'), 'x');
    },
    outcomes: { before: ['base', 'victim'], after: ['base'] },
  })),
  {
    point: 'cleanup:mid',
    operation: 'cleanup',
    mode: 'async',
    async setup(sn: Snapshotter) {
      await base(sn);
      for (const k of ['x1', 'x2', 'x3']) {
        await sn.prepare(k, 'base');
        await sn.remove(k);
      }
    },
    outcomes: { before: ['base'], after: ['base'] },
  },
  {
    point: 'prune:mid',
    operation: 'prune',
    async setup(sn: Snapshotter) {
      await base(sn);
      await sn.prepare('child-active', 'base');
      await sn.commit('child', 'child-active');
      await sn.prepare('kept', 'base');
    },
    outcomes: { before: ['base', 'child', 'kept'], after: ['base', 'kept'] },
  },
];

async function keys(sn: Snapshotter): Promise<string[]> {
  const out: string[] = [];
  await sn.walk((i) => void out.push(i.name));
  return out;
}

describe('crash at every fault point', () => {
  test('every fault point has a scenario', () => {
    assert.deepEqual([...new Set(SCENARIOS.map((s) => s.point))].sort(), [...FAULT_POINTS].sort());
  });

  for (const scenario of SCENARIOS) {
    test(`a crash at ${scenario.point} during ${scenario.operation} leaves a store that tells the truth and recovers`, async () => {
      const top = tempDir();
      const root = join(top, 'root');
      const options = { asyncRemove: scenario.mode === 'async' };
      try {
        let sn = await Snapshotter.open(root, options);
        await scenario.setup(sn, root);
        const idsBefore = readdirSync(join(root, 'snapshots')).filter((n) => /^\d+$/.test(n)).map(Number);
        await sn.close();

        const result = spawnSync(process.execPath, ['--import', 'tsx', child, root, scenario.operation, scenario.mode ?? ''], {
          env: { ...process.env, [FAULT_ENV]: scenario.point },
          encoding: 'utf8',
        });
        assert.equal(result.signal, 'SIGKILL', `the child must die at ${scenario.point}; stderr: ${result.stderr}`);

        sn = await Snapshotter.open(root, options);
        // Either the call did not happen, or it happened completely.
        const found = await keys(sn);
        assert.ok(
          [scenario.outcomes.before, scenario.outcomes.after].some((o) => JSON.stringify(o) === JSON.stringify(found)),
          `keys after the crash: ${JSON.stringify(found)}`,
        );
        // Every record has its directory (fs, and work for actives).
        const report = await sn.check();
        assert.deepEqual(report.problems.filter((p) => p.problem.startsWith('missing')), []);
        if (found.includes('victim') && scenario.operation === 'commit') {
          assert.equal((await sn.stat('victim')).kind, 'committed');
          assert.ok((await sn.usage('victim')).inodes >= 2, 'the committed usage was recorded with the data');
        }
        // cleanup removes every leftover; a second cleanup finds nothing.
        await sn.cleanup();
        assert.deepEqual((await sn.check()).problems, []);
        assert.deepEqual((await sn.cleanup()).removed, []);
        // Normal work goes on, and ids recorded before the crash are not reused.
        await sn.prepare('after-crash', found.includes('base') ? 'base' : undefined);
        const created = readdirSync(join(root, 'snapshots')).filter((n) => /^\d+$/.test(n)).map(Number).filter((n) => !idsBefore.includes(n));
        assert.ok(created.every((id) => id > Math.max(...idsBefore)), `new ids ${created} after ${idsBefore}`);
        await sn.remove('after-crash');
        await sn.close();
      } finally {
        await removeTree(top);
      }
    });
  }
});
