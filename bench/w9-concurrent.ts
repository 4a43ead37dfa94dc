/**
 * W9, many callers at once (a node starting a burst of pods, a builder
 * running parallel steps): C callers share one snapshotter, each running
 * `n` × (prepare on a depth-10 parent, 4 KiB written to the upper dir,
 * remove); n = 200. Measured with 16 callers in one process, with 4
 * processes × 4 callers on one root, and for C = 1, 2, 4, 8, 16, 32 in one
 * process; beside them, the serial W2 fan-out on the same filesystem.
 *
 * The floor of each caller count is the same cycle done with the bare
 * syscalls on as many threads (bench/bare-concurrent.ts), run in turn with
 * ours (the order alternates run by run), each in a fresh dir. The 4 × 4
 * case is set beside the 16-thread floor. The bare figure of the best
 * thread count is given too: past a few threads on a machine with few CPUs
 * the bare syscalls slow each other down, and a floor that falls with more
 * callers would flatter ours.
 *
 * Every call is durable as always (it returns once its record is synced);
 * calls in flight together share the syncs (group commit).
 *
 * A call kind's aggregate rate is the calls made ÷ the time during which
 * at least one call of that kind was in flight (the union of their
 * intervals, across processes for the multi-process case): the rate at
 * which the snapshotter gets through that call while callers ask for it.
 * With one caller this is 1 ÷ the mean latency; the cycles/s figure (whole
 * cycles ÷ wall time) is given beside it. Latency percentiles are over every
 * call of every caller.
 *
 * The processes of the multi-process case are this file run with
 * `--w9-child`: each opens the root, says `ready` on stdout, waits for `go`
 * on stdin (so all start together), and prints its figures as one JSON line.
 */
import { spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import type { Snapshotter } from '../lib/index.js';
import { type Calls, bareBurst, now } from './bare-concurrent.js';
import { type Context, type WorkloadResult, dropRoot, floorOf, freshRoot, metric, open, rate, sized, syncAll, upperOf } from './common.js';
import { chain, fanOut } from './w2-fanout.js';

const PAYLOAD = Buffer.alloc(4096, 0x39);

/** Runs `callers` loops of `n` cycles each on `sn` over the parent `top`; keys are unique per `tag`. */
async function burst(sn: Snapshotter, top: string, callers: number, n: number, tag: string): Promise<Calls> {
  const calls: Calls = { prepare: [], remove: [], start: now(), end: 0 };
  await Promise.all(
    Array.from({ length: callers }, async (_, c) => {
      for (let i = 0; i < n; i++) {
        const key = `default/${tag}-${c}-${i}`;
        let t = now();
        const mounts = await sn.prepare(key, top);
        let u = now();
        calls.prepare.push([t, u]);
        writeFileSync(`${upperOf(mounts)}/data`, PAYLOAD);
        t = now();
        await sn.remove(key);
        u = now();
        calls.remove.push([t, u]);
      }
    }),
  );
  calls.end = now();
  return calls;
}

/** The time covered by at least one of `intervals`, ms. */
function covered(intervals: readonly [number, number][]): number {
  const sorted = [...intervals].sort((a, b) => a[0] - b[0]);
  let total = 0;
  let from = -Infinity;
  let to = -Infinity;
  for (const [s, e] of sorted) {
    if (s > to) {
      total += to - from > 0 ? to - from : 0;
      from = s;
      to = e;
    } else if (e > to) to = e;
  }
  return total + (to - from > 0 ? to - from : 0);
}

function percentile(values: readonly number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? NaN;
}

/** Figures of one burst (or of several processes' bursts merged). */
interface Figures {
  prepares: number;
  removes: number;
  cycles: number;
  prepareP50: number;
  prepareP99: number;
  removeP50: number;
  removeP99: number;
}

function figures(all: readonly Calls[]): Figures {
  const prepare = all.flatMap((c) => c.prepare);
  const remove = all.flatMap((c) => c.remove);
  const wall = Math.max(...all.map((c) => c.end)) - Math.min(...all.map((c) => c.start));
  const latencies = (xs: [number, number][]) => xs.map(([s, e]) => e - s);
  return {
    prepares: rate(prepare.length, covered(prepare) / 1000),
    removes: rate(remove.length, covered(remove) / 1000),
    cycles: rate(prepare.length, wall / 1000),
    prepareP50: percentile(latencies(prepare), 50),
    prepareP99: percentile(latencies(prepare), 99),
    removeP50: percentile(latencies(remove), 50),
    removeP99: percentile(latencies(remove), 99),
  };
}

/** One root with a depth-10 chain: opened, populated, handed to `fn`, closed. */
async function withRoot<T>(ctx: Context, tag: string, fn: (sn: Snapshotter, top: string, root: string) => Promise<T>): Promise<T> {
  const root = freshRoot(ctx, tag);
  try {
    const sn = await open(root);
    try {
      const top = await chain(sn, 10);
      // Warm-up: the staging pool, the statement cache and the page cache.
      await burst(sn, top, 4, 5, 'warm');
      syncAll();
      return await fn(sn, top, root);
    } finally {
      await sn.close();
    }
  } finally {
    await dropRoot(root);
  }
}

/** `processes` children × `callers` each on `root`, started together. */
async function multiProcess(root: string, top: string, processes: number, callers: number, n: number): Promise<Calls[]> {
  const self = fileURLToPath(import.meta.url);
  const children = Array.from({ length: processes }, (_, p) =>
    spawn(process.execPath, [...process.execArgv, self, '--w9-child', root, top, String(callers), String(n), `p${p}`], { stdio: ['pipe', 'pipe', 'inherit'] }),
  );
  const lines = children.map((child) => createInterface({ input: child.stdout })[Symbol.asyncIterator]());
  const exited = children.map(
    (child, p) =>
      new Promise<void>((resolve, reject) => {
        child.on('exit', (code, signal) => (code === 0 ? resolve() : reject(new Error(`W9 child ${p} failed (${code ?? signal})`))));
      }),
  );
  try {
    for (const it of lines) {
      const line = await it.next();
      if (line.done === true || line.value !== 'ready') throw new Error(`W9 child did not get ready: ${String(line.value)}`);
    }
    for (const child of children) child.stdin.write('go\n');
    const results: Calls[] = [];
    for (const it of lines) {
      const line = await it.next();
      if (line.done === true) throw new Error('W9 child ended without its figures');
      results.push(JSON.parse(line.value as string) as Calls);
    }
    await Promise.all(exited);
    return results;
  } finally {
    for (const child of children) if (child.exitCode === null) child.kill('SIGKILL');
  }
}

async function child(argv: string[]): Promise<void> {
  const [root, top, callers, n, tag] = argv as [string, string, string, string, string];
  const sn = await open(root);
  try {
    await burst(sn, top, 1, 3, `${tag}-warm`);
    process.stdout.write('ready\n');
    const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
    await lines.next();
    const calls = await burst(sn, top, Number(callers), Number(n), tag);
    process.stdout.write(`${JSON.stringify(calls)}\n`);
  } finally {
    await sn.close();
  }
  process.stdin.destroy();
}

/** The bare floor (bench/bare-concurrent.ts) for `callers` threads × `n` cycles, in a fresh dir of its own. */
async function bareFigures(ctx: Context, callers: number, n: number): Promise<Figures> {
  const base = freshRoot(ctx, 'w9-bare');
  const f = figures((await bareBurst(base, callers, n)).calls);
  syncAll();
  return f;
}

export default async function w9(ctx: Context): Promise<WorkloadResult> {
  const n = sized(ctx, 200);
  const m = sized(ctx, 2000);
  const sweep = [1, 2, 4, 8, 16, 32];
  const one: Figures[] = [];
  const bare: Figures[] = [];
  const multi: Figures[] = [];
  const serial: { prepare: number; remove: number }[] = [];
  const scaling = new Map<number, { ours: Figures[]; bare: Figures[] }>(sweep.map((c) => [c, { ours: [], bare: [] }]));
  for (let run = 0; run < ctx.runs; run++) {
    // Ours and the bare floor take turns, in an order that alternates run by run.
    const pair = async <T>(a: () => Promise<T>, b: () => Promise<T>): Promise<[T, T]> => {
      if (run % 2 === 0) {
        const x = await a();
        return [x, await b()];
      }
      const y = await b();
      return [await a(), y];
    };
    const [f, fb] = await pair(
      () => withRoot(ctx, 'w9', async (sn, top) => figures([await burst(sn, top, 16, n, 'ctr')])),
      () => bareFigures(ctx, 16, n),
    );
    one.push(f);
    bare.push(fb);
    const mp = await withRoot(ctx, 'w9-mp', async (_sn, top, root) => figures(await multiProcess(root, top, 4, 4, n)));
    multi.push(mp);
    const s = await withRoot(ctx, 'w9-w2', async (sn, top) => {
      const t = await fanOut(sn, top, m);
      return { prepare: rate(m, t.prepare), remove: rate(m, t.remove) };
    });
    serial.push(s);
    await withRoot(ctx, 'w9-sweep', async (sn, top) => {
      for (const c of sweep) {
        const [o, b] = await pair(
          async () => {
            const r = figures([await burst(sn, top, c, n, `c${c}-`)]);
            syncAll();
            return r;
          },
          () => bareFigures(ctx, c, n),
        );
        scaling.get(c)!.ours.push(o);
        scaling.get(c)!.bare.push(b);
      }
    });
    ctx.log(
      `  run ${run + 1}: 16 callers ${f.prepares.toFixed(0)} prepares/s, ${f.removes.toFixed(0)} removes/s, ${f.cycles.toFixed(0)} cycles/s ` +
        `(p99 prepare ${f.prepareP99.toFixed(2)} ms, remove ${f.removeP99.toFixed(2)} ms); bare 16 threads ${fb.prepares.toFixed(0)} / ${fb.removes.toFixed(0)}, ` +
        `${fb.cycles.toFixed(0)} cycles/s (p99 ${fb.prepareP99.toFixed(2)} / ${fb.removeP99.toFixed(2)} ms); 4×4: ${mp.prepares.toFixed(0)} / ${mp.removes.toFixed(0)}; ` +
        `serial W2 ${s.prepare.toFixed(0)} / ${s.remove.toFixed(0)}; by callers (ours / bare): ` +
        `${sweep.map((c) => `${c}: ${scaling.get(c)!.ours.at(-1)!.cycles.toFixed(0)} / ${scaling.get(c)!.bare.at(-1)!.cycles.toFixed(0)}`).join(', ')} cycles/s`,
    );
  }
  const pick = (fs: Figures[], k: keyof Figures) => fs.map((f) => f[k]);
  const BARE = 'bare syscalls, 16 threads (bench/bare-concurrent.ts)';
  const floor = (label: string, fs: Figures[], k: keyof Figures) => ({ floor: floorOf(label, pick(fs, k)) });
  const ms = (id: string, label: string, samples: number[], extra: { goal?: number; floor?: ReturnType<typeof floorOf> } = {}) =>
    metric(ctx, {
      id,
      label,
      unit: 'ms',
      samples,
      ...(extra.goal === undefined ? {} : { goal: { cmp: '<=' as const, value: extra.goal } }),
      ...(extra.floor === undefined ? {} : { floor: extra.floor }),
    });
  return {
    id: 'W9',
    name: 'many callers',
    size: { callers: 16, cycles: n, parentDepth: 10, processes: 4, w2M: m },
    runs: ctx.runs,
    metrics: [
      metric(ctx, { id: 'W9.prepare', label: 'prepares/s, 16 callers', unit: 'ops/s', samples: pick(one, 'prepares'), goal: { cmp: '>=', value: 8000 }, ...floor(BARE, bare, 'prepares') }),
      metric(ctx, { id: 'W9.remove', label: 'removes/s, 16 callers', unit: 'ops/s', samples: pick(one, 'removes'), goal: { cmp: '>=', value: 4000 }, ...floor(BARE, bare, 'removes') }),
      metric(ctx, { id: 'W9.cycles', label: 'cycles/s, 16 callers (wall)', unit: 'ops/s', samples: pick(one, 'cycles'), ...floor(BARE, bare, 'cycles') }),
      ms('W9.prepare.p50', 'prepare p50, 16 callers', pick(one, 'prepareP50'), floor(BARE, bare, 'prepareP50')),
      ms('W9.prepare.p99', 'prepare p99, 16 callers', pick(one, 'prepareP99'), { goal: 5, ...floor(BARE, bare, 'prepareP99') }),
      ms('W9.remove.p50', 'remove p50, 16 callers', pick(one, 'removeP50'), floor(BARE, bare, 'removeP50')),
      ms('W9.remove.p99', 'remove p99, 16 callers', pick(one, 'removeP99'), { goal: 5, ...floor(BARE, bare, 'removeP99') }),
      metric(ctx, { id: 'W9mp.prepare', label: 'prepares/s, 4 processes × 4', unit: 'ops/s', samples: pick(multi, 'prepares'), goal: { cmp: '>=', value: 5600 }, ...floor(BARE, bare, 'prepares') }),
      metric(ctx, { id: 'W9mp.remove', label: 'removes/s, 4 processes × 4', unit: 'ops/s', samples: pick(multi, 'removes'), goal: { cmp: '>=', value: 2800 }, ...floor(BARE, bare, 'removes') }),
      metric(ctx, { id: 'W9mp.cycles', label: 'cycles/s, 4 processes × 4 (wall)', unit: 'ops/s', samples: pick(multi, 'cycles'), ...floor(BARE, bare, 'cycles') }),
      ms('W9mp.prepare.p99', 'prepare p99, 4 processes × 4', pick(multi, 'prepareP99'), { goal: 5 }),
      ms('W9mp.remove.p99', 'remove p99, 4 processes × 4', pick(multi, 'removeP99'), { goal: 5 }),
      metric(ctx, {
        id: 'W9.bare.best',
        label: 'bare syscalls, best thread count: cycles/s',
        unit: 'ops/s',
        samples: bare.map((_, r) => Math.max(...sweep.map((c) => scaling.get(c)!.bare[r]!.cycles))),
      }),
      metric(ctx, { id: 'W9.w2.prepare', label: 'serial W2 prepare/s, same run', unit: 'ops/s', samples: serial.map((s) => s.prepare) }),
      metric(ctx, { id: 'W9.w2.remove', label: 'serial W2 remove/s, same run', unit: 'ops/s', samples: serial.map((s) => s.remove) }),
      ...sweep.flatMap((c) => {
        const { ours, bare: b } = scaling.get(c)!;
        const who = `${c} caller${c === 1 ? '' : 's'}`;
        const label = `bare syscalls, ${c} thread${c === 1 ? '' : 's'}`;
        return [
          metric(ctx, { id: `W9.c${c}.prepare`, label: `${who}: prepares/s`, unit: 'ops/s', samples: pick(ours, 'prepares'), ...floor(label, b, 'prepares') }),
          metric(ctx, { id: `W9.c${c}.remove`, label: `${who}: removes/s`, unit: 'ops/s', samples: pick(ours, 'removes'), ...floor(label, b, 'removes') }),
          metric(ctx, { id: `W9.c${c}.cycles`, label: `${who}: cycles/s (wall)`, unit: 'ops/s', samples: pick(ours, 'cycles'), ...floor(label, b, 'cycles') }),
          ms(`W9.c${c}.prepare.p99`, `${who}: prepare p99`, pick(ours, 'prepareP99'), floor(label, b, 'prepareP99')),
          ms(`W9.c${c}.remove.p99`, `${who}: remove p99`, pick(ours, 'removeP99'), floor(label, b, 'removeP99')),
        ];
      }),
    ],
  };
}

if (process.argv[2] === '--w9-child') {
  child(process.argv.slice(3)).catch((err: Error) => {
    process.stderr.write(`${err.stack ?? err.message}\n`);
    process.exit(1);
  });
}
