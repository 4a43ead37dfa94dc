/**
 * The walk of a diff's source tree on a helper thread: readdir, stat,
 * xattrs, readlink, and the bodies of small files. For a tree of small
 * files these calls are most of a diff's time, and most of theirs is the
 * kernel resolving paths. So the walk keeps each directory open while it
 * walks it and names entries relative to it (`openat`, `statx`,
 * `getdents64`, `readlinkat`, through koffi): the kernel resolves one name,
 * not the whole path. A regular file is opened once, and its stat, its
 * xattrs and, up to {@link INLINE_MAX} bytes, its body are read through
 * that descriptor: for 50,000 files of 0–4 KiB this takes about 300 ms of
 * CPU on tmpfs, where `lstat` + `llistxattr` by path and a separate
 * open/read/close by path took about 460 ms. Larger files are read by the
 * reader thread (reader.ts). With a second CPU the walk runs in a worker,
 * a few chunks of entries ahead of the main thread, which only lays the
 * tar out (see diff.ts).
 *
 * The walk is one piece of plain CommonJS ({@link WALK_SOURCE}), evaluated
 * in the worker, or on the calling thread without a second CPU (or with
 * `OVERLAY_SNAPSHOTTER_HASH_WORKER=0`): the same calls in the same order,
 * so the same entries, the same xattrs, and a failure at the same place.
 */
import { createRequire } from 'node:module';
import { sharedWorker } from './shared-worker.js';
import { FailedPreconditionError, q } from '../model/errors.js';
import { useWorker } from './hash.js';
import { WHITEOUT_PREFIX } from './paths.js';
import { SYS_SOURCE } from './sys-source.js';

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
const DATA = 1024 * 1024 + INLINE_MAX;

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
  data?: ArrayBuffer;
  /** Symlink targets and hard-link first names, by entry index. */
  links: Array<[number, string]>;
  /** xattrs other than overlay's own, sorted by name, by entry index (only entries that have some). */
  xattrs: Array<[number, Array<[string, Uint8Array]>]>;
  /** Set when the walk failed after these entries (it ends there). */
  failure?: WalkFailure;
  /** No entries follow. */
  done: boolean;
}

/** One diff's walk: chunks in order. */
export interface Walk {
  /** The next chunk if it has arrived. */
  take(): WalkChunk | undefined;
  /** Gives a chunk back once laid out, so that its data buffer is reused. */
  recycle(chunk: WalkChunk): void;
  /** Resolves when {@link take} has a chunk (or rejects when the worker died). */
  wait(): Promise<void>;
  /** Ends the walk early (after a failure elsewhere). */
  close(): void;
}

/** Entries per chunk: one message each way, a few chunks ahead of the main thread. */
const CHUNK = 256;
/** Chunks asked for ahead of the one being laid out. */
const AHEAD = 4;

/**
 * `createWalk(root, opaqueXattr, sys, pool)` returns `{ next(max), close() }`:
 * `next` gives the next chunk of at most `max` entries, `close` closes the
 * directories still open. `sys` is `makeSys(koffi)`; `pool.take()` gives a
 * data buffer of DATA bytes and `pool.give(ab)` takes one back. Plain
 * CommonJS: it runs in the worker as it is.
 *
 * Per entry, the kernel resolves one name relative to its directory's
 * descriptor: a regular file is opened (O_NOFOLLOW|O_NONBLOCK), and its
 * stat, xattrs and (up to INLINE_MAX bytes) its body are read through that
 * descriptor; a directory likewise, and kept open while its children are
 * walked; other entries are stat'ed by name.
 */
