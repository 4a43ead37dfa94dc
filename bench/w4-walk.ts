/**
 * W4, walk: a full `walk` over a store of 10 000 snapshots, and a filtered
 * walk (`labels."x"==y`, matching 1 %), 20 walks each. The callback only
 * counts, so the figure is the store's and the Info building's cost.
 */
import { type Context, type WorkloadResult, containerdOtherDay, dropRoot, freshRoot, metric, open, populate, rate, seconds, sized, syncAll } from './common.js';

export default async function w4(ctx: Context): Promise<WorkloadResult> {
  const n = sized(ctx, 10_000);
  const walks = sized(ctx, 20);
  const full: number[] = [];
  const filtered: number[] = [];
  let counts = { full: 0, filtered: 0 };
  for (let run = 0; run < ctx.runs; run++) {
    const root = freshRoot(ctx, 'w4');
    try {
      const filler = await open(root, { durableLayers: false });
      const pop = await populate(filler, n);
      await filler.close();
      const sn = await open(root);
      let seen = 0;
      const count = (): void => {
        seen++;
      };
      // Warm-up, as a long-lived daemon would be.
      await sn.walk(count);
      await sn.walk(count, 'labels."x"==y');
      syncAll();
      seen = 0;
      const f = await seconds(async () => {
        for (let i = 0; i < walks; i++) await sn.walk(count);
      });
      counts.full = seen / walks;
      syncAll();
      seen = 0;
      const g = await seconds(async () => {
        for (let i = 0; i < walks; i++) await sn.walk(count, 'labels."x"==y');
      });
      counts.filtered = seen / walks;
      if (counts.full !== n || counts.filtered !== pop.marked.length) {
        throw new Error(`W4: walks found ${counts.full} and ${counts.filtered}, expected ${n} and ${pop.marked.length}`);
      }
      await sn.close();
      full.push(rate(walks, f));
      filtered.push(rate(walks, g));
      ctx.log(`  run ${run + 1}: full ${full.at(-1)!.toFixed(1)}/s, filtered ${filtered.at(-1)!.toFixed(0)}/s`);
    } finally {
      await dropRoot(root);
    }
  }
  return {
    id: 'W4',
    name: 'walk',
    size: { snapshots: n, walks },
    runs: ctx.runs,
    metrics: [
      metric(ctx, { id: 'W4.full', label: `full walks/s (${n} results)`, unit: 'ops/s', samples: full, reference: containerdOtherDay(42.6), goal: { cmp: '>=', value: 85 } }),
      metric(ctx, {
        id: 'W4.filtered',
        label: `filtered walks/s (${counts.filtered} results, 1 %)`,
        unit: 'ops/s',
        samples: filtered,
        reference: containerdOtherDay(49.2),
        goal: { cmp: '>=', value: 1000 },
      }),
    ],
  };
}
