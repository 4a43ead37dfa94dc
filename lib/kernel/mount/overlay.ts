/**
 * Mounting overlayfs, including chains whose options do not fit in the one
 * page that mount(2) copies.
 *
 * Two strategies:
 *
 * - `mount-api` (kernel >= 6.8): `fsopen("overlay")`, one
 *   `fsconfig(FSCONFIG_SET_STRING, "lowerdir+", dir)` per lower layer (and
 *   `datadir+` per data-only layer), the other options one by one,
 *   `FSCONFIG_CMD_CREATE`, `fsmount`, `move_mount` onto the target. There is
 *   no page limit; each value is limited to 255 bytes, so a longer path is
 *   passed as `/proc/self/fd/<n>` of an `O_PATH` descriptor. `lowerdir+`
 *   values are taken literally (no `\` escapes: `/a:b` is the directory
 *   `/a:b`), while `upperdir` and `workdir` values are still unescaped by
 *   overlayfs, so they are passed in escaped form.
 * - `legacy`: one mount(2) with the options as one string. When the string
 *   approaches the page size (>= page size - 512 bytes), the longest common
 *   directory of the lowerdirs is stripped, as containerd does, and the
 *   mount is made with relative paths from inside that directory. When even
 *   that does not fit (past roughly 350 layers with 7-digit snapshot ids,
 *   at 11 bytes a layer for `1000001/fs:`), every layer is opened `O_PATH`
 *   and named by its descriptor number, relative to `/proc/self/fd`, which
 *   fits 500 layers whatever the root.
 *
 * `auto` takes the first branch of `legacy` (one mount(2) with the options
 * as given) whenever they fit, as it costs one syscall where the mount API
 * costs one per layer plus four, and the mount API for everything longer
 * where the kernel has it.
 *
 * Either way the chain is limited to {@link MAX_LOWER_LAYERS} lower layers.
 *
 * The mount table shows layers as the kernel was given them, so the
 * descriptor and relative forms hide which directories a mount uses; the
 * `hide` hook runs before the first syscall that uses such a form, so that
 * `mountAll` can record the mount first (records.ts).
 *
 * Owns the strategy choice and the syscalls of an overlay mount; the
 * options are checked and planned before any syscall in overlay-plan.ts.
 * Knows nothing of snapshots or of the metadata store.
 */
import createDebug from 'debug';
import { InvalidArgumentError, q } from '../../model/errors.js';
import { MS_DIRSYNC, MS_LAZYTIME, MS_MANDLOCK, MS_NOATIME, MS_NODEV, MS_NODIRATIME, MS_NOEXEC, MS_NOSUID, MS_NOSYMFOLLOW, MS_RDONLY, MS_STRICTATIME, MS_SYNCHRONOUS } from './options.js';
import {
  FSMOUNT_CLOEXEC,
  FSOPEN_CLOEXEC,
  MOUNT_ATTR_NOATIME,
  MOUNT_ATTR_NODEV,
  MOUNT_ATTR_NODIRATIME,
  MOUNT_ATTR_NOEXEC,
  MOUNT_ATTR_NOSUID,
  MOUNT_ATTR_NOSYMFOLLOW,
  MOUNT_ATTR_RDONLY,
  MOUNT_ATTR_STRICTATIME,
  chdir,
  close,
  closePath,
  fchdir,
  fsconfigCreate,
  fsconfigFd,
  fsconfigFlag,
  fsconfigString,
  fsContextMessages,
  fsmount,
  fsopen,
  mount,
  moveMountTo,
  openPath,
  pageSize,
  type SyscallError,
} from './syscalls.js';
import { type OverlayPlan, escapeOverlayPath } from './overlay-plan.js';

const debug = createDebug('overlay-snapshotter:mount');

/**
 * How overlay mounts are made: `mount-api` (fsopen/fsconfig `lowerdir+`,
 * kernel >= 6.8), `legacy` (one mount(2) with an options string), or `auto`
 * (one mount(2) when the options fit in a page as they are, which is the
 * cheaper call; otherwise the mount API when this kernel accepts
 * `lowerdir+`, probed once per process, else `legacy`).
 */
