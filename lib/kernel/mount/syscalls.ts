/**
 * Direct libc bindings for mounting, through koffi: every mount and unmount
 * is one syscall in this process, never a spawned `mount(8)`.
 *
 * Each wrapper throws a Node-style error on failure (`code` such as
 * `'EBUSY'`, negative `errno`, `syscall`, `path`), with a message that
 * names what was being done, e.g.
 * `EBUSY: resource busy or locked, umount2 "/run/ctr/rootfs"`.
 *
 * The bindings are made on first use, so importing this module (for
 * `parseMountOptions`, say) costs nothing.
 *
 * Owns the bindings; no policy, no knowledge of snapshots or stores.
 */
import { closeSync, constants as fsConstants, openSync } from 'node:fs';
import koffi from 'koffi';
import { q } from '../../model/errors.js';
import { libc as loadLibc, type SyscallError, syscallError } from '../libc.js';

export type { SyscallError } from '../libc.js';

/** `fsconfig(2)` commands (include/uapi/linux/mount.h). */
export const FSCONFIG_SET_FLAG = 0;
export const FSCONFIG_SET_STRING = 1;
export const FSCONFIG_SET_FD = 5;
export const FSCONFIG_CMD_CREATE = 6;
export const FSOPEN_CLOEXEC = 0x1;
export const FSMOUNT_CLOEXEC = 0x1;
export const MOVE_MOUNT_F_EMPTY_PATH = 0x4;
export const AT_FDCWD = -100;
export const AT_EMPTY_PATH = 0x1000;
export const AT_RECURSIVE = 0x8000;
/** `open_tree(2)` flags: a detached copy of the mount (OPEN_TREE_CLONE), closed on exec (O_CLOEXEC). */
export const OPEN_TREE_CLONE = 0x1;
export const OPEN_TREE_CLOEXEC = 0o2000000;
/** umount2(2): detach now, release when no longer busy. */
export const MNT_DETACH = 0x2;

/** `fsmount(2)` mount attributes (MOUNT_ATTR_*). */
export const MOUNT_ATTR_RDONLY = 0x1;
export const MOUNT_ATTR_NOSUID = 0x2;
export const MOUNT_ATTR_NODEV = 0x4;
export const MOUNT_ATTR_NOEXEC = 0x8;
export const MOUNT_ATTR_NOATIME = 0x10;
export const MOUNT_ATTR_STRICTATIME = 0x20;
export const MOUNT_ATTR_NODIRATIME = 0x80;
export const MOUNT_ATTR_NOSYMFOLLOW = 0x200000;
export const MOUNT_ATTR_IDMAP = 0x100000;

/**
 * The new mount API's syscall numbers come from the unified table (424 and
 * up) and are the same on every architecture; they are used only when libc
 * is older than glibc 2.36 and has no wrappers.
 */
const NR_MOVE_MOUNT = 429;
const NR_FSOPEN = 430;
const NR_FSCONFIG = 431;
const NR_FSMOUNT = 432;
const NR_OPEN_TREE = 428;
const NR_MOUNT_SETATTR = 442;
/** sizeof(struct mount_attr), MOUNT_ATTR_SIZE_VER0: attr_set, attr_clr, propagation, userns_fd (u64 each). */
const MOUNT_ATTR_SIZE = 32;

/** O_PATH is 010000000 on every Linux architecture Node runs on; `fs.constants` lacks it. */
const O_PATH = 0o10000000;
const _SC_PAGESIZE = 30;

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type CFunction = (...args: any[]) => any;

interface Bindings {
  mount: CFunction;
  umount2: CFunction;
  close: CFunction;
  read: CFunction;
  chdir: CFunction;
  fchdir: CFunction;
  statfs: CFunction;
  sysconf: CFunction;
  fsopen: CFunction;
  fsconfig: CFunction;
  fsmount: CFunction;
  moveMount: CFunction;
  openTree: CFunction;
  mountSetattr: CFunction;
  statx: CFunction;
}

let bindings: Bindings | undefined;

