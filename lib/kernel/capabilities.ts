/**
 * What the kernel and the root's filesystem can do for overlay snapshots
 * (and for ID-mapped, volatile and quota-bound ones),
 * as one documented object (docs/capabilities.md).
 *
 * The facts that take files, mounts or syscalls to learn (d_type, the
 * overlay mount, `lowerdir+`, ID-mapped mounts, module parameters) are
 * probed once per root and kernel release and kept in the metadata store's
 * `meta` table under `probe:<kernel release>`; a warm open reads them back
 * with one query and makes no probe. The facts of this process (user
 * namespace, the helper that ID-mapped mounts need in PATH) and of the
 * root's current filesystem (one statfs, one quotactl) are read at every
 * open: they are cheap, and they can differ between two processes sharing
 * a root.
 *
 * Kernel facts only: the cache is the {@link CapabilityCache} interface that
 * the facade fills with the store's meta table; kernel/ never imports the store.
 */
import { release } from 'node:os';
import createDebug from 'debug';
import { STRATEGY_ENV } from './mount/index.js';
import { overlayTakesIdmappedLayers, probeLayerFds } from './mount/idmap.js';
import { probeProjectQuotas } from './quota.js';
import { helperMissing } from './userns.js';
import type { Driver } from '../model/types.js';
import {
  AUFS_SUPER_MAGIC,
  ECRYPTFS_SUPER_MAGIC,
  OVERLAYFS_SUPER_MAGIC,
  ZFS_SUPER_MAGIC,
  filesystemName,
  filesystemType,
  inUserNamespace,
  kernelAtLeast,
  overlayListed,
  overlayParameter,
  probeIdmappedMounts,
  probeLowerdirPlus,
  probeOverlayMount,
  probeVolatileOverlay,
  supportsDType,
  supportsUserXattrs,
} from './probe.js';

const debug = createDebug('overlay-snapshotter:capabilities');

/**
 * Kernel and filesystem capabilities seen from one snapshotter root.
 * `null` means "could not be tested here" (no privilege to mount, or the
 * test made no sense on this root), never "no".
 */