export type OverlayStrategy = 'auto' | 'mount-api' | 'legacy';

/**
 * Environment variable that forces the overlay strategy for the whole
 * process: `OVERLAY_SNAPSHOTTER_MOUNT_STRATEGY=mount-api|legacy|auto`.
 * A strategy other than `auto` passed to `mountAll` takes precedence.
 */
export const STRATEGY_ENV = 'OVERLAY_SNAPSHOTTER_MOUNT_STRATEGY';

// ---------------------------------------------------------------------------
// Strategy choice

let probed: 'mount-api' | 'legacy' | undefined;

function checkStrategy(value: unknown, where: string): OverlayStrategy {
  if (value === 'auto' || value === 'mount-api' || value === 'legacy') return value;
  throw new InvalidArgumentError(`Expected ${where} to be "auto", "mount-api" or "legacy", got ${typeof value === 'string' ? q(value) : typeof value}`);
}

/** A resolved strategy, and whether the caller or {@link STRATEGY_ENV} asked for it (rather than `auto`). */
export interface OverlayChoice {
  strategy: 'mount-api' | 'legacy';
  forced: boolean;
}

/**
 * The strategy for overlay mounts: `requested` when it is not `auto`, else
 * {@link STRATEGY_ENV} when set and not `auto`, else what the kernel
 * supports (probed once per process, then cached).
 */
export function chooseOverlayStrategy(requested?: OverlayStrategy): OverlayChoice {
  if (requested !== undefined && checkStrategy(requested, '`strategy`') !== 'auto') return { strategy: requested as 'mount-api' | 'legacy', forced: true };
  const env = process.env[STRATEGY_ENV];
  if (env !== undefined && env !== '' && checkStrategy(env, STRATEGY_ENV) !== 'auto') return { strategy: env as 'mount-api' | 'legacy', forced: true };
  probed ??= probeMountApi();
  return { strategy: probed, forced: false };
}

/**
 * The strategy an overlay mount will use: `requested` when it is not
 * `auto`, else {@link STRATEGY_ENV} when set and not `auto`, else what the
 * kernel supports (probed once per process, then cached). Under `auto`, a
 * chain whose options fit in one page is mounted with one mount(2) even
 * where this says `mount-api` (see {@link mountOverlay}).
 */
export function resolveOverlayStrategy(requested?: OverlayStrategy): 'mount-api' | 'legacy' {
  return chooseOverlayStrategy(requested).strategy;
}

/**
 * Makes `auto` behave as on a kernel that does (`'mount-api'`) or does not
 * (`'legacy'`) accept `lowerdir+`, for tests of both on one kernel;
 * `undefined` probes the kernel again at the next mount.
 */
export function setMountApiProbe(result: 'mount-api' | 'legacy' | undefined): void {
  probed = result;
}

/**
 * Asks the kernel rather than comparing versions (backports exist, and
 * seccomp may block the new syscalls): open an overlay context and append
 * one lower layer with `lowerdir+`. Nothing is mounted.
 */
function probeMountApi(): 'mount-api' | 'legacy' {
  let fd = -1;
  try {
    fd = fsopen('overlay', FSOPEN_CLOEXEC);
    fsconfigString(fd, 'lowerdir+', '/', 'probe fsconfig lowerdir+ "/"');
    debug('overlay strategy: mount-api (the kernel accepts fsconfig lowerdir+)');
    return 'mount-api';
  } catch (err) {
    debug('overlay strategy: legacy (new mount API with lowerdir+ unavailable: %s)', (err as Error).message);
    return 'legacy';
  } finally {
    if (fd >= 0) close(fd);
  }
}

// ---------------------------------------------------------------------------
// Mounting

