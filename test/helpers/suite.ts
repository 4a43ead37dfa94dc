/**
 * The conformance suite: named scenarios of containerd's snapshotter
 * semantics (and of its own test suite), run against every configuration.
 * Scenarios that mount check what a container would see.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import {
  chmodSync,
  chownSync,
  existsSync,
  linkSync,
  lstatSync,
  mkdirSync,
  readFileSync,
  readdirSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { describe, test } from 'node:test';
import {
  Snapshotter,
  isAlreadyExists,
  isFailedPrecondition,
  isInvalidArgument,
  isNotFound,
  isUnavailable,
  type Info,
  type SnapshotterOptions,
} from '../../lib/index.js';
import { wallClock } from '../../lib/kernel/clock.js';
import { snapshotEntries, withMounted, withSnapshotter } from './fixtures.js';
import { mountTestOptions } from './require-mount.js';

/** What the scenarios call: a Snapshotter, or anything with its methods (the gRPC configuration's client). */
export type UnderTest = Pick<Snapshotter, 'prepare' | 'view' | 'mounts' | 'commit' | 'remove' | 'stat' | 'update' | 'walk' | 'usage' | 'close'> & {
  cleanup(): Promise<unknown>;
};

export interface SuiteConfig {
  /** Shown in test names. */
  name: string;
  options: SnapshotterOptions;
  /** Extra path below the temp dir for the root (long-root configurations). */
  rootExtra?: string;
  /**
   * A layer between the scenarios and every snapshotter they open: gets the
   * opened snapshotter and returns what the scenarios call (its `close()`
   * closes that snapshotter) and what to tear down after the scenario. The
   * gRPC configuration serves the snapshotter on a socket and returns a client.
   */
  through?: (sn: Snapshotter) => Promise<{ sn: UnderTest; dispose(): Promise<void> }>;
}

function code(expected: string) {
  return (err: unknown) => {
    assert.equal((err as { code?: string }).code, expected, `expected ${expected}, got ${String(err)}`);
    return true;
  };
}

/** The wall clock the library reads (CLOCK_REALTIME), in nanoseconds since the epoch, as containerd's time.Now(). */
function clockNs(): bigint {
  const now = wallClock();
  return BigInt(now.ms) * 1_000_000n + BigInt(now.ns);
}

/** An Info's time in nanoseconds since the epoch. */
function nanosOf(info: Info, which: 'created' | 'updated'): bigint {
  const nanos = which === 'created' ? info.createdNanos : info.updatedNanos;
  assert.ok(Number.isInteger(nanos) && nanos >= 0 && nanos < 1_000_000, `${which}Nanos ${nanos} is 0 to 999,999`);
  return BigInt(info[which].getTime()) * 1_000_000n + BigInt(nanos);
}

const NOT_FOUND = code('ERR_NOT_FOUND');
const ALREADY_EXISTS = code('ERR_ALREADY_EXISTS');
const FAILED_PRECONDITION = code('ERR_FAILED_PRECONDITION');
const INVALID_ARGUMENT = code('ERR_INVALID_ARGUMENT');
const UNAVAILABLE = code('ERR_UNAVAILABLE');

/** Writes files into a mounted snapshot and commits it as `name`. */
async function layer(sn: UnderTest, name: string, parent: string | undefined, write: (dir: string) => void): Promise<void> {
  const key = `${name}-active`;
  const mounts = await sn.prepare(key, parent);
  await withMounted(mounts, write);
  await sn.commit(name, key);
}

/** Runs `check` on a read-only view of `parent`. */
async function inView<T>(sn: UnderTest, parent: string, check: (dir: string) => T): Promise<T> {
  const key = `view-of-${parent}-${Math.random()}`;
  const mounts = await sn.view(key, parent);
  try {
    return await withMounted(mounts, check);
  } finally {
    await sn.remove(key);
  }
}

/** Labels without the one `upperdirLabel` adds, so scenarios read the same in every configuration. */
function userLabels(info: Info): Record<string, string> {
  const { 'containerd.io/snapshot/overlay.upperdir': _upper, ...rest } = info.labels;
  return rest;
}