function libc(): Bindings {
  if (bindings) return bindings;
  const lib = loadLibc();
  // glibc's struct statfs on LP64 and ILP32 alike: `long` words and block counts.
  const StatFs = koffi.struct({
    f_type: 'long',
    f_bsize: 'long',
    f_blocks: 'unsigned long',
    f_bfree: 'unsigned long',
    f_bavail: 'unsigned long',
    f_files: 'unsigned long',
    f_ffree: 'unsigned long',
    f_fsid: koffi.array('int', 2),
    f_namelen: 'long',
    f_frsize: 'long',
    f_flags: 'long',
    f_spare: koffi.array('long', 4),
  });
  let syscall: CFunction | undefined;
  const viaSyscall = (nr: number, types: string[]): CFunction => {
    syscall ??= lib.func('long syscall(long number, ...)');
    const call = syscall;
    return (...args: unknown[]) => call(nr, ...types.flatMap((t, i) => [t, args[i]]));
  };
  // glibc < 2.36 has no wrappers for the new mount API; fall back to syscall(2).
  const optional = (proto: string, nr: number, types: string[]): CFunction => {
    try {
      return lib.func(proto);
    } catch {
      return viaSyscall(nr, types);
    }
  };
  bindings = {
    mount: lib.func('int mount(const char *source, const char *target, const char *fstype, unsigned long flags, const char *data)'),
    umount2: lib.func('int umount2(const char *target, int flags)'),
    close: lib.func('int close(int fd)'),
    read: lib.func('long read(int fd, void *buf, unsigned long count)'),
    chdir: lib.func('int chdir(const char *path)'),
    fchdir: lib.func('int fchdir(int fd)'),
    statfs: lib.func('statfs', 'int', ['const char *', koffi.out(koffi.pointer(StatFs))]),
    sysconf: lib.func('long sysconf(int name)'),
    statx: lib.func('int statx(int dirfd, const char *path, int flags, unsigned int mask, _Out_ uint8_t *buf)'),
    fsopen: optional('int fsopen(const char *fsname, unsigned int flags)', NR_FSOPEN, ['const char *', 'unsigned int']),
    fsconfig: optional('int fsconfig(int fd, unsigned int cmd, const char *key, const char *value, int aux)', NR_FSCONFIG, [
      'int',
      'unsigned int',
      'const char *',
      'const char *',
      'int',
    ]),
    fsmount: optional('int fsmount(int fd, unsigned int flags, unsigned int attr_flags)', NR_FSMOUNT, ['int', 'unsigned int', 'unsigned int']),
    moveMount: optional(
      'int move_mount(int from_dirfd, const char *from_path, int to_dirfd, const char *to_path, unsigned int flags)',
      NR_MOVE_MOUNT,
      ['int', 'const char *', 'int', 'const char *', 'unsigned int'],
    ),
    openTree: optional('int open_tree(int dirfd, const char *path, unsigned int flags)', NR_OPEN_TREE, ['int', 'const char *', 'unsigned int']),
    mountSetattr: optional('int mount_setattr(int dirfd, const char *path, unsigned int flags, void *attr, size_t size)', NR_MOUNT_SETATTR, [
      'int',
      'const char *',
      'unsigned int',
      'void *',
      'size_t',
    ]),
  };
  return bindings;
}

/** Reads errno right after a call; koffi keeps it for the calling thread. */
function check(result: number | bigint, syscall: string, what: () => string, path?: string): number {
  const value = Number(result);
  if (value < 0) throw syscallError(syscall, what(), path);
  return value;
}

/**
 * mount(2). `what` names the mount for the error message, e.g.
 * `mount "overlay" on "/x"`; a function is called only on failure.
 */
export function mount(source: string | null, target: string, fstype: string | null, flags: number, data: string | null, what: string | (() => string)): void {
  check(libc().mount(source, target, fstype, flags, data), 'mount', typeof what === 'string' ? () => what : what, target);
}

/** statx(2) mask bit and `struct statx` offset of the mount id (Linux 5.8+). */
const STATX_MNT_ID = 0x1000;
const STX_MNT_ID_OFFSET = 0x90;

/**
 * The id of the topmost mount at `path` (mountinfo's first field), from
 * one statx(2); undefined where the kernel does not report it (before
 * Linux 5.8) or the path cannot be reached.
 */
export function mountIdOf(path: string): number | undefined {
  const buf = Buffer.alloc(256);
  if (libc().statx(AT_FDCWD, path, 0, STATX_MNT_ID, buf) !== 0) return undefined;
  if ((buf.readUInt32LE(0) & STATX_MNT_ID) === 0) return undefined;
  return Number(buf.readBigUInt64LE(STX_MNT_ID_OFFSET));
}

/** umount2(2). */
export function umount2(target: string, flags: number): void {
  const errno = tryUmount2(target, flags);
  if (errno !== 0) throw umount2Error(target, errno);
}

/**
 * umount2(2) that returns 0 or the errno instead of throwing. Hot path:
 * `unmountAll` ends every call with the EINVAL of a target that is no
 * longer a mount point, and an error object (a stack, the errno table)
 * costs more than the syscall; callers build one with {@link umount2Error}
 * only when they throw it.
 */
export function tryUmount2(target: string, flags: number): number {
  return Number(libc().umount2(target, flags)) < 0 ? koffi.errno() : 0;
}

/** The error of a failed {@link tryUmount2}. */
export function umount2Error(target: string, errno: number): SyscallError {
  return syscallError('umount2', `umount2 ${q(target)}`, target, errno);
}

/** close(2); errors are ignored, as there is nothing useful to do about them here. */
export function close(fd: number): void {
  libc().close(fd);
}

/** chdir(2) for this process (every thread: the cwd is process-wide). */
export function chdir(path: string): void {
  check(libc().chdir(path), 'chdir', () => `chdir ${q(path)}`, path);
}