export interface Capabilities {
  /** The running kernel's release (`uname -r`); the probes are cached per release. */
  readonly kernelRelease: string;
  /** overlay is in /proc/filesystems (after the probes, which load the module if it can be loaded). */
  readonly overlay: boolean;
  /**
   * An overlay with two lower dirs and an upper mounted under the root (and
   * was unmounted). `null`: not tried, because the process may not mount
   * (EPERM) or the root is on overlayfs or lacks d_type.
   */
  readonly multipleLowerDirs: boolean | null;
  /** The root's filesystem fills in `d_type` in directory entries, which overlayfs needs. */
  readonly dType: boolean;
  /** The root's filesystem stores `user.*` extended attributes (tmpfs only from Linux 6.6), where overlay keeps its own under `userxattr`. */
  readonly userXattrs: boolean;
  /** The root's filesystem, e.g. `ext4`, `xfs`, `btrfs`, `tmpfs`, `overlay` (or its statfs magic in hex). */
  readonly rootFilesystem: string;
  /** The root is on overlayfs (e.g. inside a container), which cannot be an upper layer. */
  readonly rootOnOverlay: boolean;
  /** The overlay module has the `index` parameter; overlay specs then carry `index=off` unless `mountOptions` sets `index=`. */
  readonly indexParameter: boolean;
  /** The `index` parameter's value (the kernel's default for the `index` mount option); `null` without the parameter. */
  readonly indexDefault: boolean | null;
  /** The `redirect_dir` parameter's value (default of `redirect_dir=`); `null` when absent. */
  readonly redirectDirDefault: boolean | null;
  /** The `metacopy` parameter's value (default of `metacopy=`); `null` when absent. */
  readonly metacopyDefault: boolean | null;
  /** The kernel takes lower layers one by one with the new mount API (`fsconfig` `lowerdir+`, 6.8+); `null`: may not open a filesystem context. */
  readonly lowerdirPlus: boolean | null;
  /**
   * How `mountAll` will mount overlay specs in this process: `mount-api`
   * where `lowerdirPlus` holds, else `legacy`, unless
   * `OVERLAY_SNAPSHOTTER_MOUNT_STRATEGY` forces one.
   */
  readonly mountStrategy: 'mount-api' | 'legacy';
  /** This process runs in a user namespace (its uid map is not the initial namespace's identity map). */
  readonly userNamespace: boolean;
  /**
   * Overlay needs `userxattr` here: in a user namespace on kernel 5.11+,
   * where the root's filesystem stores `user.*` xattrs (`userXattrs`; not
   * tmpfs before 6.6, where overlay can only run without xattrs). With
   * `userxattr: 'auto'` (the default) the specs carry it exactly when this
   * is true.
   */
  readonly userxattrNeeded: boolean;
  /** The kernel can make ID-mapped mounts (`mount_setattr` with `MOUNT_ATTR_IDMAP`, 5.12+); `null`: may not mount. */
  readonly idmappedMounts: boolean | null;
  /**
   * `mountAll` can mount specs with `uidmap=`/`gidmap=` here: the kernel
   * makes ID-mapped mounts, overlayfs takes them as layers (5.19+), and
   * util-linux's `unshare` is in PATH to make the user namespace. `null`:
   * this process may not mount. Whether the root's filesystem allows
   * ID-mapped mounts is learnt at the first mount (ext4, xfs, btrfs do).
   */
  readonly idmappedLayers: boolean | null;
  /** Why {@link idmappedLayers} is not `true`, naming what is missing; `null` when it is. */
  readonly idmappedLayersUnavailable: string | null;
  /**
   * overlayfs takes ID-mapped layers by descriptor (`fsconfig(FSCONFIG_SET_FD,
   * "lowerdir+")`, 6.13+): `mountAll` then needs no temporary mount points
   * for them. `null`: may not open a filesystem context.
   */
  readonly idmappedLayerFds: boolean | null;
  /** overlayfs takes the `volatile` option (5.10+), which `prepare`'s `volatile` adds; `null`: may not ask. */
  readonly volatileOverlay: boolean | null;
  /**
   * Project quotas are on for the root's filesystem (XFS mounted with
   * `prjquota`, ext4 with the `project` and `quota` features), asked at
   * every open. `null`: this process may not ask. `prepare`'s `quota`
   * needs them, and is refused in this version even where they are on
   * (docs/capabilities.md, "Size and inode quotas").
   */
  readonly projectQuotas: boolean | null;
  /** Why {@link projectQuotas} is not `true`, naming what is missing; `null` when it is. */
  readonly projectQuotasUnavailable: string | null;
  /**
   * Why the overlay driver cannot use this root, as the message of the
   * UnavailableError that `open` throws for `driver: 'overlay'`; `null`
   * when it can.
   */
  readonly overlayUnavailable: string | null;
  /**
   * The driver a new store here gets when no `driver` is given: `overlay`
   * where the root's filesystem is not overlayfs, aufs, zfs or ecryptfs,
   * records d_type, and this process mounted an overlay with two lower dirs
   * under it (`multipleLowerDirs`); `native` otherwise. An existing store
   * keeps its own (`Snapshotter.driver`).
   */
  readonly defaultDriver: Driver;
  /** Why {@link defaultDriver} is what it is, in words (for logs and `overlay-snapshotter capabilities`). */
  readonly defaultDriverReason: string;
  /** The probed facts came from the metadata store (no probe ran for this result). */
  readonly cached: boolean;
}

/** Where probe results are kept between opens: the metadata store's `meta` table. */
export interface CapabilityCache {
  getMeta(key: string): string | undefined;
  setMeta(key: string, value: string): void;
}

