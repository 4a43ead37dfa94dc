/**
 * W6, cleanup: with `asyncRemove`, remove 5 000 snapshots (records only),
 * then time one `cleanup()` that deletes their directories. Each snapshot
 * is an active with one 4 KiB file in its upper dir. The bytes reclaimed
 * are measured with `du -s -B1` of `snapshots/` before and after.
 */
import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { type Context, type WorkloadResult, containerdOtherDay, dropRoot, freshRoot, metric, open, rate, seconds, sized, syncAll, upperOf } from './common.js';

const DATA = Buffer.alloc(4096, 0x63);

function bytes(dir: string): number {
  return Number(execFileSync('du', ['-s', '-B1', '--exclude=new-*', dir], { encoding: 'utf8' }).split('\t')[0]);
}

export default async function w6(ctx: Context): Promise<WorkloadResult> {
  const n = sized(ctx, 5_000);
  const cleanups: number[] = [];
  const removes: number[] = [];
  const reclaimed: number[] = [];
  for (let run = 0; run < ctx.runs; run++) {
    const root = freshRoot(ctx, 'w6');
    try {
      const sn = await open(root, { asyncRemove: true });
      const keys = Array.from({ length: n }, (_, i) => `default/ctr-${i}`);
      for (const key of keys) writeFileSync(`${upperOf(await sn.prepare(key))}/file`, DATA);
      syncAll();
      const r = await seconds(async () => {
        for (const key of keys) await sn.remove(key);
      });
      const before = bytes(join(root, 'snapshots'));
      syncAll();
      const c = await seconds(() => sn.cleanup());
      const after = bytes(join(root, 'snapshots'));
      await sn.close();
      cleanups.push(c);
      removes.push(rate(n, r));
      reclaimed.push(before - after);
      ctx.log(`  run ${run + 1}: cleanup ${c.toFixed(3)} s, reclaimed ${((before - after) / 1048576).toFixed(1)} MiB; async remove ${removes.at(-1)!.toFixed(0)}/s`);
    } finally {
      await dropRoot(root);
    }
  }
  return {
    id: 'W6',
    name: 'cleanup',
    size: { snapshots: n },
    runs: ctx.runs,
    metrics: [
      metric(ctx, { id: 'W6.cleanup', label: `cleanup of ${n}`, unit: 's', samples: cleanups, reference: containerdOtherDay(2.23), goal: { cmp: '<=', value: 1.1 } }),
      metric(ctx, { id: 'W6.reclaimed', label: 'bytes reclaimed by cleanup', unit: 'bytes', samples: reclaimed }),
      metric(ctx, { id: 'W6.remove', label: 'remove/s (async removal: records only)', unit: 'ops/s', samples: removes }),
    ],
  };
}
