/**
 * What a volatile snapshot's directory says about the safety of its upper.
 *
 * overlayfs mounted with `volatile` never syncs the upper, and marks its
 * work dir (`work/work/incompat/volatile`) at mount. The mark stays after
 * the unmount, clean or lazy (checked on Linux 6.18), and the kernel
 * refuses every later mount of that upper while it is there: after a crash
 * the upper may have lost what was written. It cannot tell a clean unmount
 * from a crash; we can, because a crash ends the boot. So the snapshot's
 * directory also holds `volatile-boot`, the id of the boot in which its
 * mounts were last handed out (kernel/liveness.ts `bootId`). A mark with
 * this boot's id was left by a mount of this boot, whose writes are still
 * in the page cache, and is removed before the next mount; a mark with
 * another boot's id means the upper was in use when the machine went down
 * (crash or reboot), and its data cannot be trusted.
 *
 * Owns these two files' meaning and the checks made on them before a
 * volatile snapshot is mounted or made durable; the store's side (its
 * label, the removal at open) is the facade's.
 */
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { bootId } from '../kernel/liveness.js';
import { VOLATILE_MARK } from '../kernel/mount/overlay.js';
import { FailedPreconditionError, q } from '../model/errors.js';

/** In a snapshot's dir: the boot id of the boot its mounts were last handed out in. */
export const VOLATILE_BOOT_FILE = 'volatile-boot';

/** The kernel's mark in a snapshot's work dir (kernel/mount/overlay.ts): the file `dirty`, then its dirs, innermost first. */
export const VOLATILE_MARK_FILE = `${VOLATILE_MARK}/dirty`;
export const VOLATILE_MARK_DIRS: readonly string[] = [VOLATILE_MARK, dirname(VOLATILE_MARK)];

/** The kernel's mark of a volatile mount, in a snapshot's dir (its work dir is `work`). */
export function volatileMark(dir: string): string {
  return `${dir}/work/${VOLATILE_MARK}`;
}

/** What a volatile snapshot's dir says. */
export interface VolatileState {
  /** The kernel's mark is there: the upper was mounted volatile since it was last made durable. */
  readonly marked: boolean;
  /** `volatile-boot` holds this boot's id. */
  readonly thisBoot: boolean;
}

/** Reads the mark and the boot file of the snapshot dir `dir`. Two syscalls, or one when unmarked in this boot. */
export function volatileState(dir: string): VolatileState {
  let boot: string | undefined;
  try {
    boot = readFileSync(`${dir}/${VOLATILE_BOOT_FILE}`, 'utf8').trim();
  } catch {
    boot = undefined;
  }
  return { marked: existsSync(volatileMark(dir)), thisBoot: boot === bootId() };
}

/** The mark left by an earlier boot: the upper was in use when the machine went down. */
export function lostInReboot(state: VolatileState): boolean {
  return state.marked && !state.thisBoot;
}

/** Records this boot as the one the snapshot's mounts were handed out in. */
export function stampBoot(dir: string): void {
  writeFileSync(`${dir}/${VOLATILE_BOOT_FILE}`, `${bootId()}\n`, { mode: 0o600 });
}

/** Removes the kernel's mark (of a mount of this boot, now unmounted), so that the upper can be mounted again. */
export function clearVolatileMark(dir: string): void {
  rmSync(volatileMark(dir), { recursive: true, force: true });
}

/** Removes the mark and the boot file: the upper is durable, no longer volatile. */
export function forgetVolatile(dir: string): void {
  clearVolatileMark(dir);
  rmSync(`${dir}/${VOLATILE_BOOT_FILE}`, { force: true });
}

function lostError(key: string, dir: string): FailedPreconditionError {
  return new FailedPreconditionError(
    `snapshot ${q(key)} is volatile and its upper was mounted when the machine last went down (the kernel left ${volatileMark(dir)}): overlayfs never synced it, so its data may be lost and the kernel will not mount it again; remove it`,
  );
}

/**
 * Before the mounts of the volatile snapshot `key` (dir `dir`) are handed
 * out: refuses one lost in a reboot, removes the kernel's mark of an
 * earlier mount of this boot when `mounted()` says nothing has it mounted
 * (else the kernel would refuse the next mount), and stamps this boot.
 * @throws FailedPreconditionError when its upper was in use when the machine went down.
 */
export function readyVolatile(key: string, dir: string, mounted: () => boolean): void {
  const state = volatileState(dir);
  if (lostInReboot(state)) throw lostError(key, dir);
  if (state.marked && !mounted()) clearVolatileMark(dir);
  if (!state.thisBoot) stampBoot(dir);
}

/**
 * Whether the volatile snapshot `key` (dir `dir`, mounted at `mountedAt`)
 * may be made durable now.
 * @throws FailedPreconditionError while it is mounted (the mount would go
 *   on skipping syncs), or when its upper was in use when the machine went down.
 */
export function checkSyncable(key: string, dir: string, mountedAt: readonly string[] | undefined): void {
  if (mountedAt !== undefined) {
    throw new FailedPreconditionError(
      `cannot sync volatile snapshot ${q(key)} while it is mounted at ${mountedAt.join(', ')}: a volatile mount skips the syncs of what is written after; unmount it first`,
    );
  }
  if (lostInReboot(volatileState(dir))) throw lostError(key, dir);
}