/** fchdir(2). */
export function fchdir(fd: number): void {
  check(libc().fchdir(fd), 'fchdir', () => `fchdir ${fd}`);
}

/**
 * An `O_PATH` descriptor of a directory: a handle that pins the directory
 * without opening it for reading. Close it with {@link closePath}.
 */
export function openPath(path: string): number {
  return openSync(path, O_PATH | fsConstants.O_DIRECTORY);
}

/** Closes a descriptor from {@link openPath}. */
export function closePath(fd: number): void {
  closeSync(fd);
}

/** The `f_flags` of statfs(2) on `path` (ST_* bits). */
export function statfsFlags(path: string): number {
  const out: { f_flags?: number | bigint } = {};
  check(libc().statfs(path, out), 'statfs', () => `statfs ${q(path)}`, path);
  return Number(out.f_flags ?? 0);
}

let pageSizeCache: number | undefined;

/** The kernel page size, which caps the data of mount(2). */
export function pageSize(): number {
  pageSizeCache ??= Number(libc().sysconf(_SC_PAGESIZE)) || 4096;
  return pageSizeCache;
}

/** fsopen(2). */
export function fsopen(fsname: string, flags: number): number {
  return check(libc().fsopen(fsname, flags), 'fsopen', () => `fsopen ${q(fsname)}`);
}

/** fsconfig(2) with FSCONFIG_SET_STRING. */
export function fsconfigString(fd: number, key: string, value: string, what: string): void {
  check(libc().fsconfig(fd, FSCONFIG_SET_STRING, key, value, 0), 'fsconfig', () => what);
}

/** fsconfig(2) with FSCONFIG_SET_FD: a parameter given as a descriptor (overlay layers, Linux 6.13+). */
export function fsconfigFd(fd: number, key: string, valueFd: number, what: string): void {
  check(libc().fsconfig(fd, FSCONFIG_SET_FD, key, null, valueFd), 'fsconfig', () => what);
}

/** fsconfig(2) with FSCONFIG_SET_FLAG. */
export function fsconfigFlag(fd: number, key: string, what: string): void {
  check(libc().fsconfig(fd, FSCONFIG_SET_FLAG, key, null, 0), 'fsconfig', () => what);
}

/** fsconfig(2) with FSCONFIG_CMD_CREATE: makes the superblock, where most option checks happen. */
export function fsconfigCreate(fd: number, what: string): void {
  check(libc().fsconfig(fd, FSCONFIG_CMD_CREATE, null, null, 0), 'fsconfig', () => what);
}

/** fsmount(2): a detached mount of a created superblock. */
export function fsmount(fd: number, flags: number, attrFlags: number, what: string): number {
  return check(libc().fsmount(fd, flags, attrFlags), 'fsmount', () => what);
}

/**
 * open_tree(2) with OPEN_TREE_CLONE: a detached copy of the mount at
 * `path` (of the whole tree below it with `recursive`), as a descriptor
 * that {@link mountSetattr} can change and {@link moveMountTo} attach.
 * Closing the descriptor of a copy never attached frees it.
 */
export function openTreeClone(path: string, recursive: boolean, what: string): number {
  const flags = OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | (recursive ? AT_RECURSIVE : 0);
  return check(libc().openTree(AT_FDCWD, path, flags), 'open_tree', () => what, path);
}

/**
 * mount_setattr(2) on the mount a descriptor holds: sets `attrSet`
 * (MOUNT_ATTR_*), through the user namespace `usernsFd` when it holds
 * MOUNT_ATTR_IDMAP, on every mount of the tree with `recursive`.
 */
export function mountSetattr(fd: number, recursive: boolean, attrSet: number, usernsFd: number, what: string): void {
  const attr = Buffer.alloc(MOUNT_ATTR_SIZE);
  attr.writeBigUInt64LE(BigInt(attrSet), 0);
  attr.writeBigUInt64LE(BigInt(usernsFd), 24);
  check(libc().mountSetattr(fd, '', AT_EMPTY_PATH | (recursive ? AT_RECURSIVE : 0), attr, MOUNT_ATTR_SIZE), 'mount_setattr', () => what);
}

/** move_mount(2) of a detached mount (`fromFd`) onto `target`. */
export function moveMountTo(fromFd: number, target: string, what: string): void {
  check(libc().moveMount(fromFd, '', AT_FDCWD, target, MOVE_MOUNT_F_EMPTY_PATH), 'move_mount', () => what, target);
}

/**
 * The messages the kernel queued on a filesystem context (`read(2)` on the
 * fsopen descriptor), e.g. `e overlay: Unknown parameter 'bogus'`. They say
 * why an fsconfig failed where errno only says EINVAL.
 */
export function fsContextMessages(fd: number): string[] {
  const messages: string[] = [];
  const buf = Buffer.alloc(1024);
  for (let i = 0; i < 8; i++) {
    const n = Number(libc().read(fd, buf, buf.length));
    if (n <= 0) break;
    messages.push(buf.toString('utf8', 0, n).trim());
  }
  return messages;
}
