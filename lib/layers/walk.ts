/**
 * The walk of a diff's source tree (readdir, lstat, xattrs, readlink) on a
 * helper thread. For a tree of small files the walk is most of a diff's
 * main-thread time: each entry costs an `lstat` and an `llistxattr` (both
 * path walks in the kernel, the second through koffi), about 5 µs together,
 * where the header encoding that needs their answers costs about 3 µs. With
 * a second CPU the walk runs in a worker, a few chunks of entries ahead of
 * the main thread, which only lays the tar out (see diff.ts).
 *
 * The walk is one piece of plain CommonJS ({@link WALK_SOURCE}), evaluated
 * in the worker, or on the calling thread without a second CPU (or with
 * `OVERLAY_SNAPSHOTTER_HASH_WORKER=0`): the same calls in the same order,
 * so the same entries, the same xattrs, and a failure at the same place.
 */
import { createRequire } from 'node:module';
import { sharedWorker } from './shared-worker.js';
import { FailedPreconditionError, q } from '../errors.js';
import { syscallError } from '../libc.js';
import { useWorker } from './hash.js';
import { WHITEOUT_PREFIX } from './paths.js';
import { lgetxattr, llistxattr } from './sys.js';

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

/** Numbers per entry in {@link WalkChunk.nums}: mode, uid, gid, mtimeMs, size, rdev. */
export const NUMS = 6;

