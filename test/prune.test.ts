import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { Snapshotter, type PruneReport } from '../lib/index.js';
import { parseUntil } from '../lib/prune.js';
import { OWNER_LABEL, ownerValue, parseOwner } from '../lib/layers/index.js';
import { formatOwner } from '../lib/model/owner.js';
import { snapshotEntries, withMounted, withSnapshotter } from './helpers/fixtures.js';
import { mountTestOptions } from './helpers/require-mount.js';

/** Commits a layer named `name` on `parent` holding `bytes` of data. */
async function layer(sn: Snapshotter, root: string, name: string, parent?: string, labels?: Record<string, string>, bytes = 8192): Promise<void> {
  await sn.prepare(`${name}-a`, parent);
  const dirs = snapshotEntries(root).map(Number).sort((a, b) => b - a);
  writeFileSync(join(root, 'snapshots', String(dirs[0]), 'fs', 'data'), Buffer.alloc(bytes, 7));
  await sn.commit(name, `${name}-a`, labels ? { labels } : undefined);
}

async function names(sn: Snapshotter): Promise<string[]> {
  const out: string[] = [];
  await sn.walk((i) => void out.push(i.name));
  return out;
}

const reasons = (r: PruneReport) => Object.fromEntries(r.kept.map((k) => [k.name, k.reason]));

function duBytes(dir: string): number {
  // Not counting the staging pool, whose thread may be making dirs meanwhile.
  return Number(execFileSync('du', ['-s', '-B1', '--exclude=new-*', dir], { encoding: 'utf8' }).split('\t')[0]);
}