const WALK_SOURCE = `
const OVERLAY_XATTR = /^(trusted|user)\\.overlay\\./;
const WHITEOUT_PREFIX = ${JSON.stringify(WHITEOUT_PREFIX)};
const K = ${JSON.stringify(KIND)};
const NUMS = ${NUMS};
const INLINE_MAX = ${INLINE_MAX};
const DATA = ${DATA};
const DT_UNKNOWN = 0, DT_CHR = 2, DT_DIR = 4, DT_REG = 8;
const S_IFMT = 0o170000, S_IFREG = 0o100000, S_IFDIR = 0o040000, S_IFLNK = 0o120000, S_IFCHR = 0o020000, S_IFBLK = 0o060000, S_IFIFO = 0o010000;
function createWalk(root, opaqueXattr, sys, pool) {
  const stack = [];
  const links = new Map();
  let started = false;
  let done = false;

  function closeAll() {
    while (stack.length > 0) sys.close(stack.pop().fd);
  }

  // Opens a directory's walk: its children sorted, whiteouts first (as markers), then the rest.
  function pushDir(fd, dirRel, dirPath) {
    let entries;
    try {
      entries = sys.readdir(fd, dirPath);
    } catch (e) {
      sys.close(fd);
      throw e;
    }
    stack.push({ fd, dirRel, dirPath, items: [], i: 0 });
    entries.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
    const whiteouts = [];
    const others = [];
    for (const item of entries) {
      const type = item[1];
      // Only a character device can be a whiteout; d_type says which entries to stat to know.
      if (type === DT_CHR || type === DT_UNKNOWN) {
        const st = sys.stat(fd, item[0], dirPath + '/' + item[0]);
        if ((st.mode & S_IFMT) === S_IFCHR && st.rdevMajor === 0 && st.rdevMinor === 0) {
          whiteouts.push(item);
          continue;
        }
        if (type === DT_UNKNOWN) item[1] = (st.mode & S_IFMT) === S_IFDIR ? DT_DIR : (st.mode & S_IFMT) === S_IFREG ? DT_REG : -1;
        // Kept for an entry that is neither a file nor a dir: it is not stat'ed again.
        item[2] = st;
      }
      others.push(item);
    }
    stack[stack.length - 1].items = whiteouts.length > 0 ? whiteouts.map((w) => [w[0], -2]).concat(others) : others;
  }

  // xattrs of an entry, sorted, without overlayfs' own; refuses upper dirs overlay can't diff.
  function xattrs(fd, path, rel) {
    const list = [];
    let opaque = false;
    const names = fd >= 0 ? sys.flist(fd, path) : sys.llist(path);
    if (names.length === 0) return { list, opaque };
    for (const name of names.sort()) {
      if (OVERLAY_XATTR.test(name)) {
        const kind = name.slice(name.indexOf('.overlay.') + 9);
        if (kind === 'redirect' || kind === 'metacopy') {
          throw { overlayMetadata: kind, rel };
        }
        if (name === opaqueXattr) {
          const v = fd >= 0 ? sys.fget(fd, name, path) : sys.lget(path, name);
          opaque = v !== undefined && v.length === 1 && v[0] === 0x79;
        }
        continue;
      }
      const value = fd >= 0 ? sys.fget(fd, name, path) : sys.lget(path, name);
      if (value !== undefined) list.push([name, value]);
    }
    return { list, opaque };
  }

  function next(max) {
    const kinds = new Uint8Array(max);
    const rels = [];
    const nums = new Float64Array(max * NUMS);
    const linkOut = [];
    const xattrOut = [];
    let data;
    let dataBuf;
    let used = 0;
    let n = 0;
    let failure;
    const emit = (kind, rel, st, dataOff) => {
      kinds[n] = kind;
      rels.push(rel);
      const k = n * NUMS;
      if (st) {
        nums[k] = st.mode; nums[k + 1] = st.uid; nums[k + 2] = st.gid;
        nums[k + 3] = st.mtimeMs; nums[k + 4] = st.size; nums[k + 5] = st.rdevMajor; nums[k + 6] = st.rdevMinor;
      }
      nums[k + 7] = dataOff;
      n++;
    };
    // A further name of an inode already walked: emitted as a hard link to the first name.
    const linked = (st, rel) => {
      if (st.nlink <= 1) return false;
      const first = links.get(st.id);
      if (first === undefined) {
        links.set(st.id, rel);
        return false;
      }
      linkOut.push([n, first]);
      emit(K.hardlink, rel, st, -1);
      return true;
    };
    // A regular file: stat, xattrs and a small body through one descriptor. False if it is not one any more.
    const file = (top, name, rel, path) => {
      const fd = sys.openat(top.fd, name, OPEN_FILE, path);
      try {
        const st = sys.stat(fd, '', path);
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
            const r = sys.read(fd, dataBuf, used + got, st.size - got, got);
            if (r === 0) throw { changed: 'shrank while being diffed', rel };
            got += r;
          }
          off = used;
          used += st.size;
        }
        if (x.list.length > 0) xattrOut.push([n, x.list]);
        emit(K.file, rel, st, off);
        return true;
      } finally {
        sys.close(fd);
      }
    };
    try {
      if (!started) {
        started = true;
        pushDir(sys.openat(-100, root, OPEN_DIR, root), '', root);
      }
      while (n < max && used <= DATA - INLINE_MAX) {
        const top = stack[stack.length - 1];
        if (!top) {
          done = true;
          break;
        }
        const item = top.items[top.i++];
        if (!item) {
          sys.close(stack.pop().fd);
          continue;
        }
        const name = item[0];
        const type = item[1];
        if (type === -2) {
          emit(K.whiteout, top.dirRel === '' ? WHITEOUT_PREFIX + name : top.dirRel + '/' + WHITEOUT_PREFIX + name, undefined, -1);
          continue;
        }
        const rel = top.dirRel === '' ? name : top.dirRel + '/' + name;
        const path = top.dirPath + '/' + name;
        if (type === DT_REG && file(top, name, rel, path)) continue;
        if (type === DT_DIR) {
          const fd = sys.openat(top.fd, name, OPEN_DIR, path);
          let st, x;
          try {
            st = sys.stat(fd, '', path);
            x = xattrs(fd, path, rel);
          } catch (e) {
            sys.close(fd);
            throw e;
          }
          if (x.list.length > 0) xattrOut.push([n, x.list]);
          emit(x.opaque ? K.opaqueDirectory : K.directory, rel, st, -1);
          pushDir(fd, rel, path);
          continue;
        }
        const st = item[2] || sys.stat(top.fd, name, path);
        const fmt = st.mode & S_IFMT;
        // Neither a file nor a dir by d_type, or not any more by what an open of it found.
        if (fmt === S_IFREG) {
          if (type !== DT_REG && file(top, name, rel, path)) continue;
          throw { changed: 'changed type while being diffed', rel };
        }
        if (fmt === S_IFDIR) throw { changed: 'changed type while being diffed', rel };
        const x = xattrs(-1, path, rel);
        if (linked(st, rel)) continue;
        let kind;
        if (fmt === S_IFLNK) {
          kind = K.symlink;
          linkOut.push([n, sys.readlink(top.fd, name, path)]);
        } else if (fmt === S_IFCHR) kind = K.characterDevice;
        else if (fmt === S_IFBLK) kind = K.blockDevice;
        else if (fmt === S_IFIFO) kind = K.fifo;
        // Sockets are not part of a filesystem image (tar skips them too).
        else continue;
        if (x.list.length > 0) xattrOut.push([n, x.list]);
        emit(kind, rel, st, -1);
      }
    } catch (e) {
      failure = e && e.overlayMetadata !== undefined
        ? { overlayMetadata: e.overlayMetadata, rel: e.rel }
        : e && e.changed !== undefined
          ? { changed: e.changed, rel: e.rel }
          : { message: String(e && e.message), code: e.code, errno: e.errno, syscall: e.syscall, path: e.path };
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
`;

