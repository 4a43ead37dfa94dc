/**
 * One apply of a layer (see apply.ts for the rules): the checks of every
 * entry against the merged view (upper-view.ts), the calls that make each
 * entry, and the bookkeeping the undo journal (undo.ts) needs to keep the
 * apply atomic. Owns nothing beyond one apply; it writes the upper only,
 * never a lower (read only), and knows nothing of snapshots or the store.
 *
 * About 600 lines: one state machine whose every step reads and writes the
 * same known state; its entry handlers stay together so that the order of
 * their calls can be read in one place.
 */
import {
  type Stats,
  closeSync,
  constants as fsc,
  copyFileSync,
  fchmodSync,
  fchownSync,
  futimesSync,
  lchownSync,
  linkSync,
  lstatSync,
  lutimesSync,
  mkdirSync,
  openSync,
  readFileSync,
  readdirSync,
  readlinkSync,
  renameSync,
  rmSync,
  chmodSync,
  symlinkSync,
  writeSync,
} from 'node:fs';
import createDebug from 'debug';
import { mknod, mkwhiteout, splitdev } from '../kernel/files.js';
import { fsetxattr, lsetxattr, lxattrs } from '../kernel/xattr.js';
import { InvalidArgumentError, q } from '../model/errors.js';
import type { ApplyOptions, LayerTarget } from './apply.js';
import { type EntryHeader, entryOwner, entryTimes, entryXattrs } from './pax.js';
import { OPAQUE_MARKER, WHITEOUT_META_PREFIX, WHITEOUT_PREFIX, abs, basename, cleanName, dirname, isWithin, joinRel, refuse } from './paths.js';
import { UndoJournal } from './undo.js';
import { type Node, UpperView, isWhiteoutStat, lstatOrNull } from './upper-view.js';
import { DEFER_MAX, Writers } from './writer.js';

const debug = createDebug('overlay-snapshotter:layers');

/** A file entry whose body is being written. */
export interface PendingFile {
  /** -1 when the file is made by the writer threads ({@link Writers}). */
  fd: number;
  rel: string;
  entry: string;
  header: EntryHeader;
  xattrs: Map<string, Buffer> | undefined;
}

const OVERLAY_XATTR = /^(trusted|user)\.overlay\./;

let cachedUmask: number | undefined;
/** The process umask, read without the racy `process.umask()` getter. */
function umask(): number {
  if (cachedUmask !== undefined) return cachedUmask;
  try {
    const m = /^Umask:\s*([0-7]+)$/m.exec(readFileSync('/proc/self/status', 'latin1'));
    cachedUmask = m?.[1] ? Number.parseInt(m[1], 8) : 0o022;
  } catch {
    cachedUmask = 0o022;
  }
  return cachedUmask;
}

/** One apply: the upper's known state, the journal, and the deferred work. */
export class Applier {
  /** What this apply knows of the upper and sees of the lowers. */
  private readonly view: UpperView;
  private readonly upper: string;
  private readonly overlay: boolean;
  private readonly opaqueXattr: string;
  private readonly sameOwner: boolean;
  private readonly euid: number;
  private readonly egid: number;
  private readonly umask: number;
  /** What this apply created, moved aside or changed, to undo it. */
  private readonly journal: UndoJournal;

  private pending: PendingFile | undefined;
  /** Helper threads that make small new files, when there is a CPU for them: from the first file after they are seen running. */
  private writers: Writers | undefined;
  /** Set by commit and rollback: writer threads that come up later are not used. */
  private ended = false;

  /**
   * `threads`: whether the writer threads run ({@link writersReady}), or
   * the promise of it: files are made here until it resolves true, then
   * the small ones by the threads (a first apply does not wait for the
   * threads to start, and one whose threads never start makes every file
   * here).
   */
  constructor(target: LayerTarget, opts: ApplyOptions, threads: boolean | Promise<boolean>) {
    if (threads === true) this.writers = new Writers();
    else if (threads !== false) {
      threads.then(
        (running) => {
          if (running && !this.ended) this.writers = new Writers();
        },
        () => {},
      );
    }
    this.view = new UpperView(target);
    this.upper = this.view.upper;
    this.overlay = this.view.overlay;
    this.opaqueXattr = this.view.opaqueXattr;
    this.euid = process.geteuid?.() ?? 0;
    this.egid = process.getegid?.() ?? 0;
    this.sameOwner = opts.sameOwner ?? this.euid === 0;
    this.umask = umask();
    this.journal = new UndoJournal(this.upper, opts.undoDir);
  }

