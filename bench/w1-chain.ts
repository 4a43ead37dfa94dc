/**
 * W1, layer chain: `prepare(a_i, c_{i-1})`, write one 4 KiB file into the
 * upper dir, `commit(c_i, a_i)`, for i = 1..N (N = 1000). The chain grows to
 * depth N in metadata only; nothing is mounted.
 *
 * Run with `durableLayers` off (the work containerd does: metadata durable,
 * layer data left to writeback) and on (one syncfs per commit), and the
 * physical floor: the same directories and file with no metadata store.
 * The three are interleaved run by run.
 */
import { mkdirSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { type Context, type WorkloadResult, containerdOtherDay, dropRoot, floorOf, freshRoot, layerName, metric, open, rate, seconds, sized, syncAll, upperOf } from './common.js';

const DATA = Buffer.alloc(4096, 0x61);

async function ours(ctx: Context, n: number, durableLayers: boolean): Promise<number> {
  const dir = freshRoot(ctx, 'w1');
  try {
    const sn = await open(dir, { durableLayers });
    syncAll();
    const secs = await seconds(async () => {
      let parent = '';
      for (let i = 1; i <= n; i++) {
        const key = `a-${i}`;
        const mounts = await sn.prepare(key, parent);
        writeFileSync(`${upperOf(mounts)}/file`, DATA);
        parent = layerName(i);
        await sn.commit(parent, key);
      }
    });
    await sn.close();
    return rate(n, secs);
  } finally {
    await dropRoot(dir);
  }
}

/** The same directory work with no store: staging dir, fs, work, rename into place, the file. */
async function floor(ctx: Context, n: number): Promise<number> {
  const dir = freshRoot(ctx, 'w1-floor');
  try {
    const snapshots = join(dir, 'snapshots');
    mkdirSync(snapshots, { recursive: true, mode: 0o700 });
    syncAll();
    const secs = await seconds(() => {
      for (let i = 1; i <= n; i++) {
        const staging = `${snapshots}/new-${i}`;
        mkdirSync(staging, 0o700);
        mkdirSync(`${staging}/fs`, 0o755);
        mkdirSync(`${staging}/work`, 0o711);
        renameSync(staging, `${snapshots}/${i}`);
        writeFileSync(`${snapshots}/${i}/fs/file`, DATA);
      }
    });
    return rate(n, secs);
  } finally {
    await dropRoot(dir);
  }
}

export default async function w1(ctx: Context): Promise<WorkloadResult> {
  const n = sized(ctx, 1000);
  const off: number[] = [];
  const on: number[] = [];
  const fl: number[] = [];
  for (let run = 0; run < ctx.runs; run++) {
    fl.push(await floor(ctx, n));
    off.push(await ours(ctx, n, false));
    on.push(await ours(ctx, n, true));
    ctx.log(`  run ${run + 1}: floor ${fl.at(-1)!.toFixed(0)}/s, durableLayers off ${off.at(-1)!.toFixed(0)}/s, on ${on.at(-1)!.toFixed(0)}/s`);
  }
  const floorFig = floorOf('mkdir×3 + rename + 4 KiB file, no store', fl);
  return {
    id: 'W1',
    name: 'layer chain',
    size: { N: n },
    runs: ctx.runs,
    metrics: [
      metric(ctx, {
        id: 'W1.steps',
        label: 'chain steps/s (durableLayers off: containerd\'s work)',
        unit: 'ops/s',
        samples: off,
        floor: floorFig,
        reference: containerdOtherDay(599),
        goal: { cmp: '>=', value: 1200 },
      }),
      metric(ctx, {
        id: 'W1.steps.durable',
        label: 'chain steps/s (durableLayers on: syncfs per commit)',
        unit: 'ops/s',
        samples: on,
        floor: floorFig,
        reference: containerdOtherDay(599),
        note: 'does more than containerd (layer data durable at commit); no goal',
      }),
    ],
  };
}