interface Sys {
  close(fd: number): void;
}
interface WalkState {
  next(max: number): WalkChunk;
  close(): void;
}
interface DataPool {
  take(): ArrayBuffer;
  give(ab: ArrayBuffer): void;
}
type CreateWalk = (root: string, opaqueXattr: string, sys: Sys, pool: DataPool) => WalkState;

const requireCjs = createRequire(import.meta.url);

/** Data buffers kept for reuse (fresh memory costs a page fault per 4 KiB). */
const POOL = AHEAD + 4;

/** The walk on the calling thread: each chunk made when asked for. */
class InlineWalk implements Walk {
  private static create: CreateWalk | undefined;
  private static sys: Sys | undefined;
  private static readonly buffers: ArrayBuffer[] = [];
  private static readonly pool: DataPool = {
    take: () => InlineWalk.buffers.pop() ?? new ArrayBuffer(DATA),
    give: (ab) => {
      if (InlineWalk.buffers.length < POOL) InlineWalk.buffers.push(ab);
    },
  };
  private readonly state: WalkState;
  private ended = false;

  constructor(root: string, opaqueXattr: string) {
    // The same source the worker runs, so both walks make the same calls in the same order.
    if (!InlineWalk.create) {
      const made = new Function('require', `${SYS_SOURCE}${WALK_SOURCE}\nreturn { makeSys, createWalk };`)(requireCjs) as {
        makeSys: (k: unknown) => Sys;
        createWalk: CreateWalk;
      };
      InlineWalk.sys = made.makeSys(requireCjs('koffi'));
      InlineWalk.create = made.createWalk;
    }
    this.state = InlineWalk.create(root, opaqueXattr, InlineWalk.sys!, InlineWalk.pool);
  }

  take(): WalkChunk | undefined {
    if (this.ended) return undefined;
    const chunk = this.state.next(CHUNK);
    if (chunk.done) this.ended = true;
    return chunk;
  }

  recycle(chunk: WalkChunk): void {
    if (chunk.data) InlineWalk.pool.give(chunk.data);
    chunk.data = undefined;
  }

  wait(): Promise<void> {
    return Promise.resolve();
  }

  close(): void {
    this.ended = true;
    this.state.close();
  }
}

