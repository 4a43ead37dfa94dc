/**
 * The file-reading and hashing half of {@link diffLayer}: it fills the
 * bodies of files over 64 KiB (the walk reads smaller ones itself, see
 * walk.ts) into batches of tar output that the main thread has laid out
 * (headers written, padding zeroed, a hole of the right size per such
 * body) and feeds each batch, in order, to the SHA-256 of the layer.
 *
 * With a second CPU this runs in a shared worker thread, so that the
 * reading of large files and the hash overlap the walk and the header
 * encoding on the main thread. Batches live
 * in shared memory, filled in place: the main thread writes each one to
 * the output as one chunk, no file byte is copied, and a batch the output
 * is done with is reused (fresh memory costs a page fault per 4 KiB, and
 * shared memory is freed late: without reuse a 1 GiB diff peaked at
 * 1.1 GB RSS). Without a second CPU (or with
 * `OVERLAY_SNAPSHOTTER_HASH_WORKER=0`) the same work runs inline.
 */
import { createHash } from 'node:crypto';
import { createRequire } from 'node:module';
import { sharedWorker } from './shared-worker.js';
import { useWorker } from './hash.js';
import { SYS_SOURCE } from './sys-source.js';

/** Where a part of one file's body goes: `len` bytes from `fileOff` of the file `rel` (under the diff's root), at `bufOff` in the batch. */
export interface ReadJob {
  rel: string;
  fileOff: number;
  len: number;
  bufOff: number;
}

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

/** One diff's reader: fills batches and hashes them, strictly in the order given. */
export interface BatchReader {
  /** Memory for a batch (zeroes not guaranteed): shared with the worker (nothing moves), or plain when inline. */
  alloc(size: number): ArrayBufferLike;
  /** Gives a batch back for reuse once nothing refers to it any more. */
  recycle(ab: ArrayBufferLike): void;
  fill(ab: ArrayBufferLike, used: number, jobs: ReadJob[]): Promise<FillFailure | undefined>;
  /** `sha256:<hex>` of every batch filled; ends the reader. */
  digest(): Promise<string>;
  /** Ends the reader after a failure. */
  close(): void;
}

/** Batches kept for reuse per reader: fresh memory costs a page fault per 4 KiB, and shared memory is freed late. */
const POOL = 16;

/**
 * `makeFiller(sys)` (sys-source.ts's `makeSys`) returns `{ tree(root), fill(tree, buf, rels, nums), closeTree(tree) }`.
 * A tree holds the diff's root and the directories of the file last read
 * open; each file is opened relative to its directory, and each directory
 * relative to its parent, all with O_NOFOLLOW: a symlink planted anywhere
 * under the root while the diff runs is refused (ELOOP or ENOTDIR), never
 * followed out of the tree, and paths longer than PATH_MAX work. `nums`
 * holds fileOff, len, bufOff per job. Plain CommonJS: it runs in the worker
 * as it is, and inline.
 */
