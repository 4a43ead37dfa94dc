/**
 * Crash safety: a child process is killed with SIGKILL at each fault point
 * of lib/kernel/faults.ts while a second snapshotter (another live process) holds
 * the root open. The test then reopens the root and checks, before any
 * cleanup(), that open alone recovered what it promises to (staging dirs
 * of dead processes, dirs of creations whose ids were never recorded,
 * claimed `rm-*` trees of an interrupted cleanup) and touched nothing else
 * (live snapshots' dirs, the other process's staging dirs, the dirs of
 * removed snapshots, which stay for cleanup()); that the store tells the
 * truth; and that cleanup() then finishes the rest.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, lstatSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { Snapshotter } from '../lib/index.js';
import { FAULT_ENV, FAULT_POINTS, type FaultPoint } from '../lib/kernel/faults.js';
import { isOwnPoolDir, removeTree, tempDir } from './helpers/fixtures.js';

const here = dirname(fileURLToPath(import.meta.url));
const child = join(here, 'helpers', 'crash-child.ts');
const holderChild = join(here, 'helpers', 'holder-child.ts');

interface Scenario {
  point: FaultPoint;
  operation: 'prepare' | 'view' | 'commit' | 'remove' | 'cleanup' | 'prune';
  mode?: 'async';
  /** Builds the state the crashed call starts from. */
  setup(sn: Snapshotter, root: string): Promise<void>;
  /** The two acceptable outcomes of the crashed call: it did not happen, or it happened completely. */
  outcomes: { before: string[]; after: string[] };
  /** A new entry of `snapshots/` that the crash must leave behind and open must remove (so that open had something to recover). */
  leftover?: RegExp;
  /** The entries of `snapshots/` right after the reopen, before any cleanup (the other process's staging dirs aside). */
  afterOpen: string[];
  /** Of those, the dirs of removed snapshots: open leaves them, check() reports them as orphans, cleanup() removes them. */
  orphans?: string[];
}

async function base(sn: Snapshotter, root: string): Promise<void> {
  await sn.prepare('base-active');
  writeFileSync(join(root, 'snapshots', '1', 'fs', 'base-file'), 'base data');
  await sn.commit('base', 'base-active');
}

const creation = (point: FaultPoint, operation: 'prepare' | 'view', leftover: RegExp): Scenario => ({
  point,
  operation,
  setup: base,
  outcomes: { before: ['base'], after: ['base', 'victim'] },
  leftover,
  afterOpen: ['1'],
});

