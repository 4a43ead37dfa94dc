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
 * The walk itself is walk-tree.ts, run in the walk thread (walk-worker.ts),
 * or on the calling thread without a second CPU (or with
 * `OVERLAY_SNAPSHOTTER_HASH_WORKER=0`): the same code, so the same calls in
 * the same order, the same entries, the same xattrs, and a failure at the
 * same place. This module owns the thread's side of the conversation;
 * it reads the tree only through walk-tree.ts.
 */
import { FailedPreconditionError, q } from '../model/errors.js';
import { useWorker } from './hash.js';
import { sharedWorker } from './shared-thread.js';
import { AHEAD, CHUNK, DATA, type DataPool, POOL, type TreeWalk, type WalkChunk, type WalkFailure, createWalk } from './walk-tree.js';

export { INLINE_MAX, KIND, NUMS } from './walk-tree.js';
export type { WalkChunk, WalkFailure } from './walk-tree.js';

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

/** What the walk thread (walk-worker.ts) is sent: start a walk, send its next chunk (taking back a spent data buffer), or close it. */
export type WalkRequest =
  | { id: number; root: string; opaqueXattr: string }
  | { id: number; next: number; give?: ArrayBuffer | undefined }
  | { id: number; close: true };
/** What it sends back: one chunk of walk `id`. */
export type WalkReply = WalkChunk & { id: number };

/** The walk on the calling thread: each chunk made when asked for. */
class InlineWalk implements Walk {
  private static readonly buffers: ArrayBuffer[] = [];
  private static readonly pool: DataPool = {
    take: () => InlineWalk.buffers.pop() ?? new ArrayBuffer(DATA),
    give: (ab) => {
      if (InlineWalk.buffers.length < POOL) InlineWalk.buffers.push(ab);
    },
  };
  private readonly state: TreeWalk;
  private ended = false;

  constructor(root: string, opaqueXattr: string) {
    // The same walk the worker runs, so both make the same calls in the same order.
    this.state = createWalk(root, opaqueXattr, InlineWalk.pool);
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

let nextId = 1;
let active = 0;
const walks = new Map<number, WorkerWalk>();

const walkWorker = sharedWorker<WalkReply>(
  'walk',
  new URL('./walk-worker.js', import.meta.url),
  (m) => walks.get(m.id)?.arrive(m),
  (err) => {
    for (const walk of walks.values()) walk.fail(err);
  },
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
    this.w.postMessage({ id: this.id, root, opaqueXattr } satisfies WalkRequest);
    for (let i = 0; i < AHEAD; i++) this.w.postMessage({ id: this.id, next: CHUNK } satisfies WalkRequest);
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
      this.w.postMessage({ id: this.id, next: CHUNK, give } satisfies WalkRequest, give ? [give] : []);
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
    this.w.postMessage({ id: this.id, close: true } satisfies WalkRequest);
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
