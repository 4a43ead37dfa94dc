/**
 * Kernel and filesystem checks made when a root is opened (semantics.md,
 * "Kernel and filesystem checks at open").
 *
 * Each probe touches only a scratch file, dir or mount it makes under the
 * root and removes; it never reads the store (capabilities.ts caches the
 * results through an interface).
 */
import { existsSync, mkdirSync, readFileSync, rmSync, statfsSync, writeFileSync } from 'node:fs';
import { release } from 'node:os';
import createDebug from 'debug';
import koffi from 'koffi';
import type * as Koffi from 'koffi';
import { v4 as uuidv4 } from 'uuid';
import { errnoOf, libc } from './libc.js';
import { lsetxattr } from './xattr.js';
import { mountAll, unmountAll } from './mount/index.js';
import { FSOPEN_CLOEXEC, MOUNT_ATTR_IDMAP, close, fsconfigFlag, fsconfigString, fsopen, mountSetattr } from './mount/syscalls.js';
import { kernelAtLeast } from './release.js';

const debug = createDebug('overlay-snapshotter:probe');

/** statfs f_type values the checks care about. */
export const OVERLAYFS_SUPER_MAGIC = 0x794c7630;
export const TMPFS_MAGIC = 0x01021994;
export const AUFS_SUPER_MAGIC = 0x61756673;
export const ZFS_SUPER_MAGIC = 0x2fc12fc1;
export const ECRYPTFS_SUPER_MAGIC = 0xf15f;

const INDEX_PARAM = '/sys/module/overlay/parameters/index';

/** True when the overlay module exposes the `index` parameter, so specs carry `index=off`. */
export function kernelHasIndexParam(): boolean {
  return existsSync(INDEX_PARAM);
}

/** True when `overlay` is listed in /proc/filesystems. */
export function overlayListed(): boolean {
  try {
    return /\toverlay$/m.test(readFileSync('/proc/filesystems', 'utf8'));
  } catch {
    return false;
  }
}

/** The statfs magic number of the filesystem holding `path`. */
export function filesystemType(path: string): number {
  return Number(statfsSync(path).type);
}

/**
 * True when this process is inside a user namespace (its uid map is not the
 * identity map of the initial namespace).
 */
