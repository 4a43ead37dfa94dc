/**
 * Mount + unmount time of read-write overlay chains (20 and 500 lower
 * layers, with upper and work dirs) through each overlay strategy.
 *
 *   npx tsx bench/mount.ts [--json FILE] [--cycles N]
 *
 * Needs root. Strategies are interleaved cycle by cycle so that both see
 * the same machine noise; the figure is the median of the cycles (50 by
 * default), after 3 warm-up cycles.
 */
import fs from 'node:fs';
import { release, tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { mountAll, resolveOverlayStrategy, unmountAll } from '../lib/kernel/mount/index.js';
import type { Mount } from '../lib/model/types.js';

const STRATEGIES = ['mount-api', 'legacy'] as const;
type Strategy = (typeof STRATEGIES)[number];

export interface MountBenchResult {
  layers: number;
  strategy: Strategy;
  /** How the kernel got the layers, read from mountinfo. */
  how: string;
  cycles: number;
  medianMountMs: number;
  medianUnmountMs: number;
  medianTotalMs: number;
  minTotalMs: number;
  maxTotalMs: number;
}

export interface MountBenchReport {
  kernel: string;
  node: string;
  autoStrategy: Strategy;
  root: string;
  results: MountBenchResult[];
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

/** The super options of the topmost mount on `target`, to tell how the layers were passed. */
function describeMount(target: string): string {
  const line = fs
    .readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .filter((l) => l.split(' ')[4] === target)
    .at(-1);
  const superOptions = line?.split(' - ')[1]?.split(' ')[2] ?? '';
  if (superOptions.includes('lowerdir+=')) return 'fsconfig lowerdir+';
  if (/lowerdir=\d+:/.test(superOptions)) return 'mount(2), layers by fd';
  if (/lowerdir=\//.test(superOptions)) return 'mount(2), absolute paths';
  return 'mount(2), relative paths';
}

const ms = (ns: bigint) => Number(ns) / 1e6;

export async function benchMount(cycles = 50): Promise<MountBenchReport> {
  const top = fs.realpathSync(fs.mkdtempSync(join(tmpdir(), 'ovl-mount-bench-')));
  const layer = (i: number) => join(top, 'snapshots', String(1000000 + i), 'fs');
  const results: MountBenchResult[] = [];
  try {
    for (let i = 1; i <= 500; i++) {
      fs.mkdirSync(layer(i), { recursive: true });
      fs.writeFileSync(join(layer(i), `file-${i}`), `layer ${i}\n`);
    }
    let nextId = 2000000;
    for (const layers of [20, 500]) {
      const lowerdir = `lowerdir=${Array.from({ length: layers }, (_, k) => layer(layers - k)).join(':')}`;
      const setups = STRATEGIES.map((strategy) => {
        const id = ++nextId;
        const dir = join(top, 'snapshots', String(id));
        const target = join(top, `mnt-${id}`);
        for (const d of [`${dir}/fs`, `${dir}/work`, target]) fs.mkdirSync(d, { recursive: true });
        const mounts: Mount[] = [{ type: 'overlay', source: 'overlay', options: [`workdir=${dir}/work`, `upperdir=${dir}/fs`, lowerdir, 'index=off'] }];
        return { strategy, target, mounts, how: '', mount: [] as number[], unmount: [] as number[], total: [] as number[] };
      });
      for (let cycle = -3; cycle < cycles; cycle++) {
        for (const s of setups) {
          const t0 = process.hrtime.bigint();
          await mountAll(s.mounts, s.target, { strategy: s.strategy });
          const t1 = process.hrtime.bigint();
          if (cycle === -3) s.how = describeMount(s.target);
          await unmountAll(s.target);
          const t2 = process.hrtime.bigint();
          if (cycle < 0) continue;
          s.mount.push(ms(t1 - t0));
          s.unmount.push(ms(t2 - t1));
          s.total.push(ms(t2 - t0));
        }
      }
      for (const s of setups) {
        results.push({
          layers,
          strategy: s.strategy,
          how: s.how,
          cycles,
          medianMountMs: median(s.mount),
          medianUnmountMs: median(s.unmount),
          medianTotalMs: median(s.total),
          minTotalMs: Math.min(...s.total),
          maxTotalMs: Math.max(...s.total),
        });
      }
    }
  } finally {
    const mounted = fs
      .readFileSync('/proc/self/mountinfo', 'utf8')
      .split('\n')
      .map((l) => l.split(' ')[4] ?? '')
      .filter((p) => p.startsWith(`${top}/`));
    for (const p of mounted) await unmountAll(p);
    fs.rmSync(top, { recursive: true, force: true });
  }
  return { kernel: release(), node: process.version, autoStrategy: resolveOverlayStrategy(), root: top, results };
}

function table(report: MountBenchReport): string {
  const head = ['layers', 'strategy', 'how', 'mount ms', 'unmount ms', 'total ms', 'min', 'max'];
  const rows = report.results.map((r) => [
    String(r.layers),
    r.strategy,
    r.how,
    r.medianMountMs.toFixed(3),
    r.medianUnmountMs.toFixed(3),
    r.medianTotalMs.toFixed(3),
    r.minTotalMs.toFixed(3),
    r.maxTotalMs.toFixed(3),
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const fmt = (cells: string[]) => cells.map((c, i) => (i < 3 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ');
  return [
    `overlay mount + unmount, read-write, median of ${report.results[0]?.cycles ?? 0} cycles (kernel ${report.kernel}, node ${report.node}, auto = ${report.autoStrategy})`,
    fmt(head),
    ...rows.map(fmt),
  ].join('\n');
}

async function main(argv: string[]): Promise<void> {
  let json: string | undefined;
  let cycles = 50;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '--json') json = argv[++i];
    else if (arg === '--cycles') cycles = Number(argv[++i]);
    else throw new Error(`unknown argument ${arg}; usage: bench/mount.ts [--json FILE] [--cycles N]`);
  }
  if (json === undefined && argv.includes('--json')) throw new Error('--json needs a file name');
  if (!Number.isInteger(cycles) || cycles < 1) throw new Error('--cycles needs a positive integer');
  if (process.getuid?.() !== 0) throw new Error('bench/mount.ts mounts for real: run it as root');
  const report = await benchMount(cycles);
  process.stdout.write(`${table(report)}\n`);
  if (json !== undefined) fs.writeFileSync(json, `${JSON.stringify(report, null, 2)}\n`);
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  main(process.argv.slice(2)).catch((err: Error) => {
    process.stderr.write(`${err.message}\n`);
    process.exitCode = 1;
  });
}