const FILL_SOURCE = `
function makeFiller(sys) {
  const open = sys.openat;
  const close = sys.close;
  function tree(root) {
    return { root, fd: -1, names: [], fds: [] };
  }
  // The descriptor of directory \`dir\` (relative, '' for the root), reusing what is open of it.
  function dirFd(t, dir) {
    if (t.fd < 0) t.fd = open(-100, t.root, OPEN_DIR, t.root);
    const want = dir === '' ? [] : dir.split('/');
    let k = 0;
    while (k < t.names.length && k < want.length && t.names[k] === want[k]) k++;
    while (t.names.length > k) {
      close(t.fds.pop());
      t.names.pop();
    }
    while (t.names.length < want.length) {
      const parent = t.fds.length > 0 ? t.fds[t.fds.length - 1] : t.fd;
      const name = want[t.names.length];
      t.fds.push(open(parent, name, OPEN_DIR, t.root + '/' + want.slice(0, t.names.length + 1).join('/')));
      t.names.push(name);
    }
    return t.fds.length > 0 ? t.fds[t.fds.length - 1] : t.fd;
  }
  function closeTree(t) {
    while (t.fds.length > 0) close(t.fds.pop());
    t.names = [];
    if (t.fd >= 0) close(t.fd);
    t.fd = -1;
  }
  function fill(t, buf, rels, nums) {
    for (let i = 0; i < rels.length; i++) {
      const rel = rels[i];
      const fileOff = nums[3 * i], len = nums[3 * i + 1], bufOff = nums[3 * i + 2];
      let fd = -1;
      try {
        const slash = rel.lastIndexOf('/');
        fd = open(dirFd(t, slash < 0 ? '' : rel.slice(0, slash)), rel.slice(slash + 1), OPEN_FILE, t.root + '/' + rel);
        let got = 0;
        while (got < len) {
          const n = sys.read(fd, buf, bufOff + got, len - got, fileOff + got);
          if (n === 0) return { index: i, shrank: true };
          got += n;
        }
      } catch (e) {
        return { index: i, shrank: false, message: e.message, code: e.code, errno: e.errno, syscall: e.syscall, path: e.path };
      } finally {
        if (fd >= 0) close(fd);
      }
    }
    return undefined;
  }
  return { tree, fill, closeTree };
}
`;

interface Tree {
  readonly root: string;
}
interface Filler {
  tree(root: string): Tree;
  fill(tree: Tree, buf: Buffer, rels: string[], nums: Float64Array): FillFailure | undefined;
  closeTree(tree: Tree): void;
}

const requireCjs = createRequire(import.meta.url);
let inlineFiller: Filler | undefined;

/** Splits jobs into the names and the numbers the filler takes. */
function jobArrays(jobs: ReadJob[]): { rels: string[]; nums: Float64Array } {
  const rels = new Array<string>(jobs.length);
  const nums = new Float64Array(jobs.length * 3);
  for (let i = 0; i < jobs.length; i++) {
    const j = jobs[i]!;
    rels[i] = j.rel;
    nums[3 * i] = j.fileOff;
    nums[3 * i + 1] = j.len;
    nums[3 * i + 2] = j.bufOff;
  }
  return { rels, nums };
}

class InlineReader implements BatchReader {
  private readonly hash = createHash('sha256');
  private readonly pool: ArrayBufferLike[] = [];
  private readonly filler: Filler;
  private readonly tree: Tree;

  constructor(root: string) {
    // The same source the worker runs.
    if (!inlineFiller) {
      const made = new Function('require', `${SYS_SOURCE}${FILL_SOURCE}\nreturn { makeSys, makeFiller };`)(requireCjs) as {
        makeSys: (k: unknown) => unknown;
        makeFiller: (sys: unknown) => Filler;
      };
      inlineFiller = made.makeFiller(made.makeSys(requireCjs('koffi')));
    }
    this.filler = inlineFiller;
    this.tree = this.filler.tree(root);
  }

  alloc(size: number): ArrayBufferLike {
    return this.pool.pop() ?? new ArrayBuffer(size);
  }

  recycle(ab: ArrayBufferLike): void {
    if (this.pool.length < POOL) this.pool.push(ab);
  }

  fill(ab: ArrayBufferLike, used: number, jobs: ReadJob[]): Promise<FillFailure | undefined> {
    const buf = Buffer.from(ab, 0, used);
    const { rels, nums } = jobArrays(jobs);
    const failure = this.filler.fill(this.tree, buf, rels, nums);
    if (!failure) this.hash.update(buf);
    return Promise.resolve(failure);
  }

  digest(): Promise<string> {
    this.filler.closeTree(this.tree);
    return Promise.resolve(`sha256:${this.hash.digest('hex')}`);
  }

  close(): void {
    this.filler.closeTree(this.tree);
  }
}