/** The probed part of {@link Capabilities}, as cached. Bump `v` when its meaning changes. */
interface Probed {
  v: 1;
  overlay: boolean;
  multipleLowerDirs: boolean | null;
  multipleLowerDirsError: string | null;
  dType: boolean;
  userXattrs: boolean;
  rootOnOverlay: boolean;
  indexParameter: boolean;
  indexDefault: boolean | null;
  redirectDirDefault: boolean | null;
  metacopyDefault: boolean | null;
  lowerdirPlus: boolean | null;
  idmappedMounts: boolean | null;
  idmappedLayerFds: boolean | null;
  volatileOverlay: boolean | null;
}

const PROBED_KEYS = [
  'overlay',
  'multipleLowerDirs',
  'multipleLowerDirsError',
  'dType',
  'userXattrs',
  'rootOnOverlay',
  'indexParameter',
  'indexDefault',
  'redirectDirDefault',
  'metacopyDefault',
  'lowerdirPlus',
  'idmappedMounts',
  'idmappedLayerFds',
  'volatileOverlay',
] as const;

/** The meta key of a kernel release's probe results. */
export function capabilityCacheKey(kernelRelease = release()): string {
  return `probe:${kernelRelease}`;
}

function parseCached(value: string | undefined): Probed | undefined {
  if (value === undefined) return undefined;
  try {
    const parsed = JSON.parse(value) as Partial<Probed> | null;
    // Anything else (the 'ok' of earlier versions, a partial record) is stale: probe again.
    if (parsed === null || typeof parsed !== 'object' || parsed.v !== 1 || !PROBED_KEYS.every((k) => k in parsed)) return undefined;
    return parsed as Probed;
  } catch {
    return undefined;
  }
}

/**
 * Whether overlay specs need `userxattr`: in a user namespace overlay may
 * not use `trusted.*` xattrs, and from 5.11 it can keep them as `user.*`
 * instead, where the filesystem stores those. semantics.md says "not on
 * tmpfs", which holds before 6.6 only: tmpfs has had `user.*` xattrs
 * since, and on 6.18 an overlay on tmpfs in a user namespace without
 * `userxattr` fails to remove a lower directory (EIO). So the filesystem
 * is asked (`userXattrs`) rather than named.
 */
function needsUserxattr(userNamespace: boolean, userXattrs: boolean, kernelRelease: string): boolean {
  return userNamespace && kernelAtLeast(5, 11, kernelRelease) && userXattrs;
}

function strategyFor(lowerdirPlus: boolean | null): 'mount-api' | 'legacy' {
  const forced = process.env[STRATEGY_ENV];
  if (forced === 'mount-api' || forced === 'legacy') return forced;
  return lowerdirPlus === true ? 'mount-api' : 'legacy';
}

async function probe(root: string, rootOnOverlay: boolean, userNamespace: boolean, kernelRelease: string): Promise<Probed> {
  const dType = supportsDType(root);
  const userXattrs = supportsUserXattrs(root);
  const userxattr = needsUserxattr(userNamespace, userXattrs, kernelRelease);
  let multipleLowerDirs: boolean | null = null;
  let multipleLowerDirsError: string | null = null;
  // Pointless (and slow to fail) where overlay cannot have its upper dir anyway.
  if (!rootOnOverlay && dType) {
    const result = await probeOverlayMount(root, userxattr ? ['userxattr'] : []);
    multipleLowerDirs = result.ok;
    if (result.error !== undefined) multipleLowerDirsError = result.error.message;
  }
  const lowerdirPlus = probeLowerdirPlus();
  const idmappedMounts = probeIdmappedMounts();
  const idmappedLayerFds = probeLayerFds();
  const volatileOverlay = probeVolatileOverlay();
  // Read last: the mount attempts above load the overlay module where it can be loaded.
  const index = overlayParameter('index');
  const redirectDir = overlayParameter('redirect_dir');
  const metacopy = overlayParameter('metacopy');
  return {
    v: 1,
    overlay: overlayListed(),
    multipleLowerDirs,
    multipleLowerDirsError,
    dType,
    userXattrs,
    rootOnOverlay,
    indexParameter: index !== undefined,
    indexDefault: index ?? null,
    redirectDirDefault: redirectDir ?? null,
    metacopyDefault: metacopy ?? null,
    lowerdirPlus,
    idmappedMounts,
    idmappedLayerFds,
    volatileOverlay,
  };
}

