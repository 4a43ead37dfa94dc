/**
 * The owner label of a temporary snapshot: who made it and must remove it.
 * The import helpers (importLayers, importImage, the CLI) apply each layer
 * in an active of their own, and exportImage reads through views; a process
 * killed meanwhile leaves that snapshot behind, half-filled, and nothing
 * else knows it is garbage. So each carries {@link OWNER_LABEL}:
 * `pid=<n> start=<ticks> boot=<uuid> ns=<inode>`, the owner's pid, its start
 * time (clock ticks since boot, field 22 of `/proc/<pid>/stat`), the boot
 * id and the inode of its pid namespace. A pid and start time name one
 * process for the life of a boot; the boot id tells a label written before
 * a reboot; the namespace says which pids the pid is one of. Values without
 * `ns=` (written before it was added) name a pid of the reader's namespace.
 *
 * Pure: the format alone. Liveness is judged in kernel/liveness.ts.
 */

/** Label of a temporary snapshot: the process that made it and must remove it. */
export const OWNER_LABEL = 'overlay-snapshotter/owner';

/** A parsed {@link OWNER_LABEL} value. */
export interface Owner {
  pid: number;
  /** Start time in clock ticks since boot, as `/proc/<pid>/stat` gives it. */
  start: string;
  /** `/proc/sys/kernel/random/boot_id` when the label was written. */
  boot: string;
  /** Inode of the owner's pid namespace (`/proc/<pid>/ns/pid`); absent in values written before it was recorded. */
  ns?: string;
}

const VALUE = /^pid=([1-9][0-9]{0,9}) start=([0-9]{1,20}) boot=([0-9a-f-]{1,64})(?: ns=([1-9][0-9]{0,19}))?$/;

/** The {@link OWNER_LABEL} value naming `owner`. */
export function formatOwner(owner: Owner): string {
  return `pid=${owner.pid} start=${owner.start} boot=${owner.boot}${owner.ns === undefined ? '' : ` ns=${owner.ns}`}`;
}

/** The owner an {@link OWNER_LABEL} value names, or undefined when it is not one (a label someone else set). */
export function parseOwner(value: string): Owner | undefined {
  const m = VALUE.exec(value);
  if (!m) return undefined;
  const owner: Owner = { pid: Number(m[1]), start: m[2]!, boot: m[3]! };
  if (m[4] !== undefined) owner.ns = m[4];
  return owner;
}
