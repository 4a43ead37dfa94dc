/**
 * Telling a live process from a dead one whose pid was reused: a pid plus
 * its start time (field 22 of `/proc/<pid>/stat`, in clock ticks since
 * boot) names one process for the life of the machine. The prune lock and
 * the staging pool's dirs are tagged with both, so that what a crashed
 * process left behind is recognised as such; the owner label of temporary
 * snapshots (model/owner.ts) adds the boot id and the pid namespace, and is
 * judged here.
 *
 * The boot id does the same for a boot: it tells what an earlier boot left
 * (volatile uppers, disk/volatile.ts) from what this one made.
 *
 * Reads /proc only; owns no state but this process's own tag.
 */
import { readFileSync, readdirSync, readlinkSync } from 'node:fs';
import { type Owner, formatOwner, parseOwner } from '../model/owner.js';

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

/** The inode of the initial pid namespace (the kernel's PROC_PID_INIT_INO): from there every process is visible. */
const INIT_PID_NS = String(0xeffffffc);

/** The inode of the pid namespace of `proc` (`self` or a pid), or undefined when it cannot be read. */
function pidNamespace(proc: string): string | undefined {
  try {
    return /^pid:\[([0-9]+)\]$/.exec(readlinkSync(`/proc/${proc}/ns/pid`))?.[1];
  } catch {
    return undefined;
  }
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

let selfOwner: Owner | undefined;
/** The owner label value (model/owner.ts) naming this process. */
export function ownerValue(): string {
  if (selfOwner === undefined) {
    selfOwner = { pid: process.pid, start: processStart(process.pid) ?? '0', boot: bootId() };
    const ns = pidNamespace('self');
    if (ns !== undefined) selfOwner.ns = ns;
  }
  return formatOwner(selfOwner);
}

/**
 * A judge of owner label values: true while the owner runs, false once it
 * is gone, undefined when the value is not an owner label or names a
 * process this one cannot see. Same boot and pid namespace: a process with
 * that pid and start time exists. Another namespace can be judged only from
 * the initial one, which sees every process: the owner is gone when no
 * process of that namespace has its pid there (the start time is not
 * compared, since a time namespace shifts it: a pid reused meanwhile keeps
 * an abandoned snapshot a while longer, never removes a live one's). One
 * judge scans /proc at most once: make one per sweep.
 */
export function ownerJudge(): (value: string) => boolean | undefined {
  let foreign: Map<string, Set<number>> | undefined;
  const ours = pidNamespace('self');
  return (value) => {
    const owner = parseOwner(value);
    if (owner === undefined) return undefined;
    if (owner.boot !== bootId()) return false;
    // A /proc mounted for another pid namespace (`unshare --pid` without
    // a /proc of its own) names other processes by our pids: judge nothing.
    if (!procIsOurs()) return undefined;
    if (owner.ns === undefined || owner.ns === ours) return isAlive(owner.pid, owner.start);
    if (ours !== INIT_PID_NS) return undefined;
    foreign ??= pidsByNamespace();
    return foreign.get(owner.ns)?.has(owner.pid) === true;
  };
}

let procOurs: boolean | undefined;
/** Whether /proc shows this process's pid namespace (`/proc/self` is our pid). */
function procIsOurs(): boolean {
  if (procOurs === undefined) {
    try {
      procOurs = readlinkSync('/proc/self') === String(process.pid);
    } catch {
      procOurs = false;
    }
  }
  return procOurs;
}

/** Whether the owner an owner label value names still runs (see {@link ownerJudge}). */
export function ownerAlive(value: string): boolean | undefined {
  return ownerJudge()(value);
}

/** For every pid namespace of a visible process: the pids its processes have in it (the last of `NSpid`). */
function pidsByNamespace(): Map<string, Set<number>> {
  const out = new Map<string, Set<number>>();
  for (const name of readdirSync('/proc')) {
    if (!/^[0-9]+$/.test(name)) continue;
    const ns = pidNamespace(name);
    let status: string;
    try {
      status = readFileSync(`/proc/${name}/status`, 'utf8');
    } catch {
      continue; // exited meanwhile
    }
    const inner = /^NSpid:\s*([0-9\s]+)$/m.exec(status)?.[1]?.trim().split(/\s+/).at(-1);
    if (ns === undefined || inner === undefined) continue;
    let pids = out.get(ns);
    if (pids === undefined) out.set(ns, (pids = new Set()));
    pids.add(Number(inner));
  }
  return out;
}