  /**
   * Makes sure `rel` is a real directory of the upper, visible in the merged
   * view, creating or copying it up if needed. Refuses a path through a
   * symlink or a non-directory, wherever that lives. With `create` false,
   * a dir missing from the merged view is not made and `false` comes back.
   * Hot: the first check answers for nearly every entry of a well-formed layer.
   */
  private ensureDir(rel: string, entry: string, create = true): boolean {
    const known = this.view.nodes.get(rel);
    if (known?.dir) return true;
    const parent = dirname(rel);
    if (!this.ensureDir(parent, entry, create)) return false;
    const path = abs(this.upper, rel);
    if (known) {
      // Made by this apply and not a dir.
      if (known.whiteout) {
        if (!create) return false;
        this.replaceWithDir(rel, path, entry, true);
        return true;
      }
      const st = lstatOrNull(path);
      if (st?.isSymbolicLink()) throw refuse(entry, `its parent ${q(rel)} is a symlink in this layer`);
      throw refuse(entry, `its parent ${q(rel)} is not a directory`);
    }
    const parentNode = this.view.nodes.get(parent)!;
    const st = parentNode.created ? undefined : lstatOrNull(path);
    if (st) {
      if (st.isDirectory()) {
        this.view.remember(rel, { created: false, dir: true, opaque: this.overlay && this.view.isOpaqueOnDisk(path) });
        return true;
      }
      if (st.isSymbolicLink()) throw refuse(entry, `its parent ${q(rel)} is a symlink`);
      if (isWhiteoutStat(st) && this.overlay) {
        if (!create) return false;
        this.replaceWithDir(rel, path, entry, false);
        return true;
      }
      throw refuse(entry, `its parent ${q(rel)} is not a directory`);
    }
    const low = this.overlay ? this.view.lookupLower(rel) : undefined;
    if (low) {
      if (low.st.isSymbolicLink()) throw refuse(entry, `its parent ${q(rel)} is a symlink in a lower layer`);
      if (!low.st.isDirectory()) throw refuse(entry, `its parent ${q(rel)} is not a directory in a lower layer`);
      this.copyUpDir(rel, path, low.path, low.st);
      return true;
    }
    if (!create) return false;
    // Missing everywhere: containerd creates missing parents 0755, owned by root.
    this.touchParent(parent);
    mkdirSync(path, 0o700);
    this.created(rel, { created: true, dir: true, opaque: false });
    this.view.finalDirs.set(rel, { mode: 0o755 });
    return true;
  }

  /** A whiteout stands where a parent dir must go: the new dir hides what the whiteout hid. */
  private replaceWithDir(rel: string, path: string, entry: string, ours: boolean): void {
    if (ours) this.removeOurs(rel, false);
    else this.moveAside(rel, false);
    this.touchParent(dirname(rel));
    mkdirSync(path, 0o700);
    const opaque = this.setOpaqueIfLowerDir(rel, path);
    this.created(rel, { created: true, dir: true, opaque });
    this.view.finalDirs.set(rel, { mode: 0o755 });
    debug('implicit dir %s replaces a whiteout (for %s)', rel, entry);
  }

  private setOpaqueIfLowerDir(rel: string, path: string): boolean {
    if (!this.overlay) return false;
    const low = this.view.lookupLower(rel);
    if (!low?.st.isDirectory()) return false;
    lsetxattr(path, this.opaqueXattr, Buffer.from('y'));
    return true;
  }

  // ---- journal -----------------------------------------------------------

  /** Waits until every file handed to the writer threads exists (before anything that could see or touch one). */
  private barrier(): void {
    this.writers?.barrier();
  }

  private created(rel: string, node: Node, deferred = false): void {
    this.view.remember(rel, node);
    this.journal.created(rel, deferred);
  }

  /** Before changing the entries of a pre-existing dir, keep its times so undo can restore them. */
  private touchParent(dirRel: string): void {
    if (this.view.nodes.get(dirRel)?.created) return;
    this.journal.saveTimes(dirRel);
  }

  /** Before changing a pre-existing dir's own metadata, keep it. */
  private saveDir(rel: string, path: string): void {
    if (this.view.nodes.get(rel)?.created) return;
    this.journal.saveDir(rel, path);
  }

