/**
 * The C library, through koffi, for the system calls Node has no binding
 * for (mount, statx, syncfs, xattrs, ...). Each module declares the
 * functions it needs on this one handle, and reports failures with
 * {@link syscallError}, shaped like the errors of `node:fs`.
 *
 * Owns the one library handle per thread and the one errno mapping of the
 * library. No policy: it knows no paths, stores or layers, which is why it
 * is the only module of kernel/ that store/ may import.
 */
import { constants as osConstants } from 'node:os';
import { getSystemErrorMap } from 'node:util';
import koffi from 'koffi';
import type * as Koffi from 'koffi';

let handle: Koffi.LibraryHandle | undefined;

/** The loaded C library (loaded on first use). */
export function libc(): Koffi.LibraryHandle {
  return (handle ??= koffi.load('libc.so.6'));
}

/** A failed syscall, shaped like the errors of `node:fs`. */
export interface SyscallError extends Error {
  code: string;
  errno: number;
  syscall: string;
  path?: string;
}

const errnoNames = new Map<number, string>(Object.entries(osConstants.errno).map(([name, value]) => [value, name]));

/**
 * A Node-style error for a failed syscall: `code` is the errno name,
 * `errno` is negative as in `node:fs`, and the message reads
 * `EBUSY: resource busy or locked, <what>`. `errno` defaults to the one the
 * last koffi call on this thread left.
 */
export function syscallError(syscall: string, what: string, path?: string, errno = koffi.errno()): SyscallError {
  const known = getSystemErrorMap().get(-errno);
  const code = known?.[0] ?? errnoNames.get(errno) ?? `E${errno}`;
  const description = known?.[1] ?? 'unknown error';
  const err = new Error(`${code}: ${description}, ${what}`) as SyscallError;
  err.code = code;
  err.errno = -errno;
  err.syscall = syscall;
  if (path !== undefined) err.path = path;
  Error.captureStackTrace(err, syscallError);
  return err;
}

/** The errno name (`'ENOENT'`, ...) of a Node-style error, or undefined for anything else. */
export function errnoOf(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : undefined;
}