const SCENARIOS: Scenario[] = [
  // The transaction never committed: the staging dir, or the dir renamed to an id that was never recorded, is all that is left.
  creation('create:after-staging', 'prepare', /^new-/),
  creation('create:after-record', 'prepare', /^new-/),
  creation('create:after-rename', 'prepare', /^\d+$/),
  creation('create:after-rename', 'view', /^\d+$/),
  ...(['commit:before-transaction', 'commit:after-transaction'] as const).map((point) => ({
    point,
    operation: 'commit' as const,
    async setup(sn: Snapshotter, root: string) {
      await base(sn, root);
      await sn.prepare('victim-active', 'base');
      writeFileSync(join(root, 'snapshots', '2', 'fs', 'data'), 'layer data');
    },
    outcomes: { before: ['base', 'victim-active'], after: ['base', 'victim'] },
    afterOpen: ['1', '2'],
  })),
  ...(['remove:after-record', 'remove:mid-delete'] as const).map((point) => ({
    point,
    operation: 'remove' as const,
    async setup(sn: Snapshotter, root: string) {
      await base(sn, root);
      await sn.prepare('victim', 'base');
      mkdirSync(join(root, 'snapshots', '2', 'fs', 'dir'));
      writeFileSync(join(root, 'snapshots', '2', 'fs', 'dir', 'file'), 'x');
    },
    outcomes: { before: ['base', 'victim'], after: ['base'] },
    afterOpen: ['1', '2'],
    orphans: ['2'],
  })),
  {
    // A container dir being recycled into the staging pool (lib/disk/recycle.ts): its file is gone, the dir not yet renamed.
    point: 'remove:mid-recycle' as const,
    operation: 'remove' as const,
    async setup(sn: Snapshotter, root: string) {
      await base(sn, root);
      await sn.prepare('victim', 'base');
      writeFileSync(join(root, 'snapshots', '2', 'fs', 'file'), 'x');
    },
    outcomes: { before: ['base', 'victim'], after: ['base'] },
    afterOpen: ['1', '2'],
    orphans: ['2'],
  },
  {
    point: 'cleanup:mid',
    operation: 'cleanup',
    mode: 'async',
    async setup(sn: Snapshotter, root: string) {
      await base(sn, root);
      for (const k of ['x1', 'x2', 'x3']) {
        await sn.prepare(k, 'base');
        await sn.remove(k);
      }
    },
    outcomes: { before: ['base'], after: ['base'] },
    // The orphans were claimed (renamed to rm-*) and the first deleted: open finishes the claims.
    leftover: /^rm-/,
    afterOpen: ['1'],
  },
  {
    point: 'prune:mid',
    operation: 'prune',
    async setup(sn: Snapshotter, root: string) {
      await base(sn, root);
      await sn.prepare('child-active', 'base');
      await sn.commit('child', 'child-active');
      await sn.prepare('kept', 'base');
    },
    outcomes: { before: ['base', 'child', 'kept'], after: ['base', 'kept'] },
    afterOpen: ['1', '3'],
  },
];

async function keys(sn: Snapshotter): Promise<string[]> {
  const out: string[] = [];
  await sn.walk((i) => void out.push(i.name));
  return out;
}

/** Every path below `dir` with its type, and a file's content: what "untouched" compares. */
function listing(dir: string): string[] {
  const out: string[] = [];
  const walk = (rel: string): void => {
    for (const name of readdirSync(join(dir, rel)).sort()) {
      const r = rel === '' ? name : `${rel}/${name}`;
      const st = lstatSync(join(dir, r));
      out.push(st.isDirectory() ? `${r}/` : st.isFile() ? `${r}=${readFileSync(join(dir, r), 'utf8')}` : `${r} (${st.mode.toString(8)})`);
      if (st.isDirectory()) walk(r);
    }
  };
  walk('');
  return out;
}

/** A second snapshotter in a live process, holding staging dirs of its own in `snapshots/` until `stop()`. */
async function startHolder(root: string): Promise<{ dirs: string[]; stop(): Promise<void> }> {
  const p = spawn(process.execPath, ['--import', 'tsx', holderChild, root], { stdio: ['pipe', 'pipe', 'pipe'] });
  let stderr = '';
  p.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<number | null>((resolve) => p.once('close', resolve));
  const lines = createInterface({ input: p.stdout });
  const first = await new Promise<string | undefined>((resolve) => {
    lines.once('line', resolve);
    lines.once('close', () => resolve(undefined));
  });
  if (first === undefined) throw new Error(`the holder process exited before it was ready: ${stderr}`);
  return {
    dirs: JSON.parse(first) as string[],
    async stop() {
      p.stdin.end();
      assert.equal(await exited, 0, `holder process: ${stderr}`);
    },
  };
}

