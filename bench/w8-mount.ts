/**
 * W8, mount: `prepare` + real `mountAll` + `unmountAll` + `remove` of a
 * container on a 20-layer parent, 200 cycles (root only), then the same
 * with volatile containers (`prepare(..., { volatile: true })`: overlayfs
 * skips the sync of the upper at unmount), and both again with containers
 * that write 1 MiB (16 files of 64 KiB) before they stop, one after the
 * other in each run. Reports cycles/s and the median time of each step of
 * each.
 *
 * Each variant's floor is the same cycle done bare in the same process
 * (bench/bare-cycle.ts: the mkdirs, rename, syncs, mount(2), umount2 and
 * rmdirs, with the overlay options the library gave, on the same
 * filesystem and mount point). Ours and the bare cycle take turns in
 * blocks of a tenth of the cycles (the order alternating, a `sync` before
 * each block), so that a change of the machine's load falls on both alike.
 * A rate is the cycles over the time of its own blocks.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { mountAll, unmountAll } from '../lib/index.js';
import { BareCycle, type BareVariant, PHASES, type Phase, optionsLike, phasesOf } from './bare-cycle.js';
import { type Context, type Metric, type WorkloadResult, containerdOtherDay, dropRoot, floorOf, freshRoot, median, metric, open, rate, sized, syncAll, upperOf } from './common.js';

/** Blocks the cycles of a variant are cut into: ours and the bare cycle take turns block by block. */
const BLOCKS = 10;

/** Per-run figures of one side (ours or bare) of one variant. */
interface Figures {
  throughput: number[];
  /** Per-run median of each phase, ms. */
  phases: Record<Phase, number[]>;
}

const figures = (): Figures => ({ throughput: [], phases: { prepare: [], mount: [], unmount: [], remove: [] } });

