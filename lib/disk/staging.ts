/**
 * Staging dirs made ahead of time. A new active snapshot is staged as
 * `snapshots/new-*` with `fs` and `work` inside, recorded, then renamed to
 * its id. The three mkdirs cost about as much as the rest of a prepare, so
 * a helper thread keeps a few dirs ready, in parallel with the main
 * thread, and hands them over through shared memory: taking one costs no
 * system call and no turn of the event loop (a thread-pool round trip per
 * mkdir would cost more than the mkdir).
 *
 * A pool dir is named `new-<pid>.<start>-<uuid>-<n>` after the process that
 * made it (see kernel/liveness.ts): while that process runs, the dir is a
 * staging dir in use and cleanup leaves it alone; once the process is gone
 * it is a leftover like any other `new-*` dir, removed by the next open or
 * cleanup. `close()` removes the pool's dirs. The thread starts at the
 * first prepare, never keeps the process alive, and makes no more dirs after
 * its first error (prepare then stages its own, as it does while none is
 * ready). The thread is staging-worker.ts. The dirs of removed snapshots
 * that recycle.ts found as good as new join the pool too, and go first.
 *
 * Owns the pool's dirs until they are taken, and the placing of a staged
 * dir under its id (moveIntoPlace); never reads the metadata store (the
 * caller holds its write lock while it takes a dir and places it).
 */
import { renameSync, rmSync } from 'node:fs';
import type { Worker } from 'node:worker_threads';
import createDebug from 'debug';
import { v4 as uuidv4 } from 'uuid';
import { errnoOf } from '../kernel/libc.js';
import { isAlive, selfTag } from '../kernel/liveness.js';
import { startWorker } from '../kernel/threads.js';
import { COUNTERS, MADE, type PoolData, STOP, TAKEN, removePoolDir } from './staging-slots.cjs';

const debug = createDebug('overlay-snapshotter:staging');

/** Prefix of staging dirs under `<root>/snapshots`; they never count as snapshots. */
export const STAGING_PREFIX = 'new-';

/** Dirs kept ready: a burst of prepares takes them faster than one thread makes them. */
const POOL_SIZE = 4;
/** Recycled dirs kept at most (recycle.ts): as many as a burst of removes gives back before the prepares that take them. */
const RECYCLED_MAX = 32;

const OWNED = /^new-([1-9][0-9]*)\.([0-9]+)-/;

/**
 * A predicate telling which entries of `snapshots/` are staging dirs of a
 * live process's pool (memoised per owner: build one per scan).
 */
export function livePoolDirs(): (name: string) => boolean {
  const alive = new Map<string, boolean>();
  return (name) => {
    const m = OWNED.exec(name);
    if (m === null) return false;
    const owner = `${m[1]}.${m[2]}`;
    let live = alive.get(owner);
    if (live === undefined) {
      live = isAlive(Number(m[1]), m[2]);
      alive.set(owner, live);
    }
    return live;
  };
}

/** Empty active-snapshot staging dirs (`fs` 0755, `work` 0711), made ahead by a helper thread. */
export class StagingPool {
  private readonly counters = new Int32Array(new SharedArrayBuffer(COUNTERS * Int32Array.BYTES_PER_ELEMENT));
  private name: string | undefined;
  private worker: Worker | null | undefined;
  private exited: Promise<void> | undefined;
  /** Dirs of removed snapshots renamed into the pool (see {@link adopt}), taken first. */
  private readonly recycled: string[] = [];
  private adopted = 0;
  private closed = false;

  /**
   * @param snapshotsDir `<root>/snapshots`.
   * @param umaskClean whether mkdir's mode survives the umask (else `fs` is chmod'ed).
   */
  constructor(
    private readonly snapshotsDir: string,
    private readonly umaskClean: boolean,
  ) {}

  /** A ready staging dir, now the caller's, or undefined when none is ready (the first call starts the thread). */
  take(): string | undefined {
    const recycled = this.recycled.pop();
    if (recycled !== undefined) return recycled;
    if (this.worker === undefined) this.start();
    if (this.worker === null) return undefined;
    const s = this.counters;
    const taken = s[TAKEN]!;
    if (Atomics.load(s, MADE) === taken) return undefined;
    Atomics.store(s, TAKEN, taken + 1);
    Atomics.notify(s, TAKEN);
    return `${this.base}-${taken}`;
  }

  /** Whether {@link adopt} would take a dir now. */
  get adopting(): boolean {
    return !this.closed && this.recycled.length < RECYCLED_MAX;
  }

  /**
   * Renames `dir`, an emptied snapshot dir that reads exactly as a pool dir
   * (recycle.ts checked it), into the pool, named as the pool's own so that
   * cleanup leaves it alone while this process runs. False when the pool
   * takes no more or the rename fails: the caller then deletes `dir`.
   */
  adopt(dir: string): boolean {
    if (!this.adopting) return false;
    const name = `${this.base}-r${this.adopted++}`;
    try {
      renameSync(dir, name);
    } catch (err) {
      debug('not recycling %s: %s', dir, (err as Error).message);
      return false;
    }
    this.recycled.push(name);
    return true;
  }

  /** What the pool's dirs are named after: `new-<pid>.<start>-<uuid>`, this process's (see {@link livePoolDirs}). */
  private get base(): string {
    if (this.name === undefined) {
      const tag = selfTag();
      this.name = `${this.snapshotsDir}/${STAGING_PREFIX}${tag.pid}.${tag.start ?? 0}-${uuidv4()}`;
    }
    return this.name;
  }

  private start(): void {
    try {
      const workerData: PoolData = { counters: this.counters.buffer as SharedArrayBuffer, base: this.base, size: POOL_SIZE, umaskClean: this.umaskClean };
      const worker = startWorker(new URL('./staging-worker.cjs', import.meta.url), { workerData });
      worker.unref();
      worker.on('message', (message: string) => debug('staging pool makes no more dirs: %s', message));
      worker.on('error', (err) => debug('staging pool thread failed: %s', err.message));
      this.exited = new Promise((resolve) => worker.once('exit', () => resolve()));
      void this.exited.then(() => {
        if (this.worker === worker) this.worker = null;
      });
      this.worker = worker;
    } catch (err) {
      debug('no staging pool thread: %s', (err as Error).message);
      this.worker = null;
    }
  }

  /** Stops the thread, which removes every dir not taken, removes the recycled dirs, and waits for it. */
  async close(): Promise<void> {
    this.closed = true;
    for (const dir of this.recycled.splice(0)) removePoolDir(dir);
    const exited = this.exited;
    // Waited for: it must keep the event loop alive until then.
    this.worker?.ref();
    this.worker = null;
    Atomics.store(this.counters, STOP, 1);
    Atomics.notify(this.counters, TAKEN);
    await exited;
  }
}

/**
 * Renames a staging dir to its id. A dir already there can only be the
 * leftover of a creation that crashed before its transaction committed
 * (the id was rolled back and is being allocated again while the caller
 * holds the write lock): it belongs to no record, so it is replaced.
 */
export function moveIntoPlace(staging: string, target: string): void {
  try {
    renameSync(staging, target);
  } catch (err) {
    const code = errnoOf(err);
    if (code !== 'ENOTEMPTY' && code !== 'EEXIST') throw err;
    debug('replacing %s, left by a creation that did not commit', target);
    rmSync(target, { recursive: true, force: true });
    renameSync(staging, target);
  }
}