  /** Moves a pre-existing upper entry aside (never deletes it before the apply succeeds). */
  private moveAside(rel: string, wasDir: boolean): void {
    this.barrier();
    const stash = this.journal.nextStash();
    this.touchParent(dirname(rel));
    renameSync(abs(this.upper, rel), stash);
    this.journal.stashed(rel, stash);
    this.view.forget(rel, wasDir);
  }

  /** Deletes something this apply made (a later entry replaces it). */
  private removeOurs(rel: string, wasDir: boolean): void {
    this.barrier();
    rmSync(abs(this.upper, rel), { recursive: wasDir, force: true });
    this.view.forget(rel, wasDir);
  }

  /**
   * Clears the way for a new entry at `rel`. Returns `'merge'` when a dir
   * entry lands on an existing dir (kept, metadata updated), `'replaced'`
   * when something was there and is gone now, `'free'` when nothing was.
   */
  private clear(rel: string, wantDir: boolean, entry: string): 'merge' | 'replaced' | 'free' {
    const known = this.view.nodes.get(rel);
    if (known) {
      if (known.dir && wantDir) return 'merge';
      if (known.created) this.removeOurs(rel, known.dir);
      else this.moveAside(rel, known.dir);
      return 'replaced';
    }
    const parentNode = this.view.nodes.get(dirname(rel))!;
    // A dir this apply made holds only what `nodes` records: no syscall needed.
    if (parentNode.created) return 'free';
    const path = abs(this.upper, rel);
    const st = lstatOrNull(path);
    if (!st) return 'free';
    if (st.isDirectory()) {
      if (wantDir) {
        this.view.remember(rel, { created: false, dir: true, opaque: this.overlay && this.view.isOpaqueOnDisk(path) });
        return 'merge';
      }
      debug('%s replaces directory %s of the upper', entry, rel);
    }
    this.moveAside(rel, st.isDirectory());
    return 'replaced';
  }

  // ---- metadata ----------------------------------------------------------

  private checkXattrs(xattrs: Map<string, Buffer> | undefined, entry: string): void {
    if (!xattrs) return;
    for (const name of xattrs.keys()) {
      if (OVERLAY_XATTR.test(name)) {
        throw refuse(entry, `it sets the overlayfs attribute ${q(name)}; layers express whiteouts and opaque dirs with .wh. entries`);
      }
    }
  }

  private setXattrs(path: string, xattrs: Map<string, Buffer> | undefined, symlink: boolean): void {
    if (!xattrs) return;
    for (const [name, value] of xattrs) {
      try {
        lsetxattr(path, name, value);
      } catch (err) {
        // user.* attributes are not allowed on symlinks (EPERM); GNU tar warns and goes on.
        if (symlink && name.startsWith('user.') && (err as NodeJS.ErrnoException).code === 'EPERM') continue;
        throw err;
      }
    }
  }

  private chown(path: string, header: EntryHeader): void {
    if (!this.sameOwner) return;
    const { uid, gid } = entryOwner(header);
    lchownSync(path, uid, gid);
  }

  // ---- entries -----------------------------------------------------------

  /**
   * Handles one entry up to (not including) its file data. Returns the open
   * file when the entry's body must be written to it.
   */
  begin(header: EntryHeader): PendingFile | undefined {
    const entry = header.name;
    const rel = cleanName(entry);
    const type = header.type;
    if (rel === '') {
      if (type === 'directory') return undefined; // the root itself: the snapshot's fs dir is not the layer's
      throw refuse(entry, 'it would replace the root directory');
    }
    const base = basename(rel);
    const parent = dirname(rel);
    if (base.startsWith(WHITEOUT_PREFIX)) {
      if (base === OPAQUE_MARKER) this.opaque(parent, entry);
      else if (base.startsWith(WHITEOUT_META_PREFIX)) debug('skipping aufs metadata entry %s', entry);
      else this.whiteout(parent, base.slice(WHITEOUT_PREFIX.length), entry);
      return undefined;
    }
    if (header.pax && ('GNU.sparse.major' in header.pax || 'GNU.sparse.map' in header.pax || 'GNU.sparse.size' in header.pax)) {
      throw refuse(entry, 'GNU sparse files are not supported');
    }
    const xattrs = entryXattrs(header);
    this.checkXattrs(xattrs, entry);
    switch (type) {
      case 'directory':
        this.directory(rel, parent, header, xattrs, entry);
        return undefined;
      case 'file':
      case 'contiguous-file':
        return this.file(rel, parent, header, xattrs, entry);
      case 'symlink':
        this.symlink(rel, parent, header, xattrs, entry);
        return undefined;
      case 'link':
        this.hardlink(rel, parent, header, entry);
        return undefined;
      case 'character-device':
      case 'block-device':
      case 'fifo':
        this.special(rel, parent, header, xattrs, entry, type);
        return undefined;
      default:
        throw refuse(entry, `unsupported entry type ${q(String(type))}`);
    }
  }

