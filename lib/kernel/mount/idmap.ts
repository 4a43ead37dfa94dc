/**
 * ID-mapped mounts of snapshot layers, as containerd's mount package makes
 * them: each layer is cloned (`open_tree` with OPEN_TREE_CLONE) and the
 * detached copy ID-mapped through a user namespace (`mount_setattr` with
 * MOUNT_ATTR_IDMAP), so that a file owned by 0 on disk shows as the host id
 * container root maps to. A bind is that copy attached to the target. An
 * overlay takes the copies as its lower layers: by descriptor where the
 * kernel accepts `fsconfig(FSCONFIG_SET_FD, "lowerdir+")` (Linux 6.13+)
 * and the mount API is the strategy, else attached for a moment to temporary mount points that the overlay is
 * mounted over and that are detached right after. Either way no copy stays
 * attached anywhere but inside the overlay, and the mount table names the
 * layers as `/` or the temporary points, so `mountAll` records the mount
 * first (records.ts).
 *
 * Owns these syscall sequences; the user namespace comes from ../userns.ts,
 * and the spec was checked (overlay-plan.ts, model/idmap.ts) before any
 * syscall. Knows nothing of snapshots or of the metadata store.
 */
import { mkdirSync, mkdtempSync, rmdirSync } from 'node:fs';
import { release, tmpdir } from 'node:os';
import { join } from 'node:path';
import createDebug from 'debug';
import { UnavailableError, q } from '../../model/errors.js';
import { errnoOf } from '../libc.js';
import { kernelAtLeast } from '../release.js';
import { MS_REC } from './options.js';
import { type OverlayChoice, mountOverlay, mountOverlayWithApi, splitFlags } from './overlay.js';
import type { OverlayOption, OverlayPlan } from './overlay-plan.js';
import { FSOPEN_CLOEXEC, MNT_DETACH, MOUNT_ATTR_IDMAP, close, closePath, fsconfigFd, fsopen, mountSetattr, moveMountTo, openPath, openTreeClone, tryUmount2 } from './syscalls.js';

const debug = createDebug('overlay-snapshotter:mount');

let layerFds: boolean | undefined;

/**
 * Whether overlayfs takes a lower layer as a descriptor
 * (`fsconfig(FSCONFIG_SET_FD, "lowerdir+")`, Linux 6.13+): asked of the
 * kernel with an `O_PATH` descriptor of `/`, nothing mounted. `null` when
 * this process may not open a filesystem context (EPERM).
 */
export function probeLayerFds(): boolean | null {
  let fsfd = -1;
  let dir = -1;
  try {
    fsfd = fsopen('overlay', FSOPEN_CLOEXEC);
    dir = openPath('/');
    fsconfigFd(fsfd, 'lowerdir+', dir, 'probe fsconfig lowerdir+ by descriptor');
    return true;
  } catch (err) {
    debug('layer descriptor probe: %s', (err as Error).message);
    return fsfd < 0 && errnoOf(err) === 'EPERM' ? null : false;
  } finally {
    if (dir >= 0) closePath(dir);
    if (fsfd >= 0) close(fsfd);
  }
}

/**
 * Makes ID-mapped overlays use (`true`) or not use (`false`) layers by
 * descriptor, for tests of both ways on one kernel; `undefined` asks the
 * kernel again at the next mount.
 */
export function setLayerFdsProbe(value: boolean | undefined): void {
  layerFds = value;
}

/** overlayfs takes ID-mapped layers from Linux 5.19. */
export function overlayTakesIdmappedLayers(kernelRelease = release()): boolean {
  return kernelAtLeast(5, 19, kernelRelease);
}

/** The UnavailableError of a kernel that would not ID-map a mount, or `err` itself. */
function idmapError(err: unknown, path: string): unknown {
  const code = errnoOf(err);
  if (code === 'ENOSYS') return new UnavailableError(`cannot ID-map ${q(path)}: ID-mapped mounts need Linux 5.12 or later (mount_setattr)`, { cause: err });
  if (code === 'EINVAL' || code === 'EPERM' || code === 'EOPNOTSUPP') {
    return new UnavailableError(
      `the kernel refused to ID-map the mount of ${q(path)} (${code}): its filesystem may not allow ID-mapped mounts (ext4, xfs and btrfs do from Linux 5.12, tmpfs from 6.3), or this process may not mount`,
      { cause: err },
    );
  }
  return err;
}

/**
 * A detached copy of the mount at `path` (the whole tree below it with
 * `recursive`), ID-mapped through the user namespace `usernsFd`, with the
 * per-mount attributes `attrs` (MOUNT_ATTR_*). The caller closes it.
 */
export function idmappedTree(path: string, usernsFd: number, recursive: boolean, attrs: number): number {
  const what = `ID-map ${q(path)}`;
  let fd: number;
  try {
    fd = openTreeClone(path, recursive, `${what}: open_tree`);
  } catch (err) {
    throw idmapError(err, path);
  }
  try {
    mountSetattr(fd, recursive, MOUNT_ATTR_IDMAP | attrs, usernsFd, `${what}: mount_setattr`);
  } catch (err) {
    close(fd);
    throw idmapError(err, path);
  }
  return fd;
}