// Plain CommonJS, evaluated in the worker: no loader, no TypeScript.
const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
${SYS_SOURCE}
${WALK_SOURCE}
const sys = makeSys(require(workerData.koffi));
const buffers = [];
const pool = {
  take: () => buffers.pop() || new ArrayBuffer(${DATA}),
  give: (ab) => {
    if (buffers.length < ${POOL}) buffers.push(ab);
  },
};
const walks = new Map();
parentPort.on('message', (m) => {
  if (m.give) pool.give(m.give);
  if (m.root !== undefined) {
    walks.set(m.id, createWalk(m.root, m.opaqueXattr, sys, pool));
  } else if (m.next) {
    const walk = walks.get(m.id);
    if (!walk) return;
    const chunk = walk.next(m.next);
    if (chunk.done) walks.delete(m.id);
    chunk.id = m.id;
    parentPort.postMessage(chunk, chunk.data ? [chunk.data] : []);
  } else if (m.close) {
    const walk = walks.get(m.id);
    walks.delete(m.id);
    if (walk) walk.close();
  }
});
`;

let nextId = 1;
let active = 0;
const walks = new Map<number, WorkerWalk>();

const walkWorker = sharedWorker<WalkChunk & { id: number }>(
  'walk',
  WORKER_SOURCE,
  (m) => walks.get(m.id)?.arrive(m),
  (err) => {
    for (const walk of walks.values()) walk.fail(err);
  },
  { workerData: { koffi: requireCjs.resolve('koffi') } },
);

/** The walk in the worker, {@link AHEAD} chunks asked for ahead of the one taken. */
class WorkerWalk implements Walk {
  private readonly id = nextId++;
  private readonly w = walkWorker();
  private readonly ready: WalkChunk[] = [];
  /** A laid-out chunk's data buffer, sent back with the next request. */
  private spare: ArrayBuffer | undefined;
  private waiter: { resolve: () => void; reject: (err: unknown) => void } | undefined;
  private error: unknown;
  private ended = false;
  private finished = false;

  constructor(root: string, opaqueXattr: string) {
    // Keep the process alive while the walk is in the worker (the caller awaits it).
    if (active++ === 0) this.w.ref();
    walks.set(this.id, this);
    this.w.postMessage({ id: this.id, root, opaqueXattr });
    for (let i = 0; i < AHEAD; i++) this.w.postMessage({ id: this.id, next: CHUNK });
  }

  arrive(chunk: WalkChunk): void {
    this.ready.push(chunk);
    if (chunk.done) this.release();
    this.waiter?.resolve();
    this.waiter = undefined;
  }

  fail(err: unknown): void {
    this.error = err;
    this.release();
    this.waiter?.reject(err);
    this.waiter = undefined;
  }

  take(): WalkChunk | undefined {
    const chunk = this.ready.shift();
    if (chunk && !this.ended && !chunk.done) {
      const give = this.spare;
      this.spare = undefined;
      this.w.postMessage({ id: this.id, next: CHUNK, give }, give ? [give] : []);
    }
    if (chunk?.done) this.ended = true;
    return chunk;
  }

  recycle(chunk: WalkChunk): void {
    if (chunk.data && !this.spare && !this.finished) this.spare = chunk.data;
    chunk.data = undefined;
  }

  wait(): Promise<void> {
    if (this.ready.length > 0) return Promise.resolve();
    if (this.error !== undefined) return Promise.reject(this.error);
    return new Promise((resolve, reject) => {
      this.waiter = { resolve, reject };
    });
  }

  private release(): void {
    if (this.finished) return;
    this.finished = true;
    walks.delete(this.id);
    if (--active === 0) this.w.unref();
  }

  close(): void {
    if (this.finished) return;
    this.ended = true;
    // The worker closes the walk's open directories.
    this.w.postMessage({ id: this.id, close: true });
    this.release();
  }
}

/** A walk of `root` for one diff: in the worker when there is a CPU for it (see `useWorker`), else inline. */
export function walk(root: string, opaqueXattr: string): Walk {
  return useWorker() ? new WorkerWalk(root, opaqueXattr) : new InlineWalk(root, opaqueXattr);
}

/** The error a walk stopped with, as the calls on this thread would have thrown it. */
export function walkError(f: WalkFailure): Error {
  if (f.overlayMetadata !== undefined) {
    return new FailedPreconditionError(
      `cannot diff ${q(f.rel ?? '')}: it carries overlayfs ${f.overlayMetadata} metadata (mounted with redirect_dir or metacopy), so the upper alone does not hold its content`,
    );
  }
  if (f.changed !== undefined) {
    return new FailedPreconditionError(`${q(f.rel ?? '')} ${f.changed}: diff an active that nothing is writing to`);
  }
  const err: NodeJS.ErrnoException = new Error(f.message ?? 'the walk failed');
  if (f.code !== undefined) err.code = f.code;
  if (f.errno !== undefined) err.errno = f.errno;
  if (f.syscall !== undefined) err.syscall = f.syscall;
  if (f.path !== undefined) err.path = f.path;
  return err;
}
