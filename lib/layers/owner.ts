/**
 * Who made a temporary snapshot. The import helpers (importLayers,
 * importImage, the CLI) apply each layer in an active of their own; a
 * process killed mid-apply leaves that active behind, half-filled, and
 * nothing else knows it is garbage. So each such snapshot carries
 * {@link OWNER_LABEL}: the owner's pid, its start time (clock ticks since
 * boot, field 22 of `/proc/<pid>/stat`) and the boot id. A pid and start
 * time name one process for the life of a boot; the boot id tells a label
 * written before a reboot, whose process is gone whatever its pid now
 * names. Whoever finds the label judges liveness with {@link ownerAlive}.
 *
 * The value is `pid=<n> start=<ticks> boot=<uuid>`. It names a process of
 * the pid namespace the owner ran in: stores shared between pid
 * namespaces cannot judge each other's owners (see docs/images.md).
 */
import { readFileSync } from 'node:fs';
import { processStart } from '../kernel/liveness.js';

/** Label of a temporary snapshot: the process that made it and must remove it. */
export const OWNER_LABEL = 'overlay-snapshotter/owner';

/** A parsed {@link OWNER_LABEL} value. */
export interface Owner {
  pid: number;
  /** Start time in clock ticks since boot, as `/proc/<pid>/stat` gives it. */
  start: string;
  /** `/proc/sys/kernel/random/boot_id` when the label was written. */
  boot: string;
}

let bootId: string | undefined;
/** This boot's id (read once; the kernel makes a new one at each boot). */
export function currentBoot(): string {
  bootId ??= readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  return bootId;
}

let selfValue: string | undefined;
/** The {@link OWNER_LABEL} value naming this process. */
export function ownerValue(): string {
  selfValue ??= `pid=${process.pid} start=${processStart(process.pid) ?? '0'} boot=${currentBoot()}`;
  return selfValue;
}

/** `{ [OWNER_LABEL]: <this process> }`, for the labels of a temporary snapshot. */
export function ownerLabels(): Record<string, string> {
  return { [OWNER_LABEL]: ownerValue() };
}

const VALUE = /^pid=([1-9][0-9]*) start=([0-9]+) boot=([0-9a-f-]+)$/;

/** The owner an {@link OWNER_LABEL} value names, or undefined when it is not one. */
export function parseOwner(value: string): Owner | undefined {
  const m = VALUE.exec(value);
  if (!m) return undefined;
  return { pid: Number(m[1]), start: m[2]!, boot: m[3]! };
}

/**
 * Whether the owner named by an {@link OWNER_LABEL} value is still
 * running: same boot, and a process with that pid and start time exists.
 * A value that does not parse is not judged (undefined): a label someone
 * else set is left alone.
 */
export function ownerAlive(value: string): boolean | undefined {
  const owner = parseOwner(value);
  if (owner === undefined) return undefined;
  if (owner.boot !== currentBoot()) return false;
  return processStart(owner.pid) === owner.start;
}
