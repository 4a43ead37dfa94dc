/**
 * Deleting the trees of removed snapshots in bulk (cleanup, prune).
 *
 * Deleting is I/O-bound: on ext4 mounted with `discard`, every freed block
 * waits for its discard, about 90 µs on this project's machines, and the
 * kernel holds the parent directory's lock while it does. So trees are
 * spread over several `rm-<uuid>` bucket dirs under `snapshots/` (one
 * rename each), and the buckets are emptied by up to {@link PARALLEL}
 * `rm -rf --one-file-system` processes at once: their waits overlap, and
 * no one parent lock serialises them. Node's thread pool has four threads
 * for all fs work, which caps it at four. A handful of trees are deleted in
 * process instead, where starting processes would cost more than it saves.
 *
 * A bucket is claimed trash like any `rm-*` entry: if the process dies
 * half-way, the next open or cleanup deletes what is left.
 *
 * Owns the `rm-*` entries it claims; deletes nothing it did not claim, never
 * crosses into a mount (rm --one-file-system), and never reads the store
 * (the caller holds its write lock while claiming).
 */
import { execFile } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, renameSync, rmdirSync, unlinkSync } from 'node:fs';
import { rmdir, unlink } from 'node:fs/promises';
import createDebug from 'debug';
import fse from 'fs-extra';
import { v4 as uuidv4 } from 'uuid';
import { type FaultPoint, fault } from '../kernel/faults.js';
import { errnoOf } from '../kernel/libc.js';
import { VOLATILE_BOOT_FILE, VOLATILE_MARK_DIRS, VOLATILE_MARK_FILE } from './volatile.js';

const debug = createDebug('overlay-snapshotter:trash');

/** Prefix of dirs claimed for deletion under `<root>/snapshots`. */
export const TRASH_PREFIX = 'rm-';

/** Fewer trees than this are deleted in process. */
const FEW = 32;
/** Deleting processes at once: enough to keep the device's queue busy while each waits on discards. */
const PARALLEL = 16;
/** Buckets at most, so that progress advances in steps and no bucket is a long tail. */
const MAX_BUCKETS = 4 * PARALLEL;

/** One bucket: its path and the trees (original paths) moved into it. */
interface Bucket {
  dir: string;
  trees: string[];
}

/**
 * Spreads trees over `rm-*` buckets in `parent`. Used under the store's
 * write lock by cleanup (claiming orphans) and by prune after its records
 * are gone.
 */
export class Trash {
  /** Shared buckets, made at their first claim. */
  private readonly buckets: Bucket[] = [];
  /** Trees claimed on their own (few trees, or earlier claims). */
  private readonly loose: Bucket[] = [];
  /** How many shared buckets (at least 8 trees each); 0 when few trees are expected. */
  private readonly bucketCount: number;
  private next = 0;

  /** @param expected how many trees will be claimed, at most (sizes the buckets). */
  constructor(
    private readonly parent: string,
    expected: number,
  ) {
    this.bucketCount = expected < FEW ? 0 : Math.min(MAX_BUCKETS, Math.ceil(expected / 8));
  }

  /**
   * Moves the entry `name` of the parent into the trash, returns false when
   * it is already gone (a concurrent synchronous remove deleted it).
   */
  claim(name: string): boolean {
    const from = `${this.parent}/${name}`;
    let bucket: Bucket | undefined;
    let to: string;
    if (this.bucketCount === 0) {
      to = `${this.parent}/${TRASH_PREFIX}${uuidv4()}`;
    } else {
      const i = this.next++ % this.bucketCount;
      bucket = this.buckets[i];
      if (bucket === undefined) {
        bucket = { dir: `${this.parent}/${TRASH_PREFIX}${uuidv4()}`, trees: [] };
        mkdirSync(bucket.dir, 0o700);
        this.buckets[i] = bucket;
      }
      to = `${bucket.dir}/${name}`;
    }
    try {
      renameSync(from, to);
    } catch (err) {
      if ((err as { code?: string }).code === 'ENOENT') return false;
      throw err;
    }
    if (bucket === undefined) this.loose.push({ dir: to, trees: [from] });
    else bucket.trees.push(from);
    return true;
  }

  /** Adds an earlier claim (an `rm-*` entry left by an interrupted sweep) to delete along. */
  adopt(name: string): void {
    this.loose.push({ dir: `${this.parent}/${name}`, trees: [`${this.parent}/${name}`] });
  }

