/**
 * W5, usage: `usage(active)` on an upper dir holding 50 000 files of 1 KiB
 * in 500 dirs, with 1 000 hard links; 5 calls per run, each interleaved
 * with a `du -s` and a `du -s --apparent-size` of the same dir. The figures
 * are checked against `du -s -B1` and `du -s --inodes` once per run.
 */
import { execFileSync } from 'node:child_process';
import { linkSync, mkdirSync, writeFileSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { type Context, type WorkloadResult, containerdOtherDay, dropRoot, floorOf, freshRoot, metric, open, sized, syncAll, upperOf } from './common.js';

const KIB = Buffer.alloc(1024, 0x62);

function du(dir: string, ...flags: string[]): string {
  return execFileSync('du', ['-s', ...flags, dir], { encoding: 'utf8' }).split('\t')[0]!;
}

export default async function w5(ctx: Context): Promise<WorkloadResult> {
  const files = sized(ctx, 50_000);
  const dirs = sized(ctx, 500);
  const links = sized(ctx, 1_000);
  const calls = 5;
  const ours: number[] = [];
  const duBlocks: number[] = [];
  const duApparent: number[] = [];
  let agree = true;
  const checks: Record<string, unknown>[] = [];
  for (let run = 0; run < ctx.runs; run++) {
    const root = freshRoot(ctx, 'w5');
    try {
      const sn = await open(root);
      const upper = upperOf(await sn.prepare('w5'));
      const perDir = Math.ceil(files / dirs);
      for (let d = 0; d < dirs; d++) {
        mkdirSync(`${upper}/d${d}`);
        for (let f = 0; f < perDir && d * perDir + f < files; f++) writeFileSync(`${upper}/d${d}/f${f}`, KIB);
      }
      for (let k = 0; k < links; k++) linkSync(`${upper}/d${k % dirs}/f${Math.floor(k / dirs) % perDir}`, `${upper}/d${(k + 1) % dirs}/link${k}`);
      const usage = await sn.usage('w5');
      const check = { size: usage.size, duBytes: Number(du(upper, '-B1')), inodes: usage.inodes, duInodes: Number(du(upper, '--inodes')) };
      checks.push(check);
      agree &&= check.size === check.duBytes && check.inodes === check.duInodes;
      syncAll();
      const t = { ours: 0, du: 0, apparent: 0 };
      for (let i = 0; i < calls; i++) {
        let start = performance.now();
        await sn.usage('w5');
        t.ours += performance.now() - start;
        start = performance.now();
        du(upper);
        t.du += performance.now() - start;
        start = performance.now();
        du(upper, '--apparent-size');
        t.apparent += performance.now() - start;
      }
      await sn.close();
      ours.push(calls / (t.ours / 1000));
      duBlocks.push(calls / (t.du / 1000));
      duApparent.push(calls / (t.apparent / 1000));
      ctx.log(`  run ${run + 1}: usage ${ours.at(-1)!.toFixed(1)}/s, du -s ${duBlocks.at(-1)!.toFixed(1)}/s, du -s --apparent-size ${duApparent.at(-1)!.toFixed(1)}/s`);
    } finally {
      await dropRoot(root);
    }
  }
  const duFloor = floorOf('du -s', duBlocks);
  return {
    id: 'W5',
    name: 'usage',
    size: { files, dirs, hardLinks: links, callsPerRun: calls },
    runs: ctx.runs,
    metrics: [
      metric(ctx, {
        id: 'W5.usage',
        label: `usage calls/s (${files} files)`,
        unit: 'ops/s',
        samples: ours,
        floor: duFloor,
        reference: containerdOtherDay(4.65),
        goal: { cmp: '>=', value: 12 },
        note: 'must also not be slower than du -s (ours÷floor >= 100 %)',
      }),
      metric(ctx, { id: 'W5.du', label: 'du -s calls/s', unit: 'ops/s', samples: duBlocks }),
      metric(ctx, { id: 'W5.du-apparent', label: 'du -s --apparent-size calls/s', unit: 'ops/s', samples: duApparent }),
    ],
    details: { agreesWithDu: agree, checks },
  };
}
