/**
 * The few syscalls Node's `fs` lacks, through koffi: `mknod` (devices, FIFOs,
 * overlay whiteouts) and the `l*xattr` family (which never follow a final
 * symlink). Everything else uses `node:fs`. The library is loaded on first
 * use so that importing the layers module costs nothing when unused.
 *
 * Errors are thrown as Node-style errors (`code`, `errno`, `syscall`,
 * `path`) so callers can test `err.code === 'ENOENT'` as with `fs`.
 */
import { libc as loadLibc, syscallError } from '../kernel/libc.js';

type Fn = (...args: unknown[]) => unknown;

interface Libc {
  mknod: Fn;
  lsetxattr: Fn;
  fsetxattr: Fn;
  lgetxattr: Fn;
  llistxattr: Fn;
  lremovexattr: Fn;
  utimensat: Fn;
}

let libc: Libc | undefined;

function load(): Libc {
  if (libc) return libc;
  const lib = loadLibc();
  libc = {
    // glibc >= 2.33 exports mknod itself (older ones only __xmknod); dev_t is 64-bit.
    mknod: lib.func('int mknod(const char *path, uint32_t mode, uint64_t dev)'),
    lsetxattr: lib.func('int lsetxattr(const char *path, const char *name, const void *value, size_t size, int flags)'),
    fsetxattr: lib.func('int fsetxattr(int fd, const char *name, const void *value, size_t size, int flags)'),
    lgetxattr: lib.func('intptr_t lgetxattr(const char *path, const char *name, void *value, size_t size)'),
    llistxattr: lib.func('intptr_t llistxattr(const char *path, void *list, size_t size)'),
    lremovexattr: lib.func('int lremovexattr(const char *path, const char *name)'),
    utimensat: lib.func('int utimensat(int dirfd, const char *path, const void *times, int flags)'),
  };
  return libc;
}

/**
 * Largest write(2) a layer call makes to a file. The kernel sizes the
 * page-cache folios of a buffered write by the write's length: a 1 MiB
 * write takes 1 MiB folios, which on a VM that hands freed memory back to
 * its host (free page reporting) land in memory the host must first back
 * again. On the development machine, a 1 GiB diff to a file took 2.4–3.6 s
 * in 1 MiB writes and 0.84–1.16 s in 256 KiB writes (paired processes,
 * nothing deleted between runs); `dd` shows the same (128 MiB: 0.34 s with
 * bs=1M, 0.06 s with bs=256K). GNU tar writes 10 KiB records.
 */
export const MAX_WRITE = 256 * 1024;

/** A Node-like system error for the errno left by the last koffi call. */
function sysError(syscall: string, path: string): NodeJS.ErrnoException {
  return syscallError(syscall, `${syscall} ${JSON.stringify(path)}`, path);
}

const S_IFCHR = 0o020000;
const S_IFBLK = 0o060000;
const S_IFIFO = 0o010000;

/** glibc's `makedev`: 12+20 bit major, 20+12 bit minor, split around the old 8/8 layout. */
export function makedev(major: number, minor: number): bigint {
  const ma = BigInt(major >>> 0);
  const mi = BigInt(minor >>> 0);
  return ((ma & 0xfffff000n) << 32n) | ((ma & 0xfffn) << 8n) | ((mi & 0xffffff00n) << 12n) | (mi & 0xffn);
}

/** Inverse of {@link makedev} for the `rdev` that `fs.lstat` reports (a double, exact below 2^53). */
export function splitdev(rdev: number): { major: number; minor: number } {
  const hi = Math.floor(rdev / 0x100000000);
  const lo = rdev >>> 0;
  return {
    major: (((lo >>> 8) & 0xfff) | (hi & 0xfffff000)) >>> 0,
    minor: ((lo & 0xff) | ((lo >>> 12) & 0xfffff00)) >>> 0,
  };
}

export type NodeKind = 'character-device' | 'block-device' | 'fifo';