// Plain CommonJS, evaluated in the worker: no loader, no TypeScript.
const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const { createHash } = require('node:crypto');
${SYS_SOURCE}
${FILL_SOURCE}
const filler = makeFiller(makeSys(require(workerData.koffi)));
const hashes = new Map();
const trees = new Map();
function end(id) {
  hashes.delete(id);
  const t = trees.get(id);
  trees.delete(id);
  if (t) filler.closeTree(t);
}
parentPort.on('message', (m) => {
  if (m.ab) {
    const buf = Buffer.from(m.ab, 0, m.used);
    let t = trees.get(m.id);
    if (!t) trees.set(m.id, (t = filler.tree(m.root)));
    const failure = filler.fill(t, buf, m.rels, m.nums);
    if (!failure) {
      let h = hashes.get(m.id);
      if (!h) hashes.set(m.id, (h = createHash('sha256')));
      h.update(buf);
    }
    parentPort.postMessage({ id: m.id, seq: m.seq, failure });
  } else if (m.done) {
    const h = hashes.get(m.id) || createHash('sha256');
    end(m.id);
    parentPort.postMessage({ id: m.id, seq: -1, digest: h.digest('hex') });
  } else if (m.abort) {
    end(m.id);
  }
});
`;

interface Waiting {
  resolve: (m: { failure?: FillFailure; digest?: string }) => void;
  reject: (err: unknown) => void;
}

let nextId = 1;
let active = 0;
/** Keyed by `${id}:${seq}`. */
const waiting = new Map<string, Waiting>();

const readerWorker = sharedWorker<{ id: number; seq: number; failure?: FillFailure; digest?: string }>(
  'reader',
  WORKER_SOURCE,
  (m) => {
    const key = `${m.id}:${m.seq}`;
    const p = waiting.get(key);
    if (!p) return;
    waiting.delete(key);
    p.resolve(m);
  },
  (err) => {
    for (const p of waiting.values()) p.reject(err);
    waiting.clear();
  },
  { workerData: { koffi: requireCjs.resolve('koffi') } },
);

class WorkerReader implements BatchReader {
  private readonly id = nextId++;
  private readonly w = readerWorker();
  private seq = 0;
  private finished = false;

  constructor(private readonly root: string) {
    // Keep the process alive while batches are in the worker (the caller awaits them).
    if (active++ === 0) this.w.ref();
  }

  private readonly pool: ArrayBufferLike[] = [];

  alloc(size: number): ArrayBufferLike {
    return this.pool.pop() ?? new SharedArrayBuffer(size);
  }

  recycle(ab: ArrayBufferLike): void {
    if (this.pool.length < POOL) this.pool.push(ab);
  }

  private wait(seq: number): Promise<{ failure?: FillFailure; digest?: string }> {
    return new Promise((resolve, reject) => waiting.set(`${this.id}:${seq}`, { resolve, reject }));
  }

  fill(ab: ArrayBufferLike, used: number, jobs: ReadJob[]): Promise<FillFailure | undefined> {
    const seq = this.seq++;
    const { rels, nums } = jobArrays(jobs);
    const done = this.wait(seq);
    this.w.postMessage({ id: this.id, seq, ab, used, root: seq === 0 ? this.root : undefined, rels, nums });
    return done.then((m) => m.failure);
  }

  private release(): void {
    if (this.finished) return;
    this.finished = true;
    if (--active === 0) this.w.unref();
  }

  async digest(): Promise<string> {
    const done = this.wait(-1);
    this.w.postMessage({ id: this.id, done: true });
    try {
      return `sha256:${(await done).digest!}`;
    } finally {
      this.release();
    }
  }

  close(): void {
    if (this.finished) return;
    // Messages are handled in order: batches still in the worker are filled first, then dropped with the hash.
    for (const key of waiting.keys()) if (key.startsWith(`${this.id}:`)) waiting.delete(key);
    this.w.postMessage({ id: this.id, abort: true });
    this.release();
  }
}

/** A reader of files under `root` for one diff: in the worker when there is a CPU for it (see `useWorker`), else inline. */
export function batchReader(root: string): BatchReader {
  return useWorker() ? new WorkerReader(root) : new InlineReader(root);
}
