/**
 * Shared helpers of the W1–W8 workloads (bench-workloads.md): fresh roots
 * marked `chattr +T`, `sync` before timed phases, medians, store
 * population, and the result shapes the runner prints and writes as JSON.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { Snapshotter, unmountAll, type SnapshotterOptions } from '../lib/index.js';

/** What every workload gets from the runner. */
export interface Context {
  /** `--quick`: every size divided by 10. */
  readonly quick: boolean;
  /** Runs per workload; the figures are medians over them. */
  readonly runs: number;
  /** Directory (on the filesystem under test) that holds the fresh roots. */
  readonly base: string;
  /** Progress, to stderr. */
  log(message: string): void;
}

/**
 * A goal from issue 6: `>=` for throughput, `<=` for durations and ratios.
 * Always an absolute figure, never one relative to another program's.
 */
export interface Goal {
  readonly cmp: '>=' | '<=';
  readonly value: number;
}

/** A figure measured elsewhere, and where it comes from. */
export interface Reference {
  readonly value: number;
  /** Who measured it, when, where: e.g. containerd's version, the issue, "another day". */
  readonly source: string;
}

/** containerd v1.7.13's figure from issue 6's table: measured on another day, on this kind of machine, not in this run. */
export function containerdOtherDay(value: number): Reference {
  return { value, source: "containerd v1.7.13's overlay snapshotter, issue 6's table (another day, not this run)" };
}

/** One figure of a workload. */
export interface Metric {
  /** Stable id, e.g. `W2.prepare`. */
  id: string;
  /** What it is, for the table. */
  label: string;
  /** `ops/s`, `s`, `ms`, `µs`, `x` (a ratio) or `bytes`. */
  unit: 'ops/s' | 's' | 'ms' | 'µs' | 'x' | 'bytes';
  /** Median over the runs. */
  median: number;
  /** One value per run. */
  samples: number[];
  /**
   * The floor, measured in the same run, interleaved with ours: the same
   * work done with no metadata store (W1/W2), `du -s` (W5), the cycle done
   * with bare syscalls (W8, bench/bare-cycle.ts).
   */
  floor?: { label: string; median: number; samples: number[] };
  /**
   * `median / floor.median`. For throughput, the share of the floor's rate
   * reached (1 = as fast as the floor); for durations, how many times the
   * floor's time ours takes (1.1 = 10 % slower than the floor).
   */
  vsFloor?: number;
  /**
   * A figure from another day, for orientation only: not measured in this
   * run, so no ratio is taken against it and {@link met} never uses it.
   */
  reference?: Reference;
  goal?: Goal;
  /** Whether the goal is met; null for `--quick` runs (sizes differ from the goal's). */
  met?: boolean | null;
  note?: string;
}

/** One workload's result, as the child process reports it. */
export interface WorkloadResult {
  id: string;
  name: string;
  /** The sizes actually run. */
  size: Record<string, number>;
  runs: number;
  metrics: Metric[];
  /** Extra facts (e.g. agreement with du). */
  details?: Record<string, unknown>;
  /** Set when the workload could not run here (e.g. W8 without root). */
  skipped?: string;
  /** Peak resident set of the child process that ran the workload, MiB. */
  peakRssMiB?: number;
  /** Wall time of the whole workload, setup included, seconds. */
  wallSeconds?: number;
}

export type Workload = (ctx: Context) => Promise<WorkloadResult>;

/** `n` at full size, `n / 10` (at least 1) with `--quick`. */
export function sized(ctx: Context, n: number): number {
  return ctx.quick ? Math.max(1, Math.round(n / 10)) : n;
}

