/**
 * The store's read caches: records by key (stat, mounts, usage) and every
 * record in key order (walk), valid while the WAL-index header is unchanged
 * (see wal-header.ts) and used only outside transactions. Owns the cached
 * records and a second, read-only connection that answers misses; it never
 * writes, and the store's main connection stays the store's.
 */
import Database from 'better-sqlite3';
import createDebug from 'debug';
import type { Record_ } from '../model/record.js';
import { FULL_COLUMNS, FULL_FROM, type RawFull, toRecord } from './schema.js';
import type { WalHeader } from './wal-header.js';

const debug = createDebug('overlay-snapshotter:store');

/** Records kept in memory at most; a bigger store is read from SQLite each time. */
export const CACHE_LIMIT = 200_000;

/** The read caches of one store connection. */
export class ReadCache {
  private readonly cache = new Map<string, Record_>();
  private all: Record_[] | undefined;
  /**
   * A second connection, opened at the first cache miss, that answers
   * misses inside one read transaction: a burst of misses takes SQLite's
   * read locks once, not once per record. The transaction ends as soon as
   * anything is committed (by this process's next write, or when a read
   * sees the header change) and when the event loop turns, so that it
   * never holds an old snapshot, nor back checkpoints for long. Only the
   * cache reads through it. `null` when it could not be opened (misses then
   * use the main connection).
   */
  private reader: { db: Database.Database; begin: Database.Statement; end: Database.Statement; record: Database.Statement<[string], RawFull> } | null | undefined;
  /** A read transaction is open on {@link reader}. */
  private readerOpen = false;

  /**
   * @param db the store's main connection (only asked whether it is in a transaction, and for its busy timeout).
   * @param sRecord the main connection's record-by-key statement, for misses when there is no reader.
   */
  constructor(
    private readonly file: string,
    private readonly db: Database.Database,
    private readonly header: WalHeader | undefined,
    private readonly sRecord: Database.Statement<[string], RawFull>,
  ) {}

  /**
   * Whether the caches may be used now, emptying them if anything was
   * committed since they were filled. Never inside a transaction, whose
   * own uncommitted changes the header does not show.
   */
  usable(): boolean {
    if (this.header === undefined || this.db.inTransaction) return false;
    if (this.header.changed()) {
      this.cache.clear();
      this.all = undefined;
      this.endRead();
    }
    return true;
  }

  /** The record of `key` (shared: callers copy what they hand out), from the cache when current. SQLite errors are the caller's to translate. */
  record(key: string): Record_ | undefined {
    if (!this.usable()) {
      const raw = this.sRecord.get(key);
      return raw === undefined ? undefined : toRecord(raw);
    }
    let rec = this.cache.get(key);
    if (rec === undefined) {
      const raw = this.readMiss(key);
      if (raw === undefined) return undefined;
      rec = toRecord(raw);
      if (this.cache.size >= CACHE_LIMIT) this.cache.clear();
      this.cache.set(key, rec);
    }
    return rec;
  }

  /** Every record in key order (shared: callers copy), from the cache when current; `load` reads them otherwise. */
  records(load: () => Record_[]): Record_[] {
    const usable = this.usable();
    if (usable && this.all !== undefined) return this.all;
    const all = load();
    if (usable && all.length <= CACHE_LIMIT) this.all = all;
    return all;
  }

  private openReader(): NonNullable<ReadCache['reader']> | null {
    try {
      const db = new Database(this.file, { timeout: this.db.pragma('busy_timeout', { simple: true }) as number });
      this.reader = {
        db,
        begin: db.prepare('BEGIN'),
        end: db.prepare('COMMIT'),
        record: db.prepare<[string], RawFull>(`SELECT ${FULL_COLUMNS} FROM ${FULL_FROM} WHERE s.key = ?`).raw(),
      };
    } catch (err) {
      debug('no reader connection for %s: %s', this.file, (err as Error).message);
      this.reader = null;
    }
    return this.reader;
  }

  /** Ends the reader's transaction, so that it never holds back checkpoints while the process is idle. */
  readonly endRead = (): void => {
    if (!this.readerOpen) return;
    this.readerOpen = false;
    this.reader?.end.run();
  };

  /** The raw record of `key` for a cache miss (outside any transaction of the main connection). */
  private readMiss(key: string): RawFull | undefined {
    const reader = this.reader === undefined ? this.openReader() : this.reader;
    if (reader === null) return this.sRecord.get(key);
    if (!this.readerOpen) {
      // Begun after the header was last read, so its snapshot holds at least what the header showed.
      reader.begin.run();
      this.readerOpen = true;
      setImmediate(this.endRead).unref();
    }
    return reader.record.get(key);
  }

  close(): void {
    this.cache.clear();
    this.all = undefined;
    if (this.reader) {
      this.endRead();
      this.reader.db.close();
      this.reader = null;
    }
  }
}
