/**
 * The mount half of W8 on its own: `mountAll` + `unmountAll` of a
 * read-write overlay on a chain of lower layers, with a fresh, empty upper
 * and work dir every cycle (as `prepare` makes them), through each overlay
 * strategy. No snapshotter, so the figures are those of lib/kernel/mount alone.
 *
 *   npx tsx bench/mount-steps.ts [--cycles N] [--layers N] [--only mount-api|legacy|auto|bare|bare-cycle]
 *
 * Needs root. Strategies are interleaved cycle by cycle, so that all see
 * the same machine noise; figures are medians over the cycles, after 5
 * warm-up cycles. The `bare` row is the floor: the same options string
 * passed to one mount(2) through koffi and one umount2, with no planning,
 * checks or stack check. The `bare-cycle` row is W8's floor, the whole
 * cycle done bare (bench/bare-cycle.ts: staging mkdirs, rename, fdatasync,
 * mount(2), umount2, fdatasync, rmdirs), each step timed; it makes and
 * deletes its dirs in a directory of its own (`bare/`), which the allocator
 * places apart from the others (`chattr +T` on the top dir), so that its
 * freed inodes do not slow the other rows' mounts.
 *
 * Making the other rows' upper and work dirs is not timed, and nothing of
 * theirs is deleted until the end, as ext4 without a journal makes inode
 * allocation slow near recently freed inodes (see bench/common.ts,
 * freshRoot), which would land in the mount (overlayfs makes its work dirs
 * at mount time). For the same reason, leave a minute between runs.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import { release, tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { mountAll, unmountAll } from '../lib/kernel/mount/index.js';
import { mount, tryUmount2 } from '../lib/kernel/mount/syscalls.js';
import type { Mount } from '../lib/model/types.js';
import { BareCycle, PHASES, STEPS, type Step, phasesOf } from './bare-cycle.js';

type Strategy = 'mount-api' | 'legacy' | 'auto' | 'bare' | 'bare-cycle';

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

async function main(argv: string[]): Promise<void> {
  let cycles = 300;
  let layers = 20;
  let strategies: Strategy[] = ['auto', 'mount-api', 'legacy', 'bare', 'bare-cycle'];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '--cycles') cycles = Number(argv[++i]);
    else if (arg === '--layers') layers = Number(argv[++i]);
    else if (arg === '--only') strategies = [argv[++i] as Strategy];
    else throw new Error(`unknown argument ${arg}; usage: bench/mount-steps.ts [--cycles N] [--layers N] [--only mount-api|legacy|auto|bare|bare-cycle]`);
  }
  if (process.getuid?.() !== 0) throw new Error('bench/mount-steps.ts mounts for real: run it as root');
  const top = fs.realpathSync(fs.mkdtempSync(join(tmpdir(), 'ovl-mount-steps-')));
  try {
    execFileSync('chattr', ['+T', top], { stdio: 'ignore' });
  } catch {
    // Not ext4: the allocator hint does not apply.
  }
  const snap = (id: number) => join(top, 'snapshots', String(id));
  const target = join(top, 'rootfs');
  try {
    fs.mkdirSync(target, { recursive: true });
    for (let i = 1; i <= layers; i++) {
      fs.mkdirSync(join(snap(i), 'fs'), { recursive: true });
      fs.writeFileSync(join(snap(i), 'fs', `file-${i}`), `layer ${i}\n`);
    }
    const lowerdir = `lowerdir=${Array.from({ length: layers }, (_, k) => join(snap(layers - k), 'fs')).join(':')}`;
    const times = new Map(strategies.filter((s) => s !== 'bare-cycle').map((s) => [s, { mount: [] as number[], unmount: [] as number[] }]));
    const bare = strategies.includes('bare-cycle') ? new BareCycle(join(top, 'bare'), (dir) => [`workdir=${dir}/work`, `upperdir=${dir}/fs`, lowerdir, 'index=off']) : undefined;
    const bareSteps = new Map<Step, number[]>(STEPS.map((s) => [s, []]));
    const barePhases = PHASES.map(() => [] as number[]);
    let id = layers;
    for (let cycle = -5; cycle < cycles; cycle++) {
      for (const strategy of strategies) {
        if (strategy === 'bare-cycle') {
          const steps = bare!.cycle(target);
          if (cycle < 0) continue;
          for (const s of STEPS) bareSteps.get(s)!.push(steps[s]);
          const phases = phasesOf(steps);
          PHASES.forEach((p, k) => barePhases[k]!.push(phases[p]));
          continue;
        }
        const dir = snap(++id);
        fs.mkdirSync(join(dir, 'fs'), { recursive: true });
        fs.mkdirSync(join(dir, 'work'));
        const mounts: Mount[] = [{ type: 'overlay', source: 'overlay', options: [`workdir=${dir}/work`, `upperdir=${dir}/fs`, lowerdir, 'index=off'] }];
        const data = strategy === 'bare' ? mounts[0]!.options.join(',') : '';
        const t0 = performance.now();
        if (strategy === 'bare') mount('overlay', target, 'overlay', 0, data, 'bare mount');
        else await mountAll(mounts, target, { strategy });
        const t1 = performance.now();
        if (strategy === 'bare') tryUmount2(target, 0);
        else await unmountAll(target);
        const t2 = performance.now();
        if (cycle < 0) continue;
        times.get(strategy)!.mount.push(t1 - t0);
        times.get(strategy)!.unmount.push(t2 - t1);
      }
    }
    process.stdout.write(`${layers} lower layers, fresh upper/work, median of ${cycles} cycles (kernel ${release()}, node ${process.version})\n`);
    for (const [strategy, t] of times) {
      process.stdout.write(`  ${strategy.padEnd(10)}  mount ${median(t.mount).toFixed(3)} ms  unmount ${median(t.unmount).toFixed(3)} ms\n`);
    }
    if (bare !== undefined) {
      bare.close();
      const steps = STEPS.map((s) => `${s} ${median(bareSteps.get(s)!).toFixed(3)}`).join(', ');
      const phases = PHASES.map((p, k) => `${p} ${median(barePhases[k]!).toFixed(3)}`).join(', ');
      process.stdout.write(`  bare-cycle  ${steps} ms\n              by phase (as W8): ${phases} ms\n`);
    }
  } finally {
    const mounted = fs
      .readFileSync('/proc/self/mountinfo', 'utf8')
      .split('\n')
      .map((l) => l.split(' ')[4] ?? '')
      .filter((p) => p === target);
    for (const _ of mounted) await unmountAll(target);
    fs.rmSync(top, { recursive: true, force: true });
  }
}

main(process.argv.slice(2)).catch((err: Error) => {
  process.stderr.write(`${err.stack ?? err.message}\n`);
  process.exitCode = 1;
});