describe('crash at every fault point', () => {
  test('every fault point has a scenario', () => {
    assert.deepEqual([...new Set(SCENARIOS.map((s) => s.point))].sort(), [...FAULT_POINTS].sort());
  });

  for (const scenario of SCENARIOS) {
    test(`a crash at ${scenario.point} during ${scenario.operation} is recovered by the next open alone, leaves a store that tells the truth, and cleanup finishes the rest`, async () => {
      const top = tempDir();
      const root = join(top, 'root');
      const options = { asyncRemove: scenario.mode === 'async' };
      const orphans = scenario.orphans ?? [];
      let holder: Awaited<ReturnType<typeof startHolder>> | undefined;
      try {
        let sn = await Snapshotter.open(root, options);
        await scenario.setup(sn, root);
        const idsBefore = readdirSync(join(root, 'snapshots')).filter((n) => /^\d+$/.test(n));
        const live = scenario.afterOpen.filter((n) => !orphans.includes(n));
        const contents = new Map(live.map((id) => [id, listing(join(root, 'snapshots', id))]));
        await sn.close();

        holder = await startHolder(root);
        assert.equal(holder.dirs.length, 5);
        const result = spawnSync(process.execPath, ['--import', 'tsx', child, root, scenario.operation, scenario.mode ?? ''], {
          env: { ...process.env, [FAULT_ENV]: scenario.point },
          encoding: 'utf8',
        });
        assert.equal(result.signal, 'SIGKILL', `the child must die at ${scenario.point}; stderr: ${result.stderr}`);
        const holderDirs = holder.dirs;
        const afterCrash = readdirSync(join(root, 'snapshots')).filter((n) => !holderDirs.includes(n) && !idsBefore.includes(n));
        if (scenario.leftover !== undefined) {
          assert.ok(afterCrash.some((n) => scenario.leftover!.test(n)), `the crash left something to recover: ${JSON.stringify(afterCrash)}`);
        }

        sn = await Snapshotter.open(root, options);
        // What open alone did, before any cleanup().
        const entries = readdirSync(join(root, 'snapshots')).filter((n) => !isOwnPoolDir(n));
        assert.deepEqual(
          entries.filter((n) => !holderDirs.includes(n)).sort(),
          [...scenario.afterOpen].sort(),
          'open removed the crash leftovers, and only them',
        );
        assert.deepEqual(holderDirs.filter((n) => !entries.includes(n)), [], 'open left the live process\'s staging dirs alone');
        for (const [id, before] of contents) assert.deepEqual(listing(join(root, 'snapshots', id)), before, `open left snapshot dir ${id} as it was`);
        // Either the call did not happen, or it happened completely.
        const found = await keys(sn);
        assert.ok(
          [scenario.outcomes.before, scenario.outcomes.after].some((o) => JSON.stringify(o) === JSON.stringify(found)),
          `keys after the crash: ${JSON.stringify(found)}`,
        );
        // Every record has its directory (fs, and work for actives); what is left is exactly the removed snapshots' dirs.
        assert.deepEqual((await sn.check()).problems, orphans.map((o) => ({ problem: 'orphan', path: join(root, 'snapshots', o), repaired: false })));
        if (found.includes('victim') && scenario.operation === 'commit') {
          assert.equal((await sn.stat('victim')).kind, 'committed');
          assert.ok((await sn.usage('victim')).inodes >= 2, 'the committed usage was recorded with the data');
        }
        await holder.stop();
        holder = undefined;
        assert.deepEqual(readdirSync(join(root, 'snapshots')).filter((n) => holderDirs.includes(n)), [], 'the live process removed its staging dirs when it closed');

        // cleanup removes the rest; a second cleanup finds nothing.
        assert.deepEqual((await sn.cleanup()).removed.sort(), [...orphans].sort());
        assert.deepEqual((await sn.check()).problems, []);
        assert.deepEqual((await sn.cleanup()).removed, []);
        for (const id of live) assert.ok(existsSync(join(root, 'snapshots', id)));
        // Normal work goes on, and ids recorded before the crash are not reused.
        await sn.prepare('after-crash', found.includes('base') ? 'base' : undefined);
        const created = readdirSync(join(root, 'snapshots')).filter((n) => /^\d+$/.test(n) && !idsBefore.includes(n)).map(Number);
        assert.ok(created.every((id) => id > Math.max(...idsBefore.map(Number))), `new ids ${created} after ${idsBefore}`);
        await sn.remove('after-crash');
        await sn.close();
      } finally {
        await holder?.stop().catch(() => {});
        await removeTree(top);
      }
    });
  }
});