/** `mknod(2)`; fails with EEXIST rather than replacing (and so never follows a symlink). */
export function mknod(path: string, kind: NodeKind, mode: number, major = 0, minor = 0): void {
  const type = kind === 'character-device' ? S_IFCHR : kind === 'block-device' ? S_IFBLK : S_IFIFO;
  const dev = kind === 'fifo' ? 0n : makedev(major, minor);
  if ((load().mknod(path, (type | (mode & 0o7777)) >>> 0, dev) as number) !== 0) throw sysError('mknod', path);
}

/** An overlayfs whiteout: a character device 0/0. */
export function mkwhiteout(path: string): void {
  mknod(path, 'character-device', 0, 0, 0);
}

/** `lsetxattr(2)`: sets `name` on the link itself, never its target. */
export function lsetxattr(path: string, name: string, value: Buffer): void {
  if ((load().lsetxattr(path, name, value, value.length, 0) as number) !== 0) throw sysError('lsetxattr', path);
}

/** `fsetxattr(2)` on an open descriptor (saves a path walk for files being written). */
export function fsetxattr(fd: number, name: string, value: Buffer, pathForErrors: string): void {
  if ((load().fsetxattr(fd, name, value, value.length, 0) as number) !== 0) throw sysError('fsetxattr', pathForErrors);
}

/** `lremovexattr(2)`; a missing attribute is not an error. */
export function lremovexattr(path: string, name: string): void {
  if ((load().lremovexattr(path, name) as number) !== 0) {
    const err = sysError('lremovexattr', path);
    if (err.code !== 'ENODATA') throw err;
  }
}

// Small on purpose: koffi's cost per call grows with the size of the buffer passed; ERANGE asks for more.
const scratch = Buffer.alloc(4096);

const AT_FDCWD = -100;
const AT_SYMLINK_NOFOLLOW = 0x100;

/**
 * Sets atime and mtime to the nanosecond (Node's `lutimes` goes through a
 * double and loses the last digits), never following a final symlink.
 */
export function lutimesNs(path: string, atimeNs: bigint, mtimeNs: bigint): void {
  const ts = Buffer.alloc(32);
  ts.writeBigInt64LE(atimeNs / 1_000_000_000n, 0);
  ts.writeBigInt64LE(atimeNs % 1_000_000_000n, 8);
  ts.writeBigInt64LE(mtimeNs / 1_000_000_000n, 16);
  ts.writeBigInt64LE(mtimeNs % 1_000_000_000n, 24);
  if ((load().utimensat(AT_FDCWD, path, ts, AT_SYMLINK_NOFOLLOW) as number) !== 0) throw sysError('utimensat', path);
}

/** `lgetxattr(2)`; `undefined` when the attribute is absent. */
export function lgetxattr(path: string, name: string): Buffer | undefined {
  const fns = load();
  for (;;) {
    const n = Number(fns.lgetxattr(path, name, scratch, scratch.length));
    if (n >= 0) return Buffer.from(scratch.subarray(0, n));
    const err = sysError('lgetxattr', path);
    if (err.code === 'ENODATA') return undefined;
    if (err.code !== 'ERANGE') throw err;
    const size = Number(fns.lgetxattr(path, name, null, 0));
    if (size < 0) throw sysError('lgetxattr', path);
    const buf = Buffer.alloc(size);
    const m = Number(fns.lgetxattr(path, name, buf, size));
    if (m >= 0) return buf.subarray(0, m);
  }
}

/** `llistxattr(2)`: the attribute names of the link itself, in kernel order. */
export function llistxattr(path: string): string[] {
  const fns = load();
  let buf = scratch;
  for (;;) {
    const n = Number(fns.llistxattr(path, buf, buf.length));
    if (n === 0) return [];
    if (n > 0) {
      const names = buf.toString('utf8', 0, n - 1).split('\0');
      return names;
    }
    const err = sysError('llistxattr', path);
    if (err.code === 'ENOTSUP') return [];
    if (err.code !== 'ERANGE') throw err;
    const size = Number(fns.llistxattr(path, null, 0));
    if (size < 0) throw sysError('llistxattr', path);
    buf = Buffer.alloc(size);
  }
}

/** All xattrs of a path (not following a final symlink), sorted by name. */
export function lxattrs(path: string): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  for (const name of llistxattr(path).sort()) {
    const value = lgetxattr(path, name);
    if (value !== undefined) out.set(name, value);
  }
  return out;
}
