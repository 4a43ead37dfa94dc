/**
 * What the staging pool (staging.ts) and its thread (staging-worker.ts)
 * share: the counters in shared memory, and how a pool dir is made and
 * unmade. Side-effect free, so that both threads can import it. Owns no
 * state; touches only the dirs it is given.
 */
import { chmodSync, mkdirSync, rmdirSync } from 'node:fs';

// Shared counters: dirs made, dirs taken, stop requested. Dir n is `${base}-${n}`.
export const MADE = 0;
export const TAKEN = 1;
export const STOP = 2;
export const COUNTERS = 3;

/** What the thread is started with. */
export interface PoolData {
  /** {@link COUNTERS} Int32 counters. */
  counters: SharedArrayBuffer;
  /** Dir n is `${base}-${n}`. */
  base: string;
  /** Dirs kept ready. */
  size: number;
  /** Whether mkdir's mode survives the umask (else `fs` is chmod'ed). */
  umaskClean: boolean;
}

/** The modes of a staging dir, its `fs` and its `work`. */
export const DIR_MODE = 0o700;
export const FS_MODE = 0o755;
export const WORK_MODE = 0o711;

/** Makes an empty active-snapshot staging dir: the dir 0700, `fs` 0755, `work` 0711. */
export function makePoolDir(dir: string, umaskClean: boolean): void {
  mkdirSync(dir, DIR_MODE);
  makeUpperDir(`${dir}/fs`, umaskClean);
  mkdirSync(`${dir}/work`, WORK_MODE);
}

/** Makes an empty upper dir `fs`, {@link FS_MODE} whatever the umask. */
export function makeUpperDir(fs: string, umaskClean: boolean): void {
  mkdirSync(fs, FS_MODE);
  if (!umaskClean) chmodSync(fs, FS_MODE);
}

/** Removes what {@link makePoolDir} made of `dir`, ignoring what is not there. */
export function removePoolDir(dir: string): void {
  for (const p of [`${dir}/work`, `${dir}/fs`, dir]) {
    try {
      rmdirSync(p);
    } catch {
      // Not made, or already gone.
    }
  }
}