/** What `mount -o` flags mean to the new mount API: superblock flags for fsconfig, attributes for fsmount and mount_setattr. */
export function splitFlags(flags: number): { sbFlags: string[]; attrs: number } {
  const sbFlags: string[] = [];
  let attrs = 0;
  if (flags & MS_RDONLY) {
    sbFlags.push('ro');
    attrs |= MOUNT_ATTR_RDONLY;
  }
  if (flags & MS_SYNCHRONOUS) sbFlags.push('sync');
  if (flags & MS_DIRSYNC) sbFlags.push('dirsync');
  if (flags & MS_LAZYTIME) sbFlags.push('lazytime');
  if (flags & MS_MANDLOCK) sbFlags.push('mand');
  if (flags & MS_NOSUID) attrs |= MOUNT_ATTR_NOSUID;
  if (flags & MS_NODEV) attrs |= MOUNT_ATTR_NODEV;
  if (flags & MS_NOEXEC) attrs |= MOUNT_ATTR_NOEXEC;
  if (flags & MS_NOATIME) attrs |= MOUNT_ATTR_NOATIME;
  else if (flags & MS_STRICTATIME) attrs |= MOUNT_ATTR_STRICTATIME;
  if (flags & MS_NODIRATIME) attrs |= MOUNT_ATTR_NODIRATIME;
  if (flags & MS_NOSYMFOLLOW) attrs |= MOUNT_ATTR_NOSYMFOLLOW;
  return { sbFlags, attrs };
}

/** fsconfig copies at most 256 bytes of a string value, NUL included. */
const FSCONFIG_MAX_VALUE = 255;

/**
 * The mark overlayfs leaves in its work dir at a `volatile` mount (Linux
 * 5.10+): the dirs `work/incompat/volatile` holding the file `dirty`. It
 * stays after the unmount, and the kernel refuses every later mount of
 * that work dir while it is there.
 */
export const VOLATILE_MARK = 'work/incompat/volatile';

/**
 * Mounts through the new mount API. Every fsconfig error carries the
 * kernel's own explanation from the context's message log. With
 * `layerFds`, the lower layers (in the plan's order, data-only ones
 * included) are given as these descriptors (`FSCONFIG_SET_FD`, Linux
 * 6.13+) instead of their paths: the ID-mapped copies of idmap.ts.
 */
export function mountOverlayWithApi(plan: OverlayPlan, source: string, target: string, flags: number, hide: () => void = noHide, layerFds?: readonly number[]): void {
  const what = `mount overlay on ${q(target)}`;
  const pinned: number[] = [];
  // A value over the fsconfig limit is named through an O_PATH descriptor.
  const pathValue = (path: string, escaped: string): string => {
    if (Buffer.byteLength(escaped) <= FSCONFIG_MAX_VALUE) return escaped;
    hide();
    const fd = openPath(path);
    pinned.push(fd);
    return `/proc/self/fd/${fd}`;
  };
  const { sbFlags, attrs } = splitFlags(flags);
  let fsfd = -1;
  try {
    fsfd = fsopen('overlay', FSOPEN_CLOEXEC);
    // mount(2) shows its source in mountinfo; the mount API shows "none" unless told.
    if (source !== '') fsconfigString(fsfd, 'source', source, `${what}: fsconfig source ${q(source)}`);
    let n = 0;
    for (const option of plan.options) {
      if (option.kind === 'lowerdir') {
        for (const layer of option.layers) {
          const key = layer.data ? 'datadir+' : 'lowerdir+';
          const fd = layerFds?.[n++];
          if (fd !== undefined) fsconfigFd(fsfd, key, fd, `${what}: fsconfig ${key} ${q(layer.path)} (ID-mapped, by descriptor)`);
          else fsconfigString(fsfd, key, pathValue(layer.path, layer.path), `${what}: fsconfig ${key} ${q(layer.path)}`);
        }
      } else if (option.kind !== 'other') {
        fsconfigString(fsfd, option.kind, pathValue(option.path, escapeOverlayPath(option.path)), `${what}: fsconfig ${option.kind} ${q(option.path)}`);
      } else if (option.value === undefined) {
        fsconfigFlag(fsfd, option.key, `${what}: fsconfig ${q(option.key)}`);
      } else {
        fsconfigString(fsfd, option.key, option.value, `${what}: fsconfig ${q(option.word)}`);
      }
    }
    for (const flag of sbFlags) fsconfigFlag(fsfd, flag, `${what}: fsconfig ${q(flag)}`);
    fsconfigCreate(fsfd, `${what}: fsconfig create (${plan.layers} lower layers)`);
    const mfd = fsmount(fsfd, FSMOUNT_CLOEXEC, attrs, `${what}: fsmount`);
    try {
      moveMountTo(mfd, target, `${what}: move_mount`);
    } finally {
      close(mfd);
    }
    debug('mounted overlay on %s through the mount API (%d lower layers, %d pinned by descriptor)', target, plan.layers, pinned.length);
  } catch (err) {
    if (fsfd >= 0 && typeof (err as SyscallError).syscall === 'string') {
      const messages = fsContextMessages(fsfd);
      if (messages.length > 0) (err as Error).message += ` (kernel: ${messages.join('; ')})`;
    }
    throw err;
  } finally {
    if (fsfd >= 0) close(fsfd);
    for (const fd of pinned) closePath(fd);
  }
}

