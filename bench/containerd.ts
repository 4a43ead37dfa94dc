/**
 * Our snapshotter beside containerd's own, through containerd's snapshots
 * API (the same gRPC client for every column):
 *
 *   (a) containerd → its built-in `overlayfs` snapshotter
 *   (b) containerd → our proxy plugin (`overlay-snapshotter serve`)
 *   (c) ours in-process (the library called directly)
 *   (d) ours over our own socket, no containerd between
 *
 *   npx tsx bench/containerd.ts [--quick] [--runs N] [--json FILE] [--dir DIR] [--syncs]
 *
 * Workloads (bench-workloads.md): W1 layer chain, W2 container fan-out,
 * a W8-like cycle (prepare, mount, unmount, remove on a 20-layer parent),
 * and W3-like lookups (stat, mounts) for the cost of one call. Within each
 * workload the four configurations take turns block by block (a tenth of
 * the workload each, the order rotating, a `sync` before each block), so
 * that a change of the machine's load (other jobs) falls on all four
 * alike; a run's rate for a configuration is its operations over the time
 * of its own blocks. All on one filesystem, with one containerd and two
 * server processes for the whole bench. Needs root, containerd, ctr and
 * runc; the containerd is the tests' own (temp dirs, private mount
 * namespace), never the machine's.
 *
 * containerd forgets a removed snapshot at once and deletes it from the
 * snapshotter at its next garbage collection: for (a) and (b) each timed
 * block of removals ends with one synchronous collection (`ctr leases rm
 * --sync`), so that it includes the snapshotter's own removals. Both sides
 * make metadata durable at each call and leave layer data to writeback:
 * containerd's overlayfs commits its bolt database (fdatasync) and does
 * not sync layers; our servers and library run without `durableLayers`
 * (one fdatasync of the WAL per call). `--syncs` counts, with strace, the
 * syncs each process makes per call.
 */
import { execFileSync, spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, release, tmpdir, totalmem } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { Snapshotter, mountAll, unmountAll } from '../lib/index.js';
import { type RemoteSnapshotter, connect } from '../lib/server/index.js';
import { type Containerd, containerdSkipReason, startContainerd } from '../test/helpers/containerd.js';
import { type ServeProcess, startServe } from '../test/helpers/grpc.js';
import { median, syncAll, upperOf } from './common.js';

/** What every configuration offers: the library's methods, locally or over a socket. */
type Target = Pick<Snapshotter, 'prepare' | 'commit' | 'remove' | 'stat' | 'mounts'>;

const CONFIGS = ['a', 'b', 'c', 'd'] as const;
type Config = (typeof CONFIGS)[number];
const CONFIG_NAMES: Record<Config, string> = {
  a: '(a) containerd → overlayfs',
  b: '(b) containerd → ours (proxy)',
  c: '(c) ours in-process',
  d: '(d) ours over our socket',
};
const OPS = ['prepare', 'commit', 'remove', 'stat', 'mounts'] as const;
type Op = (typeof OPS)[number];

interface Args {
  quick: boolean;
  runs: number;
  json: string | undefined;
  dir: string;
  syncs: boolean;
}

/** The JSON document `--json` writes. */
export interface ContainerdBenchReport {
  version: 1;
  quick: boolean;
  runs: number;
  date: string;
  sizes: { w1Chain: number; w2Containers: number; w8Cycles: number; lookups: number };
  machine: { cpu: string; cpus: number; memoryGiB: number; kernel: string; node: string; containerd: string; base: string };
  /** Throughput rows: per-run samples and medians for each configuration; `bVsA` is the median of the runs' (b)÷(a). */
  rows: { id: string; label: string; unit: 'ops/s'; samples: Record<Config, number[]>; median: Record<Config, number>; bVsA: number; bVsASamples: number[] }[];
  /** Median latency of each call in µs, over every call of every run, and the hop (d − c). */
  calls: { op: Op; medianUs: Record<Config, number>; hopUs: number; count: Record<Config, number> }[];
  /** With `--syncs`: syncs per call of containerd and of our proxy server, for (a) and (b). */
  syncs?: { config: 'a' | 'b'; op: string; containerd: Record<string, number>; ours: Record<string, number> }[];
}