export function inUserNamespace(): boolean {
  try {
    const map = readFileSync('/proc/self/uid_map', 'utf8').trim().split(/\s+/);
    return !(map.length === 3 && map[0] === '0' && map[1] === '0' && map[2] === '4294967295');
  } catch {
    return false;
  }
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type CFunction = (...args: any[]) => any;
let readdirBinding: { opendir: CFunction; readdir: CFunction; closedir: CFunction; dirent: Koffi.TypeObject } | undefined;

function bindReaddir(): NonNullable<typeof readdirBinding> {
  if (readdirBinding) return readdirBinding;
  const lib = libc();
  const dirent = koffi.struct('overlay_snapshotter_dirent64', {
    d_ino: 'uint64',
    d_off: 'int64',
    d_reclen: 'uint16',
    d_type: 'uint8',
    d_name: koffi.array('char', 256, 'String'),
  });
  readdirBinding = {
    dirent,
    opendir: lib.func('void *opendir(const char *name)'),
    readdir: lib.func('void *readdir64(void *dirp)'),
    closedir: lib.func('int closedir(void *dirp)'),
  };
  return readdirBinding;
}

/**
 * True when directory entries on the filesystem of `dir` carry their type
 * (d_type). Node's readdir hides DT_UNKNOWN by falling back to lstat, so the
 * entries are read with readdir(3) directly.
 */
export function supportsDType(dir: string): boolean {
  const probe = `${dir}/dtype-${uuidv4()}`;
  mkdirSync(probe, { mode: 0o700 });
  try {
    writeFileSync(`${probe}/file`, '');
    const b = bindReaddir();
    const handle = b.opendir(probe);
    if (handle === null) throw new Error(`opendir ${probe} failed (errno ${koffi.errno()})`);
    try {
      for (let entry = b.readdir(handle); entry !== null; entry = b.readdir(handle)) {
        const d = koffi.decode(entry, b.dirent) as { d_type: number; d_name: string };
        if (d.d_name === 'file') return d.d_type !== 0; // 0 = DT_UNKNOWN
      }
      return false;
    } finally {
      b.closedir(handle);
    }
  } finally {
    rmSync(probe, { recursive: true, force: true });
  }
}

/**
 * True when the filesystem of `dir` stores `user.*` extended attributes,
 * which overlay keeps its own attributes in under `userxattr`. tmpfs only
 * has them from Linux 6.6; without them overlay in a user namespace runs
 * with no xattrs at all (and so without `userxattr`).
 */
export function supportsUserXattrs(dir: string): boolean {
  const file = `${dir}/xattr-${uuidv4()}`;
  writeFileSync(file, '', { mode: 0o600 });
  try {
    lsetxattr(file, 'user.overlay-snapshotter.probe', Buffer.from('1'));
    return true;
  } catch (err) {
    debug('user xattrs unsupported under %s (%s)', dir, (err as Error).message);
    return false;
  } finally {
    rmSync(file, { force: true });
  }
}

/** Outcome of the overlay mount probe: `ok` is null when it could not be tried (no privilege to mount). */
export interface OverlayMountProbe {
  ok: boolean | null;
  error?: Error;
}

/**
 * Mounts an overlay with two lowerdirs and an upper in a scratch dir under
 * `dir`, as containerd does at start, with `options` appended (`userxattr`
 * where the specs will carry it), and unmounts it. Without the privilege to
 * mount at all (EPERM) the answer is `ok: null`: specs can still be handed
 * to a runtime that has it.
 */
export async function probeOverlayMount(dir: string, options: readonly string[] = []): Promise<OverlayMountProbe> {
  const base = `${dir}/overlay-probe-${uuidv4()}`;
  const paths = ['lower1', 'lower2', 'upper', 'work', 'merged'].map((n) => `${base}/${n}`);
  for (const p of paths) mkdirSync(p, { recursive: true, mode: 0o700 });
  const [lower1, lower2, upper, work, merged] = paths as [string, string, string, string, string];
  try {
    await mountAll([{ type: 'overlay', source: 'overlay', options: [`workdir=${work}`, `upperdir=${upper}`, `lowerdir=${lower2}:${lower1}`, ...options] }], merged);
    await unmountAll(merged);
    return { ok: true };
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EPERM') {
      debug('overlay mount probe: no privilege to mount (%s); not tested', (err as Error).message);
      return { ok: null };
    }
    debug('overlay mount probe failed: %s', (err as Error).message);
    return { ok: false, error: err as Error };
  } finally {
    await unmountAll(merged).catch(() => undefined);
    rmSync(base, { recursive: true, force: true });
  }
}

/**
 * {@link probeOverlayMount} as an error: the mount's error if it fails,
 * `undefined` if it works or could not be tried.
 */
export async function overlayMountError(dir: string, options: readonly string[] = []): Promise<Error | undefined> {
  const probe = await probeOverlayMount(dir, options);
  return probe.ok === false ? probe.error : undefined;
}

const OVERLAY_PARAMETERS = '/sys/module/overlay/parameters';

/**
 * A boolean parameter of the overlay module (`Y`/`N` in
 * /sys/module/overlay/parameters): the default of the mount option of the
 * same name. `undefined` when the parameter does not exist (an older
 * kernel, or overlay not loaded yet) or is not a boolean.
 */
export function overlayParameter(name: 'index' | 'redirect_dir' | 'metacopy' | 'xino_auto' | 'nfs_export'): boolean | undefined {
  let value: string;
  try {
    value = readFileSync(`${OVERLAY_PARAMETERS}/${name}`, 'utf8').trim();
  } catch {
    return undefined;
  }
  if (value === 'Y' || value === 'y' || value === '1') return true;
  if (value === 'N' || value === 'n' || value === '0') return false;
  return undefined;
}

export { kernelAtLeast, kernelVersion } from './release.js';

/**
 * Whether the kernel accepts overlay lower layers one by one through the
 * new mount API (`fsopen("overlay")`, `fsconfig(FSCONFIG_SET_STRING,
 * "lowerdir+", ...)`, kernel 6.8+). Asks the kernel rather than comparing
 * versions, since backports exist and seccomp may block the syscalls.
 * Nothing is mounted. `null` when this process may not open a filesystem
 * context at all (EPERM: no CAP_SYS_ADMIN in its mount namespace's owner).
 */
