/**
 * W2, container fan-out: from one committed parent of depth 10,
 * `prepare(ctr_j, top)` for j = 1..M, then `remove(ctr_j)` (synchronous
 * removal) for every j; M = 2000. Prepare/s and remove/s are reported
 * apart, each beside its physical floor (the same mkdirs and rename, then
 * the same rmdirs, with no metadata store), interleaved run by run.
 */
import { mkdirSync, renameSync, rmdirSync } from 'node:fs';
import { join } from 'node:path';
import type { Snapshotter } from '../lib/index.js';
import { type Context, type WorkloadResult, containerdOtherDay, dropRoot, floorOf, freshRoot, layerName, metric, open, rate, seconds, sized, syncAll } from './common.js';

/** Commits a chain of `depth` empty layers and returns the top's name. */
export async function chain(sn: Snapshotter, depth: number, prefix = 'base'): Promise<string> {
  let parent = '';
  for (let i = 1; i <= depth; i++) {
    const name = `${prefix}-${layerName(i)}`;
    await sn.prepare(`${prefix}-extract-${i}`, parent);
    await sn.commit(name, `${prefix}-extract-${i}`);
    parent = name;
  }
  return parent;
}

/** Times `m` prepares on `top`, then `m` removes, with a sync before each phase. Returns seconds for each. */
export async function fanOut(sn: Snapshotter, top: string, m: number, tag = 'ctr'): Promise<{ prepare: number; remove: number }> {
  const keys = Array.from({ length: m }, (_, j) => `default/${tag}-${j + 1}`);
  syncAll();
  const prepare = await seconds(async () => {
    for (const key of keys) await sn.prepare(key, top);
  });
  syncAll();
  const remove = await seconds(async () => {
    for (const key of keys) await sn.remove(key);
  });
  return { prepare, remove };
}

async function ours(ctx: Context, m: number): Promise<{ prepare: number; remove: number }> {
  const dir = freshRoot(ctx, 'w2');
  try {
    const sn = await open(dir);
    const top = await chain(sn, 10);
    const t = await fanOut(sn, top, m);
    await sn.close();
    return { prepare: rate(m, t.prepare), remove: rate(m, t.remove) };
  } finally {
    await dropRoot(dir);
  }
}

async function floor(ctx: Context, m: number): Promise<{ prepare: number; remove: number }> {
  const dir = freshRoot(ctx, 'w2-floor');
  try {
    const snapshots = join(dir, 'snapshots');
    mkdirSync(snapshots, { recursive: true, mode: 0o700 });
    syncAll();
    const prepare = await seconds(() => {
      for (let j = 1; j <= m; j++) {
        const staging = `${snapshots}/new-${j}`;
        mkdirSync(staging, 0o700);
        mkdirSync(`${staging}/fs`, 0o755);
        mkdirSync(`${staging}/work`, 0o711);
        renameSync(staging, `${snapshots}/${j}`);
      }
    });
    syncAll();
    const remove = await seconds(() => {
      for (let j = 1; j <= m; j++) {
        rmdirSync(`${snapshots}/${j}/work`);
        rmdirSync(`${snapshots}/${j}/fs`);
        rmdirSync(`${snapshots}/${j}`);
      }
    });
    return { prepare: rate(m, prepare), remove: rate(m, remove) };
  } finally {
    await dropRoot(dir);
  }
}

export default async function w2(ctx: Context): Promise<WorkloadResult> {
  const m = sized(ctx, 2000);
  const prep: number[] = [];
  const rem: number[] = [];
  const fPrep: number[] = [];
  const fRem: number[] = [];
  for (let run = 0; run < ctx.runs; run++) {
    const f = await floor(ctx, m);
    const o = await ours(ctx, m);
    fPrep.push(f.prepare);
    fRem.push(f.remove);
    prep.push(o.prepare);
    rem.push(o.remove);
    ctx.log(`  run ${run + 1}: prepare ${o.prepare.toFixed(0)}/s (floor ${f.prepare.toFixed(0)}), remove ${o.remove.toFixed(0)}/s (floor ${f.remove.toFixed(0)})`);
  }
  return {
    id: 'W2',
    name: 'container fan-out',
    size: { M: m, parentDepth: 10 },
    runs: ctx.runs,
    metrics: [
      metric(ctx, {
        id: 'W2.prepare',
        label: 'prepare/s',
        unit: 'ops/s',
        samples: prep,
        floor: floorOf('mkdir×3 + rename, no store', fPrep),
        reference: containerdOtherDay(1805),
        goal: { cmp: '>=', value: 3600 },
      }),
      metric(ctx, {
        id: 'W2.remove',
        label: 'remove/s (sync removal)',
        unit: 'ops/s',
        samples: rem,
        floor: floorOf('rmdir×3, no store', fRem),
        reference: containerdOtherDay(379),
        goal: { cmp: '>=', value: 1900 },
      }),
    ],
  };
}