  /**
   * Deletes everything claimed: the first entry alone, then the fault
   * point (for the crash tests), then the rest concurrently. `done` gets the
   * original path of each claimed tree once it is gone.
   */
  async empty(point: FaultPoint, done?: (tree: string) => void): Promise<void> {
    await deleteAll([...this.loose, ...this.buckets.filter((b) => b !== undefined)], point, done);
  }
}

/**
 * Deletes the trees at `dirs` (entries of one parent), spreading them over
 * buckets when there are many. `done` gets each path once it is gone.
 */
export async function deleteTrees(parent: string, dirs: readonly string[], point: FaultPoint, done?: (tree: string) => void): Promise<void> {
  if (dirs.length < FEW) {
    await deleteAll(
      dirs.map((dir) => ({ dir, trees: [dir] })),
      point,
      done,
    );
    return;
  }
  const trash = new Trash(parent, dirs.length);
  const gone: string[] = [];
  for (const dir of dirs) if (!trash.claim(dir.slice(parent.length + 1))) gone.push(dir);
  for (const dir of gone) done?.(dir);
  await trash.empty(point, done);
}

async function deleteAll(jobs: Bucket[], point: FaultPoint, done?: (tree: string) => void): Promise<void> {
  if (jobs.length === 0) return;
  const one = async (job: Bucket, external: boolean) => {
    debug('removing %s (%d trees)', job.dir, job.trees.length);
    const outcome = external ? await removeWithRm(job.dir) : 'unusable';
    if (outcome === 'unusable') await fse.remove(job.dir);
    // 'failed': rm said why in the debug log; the claimed dir stays for the next cleanup.
    if (outcome !== 'failed') for (const tree of job.trees) done?.(tree);
  };
  const external = jobs.reduce((n, j) => n + j.trees.length, 0) >= FEW && rmPath() !== undefined;
  await one(jobs[0]!, external);
  fault(point);
  let next = 1;
  await Promise.all(
    Array.from({ length: Math.min(PARALLEL, jobs.length - 1) }, async () => {
      while (next < jobs.length) await one(jobs[next++]!, external);
    }),
  );
}

let rm: string | null | undefined;

/** GNU (or compatible) `rm` that knows `--one-file-system`, found once; undefined when there is none. */
function rmPath(): string | undefined {
  if (rm === undefined) {
    rm = ['/usr/bin/rm', '/bin/rm'].find((p) => existsSync(p)) ?? null;
    if (rm === null) debug('no rm found: deleting in process');
  }
  return rm ?? undefined;
}

/**
 * Runs `rm -rf --one-file-system -- dir`, which never crosses into a
 * mount that appeared inside the tree. 'gone' when the dir is gone
 * afterwards; 'unusable' when there is no usable `rm` (none, or one that
 * does not know the option: it is then not tried again) and the caller
 * should delete in process; 'failed' when rm ran and left something
 * (a mount inside, a permission), which is left for a later cleanup rather
 * than deleted by means that would cross the mount.
 */
function removeWithRm(dir: string): Promise<'gone' | 'unusable' | 'failed'> {
  const path = rmPath();
  if (path === undefined) return Promise.resolve('unusable');
  return new Promise((resolve) => {
    execFile(path, ['-rf', '--one-file-system', '--', dir], { env: { LC_ALL: 'C' } }, (err, _stdout, stderr) => {
      if (!existsSync(dir)) return resolve('gone');
      debug('%s -rf %s failed (%s): %s', path, dir, err?.message, stderr.trim());
      if (err !== null && ((err as { code?: unknown }).code === 'ENOENT' || /unrecognized option|invalid option|unknown option/i.test(stderr))) {
        rm = null;
        return resolve('unusable');
      }
      resolve('failed');
    });
  });
}

/**
 * Deletes the directory of one removed snapshot, for a synchronous
 * `remove`. Hot path: what nothing was written to is a few empty dirs,
 * deleted by rmdir(2) alone. Each rmdir waits on a discard under its
 * parent's lock, so `fs` goes on the thread pool while `work` (another
 * parent) is emptied: the waits overlap. `work` is emptied on this thread
 * when `alone` (the caller's only deletion: a thread-pool round trip would
 * cost more), else on the pool too, so that many removals at once wait on
 * their discards side by side rather than one after another on this thread.
 * @throws the deletion's error; the record is gone by then, so the caller
 *   leaves the dir to cleanup().
 */
