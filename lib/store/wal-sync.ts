/**
 * Making the store's commits durable: SQLite runs with `synchronous=NORMAL`
 * (the WAL is synced around checkpoints only), and this syncs the WAL after
 * commits, which together is what `synchronous=FULL` does, with commits
 * made while a sync runs sharing the next one (group commit). Owns the WAL
 * file's read-only descriptor and the state of the sync in flight; it
 * never writes the database and runs no query.
 */
import { closeSync, fdatasync, fdatasyncSync, openSync } from 'node:fs';
import type Database from 'better-sqlite3';
import createDebug from 'debug';
import { UnavailableError } from '../model/errors.js';
import type { WalHeader } from './wal-header.js';

const debug = createDebug('overlay-snapshotter:store');

const DONE: Promise<void> = Promise.resolve();

/** The WAL sync of one connection. */
export class WalSync {
  /**
   * The WAL file, opened read-only, that {@link durable} syncs; undefined
   * when the header or the file could not be had, and then SQLite syncs
   * each commit itself (`synchronous=FULL`). SQLite takes no locks on the
   * WAL file (its locks are on the shm file), so a descriptor of our own
   * drops none when closed.
   */
  private walFd: number | undefined;
  /** The WAL-index header when the last sync of the WAL started: while it reads the same, nothing needs syncing. */
  private readonly synced = new Int32Array(12);
  /** The sync of the WAL in flight, and the one queued after it for commits it may have missed. */
  private syncing: Promise<void> | undefined;
  private queued: Promise<void> | undefined;

  /** Takes over syncing from SQLite (`synchronous=NORMAL` on `db`) when `header` and the WAL file can be had. */
  constructor(
    private readonly file: string,
    private readonly header: WalHeader | undefined,
    db: Database.Database,
  ) {
    if (header === undefined) return;
    try {
      this.walFd = openSync(`${file}-wal`, 'r');
      // Everything committed so far was synced by FULL; from now on durable() syncs.
      db.pragma('synchronous = NORMAL');
      header.copyTo(this.synced);
    } catch (err) {
      debug('syncing every commit on the main thread: cannot open the WAL of %s: %s', file, (err as Error).message);
    }
  }

  /**
   * Resolves once everything committed so far is on disk, with one
   * `fdatasync(2)` of the WAL on the thread pool, so that the caller can do
   * other disk work meanwhile. See Store.durable.
   */
  durable(): Promise<void> {
    if (this.walFd === undefined) return DONE;
    if (this.queued !== undefined) return this.queued;
    if (!this.header!.differsFrom(this.synced)) return this.syncing ?? DONE;
    if (this.syncing === undefined) return this.startSync();
    // The sync in flight may have started before the latest commit.
    const queued = this.syncing.then(
      () => this.afterQueued(),
      () => this.afterQueued(),
    );
    this.queued = queued;
    return queued;
  }

  /** Whether a sync of the WAL is running on the thread pool (or queued after one). */
  get busy(): boolean {
    return this.syncing !== undefined || this.queued !== undefined;
  }

  /** {@link durable} on this thread. See Store.durableNow. */
  durableNow(): void {
    if (this.walFd === undefined) return;
    // Clean and no sync in flight: everything is on disk. A sync in flight
    // may not have finished: syncing again here is cheap and certain.
    if (!this.header!.differsFrom(this.synced) && this.syncing === undefined) return;
    this.header!.copyTo(this.synced);
    try {
      fdatasyncSync(this.walFd);
    } catch (err) {
      this.synced.fill(0);
      throw this.syncError(err as NodeJS.ErrnoException);
    }
  }

  private syncError(err: NodeJS.ErrnoException): UnavailableError {
    return new UnavailableError(`cannot make metadata store ${this.file} durable (${err.code ?? err.message}); check the disk`, { cause: err });
  }

  private afterQueued(): Promise<void> {
    this.queued = undefined;
    return this.durable();
  }

  private startSync(): Promise<void> {
    this.header!.copyTo(this.synced);
    const fd = this.walFd!;
    const sync = new Promise<void>((resolve, reject) => {
      fdatasync(fd, (err) => {
        if (this.syncing === sync) this.syncing = undefined;
        if (err === null) return resolve();
        // Not synced after all: the next call tries again.
        this.synced.fill(0);
        reject(this.syncError(err));
      });
    });
    this.syncing = sync;
    return sync;
  }

  close(): void {
    if (this.walFd === undefined) return;
    closeSync(this.walFd);
    this.walFd = undefined;
  }
}
