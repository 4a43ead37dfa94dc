/**
 * The undo journal of one apply (see apply.ts, "Atomicity"): what the layer
 * created, in order; what it replaced or deleted from the upper, renamed
 * aside into an undo dir next to the upper (same filesystem, so a rename);
 * and the metadata and times of pre-existing dirs it touched, recorded
 * before the first change. {@link UndoJournal.rollback} plays it backwards.
 *
 * Owns the undo dir and the journal only; which entries the apply creates,
 * and when the writer threads must be waited for, are the applier's.
 */
import { chmodSync, lchownSync, lstatSync, mkdirSync, renameSync, rmSync, statSync } from 'node:fs';
import { basename as pathBasename, dirname as pathDirname } from 'node:path';
import { v4 as uuidv4 } from 'uuid';
import { lutimesNs } from '../kernel/files.js';
import { lremovexattr, lsetxattr, lxattrs } from '../kernel/xattr.js';
import { InvalidArgumentError, q } from '../model/errors.js';
import { abs } from './paths.js';

interface SavedDir {
  mode: number;
  uid: number;
  gid: number;
  xattrs: Map<string, Buffer>;
}

/** The journal of one apply to `upper`. */
export class UndoJournal {
  /** The undo dir, once made. */
  dir: string | undefined;
  /** Journal, in order: paths created, and entries moved aside to the undo dir. */
  private readonly createdOrder: string[] = [];
  private readonly backups: Array<{ rel: string; stash: string }> = [];
  private backupSeq = 0;
  /** Pre-existing dirs whose metadata we change, and whose times we disturb. */
  private readonly savedDirs = new Map<string, SavedDir>();
  private readonly savedTimes = new Map<string, { atime: bigint; mtime: bigint }>();
  /** Files handed to the writers: journalled before they exist, so undo must not insist on removing them. */
  private readonly deferred = new Set<string>();

  /** @param undoDirOption the caller's `undoDir` (ApplyOptions), else one is made next to the upper. */
  constructor(
    private readonly upper: string,
    private readonly undoDirOption: string | undefined,
  ) {}

  /** Journals `rel` as created by this apply; `deferred` when a writer thread makes it (and may fail to). */
  created(rel: string, deferred = false): void {
    this.createdOrder.push(rel);
    if (deferred) this.deferred.add(rel);
  }

  /** Before changing the entries of a pre-existing dir, keep its times so undo can restore them. */
  saveTimes(dirRel: string): void {
    if (this.savedTimes.has(dirRel)) return;
    const st = lstatSync(abs(this.upper, dirRel), { bigint: true });
    this.savedTimes.set(dirRel, { atime: st.atimeNs, mtime: st.mtimeNs });
  }

  /** Before changing a pre-existing dir's own metadata, keep it. */
  saveDir(rel: string, path: string): void {
    if (this.savedDirs.has(rel)) return;
    const st = lstatSync(path, { bigint: true });
    this.savedDirs.set(rel, { mode: Number(st.mode) & 0o7777, uid: Number(st.uid), gid: Number(st.gid), xattrs: lxattrs(path) });
    if (!this.savedTimes.has(rel)) this.savedTimes.set(rel, { atime: st.atimeNs, mtime: st.mtimeNs });
  }

  /** Where the next entry moved aside goes (in the undo dir, made at the first call). */
  nextStash(): string {
    return `${this.undoDir()}/${this.backupSeq++}`;
  }

  /** Journals `rel` as moved aside to `stash`. */
  stashed(rel: string, stash: string): void {
    this.backups.push({ rel, stash });
  }

  private undoDir(): string {
    if (this.dir) return this.dir;
    const upperDev = statSync(this.upper).dev;
    let dir = this.undoDirOption ?? `${pathDirname(this.upper)}/.apply-undo-${pathBasename(this.upper)}-${uuidv4()}`;
    mkdirSync(dir, { mode: 0o700, recursive: this.undoDirOption !== undefined });
    if (statSync(dir).dev !== upperDev) {
      if (this.undoDirOption !== undefined) {
        throw new InvalidArgumentError(`undoDir ${q(dir)} is not on the filesystem of ${q(this.upper)}`);
      }
      // The upper is a mount point of its own: keep the undo dir inside it, under a name no layer uses.
      rmSync(dir, { recursive: true, force: true });
      dir = `${this.upper}/.apply-undo-${uuidv4()}`;
      mkdirSync(dir, 0o700);
    }
    this.dir = dir;
    return dir;
  }

  /** Deletes the undo dir (the apply succeeded, or was undone). */
  drop(): void {
    if (this.dir) rmSync(this.dir, { recursive: true, force: true });
  }

  /** Plays the journal backwards: the upper is as it was before the apply. Every writer thread must be done. */
  rollback(): void {
    for (let i = this.createdOrder.length - 1; i >= 0; i--) {
      const rel = this.createdOrder[i]!;
      try {
        rmSync(abs(this.upper, rel), { recursive: true, force: true });
      } catch (err) {
        // A writer thread may have failed to make it (e.g. ENAMETOOLONG): then there is nothing to remove.
        if (!this.deferred.has(rel)) throw err;
      }
    }
    for (let i = this.backups.length - 1; i >= 0; i--) {
      const b = this.backups[i]!;
      const path = abs(this.upper, b.rel);
      rmSync(path, { recursive: true, force: true });
      renameSync(b.stash, path);
    }
    for (const [rel, saved] of this.savedDirs) {
      const path = abs(this.upper, rel);
      lchownSync(path, saved.uid, saved.gid);
      chmodSync(path, saved.mode);
      const now = lxattrs(path);
      for (const name of now.keys()) if (!saved.xattrs.has(name)) lremovexattr(path, name);
      for (const [name, value] of saved.xattrs) if (!now.get(name)?.equals(value)) lsetxattr(path, name, value);
    }
    this.drop();
    // Last: every rename and removal above moved the parents' mtimes.
    for (const [rel, t] of this.savedTimes) lutimesNs(abs(this.upper, rel), t.atime, t.mtime);
  }
}
