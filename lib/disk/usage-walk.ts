/**
 * The `du` walk itself, shared by the calling thread and the usage helper
 * thread (usage.ts, usage-worker.ts): per directory one open and a few
 * `getdents64` calls, per entry one `statx` relative to the directory's
 * descriptor, through koffi; and the job slot the two threads share.
 * Owns per-thread scratch buffers only; reads the tree, never writes it.
 */
import koffi from 'koffi';
import { libc as loadLibc, syscallError } from '../kernel/libc.js';

export interface Sys {
  openat(dirfd: number, path: Buffer, flags: number, mode: number): number;
  close(fd: number): number;
  getdents64(fd: number, buf: Buffer, len: number): number | bigint;
  statx(dirfd: number, path: Buffer, flags: number, mask: number, buf: Buffer): number;
}

let sys: Sys | null | undefined;

export function bindings(): Sys | null {
  if (sys !== undefined) return sys;
  try {
    const libc = loadLibc();
    sys = {
      openat: libc.func('int openat(int dirfd, const uint8_t *path, int flags, int mode)') as Sys['openat'],
      close: libc.func('int close(int fd)') as Sys['close'],
      getdents64: libc.func('long getdents64(int fd, _Out_ uint8_t *buf, size_t len)') as Sys['getdents64'],
      statx: libc.func('int statx(int dirfd, const uint8_t *path, int flags, unsigned int mask, _Out_ uint8_t *buf)') as Sys['statx'],
    };
  } catch {
    // No glibc with statx (2.28) and getdents64 (2.30): the Node walk does.
    sys = null;
  }
  return sys;
}

const AT_FDCWD = -100;
const AT_SYMLINK_NOFOLLOW = 0x100;
const O_DIRECTORY = 0o200000;
const O_NOFOLLOW = 0o400000;
const O_CLOEXEC = 0o2000000;
const OPEN_DIR = O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC;
/** STATX_TYPE | STATX_MODE | STATX_NLINK | STATX_INO | STATX_BLOCKS. */
const STATX_MASK = 0x1 | 0x2 | 0x4 | 0x100 | 0x400;
const S_IFMT = 0o170000;
const S_IFDIR = 0o040000;
const ENOENT = 2;
const ENOTDIR = 20;
const TWO32 = 4294967296;

function sysError(syscall: string, path: string): Error {
  return syscallError(syscall, `${syscall} failed for ${path}`, path);
}

/** Paths are kept as latin1 strings (one char per byte), so that names that are not UTF-8 survive. */
function cPath(latin1: string): Buffer {
  return Buffer.from(`${latin1}\0`, 'latin1');
}

/** Scratch buffers of one walking thread. */
export interface Buffers {
  sx: Buffer;
  sx32: Uint32Array;
  dents: Buffer;
  name: Buffer;
}

export function buffers(): Buffers {
  // struct statx is the same on every architecture (unlike struct stat).
  const sx = Buffer.alloc(256);
  return { sx, sx32: new Uint32Array(sx.buffer, sx.byteOffset, 64), dents: Buffer.alloc(64 * 1024), name: Buffer.alloc(256 + 8) };
}

/** Running totals of one walking thread. */
export interface Totals {
  size: number;
  inodes: number;
  /** (dev, inode) of every multiply-linked file counted. */
  seen: Set<string>;
  /** When set, multiply-linked files are listed here ([id, blocks]) instead of counted: the main thread merges them. */
  links?: [string, number][];
}

/**
 * Counts the entries of every directory on `stack` (latin1 paths; the
 * directories themselves are already counted), pushing subdirectories as
 * it goes. Returns early, with work left on the stack, once `budget`
 * entries are counted.
 */
export function walkDirs(sys: Sys, b: Buffers, stack: string[], t: Totals, budget = Infinity): void {
  const { sx, sx32, dents, name } = b;
  let walked = 0;
  for (let dir = stack.pop(); dir !== undefined; dir = walked >= budget ? undefined : stack.pop()) {
    const fd = sys.openat(AT_FDCWD, cPath(dir), OPEN_DIR, 0);
    if (fd < 0) {
      const errno = koffi.errno();
      if (errno === ENOENT || errno === ENOTDIR) continue;
      throw sysError('openat', Buffer.from(dir, 'latin1').toString());
    }
    try {
      for (;;) {
        const n = Number(sys.getdents64(fd, dents, dents.length));
        if (n === 0) break;
        if (n < 0) throw sysError('getdents64', Buffer.from(dir, 'latin1').toString());
        // struct linux_dirent64: d_ino u64, d_off s64, d_reclen u16, d_type u8, d_name (NUL-terminated).
        for (let off = 0; off < n; ) {
          const reclen = dents[off + 16]! | (dents[off + 17]! << 8);
          const start = off + 19;
          off += reclen;
          if (dents[start] === 0x2e && (dents[start + 1] === 0 || (dents[start + 1] === 0x2e && dents[start + 2] === 0))) continue;
          dents.copy(name, 0, start, off);
          walked++;
          if (sys.statx(fd, name, AT_SYMLINK_NOFOLLOW, STATX_MASK, sx) !== 0) {
            if (koffi.errno() === ENOENT) continue;
            throw sysError('statx', `${Buffer.from(dir, 'latin1').toString()}/${name.toString('utf8', 0, name.indexOf(0))}`);
          }
          const blocks = sx32[12]! + sx32[13]! * TWO32;
          if (((sx[28]! | (sx[29]! << 8)) & S_IFMT) === S_IFDIR) {
            stack.push(`${dir}/${dents.toString('latin1', start, dents.indexOf(0, start))}`);
          } else if (sx32[4]! > 1) {
            const id = `${sx32[34]}:${sx32[35]}:${sx32[8]! + sx32[9]! * TWO32}`;
            if (t.seen.has(id)) continue;
            t.seen.add(id);
            if (t.links !== undefined) {
              t.links.push([id, blocks]);
              continue;
            }
          }
          t.size += blocks * 512;
          t.inodes++;
        }
      }
    } finally {
      sys.close(fd);
    }
  }
}

/**
 * Counts `root` itself into `t` and returns the stack its walk starts from
 * (empty for anything but a directory; paths as latin1), or undefined when
 * `root` does not exist.
 */
export function startWalk(sys: Sys, b: Buffers, root: string, t: Totals): string[] | undefined {
  const top = Buffer.from(root).toString('latin1');
  if (sys.statx(AT_FDCWD, cPath(top), AT_SYMLINK_NOFOLLOW, STATX_MASK, b.sx) !== 0) {
    if (koffi.errno() === ENOENT || koffi.errno() === ENOTDIR) return undefined;
    throw sysError('statx', root);
  }
  t.size += (b.sx32[12]! + b.sx32[13]! * TWO32) * 512;
  t.inodes++;
  return ((b.sx[28]! | (b.sx[29]! << 8)) & S_IFMT) === S_IFDIR ? [top] : [];
}

/** What the helper thread sends back for a job. */
export interface JobResult {
  size: number;
  inodes: number;
  links: [string, number][];
  error?: { message: string; code?: string };
}

// States of the job slot (flag[0]) and readiness (flag[1]).
export const IDLE = 0;
export const POSTED = 1;
export const ACCEPTED = 2;
export const DONE = 3;
export const CANCELLED = 4;
export const READY = 1;