function parseArgs(argv: string[]): Args {
  const args: Args = { quick: false, runs: 5, json: undefined, dir: join(tmpdir(), 'ovl-bench-containerd'), syncs: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const value = (): string => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${a} needs a value`);
      return v;
    };
    if (a === '--quick') args.quick = true;
    else if (a === '--runs') args.runs = Number(value());
    else if (a === '--json') args.json = value();
    else if (a === '--dir') args.dir = value();
    else if (a === '--syncs') args.syncs = true;
    else throw new Error(`unknown argument ${a}; usage: bench/containerd.ts [--quick] [--runs N] [--json FILE] [--dir DIR] [--syncs]`);
  }
  if (!Number.isInteger(args.runs) || args.runs < 1) throw new Error('--runs needs a positive integer');
  return args;
}

const DATA = Buffer.alloc(4096, 0x61);

/** Per-call latencies, by configuration and call. */
type Latencies = Record<Config, Record<Op, number[]>>;

/** One configuration as the workloads see it. */
interface Side {
  config: Config;
  /** The target for run `run` (a fresh containerd namespace, or a fresh key prefix). */
  target(run: number): Target;
  /** Key prefix of run `run` (containerd's namespaces keep runs apart on their own). */
  prefix(run: number): string;
  /** Makes removals final: containerd's synchronous garbage collection for (a) and (b), nothing for ours. */
  collect(run: number): Promise<void>;
}

/** Wraps `target` so that each call's latency lands in `into`. */
function timed(target: Target, into: Record<Op, number[]>): Target {
  const time = async <T>(op: Op, call: () => Promise<T>): Promise<T> => {
    const start = performance.now();
    const out = await call();
    into[op].push((performance.now() - start) * 1000);
    return out;
  };
  return {
    prepare: (key, parent, opts) => time('prepare', () => target.prepare(key, parent, opts)),
    commit: (name, key, opts) => time('commit', () => target.commit(name, key, opts)),
    remove: (key) => time('remove', () => target.remove(key)),
    stat: (key) => time('stat', () => target.stat(key)),
    mounts: (key) => time('mounts', () => target.mounts(key)),
  };
}

/** A committed chain of `depth` layers named `${p}layer-i`, one small file each; returns the top's name. */
async function chain(t: Target, p: string, depth: number): Promise<string> {
  let parent = '';
  for (let i = 1; i <= depth; i++) {
    const upper = upperOf(await t.prepare(`${p}layer-${i}-extract`, parent));
    writeFileSync(`${upper}/file-${i}`, `layer ${i}\n`);
    await t.commit(`${p}layer-${i}`, `${p}layer-${i}-extract`);
    parent = `${p}layer-${i}`;
  }
  return parent;
}

async function dropChain(t: Target, p: string, depth: number, name = (i: number) => `${p}layer-${i}`): Promise<void> {
  for (let i = depth; i >= 1; i--) await t.remove(name(i));
}

/** Blocks a workload is cut into: the configurations take turns block by block. */
const BLOCKS = 10;

/**
 * Runs `blocks` rounds; in each, every side does its block `b` of `work`
 * (which returns how many operations it made), the order rotating, each
 * block timed after a `sync`. Returns each side's operations per second
 * over its own blocks.
 */
async function interleaved(sides: readonly Side[], blocks: number, work: (side: Side, block: number) => Promise<number>): Promise<Record<Config, number>> {
  const ops: Record<Config, number> = { a: 0, b: 0, c: 0, d: 0 };
  const secs: Record<Config, number> = { a: 0, b: 0, c: 0, d: 0 };
  for (let b = 0; b < blocks; b++) {
    for (let i = 0; i < sides.length; i++) {
      const side = sides[(i + b) % sides.length]!;
      syncAll();
      const start = performance.now();
      ops[side.config] += await work(side, b);
      secs[side.config] += (performance.now() - start) / 1000;
    }
  }
  return { a: ops.a / secs.a, b: ops.b / secs.b, c: ops.c / secs.c, d: ops.d / secs.d };
}

/** Items `[from, to]` (1-based) of block `b` when `n` items are cut into `blocks`. */
function slice(n: number, blocks: number, b: number): [number, number] {
  const size = Math.ceil(n / blocks);
  return [b * size + 1, Math.min(n, (b + 1) * size)];
}

interface Sizes {
  w1Chain: number;
  w2Containers: number;
  w8Cycles: number;
  lookups: number;
}

type Samples = Record<string, Record<Config, number[]>>;

function record(samples: Samples, id: string, rates: Record<Config, number>, sides: readonly Side[]): void {
  for (const side of sides) samples[id]![side.config].push(rates[side.config]);
}

/** W1: prepare on the previous layer, 4 KiB into the upper dir, commit; each chain grows to `n`. */
async function w1(sides: readonly Side[], run: number, n: number, lat: Latencies, samples: Samples): Promise<void> {
  const parents = new Map<Config, string>();
  const name = (side: Side, i: number) => `${side.prefix(run)}w1/c-${i}`;
  const rates = await interleaved(sides, BLOCKS, async (side, b) => {
    const t = timed(side.target(run), lat[side.config]);
    const [from, to] = slice(n, BLOCKS, b);
    let parent = parents.get(side.config) ?? '';
    for (let i = from; i <= to; i++) {
      const key = `${side.prefix(run)}w1/a-${i}`;
      writeFileSync(`${upperOf(await t.prepare(key, parent))}/file`, DATA);
      await t.commit(name(side, i), key);
      parent = name(side, i);
    }
    parents.set(side.config, parent);
    return to - from + 1;
  });
  record(samples, 'W1.steps', rates, sides);
  for (const side of sides) {
    await dropChain(side.target(run), '', n, (i) => name(side, i));
    await side.collect(run);
  }
}

/** W2: `m` containers on a depth-10 parent, prepared then removed; W3-like lookups between. */
async function w2(sides: readonly Side[], run: number, sizes: Sizes, lat: Latencies, samples: Samples | undefined): Promise<void> {
  const m = sizes.w2Containers;
  const p = (side: Side) => `${side.prefix(run)}w2/`;
  const tops = new Map<Config, string>();
  for (const side of sides) tops.set(side.config, await chain(side.target(run), p(side), 10));
  const blocks = Math.min(BLOCKS, m);
  const prepared = await interleaved(sides, blocks, async (side, b) => {
    const t = timed(side.target(run), lat[side.config]);
    const [from, to] = slice(m, blocks, b);
    for (let j = from; j <= to; j++) await t.prepare(`${p(side)}ctr-${j}`, tops.get(side.config)!);
    return to - from + 1;
  });
  await interleaved(sides, blocks, async (side, b) => {
    const t = timed(side.target(run), lat[side.config]);
    const [from, to] = slice(sizes.lookups, blocks, b);
    for (let i = from; i <= to; i++) {
      const key = `${p(side)}ctr-${1 + ((i * 7919) % m)}`;
      await t.stat(key);
      await t.mounts(key);
    }
    return to - from + 1;
  });
  const removed = await interleaved(sides, blocks, async (side, b) => {
    const t = timed(side.target(run), lat[side.config]);
    const [from, to] = slice(m, blocks, b);
    for (let j = from; j <= to; j++) await t.remove(`${p(side)}ctr-${j}`);
    await side.collect(run);
    return to - from + 1;
  });
  if (samples !== undefined) {
    record(samples, 'W2.prepare', prepared, sides);
    record(samples, 'W2.remove', removed, sides);
  }
  for (const side of sides) {
    await dropChain(side.target(run), p(side), 10);
    await side.collect(run);
  }
}

/** W8-like: prepare on a 20-layer parent, mount, unmount, remove. */
async function w8(sides: readonly Side[], run: number, cycles: number, target: string, lat: Latencies, samples: Samples): Promise<void> {
  const p = (side: Side) => `${side.prefix(run)}w8/`;
  const tops = new Map<Config, string>();
  const cycle = async (side: Side, key: string, t: Target) => {
    await mountAll(await t.prepare(key, tops.get(side.config)!), target);
    await unmountAll(target);
    await t.remove(key);
  };
  for (const side of sides) {
    tops.set(side.config, await chain(side.target(run), p(side), 20));
    for (let i = 0; i < 3; i++) await cycle(side, `${p(side)}warm-${i}`, side.target(run));
  }
  const blocks = Math.min(BLOCKS, cycles);
  const rates = await interleaved(sides, blocks, async (side, b) => {
    const t = timed(side.target(run), lat[side.config]);
    const [from, to] = slice(cycles, blocks, b);
    for (let i = from; i <= to; i++) await cycle(side, `${p(side)}ctr-${i}`, t);
    await side.collect(run);
    return to - from + 1;
  });
  record(samples, 'W8.cycles', rates, sides);
  for (const side of sides) {
    await dropChain(side.target(run), p(side), 20);
    await side.collect(run);
  }
}

/** strace's counts (`-c`) of the sync calls in `file`, per call of the phase (`n` calls). */
function syncCounts(file: string, n: number): Record<string, number> {
  const out: Record<string, number> = {};
  for (const line of readFileSync(file, 'utf8').split('\n')) {
    const cols = line.trim().split(/\s+/);
    // % time, seconds, usecs/call, calls, [errors], syscall
    if (cols.length < 5 || !/^\d/.test(cols[0]!) || cols[cols.length - 1] === 'total') continue;
    out[cols[cols.length - 1]!] = Number(cols[3]) / n;
  }
  return out;
}

/** `--syncs`: the syncs containerd and our proxy server make per call, for 50 calls of each kind through (a) and (b). */
async function countSyncs(ctd: Containerd, proxyPid: number, base: string, collect: (run: number) => Promise<void>): Promise<NonNullable<ContainerdBenchReport['syncs']>> {
  const n = 50;
  const out: NonNullable<ContainerdBenchReport['syncs']> = [];
  const run = 0;
  for (const [config, snapshotter] of [['a', 'overlayfs'], ['b', 'ovl']] as const) {
    const client = connect(ctd.address, { snapshotter, namespace: `bench-${run}`, lease: 'bench' });
    try {
      for (const op of ['prepare', 'commit', 'remove + collection'] as const) {
        const files = [join(base, `syncs-ctd-${config}.txt`), join(base, `syncs-ours-${config}.txt`)];
        const tracers = [ctd.pid, proxyPid].map((pid, i) =>
          spawn('strace', ['-f', '-c', '-e', 'trace=fsync,fdatasync,syncfs,sync_file_range,sync,msync', '-o', files[i]!, '-p', String(pid)], { stdio: 'ignore' }),
        );
        await new Promise((r) => setTimeout(r, 1000));
        for (let i = 0; i < n; i++) {
          if (op === 'prepare') writeFileSync(`${upperOf(await client.prepare(`syncs-a-${i}`))}/file`, DATA);
          else if (op === 'commit') await client.commit(`syncs-c-${i}`, `syncs-a-${i}`);
          else await client.remove(`syncs-c-${i}`);
        }
        if (op === 'remove + collection') await collect(run);
        await new Promise((r) => setTimeout(r, 300));
        for (const t of tracers) t.kill('SIGINT');
        await Promise.all(tracers.map((t) => new Promise((r) => t.once('exit', r))));
        out.push({ config, op, containerd: syncCounts(files[0]!, n), ours: syncCounts(files[1]!, n) });
      }
    } finally {
      await client.close();
    }
  }
  return out;
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  if (process.geteuid?.() !== 0) throw new Error('bench/containerd.ts runs containerd and mounts: run it as root');
  const reason = containerdSkipReason();
  if (reason !== undefined) throw new Error(reason);
  const div = args.quick ? 10 : 1;
  const sizes: Sizes = { w1Chain: 1000 / div, w2Containers: 2000 / div, w8Cycles: 200 / div, lookups: 2000 / div };

  mkdirSync(args.dir, { recursive: true });
  const base = mkdtempSync(join(args.dir, 'run-'));
  try {
    execFileSync('chattr', ['+T', base], { stdio: 'ignore' });
  } catch {
    // Not ext4: the allocator hint does not apply.
  }
  const log = (m: string) => process.stderr.write(`${m}\n`);
  const servers: ServeProcess[] = [];
  const clients: RemoteSnapshotter[] = [];
  let containerd: Containerd | undefined;
  let local: Snapshotter | undefined;
  const target = join(base, 'rootfs');
  mkdirSync(target);
  try {
    // Two servers: one behind containerd (b), one called directly (d); neither syncs layer data.
    const proxy = await startServe(join(base, 'ours-b'), join(base, 'b.sock'), ['--no-durable-layers']);
    servers.push(proxy);
    const direct = await startServe(join(base, 'ours-d'), join(base, 'd.sock'), ['--no-durable-layers']);
    servers.push(direct);
    containerd = await startContainerd({
      dir: join(base, 'containerd'),
      namespace: 'bench',
      proxies: { ovl: proxy.address },
      // Collections only when the bench asks for one, never in the middle of a timed phase.
      extraConfig: '[plugins."io.containerd.gc.v1.scheduler"]\n  deletion_threshold = 0\n  mutation_threshold = 1000000000\n  pause_threshold = 0.02\n',
    });
    const ctd = containerd;
    local = await Snapshotter.open(join(base, 'ours-c'), { durableLayers: false });
    const dClient = connect(direct.address);
    clients.push(dClient);
    // Everything a run makes through containerd is held by a lease of the run: containerd's
    // collector deletes only what the bench removed, and only when the bench asks.
    const viaContainerd = new Map<string, RemoteSnapshotter>();
    const nsClient = (snapshotter: string, run: number) => {
      const key = `${snapshotter}/${run}`;
      let c = viaContainerd.get(key);
      if (c === undefined) {
        c = connect(ctd.address, { snapshotter, namespace: `bench-${run}`, lease: 'bench' });
        viaContainerd.set(key, c);
        clients.push(c);
      }
      return c;
    };
    for (let run = 0; run <= args.runs; run++) await ctd.ctr('--namespace', `bench-${run}`, 'leases', 'create', '--id', 'bench');
    let leases = 0;
    const collect = async (run: number) => {
      const id = `gc-${++leases}`;
      await ctd.ctr('--namespace', `bench-${run}`, 'leases', 'create', '--id', id);
      await ctd.ctr('--namespace', `bench-${run}`, 'leases', 'rm', '--sync', id);
    };
    const sides: Record<Config, Side> = {
      a: { config: 'a', target: (run) => nsClient('overlayfs', run), prefix: () => '', collect },
      b: { config: 'b', target: (run) => nsClient('ovl', run), prefix: () => '', collect },
      c: { config: 'c', target: () => local!, prefix: (run) => `r${run}/`, collect: async () => {} },
      d: { config: 'd', target: () => dClient, prefix: (run) => `r${run}/`, collect: async () => {} },
    };
    const emptyLat = (): Record<Op, number[]> => ({ prepare: [], commit: [], remove: [], stat: [], mounts: [] });
    const lat: Latencies = { a: emptyLat(), b: emptyLat(), c: emptyLat(), d: emptyLat() };
    const rowIds = { 'W1.steps': 'W1 layer chain: steps/s', 'W2.prepare': 'W2 fan-out: prepare/s', 'W2.remove': 'W2 fan-out: remove/s', 'W8.cycles': 'W8-like: cycles/s (20-layer overlay)' } as const;
    const samples: Samples = Object.fromEntries(Object.keys(rowIds).map((id) => [id, { a: [], b: [], c: [], d: [] }]));

    // Warm-up: every path once (JIT, connections, containerd's plugin load).
    const all = CONFIGS.map((c) => sides[c]);
    await w2(all, 0, { ...sizes, w2Containers: 20, lookups: 20 }, { a: emptyLat(), b: emptyLat(), c: emptyLat(), d: emptyLat() }, undefined);

    for (let run = 1; run <= args.runs; run++) {
      for (const [name, workload] of [
        ['W1', () => w1(all, run, sizes.w1Chain, lat, samples)],
        ['W2', () => w2(all, run, sizes, lat, samples)],
        ['W8', () => w8(all, run, sizes.w8Cycles, target, lat, samples)],
      ] as const) {
        const started = performance.now();
        await workload();
        log(`run ${run}/${args.runs} ${name}: ${((performance.now() - started) / 1000).toFixed(1)} s`);
      }
    }

    const rows = Object.entries(rowIds).map(([id, label]) => {
      const s = samples[id]!;
      const med = { a: median(s.a), b: median(s.b), c: median(s.c), d: median(s.d) };
      const bVsASamples = s.b.map((b, i) => b / s.a[i]!);
      return { id, label, unit: 'ops/s' as const, samples: s, median: med, bVsA: median(bVsASamples), bVsASamples };
    });
    const calls = OPS.map((op) => {
      const medianUs = { a: median(lat.a[op]), b: median(lat.b[op]), c: median(lat.c[op]), d: median(lat.d[op]) };
      return { op, medianUs, hopUs: medianUs.d - medianUs.c, count: { a: lat.a[op].length, b: lat.b[op].length, c: lat.c[op].length, d: lat.d[op].length } };
    });
    const report: ContainerdBenchReport = {
      version: 1,
      quick: args.quick,
      runs: args.runs,
      date: new Date().toISOString(),
      sizes,
      machine: {
        cpu: cpus()[0]?.model ?? 'unknown cpu',
        cpus: cpus().length,
        memoryGiB: Math.round(totalmem() / 2 ** 30),
        kernel: release(),
        node: process.versions.node,
        containerd: execFileSync('containerd', ['--version'], { encoding: 'utf8' }).trim(),
        base: args.dir,
      },
      rows,
      calls,
    };
    if (args.syncs) report.syncs = await countSyncs(ctd, proxy.pid, base, collect);
    process.stdout.write(`${table(report)}\n`);
    if (args.json !== undefined) writeFileSync(args.json, `${JSON.stringify(report, null, 2)}\n`);
  } finally {
    for (const c of clients) await c.close();
    await local?.close();
    await containerd?.stop();
    for (const s of servers) await s.stop();
    await unmountAll(target).catch(() => {});
    rmSync(base, { recursive: true, force: true });
  }
}

function table(report: ContainerdBenchReport): string {
  const num = (v: number) => (Number.isFinite(v) ? (v >= 100 ? Math.round(v).toLocaleString('en-US') : v.toFixed(1)) : '');
  const head = ['workload', ...CONFIGS.map((c) => CONFIG_NAMES[c]), '(b)÷(a)', '(b)÷(a) by run'];
  const rows = report.rows.map((r) => [r.label, ...CONFIGS.map((c) => num(r.median[c])), `${r.bVsA.toFixed(2)}×`, r.bVsASamples.map((x) => x.toFixed(2)).join(' ')]);
  const callHead = ['call, median µs', ...CONFIGS.map((c) => CONFIG_NAMES[c]), 'hop (d)−(c)'];
  const callRows = report.calls.map((c) => [c.op, ...CONFIGS.map((k) => num(c.medianUs[k])), num(c.hopUs)]);
  const render = (h: string[], rs: string[][]) => {
    const widths = h.map((x, i) => Math.max(x.length, ...rs.map((r) => r[i]!.length)));
    const line = (cells: string[]) => `| ${cells.map((cell, i) => (i === 0 ? cell.padEnd(widths[i]!) : cell.padStart(widths[i]!))).join(' | ')} |`;
    return [line(h), `|${widths.map((w, i) => (i === 0 ? '-'.repeat(w + 2) : `${'-'.repeat(w + 1)}:`)).join('|')}|`, ...rs.map(line)];
  };
  const m = report.machine;
  return [
    `ours beside containerd's overlayfs through containerd's snapshots API${report.quick ? ' (--quick: sizes / 10)' : ''}, median of ${report.runs} runs (the configurations taking turns in blocks), ${report.date}`,
    `machine: ${m.cpu} ×${m.cpus}, ${m.memoryGiB} GiB, Linux ${m.kernel}, Node ${m.node}, ${m.containerd}`,
    `sizes: W1 chain ${report.sizes.w1Chain}, W2 ${report.sizes.w2Containers} containers, W8-like ${report.sizes.w8Cycles} cycles, ${report.sizes.lookups} stat + mounts`,
    '',
    ...render(head, rows),
    '(b)÷(a): within each run, all four configurations measured in that run, taking turns block by block; no figure from another day.',
    '',
    ...render(callHead, callRows),
    ...(report.syncs === undefined
      ? []
      : [
          '',
          ...render(
            ['syncs per call (strace)', 'containerd', 'our server'],
            report.syncs.map((s) => {
              const list = (r: Record<string, number>) => Object.entries(r).map(([k, v]) => `${k} ${v.toFixed(1)}`).join(', ') || '0';
              return [`${CONFIG_NAMES[s.config]}: ${s.op}`, list(s.containerd), s.config === 'a' ? '' : list(s.ours)];
            }),
          ),
        ]),
  ].join('\n');
}

main().catch((err: unknown) => {
  process.stderr.write(`${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exit(1);
});
