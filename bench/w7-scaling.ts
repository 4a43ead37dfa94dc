/**
 * W7, scaling: W2's prepare+remove per-operation cost on a store of 1 000
 * snapshots and on one of 50 000 (both filled like W3's), measured in
 * alternating rounds so that both see the same machine noise. The figure
 * is the ratio of the two costs; flat (1×) is the goal.
 */
import type { Snapshotter } from '../lib/index.js';
import { type Context, type WorkloadResult, containerdOtherDay, dropRoot, freshRoot, metric, open, populate, sized } from './common.js';
import { chain, fanOut } from './w2-fanout.js';

async function filled(ctx: Context, n: number): Promise<{ root: string; sn: Snapshotter; top: string }> {
  const root = freshRoot(ctx, `w7-${n}`);
  const filler = await open(root, { durableLayers: false });
  await populate(filler, n, ctx.log);
  await filler.close();
  const sn = await open(root);
  return { root, sn, top: await chain(sn, 10, 'w7') };
}

export default async function w7(ctx: Context): Promise<WorkloadResult> {
  const small = sized(ctx, 1_000);
  const large = sized(ctx, 50_000);
  const m = sized(ctx, 2_000);
  const rounds = 8;
  const perRound = Math.max(1, Math.round(m / rounds));
  const ratios: number[] = [];
  const smallUs: number[] = [];
  const largeUs: number[] = [];
  for (let run = 0; run < ctx.runs; run++) {
    const a = await filled(ctx, small);
    const b = await filled(ctx, large);
    try {
      const cost = { a: 0, b: 0 };
      for (let r = 0; r < rounds; r++) {
        for (const [which, s] of [['a', a], ['b', b]] as const) {
          // fanOut syncs before each of its timed phases.
          const t = await fanOut(s.sn, s.top, perRound, `r${r}`);
          cost[which] += t.prepare + t.remove;
        }
      }
      const ops = 2 * perRound * rounds;
      smallUs.push((cost.a / ops) * 1e6);
      largeUs.push((cost.b / ops) * 1e6);
      ratios.push(cost.b / cost.a);
      ctx.log(`  run ${run + 1}: ${smallUs.at(-1)!.toFixed(0)} µs/op at ${small}, ${largeUs.at(-1)!.toFixed(0)} µs/op at ${large}: ${ratios.at(-1)!.toFixed(2)}×`);
    } finally {
      await a.sn.close();
      await b.sn.close();
      await dropRoot(a.root);
      await dropRoot(b.root);
    }
  }
  return {
    id: 'W7',
    name: 'scaling',
    size: { small, large, opsPerStore: 2 * perRound * rounds },
    runs: ctx.runs,
    metrics: [
      metric(ctx, {
        id: 'W7.ratio',
        label: `per-op cost ratio ${large / 1000}k/${small / 1000}k`,
        unit: 'x',
        samples: ratios,
        reference: containerdOtherDay(42),
        goal: { cmp: '<=', value: 1.5 },
      }),
      metric(ctx, { id: 'W7.small', label: `prepare+remove per op at ${small}`, unit: 'µs', samples: smallUs }),
      metric(ctx, { id: 'W7.large', label: `prepare+remove per op at ${large}`, unit: 'µs', samples: largeUs }),
    ],
  };
}
