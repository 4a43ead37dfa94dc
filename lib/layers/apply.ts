/**
 * Applying a layer tarball to a directory: an overlay upper dir (with the
 * lower dirs below it, read only) or the `fs` dir of a parentless snapshot.
 *
 * The rules, in short (docs/layers.md has the long form):
 *
 * - Every entry name is cleaned and checked ({@link cleanName}); its parent
 *   is resolved one component at a time in the *merged* view (upper over
 *   lowers, honouring whiteouts and opaque dirs), and a parent that is a
 *   symlink (planted earlier in this layer, already in the upper, or in any
 *   lower) or not a directory is refused. We never follow a symlink: files
 *   are created with `O_EXCL|O_NOFOLLOW`, metadata is set on descriptors or
 *   with the `l*` calls, and a parent we did not create is `lstat`ed.
 * - A parent that exists only in a lower is copied up (mode, owner, xattrs),
 *   as overlayfs would; a missing parent is created 0755 root-owned, as
 *   containerd does.
 * - `.wh.<name>` becomes an overlay whiteout (char 0/0) and `.wh..wh..opq`
 *   the opaque xattr on its directory; with no lowers (parentless snapshot)
 *   both simply delete. A whiteout hides only what lies below this layer:
 *   entries this layer already wrote are kept, wherever the marker sits.
 * - A hard link may point to a file of this layer, of the upper, or of a
 *   lower: a lower file is first copied up to its own path in the upper
 *   (the link must share an inode, and lowers are read only).
 *
 * Atomicity: nothing is ever overwritten in place. What the layer creates is
 * journalled; what it replaces or deletes from the upper is renamed aside
 * into an undo dir next to the upper (same filesystem, so a rename), and the
 * metadata and times of pre-existing dirs it touches are recorded first. If
 * any entry is refused or any call fails, the journal is played backwards
 * and the upper is as it was; on success the undo dir is deleted. This
 * costs nothing when the upper starts empty (the import case): there is
 * nothing to rename aside. A crash mid-apply leaves a half-applied upper
 * (and maybe the undo dir beside it); the import helper only commits after
 * a successful apply, so such an active is never committed.
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
  statSync,
} from 'node:fs';
import { dirname as pathDirname, basename as pathBasename } from 'node:path';
import type { Readable } from 'node:stream';
import createDebug from 'debug';
import tar from 'tar-stream';
import { v4 as uuidv4 } from 'uuid';
import { InvalidArgumentError, q } from '../model/errors.js';
import { type Compression, decompress } from './compression.js';
import { StreamHash } from './hash.js';
import { type EntryHeader, captureRawXattrs, entryXattrs } from './pax.js';
import {
  OPAQUE_MARKER,
  WHITEOUT_META_PREFIX,
  WHITEOUT_PREFIX,
  abs,
  basename,
  cleanName,
  dirname,
  isWithin,
  joinRel,
  refuse,
} from './paths.js';
import { useWorker } from './hash.js';
import { DEFER_MAX, Writers } from './writer.js';
import { fsetxattr, lgetxattr, lremovexattr, lsetxattr, lutimesNs, lxattrs, mknod, mkwhiteout, splitdev } from './sys.js';

const debug = createDebug('overlay-snapshotter:layers');

/** Where a layer goes: the directory written, and the read-only layers below it. */
export interface LayerTarget {
  /** The directory to write: an overlay `upperdir`, or the `fs` dir of a parentless snapshot. */
  upper: string;
  /** Overlay lower dirs, immediate parent first; `[]` for a parentless snapshot (whiteouts then delete). */
  lowers: string[];
  /**
   * The overlay is mounted with `userxattr` (user namespaces): opaque dirs
   * carry `user.overlay.opaque` instead of `trusted.overlay.opaque`.
   * Default `false`.
   */
  userxattr?: boolean;
}

/** Options of {@link applyLayer}. */
export interface ApplyOptions {
  /**
   * Restore owners (uid/gid) from the layer. Default: `true` when running as
   * root, else `false` (files then belong to the caller, as with `tar` run
   * by a user).
   */
  sameOwner?: boolean;
  /**
   * Directory for entries the layer replaces or deletes, kept until the
   * apply succeeds so a failure can put them back. It must be on the same
   * filesystem as the upper. Default: a fresh `.apply-undo-<uuid>` directory
   * next to the upper (inside the snapshot's own directory), made only when
   * needed and removed afterwards.
   */
  undoDir?: string;
}

