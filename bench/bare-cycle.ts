/**
 * W8's floor: one container cycle (prepare, mount, unmount, remove) done
 * with the bare syscalls and nothing else: no metadata store, no staging
 * pool, no mount planning, no checks, no threads.
 *
 * - prepare: `mkdir` of a `new-<uuid>` staging dir, its `fs` and `work`;
 *   `rename` to `snapshots/<n>`; 4 KiB written to a stand-in for the
 *   store's WAL and one `fdatasync` of it (each mutating call is durable
 *   when it returns, as the store's commit is).
 * - mount: one mount(2) of the overlay, with the options string the
 *   library gives (lowers, `index=off`, ...), through koffi.
 * - unmount: one umount2.
 * - remove: 4 KiB + one `fdatasync` of the WAL stand-in (the record's
 *   deletion), then `rmdir` of `work/work` (made by the mount), `work`,
 *   `fs` and the snapshot's dir; the kernel's volatile mark and the files
 *   a container wrote are deleted first when there are any.
 *
 * The syscalls run one after another on the calling thread. The library
 * may do better than this floor where it takes work off the call's path
 * (the staging pool makes the mkdirs beforehand) or overlaps it (removal
 * deletes while the WAL syncs); ours÷floor below 1 is then possible.
 *
 * The WAL stand-in is allocated up front and written in 4 KiB slots in
 * turn, so that each sync writes data and no size change, as SQLite's WAL
 * does once it wraps after a checkpoint.
 *
 * Used by W8 (bench/w8-mount.ts) and by bench/mount-steps.ts.
 */
