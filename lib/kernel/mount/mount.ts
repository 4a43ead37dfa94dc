/**
 * mountAll / unmountAll: mount specs onto a target and take them off again.
 * Knows nothing about snapshots beyond the layout of a store's root, which
 * the mount records need (records.ts); see overlay.ts for overlay chains
 * and idmap.ts for ID-mapped binds and layers.
 */
import { existsSync } from 'node:fs';
import { constants as osConstants } from 'node:os';
import { resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import createDebug from 'debug';
import { FailedPreconditionError, InvalidArgumentError, UnavailableError, q } from '../../model/errors.js';
import { type MountIdMapping, takeIdMapping } from '../../model/idmap.js';
import type { Mount } from '../../model/types.js';
import { acquireUserNamespace } from '../userns.js';
import { errnoOf } from '../libc.js';
import { mountIdmappedBind, mountIdmappedOverlay } from './idmap.js';
import { MS_BIND, MS_MOVE, MS_NOATIME, MS_NODEV, MS_NODIRATIME, MS_NOEXEC, MS_NOSUID, MS_NOSYMFOLLOW, MS_RDONLY, MS_RELATIME, MS_REMOUNT, MS_STRICTATIME, PER_MOUNT_FLAGS, parseMountOptions, type ParsedMountOptions } from './options.js';
import { type OverlayChoice, type OverlayStrategy, VOLATILE_MARK, chooseOverlayStrategy, mountOverlay } from './overlay.js';
import { type OverlayPlan, overlayPaths, planOverlay } from './overlay-plan.js';
import { type WrittenRecord, clearRecords, dropRecords, recordMount, recordMounted } from './records.js';
import { mount, statfsFlags, tryUmount2, umount2Error } from './syscalls.js';

const debug = createDebug('overlay-snapshotter:mount');

/** Options of {@link mountAll}. */
export interface MountAllOptions {
  /**
   * How overlay mounts are made; default `auto`: one mount(2) when the
   * options fit in a page, else the mount API where the kernel accepts
   * `lowerdir+`, else mount(2) with shortened options. `mount-api` or
   * `legacy` here overrides the `OVERLAY_SNAPSHOTTER_MOUNT_STRATEGY`
   * environment variable.
   */
  strategy?: OverlayStrategy;
}

const MOUNT_ALL_OPTIONS = ['strategy'];

/** EBUSY retries of one unmount, as containerd: 50 tries, 50 ms apart. */
const UNMOUNT_TRIES = 50;
const UNMOUNT_DELAY_MS = 50;

const { EBUSY, EINVAL, ENOENT } = osConstants.errno;

/** statfs(2) ST_* bits -> the MS_* flags a remount must keep (ST_RELATIME differs from MS_RELATIME). */
const ST_TO_MS: ReadonlyArray<readonly [number, number]> = [
  [0x1, MS_RDONLY],
  [0x2, MS_NOSUID],
  [0x4, MS_NODEV],
  [0x8, MS_NOEXEC],
  [0x400, MS_NOATIME],
  [0x800, MS_NODIRATIME],
  [0x1000, MS_RELATIME],
  [0x2000, MS_NOSYMFOLLOW],
];

/** A `//`, a `.` or `..` component, or a trailing `/`: what `resolve` would change in an absolute path. */
const NOT_NORMAL = /\/\/|\/\.\.?(?:\/|$)|.\/$/;

/** `resolve(path)`, without its work for a path that is already absolute and normal (hot path). */
function absolute(path: string): string {
  return path.startsWith('/') && !NOT_NORMAL.test(path) ? path : resolve(path);
}

interface Planned {
  spec: Mount;
  parsed: ParsedMountOptions;
  overlay?: OverlayPlan;
  /** The spec's `uidmap=`/`gidmap=`, taken out of its data: an ID-mapped bind, or an overlay with ID-mapped layers. */
  idmap?: MountIdMapping;
}

/**
 * Mounts `mounts` in order, stacked on `target`. A bind with per-mount
 * flags (`ro`, `nosuid`, ...) is a bind followed by a remount that applies
 * them; a propagation word (`rprivate`, ...) is applied after the mount.
 * If a mount fails, the ones this call made are unmounted again, so nothing
 * is left mounted, and the error is thrown: a Node-style error (`code`
 * such as `'EINVAL'`) whose message names the target and the type.
 *
 * Overlay mounts take chains of up to {@link MAX_LOWER_LAYERS} lower
 * layers, whatever the length of their paths; see `MountAllOptions.strategy`
 * and the `OVERLAY_SNAPSHOTTER_MOUNT_STRATEGY` environment variable
 * (`mount-api`, `legacy` or `auto`) to choose how.
 *
 * An overlay whose layers the kernel is given by descriptor or relative
 * path (a chain whose options exceed a page, or paths over 255 bytes) is
 * first recorded in its store's `mount-records/` folder, because the mount
 * table will not show which snapshots it uses; {@link unmountAll} deletes
 * the record (records.ts, docs/reliability.md).
 *
 * A bind or overlay spec with `uidmap=`/`gidmap=` options (as the
 * snapshotter's `remapIds` makes them) is ID-mapped as containerd's mount
 * package does it: a user namespace with those maps (made by a
 * short-lived helper process, kernel/userns.ts), the bind's source or each
 * lower layer cloned and ID-mapped through it, the overlay built over those
 * (idmap.ts). Such an overlay is recorded as above: the mount table does
 * not name its layers.
 *
 * @throws InvalidArgumentError before anything is mounted, for a malformed
 *   spec, option or ID map, or an overlay chain deeper than the kernel's limit.
 * @throws UnavailableError when a mount record cannot be written (nothing
 *   is mounted then), and for an ID-mapped spec the kernel cannot make here
 *   (the message names what is missing: `unshare`, user namespaces, Linux
 *   5.12 for ID-mapped mounts, 5.19 for ID-mapped overlay layers, a
 *   filesystem that allows them), or of a type other than bind and overlay.
 * @throws FailedPreconditionError for an overlay whose work dir holds the
 *   kernel's mark of an earlier volatile mount, which the kernel refuses
 *   to mount again.
 */
export async function mountAll(mounts: Mount[], target: string, opts?: MountAllOptions): Promise<void> {
  const strategy = checkOptions(opts);
  if (typeof target !== 'string' || target === '' || target.includes('\0')) {
    throw new InvalidArgumentError(`Expected the mount target to be a non-empty path, got ${typeof target === 'string' ? q(target) : typeof target}`);
  }
  if (!Array.isArray(mounts)) throw new InvalidArgumentError(`Expected mounts to be an array of mount specs, got ${typeof mounts}`);
  // The target is made absolute now: a legacy overlay mount may run with another cwd.
  const abs = absolute(target);
  // Every spec is checked before the first syscall.
  const plans = mounts.map((spec, i) => planMount(spec, i, abs));
  const overlayChoice = plans.some((p) => p.overlay) ? chooseOverlayStrategy(strategy) : undefined;
  let made = 0;
  const records: WrittenRecord[] = [];
  try {
    for (const plan of plans) made += await mountOne(plan, abs, overlayChoice, records);
  } catch (err) {
    if (made > 0) {
      debug('mount on %s failed; unmounting the %d mounts made before it', abs, made);
      try {
        for (; made > 0; made--) await unmountOnce(abs);
      } catch (rollbackErr) {
        (err as Error).message += ` (and ${made} earlier mounts on the target could not be unmounted: ${(rollbackErr as Error).message})`;
      }
    }
    // Kept while anything this call made is still mounted.
    if (made === 0) dropRecords(records);
    throw err;
  }
}

function checkOptions(opts: MountAllOptions | undefined): OverlayStrategy | undefined {
  if (opts === undefined) return undefined;
  if (typeof opts !== 'object' || opts === null) throw new InvalidArgumentError(`Expected mountAll options to be an object, got ${opts === null ? 'null' : typeof opts}`);
  for (const key of Object.keys(opts)) {
    if (!MOUNT_ALL_OPTIONS.includes(key)) throw new InvalidArgumentError(`Unknown mountAll option ${q(key)}; the known option is "strategy"`);
  }
  const { strategy } = opts;
  if (strategy !== undefined && strategy !== 'auto' && strategy !== 'mount-api' && strategy !== 'legacy') {
    throw new InvalidArgumentError(`Expected \`strategy\` to be "auto", "mount-api" or "legacy", got ${typeof strategy === 'string' ? q(strategy) : typeof strategy}`);
  }
  return strategy;
}

function planMount(spec: Mount, index: number, target: string): Planned {
  if (typeof spec !== 'object' || spec === null) throw new InvalidArgumentError(`Expected mounts[${index}] to be a mount spec object, got ${spec === null ? 'null' : typeof spec}`);
  if (typeof spec.type !== 'string' || spec.type === '' || spec.type.includes('\0')) {
    throw new InvalidArgumentError(`Expected mounts[${index}].type to be a non-empty string, got ${typeof spec.type === 'string' ? q(spec.type) : typeof spec.type}`);
  }
  if (typeof spec.source !== 'string' || spec.source.includes('\0')) {
    throw new InvalidArgumentError(`Expected mounts[${index}].source to be a string, got ${typeof spec.source}`);
  }
  if (spec.target !== undefined && spec.target !== '') {
    throw new InvalidArgumentError(`mounts[${index}] has target ${q(String(spec.target))}: mountAll mounts every spec on the target it is given, so leave target out`);
  }
  const parsed = parseMountOptions(spec.options);
  if (spec.type === 'bind') parsed.flags |= MS_BIND;
  parsed.bind = (parsed.flags & MS_BIND) !== 0;
  // Hot path: most specs have no ID map, and their data is left as it is.
  let idmap: MountIdMapping | undefined;
  if (parsed.data.some((w) => w.startsWith('uidmap=') || w.startsWith('gidmap='))) {
    const taken = takeIdMapping(parsed.data, `mounts[${index}] (${spec.type} on ${q(target)})`);
    idmap = taken.mapping;
    parsed.data = taken.rest;
    if ((parsed.flags & (MS_REMOUNT | MS_MOVE)) !== 0 || (!parsed.bind && spec.type !== 'overlay')) {
      throw new UnavailableError(`mounts[${index}] (${spec.type} on ${q(target)}) is ID-mapped; mountAll ID-maps new bind and overlay mounts only`);
    }
  }
  if (spec.type === 'overlay' && !parsed.bind && (parsed.flags & (MS_REMOUNT | MS_MOVE)) === 0) {
    return { spec, parsed, overlay: planOverlay(parsed.data, target), ...(idmap && { idmap }) };
  }
  return { spec, parsed, ...(idmap && { idmap }) };
}

/**
 * Mounts one spec; returns how many mounts it stacked on the target (0 for
 * a remount or move). An overlay whose layers the mount table will not
 * show by their real paths is recorded first (records.ts), and
 * its records are added to `records`.
 */
async function mountOne(plan: Planned, target: string, overlayChoice: OverlayChoice | undefined, records: WrittenRecord[]): Promise<number> {
  const { spec, parsed } = plan;
  const flags = parsed.flags;
  // Built only when needed: the overlay hot path never needs it.
  const what = (): string => `mount ${q(spec.type)} on ${q(target)}`;
  const userns = plan.idmap === undefined ? undefined : await acquireUserNamespace(plan.idmap);
  try {
    if (plan.overlay) {
      const overlay = plan.overlay;
      let written: WrittenRecord[] | undefined;
      const hide = () => {
        written ??= recordMount(target, overlayPaths(overlay));
      };
      try {
        if (userns !== undefined) mountIdmappedOverlay(overlay, spec.source, target, flags, overlayChoice!, userns.fd, hide);
        else mountOverlay(overlay, spec.source, target, flags, overlayChoice!, hide);
      } catch (err) {
        if (written !== undefined) dropRecords(written);
        throw explainVolatileMark(err, overlay);
      }
      if (written !== undefined) {
        recordMounted(written);
        records.push(...written);
      }
    } else if (userns !== undefined) {
      mountIdmappedBind(spec.source, target, flags, userns.fd);
    } else {
      mount(spec.source, target, spec.type, flags, parsed.data.length > 0 ? parsed.data.join(',') : null, what);
      debug('mounted %s %s on %s (flags 0x%s)', spec.type, spec.source, target, flags.toString(16));
    }
  } finally {
    userns?.release();
  }
  const stacked = (flags & (MS_REMOUNT | MS_MOVE)) === 0 ? 1 : 0;
  try {
    // A bind ignores per-mount flags: they take a remount of the bind (an ID-mapped bind got them with its map).
    if (parsed.bind && stacked && userns === undefined && (flags & PER_MOUNT_FLAGS) !== 0) remountBind(target, flags, what());
    if (parsed.propagation !== 0) mount(null, target, null, parsed.propagation, null, `${what()}: set propagation`);
  } catch (err) {
    if (stacked) await unmountOnce(target).catch((e: Error) => debug('could not undo %s: %s', what(), e.message));
    throw err;
  }
  return stacked;
}

/**
 * After a failed overlay mount: when its work dir holds the kernel's mark
 * of an earlier volatile mount (`work/incompat/volatile`, which stays
 * after a clean unmount too), the kernel refuses every later mount with a
 * bare EINVAL; say so. Checked only after a failure, so a mount that works
 * costs nothing more.
 */
function explainVolatileMark(err: unknown, plan: OverlayPlan): unknown {
  if (errnoOf(err) !== 'EINVAL') return err;
  const work = plan.options.find((o) => o.kind === 'workdir');
  if (work === undefined || work.kind !== 'workdir') return err;
  const mark = `${work.path}/${VOLATILE_MARK}`;
  if (!existsSync(mark)) return err;
  return new FailedPreconditionError(
    `the work dir ${q(work.path)} holds ${q(mark)}, the kernel's mark of an earlier volatile mount, so the kernel refuses to mount it again (${(err as Error).message}); get the mounts again from the snapshotter (its mounts() clears the mark when the upper was not used across a reboot) or remove the snapshot`,
    { cause: err },
  );
}

/**
 * Remounts a fresh bind with its per-mount flags. Flags the kernel has
 * locked on the bind (inherited from a more privileged mount namespace)
 * must be kept on the remount or it fails with EPERM, so the bind's
 * current flags from statfs are carried over, as containerd does.
 */
function remountBind(target: string, flags: number, what: string): void {
  const current = statfsFlags(target);
  let keep = 0;
  for (const [st, ms] of ST_TO_MS) if (current & st) keep |= ms;
  // An explicit atime word replaces the inherited atime mode rather than adding to it.
  if (flags & (MS_NOATIME | MS_RELATIME | MS_STRICTATIME)) keep &= ~(MS_NOATIME | MS_RELATIME);
  const remount = MS_REMOUNT | MS_BIND | (flags & PER_MOUNT_FLAGS) | keep;
  mount(null, target, null, remount, null, `${what}: remount bind (flags 0x${remount.toString(16)})`);
}

/**
 * Retries an unmount that failed with EBUSY (a process still leaving the
 * mount) until it stops being busy or the tries run out; returns the errno
 * of the last try, 0 when it unmounted.
 */
async function retryBusy(target: string): Promise<number> {
  debug('unmount %s: busy, retrying for up to %d ms', target, UNMOUNT_TRIES * UNMOUNT_DELAY_MS);
  for (let attempt = 2; ; attempt++) {
    await sleep(UNMOUNT_DELAY_MS);
    const errno = tryUmount2(target, 0);
    if (errno !== EBUSY || attempt >= UNMOUNT_TRIES) return errno;
  }
}

/** One umount2, retrying EBUSY for a while. */
async function unmountOnce(target: string): Promise<void> {
  let errno = tryUmount2(target, 0);
  if (errno === EBUSY) errno = await retryBusy(target);
  if (errno !== 0) throw umount2Error(target, errno);
}

/**
 * Unmounts `target` until it is no longer a mount point, so stacked mounts
 * all come off, and deletes the mount records this process made for it.
 * Retries EBUSY for a while (50 x 50 ms). A path that is not mounted
 * (EINVAL) or does not exist (ENOENT) is not an error.
 *
 * Hot path: one umount2 per mount plus the one that finds nothing left
 * (cheaper than asking first: statx or mountinfo also resolve the path),
 * and no error object unless one is thrown.
 */
export async function unmountAll(target: string): Promise<void> {
  if (typeof target !== 'string' || target === '' || target.includes('\0')) {
    throw new InvalidArgumentError(`Expected the unmount target to be a non-empty path, got ${typeof target === 'string' ? q(target) : typeof target}`);
  }
  const abs = absolute(target);
  for (let n = 0; ; n++) {
    let errno = tryUmount2(abs, 0);
    if (errno === EBUSY) errno = await retryBusy(abs);
    if (errno === 0) continue;
    if (errno === EINVAL || errno === ENOENT) {
      if (n > 0) debug('unmounted %d mounts from %s', n, abs);
      clearRecords(abs);
      return;
    }
    throw umount2Error(abs, errno);
  }
}