/**
 * Whether probe results can be kept for the kernel release: a failed
 * overlay mount may be fixed before the next open (a full disk, a module
 * option), and so may a missing overlay module that this process had no
 * privilege to load (fsopen would have loaded it); those are probed again.
 */
function settled(p: Probed): boolean {
  if (p.multipleLowerDirs === false) return false;
  return p.overlay || p.lowerdirPlus !== null;
}

/** What stands in the way of overlay: what it is, and how a user fixes it. */
interface Obstacle {
  what: string;
  fix?: string;
}

/** Why overlay cannot serve `root` at all, in the order a user should fix things; `undefined` when it can. */
function hardObstacle(root: string, fsName: string, p: Probed): Obstacle | undefined {
  if (p.rootOnOverlay) {
    return { what: `snapshotter root ${root} is on overlayfs, which cannot be an overlay upper layer`, fix: 'choose a root on ext4, xfs or btrfs (e.g. a volume)' };
  }
  if (!p.overlay) return { what: 'the kernel has no overlay filesystem (not in /proc/filesystems)', fix: 'load it with `modprobe overlay`' };
  if (!p.dType) {
    return { what: `the filesystem of ${root} (${fsName}) does not record file types in directory entries (d_type), which overlayfs needs`, fix: 'use ext4, or xfs made with ftype=1' };
  }
  if (p.multipleLowerDirs === false) return { what: `overlay cannot be mounted with two lower dirs under ${root}: ${p.multipleLowerDirsError ?? 'unknown error'}` };
  return undefined;
}

/** The message of the UnavailableError of an explicit `driver: 'overlay'` where it cannot run. */
function unavailableReason(obstacle: Obstacle | undefined): string | null {
  if (obstacle === undefined) return null;
  const way = "or, for a new store, open with `driver: 'native'` (or with no `driver`) to store full copies instead";
  return obstacle.fix === undefined ? `${obstacle.what}; ${way}` : `${obstacle.what}; ${obstacle.fix}, ${way}`;
}

/**
 * Filesystems a new store does not put overlay on even where a probe mount
 * works, as other overlay users refuse them as backing filesystems: upper
 * layers there are unsupported or misbehave (copy-up, whiteouts, xattrs).
 */
const UNSUITED_FILESYSTEMS: ReadonlySet<number> = new Set([OVERLAYFS_SUPER_MAGIC, AUFS_SUPER_MAGIC, ZFS_SUPER_MAGIC, ECRYPTFS_SUPER_MAGIC]);

/**
 * The driver a store created here without a `driver` option gets, and
 * why: overlay first, where nothing stands in its way and this process
 * was seen mounting one; else native, with the reason overlay was skipped.
 */
function defaultDriver(fsType: number, fsName: string, hard: Obstacle | undefined, p: Probed): { driver: Driver; reason: string } {
  let skipped: string | undefined = hard?.what;
  if (skipped === undefined && UNSUITED_FILESYSTEMS.has(fsType)) skipped = `the root is on ${fsName}, which is not a supported filesystem for overlay upper layers`;
  if (skipped === undefined && p.multipleLowerDirs === null) skipped = 'this process may not mount (EPERM), so no overlay mount could be tried under the root';
  if (skipped !== undefined) return { driver: 'native', reason: `overlay is not used here: ${skipped}` };
  return { driver: 'overlay', reason: `overlay runs here: the root is on ${fsName}, which records d_type, and an overlay with two lower dirs was mounted under it` };
}