/** The digest and size of the uncompressed tar stream (its OCI diffID). */
export interface LayerDigest {
  /** `sha256:<hex>` of the uncompressed tar: the layer's diffID. */
  digest: string;
  /** Bytes of the uncompressed tar. */
  size: number;
}

/** What {@link applyLayer} found and did. */
export interface ApplyResult extends LayerDigest {
  /** The compression detected from the stream's first bytes. */
  compression: Compression;
}

/** What we know about a path of the upper that this apply has created or checked. */
interface Node {
  /** Made by this apply (so: ours to replace or delete, and not hidden by whiteouts). */
  created: boolean;
  dir: boolean;
  /** An overlay whiteout this apply made. */
  whiteout?: boolean;
  /** For dirs: carries the opaque xattr (hides the lowers below it). */
  opaque?: boolean;
}

interface SavedDir {
  mode: number;
  uid: number;
  gid: number;
  xattrs: Map<string, Buffer>;
}

interface PendingFile {
  /** -1 when the file is made by the writer threads ({@link Writers}). */
  fd: number;
  rel: string;
  entry: string;
  header: EntryHeader;
  xattrs: Map<string, Buffer> | undefined;
}

const OVERLAY_XATTR = /^(trusted|user)\.overlay\./;

function lstatOrNull(path: string): Stats | undefined {
  return lstatSync(path, { throwIfNoEntry: false });
}

function isWhiteoutStat(st: Stats): boolean {
  return st.isCharacterDevice() && st.rdev === 0;
}

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

function paxNumber(header: EntryHeader, key: string): number | undefined {
  const v = header.pax?.[key];
  if (v === undefined) return undefined;
  const n = Number(v);
  return Number.isFinite(n) ? n : undefined;
}

/** Seconds since the epoch: PAX records keep sub-second precision the ustar header lacks. */
function entryTimes(header: EntryHeader): { atime: number; mtime: number } {
  const mtime = paxNumber(header, 'mtime') ?? (header.mtime ? header.mtime.getTime() / 1000 : 0);
  const atime = paxNumber(header, 'atime') ?? mtime;
  // containerd uses max(atime, mtime) so that a layer cannot set an atime before its mtime.
  return { atime: Math.max(atime, mtime), mtime };
}

function entryOwner(header: EntryHeader): { uid: number; gid: number } {
  return { uid: paxNumber(header, 'uid') ?? header.uid ?? 0, gid: paxNumber(header, 'gid') ?? header.gid ?? 0 };
}

/** One apply: the upper's known state, the journal, and the deferred work. */
class Applier {
  private readonly upper: string;
  private readonly lowers: string[];
  private readonly overlay: boolean;
  private readonly opaqueXattr: string;
  private readonly sameOwner: boolean;
  private readonly euid: number;
  private readonly egid: number;
  private readonly umask: number;
  private undoDir: string | undefined;
  private readonly undoDirOption: string | undefined;

  private readonly nodes = new Map<string, Node>();
  /** Dirs that have children recorded in `nodes` (so removal must forget them). */
  private readonly hasChildNodes = new Set<string>();
  /** Journal, in order: paths created, and entries moved aside to the undo dir. */
  private readonly createdOrder: string[] = [];
  private readonly backups: Array<{ rel: string; stash: string }> = [];
  private backupSeq = 0;
  /** Pre-existing dirs whose metadata we change, and whose times we disturb. */
  private readonly savedDirs = new Map<string, SavedDir>();
  private readonly savedTimes = new Map<string, { atime: bigint; mtime: bigint }>();
  /** Dir mode and times, set when all entries are in (children would disturb mtimes). */
  private readonly finalDirs = new Map<string, { mode: number; times?: { atime: number; mtime: number } }>();
  private pending: PendingFile | undefined;
  /** Helper threads that make small new files, when there is a CPU for them. */
  private readonly writers: Writers | undefined = useWorker() ? new Writers() : undefined;
  /** Files handed to the writers: journalled before they exist, so undo must not insist on removing them. */
  private readonly deferred = new Set<string>();

  constructor(target: LayerTarget, opts: ApplyOptions) {
    this.upper = target.upper.replace(/\/+$/, '') || '/';
    this.lowers = target.lowers.map((l) => l.replace(/\/+$/, '') || '/');
    this.overlay = this.lowers.length > 0;
    this.opaqueXattr = target.userxattr ? 'user.overlay.opaque' : 'trusted.overlay.opaque';
    this.euid = process.geteuid?.() ?? 0;
    this.egid = process.getegid?.() ?? 0;
    this.sameOwner = opts.sameOwner ?? this.euid === 0;
    this.umask = umask();
    this.undoDirOption = opts.undoDir;
    const st = lstatOrNull(this.upper);
    if (!st?.isDirectory()) throw new InvalidArgumentError(`apply target ${q(this.upper)} is not a directory`);
    this.nodes.set('', { created: false, dir: true, opaque: this.overlay && this.isOpaqueOnDisk(this.upper) });
  }

