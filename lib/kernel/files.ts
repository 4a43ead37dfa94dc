/**
 * The file calls Node's `fs` lacks, through koffi: `mknod` (devices, FIFOs,
 * overlay whiteouts) and `utimensat` to the nanosecond, never following a
 * final symlink. Everything else uses `node:fs`. Errors are Node-style
 * (kernel/libc.ts), so that callers test `err.code` as with `fs`. Owns no
 * state; knows nothing of layers or stores.
 */
import { libc as loadLibc, syscallError } from './libc.js';

type Fn = (...args: unknown[]) => unknown;

let calls: { mknod: Fn; utimensat: Fn } | undefined;

function load(): { mknod: Fn; utimensat: Fn } {
  if (calls) return calls;
  const lib = loadLibc();
  calls = {
    // glibc >= 2.33 exports mknod itself (older ones only __xmknod); dev_t is 64-bit.
    mknod: lib.func('int mknod(const char *path, uint32_t mode, uint64_t dev)'),
    utimensat: lib.func('int utimensat(int dirfd, const char *path, const void *times, int flags)'),
  };
  return calls;
}

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
