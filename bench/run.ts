/**
 * Runs the benchmark workloads W1–W8 of bench-workloads.md and prints a
 * table; see docs/performance.md.
 *
 *   npm run bench -- [--quick] [--json FILE] [--only W1,W3] [--runs N] [--dir DIR] [--cpu-prof DIR]
 *
 * Each workload runs in its own child process, so that its peak RSS is its
 * own and one workload's heap does not slow the next. Within a workload,
 * the compared figures (ours and the floor, `du`, store sizes) are taken
 * interleaved, run by run or block by block. Figures from another day
 * (issue 6's containerd) are shown apart and never compared with.
 */
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, release, tmpdir, totalmem } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Context, Metric, WorkloadResult } from './common.js';

const WORKLOADS: Record<string, { file: string; name: string }> = {
  W1: { file: './w1-chain.js', name: 'layer chain' },
  W2: { file: './w2-fanout.js', name: 'container fan-out' },
  W3: { file: './w3-lookups.js', name: 'lookups' },
  W4: { file: './w4-walk.js', name: 'walk' },
  W5: { file: './w5-usage.js', name: 'usage' },
  W6: { file: './w6-cleanup.js', name: 'cleanup' },
  W7: { file: './w7-scaling.js', name: 'scaling' },
  W8: { file: './w8-mount.js', name: 'mount' },
  W9: { file: './w9-concurrent.js', name: 'many callers' },
};

/** The JSON document `--json` writes. */
export interface Report {
  version: 1;
  quick: boolean;
  runs: number;
  date: string;
  machine: { cpu: string; cpus: number; memoryGiB: number; kernel: string; node: string; filesystem: string; base: string };
  workloads: WorkloadResult[];
}

interface Args {
  quick: boolean;
  json: string | undefined;
  only: string[];
  runs: number;
  dir: string;
  cpuProf: string | undefined;
  child: string | undefined;
  out: string | undefined;
}

