/**
 * The inode flags of a file (`FS_IOC_GETFLAGS`, what `lsattr` shows:
 * immutable, append-only, sync, no-atime, ...), for the recycling of
 * snapshot dirs (disk/recycle.ts), which must tell whether a container
 * changed them on its upper dir. Owns no state; knows no paths of its own.
 */
import { closeSync, constants, openSync } from 'node:fs';
import { libc, syscallError } from './libc.js';

/** `_IOR('f', 1, long)`; the kernel reads and writes an int through it on every filesystem. */
const FS_IOC_GETFLAGS = 0x80086601;

type Ioctl = (fd: number, request: number, out: number[]) => number;
let ioctl: Ioctl | undefined;
const out = [0];

/**
 * The inode flags of the directory `path` (not following a final symlink),
 * or `null` when its filesystem has none (ENOTTY, EOPNOTSUPP, EINVAL).
 * @throws the open's or the ioctl's other errors, `node:fs`-shaped.
 */
export function dirFlags(path: string): number | null {
  ioctl ??= libc().func('int ioctl(int fd, unsigned long request, _Out_ int *flags)') as Ioctl;
  const fd = openSync(path, constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW);
  try {
    if (ioctl!(fd, FS_IOC_GETFLAGS, out) === 0) return out[0]!;
    const err = syscallError('ioctl', `ioctl FS_IOC_GETFLAGS ${JSON.stringify(path)}`, path);
    if (err.code === 'ENOTTY' || err.code === 'EOPNOTSUPP' || err.code === 'ENOTSUP' || err.code === 'EINVAL') return null;
    throw err;
  } finally {
    closeSync(fd);
  }
}
