/**
 * Filling a batch of a diff's tar output with file bodies (see reader.ts),
 * as one piece of code that runs on whichever thread reads: the reader
 * thread (reader-worker.ts), or the calling thread without a second CPU.
 *
 * A tree holds the diff's root and the directories of the file last read
 * open; each file is opened relative to its directory, and each directory
 * relative to its parent, all with O_NOFOLLOW (kernel/dirfd.ts): a symlink
 * planted anywhere under the root while the diff runs is refused (ELOOP or
 * ENOTDIR), never followed out of the tree, and paths longer than PATH_MAX
 * work. Reads the tree only; owns the descriptors a tree holds, closed by
 * {@link closeTree}.
 */
import { AT_FDCWD, OPEN_DIR, OPEN_FILE, closeFd, openAt, readAt } from '../kernel/dirfd.js';

/** Why filling a batch stopped: the job index, and either "the file shrank" or the system error's fields. */
export interface FillFailure {
  index: number;
  shrank: boolean;
  message?: string;
  code?: string;
  errno?: number;
  syscall?: string;
  path?: string;
}

/** One diff's root, and the directories of the file last read, open. */
export interface Tree {
  readonly root: string;
  fd: number;
  names: string[];
  fds: number[];
}

export function openTree(root: string): Tree {
  return { root, fd: -1, names: [], fds: [] };
}

/** The descriptor of directory `dir` (relative, '' for the root), reusing what is open of it. */
function dirFd(t: Tree, dir: string): number {
  if (t.fd < 0) t.fd = openAt(AT_FDCWD, t.root, OPEN_DIR, t.root);
  const want = dir === '' ? [] : dir.split('/');
  let k = 0;
  while (k < t.names.length && k < want.length && t.names[k] === want[k]) k++;
  while (t.names.length > k) {
    closeFd(t.fds.pop()!);
    t.names.pop();
  }
  while (t.names.length < want.length) {
    const parent = t.fds.length > 0 ? t.fds[t.fds.length - 1]! : t.fd;
    const name = want[t.names.length]!;
    t.fds.push(openAt(parent, name, OPEN_DIR, `${t.root}/${want.slice(0, t.names.length + 1).join('/')}`));
    t.names.push(name);
  }
  return t.fds.length > 0 ? t.fds[t.fds.length - 1]! : t.fd;
}

/** Closes what `t` holds open; it can be used again (it reopens what it needs). */
export function closeTree(t: Tree): void {
  while (t.fds.length > 0) closeFd(t.fds.pop()!);
  t.names = [];
  if (t.fd >= 0) closeFd(t.fd);
  t.fd = -1;
}

/**
 * Reads job `i`'s `nums[3i+1]` bytes from offset `nums[3i]` of the file
 * `rels[i]` (under the root) to offset `nums[3i+2]` of `buf`, job by job;
 * stops at the first failure and returns it.
 */
export function fill(t: Tree, buf: Buffer, rels: readonly string[], nums: Float64Array): FillFailure | undefined {
  for (let i = 0; i < rels.length; i++) {
    const rel = rels[i]!;
    const fileOff = nums[3 * i]!;
    const len = nums[3 * i + 1]!;
    const bufOff = nums[3 * i + 2]!;
    let fd = -1;
    try {
      const slash = rel.lastIndexOf('/');
      fd = openAt(dirFd(t, slash < 0 ? '' : rel.slice(0, slash)), rel.slice(slash + 1), OPEN_FILE, `${t.root}/${rel}`);
      let got = 0;
      while (got < len) {
        const n = readAt(fd, buf, bufOff + got, len - got, fileOff + got);
        if (n === 0) return { index: i, shrank: true };
        got += n;
      }
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      return { index: i, shrank: false, message: e.message, code: e.code, errno: e.errno, syscall: e.syscall, path: e.path };
    } finally {
      if (fd >= 0) closeFd(fd);
    }
  }
  return undefined;
}
