/**
 * The system calls of a diff's walk and reader threads (walk.ts,
 * reader.ts), as plain CommonJS source that each thread evaluates as it
 * is, and the calling thread too without a second CPU, so that both run
 * the same calls. `makeSys(koffi)` returns them, relative to directory
 * descriptors where the kernel has such a call (it then resolves one name,
 * not the whole path), throwing errors shaped as libc.ts's `syscallError`
 * shapes them. `path` arguments only name the entry in errors (and are
 * used for the xattr calls of entries that are neither files nor dirs,
 * which have no `*at` form before Linux 6.13).
 */
export const SYS_SOURCE = `
const { getSystemErrorMap } = require('node:util');
const { constants } = require('node:os');
const { readSync } = require('node:fs');
// How the walk and the reader open what they read: never following a symlink, never waiting on
// a FIFO or becoming a terminal's controller, never leaking into a child process.
const O_DIRECTORY = 0o200000, O_NOFOLLOW = 0o400000, O_CLOEXEC = 0o2000000, O_NONBLOCK = 0o4000, O_NOCTTY = 0o400;
const OPEN_FILE = O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC;
const OPEN_DIR = O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC;
function makeSys(koffi) {
  const lib = koffi.load('libc.so.6');
  const f = {
    openat: lib.func('int openat(int dirfd, const char *path, int flags, int mode)'),
    close: lib.func('int close(int fd)'),
    statx: lib.func('int statx(int dirfd, const char *path, int flags, unsigned int mask, _Out_ uint8_t *buf)'),
    getdents64: lib.func('long getdents64(int fd, _Out_ uint8_t *buf, size_t len)'),
    readlinkat: lib.func('intptr_t readlinkat(int dirfd, const char *path, _Out_ uint8_t *buf, size_t size)'),
    flistxattr: lib.func('intptr_t flistxattr(int fd, void *list, size_t size)'),
    fgetxattr: lib.func('intptr_t fgetxattr(int fd, const char *name, void *value, size_t size)'),
    llistxattr: lib.func('intptr_t llistxattr(const char *path, void *list, size_t size)'),
    lgetxattr: lib.func('intptr_t lgetxattr(const char *path, const char *name, void *value, size_t size)'),
  };
  const errnoNames = new Map(Object.entries(constants.errno).map(([name, value]) => [value, name]));
  function sysError(syscall, path) {
    const errno = koffi.errno();
    const known = getSystemErrorMap().get(-errno);
    const code = (known && known[0]) || errnoNames.get(errno) || 'E' + errno;
    const err = new Error(code + ': ' + ((known && known[1]) || 'unknown error') + ', ' + syscall + ' ' + JSON.stringify(path));
    err.code = code;
    err.errno = -errno;
    err.syscall = syscall;
    err.path = path;
    return err;
  }
  // struct statx is the same on every architecture (unlike struct stat).
  const sx = Buffer.alloc(256);
  const sx32 = new Uint32Array(sx.buffer, sx.byteOffset, 64);
  const TWO32 = 4294967296;
  function decode() {
    return {
      nlink: sx32[4], uid: sx32[5], gid: sx32[6], mode: sx[28] | (sx[29] << 8),
      size: sx32[10] + sx32[11] * TWO32,
      // As node:fs computes mtimeMs (seconds as a signed 64-bit number).
      mtimeMs: (sx32[28] + (sx32[29] | 0) * TWO32) * 1e3 + sx32[30] / 1e6,
      rdevMajor: sx32[32], rdevMinor: sx32[33],
      // (dev, inode): only multiply-linked files need it.
      id: sx32[4] > 1 ? sx32[34] + ':' + sx32[35] + ':' + sx32[9] + ':' + sx32[8] : '',
    };
  }
  // STATX_TYPE | MODE | NLINK | UID | GID | MTIME | INO | SIZE.
  const MASK = 0x1 | 0x2 | 0x4 | 0x8 | 0x10 | 0x40 | 0x100 | 0x200;
  // Small on purpose: koffi's cost per call grows with the size of the buffer passed; ERANGE asks for more.
  const scratch = Buffer.alloc(4096);
  const dents = Buffer.alloc(32 * 1024);
  function list(call, target, path, name) {
    let buf = scratch;
    for (;;) {
      const n = Number(call(target, buf, buf.length));
      if (n === 0) return [];
      if (n > 0) return buf.toString('utf8', 0, n - 1).split('\\0');
      const err = sysError(name, path);
      if (err.code === 'ENOTSUP') return [];
      if (err.code !== 'ERANGE') throw err;
      const size = Number(call(target, null, 0));
      if (size < 0) throw sysError(name, path);
      buf = Buffer.alloc(size);
    }
  }
  function get(call, target, attr, path, name) {
    for (;;) {
      const n = Number(call(target, attr, scratch, scratch.length));
      if (n >= 0) return Buffer.from(scratch.subarray(0, n));
      const err = sysError(name, path);
      if (err.code === 'ENODATA') return undefined;
      if (err.code !== 'ERANGE') throw err;
      const size = Number(call(target, attr, null, 0));
      if (size < 0) throw sysError(name, path);
      const buf = Buffer.alloc(size);
      const m = Number(call(target, attr, buf, size));
      if (m >= 0) return buf.subarray(0, m);
    }
  }
  return {
    openat(dirfd, name, flags, path) {
      const fd = f.openat(dirfd, name, flags, 0);
      if (fd < 0) throw sysError('openat', path);
      return fd;
    },
    // Closed as it was opened (node:fs warns about closing a descriptor it did not open). Only
    // read from, so a failing close loses nothing, and the descriptor is gone either way.
    close(fd) {
      f.close(fd);
    },
    /** statx of \`name\` in \`dirfd\` (of \`dirfd\` itself for ''), not following a final symlink. */
    stat(dirfd, name, path) {
      if (f.statx(dirfd, name, name === '' ? 0x1100 : 0x100, MASK, sx) !== 0) throw sysError('statx', path);
      return decode();
    },
    /** Names and d_types of a directory's entries, without . and .. (in the directory's order). */
    readdir(fd, path) {
      const out = [];
      for (;;) {
        const n = Number(f.getdents64(fd, dents, dents.length));
        if (n === 0) return out;
        if (n < 0) throw sysError('getdents64', path);
        // struct linux_dirent64: d_ino u64, d_off s64, d_reclen u16, d_type u8, d_name (NUL-terminated).
        for (let off = 0; off < n; ) {
          const reclen = dents[off + 16] | (dents[off + 17] << 8);
          const start = off + 19;
          const type = dents[off + 18];
          off += reclen;
          if (dents[start] === 0x2e && (dents[start + 1] === 0 || (dents[start + 1] === 0x2e && dents[start + 2] === 0))) continue;
          out.push([dents.toString('utf8', start, dents.indexOf(0, start)), type]);
        }
      }
    },
    readlink(dirfd, name, path) {
      let buf = scratch;
      for (;;) {
        const n = Number(f.readlinkat(dirfd, name, buf, buf.length));
        if (n < 0) throw sysError('readlink', path);
        if (n < buf.length) return buf.toString('utf8', 0, n);
        buf = Buffer.alloc(buf.length * 4);
      }
    },
    read(fd, buf, off, len, pos) {
      return readSync(fd, buf, off, len, pos);
    },
    flist(fd, path) { return list(f.flistxattr, fd, path, 'flistxattr'); },
    fget(fd, attr, path) { return get(f.fgetxattr, fd, attr, path, 'fgetxattr'); },
    llist(path) { return list(f.llistxattr, path, path, 'llistxattr'); },
    lget(path, attr) { return get(f.lgetxattr, path, attr, path, 'lgetxattr'); },
  };
}
`;
