/**
 * Queueing the write transactions of several processes on one store. Each
 * write transaction takes an flock(2) on `<db>-lock` before SQLite's own
 * write lock and drops it after the commit. SQLite alone makes a writer
 * that finds the database locked sleep in its busy handler for 1, 2, 5, 10
 * … 100 ms between attempts, so that four processes sharing a root spent
 * most of a prepare asleep (p99 over 40 ms for transactions of 0.1 ms);
 * retrying this lock every 20 µs to 1 ms gets the turn within a few
 * transactions' time. It is only a queue in front of SQLite's lock, which
 * still decides: when this lock cannot be had (no lock file, a filesystem
 * without flock, a holder that does not let go within the busy timeout),
 * the transaction goes on without it.
 *
 * Owns the lock file's descriptor and nothing else; runs no query. flock
 * locks are independent of the POSIX locks SQLite takes on its own files.
 */
import { closeSync, openSync } from 'node:fs';
import { constants as osConstants } from 'node:os';
import { performance } from 'node:perf_hooks';
import createDebug from 'debug';
import koffi from 'koffi';
import { libc } from '../kernel/libc.js';

const debug = createDebug('overlay-snapshotter:store');

const LOCK_EX = 2;
const LOCK_NB = 4;
const LOCK_UN = 8;
const { EINTR, EWOULDBLOCK } = osConstants.errno;
/** First and longest pause between attempts, ms. */
const FIRST_PAUSE = 0.02;
const LONGEST_PAUSE = 1;

let flock: ((fd: number, operation: number) => number) | undefined;
const pause = new Int32Array(new SharedArrayBuffer(4));

/** The inter-process queue of one store's write transactions. */
export class WriterLock {
  private fd: number | undefined;
  /** Nesting depth of {@link acquire} (a transaction inside a transaction). */
  private depth = 0;
  private locked = false;

  /**
   * @param file the lock file (`<db>-lock`), created if missing.
   * @param timeout how long to wait for the lock, ms (the store's busy timeout).
   */
  constructor(
    file: string,
    private readonly timeout: number,
  ) {
    try {
      flock ??= libc().func('int flock(int fd, int operation)') as (fd: number, operation: number) => number;
      this.fd = openSync(file, 'a', 0o600);
    } catch (err) {
      debug('write transactions queue on SQLite alone: cannot open %s: %s', file, (err as Error).message);
    }
  }

  /** Waits for this process's turn to write (see the module's comment); pair with {@link release}. */
  acquire(): void {
    if (this.fd === undefined || this.depth++ > 0) return;
    const fd = this.fd;
    const tryLock = (): boolean | undefined => {
      if (flock!(fd, LOCK_EX | LOCK_NB) === 0) return true;
      const errno = koffi.errno();
      return errno === EWOULDBLOCK || errno === EINTR ? false : undefined;
    };
    let got = tryLock();
    if (got === false) {
      const deadline = performance.now() + this.timeout;
      for (let wait = FIRST_PAUSE; got === false && performance.now() < deadline; wait = Math.min(wait * 2, LONGEST_PAUSE)) {
        Atomics.wait(pause, 0, 0, wait);
        got = tryLock();
      }
    }
    this.locked = got === true;
    if (!this.locked) debug('writing without the writer lock (%s)', got === undefined ? `flock failed, errno ${koffi.errno()}` : 'timed out');
  }

  release(): void {
    if (this.fd === undefined || --this.depth > 0) return;
    if (this.locked) flock!(this.fd, LOCK_UN);
    this.locked = false;
  }

  close(): void {
    if (this.fd === undefined) return;
    closeSync(this.fd);
    this.fd = undefined;
  }
}
