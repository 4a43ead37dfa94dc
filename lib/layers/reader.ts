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
 * `OVERLAY_SNAPSHOTTER_HASH_WORKER=0`) the same work runs inline. The
 * reading itself is fill.ts on either thread; the thread is reader-worker.ts.
 * Reads the tree only, through fill.ts.
 */
import { createHash } from 'node:crypto';
import { type FillFailure, type Tree, closeTree, fill, openTree } from './fill.js';
import { useWorker } from './hash.js';
import { sharedWorker } from './shared-thread.js';

export type { FillFailure } from './fill.js';

/** Where a part of one file's body goes: `len` bytes from `fileOff` of the file `rel` (under the diff's root), at `bufOff` in the batch. */
export interface ReadJob {
  rel: string;
  fileOff: number;
  len: number;
  bufOff: number;
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
  private readonly tree: Tree;

  constructor(root: string) {
    // The same code the worker runs (fill.ts).
    this.tree = openTree(root);
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
    const failure = fill(this.tree, buf, rels, nums);
    if (!failure) this.hash.update(buf);
    return Promise.resolve(failure);
  }

  digest(): Promise<string> {
    closeTree(this.tree);
    return Promise.resolve(`sha256:${this.hash.digest('hex')}`);
  }

  close(): void {
    closeTree(this.tree);
  }
}

/** What the reader thread (reader-worker.ts) is sent: a batch to fill and hash (`root` with a reader's first), its end, or its abandonment. */
export type ReadRequest =
  | { id: number; seq: number; ab: ArrayBufferLike; used: number; root: string | undefined; rels: string[]; nums: Float64Array }
  | { id: number; done: true }
  | { id: number; abort: true };
/** What it sends back: batch `seq` filled (or how it failed), or with `seq` -1 the digest. */
export interface ReadReply {
  id: number;
  seq: number;
  failure?: FillFailure | undefined;
  digest?: string;
}

interface Waiting {
  resolve: (m: { failure?: FillFailure; digest?: string }) => void;
  reject: (err: unknown) => void;
}

let nextId = 1;
let active = 0;
/** Keyed by `${id}:${seq}`. */
const waiting = new Map<string, Waiting>();

const readerWorker = sharedWorker<ReadReply>(
  'reader',
  new URL('./reader-worker.js', import.meta.url),
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
    this.w.postMessage({ id: this.id, seq, ab, used, root: seq === 0 ? this.root : undefined, rels, nums } satisfies ReadRequest);
    return done.then((m) => m.failure);
  }

  private release(): void {
    if (this.finished) return;
    this.finished = true;
    if (--active === 0) this.w.unref();
  }

  async digest(): Promise<string> {
    const done = this.wait(-1);
    this.w.postMessage({ id: this.id, done: true } satisfies ReadRequest);
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
    this.w.postMessage({ id: this.id, abort: true } satisfies ReadRequest);
    this.release();
  }
}

/** A reader of files under `root` for one diff: in the worker when there is a CPU for it (see `useWorker`), else inline. */
export function batchReader(root: string): BatchReader {
  return useWorker() ? new WorkerReader(root) : new InlineReader(root);
}