/** The default of the `hide` hooks: nothing to record. */
function noHide(): void {}

/** The options string for mount(2), with each path mapped through `name` (already escaped by it). */
function legacyData(plan: OverlayPlan, name: (path: string) => string): string {
  const words: string[] = [];
  for (const option of plan.options) {
    if (option.kind === 'lowerdir') {
      if (option.plain !== undefined && name === escapeOverlayPath) {
        words.push(`lowerdir=${option.plain}`);
        continue;
      }
      let value = '';
      option.layers.forEach((layer, i) => {
        if (i > 0) value += layer.data ? '::' : ':';
        value += name(layer.path);
      });
      words.push(`lowerdir=${value}`);
    } else if (option.kind !== 'other') {
      words.push(`${option.kind}=${name(option.path)}`);
    } else {
      words.push(option.word);
    }
  }
  return words.join(',');
}

/** The deepest directory holding every lower layer, or undefined when it is `/` or a path is relative. */
function commonLowerDir(plan: OverlayPlan): string | undefined {
  let common: string[] | undefined;
  for (const option of plan.options) {
    if (option.kind !== 'lowerdir') continue;
    for (const layer of option.layers) {
      if (!layer.path.startsWith('/')) return undefined;
      const parts = layer.path.split('/').filter((p) => p !== '');
      if (common === undefined) {
        // A layer's own directory is not a prefix to strip from it: start from its parent.
        common = parts.slice(0, -1);
        continue;
      }
      let n = 0;
      while (n < common.length && n < parts.length - 1 && common[n] === parts[n]) n++;
      common.length = n;
    }
  }
  return common && common.length > 0 ? `/${common.join('/')}` : undefined;
}

/** `path` relative to `dir` when it lies below it, else unchanged (an absolute path works from any cwd). */
function relativeTo(dir: string, path: string): string {
  const parts = path.split('/').filter((p) => p !== '');
  const base = dir.split('/').filter((p) => p !== '');
  if (!path.startsWith('/') || parts.length <= base.length) return path;
  for (let i = 0; i < base.length; i++) if (parts[i] !== base[i]) return path;
  return parts.slice(base.length).join('/');
}

/**
 * Runs `fn` with the process cwd set to `dir`, and restores the cwd from a
 * descriptor (which works even if the old cwd was renamed). Everything is
 * synchronous, so no other JavaScript runs in between; the cwd is
 * process-wide, though, so a libuv thread resolving a relative path at
 * that instant would see `dir`. Nothing in this library does that.
 */
function withCwd<T>(dir: string, fn: () => T): T {
  const saved = openPath('.');
  try {
    chdir(dir);
    try {
      return fn();
    } finally {
      fchdir(saved);
    }
  } finally {
    closePath(saved);
  }
}