describe('prune', () => {
  test('removes unreferenced snapshots children first and reclaims exactly the measured bytes', async () => {
    await withSnapshotter({}, async (sn, root) => {
      await layer(sn, root, 'l1', undefined, undefined, 100_000);
      await layer(sn, root, 'l2', 'l1', undefined, 50_000);
      await layer(sn, root, 'other');
      const before = duBytes(join(root, 'snapshots'));
      const report = await sn.prune();
      assert.deepEqual(report.removed.map((r) => r.name).sort(), ['l1', 'l2', 'other']);
      assert.ok(report.removed.findIndex((r) => r.name === 'l2') < report.removed.findIndex((r) => r.name === 'l1'), 'children before parents');
      assert.deepEqual(await names(sn), []);
      const after = duBytes(join(root, 'snapshots'));
      assert.equal(report.reclaimed.bytes, before - after, 'reclaimed bytes equal the drop in disk usage of snapshots/');
      assert.ok(report.reclaimed.bytes >= 150_000);
      assert.ok(report.removed.every((r) => r.kind === 'committed' && r.size > 0 && r.inodes >= 3));
      assert.deepEqual(snapshotEntries(root), []);
    });
  });

  test('a gc.root keeps itself and its parents; every other snapshot keeps its parent', async () => {
    await withSnapshotter({}, async (sn, root) => {
      await layer(sn, root, 'base');
      await layer(sn, root, 'mid', 'base');
      await layer(sn, root, 'top', 'mid', { 'containerd.io/gc.root': '2026-11-25' });
      await layer(sn, root, 'loose');
      const report = await sn.prune();
      assert.deepEqual(report.removed.map((r) => r.name), ['loose']);
      assert.deepEqual(reasons(report), { base: 'parent', mid: 'parent', top: 'root' });
    });
  });

  test('gc.ref.snapshot labels of the configured snapshotter keep their target alive', async () => {
    await withSnapshotter({}, async (sn, root) => {
      await layer(sn, root, 'target1');
      await layer(sn, root, 'target2');
      await layer(sn, root, 'target3');
      await layer(sn, root, 'holder', undefined, {
        'containerd.io/gc.root': 'x',
        'containerd.io/gc.ref.snapshot.overlayfs': 'target1',
        'containerd.io/gc.ref.snapshot.overlayfs/extra': 'target2',
        'containerd.io/gc.ref.snapshot.native': 'target3',
      });
      const report = await sn.prune();
      assert.deepEqual(report.removed.map((r) => r.name), ['target3']);
      assert.deepEqual(reasons(report), { holder: 'root', target1: 'referenced', target2: 'referenced' });
      const native = await sn.prune({ snapshotterName: 'native', dryRun: true });
      assert.deepEqual(native.removed.map((r) => r.name).sort(), ['target1', 'target2']);
    });
  });

  test('actives and views are kept with their parents unless includeActive', async () => {
    await withSnapshotter({}, async (sn, root) => {
      await layer(sn, root, 'base');
      await sn.prepare('ctr', 'base');
      await sn.view('v');
      const report = await sn.prune();
      assert.deepEqual(report.removed, []);
      assert.deepEqual(reasons(report), { base: 'parent', ctr: 'active', v: 'active' });
      const all = await sn.prune({ includeActive: true });
      assert.deepEqual(all.removed.map((r) => r.name), ['ctr', 'base', 'v']);
      assert.deepEqual(all.removed.map((r) => r.kind), ['active', 'committed', 'view']);
    });
  });

  test('an owner label keeps its snapshot and parents while the owner runs; an active or view of a gone owner is a candidate without includeActive, under the filters', async () => {
    await withSnapshotter({}, async (sn, root) => {
      const live = { [OWNER_LABEL]: ownerValue() };
      const dead = { [OWNER_LABEL]: formatOwner({ ...parseOwner(ownerValue())!, start: '1' }) };
      await layer(sn, root, 'base');
      await layer(sn, root, 'leased', 'base', live);
      await layer(sn, root, 'loose');
      await sn.prepare('work-live', 'base', { labels: live });
      await sn.prepare('work-dead', 'base', { labels: dead });
      await sn.view('view-dead', 'loose', { labels: { ...dead, keep: '1' } });
      await sn.prepare('ctr', 'base');
      const report = await sn.prune({ dryRun: true, filters: ['label!=keep'] });
      assert.deepEqual(report.removed.map((r) => [r.name, r.kind, r.abandoned]), [['work-dead', 'active', true]]);
      // The filtered view keeps its parent; without the filter both go.
      assert.deepEqual(reasons(report), { base: 'parent', ctr: 'active', leased: 'leased', loose: 'parent', 'view-dead': 'filtered', 'work-live': 'leased' });
      const all = await sn.prune();
      assert.deepEqual(all.removed.map((r) => r.name).sort(), ['loose', 'view-dead', 'work-dead']);
      assert.deepEqual(await names(sn), ['base', 'ctr', 'leased', 'work-live']);
    });
  });

  test('a mounted snapshot is never removed, even with includeActive', mountTestOptions(), async () => {
    await withSnapshotter({}, async (sn, root) => {
      await layer(sn, root, 'base');
      const mounts = await sn.prepare('ctr', 'base');
      await withMounted(mounts, async () => {
        const report = await sn.prune({ includeActive: true });
        assert.deepEqual(report.removed, []);
        assert.deepEqual(reasons(report), { base: 'mounted', ctr: 'mounted' });
      });
      assert.deepEqual((await sn.prune({ includeActive: true })).removed.map((r) => r.name), ['ctr', 'base']);
    });
  });

  test('filters: until, label, label! and walk filters, combined as Docker does', async () => {
    await withSnapshotter({}, async (sn, root) => {
      await layer(sn, root, 'web', undefined, { app: 'web', keep: 'yes' });
      await layer(sn, root, 'db', undefined, { app: 'db' });
      await layer(sn, root, 'tmp', undefined, { scratch: 'true' });
      const later = Date.now() + 3_600_000;
      const dry = (filters: string[], now?: number) => sn.prune({ dryRun: true, filters, ...(now ? { now: () => now } : {}) });
      assert.deepEqual((await dry(['until=30m'])).removed, [], 'nothing is 30 minutes old yet');
      assert.deepEqual((await dry(['until=30m'], later)).removed.map((r) => r.name).sort(), ['db', 'tmp', 'web'], 'an hour later all are');
      assert.equal(reasons(await dry(['until=30m']))['web'], 'too-young');
      assert.deepEqual((await dry(['label=app'])).removed.map((r) => r.name).sort(), ['db', 'web']);
      assert.deepEqual((await dry(['label=app=web'])).removed.map((r) => r.name), ['web']);
      assert.deepEqual((await dry(['label=app', 'label=keep'])).removed.map((r) => r.name), ['web'], 'several label filters must all match');
      assert.deepEqual((await dry(['label!=keep'])).removed.map((r) => r.name).sort(), ['db', 'tmp']);
      assert.deepEqual((await dry(['label!=app=db'])).removed.map((r) => r.name).sort(), ['tmp', 'web']);
      assert.deepEqual((await dry(['name~=^(db|tmp)$', 'label!=scratch'])).removed.map((r) => r.name), ['db']);
      assert.equal(reasons(await dry(['label=app']))['tmp'], 'filtered');
      await assert.rejects(sn.prune({ filters: ['until=yesterday'] }), { code: 'ERR_INVALID_ARGUMENT' });
      await assert.rejects(sn.prune({ filters: ['until=1h', 'until=2h'] }), { code: 'ERR_INVALID_ARGUMENT' });
      await assert.rejects(sn.prune({ filters: ['name=='] }), { code: 'ERR_INVALID_ARGUMENT' });
      await assert.rejects(sn.prune({ dryrun: true } as never), { code: 'ERR_INVALID_ARGUMENT' });
      assert.deepEqual((await names(sn)).sort(), ['db', 'tmp', 'web']);
    });
  });

  test('until accepts Go durations, Unix seconds and RFC 3339 timestamps', () => {
    const now = Date.parse('2026-11-25T12:00:00Z');
    assert.equal(parseUntil('1h30m', now), now - 5_400_000);
    assert.equal(parseUntil('1.5h', now), now - 5_400_000);
    assert.equal(parseUntil('1700000000', now), 1_700_000_000_000);
    assert.equal(parseUntil('2026-11-24T12:00:00Z', now), now - 86_400_000);
    assert.throws(() => parseUntil('3 days', now), { code: 'ERR_INVALID_ARGUMENT' });
  });

  test('a dry run reports what a prune would do and changes nothing', async () => {
    await withSnapshotter({}, async (sn, root) => {
      await layer(sn, root, 'a');
      await layer(sn, root, 'b', 'a');
      await sn.prepare('ctr');
      const before = snapshotEntries(root);
      const dry = await sn.prune({ dryRun: true });
      assert.equal(dry.dryRun, true);
      assert.deepEqual(snapshotEntries(root), before);
      assert.deepEqual((await names(sn)).sort(), ['a', 'b', 'ctr']);
      const real = await sn.prune();
      assert.deepEqual(real.removed, dry.removed);
      assert.deepEqual(real.reclaimed, dry.reclaimed);
    });
  });

  test('a grace period marks candidates first and removes only those still unreferenced after it', async () => {
    await withSnapshotter({}, async (sn, root) => {
      let clock = Date.now();
      const now = () => clock;
      await layer(sn, root, 'old');
      await layer(sn, root, 'saved');
      const first = await sn.prune({ gracePeriod: 60_000, now });
      assert.deepEqual(first.removed, []);
      assert.deepEqual(first.marked.sort(), ['old', 'saved']);
      assert.deepEqual(reasons(first), { old: 'grace-period', saved: 'grace-period' });
      await sn.update({ name: 'saved', labels: { 'containerd.io/gc.root': 'y' } });
      clock += 30_000;
      const second = await sn.prune({ gracePeriod: 60_000, now });
      assert.deepEqual(second.removed, [], 'not yet');
      assert.deepEqual(second.marked, []);
      await sn.update({ name: 'saved', labels: {} });
      clock += 31_000;
      const third = await sn.prune({ gracePeriod: 60_000, now });
      assert.deepEqual(third.removed.map((r) => r.name), ['old']);
      assert.deepEqual(third.marked, ['saved'], 'saved was referenced in between: its mark was cleared, so its period starts again');
    });
  });

  test('mark-only marks candidates and removes nothing', async () => {
    await withSnapshotter({}, async (sn, root) => {
      let clock = Date.now();
      await layer(sn, root, 'x');
      const marked = await sn.prune({ markOnly: true, now: () => clock });
      assert.deepEqual(marked.marked, ['x']);
      assert.deepEqual(marked.removed, []);
      clock += 10_000;
      assert.deepEqual((await sn.prune({ gracePeriod: 5_000, now: () => clock })).removed.map((r) => r.name), ['x']);
    });
  });

  test('a snapshot created while a prune runs, here or through another instance, survives it', async () => {
    await withSnapshotter({}, async (sn, root) => {
      for (let i = 0; i < 5; i++) await layer(sn, root, `old${i}`);
      const other = await Snapshotter.open(root);
      try {
        const created: Promise<unknown>[] = [];
        const report = await sn.prune({
          onProgress: (p) => {
            if (p.done === 1) created.push(sn.prepare('born-here'), other.prepare('born-elsewhere'));
          },
        });
        await Promise.all(created);
        assert.equal(report.removed.length, 5);
        assert.deepEqual(await names(sn), ['born-elsewhere', 'born-here']);
      } finally {
        await other.close();
      }
    });
  });

  test('a second prune while one runs is refused with ERR_UNAVAILABLE, and prune works again afterwards', async () => {
    await withSnapshotter({}, async (sn, root) => {
      for (let i = 0; i < 3; i++) await layer(sn, root, `old${i}`);
      const other = await Snapshotter.open(root);
      try {
        let attempts: Promise<unknown>[] = [];
        await sn.prune({
          onProgress: (p) => {
            if (p.done === 1) attempts = [sn.prune(), other.prune()].map((x) => x.then(() => 'ran', (e: unknown) => e));
          },
        });
        const results = await Promise.all(attempts);
        assert.equal(results.length, 2);
        for (const refused of results) {
          assert.equal((refused as { code?: string }).code, 'ERR_UNAVAILABLE', String(refused));
          assert.match((refused as Error).message, /prune is already running/);
        }
        await layer(sn, root, 'later');
        assert.deepEqual((await other.prune()).removed.map((r) => r.name), ['later']);
      } finally {
        await other.close();
      }
    });
  });
});
