/**
 * The file-reading half of {@link diffLayer}: it fills the file bodies into
 * batches of tar output that the walk has laid out (headers written,
 * padding left zero, a hole of the right size per file body).
 *
 * With a second CPU this runs in a shared worker thread, so that the
 * open/read/close of every file overlaps the walk (readdir, lstat, xattrs)
 * and the header encoding on the main thread. Batches live in shared
 * memory: the reader fills them in place, the main thread writes each one
 * to the output as one chunk, and the hash worker (hash.ts) reads the same
 * memory, so no file byte is copied or transferred. Without a second CPU
 * (or with `OVERLAY_SNAPSHOTTER_HASH_WORKER=0`) the same work runs inline.
 */
import { closeSync, openSync, readSync } from 'node:fs';
import { Worker } from 'node:worker_threads';
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

/** One diff's reader: fills batches (in order, though nothing depends on it). */
export interface BatchReader {
  /** Memory for a batch: shared with the worker (nothing moves), or plain when inline. */
  alloc(size: number): ArrayBufferLike;
  fill(ab: ArrayBufferLike, used: number, jobs: ReadJob[]): Promise<FillFailure | undefined>;
  /** Done (or failed): the worker may be let go. */
  close(): void;
}

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
  alloc(size: number): ArrayBufferLike {
    return new ArrayBuffer(size);
  }

  fill(ab: ArrayBufferLike, used: number, jobs: ReadJob[]): Promise<FillFailure | undefined> {
    return Promise.resolve(fillInline(Buffer.from(ab, 0, used), jobs));
  }

  close(): void {}
}

// Plain CommonJS, evaluated in the worker: no loader, no TypeScript.
const WORKER_SOURCE = `
const { parentPort } = require('node:worker_threads');
const { openSync, readSync, closeSync } = require('node:fs');
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
  const failure = fill(Buffer.from(m.ab, 0, m.used), m.paths, m.nums);
  parentPort.postMessage({ id: m.id, seq: m.seq, failure });
});
`;

interface Waiting {
  resolve: (failure: FillFailure | undefined) => void;
  reject: (err: unknown) => void;
}

let worker: Worker | undefined;
let nextId = 1;
let active = 0;
/** Keyed by `${id}:${seq}`. */
const waiting = new Map<string, Waiting>();

function readerWorker(): Worker {
  if (worker) return worker;
  const w = new Worker(WORKER_SOURCE, { eval: true, execArgv: [] });
  w.on('message', (m: { id: number; seq: number; failure?: FillFailure }) => {
    const key = `${m.id}:${m.seq}`;
    const p = waiting.get(key);
    if (!p) return;
    waiting.delete(key);
    p.resolve(m.failure);
  });
  const fail = (err: unknown): void => {
    if (worker === w) worker = undefined;
    for (const p of waiting.values()) p.reject(err);
    waiting.clear();
  };
  w.on('error', fail);
  w.on('exit', (code) => fail(new Error(`layer reader worker exited with code ${code}`)));
  w.unref();
  worker = w;
  return w;
}

class WorkerReader implements BatchReader {
  private readonly id = nextId++;
  private readonly w = readerWorker();
  private seq = 0;
  private finished = false;

  constructor() {
    // Keep the process alive while batches are in the worker (the caller awaits them).
    if (active++ === 0) this.w.ref();
  }

  alloc(size: number): ArrayBufferLike {
    return new SharedArrayBuffer(size);
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
    const done = new Promise<FillFailure | undefined>((resolve, reject) => waiting.set(`${this.id}:${seq}`, { resolve, reject }));
    this.w.postMessage({ id: this.id, seq, ab, used, paths, nums });
    return done;
  }

  close(): void {
    if (this.finished) return;
    this.finished = true;
    for (const key of waiting.keys()) if (key.startsWith(`${this.id}:`)) waiting.delete(key);
    if (--active === 0) this.w.unref();
  }
}

/** A reader for one diff: in the worker when there is a CPU for it (see `useWorker`), else inline. */
export function batchReader(): BatchReader {
  return useWorker() ? new WorkerReader() : new InlineReader();
}
