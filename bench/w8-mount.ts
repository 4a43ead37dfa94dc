/**
 * W8, mount: `prepare` + real `mountAll` + `unmountAll` + `remove` of a
 * container on a 20-layer parent, 200 cycles (root only), then the same
 * with volatile containers (`prepare(..., { volatile: true })`: overlayfs
 * skips the sync of the upper at unmount), and both again with containers
 * that write 1 MiB (16 files of 64 KiB) before they stop, interleaved run
 * by run. Reports cycles/s and the median time of each step of each.
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
  const variants = [
    { what: '', options: undefined, writes: false },
    { what: ', volatile', options: { volatile: true }, writes: false },
    { what: ', writing 1 MiB', options: undefined, writes: true },
    { what: ', volatile, writing 1 MiB', options: { volatile: true }, writes: true },
  ] as const;
  const chunk = Buffer.alloc(64 * 1024, 0x77);
  const results = variants.map(() => ({ throughput: [] as number[], prepare: [] as number[], mount: [] as number[], unmount: [] as number[], remove: [] as number[] }));
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
      for (const [v, variant] of variants.entries()) {
        const cycle = async (key: string, times?: number[][]): Promise<void> => {
          let t = performance.now();
          const mounts = await sn.prepare(key, parent, variant.options);
          let u = performance.now();
          times?.[0]!.push(u - t);
          await mountAll(mounts, target);
          t = performance.now();
          times?.[1]!.push(t - u);
          if (variant.writes) {
            for (let f = 0; f < 16; f++) writeFileSync(`${target}/data-${f}`, chunk);
            t = performance.now();
          }
          await unmountAll(target);
          u = performance.now();
          times?.[2]!.push(u - t);
          await sn.remove(key);
          times?.[3]!.push(performance.now() - u);
        };
        for (let i = 0; i < 5; i++) await cycle(`warm-${v}-${i}`);
        const times: number[][] = [[], [], [], []];
        syncAll();
        const start = performance.now();
        for (let i = 0; i < cycles; i++) await cycle(`ctr-${v}-${i}`, times);
        const r = results[v]!;
        r.throughput.push(rate(cycles, (performance.now() - start) / 1000));
        r.prepare.push(median(times[0]!));
        r.mount.push(median(times[1]!));
        r.unmount.push(median(times[2]!));
        r.remove.push(median(times[3]!));
        ctx.log(
          `  run ${run + 1}${variant.what}: ${r.throughput.at(-1)!.toFixed(0)} cycles/s (median ms: prepare ${r.prepare.at(-1)!.toFixed(3)}, mount ${r.mount.at(-1)!.toFixed(3)}, unmount ${r.unmount.at(-1)!.toFixed(3)}, remove ${r.remove.at(-1)!.toFixed(3)})`,
        );
      }
      await sn.close();
    } finally {
      await dropRoot(root);
    }
  }
  const ms = (id: string, label: string, samples: number[]) => metric(ctx, { id, label, unit: 'ms', samples, higherIsBetter: false });
  const [plain, volatile, writing, volatileWriting] = results as [(typeof results)[0], (typeof results)[0], (typeof results)[0], (typeof results)[0]];
  const steps = (id: string, label: string, r: (typeof results)[0]) => [
    ms(`${id}.prepare`, `${label}prepare (median cycle)`, r.prepare),
    ms(`${id}.mount`, `${label}mount (median cycle)`, r.mount),
    ms(`${id}.unmount`, `${label}unmount (median cycle)`, r.unmount),
    ms(`${id}.remove`, `${label}remove (median cycle)`, r.remove),
  ];
  return {
    id: 'W8',
    name: 'mount',
    size: { cycles, layers: 20 },
    runs: ctx.runs,
    metrics: [
      metric(ctx, { id: 'W8.cycles', label: 'cycles/s (20-layer overlay)', unit: 'ops/s', samples: plain.throughput, containerd: 563, goal: { cmp: '>=', value: 1100 } }),
      ...steps('W8', '', plain),
      metric(ctx, { id: 'W8v.cycles', label: 'cycles/s, volatile containers', unit: 'ops/s', samples: volatile.throughput }),
      ...steps('W8v', 'volatile: ', volatile),
      metric(ctx, { id: 'W8w.cycles', label: 'cycles/s, containers writing 1 MiB', unit: 'ops/s', samples: writing.throughput }),
      ...steps('W8w', 'writing: ', writing),
      metric(ctx, { id: 'W8vw.cycles', label: 'cycles/s, volatile containers writing 1 MiB', unit: 'ops/s', samples: volatileWriting.throughput }),
      ...steps('W8vw', 'volatile, writing: ', volatileWriting),
    ],
  };
}
