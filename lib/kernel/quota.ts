/**
 * Project quotas: whether the kernel and the filesystem of a directory can
 * bound what one tree holds (XFS mounted with `prjquota`, ext4 made with
 * the `project` and `quota` features), asked with one `quotactl_fd(2)`
 * (Linux 5.14+) that changes nothing.
 *
 * Setting limits (a project id per snapshot on its upper dir, inherited by
 * everything below it, and the limit set through quotactl) is not done yet:
 * it cannot be tested on a kernel without quota support, and untested code
 * that sets project ids would be worse than none. docs/capabilities.md
 * ("Size and inode quotas") says what it needs.
 *
 * Owns the question; reads no store and knows no snapshot.
 */
import { closeSync, openSync } from 'node:fs';
import { constants as osConstants, release } from 'node:os';
import koffi from 'koffi';
import { q } from '../model/errors.js';
import { libc } from './libc.js';
import { kernelAtLeast } from './release.js';

/** quotactl_fd(2), 443 in the unified syscall table on every architecture. */
const NR_QUOTACTL_FD = 443;
/** QCMD(Q_GETINFO, PRJQUOTA): the state of project quotas (ESRCH when they are off). */
const Q_GETINFO = 0x800005;
const PRJQUOTA = 2;
const SUBCMDSHIFT = 8;
/** sizeof(struct if_dqinfo). */
const DQINFO_SIZE = 24;

// eslint-disable-next-line @typescript-eslint/no-explicit-any
let rawSyscall: ((...args: any[]) => number | bigint) | undefined;

/** What a filesystem offers for quotas. */
export interface ProjectQuotaSupport {
  /** Project quotas are on for the filesystem; `null`: this process may not ask. */
  available: boolean | null;
  /** Why not, naming what is missing and how to get it; `null` when they are on. */
  reason: string | null;
}

/** What each filesystem needs in the kernel for quotas (for messages). */
const KERNEL_OPTIONS: Readonly<Record<string, string>> = {
  xfs: 'CONFIG_XFS_QUOTA',
  ext4: 'CONFIG_QUOTA and CONFIG_QFMT_V2',
  tmpfs: 'CONFIG_TMPFS_QUOTA, Linux 6.6+',
};

/** How a user turns project quotas on, per filesystem (for messages). */
const HOW_TO_ENABLE: Readonly<Record<string, string>> = {
  xfs: 'mount it with prjquota',
  ext4: 'make it with `mkfs.ext4 -O project,quota` (or `tune2fs -O project,quota` while unmounted), which needs a kernel with CONFIG_QFMT_V2, and mount it with prjquota',
};

/**
 * Whether project quotas are on for the filesystem holding `dir` (of type
 * `fsName`, e.g. `xfs`), with the reason when they are not: the kernel
 * lacks quota support for it (ENOSYS), the filesystem has no project
 * quotas (EINVAL), or they are not enabled (ESRCH: XFS mounted without
 * `prjquota`, ext4 without the `project` and `quota` features).
 */
export function probeProjectQuotas(dir: string, fsName: string): ProjectQuotaSupport {
  rawSyscall ??= libc().func('long syscall(long number, ...)');
  let fd: number;
  try {
    fd = openSync(dir, 'r');
  } catch (err) {
    return { available: null, reason: `cannot open ${q(dir)} to ask about quotas (${(err as NodeJS.ErrnoException).code ?? String(err)})` };
  }
  let errno = 0;
  try {
    const info = Buffer.alloc(DQINFO_SIZE);
    const result = Number(rawSyscall(NR_QUOTACTL_FD, 'unsigned int', fd, 'unsigned int', (Q_GETINFO << SUBCMDSHIFT) | PRJQUOTA, 'int', 0, 'void *', info));
    if (result < 0) errno = koffi.errno();
  } finally {
    closeSync(fd);
  }
  const { ENOSYS, ESRCH, EINVAL, EPERM, EACCES } = osConstants.errno;
  const where = `${fsName} at ${q(dir)}`;
  switch (errno) {
    case 0:
      return { available: true, reason: null };
    case ENOSYS:
      if (!kernelAtLeast(5, 14)) return { available: false, reason: `asking about project quotas needs quotactl_fd(2), Linux 5.14 or later; this is ${release()}` };
      return {
        available: false,
        reason: `the kernel has no quota support for ${where}${KERNEL_OPTIONS[fsName] ? ` (it needs ${KERNEL_OPTIONS[fsName]})` : ''}; use a kernel built with it`,
      };
    case EINVAL:
      return { available: false, reason: `${where} has no project quotas; put the root on XFS or ext4` };
    case ESRCH:
      return { available: false, reason: `project quotas are not enabled on ${where}: ${HOW_TO_ENABLE[fsName] ?? `${HOW_TO_ENABLE.xfs}; on ext4, ${HOW_TO_ENABLE.ext4}`}` };
    case EPERM:
    case EACCES:
      return { available: null, reason: `this process may not ask about the quotas of ${where}` };
    default:
      return { available: false, reason: `quotactl_fd(2) on ${where} failed with errno ${errno}` };
  }
}