/** Why a walk stopped early: a system call's error fields, or an entry with overlay metadata diff refuses. */
export interface WalkFailure {
  /** `redirect` or `metacopy`, found on `rel`. */
  overlayMetadata?: string;
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
  /** {@link NUMS} numbers per entry, from `lstat`. */
  nums: Float64Array;
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
 * `createWalk(root, opaqueXattr, xattr)` returns `next(max)`, giving the next
 * chunk of at most `max` entries. `xattr.list(path)` and `xattr.get(path,
 * name)` are llistxattr/lgetxattr (`[]` without xattr support, `undefined`
 * for an absent attribute), throwing Node-style errors. Plain CommonJS: it
 * runs in the worker as it is.
 */
const WALK_SOURCE = `
const { lstatSync, readdirSync, readlinkSync } = require('node:fs');
const OVERLAY_XATTR = /^(trusted|user)\\.overlay\\./;
const WHITEOUT_PREFIX = ${JSON.stringify(WHITEOUT_PREFIX)};
const K = ${JSON.stringify(KIND)};
const NUMS = ${NUMS};
function createWalk(root, opaqueXattr, xattr) {
  const stack = [];
  const links = new Map();
  let started = false;
  let done = false;

  // Reads and lstats a directory's children: whiteouts first (as markers), then the rest, each sorted.
  function pushDir(dirRel) {
    const dirPath = dirRel === '' ? root : root + '/' + dirRel;
    const names = readdirSync(dirPath).sort();
    const whiteouts = [];
    const others = [];
    for (const name of names) {
      const st = lstatSync(dirPath + '/' + name);
      if (st.isCharacterDevice() && st.rdev === 0) whiteouts.push([name, st, true]);
      else others.push([name, st, false]);
    }
    stack.push({ dirRel, dirPath, items: whiteouts.length > 0 ? whiteouts.concat(others) : others, i: 0 });
  }

  // xattrs of a path, sorted, without overlayfs' own; refuses upper dirs overlay can't diff.
  function xattrs(path, rel) {
    const list = [];
    let opaque = false;
    const names = xattr.list(path);
    if (names.length === 0) return { list, opaque };
    for (const name of names.sort()) {
      if (OVERLAY_XATTR.test(name)) {
        const kind = name.slice(name.indexOf('.overlay.') + 9);
        if (kind === 'redirect' || kind === 'metacopy') {
          throw { overlayMetadata: kind, rel };
        }
        if (name === opaqueXattr) {
          const v = xattr.get(path, name);
          opaque = v !== undefined && v.length === 1 && v[0] === 0x79;
        }
        continue;
      }
      const value = xattr.get(path, name);
      if (value !== undefined) list.push([name, value]);
    }
    return { list, opaque };
  }

  return function next(max) {
    const kinds = new Uint8Array(max);
    const rels = [];
    const nums = new Float64Array(max * NUMS);
    const linkOut = [];
    const xattrOut = [];
    let n = 0;
    let failure;
    const emit = (kind, rel, st) => {
      kinds[n] = kind;
      rels.push(rel);
      if (st) {
        const k = n * NUMS;
        nums[k] = st.mode; nums[k + 1] = st.uid; nums[k + 2] = st.gid;
        nums[k + 3] = st.mtimeMs; nums[k + 4] = st.size; nums[k + 5] = st.rdev;
      }
      n++;
    };
    try {
      if (!started) {
        started = true;
        pushDir('');
      }
      while (n < max) {
        const top = stack[stack.length - 1];
        if (!top) {
          done = true;
          break;
        }
        const item = top.items[top.i++];
        if (!item) {
          stack.pop();
          continue;
        }
        const [name, st, whiteout] = item;
        if (whiteout) {
          emit(K.whiteout, top.dirRel === '' ? WHITEOUT_PREFIX + name : top.dirRel + '/' + WHITEOUT_PREFIX + name);
          continue;
        }
        const rel = top.dirRel === '' ? name : top.dirRel + '/' + name;
        const path = top.dirPath + '/' + name;
        const x = xattrs(path, rel);
        if (st.isDirectory()) {
          if (x.list.length > 0) xattrOut.push([n, x.list]);
          emit(x.opaque ? K.opaqueDirectory : K.directory, rel, st);
          pushDir(rel);
          continue;
        }
        if (st.nlink > 1) {
          const key = st.dev + ':' + st.ino;
          const first = links.get(key);
          if (first !== undefined) {
            linkOut.push([n, first]);
            emit(K.hardlink, rel, st);
            continue;
          }
          links.set(key, rel);
        }
        let kind;
        if (st.isFile()) kind = K.file;
        else if (st.isSymbolicLink()) {
          kind = K.symlink;
          linkOut.push([n, readlinkSync(path)]);
        } else if (st.isCharacterDevice()) kind = K.characterDevice;
        else if (st.isBlockDevice()) kind = K.blockDevice;
        else if (st.isFIFO()) kind = K.fifo;
        // Sockets are not part of a filesystem image (tar skips them too).
        else continue;
        if (x.list.length > 0) xattrOut.push([n, x.list]);
        emit(kind, rel, st);
      }
    } catch (e) {
      failure = e && e.overlayMetadata !== undefined
        ? { overlayMetadata: e.overlayMetadata, rel: e.rel }
        : { message: String(e && e.message), code: e.code, errno: e.errno, syscall: e.syscall, path: e.path };
      done = true;
    }
    return { n, kinds, rels, nums: n === max ? nums : nums.slice(0, n * NUMS), links: linkOut, xattrs: xattrOut, failure, done };
  };
}
`;

type Next = (max: number) => WalkChunk;
type CreateWalk = (root: string, opaqueXattr: string, xattr: { list: (path: string) => string[]; get: (path: string, name: string) => Buffer | undefined }) => Next;

const requireCjs = createRequire(import.meta.url);

/** The walk on the calling thread: each chunk made when asked for. */
class InlineWalk implements Walk {
  private static create: CreateWalk | undefined;
  private readonly next: Next;
  private ended = false;

  constructor(root: string, opaqueXattr: string) {
    // The same source the worker runs, so both walks make the same calls in the same order.
    InlineWalk.create ??= new Function('require', `${WALK_SOURCE}\nreturn createWalk;`)(requireCjs) as CreateWalk;
    this.next = InlineWalk.create(root, opaqueXattr, { list: llistxattr, get: lgetxattr });
  }