  private directory(rel: string, parent: string, header: EntryHeader, xattrs: Map<string, Buffer> | undefined, entry: string): void {
    this.ensureDir(parent, entry);
    const path = abs(this.upper, rel);
    const slot = this.clear(rel, true, entry);
    if (slot === 'merge') {
      this.saveDir(rel, path);
    } else {
      this.touchParent(parent);
      mkdirSync(path, 0o700);
      // Replacing a non-dir (or whiteout) with a dir must not uncover a lower dir's children.
      const opaque = slot === 'replaced' && this.setOpaqueIfLowerDir(rel, path);
      this.created(rel, { created: true, dir: true, opaque });
    }
    this.chown(path, header);
    this.setXattrs(path, xattrs, false);
    this.view.finalDirs.set(rel, { mode: (header.mode ?? 0o755) & 0o7777, times: entryTimes(header) });
  }

  private file(rel: string, parent: string, header: EntryHeader, xattrs: Map<string, Buffer> | undefined, entry: string): PendingFile {
    this.ensureDir(parent, entry);
    this.clear(rel, false, entry);
    this.touchParent(parent);
    const path = abs(this.upper, rel);
    const size = header.size ?? 0;
    if (this.writers && !xattrs && size <= DEFER_MAX) {
      // Made by a writer thread: the same calls, in the same order, as below and in finishFile.
      const { uid, gid } = this.sameOwner ? entryOwner(header) : { uid: -1, gid: -1 };
      const chown = this.sameOwner && (uid !== this.euid || gid !== this.egid || !this.view.nodes.get(parent)?.created);
      const mode = (header.mode ?? 0o644) & 0o7777;
      const { atime, mtime } = entryTimes(header);
      this.writers.begin({
        path,
        mode: mode & 0o777,
        off: 0,
        len: size,
        uid: chown ? uid : -1,
        gid: chown ? gid : -1,
        chmod: mode !== (mode & 0o777 & ~this.umask) ? mode : -1,
        atime,
        mtime,
      });
      this.created(rel, { created: true, dir: false }, true);
      this.pending = { fd: -1, rel, entry, header, xattrs };
      return this.pending;
    }
    const fd = openSync(path, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL | fsc.O_NOFOLLOW, (header.mode ?? 0o644) & 0o777);
    this.created(rel, { created: true, dir: false });
    this.pending = { fd, rel, entry, header, xattrs };
    return this.pending;
  }

  /** Writes a chunk of the pending file's data. */
  write(file: PendingFile, chunk: Buffer): void {
    if (file.fd < 0) {
      this.writers!.write(chunk);
      return;
    }
    let off = 0;
    while (off < chunk.length) off += writeSync(file.fd, chunk, off, chunk.length - off);
  }

  /** Owner, mode, xattrs and times of the pending file, in the order that keeps setuid bits and capabilities. */
  finishFile(file: PendingFile): void {
    const { fd, header } = file;
    if (fd < 0) {
      this.pending = undefined;
      this.writers!.end();
      return;
    }
    const path = abs(this.upper, file.rel);
    try {
      if (this.sameOwner) {
        const { uid, gid } = entryOwner(header);
        // A new file in a dir of ours is already euid:egid (our dirs are 0700 until the end, so no setgid).
        if (uid !== this.euid || gid !== this.egid || !this.view.nodes.get(dirname(file.rel))?.created) fchownSync(fd, uid, gid);
      }
      const mode = (header.mode ?? 0o644) & 0o7777;
      // chown clears setuid/setgid, so chmod comes after it; skipped when open() already gave the mode.
      if (mode !== (mode & 0o777 & ~this.umask)) fchmodSync(fd, mode);
      if (file.xattrs) for (const [name, value] of file.xattrs) fsetxattr(fd, name, value, path);
      const { atime, mtime } = entryTimes(header);
      futimesSync(fd, atime, mtime);
    } finally {
      this.pending = undefined;
      closeSync(fd);
    }
  }

