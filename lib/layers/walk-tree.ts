/**
 * The walk of a diff's source tree, chunk by chunk (see walk.ts for why it
 * is shaped so), as one piece of code that runs on whichever thread walks:
 * the walk thread (walk-worker.ts), or the calling thread without a second
 * CPU. The same calls in the same order either way, so the same entries,
 * the same xattrs, and a failure at the same place.
 *
 * Per entry, the kernel resolves one name relative to its directory's
 * descriptor (kernel/dirfd.ts): a regular file is opened
 * (O_NOFOLLOW|O_NONBLOCK), and its stat, xattrs and (up to INLINE_MAX
 * bytes) its body are read through that descriptor; a directory likewise,
 * and kept open while its children are walked; other entries are stat'ed
 * by name. Reads the tree only; owns the descriptors of the directories it
 * walks, closed by the walk's end or {@link TreeWalk.close}.
 */
import { type EntryStat, AT_FDCWD, OPEN_DIR, OPEN_FILE, closeFd, openAt, readAt, readdirAt, readlinkAt, statAt } from '../kernel/dirfd.js';
import { fgetxattr, flistxattr, lgetxattr, llistxattr } from '../kernel/xattr.js';
import { WHITEOUT_PREFIX } from './paths.js';

/** What one walk entry is; the tar entry diff.ts writes for it. */
export const KIND = {
  /** An overlay whiteout (char 0/0): `rel` is already the `.wh.` marker's name. */
  whiteout: 1,
  directory: 2,
  /** A directory carrying overlay's opaque xattr: its header is followed by the opaque marker. */
  opaqueDirectory: 3,
  file: 4,
  /** A further name of a hard-linked inode: `link` is the first name seen. */
  hardlink: 5,
  /** `link` is the target. */
  symlink: 6,
  characterDevice: 7,
  blockDevice: 8,
  fifo: 9,
} as const;

/**
 * Numbers per entry in {@link WalkChunk.nums}: mode, uid, gid, mtimeMs,
 * size, device major, device minor, and the offset of the file's body in
 * {@link WalkChunk.data} (-1 when the reader is to read it).
 */
export const NUMS = 8;

/** Regular files up to this size are read by the walk itself, into the chunk. */
export const INLINE_MAX = 64 * 1024;
/** Bytes of inline bodies per chunk: a chunk ends early rather than leave a small file out. */
export const DATA = 1024 * 1024 + INLINE_MAX;

/** Entries per chunk: one message each way, a few chunks ahead of the main thread. */
export const CHUNK = 256;
/** Chunks asked for ahead of the one being laid out. */
export const AHEAD = 4;
/** Data buffers kept for reuse per thread (fresh memory costs a page fault per 4 KiB). */
export const POOL = AHEAD + 4;

/** Why a walk stopped early: a system call's error fields, or an entry diff refuses or saw change. */
export interface WalkFailure {
  /** `redirect` or `metacopy`, found on `rel`. */
  overlayMetadata?: string;
  /** How `rel` changed while being walked (`shrank while being diffed`, ...). */
  changed?: string;
  rel?: string;
  message?: string;
  code?: string;
  errno?: number;
  syscall?: string;
  path?: string;
}

/** A run of entries in output order (depth first, children sorted: whiteouts, then the rest). */
export interface WalkChunk {
  /** Number of entries. */
  n: number;
  kinds: Uint8Array;
  /** Names relative to the root, without a trailing slash. */
  rels: string[];
  /** {@link NUMS} numbers per entry. */
  nums: Float64Array;
  /** The bodies of the small regular files, at the offsets `nums` gives (absent when there are none). */
  data?: ArrayBuffer | undefined;
  /** Symlink targets and hard-link first names, by entry index. */
  links: Array<[number, string]>;
  /** xattrs other than overlay's own, sorted by name, by entry index (only entries that have some). */
  xattrs: Array<[number, Array<[string, Uint8Array]>]>;
  /** Set when the walk failed after these entries (it ends there). */
  failure?: WalkFailure | undefined;
  /** No entries follow. */
  done: boolean;
}

/** Where a walk gets the data buffers of its chunks ({@link DATA} bytes each), and gives back unused ones. */
export interface DataPool {
  take(): ArrayBuffer;
  give(ab: ArrayBuffer): void;
}

/** One walk: chunks on demand. */
export interface TreeWalk {
  /** The next chunk of at most `max` entries. */
  next(max: number): WalkChunk;
  /** Closes the directories still open (a walk given up). */
  close(): void;
}

const OVERLAY_XATTR = /^(trusted|user)\.overlay\./;
const DT_UNKNOWN = 0;
const DT_CHR = 2;
const DT_DIR = 4;
const DT_REG = 8;
/** An item's type once known to be a whiteout (listed first, as a marker), or neither a file nor a dir. */
const WHITEOUT = -2;
const OTHER = -1;
const S_IFMT = 0o170000;
const S_IFREG = 0o100000;
const S_IFDIR = 0o040000;
const S_IFLNK = 0o120000;
const S_IFCHR = 0o020000;
const S_IFBLK = 0o060000;
const S_IFIFO = 0o010000;