export default async function w8(ctx: Context): Promise<WorkloadResult> {
  const cycles = sized(ctx, 200);
  if (process.geteuid?.() !== 0) {
    return { id: 'W8', name: 'mount', size: { cycles, layers: 20 }, runs: 0, metrics: [], skipped: 'needs root (real mounts)' };
  }
  const chunk = Buffer.alloc(64 * 1024, 0x77);
  const names = Array.from({ length: 16 }, (_, f) => `data-${f}`);
  const write = (target: string): readonly string[] => {
    for (const name of names) writeFileSync(`${target}/${name}`, chunk);
    return names;
  };
  const variants: readonly { what: string; options: { volatile: true } | undefined; container: BareVariant }[] = [
    { what: '', options: undefined, container: {} },
    { what: ', volatile', options: { volatile: true }, container: { volatile: true } },
    { what: ', writing 1 MiB', options: undefined, container: { write } },
    { what: ', volatile, writing 1 MiB', options: { volatile: true }, container: { volatile: true, write } },
  ];
  const results = variants.map(() => ({ ours: figures(), bare: figures() }));
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
      let bare: BareCycle | undefined;
      for (const [v, variant] of variants.entries()) {
        /** One cycle of ours; returns what each phase took, ms. */
        const ours = async (key: string): Promise<Record<Phase, number>> => {
          let t = performance.now();
          const mounts = await sn.prepare(key, parent, variant.options);
          let u = performance.now();
          const prepare = u - t;
          // The bare cycle mounts what the library hands out, at its own upper and work dirs.
          bare ??= new BareCycle(join(dirname(root), 'bare'), optionsLike(mounts[0]!));
          await mountAll(mounts, target);
          t = performance.now();
          const mount = t - u;
          if (variant.container.write !== undefined) {
            variant.container.write(target);
            t = performance.now();
          }
          await unmountAll(target);
          u = performance.now();
          const unmount = u - t;
          await sn.remove(key);
          return { prepare, mount, unmount, remove: performance.now() - u };
        };
        for (let i = 0; i < 5; i++) await ours(`warm-${v}-${i}`);
        for (let i = 0; i < 5; i++) bare!.cycle(target, variant.container);
        const sides = {
          ours: { times: PHASES.map(() => [] as number[]), secs: 0 },
          bare: { times: PHASES.map(() => [] as number[]), secs: 0 },
        };
        const blocks = Math.min(BLOCKS, cycles);
        let done = 0;
        for (let b = 0; b < blocks; b++) {
          const size = Math.round(((b + 1) * cycles) / blocks) - done;
          for (const side of b % 2 === 0 ? (['ours', 'bare'] as const) : (['bare', 'ours'] as const)) {
            const into = sides[side];
            syncAll();
            const start = performance.now();
            for (let i = done; i < done + size; i++) {
              const t = side === 'ours' ? await ours(`ctr-${v}-${i}`) : phasesOf(bare!.cycle(target, variant.container));
              PHASES.forEach((p, k) => into.times[k]!.push(t[p]));
            }
            into.secs += (performance.now() - start) / 1000;
          }
          done += size;
        }
        for (const side of ['ours', 'bare'] as const) {
          const r = results[v]![side];
          r.throughput.push(rate(cycles, sides[side].secs));
          PHASES.forEach((p, k) => r.phases[p].push(median(sides[side].times[k]!)));
        }
        const line = (f: Figures) => `${f.throughput.at(-1)!.toFixed(0)} cycles/s (${PHASES.map((p) => `${p} ${f.phases[p].at(-1)!.toFixed(3)}`).join(', ')})`;
        ctx.log(`  run ${run + 1}${variant.what}: ours ${line(results[v]!.ours)}; bare ${line(results[v]!.bare)} [median ms]`);
      }
      bare?.close();
      await sn.close();
    } finally {
      await dropRoot(root);
    }
  }
  /** What the bare cycle does in each phase of `variant`. */
  const floorLabel = (p: Phase, variant: BareVariant): string => {
    if (p === 'mount') return `bare: mount(2)${variant.volatile === true ? ', volatile' : ''}`;
    if (p === 'unmount') return 'bare: umount2';
    const boot = variant.volatile === true ? ' + boot file' : '';
    if (p === 'prepare') return `bare: mkdir×3${boot} + rename + 4 KiB + fdatasync`;
    return `bare: 4 KiB + fdatasync${variant.write === undefined ? '' : ' + unlink×16'}${variant.volatile === true ? ' + mark (unlink + rmdir×2)' : ''}${boot} + rmdir×4`;
  };
  const steps = (id: string, label: string, v: number): Metric[] =>
    PHASES.map((p) =>
      metric(ctx, {
        id: `${id}.${p}`,
        label: `${label}${p} (median cycle)`,
        unit: 'ms',
        samples: results[v]!.ours.phases[p],
        floor: floorOf(floorLabel(p, variants[v]!.container), results[v]!.bare.phases[p]),
      }),
    );
  const cyclesOf = (id: string, label: string, v: number, extra: Pick<Metric, 'reference' | 'goal'> = {}): Metric =>
    metric(ctx, { id, label, unit: 'ops/s', samples: results[v]!.ours.throughput, floor: floorOf('bare cycle (bench/bare-cycle.ts)', results[v]!.bare.throughput), ...extra });
  return {
    id: 'W8',
    name: 'mount',
    size: { cycles, layers: 20 },
    runs: ctx.runs,
    metrics: [
      cyclesOf('W8.cycles', 'cycles/s (20-layer overlay)', 0, { reference: containerdOtherDay(563), goal: { cmp: '>=', value: 1100 } }),
      ...steps('W8', '', 0),
      cyclesOf('W8v.cycles', 'cycles/s, volatile containers', 1),
      ...steps('W8v', 'volatile: ', 1),
      cyclesOf('W8w.cycles', 'cycles/s, containers writing 1 MiB', 2),
      ...steps('W8w', 'writing: ', 2),
      cyclesOf('W8vw.cycles', 'cycles/s, volatile containers writing 1 MiB', 3),
      ...steps('W8vw', 'volatile, writing: ', 3),
    ],
  };
}