  private symlink(rel: string, parent: string, header: EntryHeader, xattrs: Map<string, Buffer> | undefined, entry: string): void {
    const target = header.linkname ?? '';
    if (target === '') throw refuse(entry, 'symlink with an empty target');
    if (target.includes('\0')) throw refuse(entry, 'symlink target contains a NUL byte');
    this.ensureDir(parent, entry);
    this.clear(rel, false, entry);
    this.touchParent(parent);
    const path = abs(this.upper, rel);
    symlinkSync(target, path);
    this.created(rel, { created: true, dir: false });
    this.chown(path, header);
    this.setXattrs(path, xattrs, true);
    const { atime, mtime } = entryTimes(header);
    lutimesSync(path, atime, mtime);
  }

  private hardlink(rel: string, parent: string, header: EntryHeader, entry: string): void {
    const target = cleanName(header.linkname ?? '', entry, 'hard link target');
    if (target === '') throw refuse(entry, 'hard link to the root directory');
    if (target === rel) throw refuse(entry, 'hard link to itself');
    if (isWithin(target, rel)) throw refuse(entry, `hard link target ${q(target)} is inside the entry it would replace`);
    this.barrier();
    // The target's parents get the same checks as an entry's: no symlinks, no escapes.
    this.ensureDir(dirname(target), entry);
    const targetPath = abs(this.upper, target);
    const known = this.view.nodes.get(target);
    if (known?.whiteout) throw refuse(entry, `hard link target ${q(target)} was deleted by this layer`);
    // In a dir this apply made, only `nodes` can know of the target.
    const st = known || !this.view.nodes.get(dirname(target))!.created ? lstatOrNull(targetPath) : undefined;
    if (st) {
      if (st.isDirectory()) throw refuse(entry, `hard link target ${q(target)} is a directory`);
      if (isWhiteoutStat(st)) throw refuse(entry, `hard link target ${q(target)} does not exist`);
    } else {
      const low = this.overlay ? this.view.lookupLower(target) : undefined;
      if (!low) throw refuse(entry, `hard link target ${q(target)} does not exist`);
      if (low.st.isDirectory()) throw refuse(entry, `hard link target ${q(target)} is a directory`);
      this.copyUp(target, targetPath, low.path, low.st);
    }
    this.ensureDir(parent, entry);
    this.clear(rel, false, entry);
    this.touchParent(parent);
    linkSync(targetPath, abs(this.upper, rel));
    this.created(rel, { created: true, dir: false });
  }

  private special(
    rel: string,
    parent: string,
    header: EntryHeader,
    xattrs: Map<string, Buffer> | undefined,
    entry: string,
    kind: 'character-device' | 'block-device' | 'fifo',
  ): void {
    const major = header.devmajor ?? 0;
    const minor = header.devminor ?? 0;
    if (kind === 'character-device' && major === 0 && minor === 0) {
      throw refuse(entry, 'a character device 0/0 is an overlayfs whiteout; layers delete with .wh. entries');
    }
    this.ensureDir(parent, entry);
    this.clear(rel, false, entry);
    this.touchParent(parent);
    const path = abs(this.upper, rel);
    mknod(path, kind, 0o600, major, minor);
    this.created(rel, { created: true, dir: false });
    this.chown(path, header);
    chmodSync(path, (header.mode ?? 0o644) & 0o7777); // a node we just made with mknod: not a symlink
    this.setXattrs(path, xattrs, false);
    const { atime, mtime } = entryTimes(header);
    lutimesSync(path, atime, mtime);
  }

  private whiteout(parent: string, name: string, entry: string): void {
    if (name === '' || name === '.' || name === '..') throw refuse(entry, `whiteout of ${q(name)} would delete its own directory or a parent`);
    // Parentless: a whiteout in a dir that does not exist has nothing to delete.
    if (!this.ensureDir(parent, entry, this.overlay)) return;
    const rel = joinRel(parent, name);
    const known = this.view.nodes.get(rel);
    // OCI: a whiteout hides only lower layers; what this layer wrote stays.
    if (known?.created) return;
    if (known) {
      this.moveAside(rel, known.dir);
    } else if (!this.view.nodes.get(parent)!.created) {
      const st = lstatOrNull(abs(this.upper, rel));
      if (st) this.moveAside(rel, st.isDirectory());
    }
    if (!this.overlay) return; // parentless: deleting is all there is to do
    this.touchParent(parent);
    mkwhiteout(abs(this.upper, rel));
    this.created(rel, { created: true, dir: false, whiteout: true });
  }