  take(): WalkChunk | undefined {
    if (this.ended) return undefined;
    const chunk = this.next(CHUNK);
    if (chunk.done) this.ended = true;
    return chunk;
  }

  wait(): Promise<void> {
    return Promise.resolve();
  }

  close(): void {
    this.ended = true;
  }
}

// Plain CommonJS, evaluated in the worker: no loader, no TypeScript. The xattr calls are the
// twins of sys.ts's llistxattr/lgetxattr, with errors shaped as libc.ts's syscallError shapes them.
const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const { getSystemErrorMap } = require('node:util');
const { constants } = require('node:os');
const koffi = require(workerData.koffi);
${WALK_SOURCE}
const lib = koffi.load('libc.so.6');
const llistxattr = lib.func('intptr_t llistxattr(const char *path, void *list, size_t size)');
const lgetxattr = lib.func('intptr_t lgetxattr(const char *path, const char *name, void *value, size_t size)');
const errnoNames = new Map(Object.entries(constants.errno).map(([name, value]) => [value, name]));
function sysError(syscall, path) {
  const errno = koffi.errno();
  const known = getSystemErrorMap().get(-errno);
  const code = (known && known[0]) || errnoNames.get(errno) || 'E' + errno;
  const err = new Error(code + ': ' + ((known && known[1]) || 'unknown error') + ', ' + syscall + ' ' + JSON.stringify(path));
  err.code = code;
  err.errno = -errno;
  err.syscall = syscall;
  err.path = path;
  return err;
}
const scratch = Buffer.alloc(4096);
const xattr = {
  list(path) {
    let buf = scratch;
    for (;;) {
      const n = Number(llistxattr(path, buf, buf.length));
      if (n === 0) return [];
      if (n > 0) return buf.toString('utf8', 0, n - 1).split('\\0');
      const err = sysError('llistxattr', path);
      if (err.code === 'ENOTSUP') return [];
      if (err.code !== 'ERANGE') throw err;
      const size = Number(llistxattr(path, null, 0));
      if (size < 0) throw sysError('llistxattr', path);
      buf = Buffer.alloc(size);
    }
  },
  get(path, name) {
    for (;;) {
      const n = Number(lgetxattr(path, name, scratch, scratch.length));
      if (n >= 0) return Buffer.from(scratch.subarray(0, n));
      const err = sysError('lgetxattr', path);
      if (err.code === 'ENODATA') return undefined;
      if (err.code !== 'ERANGE') throw err;
      const size = Number(lgetxattr(path, name, null, 0));
      if (size < 0) throw sysError('lgetxattr', path);
      const buf = Buffer.alloc(size);
      const m = Number(lgetxattr(path, name, buf, size));
      if (m >= 0) return buf.subarray(0, m);
    }
  },
};
const walks = new Map();
parentPort.on('message', (m) => {
  if (m.root !== undefined) {
    walks.set(m.id, createWalk(m.root, m.opaqueXattr, xattr));
  } else if (m.next) {
    const next = walks.get(m.id);
    if (!next) return;
    const chunk = next(m.next);
    if (chunk.done) walks.delete(m.id);
    chunk.id = m.id;
    parentPort.postMessage(chunk);
  } else if (m.close) {
    walks.delete(m.id);
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
    if (chunk && !this.ended && !chunk.done) this.w.postMessage({ id: this.id, next: CHUNK });
    if (chunk?.done) this.ended = true;
    return chunk;
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
  if (f.syscall === 'llistxattr' || f.syscall === 'lgetxattr') return syscallError(f.syscall, `${f.syscall} ${JSON.stringify(f.path)}`, f.path, -(f.errno ?? 0));
  const err: NodeJS.ErrnoException = new Error(f.message ?? 'the walk failed');
  if (f.code !== undefined) err.code = f.code;
  if (f.errno !== undefined) err.errno = f.errno;
  if (f.syscall !== undefined) err.syscall = f.syscall;
  if (f.path !== undefined) err.path = f.path;
  return err;
}
