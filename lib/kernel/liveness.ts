/**
 * Telling a live process from a dead one whose pid was reused: a pid plus
 * its start time (field 22 of `/proc/<pid>/stat`, in clock ticks since
 * boot) names one process for the life of the machine. The prune lock and
 * the staging pool's dirs are tagged with both, so that what a crashed
 * process left behind is recognised as such.
 *
 * The boot id does the same for a boot: it tells what an earlier boot left
 * (volatile uppers, disk/volatile.ts) from what this one made.
 *
 * Reads /proc only; owns no state but this process's own tag.
 */
import { readFileSync } from 'node:fs';

/** The start time of process `pid`, or undefined when there is no such process. */
export function processStart(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
  } catch {
    return undefined;
  }
}

/** Whether the process `pid` that started at `start` is still running. */
export function isAlive(pid: number, start: string | undefined): boolean {
  const now = processStart(pid);
  return now !== undefined && now === start;
}

/** This process's own pid and start time, read once. */
let self: { pid: number; start: string | undefined } | undefined;
export function selfTag(): { pid: number; start: string | undefined } {
  self ??= { pid: process.pid, start: processStart(process.pid) };
  return self;
}

let boot: string | undefined;

/**
 * This boot's id (`/proc/sys/kernel/random/boot_id`): it changes at every
 * boot, so what was written in another boot, before a crash or a reboot,
 * is told from what this one wrote. Read once.
 */
export function bootId(): string {
  boot ??= readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  return boot;
}
