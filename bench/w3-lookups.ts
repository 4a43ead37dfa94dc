/**
 * W3, lookups: random `stat(key)` and `mounts(key)` over a store of 10 000
 * snapshots, 20 000 calls each (mounts only on actives and views, as
 * committed snapshots have none). Both are read-only: one read of the
 * store each, no filesystem work.
 */
import { type Context, type WorkloadResult, containerdOtherDay, dropRoot, freshRoot, metric, open, populate, rate, rng, seconds, sized, syncAll } from './common.js';

export default async function w3(ctx: Context): Promise<WorkloadResult> {
  const n = sized(ctx, 10_000);
  const calls = sized(ctx, 20_000);
  const stats: number[] = [];
  const mounts: number[] = [];
  for (let run = 0; run < ctx.runs; run++) {
    const root = freshRoot(ctx, 'w3');
    try {
      const filler = await open(root, { durableLayers: false });
      const pop = await populate(filler, n);
      await filler.close();
      const sn = await open(root);
      const all = [...pop.committed, ...pop.actives, ...pop.views];
      const mountable = [...pop.actives, ...pop.views];
      const random = rng(run + 1);
      const statKeys = Array.from({ length: calls }, () => all[Math.floor(random() * all.length)]!);
      const mountKeys = Array.from({ length: calls }, () => mountable[Math.floor(random() * mountable.length)]!);
      // Warm both paths (JIT, statement cache) before timing, as a long-lived daemon would be.
      for (let i = 0; i < 1000; i++) {
        await sn.stat(statKeys[i % calls]!);
        await sn.mounts(mountKeys[i % calls]!);
      }
      syncAll();
      const s = await seconds(async () => {
        for (const key of statKeys) await sn.stat(key);
      });
      syncAll();
      const m = await seconds(async () => {
        for (const key of mountKeys) await sn.mounts(key);
      });
      await sn.close();
      stats.push(rate(calls, s));
      mounts.push(rate(calls, m));
      ctx.log(`  run ${run + 1}: stat ${stats.at(-1)!.toFixed(0)}/s, mounts ${mounts.at(-1)!.toFixed(0)}/s`);
    } finally {
      await dropRoot(root);
    }
  }
  return {
    id: 'W3',
    name: 'lookups',
    size: { snapshots: n, calls },
    runs: ctx.runs,
    metrics: [
      metric(ctx, { id: 'W3.stat', label: 'stat/s', unit: 'ops/s', samples: stats, reference: containerdOtherDay(195_000), goal: { cmp: '>=', value: 300_000 } }),
      metric(ctx, { id: 'W3.mounts', label: 'mounts/s', unit: 'ops/s', samples: mounts, reference: containerdOtherDay(70_000), goal: { cmp: '>=', value: 140_000 } }),
    ],
  };
}