  // ---- lookups -----------------------------------------------------------

  private isOpaqueOnDisk(path: string): boolean {
    const v = lgetxattr(path, this.opaqueXattr);
    return v !== undefined && v.length === 1 && v[0] === 0x79; // "y"
  }

  /** Records what we learnt about `rel` (and remembers that its parent has recorded children). */
  private remember(rel: string, node: Node): void {
    this.nodes.set(rel, node);
    this.hasChildNodes.add(dirname(rel));
  }

  /** Forgets `rel` and everything below it (after it was removed or moved aside). */
  private forget(rel: string, wasDir: boolean): void {
    this.nodes.delete(rel);
    this.finalDirs.delete(rel);
    if (!wasDir || !this.hasChildNodes.has(rel)) return;
    for (const key of this.nodes.keys()) if (isWithin(key, rel)) this.nodes.delete(key);
    for (const key of this.finalDirs.keys()) if (isWithin(key, rel)) this.finalDirs.delete(key);
    for (const key of this.hasChildNodes) if (isWithin(key, rel)) this.hasChildNodes.delete(key);
  }

  /**
   * The lower layers (indexes) that contribute children to the merged dir
   * `dirRel`, whose components are known upper dirs: overlayfs' lookup, one
   * component at a time, stopping at whiteouts, non-dirs and opaque dirs.
   */
  private lowerStack(dirRel: string): number[] {
    if (!this.overlay) return [];
    let stack = this.lowers.map((_, i) => i);
    if (this.nodes.get('')?.opaque) return [];
    if (dirRel === '') return stack;
    let prefix = '';
    for (const part of dirRel.split('/')) {
      prefix = joinRel(prefix, part);
      if (this.nodes.get(prefix)?.opaque) return [];
      const next: number[] = [];
      for (const i of stack) {
        const path = abs(this.lowers[i]!, prefix);
        const st = lstatOrNull(path);
        if (!st) continue;
        if (!st.isDirectory()) break; // a whiteout or non-dir ends the merge here
        next.push(i);
        if (this.isOpaqueOnDisk(path)) break;
      }
      stack = next;
      if (stack.length === 0) break;
    }
    return stack;
  }

  /** What the lowers show at `rel` (whose parent is a known upper dir), or nothing. */
  private lookupLower(rel: string): { path: string; st: Stats } | undefined {
    for (const i of this.lowerStack(dirname(rel))) {
      const path = abs(this.lowers[i]!, rel);
      const st = lstatOrNull(path);
      if (!st) continue;
      if (isWhiteoutStat(st)) return undefined;
      return { path, st };
    }
    return undefined;
  }

