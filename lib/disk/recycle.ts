/**
 * Reusing the directory of a removed active snapshot as the staging dir of
 * a later prepare, instead of deleting it and making a new one.
 *
 * On ext4 mounted with `discard` and no journal (this project's machines),
 * each rmdir(2) waits for the discard of the dir's block, inside the call
 * and under the parent's lock, and each mkdir(2) scans past the inodes
 * freed in the last minutes; a container cycle made four of each. A dir
 * that the container left as it found it (after its files are unlinked and
 * the dir overlayfs made in `work` is gone) is exactly what the staging
 * pool makes, so it is renamed into the pool (staging.ts `adopt`) and the
 * next prepare takes it.
 *
 * "As it found it" is checked, not assumed: the dir holds `fs` and `work`
 * only, both empty, with the modes, owner, inode flags and (no) xattrs a
 * fresh pool dir has, and `fs` is one block long. Anything else (a
 * subdirectory in the upper, an opaque or ACL xattr, `chattr +i` through
 * the mount, a chown, a volatile mount's marks, the index dir) and the dir
 * is deleted as before (trash.ts). Once the record is gone the dir belongs
 * to nobody: a crash half-way leaves an orphan that cleanup deletes, or a
 * pool dir of a dead process, which the next open deletes.
 *
 * Owns nothing but the dir it is given; never reads the store.
 */
import { lstatSync, readdirSync, rmdirSync, unlinkSync } from 'node:fs';
import { rmdir, unlink } from 'node:fs/promises';
import { fault } from '../kernel/faults.js';
import { dirFlags } from '../kernel/fileattr.js';
import { errnoOf } from '../kernel/libc.js';
import { llistxattr, lremovexattr } from '../kernel/xattr.js';

/** At most this many files in the upper are unlinked for a reuse; more and the dir is deleted. */
const FEW_FILES = 16;

/**
 * Empties the removed snapshot's dir `dir` back to a fresh staging dir's
 * state, and returns whether it now is one (false: the caller deletes it;
 * what was emptied so far is gone either way). The waits on discards run on
 * the thread pool unless `alone` (the caller's only deletion).
 */
export async function emptyForReuse(dir: string, alone: boolean): Promise<boolean> {
  try {
    const fs = `${dir}/fs`;
    const work = `${dir}/work`;
    if (!sameEntries(readdirSync(dir), ['fs', 'work'])) return false;
    // The dir overlayfs makes at each mount; gone already if it never was mounted.
    await gone(`${work}/work`, alone);
    if (readdirSync(work).length !== 0) return false;
    const files = readdirSync(fs, { withFileTypes: true });
    if (files.length > FEW_FILES || files.some((e) => e.isDirectory())) return false;
    if (alone && files.length === 1) unlinkSync(`${fs}/${files[0]!.name}`);
    else await Promise.all(files.map((e) => unlink(`${fs}/${e.name}`)));
    fault('remove:mid-recycle');
    return pristine(dir, fs, work);
  } catch (err) {
    if (errnoOf(err) === undefined) throw err;
    return false;
  }
}

/** rmdir(2) of `path`, on this thread when `alone`; a missing dir counts as gone. */
async function gone(path: string, alone: boolean): Promise<void> {
  try {
    if (alone) rmdirSync(path);
    else await rmdir(path);
  } catch (err) {
    if (errnoOf(err) !== 'ENOENT') throw err;
  }
}

function sameEntries(names: string[], want: readonly string[]): boolean {
  return names.length === want.length && want.every((n) => names.includes(n));
}

/** What overlayfs writes on an upper dir at every mount (`user.` with `userxattr`). */
const MOUNT_XATTRS = new Set(['trusted.overlay.uuid', 'user.overlay.uuid']);

const euid = process.geteuid?.();
const egid = process.getegid?.();

/** Whether the emptied dirs read as staging.ts's makePoolDir makes them. */
function pristine(dir: string, fs: string, work: string): boolean {
  const checks: [string, number][] = [
    [dir, 0o700],
    [fs, 0o755],
    [work, 0o711],
  ];
  for (const [path, mode] of checks) {
    const st = lstatSync(path);
    if (!st.isDirectory() || (st.mode & 0o7777) !== mode || st.uid !== euid || st.gid !== egid) return false;
  }
  // A dir keeps the blocks it grew to; a fresh one has one.
  if (lstatSync(fs).size > 4096) return false;
  if (llistxattr(work).length !== 0) return false;
  // The one xattr a mount leaves on its upper dir: the overlay's persistent uuid (Linux 6.6+), which a new mount makes afresh.
  for (const name of llistxattr(fs)) {
    if (!MOUNT_XATTRS.has(name)) return false;
    lremovexattr(fs, name);
  }
  // Flags set through the mount (immutable, sync, ...) land on `fs`; `work`, never shown to a container, has the inherited ones.
  return dirFlags(fs) === dirFlags(work);
}
