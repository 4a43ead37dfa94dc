/**
 * W8, mount: `prepare` + real `mountAll` + `unmountAll` + `remove` of a
 * container on a 20-layer parent, 200 cycles (root only). Reports cycles/s
 * and the median time of each step.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { mountAll, unmountAll } from '../lib/index.js';
import { type Context, type WorkloadResult, dropRoot, freshRoot, median, metric, open, rate, sized, syncAll, upperOf } from './common.js';

export default async function w8(ctx: Context): Promise<WorkloadResult> {
  const cycles = sized(ctx, 200);
  if (process.geteuid?.() !== 0) {
    return { id: 'W8', name: 'mount', size: { cycles, layers: 20 }, runs: 0, metrics: [], skipped: 'needs root (real mounts)' };
  }
  const throughput: number[] = [];
  const steps = { prepare: [] as number[], mount: [] as number[], unmount: [] as number[], remove: [] as number[] };
  for (let run = 0; run < ctx.runs; run++) {
    const root = freshRoot(ctx, 'w8');
    try {
      const sn = await open(root);
      let parent = '';
      for (let i = 1; i <= 20; i++) {
        const upper = upperOf(await sn.prepare(`layer-${i}-extract`, parent));
        writeFileSync(`${upper}/file-${i}`, `layer ${i}\n`);
        await sn.commit(`layer-${i}`, `layer-${i}-extract`);
        parent = `layer-${i}`;
      }
      const target = join(dirname(root), 'rootfs');
      mkdirSync(target);
      const cycle = async (key: string, times?: number[][]): Promise<void> => {
        let t = performance.now();
        const mounts = await sn.prepare(key, parent);
        let u = performance.now();
        times?.[0]!.push(u - t);
        await mountAll(mounts, target);
        t = performance.now();
        times?.[1]!.push(t - u);
        await unmountAll(target);
        u = performance.now();
        times?.[2]!.push(u - t);
        await sn.remove(key);
        times?.[3]!.push(performance.now() - u);
      };
      for (let i = 0; i < 5; i++) await cycle(`warm-${i}`);
      const times: number[][] = [[], [], [], []];
      syncAll();
      const start = performance.now();
      for (let i = 0; i < cycles; i++) await cycle(`ctr-${i}`, times);
      throughput.push(rate(cycles, (performance.now() - start) / 1000));
      steps.prepare.push(median(times[0]!));
      steps.mount.push(median(times[1]!));
      steps.unmount.push(median(times[2]!));
      steps.remove.push(median(times[3]!));
      await sn.close();
      ctx.log(
        `  run ${run + 1}: ${throughput.at(-1)!.toFixed(0)} cycles/s (median ms: prepare ${steps.prepare.at(-1)!.toFixed(3)}, mount ${steps.mount.at(-1)!.toFixed(3)}, unmount ${steps.unmount.at(-1)!.toFixed(3)}, remove ${steps.remove.at(-1)!.toFixed(3)})`,
      );
    } finally {
      await dropRoot(root);
    }
  }
  const ms = (id: string, label: string, samples: number[]) => metric(ctx, { id, label, unit: 'ms', samples, higherIsBetter: false });
  return {
    id: 'W8',
    name: 'mount',
    size: { cycles, layers: 20 },
    runs: ctx.runs,
    metrics: [
      metric(ctx, { id: 'W8.cycles', label: 'cycles/s (20-layer overlay)', unit: 'ops/s', samples: throughput, containerd: 563, goal: { cmp: '>=', value: 1100 } }),
      ms('W8.prepare', 'prepare (median cycle)', steps.prepare),
      ms('W8.mount', 'mount (median cycle)', steps.mount),
      ms('W8.unmount', 'unmount (median cycle)', steps.unmount),
      ms('W8.remove', 'remove (median cycle)', steps.remove),
    ],
  };
}