import { closeSync, fdatasyncSync, mkdirSync, openSync, renameSync, rmdirSync, unlinkSync, writeFileSync, writeSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { v4 as uuidv4 } from 'uuid';
import { VOLATILE_BOOT_FILE as BOOT_FILE, VOLATILE_MARK_DIRS, VOLATILE_MARK_FILE } from '../lib/disk/volatile.js';
import { mount, tryUmount2, umount2Error } from '../lib/kernel/mount/syscalls.js';
import type { Mount } from '../lib/model/types.js';

/** The phases of a cycle, as W8 times them. */
export const PHASES = ['prepare', 'mount', 'unmount', 'remove'] as const;
export type Phase = (typeof PHASES)[number];

/** The steps of a bare cycle, in the order it makes them, each in one phase. */
export const STEPS = ['mkdirs', 'rename', 'prepare-sync', 'mount', 'unmount', 'remove-sync', 'rmdirs'] as const;
export type Step = (typeof STEPS)[number];
export const PHASE_OF: Readonly<Record<Step, Phase>> = {
  mkdirs: 'prepare',
  rename: 'prepare',
  'prepare-sync': 'prepare',
  mount: 'mount',
  unmount: 'unmount',
  'remove-sync': 'remove',
  rmdirs: 'remove',
};

/** Milliseconds each step of one cycle took. */
export type StepTimes = Record<Step, number>;

/** Milliseconds each phase took: the sum of its steps. */
export function phasesOf(steps: StepTimes): Record<Phase, number> {
  const out: Record<Phase, number> = { prepare: 0, mount: 0, unmount: 0, remove: 0 };
  for (const step of STEPS) out[PHASE_OF[step]] += steps[step];
  return out;
}

/** How one cycle's container behaves. */
export interface BareVariant {
  /** Mount with `volatile` (and keep a boot file in the snapshot's dir, as the library does). */
  readonly volatile?: boolean;
  /**
   * Called while mounted, untimed: what the container writes. Returns the
   * names of the files it made at the top of the mount, which land in the
   * upper dir and are unlinked at remove.
   */
  readonly write?: (target: string) => readonly string[];
}

const PAGE = 4096;
const WAL_SLOTS = 256;

/**
 * The overlay options the library gave in `spec` (an active snapshot's
 * mount), for a snapshot dir `dir` instead of the library's own: the same
 * lowers and options, `upperdir`/`workdir` in `dir`, no `volatile` (a
 * {@link BareVariant} adds it).
 */
export function optionsLike(spec: Mount): (dir: string) => string[] {
  if (spec.type !== 'overlay') throw new Error(`an overlay mount spec is needed, got ${JSON.stringify(spec)}`);
  const options = spec.options.filter((o) => o !== 'volatile');
  if (!options.some((o) => o.startsWith('upperdir=')) || !options.some((o) => o.startsWith('workdir='))) throw new Error(`not an active snapshot's spec: ${JSON.stringify(spec)}`);
  return (dir) => options.map((o) => (o.startsWith('upperdir=') ? `upperdir=${dir}/fs` : o.startsWith('workdir=') ? `workdir=${dir}/work` : o));
}

/** The bare cycle under one base dir (`<base>/snapshots`, `<base>/wal`). */
export class BareCycle {
  private readonly snapshots: string;
  private readonly walFd: number;
  private readonly page = Buffer.alloc(PAGE, 0x57);
  private slot = 0;
  private next = 0;

  /** @param options the overlay options for a snapshot dir (see {@link optionsLike}). */
  constructor(
    base: string,
    private readonly options: (dir: string) => string[],
  ) {
    this.snapshots = `${base}/snapshots`;
    mkdirSync(this.snapshots, { recursive: true });
    this.walFd = openSync(`${base}/wal`, 'w');
    writeSync(this.walFd, Buffer.alloc(PAGE * WAL_SLOTS));
    fdatasyncSync(this.walFd);
  }

  /** One cycle, with `target` as the mount point; returns what each step took. */
  cycle(target: string, variant: BareVariant = {}): StepTimes {
    const { volatile = false } = variant;
    const t0 = performance.now();
    const staging = `${this.snapshots}/new-${uuidv4()}`;
    mkdirSync(staging, 0o700);
    mkdirSync(`${staging}/fs`, 0o755);
    mkdirSync(`${staging}/work`, 0o711);
    if (volatile) writeFileSync(`${staging}/${BOOT_FILE}`, 'bare\n');
    const t1 = performance.now();
    const dir = `${this.snapshots}/${++this.next}`;
    renameSync(staging, dir);
    const t2 = performance.now();
    this.commit();
    const t3 = performance.now();
    const data = this.options(dir);
    if (volatile) data.push('volatile');
    mount('overlay', target, 'overlay', 0, data.join(','), 'bare overlay mount');
    const t4 = performance.now();
    const written = variant.write?.(target) ?? [];
    const t5 = performance.now();
    const errno = tryUmount2(target, 0);
    if (errno !== 0) throw umount2Error(target, errno);
    const t6 = performance.now();
    this.commit();
    const t7 = performance.now();
    if (volatile) {
      unlinkSync(`${dir}/work/${VOLATILE_MARK_FILE}`);
      for (const d of VOLATILE_MARK_DIRS) rmdirSync(`${dir}/work/${d}`);
    }
    rmdirSync(`${dir}/work/work`);
    rmdirSync(`${dir}/work`);
    for (const name of written) unlinkSync(`${dir}/fs/${name}`);
    rmdirSync(`${dir}/fs`);
    if (volatile) unlinkSync(`${dir}/${BOOT_FILE}`);
    rmdirSync(dir);
    const t8 = performance.now();
    return { mkdirs: t1 - t0, rename: t2 - t1, 'prepare-sync': t3 - t2, mount: t4 - t3, unmount: t6 - t5, 'remove-sync': t7 - t6, rmdirs: t8 - t7 };
  }

  close(): void {
    closeSync(this.walFd);
  }

  /** A store commit's disk work: 4 KiB into the WAL stand-in, then its sync. */
  private commit(): void {
    writeSync(this.walFd, this.page, 0, PAGE, (this.slot++ % WAL_SLOTS) * PAGE);
    fdatasyncSync(this.walFd);
  }
}