export function probeLowerdirPlus(): boolean | null {
  let fd = -1;
  try {
    fd = fsopen('overlay', FSOPEN_CLOEXEC);
    fsconfigString(fd, 'lowerdir+', '/', 'probe fsconfig lowerdir+ "/"');
    return true;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    debug('lowerdir+ probe: %s', (err as Error).message);
    return fd < 0 && code === 'EPERM' ? null : false;
  } finally {
    if (fd >= 0) close(fd);
  }
}

/**
 * Whether overlayfs takes the `volatile` option (Linux 5.10+), which skips
 * every sync of the upper dir. Since 6.5 overlayfs checks each option as
 * `fsconfig` sets it, so the kernel is asked (an overlay context, the flag
 * set, nothing mounted); an older one takes any word there, and its
 * release decides. `null` when this process may not open a filesystem
 * context (EPERM).
 */
export function probeVolatileOverlay(): boolean | null {
  let fd = -1;
  try {
    fd = fsopen('overlay', FSOPEN_CLOEXEC);
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM' ? null : kernelAtLeast(5, 10);
  }
  try {
    try {
      fsconfigFlag(fd, 'overlay-snapshotter-probe', 'probe fsconfig of an unknown overlay option');
      return kernelAtLeast(5, 10); // taken unchecked: this overlayfs checks options at mount only
    } catch {
      // Checked as set: ask about volatile itself.
    }
    try {
      fsconfigFlag(fd, 'volatile', 'probe fsconfig volatile');
      return true;
    } catch (err) {
      debug('volatile probe: %s', (err as Error).message);
      return false;
    }
  } finally {
    close(fd);
  }
}

/**
 * Whether the kernel can make ID-mapped mounts (`mount_setattr(2)` with
 * `MOUNT_ATTR_IDMAP`, Linux 5.12+), asked without spawning anything and
 * without a user namespace: the call is made with a user-namespace
 * descriptor that cannot be open (INT_MAX). A kernel that knows the
 * attribute reaches the descriptor lookup and answers EBADF; one without
 * mount_setattr answers ENOSYS, one without the attribute EINVAL. `null`
 * when the process may not mount at all (EPERM), so the kernel never got
 * that far. Whether a given filesystem allows ID-mapped mounts of itself
 * (FS_ALLOW_IDMAP) can only be learnt by making one, which needs a user
 * namespace of our own: not probed (see docs/capabilities.md).
 */
export function probeIdmappedMounts(): boolean | null {
  try {
    mountSetattr(-1, false, MOUNT_ATTR_IDMAP, 2 ** 31 - 1, 'probe mount_setattr with MOUNT_ATTR_IDMAP');
    return false;
  } catch (err) {
    const code = errnoOf(err);
    debug('idmapped mount probe: mount_setattr answered %s', code);
    if (code === 'EBADF') return true;
    if (code === 'EPERM') return null;
    return false;
  }
}

/** Names of the statfs magic numbers a root is likely to be on. */
const FILESYSTEM_NAMES: ReadonlyMap<number, string> = new Map([
  [0xef53, 'ext4'],
  [0x58465342, 'xfs'],
  [0x9123683e, 'btrfs'],
  [TMPFS_MAGIC, 'tmpfs'],
  [OVERLAYFS_SUPER_MAGIC, 'overlay'],
  [ZFS_SUPER_MAGIC, 'zfs'],
  [AUFS_SUPER_MAGIC, 'aufs'],
  [ECRYPTFS_SUPER_MAGIC, 'ecryptfs'],
  [0xf2f52010, 'f2fs'],
  [0x6969, 'nfs'],
  [0x65735546, 'fuse'],
  [0x01021997, '9p'],
  [0x858458f6, 'ramfs'],
  [0x4d44, 'vfat'],
  [0x5346544e, 'ntfs'],
  [0x73717368, 'squashfs'],
  [0xe0f5e1e2, 'erofs'],
  [0xca451a4e, 'bcachefs'],
]);

/** A readable name for a statfs magic number, e.g. `ext4`, else `0x…`. */
export function filesystemName(magic: number): string {
  return FILESYSTEM_NAMES.get(magic) ?? `0x${magic.toString(16)}`;
}

/** The running kernel's release, the key under which probe results are cached. */
export function kernelRelease(): string {
  return release();
}