function parseArgs(argv: string[]): Args {
  const args: Args = { quick: false, json: undefined, only: Object.keys(WORKLOADS), runs: 5, dir: join(tmpdir(), 'ovl-bench'), cpuProf: undefined, child: undefined, out: undefined };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const value = (): string => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${a} needs a value`);
      return v;
    };
    if (a === '--quick') args.quick = true;
    else if (a === '--json') args.json = resolve(value());
    else if (a === '--only') args.only = value().split(',').map((w) => w.trim().toUpperCase());
    else if (a === '--runs') args.runs = Number(value());
    else if (a === '--dir') args.dir = resolve(value());
    else if (a === '--cpu-prof') args.cpuProf = resolve(value());
    else if (a === '--child') args.child = value();
    else if (a === '--out') args.out = value();
    else if (a === '--help' || a === '-h') {
      process.stdout.write(`usage: npm run bench -- [--quick] [--json FILE] [--only ${Object.keys(WORKLOADS).join(',')}] [--runs N (default 5)] [--dir DIR] [--cpu-prof DIR]\n`);
      process.exit(0);
    } else throw new Error(`unknown argument ${a}; try --help`);
  }
  for (const w of args.only) if (!(w in WORKLOADS)) throw new Error(`unknown workload ${w}; known: ${Object.keys(WORKLOADS).join(', ')}`);
  if (!Number.isInteger(args.runs) || args.runs < 1) throw new Error('--runs must be a positive integer');
  return args;
}

/** Child mode: run one workload and write its result to `--out`. */
async function child(args: Args): Promise<void> {
  const entry = WORKLOADS[args.child!]!;
  const ctx: Context = { quick: args.quick, runs: args.runs, base: args.dir, log: (m) => process.stderr.write(`${m}\n`) };
  const started = performance.now();
  const mod = (await import(entry.file)) as { default: (ctx: Context) => Promise<WorkloadResult> };
  const result = await mod.default(ctx);
  result.wallSeconds = (performance.now() - started) / 1000;
  // maxRSS is in KiB.
  result.peakRssMiB = process.resourceUsage().maxRSS / 1024;
  writeFileSync(args.out!, JSON.stringify(result));
}

function filesystemOf(dir: string): string {
  const r = spawnSync('findmnt', ['-n', '-o', 'FSTYPE', '-T', dir], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim() : 'unknown';
}

const fmt = (v: number | undefined, unit?: string): string => {
  if (v === undefined || Number.isNaN(v)) return '';
  if (unit === 'x') return `${v.toFixed(2)}×`;
  if (unit === 'bytes') return `${(v / 1048576).toFixed(1)} MiB`;
  if (unit === 's') return `${v.toFixed(3)} s`;
  if (unit === 'ms') return `${v.toFixed(3)} ms`;
  if (unit === 'µs') return `${v.toFixed(0)} µs`;
  if (Math.abs(v) >= 100) return Math.round(v).toLocaleString('en-US');
  return v.toPrecision(3);
};

/** The stdout table: one row per figure. */
export function table(report: Report): string {
  const head = ['workload', 'figure', 'ours (median)', 'floor / du', 'ours÷floor', 'containerd (other day)*', 'goal', 'met', 'peak RSS'];
  const rows: string[][] = [];
  for (const w of report.workloads) {
    if (w.skipped !== undefined) {
      rows.push([w.id, `skipped: ${w.skipped}`, ...head.slice(2).map(() => '')]);
      continue;
    }
    w.metrics.forEach((m: Metric, i: number) => {
      rows.push([
        i === 0 ? `${w.id} ${w.name}` : '',
        `${m.label}${m.unit === 'ops/s' ? '' : ` [${m.unit}]`}`,
        fmt(m.median, m.unit),
        m.floor === undefined ? '' : fmt(m.floor.median, m.unit),
        m.vsFloor === undefined ? '' : m.unit === 'ops/s' ? `${(m.vsFloor * 100).toFixed(0)} %` : `${m.vsFloor.toFixed(2)}×`,
        fmt(m.reference?.value, m.unit),
        m.goal === undefined ? '' : `${m.goal.cmp} ${fmt(m.goal.value, m.unit)}`,
        m.met === undefined ? '' : m.met === null ? 'n/a' : m.met ? 'met' : 'NOT met',
        i === 0 && w.peakRssMiB !== undefined ? `${w.peakRssMiB.toFixed(0)} MiB` : '',
      ]);
    });
  }
  const widths = head.map((h, c) => Math.max(h.length, ...rows.map((r) => r[c]!.length)));
  const line = (cells: string[]) => `| ${cells.map((cell, c) => (c >= 2 ? cell.padStart(widths[c]!) : cell.padEnd(widths[c]!))).join(' | ')} |`;
  const out = [line(head), `|${widths.map((w, c) => (c >= 2 ? `${'-'.repeat(w + 1)}:` : '-'.repeat(w + 2))).join('|')}|`, ...rows.map(line)];
  const m = report.machine;
  return [
    `overlay-snapshotter benchmarks${report.quick ? ' (--quick: sizes / 10, goals not judged)' : ''}, median of ${report.runs} runs, ${report.date}`,
    `machine: ${m.cpu} ×${m.cpus}, ${m.memoryGiB} GiB, Linux ${m.kernel}, Node ${m.node}, roots on ${m.filesystem} (${m.base})`,
    '',
    ...out,
    '',
    'floor / du: measured in this run, interleaved with ours: W1/W2 the same directory work with no metadata store, W5 `du -s`,',
    '  W8 the same cycle done with bare syscalls (bench/bare-cycle.ts: mkdirs, rename, fdatasync, mount(2), umount2, rmdirs),',
    '  W9 its cycle done with bare syscalls on as many threads as callers, sharing syncs (bench/bare-concurrent.ts).',
    'ours÷floor: for rates, the share of the floor\'s rate reached (100 % = as fast); for durations, ours ÷ the floor\'s time',
    '  (1.10× = 10 % slower than the bare syscalls).',
    '* containerd (other day): containerd v1.7.13\'s figures from issue 6, measured on another day, not in this run: for orientation',
    '  only; no ratio is taken against them and "met" never uses them (goals are absolute figures). For containerd\'s own overlayfs',
    '  snapshotter beside ours in the same run, through containerd\'s API: `npx tsx bench/containerd.ts` (docs/performance.md).',
  ].join('\n');
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  if (args.child !== undefined) return child(args);

  mkdirSync(args.dir, { recursive: true });
  const base = mkdtempSync(join(args.dir, 'run-'));
  const self = fileURLToPath(import.meta.url);
  const workloads: WorkloadResult[] = [];
  try {
    for (const id of args.only) {
      process.stderr.write(`${id} ${WORKLOADS[id]!.name}${args.quick ? ' (quick)' : ''}\n`);
      const out = join(base, `${id}.json`);
      const nodeArgs = [...process.execArgv, '--expose-gc'];
      if (args.cpuProf !== undefined) nodeArgs.push('--cpu-prof', `--cpu-prof-dir=${args.cpuProf}`, `--cpu-prof-name=${id}.cpuprofile`);
      const childArgs = [self, '--child', id, '--out', out, '--runs', String(args.runs), '--dir', base];
      if (args.quick) childArgs.push('--quick');
      const r = spawnSync(process.execPath, [...nodeArgs, ...childArgs], { stdio: ['ignore', 'inherit', 'inherit'] });
      if (r.status !== 0) throw new Error(`workload ${id} failed (exit ${r.status ?? r.signal})`);
      workloads.push(JSON.parse(readFileSync(out, 'utf8')) as WorkloadResult);
    }
  } finally {
    // Roots are deleted only now (see freshRoot in common.ts).
    process.stderr.write(`removing ${base}\n`);
    rmSync(base, { recursive: true, force: true });
  }
  const cpu = cpus()[0]?.model ?? 'unknown cpu';
  const report: Report = {
    version: 1,
    quick: args.quick,
    runs: args.runs,
    date: new Date().toISOString(),
    machine: { cpu, cpus: cpus().length, memoryGiB: Math.round(totalmem() / 2 ** 30), kernel: release(), node: process.versions.node, filesystem: filesystemOf(args.dir), base: args.dir },
    workloads,
  };
  process.stdout.write(`${table(report)}\n`);
  if (args.json !== undefined) {
    mkdirSync(dirname(args.json), { recursive: true });
    writeFileSync(args.json, `${JSON.stringify(report, null, 2)}\n`);
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exit(1);
});