/** A directory entry: its name, its d_type (or one of the codes above), and its stat when already taken. */
type Item = [name: string, type: number, st?: EntryStat];

/** A directory being walked. */
interface Frame {
  fd: number;
  dirRel: string;
  dirPath: string;
  items: Item[];
  i: number;
}

/** Thrown inside the walk to stop it at an entry that diff refuses or that changed. */
type Stop = { overlayMetadata: string; rel: string } | { changed: string; rel: string };

/** Starts a walk of `root`; `opaqueXattr` is the attribute that marks an opaque dir. */
export function createWalk(root: string, opaqueXattr: string, pool: DataPool): TreeWalk {
  const stack: Frame[] = [];
  const links = new Map<string, string>();
  let started = false;
  let done = false;

  function closeAll(): void {
    while (stack.length > 0) closeFd(stack.pop()!.fd);
  }

  // Opens a directory's walk: its children sorted, whiteouts first (as markers), then the rest.
  function pushDir(fd: number, dirRel: string, dirPath: string): void {
    let entries: Item[];
    try {
      entries = readdirAt(fd, dirPath);
    } catch (e) {
      closeFd(fd);
      throw e;
    }
    stack.push({ fd, dirRel, dirPath, items: [], i: 0 });
    entries.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
    const whiteouts: Item[] = [];
    const others: Item[] = [];
    for (const item of entries) {
      const type = item[1];
      // Only a character device can be a whiteout; d_type says which entries to stat to know.
      if (type === DT_CHR || type === DT_UNKNOWN) {
        const st = statAt(fd, item[0], `${dirPath}/${item[0]}`);
        if ((st.mode & S_IFMT) === S_IFCHR && st.rdevMajor === 0 && st.rdevMinor === 0) {
          whiteouts.push(item);
          continue;
        }
        if (type === DT_UNKNOWN) item[1] = (st.mode & S_IFMT) === S_IFDIR ? DT_DIR : (st.mode & S_IFMT) === S_IFREG ? DT_REG : OTHER;
        // Kept for an entry that is neither a file nor a dir: it is not stat'ed again.
        item[2] = st;
      }
      others.push(item);
    }
    stack[stack.length - 1]!.items = whiteouts.length > 0 ? whiteouts.map((w): Item => [w[0], WHITEOUT]).concat(others) : others;
  }

  // xattrs of an entry, sorted, without overlayfs' own; refuses upper dirs overlay can't diff.
  function xattrs(fd: number, path: string, rel: string): { list: Array<[string, Uint8Array]>; opaque: boolean } {
    const list: Array<[string, Uint8Array]> = [];
    let opaque = false;
    const names = fd >= 0 ? flistxattr(fd, path) : llistxattr(path);
    if (names.length === 0) return { list, opaque };
    for (const name of names.sort()) {
      if (OVERLAY_XATTR.test(name)) {
        const kind = name.slice(name.indexOf('.overlay.') + 9);
        if (kind === 'redirect' || kind === 'metacopy') {
          throw { overlayMetadata: kind, rel } satisfies Stop;
        }
        if (name === opaqueXattr) {
          const v = fd >= 0 ? fgetxattr(fd, name, path) : lgetxattr(path, name);
          opaque = v !== undefined && v.length === 1 && v[0] === 0x79;
        }
        continue;
      }
      const value = fd >= 0 ? fgetxattr(fd, name, path) : lgetxattr(path, name);
      if (value !== undefined) list.push([name, value]);
    }
    return { list, opaque };
  }

  function next(max: number): WalkChunk {
    const kinds = new Uint8Array(max);
    const rels: string[] = [];
    const nums = new Float64Array(max * NUMS);
    const linkOut: Array<[number, string]> = [];
    const xattrOut: Array<[number, Array<[string, Uint8Array]>]> = [];
    let data: ArrayBuffer | undefined;
    let dataBuf: Buffer | undefined;
    let used = 0;
    let n = 0;
    let failure: WalkFailure | undefined;
    const emit = (kind: number, rel: string, st: EntryStat | undefined, dataOff: number): void => {
      kinds[n] = kind;
      rels.push(rel);
      const k = n * NUMS;
      if (st) {
        nums[k] = st.mode;
        nums[k + 1] = st.uid;
        nums[k + 2] = st.gid;
        nums[k + 3] = st.mtimeMs;
        nums[k + 4] = st.size;
        nums[k + 5] = st.rdevMajor;
        nums[k + 6] = st.rdevMinor;
      }
      nums[k + 7] = dataOff;
      n++;
    };
    // A further name of an inode already walked: emitted as a hard link to the first name.
    const linked = (st: EntryStat, rel: string): boolean => {
      if (st.nlink <= 1) return false;
      const first = links.get(st.id);
      if (first === undefined) {
        links.set(st.id, rel);
        return false;
      }
      linkOut.push([n, first]);
      emit(KIND.hardlink, rel, st, -1);
      return true;
    };
    // A regular file: stat, xattrs and a small body through one descriptor. False if it is not one any more.
    const file = (top: Frame, name: string, rel: string, path: string): boolean => {
      const fd = openAt(top.fd, name, OPEN_FILE, path);
      try {
        const st = statAt(fd, '', path);
        if ((st.mode & S_IFMT) !== S_IFREG) return false;
        const x = xattrs(fd, path, rel);
        if (linked(st, rel)) return true;
        let off = -1;
        if (st.size <= INLINE_MAX) {
          if (!data) {
            data = pool.take();
            dataBuf = Buffer.from(data);
          }
          let got = 0;
          while (got < st.size) {
            const r = readAt(fd, dataBuf!, used + got, st.size - got, got);
            if (r === 0) throw { changed: 'shrank while being diffed', rel } satisfies Stop;
            got += r;
          }
          off = used;
          used += st.size;
        }
        if (x.list.length > 0) xattrOut.push([n, x.list]);
        emit(KIND.file, rel, st, off);
        return true;
      } finally {
        closeFd(fd);
      }
    };
    try {
      if (!started) {
        started = true;
        pushDir(openAt(AT_FDCWD, root, OPEN_DIR, root), '', root);
      }
      while (n < max && used <= DATA - INLINE_MAX) {
        const top = stack[stack.length - 1];
        if (!top) {
          done = true;
          break;
        }
        const item = top.items[top.i++];
        if (!item) {
          closeFd(stack.pop()!.fd);
          continue;
        }
        const name = item[0];
        const type = item[1];
        if (type === WHITEOUT) {
          emit(KIND.whiteout, top.dirRel === '' ? WHITEOUT_PREFIX + name : `${top.dirRel}/${WHITEOUT_PREFIX}${name}`, undefined, -1);
          continue;
        }
        const rel = top.dirRel === '' ? name : `${top.dirRel}/${name}`;
        const path = `${top.dirPath}/${name}`;
        if (type === DT_REG && file(top, name, rel, path)) continue;
        if (type === DT_DIR) {
          const fd = openAt(top.fd, name, OPEN_DIR, path);
          let st: EntryStat;
          let x: ReturnType<typeof xattrs>;
          try {
            st = statAt(fd, '', path);
            x = xattrs(fd, path, rel);
          } catch (e) {
            closeFd(fd);
            throw e;
          }
          if (x.list.length > 0) xattrOut.push([n, x.list]);
          emit(x.opaque ? KIND.opaqueDirectory : KIND.directory, rel, st, -1);
          pushDir(fd, rel, path);
          continue;
        }
        const st = item[2] ?? statAt(top.fd, name, path);
        const fmt = st.mode & S_IFMT;
        // Neither a file nor a dir by d_type, or not any more by what an open of it found.
        if (fmt === S_IFREG) {
          if (type !== DT_REG && file(top, name, rel, path)) continue;
          throw { changed: 'changed type while being diffed', rel } satisfies Stop;
        }
        if (fmt === S_IFDIR) throw { changed: 'changed type while being diffed', rel } satisfies Stop;
        const x = xattrs(-1, path, rel);
        if (linked(st, rel)) continue;
        let kind: number;
        if (fmt === S_IFLNK) {
          kind = KIND.symlink;
          linkOut.push([n, readlinkAt(top.fd, name, path)]);
        } else if (fmt === S_IFCHR) kind = KIND.characterDevice;
        else if (fmt === S_IFBLK) kind = KIND.blockDevice;
        else if (fmt === S_IFIFO) kind = KIND.fifo;
        // Sockets are not part of a filesystem image (tar skips them too).
        else continue;
        if (x.list.length > 0) xattrOut.push([n, x.list]);
        emit(kind, rel, st, -1);
      }
    } catch (err) {
      const e = err as ({ overlayMetadata?: string; changed?: string; rel?: string } & Partial<NodeJS.ErrnoException>) | null | undefined;
      failure =
        e && e.overlayMetadata !== undefined
          ? { overlayMetadata: e.overlayMetadata, rel: e.rel }
          : e && e.changed !== undefined
            ? { changed: e.changed, rel: e.rel }
            : { message: String(e && e.message), code: e?.code, errno: e?.errno, syscall: e?.syscall, path: e?.path };
      done = true;
      closeAll();
    }
    if (data && used === 0) {
      pool.give(data);
      data = undefined;
    }
    return { n, kinds, rels, nums: n === max ? nums : nums.slice(0, n * NUMS), data, links: linkOut, xattrs: xattrOut, failure, done };
  }
  return { next, close: closeAll };
}
