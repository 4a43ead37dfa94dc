/**
 * Calls relative to an open directory, through koffi: `openat`, `statx`,
 * `getdents64`, `readlinkat`. The kernel then resolves one name, not the
 * whole path, which for a tree of small files is most of the cost of
 * walking it (the diff's walk and reader, layers/walk-tree.ts and
 * layers/fill.ts, on whichever thread runs them). `path` arguments only
 * name the entry in errors, which are Node-style (kernel/libc.ts).
 *
 * Owns one statx buffer and one getdents buffer per thread; descriptors
 * are the caller's to close (with {@link closeFd}). Knows nothing of layers.
 */
import { readSync } from 'node:fs';
import { libc as loadLibc, syscallError } from './libc.js';

type Fn = (...args: unknown[]) => unknown;

// How the walk and the reader open what they read: never following a symlink, never waiting on
// a FIFO or becoming a terminal's controller, never leaking into a child process.
const O_DIRECTORY = 0o200000;
const O_NOFOLLOW = 0o400000;
const O_CLOEXEC = 0o2000000;
const O_NONBLOCK = 0o4000;
const O_NOCTTY = 0o400;
/** Flags of a regular file opened to be read. */
export const OPEN_FILE = O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC;
/** Flags of a directory opened to be walked. */
export const OPEN_DIR = O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC;
/** The `dirfd` that means the current directory (absolute paths ignore it). */
export const AT_FDCWD = -100;

let calls: { openat: Fn; close: Fn; statx: Fn; getdents64: Fn; readlinkat: Fn } | undefined;

function load(): NonNullable<typeof calls> {
  if (calls) return calls;
  const lib = loadLibc();
  calls = {
    openat: lib.func('int openat(int dirfd, const char *path, int flags, int mode)'),
    close: lib.func('int close(int fd)'),
    statx: lib.func('int statx(int dirfd, const char *path, int flags, unsigned int mask, _Out_ uint8_t *buf)'),
    getdents64: lib.func('long getdents64(int fd, _Out_ uint8_t *buf, size_t len)'),
    readlinkat: lib.func('intptr_t readlinkat(int dirfd, const char *path, _Out_ uint8_t *buf, size_t size)'),
  };
  return calls;
}

function sysError(syscall: string, path: string): NodeJS.ErrnoException {
  return syscallError(syscall, `${syscall} ${JSON.stringify(path)}`, path);
}

/** What a walk needs of an entry's `statx`. */
export interface EntryStat {
  nlink: number;
  uid: number;
  gid: number;
  mode: number;
  size: number;
  /** As node:fs computes it (seconds as a signed 64-bit number). */
  mtimeMs: number;
  rdevMajor: number;
  rdevMinor: number;
  /** `dev:ino` of a multiply-linked file, `''` otherwise (only those need it). */
  id: string;
}

// struct statx is the same on every architecture (unlike struct stat).
const sx = Buffer.alloc(256);
const sx32 = new Uint32Array(sx.buffer, sx.byteOffset, 64);
const TWO32 = 4294967296;
// STATX_TYPE | MODE | NLINK | UID | GID | MTIME | INO | SIZE.
const MASK = 0x1 | 0x2 | 0x4 | 0x8 | 0x10 | 0x40 | 0x100 | 0x200;
const AT_SYMLINK_NOFOLLOW = 0x100;
const AT_EMPTY_PATH = 0x1000;

function decode(): EntryStat {
  return {
    nlink: sx32[4]!,
    uid: sx32[5]!,
    gid: sx32[6]!,
    mode: sx[28]! | (sx[29]! << 8),
    size: sx32[10]! + sx32[11]! * TWO32,
    mtimeMs: (sx32[28]! + (sx32[29]! | 0) * TWO32) * 1e3 + sx32[30]! / 1e6,
    rdevMajor: sx32[32]!,
    rdevMinor: sx32[33]!,
    id: sx32[4]! > 1 ? `${sx32[34]}:${sx32[35]}:${sx32[9]}:${sx32[8]}` : '',
  };
}

/** `openat(2)` of `name` in `dirfd` with `flags`; throws a Node-style error naming `path`. */
export function openAt(dirfd: number, name: string, flags: number, path: string): number {
  const fd = load().openat(dirfd, name, flags, 0) as number;
  if (fd < 0) throw sysError('openat', path);
  return fd;
}

/**
 * Closes a descriptor opened with {@link openAt}, as it was opened (node:fs
 * warns about closing a descriptor it did not open). Only read from, so a
 * failing close loses nothing, and the descriptor is gone either way.
 */
export function closeFd(fd: number): void {
  load().close(fd);
}

/** statx of `name` in `dirfd` (of `dirfd` itself for ''), not following a final symlink. */
export function statAt(dirfd: number, name: string, path: string): EntryStat {
  if ((load().statx(dirfd, name, name === '' ? AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW : AT_SYMLINK_NOFOLLOW, MASK, sx) as number) !== 0) throw sysError('statx', path);
  return decode();
}

const dents = Buffer.alloc(32 * 1024);

/** Names and d_types of a directory's entries, without . and .. (in the directory's order). */
export function readdirAt(fd: number, path: string): Array<[name: string, type: number]> {
  const getdents64 = load().getdents64;
  const out: Array<[string, number]> = [];
  for (;;) {
    const n = Number(getdents64(fd, dents, dents.length));
    if (n === 0) return out;
    if (n < 0) throw sysError('getdents64', path);
    // struct linux_dirent64: d_ino u64, d_off s64, d_reclen u16, d_type u8, d_name (NUL-terminated).
    for (let off = 0; off < n; ) {
      const reclen = dents[off + 16]! | (dents[off + 17]! << 8);
      const start = off + 19;
      const type = dents[off + 18]!;
      off += reclen;
      if (dents[start] === 0x2e && (dents[start + 1] === 0 || (dents[start + 1] === 0x2e && dents[start + 2] === 0))) continue;
      out.push([dents.toString('utf8', start, dents.indexOf(0, start)), type]);
    }
  }
}

// Small on purpose: koffi's cost per call grows with the size of the buffer passed.
const scratch = Buffer.alloc(4096);

/** `readlinkat(2)` of `name` in `dirfd`. */
export function readlinkAt(dirfd: number, name: string, path: string): string {
  const readlinkat = load().readlinkat;
  let buf = scratch;
  for (;;) {
    const n = Number(readlinkat(dirfd, name, buf, buf.length));
    if (n < 0) throw sysError('readlink', path);
    if (n < buf.length) return buf.toString('utf8', 0, n);
    buf = Buffer.alloc(buf.length * 4);
  }
}

/** `pread` into `buf`, as node:fs does it (the descriptor is any open file). */
export function readAt(fd: number, buf: Buffer, off: number, len: number, pos: number): number {
  return readSync(fd, buf, off, len, pos);
}