  private opaque(dirRel: string, entry: string): void {
    // overlayfs does not honour the opaque xattr on the upper's root.
    if (this.overlay && dirRel === '') throw refuse(entry, 'the root directory cannot be made opaque in an overlay');
    if (!this.ensureDir(dirRel, entry, this.overlay)) return;
    this.barrier();
    const node = this.view.nodes.get(dirRel)!;
    const path = abs(this.upper, dirRel);
    if (!node.created) {
      // What a previous apply put in this dir is "below" this layer: hide it (keep what this layer made).
      for (const child of readdirSync(path)) {
        const rel = joinRel(dirRel, child);
        const known = this.view.nodes.get(rel);
        if (known?.created) continue;
        if (this.journal.dir && abs(this.upper, rel) === this.journal.dir) continue;
        this.moveAside(rel, lstatSync(abs(this.upper, rel)).isDirectory());
      }
    }
    if (!this.overlay) return;
    if (!node.opaque) {
      this.saveDir(dirRel, path);
      lsetxattr(path, this.opaqueXattr, Buffer.from('y'));
      node.opaque = true;
    }
  }

  // ---- copy-up -------------------------------------------------------------

  private copyMeta(path: string, from: string, st: Stats, symlink: boolean): void {
    lchownSync(path, st.uid, st.gid);
    const xattrs = lxattrs(from);
    for (const name of [...xattrs.keys()]) if (OVERLAY_XATTR.test(name)) xattrs.delete(name);
    this.setXattrs(path, xattrs, symlink);
  }

  private copyUpDir(rel: string, path: string, from: string, st: Stats): void {
    this.touchParent(dirname(rel));
    mkdirSync(path, 0o700);
    this.created(rel, { created: true, dir: true, opaque: false });
    this.copyMeta(path, from, st, false);
    // Its mtime moves as children arrive, as it would in a mounted overlay.
    this.view.finalDirs.set(rel, { mode: st.mode & 0o7777 });
  }

  /** Copies a lower non-directory into the upper at the same path, like overlayfs' copy-up. */
  private copyUp(rel: string, path: string, from: string, st: Stats): void {
    this.touchParent(dirname(rel));
    if (st.isFile()) {
      copyFileSync(from, path, fsc.COPYFILE_EXCL);
    } else if (st.isSymbolicLink()) {
      symlinkSync(readlinkSync(from), path);
    } else if (st.isCharacterDevice() || st.isBlockDevice() || st.isFIFO()) {
      const { major, minor } = splitdev(st.rdev);
      mknod(path, st.isCharacterDevice() ? 'character-device' : st.isBlockDevice() ? 'block-device' : 'fifo', 0o600, major, minor);
    } else {
      throw new InvalidArgumentError(`cannot copy up ${q(rel)}: unsupported file type`);
    }
    this.created(rel, { created: true, dir: false });
    this.copyMeta(path, from, st, st.isSymbolicLink());
    if (!st.isSymbolicLink()) chmodSync(path, st.mode & 0o7777);
    lutimesSync(path, st.atime, st.mtime);
  }

  // ---- end -----------------------------------------------------------------

  /** Sets dir modes and times now that no entry will disturb them, and drops the undo dir. */
  commit(): void {
    this.ended = true;
    this.barrier();
    const rels = [...this.view.finalDirs.keys()].sort((a, b) => (a < b ? 1 : a > b ? -1 : 0));
    for (const rel of rels) {
      const fin = this.view.finalDirs.get(rel)!;
      const path = abs(this.upper, rel);
      chmodSync(path, fin.mode);
      if (fin.times) lutimesSync(path, fin.times.atime, fin.times.mtime);
    }
    this.journal.drop();
  }

  /** Plays the journal backwards: the upper is as it was before the apply. */
  rollback(): void {
    this.ended = true;
    if (this.pending) {
      if (this.pending.fd >= 0) {
        try {
          closeSync(this.pending.fd);
        } catch {
          /* already closed */
        }
      }
      this.pending = undefined;
    }
    this.writers?.settle();
    this.journal.rollback();
  }
}