export function conformance(config: SuiteConfig): void {
  type Scenario = (sn: UnderTest, root: string, reopen: () => Promise<UnderTest>) => Promise<void>;
  const withUnderTest = (fn: Scenario) =>
    withSnapshotter(config.options, async (opened, root) => {
      const disposers: (() => Promise<void>)[] = [];
      const via = async (sn: Snapshotter): Promise<UnderTest> => {
        if (config.through === undefined) return sn;
        const layered = await config.through(sn);
        disposers.push(layered.dispose);
        return layered.sn;
      };
      try {
        await fn(await via(opened), root, async () => via(await Snapshotter.open(root, config.options)));
      } finally {
        for (const dispose of disposers.reverse()) await dispose();
      }
    }, config.rootExtra);
  const run = (fn: Scenario) => () => withUnderTest(fn);
  const mountOpts = mountTestOptions();

  describe(`conformance (${config.name})`, () => {
    describe('lifecycle', () => {
      test('first id is 1 and ids are never reused after removal and reopen', async () => {
        await withUnderTest(async (sn, root, reopen) => {
          await sn.prepare('a');
          assert.deepEqual(snapshotEntries(root), ['1']);
          await sn.remove('a');
          await sn.cleanup();
          await sn.prepare('b');
          assert.deepEqual(snapshotEntries(root), ['2']);
          await sn.close();
          const again = await reopen();
          try {
            await again.remove('b');
            await again.cleanup();
            await again.prepare('c');
            assert.deepEqual(snapshotEntries(root), ['3']);
          } finally {
            await again.close();
          }
        });
      });

      test('prepare makes fs 0755 and work 0711 in a 0700 snapshots dir, with no staging dir left after close', run(async (sn, root) => {
        await sn.prepare('a');
        await sn.view('v');
        // Made ahead by the staging pool, on the thread pool: the same modes.
        await new Promise((resolve) => setTimeout(resolve, 20));
        await sn.prepare('b');
        assert.equal(statSync(`${root}/snapshots`).mode & 0o777, 0o700);
        for (const id of [1, 3]) {
          assert.equal(statSync(`${root}/snapshots/${id}`).mode & 0o777, 0o700);
          assert.equal(statSync(`${root}/snapshots/${id}/fs`).mode & 0o777, 0o755);
          assert.equal(statSync(`${root}/snapshots/${id}/work`).mode & 0o777, 0o711);
        }
        assert.equal(existsSync(`${root}/snapshots/2/work`), false, 'a view has no work dir');
        assert.deepEqual(snapshotEntries(root).filter((n) => n.startsWith('new-')), []);
        await sn.close();
        assert.deepEqual(readdirSync(`${root}/snapshots`).sort(), ['1', '2', '3'], 'close removes the pool of ready staging dirs');
      }));

      test('commit keeps the id and directory and the key is gone afterwards', run(async (sn, root) => {
        await sn.prepare('a');
        writeFileSync(`${root}/snapshots/1/fs/file`, 'data');
        await sn.commit('c', 'a');
        await assert.rejects(sn.stat('a'), NOT_FOUND);
        const info = await sn.stat('c');
        assert.equal(info.kind, 'committed');
        assert.equal(readFileSync(`${root}/snapshots/1/fs/file`, 'utf8'), 'data');
      }));

      test('reopening a root finds every snapshot exactly as it was', async () => {
        await withUnderTest(async (sn, root, reopen) => {
          await sn.prepare('base-a', undefined, { labels: { a: '1' } });
          await sn.commit('base', 'base-a', { labels: { role: 'base' } });
          await sn.prepare('ctr', 'base', { labels: { x: 'y' } });
          await sn.view('v', 'base');
          const before: Info[] = [];
          await sn.walk((i) => void before.push(i));
          const mountsBefore = await sn.mounts('ctr');
          await sn.close();
          const again = await reopen();
          try {
            const after: Info[] = [];
            await again.walk((i) => void after.push(i));
            assert.deepEqual(after, before);
            assert.deepEqual(await again.mounts('ctr'), mountsBefore);
          } finally {
            await again.close();
          }
        });
      });

      test('remove deletes the record and, once cleaned up, the directory', run(async (sn, root) => {
        await sn.prepare('a');
        await sn.remove('a');
        await assert.rejects(sn.stat('a'), NOT_FOUND);
        if (config.options.asyncRemove) assert.equal(existsSync(`${root}/snapshots/1`), true, 'async remove leaves the dir to cleanup');
        else assert.equal(existsSync(`${root}/snapshots/1`), false, 'sync remove deletes the dir');
        await sn.cleanup();
        assert.deepEqual(snapshotEntries(root), []);
      }));

      test('cleanup removes orphaned and staging dirs but keeps live snapshots', run(async (sn, root) => {
        await sn.prepare('keep');
        mkdirSync(`${root}/snapshots/new-leftover/fs`, { recursive: true });
        mkdirSync(`${root}/snapshots/999/fs`, { recursive: true });
        writeFileSync(`${root}/snapshots/stray`, '');
        await sn.cleanup();
        assert.deepEqual(snapshotEntries(root), ['1']);
        await sn.cleanup();
        assert.deepEqual(snapshotEntries(root), ['1']);
      }));

      test('an intermediate snapshot cannot be removed while it has children', run(async (sn) => {
        await sn.prepare('a');
        await sn.commit('base', 'a');
        await sn.prepare('b', 'base');
        await sn.commit('mid', 'b');
        await sn.view('v', 'mid');
        await assert.rejects(sn.remove('base'), (err: Error) => isFailedPrecondition(err) && /remove/.test(err.message));
        await assert.rejects(sn.remove('mid'), FAILED_PRECONDITION);
        await sn.remove('v');
        await sn.remove('mid');
        await sn.remove('base');
        await assert.rejects(sn.stat('base'), NOT_FOUND);
      }));

      test('a failed creation leaves neither a record nor a directory behind', run(async (sn, root) => {
        // A file where the new snapshot's directory must go makes the rename fail inside the transaction.
        writeFileSync(`${root}/snapshots/1`, 'in the way');
        // A damaged store, not a caller's mistake: the system error of the rename comes through
        // (over gRPC as UNKNOWN, carrying the system error's message).
        await assert.rejects(
          sn.prepare('a'),
          config.through === undefined ? { code: 'ENOTDIR', syscall: 'rename' } : (err: Error) => /^ENOTDIR: not a directory, rename /.test(err.message),
        );
        await assert.rejects(sn.stat('a'), NOT_FOUND);
        assert.deepEqual(snapshotEntries(root), ['1']);
        rmSync(`${root}/snapshots/1`);
        await sn.prepare('a');
        assert.equal((await sn.stat('a')).kind, 'active');
      }));

      test('close twice is fine and every call after close is unavailable', async () => {
        await withUnderTest(async (sn) => {
          await sn.prepare('a');
          await sn.close();
          await sn.close();
          await assert.rejects(sn.stat('a'), UNAVAILABLE);
          await assert.rejects(sn.prepare('b'), UNAVAILABLE);
          await assert.rejects(sn.view('b'), UNAVAILABLE);
          await assert.rejects(sn.commit('c', 'a'), UNAVAILABLE);
          await assert.rejects(sn.remove('a'), UNAVAILABLE);
          await assert.rejects(sn.mounts('a'), UNAVAILABLE);
          await assert.rejects(sn.usage('a'), UNAVAILABLE);
          await assert.rejects(sn.update({ name: 'a' }), UNAVAILABLE);
          await assert.rejects(sn.walk(() => {}), UNAVAILABLE);
          await assert.rejects(sn.cleanup(), UNAVAILABLE);
        });
      });

      test('keys are strings, never paths: slashes, dots and newlines work as keys', run(async (sn, root) => {
        for (const key of ['a/b', '../../etc/passwd', '/abs', 'line\nbreak', '.', '..', 'ключ', 'sha256:abc']) {
          await sn.prepare(key);
          assert.equal((await sn.stat(key)).name, key);
        }
        assert.ok(snapshotEntries(root).every((n) => /^\d+$/.test(n)), 'only ids reach the filesystem');
        assert.equal(existsSync(`${root}/abs`), false);
      }));
    });

    describe('errors in the order containerd checks them', () => {
      test('prepare of a used key fails with ERR_ALREADY_EXISTS before the parent is checked', run(async (sn) => {
        await sn.prepare('a');
        await sn.view('v');
        await sn.prepare('c-a');
        await sn.commit('c', 'c-a');
        await assert.rejects(sn.prepare('a'), ALREADY_EXISTS);
        await assert.rejects(sn.view('a'), ALREADY_EXISTS);
        await assert.rejects(sn.prepare('v', 'missing'), ALREADY_EXISTS);
        await assert.rejects(sn.prepare('c', 'a'), ALREADY_EXISTS);
      }));

      test('prepare on a missing parent fails with ERR_NOT_FOUND', run(async (sn) => {
        await assert.rejects(sn.prepare('a', 'missing'), NOT_FOUND);
        await assert.rejects(sn.view('v', 'missing'), NOT_FOUND);
        await assert.rejects(sn.stat('a'), NOT_FOUND);
      }));

      test('prepare on an active or view parent fails with ERR_INVALID_ARGUMENT', run(async (sn) => {
        await sn.prepare('act');
        await sn.view('vw');
        await assert.rejects(sn.prepare('a', 'act'), INVALID_ARGUMENT);
        await assert.rejects(sn.view('b', 'vw'), INVALID_ARGUMENT);
      }));

      test('a bad uid/gid mapping label fails with ERR_INVALID_ARGUMENT after the parent checks', run(async (sn) => {
        const bad = { labels: { 'containerd.io/snapshot/uidmapping': '1:1000:10', 'containerd.io/snapshot/gidmapping': '0:1000:65536' } };
        await assert.rejects(sn.prepare('a', 'missing', bad), NOT_FOUND);
        await assert.rejects(sn.prepare('a', undefined, bad), INVALID_ARGUMENT);
        await assert.rejects(sn.prepare('a', undefined, { labels: { 'containerd.io/snapshot/uidmapping': 'x:y', 'containerd.io/snapshot/gidmapping': '0:1:1' } }), INVALID_ARGUMENT);
        await assert.rejects(sn.stat('a'), NOT_FOUND);
      }));

      test('commit to a used name fails with ERR_ALREADY_EXISTS before the key is checked', run(async (sn) => {
        await sn.prepare('taken');
        await assert.rejects(sn.commit('taken', 'missing'), ALREADY_EXISTS);
        await assert.rejects(sn.commit('new', 'missing'), NOT_FOUND);
      }));

      test('commit of a view or a committed snapshot fails with ERR_FAILED_PRECONDITION', run(async (sn) => {
        await sn.view('v');
        await sn.prepare('a');
        await sn.commit('c', 'a');
        await assert.rejects(sn.commit('x', 'v'), FAILED_PRECONDITION);
        await assert.rejects(sn.commit('y', 'c'), FAILED_PRECONDITION);
      }));

      test('remove, stat, usage, update and mounts of a missing key fail with ERR_NOT_FOUND', run(async (sn) => {
        await assert.rejects(sn.remove('nope'), NOT_FOUND);
        await assert.rejects(sn.stat('nope'), NOT_FOUND);
        await assert.rejects(sn.usage('nope'), NOT_FOUND);
        await assert.rejects(sn.update({ name: 'nope', labels: {} }), NOT_FOUND);
        await assert.rejects(sn.update({ name: 'nope' }, 'kind'), NOT_FOUND, 'NotFound is checked before the fieldpath');
        await assert.rejects(sn.mounts('nope'), NOT_FOUND);
      }));

      test('mounts of a committed snapshot fails with ERR_FAILED_PRECONDITION', run(async (sn) => {
        await sn.prepare('a');
        await sn.commit('c', 'a');
        await assert.rejects(sn.mounts('c'), FAILED_PRECONDITION);
      }));

      test('update of a field other than labels fails with ERR_INVALID_ARGUMENT and changes nothing', run(async (sn) => {
        await sn.prepare('a', undefined, { labels: { k: 'v' } });
        const before = await sn.stat('a');
        for (const path of ['kind', 'name', 'parent', 'created', 'labels.', 'label.k', '']) {
          await assert.rejects(sn.update({ name: 'a', labels: { k: 'w' } }, path), INVALID_ARGUMENT, path);
        }
        assert.deepEqual(await sn.stat('a'), before);
      }));

      test('a filter that does not parse fails with ERR_INVALID_ARGUMENT before any callback', run(async (sn) => {
        await sn.prepare('a');
        let calls = 0;
        await assert.rejects(sn.walk(() => void calls++, 'kind==active', 'labels.=x,'), INVALID_ARGUMENT);
        await assert.rejects(sn.walk(() => void calls++, 'name~=('), INVALID_ARGUMENT);
        assert.equal(calls, 0);
      }));

      test('labels over 4096 bytes fail with ERR_INVALID_ARGUMENT in every call that takes labels', run(async (sn) => {
        const big = { labels: { k: 'x'.repeat(4096) } };
        const edge = { labels: { k: 'x'.repeat(4095) } };
        await assert.rejects(sn.prepare('a', undefined, big), INVALID_ARGUMENT);
        await assert.rejects(sn.view('a', undefined, big), INVALID_ARGUMENT);
        await sn.prepare('a', undefined, edge);
        await assert.rejects(sn.commit('c', 'a', big), INVALID_ARGUMENT);
        await assert.rejects(sn.update({ name: 'a', labels: { k: 'é'.repeat(2048) } }), INVALID_ARGUMENT, 'bytes are counted, not characters');
        await assert.rejects(sn.update({ name: 'a', labels: { k: 'x'.repeat(4096) } }, 'labels.k'), INVALID_ARGUMENT);
        assert.deepEqual(userLabels(await sn.stat('a')), edge.labels);
      }));

      test('empty, NUL-bearing and non-string keys, names and labels fail with ERR_INVALID_ARGUMENT', run(async (sn) => {
        await assert.rejects(sn.prepare(''), INVALID_ARGUMENT);
        await assert.rejects(sn.view(''), INVALID_ARGUMENT);
        await assert.rejects(sn.prepare('a\0b'), INVALID_ARGUMENT);
        await assert.rejects(sn.prepare('\ud800'), INVALID_ARGUMENT);
        await assert.rejects(sn.prepare(42 as unknown as string), INVALID_ARGUMENT);
        await sn.prepare('a');
        await assert.rejects(sn.commit('', 'a'), INVALID_ARGUMENT);
        await assert.rejects(sn.commit('c', ''), INVALID_ARGUMENT);
        await assert.rejects(sn.stat(''), INVALID_ARGUMENT);
        await assert.rejects(sn.remove(''), INVALID_ARGUMENT);
        await assert.rejects(sn.prepare('b', undefined, { labels: { k: 1 as unknown as string } }), INVALID_ARGUMENT);
        await assert.rejects(sn.prepare('b', undefined, { labels: { '': 'v' } }), INVALID_ARGUMENT);
        await assert.rejects(sn.prepare('b', undefined, { labels: 'k=v' as unknown as Record<string, string> }), INVALID_ARGUMENT);
        await assert.rejects(sn.prepare('b', undefined, { lables: {} } as unknown as { labels: Record<string, string> }), INVALID_ARGUMENT);
        await assert.rejects(sn.stat('b'), NOT_FOUND, 'nothing was created by the failing calls');
      }));

      test('errors carry their class, code and predicate', run(async (sn) => {
        const err = await sn.stat('missing').catch((e: unknown) => e);
        assert.ok(isNotFound(err));
        assert.ok(!isAlreadyExists(err) && !isInvalidArgument(err) && !isUnavailable(err) && !isFailedPrecondition(err));
        assert.match((err as Error).message, /"missing"/);
      }));
    });

    describe('info, labels and timestamps', () => {
      test('stat reports kind, parent name, labels and equal timestamps on creation', run(async (sn) => {
        await sn.prepare('b-a', undefined, { labels: { ignored: 'x' } });
        await sn.commit('base', 'b-a', { labels: { role: 'base' } });
        await sn.prepare('ctr', 'base', { labels: { a: '1', empty: '' } });
        const base = await sn.stat('base');
        assert.equal(base.kind, 'committed');
        assert.equal(base.parent, undefined);
        assert.equal('parent' in base, false);
        assert.deepEqual(base.labels, { role: 'base' }, 'commit sets its own labels, not the active\'s');
        const ctr = await sn.stat('ctr');
        assert.equal(ctr.kind, 'active');
        assert.equal(ctr.parent, 'base');
        assert.deepEqual(userLabels(ctr), { a: '1' }, 'a label set to "" is not stored');
        for (const info of [base, ctr]) assert.equal(nanosOf(info, 'updated'), nanosOf(info, 'created'), `${info.name}: created == updated, to the nanosecond`);
      }));

      test('each time lies between wall-clock reads just before and just after its call, to the nanosecond, as containerd\'s tests check', run(async (sn) => {
        const within = async <T>(call: () => Promise<T>): Promise<[bigint, bigint, T]> => {
          const before = clockNs();
          const out = await call();
          return [before, clockNs(), out];
        };
        const check = (what: string, [before, after]: [bigint, bigint, unknown], time: bigint) =>
          assert.ok(before <= time && time <= after, `${what}: ${time} outside [${before}, ${after}]`);
        const prepared = await within(() => sn.prepare('a'));
        check('prepare', prepared, nanosOf(await sn.stat('a'), 'created'));
        // At once, most likely within the same millisecond: updated must still not precede created.
        const updated = await within(() => sn.update({ name: 'a', labels: { k: 'v' } }));
        check('update', updated, nanosOf(updated[2], 'updated'));
        assert.ok(nanosOf(updated[2], 'updated') >= nanosOf(updated[2], 'created'), 'updated >= created');
        const committed = await within(() => sn.commit('c', 'a'));
        const c = await sn.stat('c');
        check('commit', committed, nanosOf(c, 'created'));
        assert.equal(nanosOf(c, 'updated'), nanosOf(c, 'created'));
        const viewed = await within(() => sn.view('v', 'c'));
        check('view', viewed, nanosOf(await sn.stat('v'), 'created'));
        for (let i = 0; i < 3; i++) {
          const again = await within(() => sn.update({ name: 'v', labels: { i: String(i) } }));
          check(`update ${i}`, again, nanosOf(again[2], 'updated'));
        }
        const walked = new Map<string, Info>();
        await sn.walk((info) => void walked.set(info.name, info));
        for (const key of ['c', 'v']) {
          const info = await sn.stat(key);
          assert.deepEqual([walked.get(key)!.createdNanos, walked.get(key)!.updatedNanos], [info.createdNanos, info.updatedNanos], `walk and stat agree on ${key}`);
        }
      }));

      test('update without fieldpaths replaces all labels and bumps updated', run(async (sn) => {
        await sn.prepare('a', undefined, { labels: { x: '1', y: '2' } });
        const before = await sn.stat('a');
        await new Promise((r) => setTimeout(r, 5));
        const after = await sn.update({ name: 'a', kind: 'view', labels: { z: '3' } } as unknown as Info);
        assert.equal(after.kind, 'active', 'other fields are ignored');
        assert.equal(after.labels.z, '3');
        assert.equal(after.labels.x, undefined);
        assert.ok(after.updated.getTime() > before.updated.getTime());
        assert.equal(after.created.getTime(), before.created.getTime());
        assert.deepEqual(await sn.stat('a'), after);
      }));

      test('update with labels.<k> sets or deletes only those keys', run(async (sn) => {
        await sn.prepare('a', undefined, { labels: { x: '1', y: '2', z: '3' } });
        const info = await sn.update({ name: 'a', labels: { x: 'changed', y: '', w: 'new', z: 'ignored' } }, 'labels.x', 'labels.y', 'labels.w');
        assert.deepEqual(userLabels(info), { x: 'changed', z: '3', w: 'new' });
        const dropped = await sn.update({ name: 'a', labels: {} }, 'labels.z');
        assert.equal(dropped.labels.z, undefined, 'a path absent from info.labels deletes the key');
        const replaced = await sn.update({ name: 'a', labels: { only: 'this' } }, 'labels');
        assert.equal(replaced.labels.only, 'this');
        assert.equal(replaced.labels.x, undefined);
      }));

      test('returned Info and labels are the caller\'s own copies', run(async (sn) => {
        await sn.prepare('a', undefined, { labels: { x: '1' } });
        const info = await sn.stat('a');
        info.labels.x = 'mutated';
        info.created.setTime(0);
        const again = await sn.stat('a');
        assert.equal(again.labels.x, '1');
        assert.notEqual(again.created.getTime(), 0);
      }));

      test('a label key "__proto__" round-trips as an ordinary label', run(async (sn) => {
        const labels = JSON.parse('{"__proto__": "p", "k": "v"}') as Record<string, string>;
        await sn.prepare('a', undefined, { labels });
        const info = await sn.stat('a');
        assert.equal(Object.getOwnPropertyDescriptor(info.labels, '__proto__')?.value, 'p');
        assert.equal(Object.getPrototypeOf(info.labels), Object.prototype);
      }));
    });

    describe('walk', () => {
      test('walk on an empty store finds nothing', run(async (sn) => {
        let n = 0;
        await sn.walk(() => void n++);
        assert.equal(n, 0);
      }));

      test('walk filters by kind, name, parent and labels, AND within a string and OR across strings', run(async (sn) => {
        await sn.prepare('base-a', undefined);
        await sn.commit('base', 'base-a', { labels: { 'containerd.io/gc.root': 'x', tier: 'a' } });
        await sn.prepare('c1', 'base', { labels: { tier: 'a', app: 'web' } });
        await sn.prepare('c2', 'base', { labels: { tier: 'b' } });
        await sn.view('v1', 'base');
        await sn.prepare('solo', undefined, { labels: { tier: 'a' } });
        const names = async (...filters: string[]) => {
          const out: string[] = [];
          await sn.walk((i) => void out.push(i.name), ...filters);
          return out;
        };
        assert.deepEqual(await names(), ['base', 'c1', 'c2', 'solo', 'v1'], 'no filter matches all, in key order');
        assert.deepEqual(await names('kind==active'), ['c1', 'c2', 'solo']);
        assert.deepEqual(await names('kind==view'), ['v1']);
        assert.deepEqual(await names('parent!=""'), ['c1', 'c2', 'v1']);
        assert.deepEqual(await names('parent==base,kind==active'), ['c1', 'c2']);
        assert.deepEqual(await names('labels.tier==a'), ['base', 'c1', 'solo']);
        assert.deepEqual(await names('labels.tier==a,kind==active'), ['c1', 'solo']);
        assert.deepEqual(await names('labels.app', 'kind==view'), ['c1', 'v1']);
        assert.deepEqual(await names('labels."containerd.io/gc.root"'), ['base']);
        assert.deepEqual(await names('labels."containerd.io/gc.root"==x'), ['base']);
        assert.deepEqual(await names('name~=^c[0-9]$'), ['c1', 'c2']);
        assert.deepEqual(await names('labels.tier!=a'), ['c2', 'v1']);
        assert.deepEqual(await names('name==solo'), ['solo']);
        assert.deepEqual(await names('name==nothing'), []);
      }));

      test('stat inside walk returns the identical Info', run(async (sn) => {
        await sn.prepare('p-a');
        await sn.commit('p', 'p-a', { labels: { a: 'b' } });
        await sn.prepare('a', 'p', { labels: { x: 'y' } });
        await sn.view('v', 'p');
        let n = 0;
        await sn.walk(async (info) => {
          assert.deepEqual(await sn.stat(info.name), info);
          n++;
        });
        assert.equal(n, 3);
      }));

      test('walk callbacks run one at a time, each awaited', run(async (sn) => {
        for (const k of ['a', 'b', 'c']) await sn.prepare(k);
        const events: string[] = [];
        await sn.walk(async (info) => {
          events.push(`start ${info.name}`);
          await new Promise((r) => setTimeout(r, 2));
          events.push(`end ${info.name}`);
        });
        assert.deepEqual(events, ['start a', 'end a', 'start b', 'end b', 'start c', 'end c']);
      }));
    });

    describe('usage', () => {
      test('usage counts allocated bytes and distinct inodes of an active, stores it at commit, and is zero for a view', run(async (sn, root) => {
        await sn.prepare('a');
        const fs = `${root}/snapshots/1/fs`;
        const empty = await sn.usage('a');
        assert.equal(empty.inodes, 1, 'the upper dir itself');
        writeFileSync(`${fs}/f`, Buffer.alloc(64 * 1024, 1));
        linkSync(`${fs}/f`, `${fs}/hard`);
        mkdirSync(`${fs}/d`);
        const u = await sn.usage('a');
        assert.equal(u.inodes, 3, 'a hard link counts once');
        assert.ok(u.size >= 64 * 1024 && u.size < 64 * 1024 + 3 * 8192, `size ${u.size}`);
        const du = Number(execFileSync('du', ['-s', '-B1', fs], { encoding: 'utf8' }).split('\t')[0]);
        assert.equal(u.size, du, 'matches du -s');
        await sn.commit('c', 'a');
        assert.deepEqual(await sn.usage('c'), u);
        await sn.view('v', 'c');
        assert.deepEqual(await sn.usage('v'), { size: 0, inodes: 0 });
      }));
    });

    describe('mount specs', () => {
      test('mount specs follow containerd\'s table for every kind and depth', run(async (sn, root) => {
        const s = `${root}/snapshots`;
        assert.deepEqual(await sn.prepare('a1'), [{ type: 'bind', source: `${s}/1/fs`, options: ['rw', 'rbind'] }]);
        assert.deepEqual(await sn.view('v0'), [{ type: 'bind', source: `${s}/2/fs`, options: ['ro', 'rbind'] }]);
        await sn.commit('l1', 'a1');
        assert.deepEqual(await sn.view('v1', 'l1'), [{ type: 'bind', source: `${s}/1/fs`, options: ['ro', 'rbind'] }]);
        if (config.options.driver === 'native') {
          // Copy-based driver: an active is its own full tree, a view shows its parent's; every mount is a bind.
          assert.deepEqual(await sn.prepare('a2', 'l1'), [{ type: 'bind', source: `${s}/4/fs`, options: ['rw', 'rbind'] }]);
          await sn.commit('l2', 'a2');
          assert.deepEqual(await sn.view('v2', 'l2'), [{ type: 'bind', source: `${s}/4/fs`, options: ['ro', 'rbind'] }]);
          assert.deepEqual(await sn.mounts('v1'), [{ type: 'bind', source: `${s}/1/fs`, options: ['ro', 'rbind'] }]);
          return;
        }
        const tail = [...(config.options.mountOptions ?? [])];
        if (!tail.some((o) => o.startsWith('index=')) && existsSync('/sys/module/overlay/parameters/index')) tail.push('index=off');
        assert.deepEqual(await sn.prepare('a2', 'l1'), [
          { type: 'overlay', source: 'overlay', options: [`workdir=${s}/4/work`, `upperdir=${s}/4/fs`, `lowerdir=${s}/1/fs`, ...tail] },
        ]);
        await sn.commit('l2', 'a2');
        assert.deepEqual(await sn.view('v2', 'l2'), [{ type: 'overlay', source: 'overlay', options: [`lowerdir=${s}/4/fs:${s}/1/fs`, ...tail] }]);
        assert.deepEqual(await sn.mounts('v2'), await sn.mounts('v2'));
        assert.deepEqual(await sn.mounts('v1'), [{ type: 'bind', source: `${s}/1/fs`, options: ['ro', 'rbind'] }]);
      }));
    });

    describe('through real mounts', () => {
      test('a parent\'s files are visible in its child and writes land in the child only', mountOpts, run(async (sn) => {
        await layer(sn, 'l1', undefined, (d) => {
          writeFileSync(`${d}/a`, 'from l1');
          mkdirSync(`${d}/dir`);
          writeFileSync(`${d}/dir/b`, 'b');
        });
        const mounts = await sn.prepare('ctr', 'l1');
        await withMounted(mounts, (d) => {
          assert.equal(readFileSync(`${d}/a`, 'utf8'), 'from l1');
          assert.equal(readFileSync(`${d}/dir/b`, 'utf8'), 'b');
          writeFileSync(`${d}/a`, 'changed by ctr');
        });
        await inView(sn, 'l1', (d) => assert.equal(readFileSync(`${d}/a`, 'utf8'), 'from l1', 'copy-up leaves the lower layer unchanged'));
        await withMounted(await sn.mounts('ctr'), (d) => assert.equal(readFileSync(`${d}/a`, 'utf8'), 'changed by ctr'));
      }));

      test('a deletion in one layer stays deleted in later layers', mountOpts, run(async (sn) => {
        await layer(sn, 'l1', undefined, (d) => {
          writeFileSync(`${d}/gone`, 'x');
          writeFileSync(`${d}/kept`, 'y');
        });
        await layer(sn, 'l2', 'l1', (d) => rmSync(`${d}/gone`));
        await layer(sn, 'l3', 'l2', (d) => writeFileSync(`${d}/new`, 'z'));
        await inView(sn, 'l3', (d) => assert.deepEqual(readdirSync(d).sort(), ['kept', 'new']));
      }));

      test('a directory removed and recreated over a lower layer hides the old contents (opaque)', mountOpts, run(async (sn) => {
        await layer(sn, 'l1', undefined, (d) => {
          mkdirSync(`${d}/dir`);
          writeFileSync(`${d}/dir/old`, 'old');
        });
        await layer(sn, 'l2', 'l1', (d) => {
          rmSync(`${d}/dir`, { recursive: true });
          mkdirSync(`${d}/dir`);
          writeFileSync(`${d}/dir/new`, 'new');
        });
        await inView(sn, 'l2', (d) => assert.deepEqual(readdirSync(`${d}/dir`), ['new']));
        await inView(sn, 'l1', (d) => assert.deepEqual(readdirSync(`${d}/dir`), ['old']));
      }));

      test('chown and chmod of lower files show in the upper layer only', mountOpts, run(async (sn) => {
        await layer(sn, 'l1', undefined, (d) => {
          writeFileSync(`${d}/f`, 'x');
          chmodSync(`${d}/f`, 0o644);
          mkdirSync(`${d}/dir`, 0o755);
        });
        await layer(sn, 'l2', 'l1', (d) => {
          chownSync(`${d}/f`, 1234, 5678);
          chmodSync(`${d}/f`, 0o600);
          chmodSync(`${d}/dir`, 0o700);
        });
        await inView(sn, 'l2', (d) => {
          const st = lstatSync(`${d}/f`);
          assert.deepEqual([st.uid, st.gid, st.mode & 0o7777], [1234, 5678, 0o600]);
          assert.equal(statSync(`${d}/dir`).mode & 0o7777, 0o700);
        });
        await inView(sn, 'l1', (d) => {
          const st = lstatSync(`${d}/f`);
          assert.deepEqual([st.uid, st.gid, st.mode & 0o7777], [0, 0, 0o644]);
        });
      }));

      test('a hard link to a lower file can be moved and the original removed', mountOpts, run(async (sn) => {
        await layer(sn, 'l1', undefined, (d) => writeFileSync(`${d}/orig`, 'linked data'));
        await layer(sn, 'l2', 'l1', (d) => {
          linkSync(`${d}/orig`, `${d}/link`);
          renameSync(`${d}/link`, `${d}/moved`);
          rmSync(`${d}/orig`);
        });
        await inView(sn, 'l2', (d) => {
          assert.deepEqual(readdirSync(d), ['moved']);
          assert.equal(readFileSync(`${d}/moved`, 'utf8'), 'linked data');
        });
      }));

      test('a mounted view refuses writes with EROFS', mountOpts, run(async (sn) => {
        await layer(sn, 'l1', undefined, (d) => writeFileSync(`${d}/f`, 'x'));
        await layer(sn, 'l2', 'l1', (d) => writeFileSync(`${d}/g`, 'y'));
        for (const parent of ['l1', 'l2']) {
          await inView(sn, parent, (d) => {
            assert.throws(() => writeFileSync(`${d}/new`, 'no'), { code: 'EROFS' });
            assert.throws(() => rmSync(`${d}/f`), { code: 'EROFS' });
          });
        }
        const v = await sn.view('empty-view');
        await withMounted(v, (d) => assert.throws(() => writeFileSync(`${d}/new`, 'no'), { code: 'EROFS' }));
      }));

      test('the root of a parentless active is mode 0755 and a child takes its parent\'s owner', mountOpts, run(async (sn, root) => {
        await withMounted(await sn.prepare('a'), (d) => {
          assert.equal(statSync(d).mode & 0o7777, 0o755);
          chownSync(d, 4321, 8765);
        });
        await sn.commit('c', 'a');
        await sn.prepare('child', 'c');
        const st = statSync(`${root}/snapshots/2/fs`);
        assert.deepEqual([st.uid, st.gid], [4321, 8765]);
        await withMounted(await sn.mounts('child'), (d) => assert.deepEqual([statSync(d).uid, statSync(d).gid], [4321, 8765]));
      }));

      test('uid/gid mapping labels give the new fs dir the host ids of container root', run(async (sn, root) => {
        await sn.prepare('a', undefined, { labels: { 'containerd.io/snapshot/uidmapping': '0:100000:65536', 'containerd.io/snapshot/gidmapping': '0:200000:65536' } });
        const st = statSync(`${root}/snapshots/1/fs`);
        assert.deepEqual([st.uid, st.gid], [100000, 200000]);
      }));
    });
  });
}
