/**
 * Extended attributes through koffi: the `l*` calls, which never follow a
 * final symlink, and the `f*` calls on an open descriptor. The one reader
 * and writer of xattrs in the library, on every thread that needs them
 * (layer apply and diff, the diff's walk thread, the probes).
 *
 * Errors are Node-style (kernel/libc.ts's {@link syscallError}), so that
 * callers test `err.code === 'ENODATA'` as with `fs`. Owns no state but
 * one small scratch buffer per thread; knows nothing of layers or stores.
 */
import { libc as loadLibc, syscallError } from './libc.js';

type Fn = (...args: unknown[]) => unknown;

interface Calls {
  llistxattr: Fn;
  flistxattr: Fn;
  lgetxattr: Fn;
  fgetxattr: Fn;
  lsetxattr: Fn;
  fsetxattr: Fn;
  lremovexattr: Fn;
}

let calls: Calls | undefined;

function load(): Calls {
  if (calls) return calls;
  const lib = loadLibc();
  calls = {
    llistxattr: lib.func('intptr_t llistxattr(const char *path, void *list, size_t size)'),
    flistxattr: lib.func('intptr_t flistxattr(int fd, void *list, size_t size)'),
    lgetxattr: lib.func('intptr_t lgetxattr(const char *path, const char *name, void *value, size_t size)'),
    fgetxattr: lib.func('intptr_t fgetxattr(int fd, const char *name, void *value, size_t size)'),
    lsetxattr: lib.func('int lsetxattr(const char *path, const char *name, const void *value, size_t size, int flags)'),
    fsetxattr: lib.func('int fsetxattr(int fd, const char *name, const void *value, size_t size, int flags)'),
    lremovexattr: lib.func('int lremovexattr(const char *path, const char *name)'),
  };
  return calls;
}

/** A Node-style error for the errno left by the last koffi call on this thread. */
function sysError(syscall: string, path: string): NodeJS.ErrnoException {
  return syscallError(syscall, `${syscall} ${JSON.stringify(path)}`, path);
}

// Small on purpose: koffi's cost per call grows with the size of the buffer passed; ERANGE asks for more.
const scratch = Buffer.alloc(4096);

/** The names of a list call (`target` a path or a descriptor); ENOTSUP reads as none. */
function list(call: Fn, target: string | number, path: string, syscall: string): string[] {
  let buf = scratch;
  for (;;) {
    const n = Number(call(target, buf, buf.length));
    if (n === 0) return [];
    if (n > 0) return buf.toString('utf8', 0, n - 1).split('\0');
    const err = sysError(syscall, path);
    if (err.code === 'ENOTSUP') return [];
    if (err.code !== 'ERANGE') throw err;
    const size = Number(call(target, null, 0));
    if (size < 0) throw sysError(syscall, path);
    buf = Buffer.alloc(size);
  }
}

/** The value of a get call, a copy the caller owns; `undefined` when the attribute is absent. */
function get(call: Fn, target: string | number, name: string, path: string, syscall: string): Buffer | undefined {
  for (;;) {
    const n = Number(call(target, name, scratch, scratch.length));
    if (n >= 0) return Buffer.from(scratch.subarray(0, n));
    const err = sysError(syscall, path);
    if (err.code === 'ENODATA') return undefined;
    if (err.code !== 'ERANGE') throw err;
    const size = Number(call(target, name, null, 0));
    if (size < 0) throw sysError(syscall, path);
    const buf = Buffer.alloc(size);
    const m = Number(call(target, name, buf, size));
    if (m >= 0) return buf.subarray(0, m);
  }
}

/** `llistxattr(2)`: the attribute names of the link itself, in kernel order. */
export function llistxattr(path: string): string[] {
  return list(load().llistxattr, path, path, 'llistxattr');
}

/** `flistxattr(2)` of an open descriptor; `path` only names it in errors. */
export function flistxattr(fd: number, path: string): string[] {
  return list(load().flistxattr, fd, path, 'flistxattr');
}

/** `lgetxattr(2)`; `undefined` when the attribute is absent. */
export function lgetxattr(path: string, name: string): Buffer | undefined {
  return get(load().lgetxattr, path, name, path, 'lgetxattr');
}

/** `fgetxattr(2)` of an open descriptor; `undefined` when absent. `path` only names it in errors. */
export function fgetxattr(fd: number, name: string, path: string): Buffer | undefined {
  return get(load().fgetxattr, fd, name, path, 'fgetxattr');
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