/**
 * An ID-mapped bind of `source` on `target`: the copy of idmappedTree with
 * the bind's per-mount flags (`ro`, `nosuid`...) set in the same call, so
 * no remount follows. `rbind` maps the whole tree below `source`.
 */
export function mountIdmappedBind(source: string, target: string, flags: number, usernsFd: number): void {
  const fd = idmappedTree(source, usernsFd, (flags & MS_REC) !== 0, splitFlags(flags).attrs);
  try {
    moveMountTo(fd, target, `mount ID-mapped bind of ${q(source)} on ${q(target)}: move_mount`);
  } finally {
    close(fd);
  }
  debug('mounted an ID-mapped bind of %s on %s', source, target);
}

/** The lower layers of a plan, in order (data-only ones included). */
function lowerPaths(plan: OverlayPlan): string[] {
  const out: string[] = [];
  for (const option of plan.options) if (option.kind === 'lowerdir') for (const layer of option.layers) out.push(layer.path);
  return out;
}

/** `plan` with its lower layers at `paths` instead (same order, same data-only marks). */
function withLowerPaths(plan: OverlayPlan, paths: readonly string[]): OverlayPlan {
  let n = 0;
  const options = plan.options.map((option): OverlayOption =>
    option.kind === 'lowerdir' ? { kind: 'lowerdir', layers: option.layers.map((layer) => ({ path: paths[n++]!, data: layer.data })) } : option,
  );
  return { ...plan, options };
}

/**
 * An overlay whose lower layers are ID-mapped through `usernsFd` (the
 * upper and work dirs are not: what the container writes lands there with
 * the ids it has on the host). `hide` runs before anything is mounted: the
 * mount table will not name the layers.
 * @throws UnavailableError on a kernel whose overlayfs takes no ID-mapped
 *   layers (before 5.19) or that cannot ID-map a layer's filesystem.
 */
export function mountIdmappedOverlay(plan: OverlayPlan, source: string, target: string, flags: number, choice: OverlayChoice, usernsFd: number, hide: () => void): void {
  if (!overlayTakesIdmappedLayers()) {
    throw new UnavailableError(`cannot mount the overlay on ${q(target)} with ID-mapped layers: overlayfs takes them from Linux 5.19, this is ${release()}`);
  }
  hide();
  const paths = lowerPaths(plan);
  const trees: number[] = [];
  try {
    for (const path of paths) trees.push(idmappedTree(path, usernsFd, false, 0));
    // Descriptors need the mount API: the `legacy` strategy, forced, takes the mount points and one mount(2).
    layerFds ??= probeLayerFds() === true;
    const byFd = layerFds && choice.strategy === 'mount-api';
    if (byFd) mountOverlayWithApi(plan, source, target, flags, undefined, trees);
    else mountThroughMountPoints(plan, source, target, flags, choice, trees);
    debug('mounted overlay on %s with %d ID-mapped layers (%s)', target, trees.length, byFd ? 'by descriptor' : 'through temporary mount points');
  } finally {
    for (const fd of trees) close(fd);
  }
}

/**
 * For kernels whose overlayfs takes layers by path only: each ID-mapped
 * copy is attached to a directory of a fresh temporary dir, the overlay is
 * mounted over those, and they are detached again (overlayfs holds its own
 * private copy of each layer, so the overlay keeps working). The temporary
 * dirs are removed one by one with rmdir, never recursively: a point that
 * could not be detached keeps its dir rather than have a layer deleted
 * through it.
 */
function mountThroughMountPoints(plan: OverlayPlan, source: string, target: string, flags: number, choice: OverlayChoice, trees: readonly number[]): void {
  const dir = mkdtempSync(join(tmpdir(), 'overlay-snapshotter-idmap-'));
  const points: string[] = [];
  const attached: string[] = [];
  try {
    for (let i = 0; i < trees.length; i++) {
      const point = `${dir}/${i}`;
      mkdirSync(point);
      points.push(point);
      moveMountTo(trees[i]!, point, `attach an ID-mapped layer to ${q(point)}: move_mount`);
      attached.push(point);
    }
    mountOverlay(withLowerPaths(plan, points), source, target, flags, choice);
  } finally {
    let kept = 0;
    for (const point of points) {
      if (attached.includes(point)) {
        const errno = tryUmount2(point, MNT_DETACH);
        if (errno !== 0) {
          debug('could not detach the temporary layer mount %s (errno %d); its dir stays', point, errno);
          kept++;
          continue;
        }
      }
      kept += removeDir(point);
    }
    if (kept === 0) removeDir(dir);
  }
}

/** rmdir(2), never recursive; returns 1 when the dir stays (the failure is logged, not thrown over the mount's own error). */
function removeDir(dir: string): number {
  try {
    rmdirSync(dir);
    return 0;
  } catch (err) {
    debug('could not remove the temporary dir %s: %s', dir, (err as Error).message);
    return 1;
  }
}
