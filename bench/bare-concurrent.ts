/**
 * W9's floor: the same many-callers cycle done with the bare syscalls on C
 * threads at once, and nothing else: no metadata store, no staging pool, no
 * checks. Each thread runs `n` × (prepare, 4 KiB written to the upper dir,
 * remove), where
 *
 * - prepare is `mkdir` of a `new-<uuid>` staging dir, its `fs` and `work`,
 *   `rename` to `snapshots/<thread>-<i>`, then a commit;
 * - remove is a commit, then `unlink` of the written file and `rmdir` of
 *   `work`, `fs` and the snapshot's dir;
 * - a commit writes 4 KiB into a stand-in for the store's WAL (a slot of
 *   its own) and returns once an `fdatasync` that began after the write
 *   has ended. Threads share those syncs as the store's group commit does:
 *   one thread syncs while the others wait, and one sync covers every write
 *   made before it began.
 *
 * The callers are real threads (worker_threads), so the syscalls of
 * different callers run in parallel as far as the kernel and the CPUs let
 * them; the library runs its calls from one JavaScript thread and its
 * thread pool. Figures are gathered as W9 gathers its own (bench/w9-concurrent.ts).
 *
 * The worker side is this file loaded as a worker, with `workerData.bareW9`.
 */
import { closeSync, fdatasyncSync, mkdirSync, openSync, renameSync, rmdirSync, unlinkSync, writeFileSync, writeSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { isMainThread, parentPort, workerData } from 'node:worker_threads';
import { v4 as uuidv4 } from 'uuid';
import { startWorker } from '../lib/kernel/threads.js';

/** What callers did: per-call intervals on a clock shared by threads and processes. */
export interface Calls {
  /** [start, end] of every prepare, ms since the epoch (fractional). */
  prepare: [number, number][];
  remove: [number, number][];
  /** First start and last end of any call, same clock. */
  start: number;
  end: number;
}

/** Milliseconds since the epoch with sub-millisecond precision, comparable across threads and processes. */
export const now = (): number => performance.timeOrigin + performance.now();

const PAGE = 4096;
const WAL_SLOTS = 256;
const PAYLOAD = Buffer.alloc(PAGE, 0x39);
/** What each commit writes into the WAL stand-in. */
const WAL_PAGE = Buffer.alloc(PAGE, 0x57);

/** Slots of the shared state (an Int32Array over a SharedArrayBuffer). */
const WRITTEN = 0; // commits whose WAL write has ended
const SYNCED = 1; // commits a finished sync covers
const SYNCING = 2; // 1 while a thread syncs
const SLOT = 3; // the next WAL slot
const GO = 4; // 1 once every thread may start
const READY = 5; // threads waiting for GO
const SYNCS = 6; // fdatasyncs made

interface Job {
  bareW9: true;
  snapshots: string;
  wal: string;
  thread: number;
  n: number;
  state: SharedArrayBuffer;
}

/** A store commit's disk work: 4 KiB into the WAL stand-in, then a share of a sync that began after it. */
function commit(state: Int32Array, fd: number): void {
  writeSync(fd, WAL_PAGE, 0, PAGE, (Atomics.add(state, SLOT, 1) % WAL_SLOTS) * PAGE);
  // Counted once written: a sync that reads WRITTEN >= seq began after this write.
  const seq = Atomics.add(state, WRITTEN, 1) + 1;
  while (Atomics.load(state, SYNCED) < seq) {
    if (Atomics.compareExchange(state, SYNCING, 0, 1) === 0) {
      const upTo = Atomics.load(state, WRITTEN);
      if (Atomics.load(state, SYNCED) < seq) {
        fdatasyncSync(fd);
        Atomics.add(state, SYNCS, 1);
        Atomics.store(state, SYNCED, upTo);
      }
      Atomics.store(state, SYNCING, 0);
      Atomics.notify(state, SYNCING);
    } else {
      Atomics.wait(state, SYNCING, 1, 20);
    }
  }
}

/** One thread's loop (runs in a worker). */
function runThread(job: Job): Calls {
  const state = new Int32Array(job.state);
  const fd = openSync(job.wal, 'r+');
  try {
    Atomics.add(state, READY, 1);
    Atomics.notify(state, READY);
    while (Atomics.load(state, GO) === 0) Atomics.wait(state, GO, 0, 100);
    const calls: Calls = { prepare: [], remove: [], start: now(), end: 0 };
    for (let i = 0; i < job.n; i++) {
      let t = now();
      const staging = `${job.snapshots}/new-${uuidv4()}`;
      mkdirSync(staging, 0o700);
      mkdirSync(`${staging}/fs`, 0o755);
      mkdirSync(`${staging}/work`, 0o711);
      const dir = `${job.snapshots}/${job.thread}-${i}`;
      renameSync(staging, dir);
      commit(state, fd);
      let u = now();
      calls.prepare.push([t, u]);
      writeFileSync(`${dir}/fs/data`, PAYLOAD);
      t = now();
      commit(state, fd);
      unlinkSync(`${dir}/fs/data`);
      rmdirSync(`${dir}/work`);
      rmdirSync(`${dir}/fs`);
      rmdirSync(dir);
      u = now();
      calls.remove.push([t, u]);
    }
    calls.end = now();
    return calls;
  } finally {
    closeSync(fd);
  }
}

/** What a burst of bare cycles did. */
export interface BareBurst {
  /** Each thread's calls. */
  calls: Calls[];
  /** Commits made (two a cycle) and the syncs that made them durable. */
  commits: number;
  syncs: number;
}

/**
 * Runs `callers` threads of `n` bare cycles each under `base` (made if
 * missing: `<base>/snapshots`, `<base>/wal`), started together; returns
 * what they did. Every snapshot dir is gone again at the end.
 */
export async function bareBurst(base: string, callers: number, n: number): Promise<BareBurst> {
  const snapshots = `${base}/snapshots`;
  const wal = `${base}/wal`;
  mkdirSync(snapshots, { recursive: true });
  const fd = openSync(wal, 'w');
  try {
    writeSync(fd, Buffer.alloc(PAGE * WAL_SLOTS));
    fdatasyncSync(fd);
  } finally {
    closeSync(fd);
  }
  const state = new Int32Array(new SharedArrayBuffer(8 * Int32Array.BYTES_PER_ELEMENT));
  const workers = Array.from(
    { length: callers },
    (_, thread) => startWorker(new URL('./bare-concurrent.js', import.meta.url), { workerData: { bareW9: true, snapshots, wal, thread, n, state: state.buffer } satisfies Job }),
  );
  const results = workers.map(
    (w, k) =>
      new Promise<Calls>((resolve, reject) => {
        w.once('message', (calls: Calls) => resolve(calls));
        w.once('error', reject);
        w.once('exit', (code) => reject(new Error(`bare W9 thread ${k} exited (${code}) without its figures`)));
      }),
  );
  try {
    // Start them together once all are loaded.
    for (;;) {
      const ready = Atomics.load(state, READY);
      if (ready === callers) break;
      await Promise.race([...results, new Promise((r) => setTimeout(r, 5))]);
    }
    Atomics.store(state, GO, 1);
    Atomics.notify(state, GO);
    const calls = await Promise.all(results);
    return { calls, commits: Atomics.load(state, WRITTEN), syncs: Atomics.load(state, SYNCS) };
  } finally {
    await Promise.allSettled(workers.map((w) => w.terminate()));
  }
}

if (!isMainThread && (workerData as Partial<Job> | null)?.bareW9 === true) {
  parentPort!.postMessage(runThread(workerData as Job));
}
