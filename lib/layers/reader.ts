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
import { closeSync, openSync, readSync } from 'node:fs';
import { sharedWorker } from './shared-worker.js';
import { useWorker } from './hash.js';

/** Where a part of one file's body goes: `len` bytes from `fileOff` of `path`, at `bufOff` in the batch. */
export interface ReadJob {
  path: string;
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

/** Reads the jobs' byte ranges into `buf`; the inline twin of `fill` in WORKER_SOURCE. */
function fillInline(buf: Buffer, jobs: ReadJob[]): FillFailure | undefined {
  for (let i = 0; i < jobs.length; i++) {
    const j = jobs[i]!;
    let fd: number | undefined;
    try {
      fd = openSync(j.path, 'r');
      let got = 0;
      while (got < j.len) {
        const n = readSync(fd, buf, j.bufOff + got, j.len - got, j.fileOff + got);
        if (n === 0) return { index: i, shrank: true };
        got += n;
      }
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      return { index: i, shrank: false, message: e.message, code: e.code, errno: e.errno, syscall: e.syscall, path: e.path };
    } finally {
      if (fd !== undefined) closeSync(fd);
    }
  }
  return undefined;
}

class InlineReader implements BatchReader {
  private readonly hash = createHash('sha256');
  private readonly pool: ArrayBufferLike[] = [];

  alloc(size: number): ArrayBufferLike {
    return this.pool.pop() ?? new ArrayBuffer(size);
  }

  recycle(ab: ArrayBufferLike): void {
    if (this.pool.length < POOL) this.pool.push(ab);
  }

  fill(ab: ArrayBufferLike, used: number, jobs: ReadJob[]): Promise<FillFailure | undefined> {
    const buf = Buffer.from(ab, 0, used);
    const failure = fillInline(buf, jobs);
    if (!failure) this.hash.update(buf);
    return Promise.resolve(failure);
  }

  digest(): Promise<string> {
    return Promise.resolve(`sha256:${this.hash.digest('hex')}`);
  }

  close(): void {}
}

// Plain CommonJS, evaluated in the worker: no loader, no TypeScript.
const WORKER_SOURCE = `
const { parentPort } = require('node:worker_threads');
const { createHash } = require('node:crypto');
const { openSync, readSync, closeSync } = require('node:fs');
const hashes = new Map();
function fill(buf, paths, nums) {
  for (let i = 0; i < paths.length; i++) {
    const fileOff = nums[3 * i], len = nums[3 * i + 1], bufOff = nums[3 * i + 2];
    let fd;
    try {
      fd = openSync(paths[i], 'r');
      let got = 0;
      while (got < len) {
        const n = readSync(fd, buf, bufOff + got, len - got, fileOff + got);
        if (n === 0) return { index: i, shrank: true };
        got += n;
      }
    } catch (e) {
      return { index: i, shrank: false, message: e.message, code: e.code, errno: e.errno, syscall: e.syscall, path: e.path };
    } finally {
      if (fd !== undefined) closeSync(fd);
    }
  }
  return undefined;
}
parentPort.on('message', (m) => {
  if (m.ab) {
    const buf = Buffer.from(m.ab, 0, m.used);
    const failure = fill(buf, m.paths, m.nums);
    if (!failure) {
      let h = hashes.get(m.id);
      if (!h) hashes.set(m.id, (h = createHash('sha256')));
      h.update(buf);
    }
    parentPort.postMessage({ id: m.id, seq: m.seq, failure });
  } else if (m.done) {
    const h = hashes.get(m.id) || createHash('sha256');
    hashes.delete(m.id);
    parentPort.postMessage({ id: m.id, seq: -1, digest: h.digest('hex') });
  } else if (m.abort) {
    hashes.delete(m.id);
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
);

class WorkerReader implements BatchReader {
  private readonly id = nextId++;
  private readonly w = readerWorker();
  private seq = 0;
  private finished = false;

  constructor() {
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
    const paths = new Array<string>(jobs.length);
    const nums = new Float64Array(jobs.length * 3);
    for (let i = 0; i < jobs.length; i++) {
      const j = jobs[i]!;
      paths[i] = j.path;
      nums[3 * i] = j.fileOff;
      nums[3 * i + 1] = j.len;
      nums[3 * i + 2] = j.bufOff;
    }
    const done = this.wait(seq);
    this.w.postMessage({ id: this.id, seq, ab, used, paths, nums });
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

/** A reader for one diff: in the worker when there is a CPU for it (see `useWorker`), else inline. */
export function batchReader(): BatchReader {
  return useWorker() ? new WorkerReader() : new InlineReader();
}