/** Whether mountAll can ID-map layers here, and why not (the first thing missing). */
function idmappedLayers(p: Probed, kernelRelease: string): { value: boolean | null; reason: string | null } {
  if (p.idmappedMounts === null) return { value: null, reason: 'this process may not mount, so it cannot make ID-mapped mounts' };
  if (!p.idmappedMounts) return { value: false, reason: `the kernel makes no ID-mapped mounts (mount_setattr with MOUNT_ATTR_IDMAP, Linux 5.12+); this is ${kernelRelease}` };
  if (!overlayTakesIdmappedLayers(kernelRelease)) return { value: false, reason: `overlayfs takes ID-mapped layers from Linux 5.19; this is ${kernelRelease}` };
  const missing = helperMissing();
  return missing === undefined ? { value: true, reason: null } : { value: false, reason: missing };
}

/** Options of {@link probeCapabilities}. */
export interface ProbeCapabilitiesOptions {
  /** Read and keep the probed facts here (Snapshotter.open passes its metadata store). */
  cache?: CapabilityCache;
}

/**
 * Probes what overlay can do for snapshots kept in `root`, an existing
 * writable directory. Creates and removes scratch entries in it
 * (`dtype-*`, `overlay-probe-*`) and tries one overlay mount there, which
 * is unmounted again; nothing is spawned. With a `cache` holding an entry
 * for this kernel release, only the per-process facts are read and
 * nothing is created or mounted.
 *
 * Never throws for a root that cannot host overlay: it says why in
 * `overlayUnavailable`.
 */
export async function probeCapabilities(root: string, options: ProbeCapabilitiesOptions = {}): Promise<Capabilities> {
  const kernelRelease = release();
  const fsType = filesystemType(root);
  const fsName = filesystemName(fsType);
  const rootOnOverlay = fsType === OVERLAYFS_SUPER_MAGIC;
  const userNamespace = inUserNamespace();
  const key = capabilityCacheKey(kernelRelease);
  let probed = parseCached(options.cache?.getMeta(key));
  // A root that moved on or off overlayfs (a mount over it) makes the cached facts stale.
  if (probed !== undefined && probed.rootOnOverlay !== rootOnOverlay) probed = undefined;
  const cached = probed !== undefined;
  if (probed === undefined) {
    probed = await probe(root, rootOnOverlay, userNamespace, kernelRelease);
    debug('probed %s on %s: %o', root, kernelRelease, probed);
    if (options.cache !== undefined && settled(probed)) options.cache.setMeta(key, JSON.stringify(probed));
  }
  const hard = hardObstacle(root, fsName, probed);
  const choice = defaultDriver(fsType, fsName, hard, probed);
  const idmap = idmappedLayers(probed, kernelRelease);
  // The root's mount options decide, and a remount changes them: asked at every open (one syscall).
  const quotas = probeProjectQuotas(root, fsName);
  debug('a new store at %s would use %s', root, choice.reason);
  return Object.freeze({
    kernelRelease,
    overlay: probed.overlay,
    multipleLowerDirs: probed.multipleLowerDirs,
    dType: probed.dType,
    userXattrs: probed.userXattrs,
    rootFilesystem: fsName,
    rootOnOverlay,
    indexParameter: probed.indexParameter,
    indexDefault: probed.indexDefault,
    redirectDirDefault: probed.redirectDirDefault,
    metacopyDefault: probed.metacopyDefault,
    lowerdirPlus: probed.lowerdirPlus,
    mountStrategy: strategyFor(probed.lowerdirPlus),
    userNamespace,
    userxattrNeeded: needsUserxattr(userNamespace, probed.userXattrs, kernelRelease),
    idmappedMounts: probed.idmappedMounts,
    idmappedLayers: idmap.value,
    idmappedLayersUnavailable: idmap.reason,
    idmappedLayerFds: probed.idmappedLayerFds,
    volatileOverlay: probed.volatileOverlay,
    projectQuotas: quotas.available,
    projectQuotasUnavailable: quotas.reason,
    overlayUnavailable: unavailableReason(hard),
    defaultDriver: choice.driver,
    defaultDriverReason: choice.reason,
    cached,
  });
}