export function median(values: readonly number[]): number {
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

/** Seconds elapsed while `fn` runs. */
export async function seconds(fn: () => unknown): Promise<number> {
  const start = performance.now();
  await fn();
  return (performance.now() - start) / 1000;
}

/**
 * Run before each timed phase: flushes all dirty data so that earlier
 * writeback does not land inside the phase, and collects garbage (children
 * run with --expose-gc) so that setup's garbage is not collected inside it.
 */
export function syncAll(): void {
  execFileSync('sync');
  (globalThis as { gc?: () => void }).gc?.();
}

/**
 * A fresh root for one run: a new directory under `ctx.base` marked
 * `chattr +T`, so that ext4's Orlov allocator places what is made in it as
 * on a new filesystem (elsewhere the flag is refused, which is fine), and
 * inside it a path with a unique name for the snapshotter root (not created).
 *
 * The name must differ run by run: Orlov starts its search for a top
 * directory's block group at a hash of the name, so a fixed name puts every
 * run in the same flex group. And nothing is deleted until the runner
 * finishes: ext4 skips inodes freed in the last minute or more when it
 * allocates (`recently_deleted()`, in no-journal mode), so a run placed
 * where the previous one deleted its tree would pay a scan per mkdir.
 */
export function freshRoot(ctx: Context, tag: string): string {
  mkdirSync(ctx.base, { recursive: true });
  const dir = mkdtempSync(join(ctx.base, `${tag}-`));
  try {
    execFileSync('chattr', ['+T', dir], { stdio: 'ignore' });
  } catch {
    // Not ext4 (or no chattr): the allocator hint does not apply.
  }
  return join(dir, `${tag}-${randomBytes(6).toString('hex')}`);
}

/**
 * Ends a run's use of its root: unmounts anything left mounted below it.
 * The tree itself stays until the runner deletes the whole base directory
 * (see {@link freshRoot} for why).
 */
export async function dropRoot(root: string): Promise<void> {
  const dir = dirname(root);
  const below = readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((l) => l.split(' ')[4])
    .filter((p): p is string => p !== undefined && (p === dir || p.startsWith(`${dir}/`)))
    .sort((a, b) => b.length - a.length);
  for (const p of below) await unmountAll(p);
}

/** Opens a snapshotter on a root from {@link freshRoot} with the bench's defaults (default durability). */
export function open(root: string, options: SnapshotterOptions = {}): Promise<Snapshotter> {
  return Snapshotter.open(root, options);
}

export { upperOf } from '../test/helpers/fixtures.js';

/** A deterministic pseudo-random generator, so that every run does the same work. */
export { prng as rng } from '../test/helpers/prng.js';

/** A containerd-like chain id for layer `i`. */
export function layerName(i: number): string {
  return `sha256:${(i * 2654435761).toString(16).padStart(16, '0').repeat(4).slice(0, 64)}`;
}

/** What {@link populate} made. */
export interface Population {
  committed: string[];
  actives: string[];
  views: string[];
  /** Keys carrying the label `x=y` (1 % of all). */
  marked: string[];
}

/**
 * Fills a store with `n` snapshots shaped like a busy node's: image layers
 * committed in chains of depth 10 (40 %), containers as actives on top of
 * them (50 %), views (10 %). Every snapshot has two labels, as containerd's
 * metadata layer sets them, and every 100th also `x=y` for W4's filter.
 */
export async function populate(sn: Snapshotter, n: number, log?: (m: string) => void): Promise<Population> {
  const pop: Population = { committed: [], actives: [], views: [], marked: [] };
  const labelsFor = (i: number, key: string): Record<string, string> => {
    const labels: Record<string, string> = {
      'containerd.io/snapshot.ref': key,
      'containerd.io/gc.root': i % 2 === 0 ? 'true' : '2024-01-01T00:00:00Z',
    };
    if (i % 100 === 0) {
      labels.x = 'y';
      pop.marked.push(key);
    }
    return labels;
  };
  let made = 0;
  let layer = 0;
  let top = '';
  let container = 0;
  const started = performance.now();
  while (made < n) {
    const slot = made % 10;
    if (slot < 4) {
      // A layer: on the previous one, a new chain every 10 layers.
      const name = layerName(++layer);
      const parent = layer % 10 === 1 ? '' : top;
      const key = `extract-${layer}`;
      await sn.prepare(key, parent);
      await sn.commit(name, key, { labels: labelsFor(made, name) });
      pop.committed.push(name);
      top = name;
    } else if (slot < 9 || pop.committed.length === 0) {
      const key = `default/${++container}/ctr-${container}`;
      await sn.prepare(key, pop.committed[container % pop.committed.length] ?? '', { labels: labelsFor(made, key) });
      pop.actives.push(key);
    } else {
      const key = `default/${++container}/view-${container}`;
      await sn.view(key, pop.committed[container % pop.committed.length]!, { labels: labelsFor(made, key) });
      pop.views.push(key);
    }
    made++;
    if (log !== undefined && made % 10000 === 0) log(`  populated ${made}/${n} (${Math.round(made / ((performance.now() - started) / 1000))}/s)`);
  }
  return pop;
}

/**
 * Builds a metric from per-run samples. Whether it is met depends on its
 * goal alone, never on the reference.
 */
export function metric(ctx: Context, m: Omit<Metric, 'median' | 'vsFloor' | 'met'>): Metric {
  const out: Metric = { ...m, median: median(m.samples) };
  if (m.floor !== undefined) out.vsFloor = out.median / m.floor.median;
  if (m.goal !== undefined) {
    out.met = ctx.quick ? null : m.goal.cmp === '>=' ? out.median >= m.goal.value : out.median <= m.goal.value;
  }
  return out;
}

/** A floor figure (see {@link Metric.floor}) from per-run samples. */
export function floorOf(label: string, samples: number[]): NonNullable<Metric['floor']> {
  return { label, median: median(samples), samples };
}

/** Throughput of `ops` operations done in `secs`. */
export function rate(ops: number, secs: number): number {
  return ops / secs;
}
