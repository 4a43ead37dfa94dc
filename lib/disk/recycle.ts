/**
 * Reusing the directory of a removed active snapshot, with its `work` dir,
 * as the staging dir of a later prepare, instead of deleting both and
 * making new ones.
 *
 * On ext4 mounted with `discard` and without a journal (this project's
 * machines), each rmdir(2) waits for the discard of the dir's block inside
 * the call, under the parent's lock, and each mkdir(2) scans past the
 * inodes freed in the last minutes; a container cycle made four of each.
 * Reusing the snapshot's dir and its `work` dir saves two of each, among
 * them the rmdir and the mkdir under `snapshots/`, the dir every creation
 * and removal of the root locks.
 *
 * The upper dir `fs` is never reused: it is emptied (a few files at its
 * top are unlinked), deleted and made afresh, so that nothing a container
 * did to it (modes, owner, xattrs, inode flags, size) carries over, and an
 * overlay still holding it (a mount leaked into another mount namespace,
 * which this process's mount table does not show) keeps writing into a
 * deleted dir, never into the next container's upper. `work` is never
 * shown to a container; `work/work`, which every mount makes, is deleted.
 *
 * The dir is reused only when its only subdirs are `fs` and `work`, it
 * holds no volatile snapshot's boot file, `work` holds no subdir but
 * `work/work` (which goes), both have the modes and owner the staging pool
 * gives them and `work` has no xattr; otherwise (a directory in the upper,
 * a volatile mount's marks, an index dir, a chown) the caller deletes it as
 * before (trash.ts). A plain file someone put beside `fs` or in `work`
 * would stay: neither is ever shown to a container.
 * The record is gone by then and the dir belongs to nobody: a crash
 * half-way leaves an orphan that cleanup deletes, or a pool dir of a dead
 * process, which the next open deletes.
 *
 * Owns nothing but the dir it is given; never reads the store.
 */
import { lstatSync, readdirSync, statSync } from 'node:fs';
import { fault } from '../kernel/faults.js';
import { errnoOf } from '../kernel/libc.js';
import { llistxattr } from '../kernel/xattr.js';
import { DIR_MODE, WORK_MODE, makeUpperDir } from './staging-slots.cjs';
import { removeFlat, tryRmdir } from './trash.js';
import { VOLATILE_BOOT_FILE } from './volatile.js';

/** At most this many files in the upper are unlinked for a reuse; more and the dir is deleted. */
const FEW_FILES = 16;

const euid = process.geteuid?.();
const egid = process.getegid?.();

/**
 * Empties the removed snapshot's dir `dir` back to a fresh staging dir
 * (its `fs` made anew, as the pool makes it), and returns whether it now is
 * one (false: the caller deletes it; what was emptied so far is gone
 * either way). The waits on discards run on the thread pool unless `alone`
 * (the caller's only deletion).
 */
export async function emptyForReuse(dir: string, alone: boolean, umaskClean: boolean): Promise<boolean> {
  try {
    const fs = `${dir}/fs`;
    const work = `${dir}/work`;
    // Subdirs show in a dir's link count (2 + subdirs on ext4 and xfs; btrfs says 1: then the dirs are listed).
    const top = madeByPool(dir, DIR_MODE);
    const base = madeByPool(work, WORK_MODE);
    if (top === undefined || base === undefined || statSync(`${dir}/${VOLATILE_BOOT_FILE}`, { throwIfNoEntry: false }) !== undefined) return false;
    if (top === 1 ? !sameEntries(readdirSync(dir), ['fs', 'work']) : top !== 4) return false;
    // `work/work`, which overlayfs makes at each mount (absent if it never was mounted), is all `work` may hold.
    if (base > 3) return false;
    const workWork = await tryRmdir(`${work}/work`, alone);
    if (workWork === 'failed') return false;
    // `work` must be empty now: btrfs lists it; elsewhere its one subdir (link count 3) must have been `work/work`.
    if (base === 1 ? readdirSync(work).length !== 0 : base === 3 && workWork !== 'removed') return false;
    if (llistxattr(work).length !== 0) return false;
    if (!(await removeFlat(fs, FEW_FILES, alone))) return false;
    fault('remove:mid-recycle');
    makeUpperDir(fs, umaskClean);
    return true;
  } catch (err) {
    if (errnoOf(err) === undefined) throw err;
    return false;
  }
}

function sameEntries(names: string[], want: readonly string[]): boolean {
  return names.length === want.length && want.every((n) => names.includes(n));
}

/** The link count of `path` when it is a dir with `mode` and this process's owner, as the staging pool makes it; else undefined. */
function madeByPool(path: string, mode: number): number | undefined {
  const st = lstatSync(path);
  return st.isDirectory() && (st.mode & 0o7777) === mode && st.uid === euid && st.gid === egid ? st.nlink : undefined;
}