export async function deleteSnapshotDir(dir: string, alone = true): Promise<void> {
  const fsGone = tryRmdir(`${dir}/fs`).then((r) => r !== 'failed');
  // A volatile snapshot's dirs also hold the kernel's mark and the boot file (volatile.ts): tried only when the plain way fails.
  // `index` exists only where a mount had index=on: the fallback below tries it when `work` is not empty.
  const workGone = alone ? removeIfEmpty(`${dir}/work`, ['work']) : await removeEmptyOffThread(`${dir}/work`, ['work']);
  if (!workGone && !removeIfEmpty(`${dir}/work`, VOLATILE_WORK, [VOLATILE_MARK_FILE])) await fse.remove(`${dir}/work`);
  fault('remove:mid-delete');
  if (!(await fsGone) && !(await removeFlat(`${dir}/fs`))) await fse.remove(`${dir}/fs`);
  const dirGone = alone ? removeIfEmpty(dir, []) : await removeEmptyOffThread(dir, []);
  if (!dirGone && !removeIfEmpty(dir, [], [VOLATILE_BOOT_FILE])) await fse.remove(dir);
}

/** {@link removeIfEmpty} without files, its rmdirs on the thread pool (the children's at once). */
async function removeEmptyOffThread(dir: string, children: readonly string[]): Promise<boolean> {
  const gone = async (path: string) => (await tryRmdir(path)) !== 'failed';
  if (!(await Promise.all(children.map((child) => gone(`${dir}/${child}`)))).every(Boolean)) return false;
  return gone(dir);
}

/**
 * rmdir(2) of `path`, on this thread when `onThread`, else on the thread
 * pool: 'removed', 'absent' when there was nothing to remove (ENOENT), or
 * 'failed' on any other error (not empty, a mount point, a permission).
 */
export async function tryRmdir(path: string, onThread = false): Promise<'removed' | 'absent' | 'failed'> {
  try {
    if (onThread) rmdirSync(path);
    else await rmdir(path);
    return 'removed';
  } catch (err) {
    return errnoOf(err) === 'ENOENT' ? 'absent' : 'failed';
  }
}

/** At most this many entries are unlinked at once by {@link removeFlat}; more go to the recursive removal. */
const FLAT = 64;

/**
 * Deletes `dir` when it holds at most `max` files and no directory (what a
 * short-lived container writes): one listing, then every unlink(2) on the
 * thread pool at once, then rmdir(2), so that their waits on discards
 * overlap; with `alone` (the caller's only deletion) a single file and the
 * rmdir go on this thread, where a thread-pool round trip would cost more.
 * False when `dir` holds more or a directory (or anything fails), for the
 * caller's recursive removal.
 */
export async function removeFlat(dir: string, max = FLAT, alone = false): Promise<boolean> {
  try {
    const entries = readdirSync(dir, { withFileTypes: true });
    if (entries.length > max || entries.some((e) => e.isDirectory())) return false;
    if (alone && entries.length <= 1) {
      for (const e of entries) unlinkSync(`${dir}/${e.name}`);
      rmdirSync(dir);
      return true;
    }
    await Promise.all(entries.map((e) => unlink(`${dir}/${e.name}`)));
    await rmdir(dir);
    return true;
  } catch (err) {
    return errnoOf(err) === 'ENOENT' && !existsSync(dir);
  }
}

/** What a volatile mount leaves in a work dir, innermost first, then its usual empty dirs. */
const VOLATILE_WORK = [...VOLATILE_MARK_DIRS, 'work', 'index'];

/**
 * Deletes `dir` when it holds nothing but the empty subdirectories
 * `children` (a snapshot nothing was written to), and the files `files`,
 * with rmdir(2) and unlink(2) alone, and
 * returns true; false when anything else is there, for the caller's
 * recursive removal, which costs thread-pool round trips per entry.
 */
function removeIfEmpty(dir: string, children: readonly string[], files: readonly string[] = []): boolean {
  try {
    for (const file of files) {
      try {
        unlinkSync(`${dir}/${file}`);
      } catch (err) {
        if (errnoOf(err) !== 'ENOENT') return false;
      }
    }
    for (const child of children) {
      try {
        rmdirSync(`${dir}/${child}`);
      } catch (err) {
        if (errnoOf(err) !== 'ENOENT') return false;
      }
    }
    rmdirSync(dir);
    return true;
  } catch {
    return false;
  }
}