/**
 * The options string for one mount(2) when it fits in a page as it is,
 * with room to spare (containerd's threshold: page size - 512), else
 * undefined.
 */
function plainLegacyData(plan: OverlayPlan): string | undefined {
  const full = legacyData(plan, escapeOverlayPath);
  return Buffer.byteLength(full) < pageSize() - 512 ? full : undefined;
}

/**
 * Mounts an overlay with the strategy chosen by {@link chooseOverlayStrategy}.
 *
 * Under `auto` (not forced) with the mount API available, a chain whose
 * options fit in one page is still mounted with one mount(2): one syscall
 * instead of one fsconfig per layer plus fsopen, create, fsmount and
 * move_mount (20 layers: ~185 against ~220 us in the kernel, and each call
 * through koffi adds ~1 us). If that mount(2) fails, the mount API tries
 * the same mount, so that a failure carries the kernel's explanation from
 * the context log (mount(2) only gives errno); mount(2) leaves nothing
 * behind when it fails, so the second try starts clean.
 */
export function mountOverlay(plan: OverlayPlan, source: string, target: string, flags: number, choice: OverlayChoice, hide: () => void = noHide): void {
  if (choice.strategy === 'legacy') {
    mountOverlayLegacy(plan, source, target, flags, hide);
    return;
  }
  if (!choice.forced) {
    const data = plainLegacyData(plan);
    if (data !== undefined) {
      try {
        mount(source, target, 'overlay', flags, data, () => `mount overlay on ${q(target)}`);
        debug('mounted overlay on %s with mount(2) (auto: %d lower layers, %d bytes of options)', target, plan.layers, data.length);
        return;
      } catch (err) {
        debug('mount(2) of overlay on %s failed (%s); trying the mount API for the kernel\'s reason', target, (err as Error).message);
      }
    }
  }
  mountOverlayWithApi(plan, source, target, flags, hide);
}

/**
 * Mounts through one mount(2) call, shortening the options string as
 * described in this module's header when it would not fit in a page.
 */
export function mountOverlayLegacy(plan: OverlayPlan, source: string, target: string, flags: number, hide: () => void = noHide): void {
  const what = `mount overlay on ${q(target)}`;
  const page = pageSize();
  const full = plainLegacyData(plan);
  if (full !== undefined) {
    mount(source, target, 'overlay', flags, full, what);
    debug('mounted overlay on %s with mount(2) (%d lower layers, %d bytes of options)', target, plan.layers, full.length);
    return;
  }
  const common = commonLowerDir(plan);
  if (common !== undefined) {
    const compact = legacyData(plan, (p) => escapeOverlayPath(relativeTo(common, p)));
    // mount(2) copies one page and cuts the string at its last byte.
    if (Buffer.byteLength(compact) < page) {
      hide();
      withCwd(common, () => mount(source, target, 'overlay', flags, compact, `${what} (from ${q(common)})`));
      debug('mounted overlay on %s with mount(2) relative to %s (%d lower layers, %d bytes of options)', target, common, plan.layers, compact.length);
      return;
    }
  }
  const fds = new Map<string, number>();
  try {
    const byFd = legacyData(plan, (p) => {
      let fd = fds.get(p);
      if (fd === undefined) {
        fd = openPath(p);
        fds.set(p, fd);
      }
      return String(fd);
    });
    if (Buffer.byteLength(byFd) >= page) {
      throw new InvalidArgumentError(
        `overlay options on ${q(target)} take ${Buffer.byteLength(byFd)} bytes even with layers named by descriptor, more than mount(2) accepts (${page - 1}); use the mount-api strategy`,
      );
    }
    hide();
    withCwd('/proc/self/fd', () => mount(source, target, 'overlay', flags, byFd, `${what} (layers by descriptor)`));
    debug('mounted overlay on %s with mount(2), layers by descriptor (%d lower layers, %d bytes of options)', target, plan.layers, byFd.length);
  } finally {
    for (const fd of fds.values()) closePath(fd);
  }
}