  /**
   * Makes sure `rel` is a real directory of the upper, visible in the merged
   * view, creating or copying it up if needed. Refuses a path through a
   * symlink or a non-directory, wherever that lives. With `create` false,
   * a dir missing from the merged view is not made and `false` comes back.
   * Hot: the first check answers for nearly every entry of a well-formed layer.
   */
  private ensureDir(rel: string, entry: string, create = true): boolean {
    const known = this.nodes.get(rel);
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
    const parentNode = this.nodes.get(parent)!;
    const st = parentNode.created ? undefined : lstatOrNull(path);
    if (st) {
      if (st.isDirectory()) {
        this.remember(rel, { created: false, dir: true, opaque: this.overlay && this.isOpaqueOnDisk(path) });
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
    const low = this.overlay ? this.lookupLower(rel) : undefined;
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
    this.finalDirs.set(rel, { mode: 0o755 });
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
    this.finalDirs.set(rel, { mode: 0o755 });
    debug('implicit dir %s replaces a whiteout (for %s)', rel, entry);
  }

  private setOpaqueIfLowerDir(rel: string, path: string): boolean {
    if (!this.overlay) return false;
    const low = this.lookupLower(rel);
    if (!low?.st.isDirectory()) return false;
    lsetxattr(path, this.opaqueXattr, Buffer.from('y'));
    return true;
  }

  // ---- journal -----------------------------------------------------------

  /** Waits until every file handed to the writer threads exists (before anything that could see or touch one). */
  private barrier(): void {
    this.writers?.barrier();
  }

  private created(rel: string, node: Node): void {
    this.remember(rel, node);
    this.createdOrder.push(rel);
  }

  /** Before changing the entries of a pre-existing dir, keep its times so undo can restore them. */
  private touchParent(dirRel: string): void {
    if (this.nodes.get(dirRel)?.created || this.savedTimes.has(dirRel)) return;
    const st = lstatSync(abs(this.upper, dirRel), { bigint: true });
    this.savedTimes.set(dirRel, { atime: st.atimeNs, mtime: st.mtimeNs });
  }

  /** Before changing a pre-existing dir's own metadata, keep it. */
  private saveDir(rel: string, path: string): void {
    if (this.nodes.get(rel)?.created || this.savedDirs.has(rel)) return;
    const st = lstatSync(path, { bigint: true });
    this.savedDirs.set(rel, { mode: Number(st.mode) & 0o7777, uid: Number(st.uid), gid: Number(st.gid), xattrs: lxattrs(path) });
    if (!this.savedTimes.has(rel)) this.savedTimes.set(rel, { atime: st.atimeNs, mtime: st.mtimeNs });
  }

  private ensureUndoDir(): string {
    if (this.undoDir) return this.undoDir;
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
    this.undoDir = dir;
    return dir;
  }

  /** Moves a pre-existing upper entry aside (never deletes it before the apply succeeds). */
  private moveAside(rel: string, wasDir: boolean): void {
    this.barrier();
    const stash = `${this.ensureUndoDir()}/${this.backupSeq++}`;
    this.touchParent(dirname(rel));
    renameSync(abs(this.upper, rel), stash);
    this.backups.push({ rel, stash });
    this.forget(rel, wasDir);
  }

  /** Deletes something this apply made (a later entry replaces it). */
  private removeOurs(rel: string, wasDir: boolean): void {
    this.barrier();
    rmSync(abs(this.upper, rel), { recursive: wasDir, force: true });
    this.forget(rel, wasDir);
  }

  /**
   * Clears the way for a new entry at `rel`. Returns `'merge'` when a dir
   * entry lands on an existing dir (kept, metadata updated), `'replaced'`
   * when something was there and is gone now, `'free'` when nothing was.
   */
  private clear(rel: string, wantDir: boolean, entry: string): 'merge' | 'replaced' | 'free' {
    const known = this.nodes.get(rel);
    if (known) {
      if (known.dir && wantDir) return 'merge';
      if (known.created) this.removeOurs(rel, known.dir);
      else this.moveAside(rel, known.dir);
      return 'replaced';
    }
    const parentNode = this.nodes.get(dirname(rel))!;
    // A dir this apply made holds only what `nodes` records: no syscall needed.
    if (parentNode.created) return 'free';
    const path = abs(this.upper, rel);
    const st = lstatOrNull(path);
    if (!st) return 'free';
    if (st.isDirectory()) {
      if (wantDir) {
        this.remember(rel, { created: false, dir: true, opaque: this.overlay && this.isOpaqueOnDisk(path) });
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
    this.finalDirs.set(rel, { mode: (header.mode ?? 0o755) & 0o7777, times: entryTimes(header) });
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
      const chown = this.sameOwner && (uid !== this.euid || gid !== this.egid || !this.nodes.get(parent)?.created);
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
      this.created(rel, { created: true, dir: false });
      this.deferred.add(rel);
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
        if (uid !== this.euid || gid !== this.egid || !this.nodes.get(dirname(file.rel))?.created) fchownSync(fd, uid, gid);
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
    const known = this.nodes.get(target);
    if (known?.whiteout) throw refuse(entry, `hard link target ${q(target)} was deleted by this layer`);
    // In a dir this apply made, only `nodes` can know of the target.
    const st = known || !this.nodes.get(dirname(target))!.created ? lstatOrNull(targetPath) : undefined;
    if (st) {
      if (st.isDirectory()) throw refuse(entry, `hard link target ${q(target)} is a directory`);
      if (isWhiteoutStat(st)) throw refuse(entry, `hard link target ${q(target)} does not exist`);
    } else {
      const low = this.overlay ? this.lookupLower(target) : undefined;
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
    const known = this.nodes.get(rel);
    // OCI: a whiteout hides only lower layers; what this layer wrote stays.
    if (known?.created) return;
    if (known) {
      this.moveAside(rel, known.dir);
    } else if (!this.nodes.get(parent)!.created) {
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
    const node = this.nodes.get(dirRel)!;
    const path = abs(this.upper, dirRel);
    if (!node.created) {
      // What a previous apply put in this dir is "below" this layer: hide it (keep what this layer made).
      for (const child of readdirSync(path)) {
        const rel = joinRel(dirRel, child);
        const known = this.nodes.get(rel);
        if (known?.created) continue;
        if (this.undoDir && abs(this.upper, rel) === this.undoDir) continue;
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
    this.finalDirs.set(rel, { mode: st.mode & 0o7777 });
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
    this.barrier();
    const rels = [...this.finalDirs.keys()].sort((a, b) => (a < b ? 1 : a > b ? -1 : 0));
    for (const rel of rels) {
      const fin = this.finalDirs.get(rel)!;
      const path = abs(this.upper, rel);
      chmodSync(path, fin.mode);
      if (fin.times) lutimesSync(path, fin.times.atime, fin.times.mtime);
    }
    if (this.undoDir) rmSync(this.undoDir, { recursive: true, force: true });
  }

  /** Plays the journal backwards: the upper is as it was before the apply. */
  rollback(): void {
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
    if (this.undoDir) rmSync(this.undoDir, { recursive: true, force: true });
    // Last: every rename and removal above moved the parents' mtimes.
    for (const [rel, t] of this.savedTimes) lutimesNs(abs(this.upper, rel), t.atime, t.mtime);
  }
}

/**
 * Applies a layer tarball (plain, gzip or zstd, detected from its first
 * bytes) to `target`, and returns the sha256 digest and size of the
 * uncompressed tar (the layer's OCI diffID). Entries that would write
 * outside the target are refused with an `InvalidArgumentError` naming the
 * entry; on any failure the target is restored to its state before the call.
 *
 * The target must not be mounted or otherwise changed while this runs.
 */
export async function applyLayer(stream: Readable | AsyncIterable<Uint8Array>, target: LayerTarget, opts: ApplyOptions = {}): Promise<ApplyResult> {
  const applier = new Applier(target, opts);
  const hash = new StreamHash();
  let compression: Compression = 'none';
  try {
    const input = await decompress(stream);
    compression = input.compression;
    const extract = tar.extract();
    captureRawXattrs(extract);
    extract.on('entry', (h, body, next) => {
      const header = h as unknown as EntryHeader;
      // A failure destroys the extractor, which destroys the entry stream with the same error: it is reported once, below.
      body.on('error', () => {});
      let file: PendingFile | undefined;
      try {
        file = applier.begin(header);
      } catch (err) {
        body.resume();
        next(err as Error);
        return;
      }
      if (!file) {
        body.on('end', () => next());
        body.resume();
        return;
      }
      const pending = file;
      let failed = false;
      body.on('data', (chunk) => {
        if (failed) return;
        try {
          applier.write(pending, chunk as Buffer);
        } catch (err) {
          failed = true;
          next(err as Error);
        }
      });
      body.on('end', () => {
        if (failed) return;
        try {
          applier.finishFile(pending);
        } catch (err) {
          next(err as Error);
          return;
        }
        next();
      });
    });
    await new Promise<void>((resolve, reject) => {
      const src = input.stream;
      let settled = false;
      const fail = (err: unknown): void => {
        if (settled) return;
        settled = true;
        src.destroy();
        extract.destroy();
        reject(err);
      };
      extract.on('error', fail);
      extract.on('finish', () => {
        if (settled) return;
        settled = true;
        resolve();
      });
      extract.on('drain', () => {
        src.resume();
      });
      src.on('error', fail);
      src.on('data', (chunk: Buffer) => {
        hash.update(chunk);
        if (!extract.write(chunk)) src.pause();
      });
      src.on('end', () => {
        (extract as unknown as { end(): void }).end();
      });
    });
    applier.commit();
  } catch (err) {
    hash.abort();
    try {
      applier.rollback();
    } catch (undoErr) {
      throw new AggregateError([err, undoErr], `applying the layer failed and so did restoring ${q(target.upper)}: ${(undoErr as Error).message}`);
    }
    throw asLayerError(err);
  }
  return { digest: await hash.digest(), size: hash.size, compression };
}

/** tar-stream's format errors are the caller's bad input: make them InvalidArgument. */
function asLayerError(err: unknown): unknown {
  if (err instanceof InvalidArgumentError) return err;
  const msg = (err as Error)?.message ?? '';
  if (/Invalid tar header|Unexpected end of data|unknown format|Header exceeds max size|incorrect header check|unexpected end of file|invalid/i.test(msg) && !(err as NodeJS.ErrnoException).syscall) {
    return new InvalidArgumentError(`layer is not a valid tar stream: ${msg}`, { cause: err });
  }
  return err;
}
