/**
 * The metadata store: one SQLite file per root, in WAL mode, so that several
 * processes can share one root (each mutation is one `BEGIN IMMEDIATE`
 * transaction; readers never block writers). Every mutating call of the
 * snapshotter is durable when it returns: SQLite runs with
 * `synchronous=NORMAL` (the WAL is synced around checkpoints) and
 * {@link Store.durableNow} or {@link Store.durable} syncs the WAL after
 * commits, which together is what `synchronous=FULL` does; the second runs
 * the sync on the thread pool, so that a caller can delete directories
 * meanwhile.
 *
 * The store knows no paths and no kernel: callers that must do directory
 * work inside a transaction (staging a new snapshot) pass a callback that
 * runs while the write lock is held.
 */
import { closeSync, fdatasync, fdatasyncSync, openSync, readdirSync, statSync } from 'node:fs';
import Database from 'better-sqlite3';
import createDebug from 'debug';
import koffi from 'koffi';
import {
  AlreadyExistsError,
  FailedPreconditionError,
  InvalidArgumentError,
  NotFoundError,
  SnapshotterError,
  UnavailableError,
  q,
} from '../model/errors.js';
import type { Filter, Selector } from '../model/filters.js';
import type { Kind } from '../model/types.js';
import { libc as loadLibc } from '../kernel/libc.js';

const debug = createDebug('overlay-snapshotter:store');

/** Schema migrations; `PRAGMA user_version` is the number applied. Append only. */
const MIGRATIONS: readonly string[] = [
  `CREATE TABLE snapshots (
     id       INTEGER PRIMARY KEY AUTOINCREMENT,
     key      TEXT    NOT NULL UNIQUE,
     kind     INTEGER NOT NULL,
     parent   INTEGER REFERENCES snapshots(id),
     created  INTEGER NOT NULL,
     updated  INTEGER NOT NULL,
     size     INTEGER NOT NULL DEFAULT 0,
     inodes   INTEGER NOT NULL DEFAULT 0
   );
   CREATE INDEX snapshots_parent ON snapshots(parent) WHERE parent IS NOT NULL;
   CREATE TABLE labels (
     snapshot INTEGER NOT NULL REFERENCES snapshots(id),
     key      TEXT    NOT NULL,
     value    TEXT    NOT NULL,
     PRIMARY KEY (snapshot, key)
   ) WITHOUT ROWID;
   CREATE INDEX labels_key_value ON labels(key, value);
   CREATE TABLE meta (
     key   TEXT PRIMARY KEY,
     value TEXT NOT NULL
   ) WITHOUT ROWID;`,
  // 2: marks of two-phase prune (when a snapshot was first found unreferenced).
  `CREATE TABLE prune_marks (
     snapshot INTEGER PRIMARY KEY REFERENCES snapshots(id),
     marked   INTEGER NOT NULL
   );`,
];

const KIND_CODE: Record<Kind, number> = { view: 0, active: 1, committed: 2 };
const KIND_NAME: readonly Kind[] = ['view', 'active', 'committed'];

/** A snapshot record as stored. Times are milliseconds since the epoch. */
export interface Row {
  readonly id: number;
  readonly key: string;
  readonly kind: Kind;
  readonly parent: number | null;
  readonly created: number;
  readonly updated: number;
  readonly size: number;
  readonly inodes: number;
}

/** A record with its parent's name and its labels. */
export interface Record_ extends Row {
  readonly parentName: string | null;
  readonly labels: Record<string, string>;
}

export interface CreateRequest {
  key: string;
  kind: 'active' | 'view';
  parent: string;
  labels: Readonly<Record<string, string>>;
  now: number;
  /** An input problem that semantics.md orders after the parent checks. */
  lateError?: Error | undefined;
}

/**
 * Directory work of a creation, run with the write lock held: `stage`
 * after the checks and before the record is inserted, `place` after the
 * insert and before the commit. If either throws, nothing is recorded.
 */
export interface StageHooks {
  stage(parentIds: number[]): void;
  place(id: number, parentIds: number[]): void;
}

type RawRow = [number, string, number, number | null, number, number, number, number];
type RawRecord = [...RawRow, string | null];

const ROW_COLUMNS = 's.id, s.key, s.kind, s.parent, s.created, s.updated, s.size, s.inodes';

function toRow(r: RawRow | RawRecord): Row {
  return {
    id: r[0],
    key: r[1],
    kind: KIND_NAME[r[2]]!,
    parent: r[3],
    created: r[4],
    updated: r[5],
    size: r[6],
    inodes: r[7],
  };
}

/** A raw record followed by its labels as a JSON object (`json_group_object`). */
type RawFull = [...RawRecord, string | null];

/**
 * The columns of a record with its parent's name and its labels in one
 * statement: one read (one pair of WAL read locks) instead of three.
 */
const FULL_COLUMNS = `${ROW_COLUMNS}, p.key, (SELECT json_group_object(l.key, l.value) FROM labels l WHERE l.snapshot = s.id)`;
const FULL_FROM = 'snapshots s LEFT JOIN snapshots p ON p.id = s.parent';

function toRecord(r: RawFull): Record_ {
  return {
    id: r[0],
    key: r[1],
    kind: KIND_NAME[r[2]]!,
    parent: r[3],
    created: r[4],
    updated: r[5],
    size: r[6],
    inodes: r[7],
    parentName: r[8],
    // JSON.parse makes own properties, `__proto__` included, as setLabel does.
    labels: r[9] === null || r[9] === '{}' ? {} : (JSON.parse(r[9]) as Record<string, string>),
  };
}

/** A caller's own copy of a cached record (the labels object is theirs to change). */
function copyRecord(r: Record_): Record_ {
  return {
    id: r.id,
    key: r.key,
    kind: r.kind,
    parent: r.parent,
    created: r.created,
    updated: r.updated,
    size: r.size,
    inodes: r.inodes,
    parentName: r.parentName,
    labels: { ...r.labels },
  };
}

function copyRow(r: Row): Row {
  return { id: r.id, key: r.key, kind: r.kind, parent: r.parent, created: r.created, updated: r.updated, size: r.size, inodes: r.inodes };
}

/** Sort key for a UTF-16 code unit such that code-unit order becomes code-point (= UTF-8 byte) order. */
function unitRank(u: number): number {
  return u < 0xd800 ? u : u < 0xe000 ? u + 0x2000 : u - 0x800;
}

/** Orders records by key bytewise (UTF-8), as SQLite's BINARY collation and containerd's bolt buckets do. */
function byKey(a: Record_, b: Record_): number {
  const x = a.key;
  const y = b.key;
  const n = Math.min(x.length, y.length);
  for (let i = 0; i < n; i++) {
    const cx = x.charCodeAt(i);
    const cy = y.charCodeAt(i);
    if (cx !== cy) return unitRank(cx) - unitRank(cy);
  }
  return x.length - y.length;
}

const DONE: Promise<void> = Promise.resolve();

/** Records kept in memory at most; a bigger store is read from SQLite each time. */
const CACHE_LIMIT = 200_000;

type Libc = { mmap: (...args: unknown[]) => unknown; munmap: (...args: unknown[]) => number };
let libc: Libc | undefined;

/**
 * The WAL-index header of a store (the first 48 bytes of `<db>-shm`, in
 * SQLite's documented wal-index format, https://www.sqlite.org/walformat.html),
 * mapped read-only. Every commit by any connection of any process rewrites
 * it (frame count, change counter, checksums; salts on a WAL restart), so
 * while it reads the same, nothing was committed and what was read before
 * is still current. Checking it is a few memory loads, where asking SQLite
 * costs a read transaction (two fcntl locks on the shm file, about 2.5 µs,
 * more than the rest of a `stat`).
 */
class WalHeader {
  private readonly seen = new Int32Array(12);
  private words: Int32Array | undefined;

  private constructor(
    private readonly address: unknown,
    words: Int32Array,
  ) {
    this.words = words;
  }

  /**
   * Maps the header of `file`'s WAL index through SQLite's own descriptor
   * of the shm file, or returns undefined (then nothing is cached). Opening
   * and closing a descriptor of our own would drop every fcntl lock this
   * process holds on the file (POSIX locks are per process and per file),
   * SQLite's included, and let another process reinitialise the shm under
   * us.
   */
  static map(file: string): WalHeader | undefined {
    try {
      libc ??= (() => {
        const lib = loadLibc();
        return {
          mmap: lib.func('void *mmap(void *addr, size_t length, int prot, int flags, int fd, long offset)') as Libc['mmap'],
          munmap: lib.func('int munmap(void *addr, size_t length)') as Libc['munmap'],
        };
      })();
      const shm = statSync(`${file}-shm`, { throwIfNoEntry: false });
      // SQLite sizes the shm file before it writes the header; mapping past its end would fault.
      if (shm === undefined || shm.size < 4096) return undefined;
      let fd: number | undefined;
      for (const name of readdirSync('/proc/self/fd')) {
        const st = statSync(`/proc/self/fd/${name}`, { throwIfNoEntry: false });
        if (st !== undefined && st.dev === shm.dev && st.ino === shm.ino) {
          fd = Number(name);
          break;
        }
      }
      if (fd === undefined) return undefined;
      const address = libc.mmap(null, 4096, 1 /* PROT_READ */, 1 /* MAP_SHARED */, fd, 0);
      if (address === null || BigInt.asUintN(64, BigInt(koffi.address(address))) === 0xffffffffffffffffn) return undefined;
      return new WalHeader(address, new Int32Array(koffi.view(address, 48)));
    } catch (err) {
      debug('not caching reads of %s: %s', file, (err as Error).message);
      return undefined;
    }
  }

  /** True when the header differs from the one seen at the previous call (a commit happened since). */
  changed(): boolean {
    const words = this.words!;
    const seen = this.seen;
    let changed = false;
    for (let i = 0; i < 12; i++) {
      const w = words[i]!;
      if (w !== seen[i]) {
        seen[i] = w;
        changed = true;
      }
    }
    return changed;
  }

  /** True when the header differs from `copy` (a commit happened since `copy` was taken). */
  differsFrom(copy: Int32Array): boolean {
    const words = this.words!;
    for (let i = 0; i < 12; i++) if (words[i] !== copy[i]) return true;
    return false;
  }

  /** Copies the current header into `copy`. */
  copyTo(copy: Int32Array): void {
    copy.set(this.words!);
  }

  unmap(): void {
    if (this.words === undefined) return;
    this.words = undefined;
    libc!.munmap(this.address, 4096);
  }
}

function kindLabel(kind: Kind): string {
  return kind === 'active' ? 'an active snapshot' : kind === 'view' ? 'a view' : 'a committed snapshot';
}

/** Translates SQLite failures into typed errors; typed errors pass through. */
function translate(err: unknown, file: string): Error {
  if (err instanceof SnapshotterError) return err;
  const code = (err as { code?: unknown }).code;
  if (typeof code === 'string' && code.startsWith('SQLITE_')) {
    if (code.startsWith('SQLITE_BUSY') || code.startsWith('SQLITE_LOCKED')) {
      return new UnavailableError(`metadata store ${file} is locked by another process for too long; retry, or raise the \`busyTimeout\` option`, { cause: err });
    }
    if (code.startsWith('SQLITE_CORRUPT') || code === 'SQLITE_NOTADB') {
      return new UnavailableError(`metadata store ${file} is damaged (${code}); restore it from a backup, it is never reset automatically`, { cause: err });
    }
    if (code.startsWith('SQLITE_READONLY') || code.startsWith('SQLITE_CANTOPEN') || code.startsWith('SQLITE_IOERR') || code === 'SQLITE_FULL' || code.startsWith('SQLITE_PERM')) {
      return new UnavailableError(`metadata store ${file} cannot be written (${code}): ${(err as Error).message}; check the disk and the permissions of the root`, { cause: err });
    }
  }
  return err as Error;
}

/**
 * Equality or presence selectors that an index can answer, for the walk
 * planner. As in containerd, everything after `labels` joined with `.` is
 * the label key, and path parts after `name` are ignored.
 */
function indexable(selector: Selector): boolean {
  const field = selector.fieldpath[0];
  if (field === 'labels') return selector.op === '==' || selector.op === 'present';
  return field === 'name' && selector.op === '==';
}

export class Store {
  readonly file: string;
  /** True when this open created the schema (a new or empty file). */
  fresh = false;
  private readonly db: Database.Database;
  /** Parent of each committed snapshot seen. Committed parents never change and ids are never reused, so this never goes stale. */
  private readonly committedParent = new Map<number, number | null>();
  /**
   * Read caches, valid while the WAL-index header is unchanged (see
   * {@link WalHeader}) and used only outside transactions: records by key
   * (stat, mounts, usage) and every record in key order (walk).
   */
  private readonly header: WalHeader | undefined;
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
  private readonly cache = new Map<string, Record_>();
  private all: Record_[] | undefined;
  /** Transaction runners made once: `db.transaction()` per call costs more than a cached read. */
  private readonly inTransaction: Database.Transaction<(fn: () => unknown) => unknown>;
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

  // Prepared statements: hot paths (prepare, commit, stat, mounts) use these.
  private readonly sGet: Database.Statement<[string], RawRow>;
  private readonly sParentOf: Database.Statement<[number], [number | null, number]>;
  private readonly sHasChild: Database.Statement<[number], [number]>;
  private readonly sCountChildren: Database.Statement<[number], [number]>;
  private readonly sInsert: Database.Statement<[string, number, number | null, number, number]>;
  private readonly sInsertLabel: Database.Statement<[number, string, string]>;
  private readonly sDeleteLabels: Database.Statement<[number]>;
  private readonly sDelete: Database.Statement<[number]>;
  private readonly sDeleteMark: Database.Statement<[number]>;
  private readonly sCommit: Database.Statement<[string, number, number, number, number, number]>;
  private readonly sTouch: Database.Statement<[number, number]>;
  private readonly sIds: Database.Statement<[], [number]>;
  private readonly sRecord: Database.Statement<[string], RawFull>;
  private readonly sRecordById: Database.Statement<[number], RawFull>;
  private readonly sAllRecords: Database.Statement<[], RawFull>;
  private readonly sLabelEquals: Database.Statement<[string, string], number>;
  private readonly sLabelPresent: Database.Statement<[string], number>;

  private constructor(file: string, db: Database.Database) {
    this.file = file;
    this.db = db;
    this.header = WalHeader.map(file);
    if (this.header !== undefined) {
      try {
        this.walFd = openSync(`${file}-wal`, 'r');
        // Everything committed so far was synced by FULL; from now on durable() syncs.
        db.pragma('synchronous = NORMAL');
        this.header.copyTo(this.synced);
      } catch (err) {
        debug('syncing every commit on the main thread: cannot open the WAL of %s: %s', file, (err as Error).message);
      }
    }
    this.inTransaction = db.transaction((fn: () => unknown) => fn());
    this.sRecord = db.prepare<[string], RawFull>(`SELECT ${FULL_COLUMNS} FROM ${FULL_FROM} WHERE s.key = ?`).raw();
    this.sRecordById = db.prepare<[number], RawFull>(`SELECT ${FULL_COLUMNS} FROM ${FULL_FROM} WHERE s.id = ?`).raw();
    this.sAllRecords = db.prepare<[], RawFull>(`SELECT ${FULL_COLUMNS} FROM ${FULL_FROM} ORDER BY s.key`).raw();
    this.sLabelEquals = db.prepare<[string, string], number>('SELECT snapshot FROM labels WHERE key = ? AND value = ?').pluck();
    this.sLabelPresent = db.prepare<[string], number>('SELECT snapshot FROM labels WHERE key = ?').pluck();
    this.sGet = db.prepare<[string], RawRow>(`SELECT ${ROW_COLUMNS} FROM snapshots s WHERE s.key = ?`).raw();
    this.sParentOf = db.prepare<[number], [number | null, number]>('SELECT parent, kind FROM snapshots WHERE id = ?').raw();
    this.sHasChild = db.prepare<[number], [number]>('SELECT 1 FROM snapshots WHERE parent = ? LIMIT 1').raw();
    this.sCountChildren = db.prepare<[number], [number]>('SELECT count(*) FROM snapshots WHERE parent = ?').raw();
    this.sInsert = db.prepare('INSERT INTO snapshots (key, kind, parent, created, updated) VALUES (?, ?, ?, ?, ?)');
    this.sInsertLabel = db.prepare('INSERT INTO labels (snapshot, key, value) VALUES (?, ?, ?)');
    this.sDeleteLabels = db.prepare('DELETE FROM labels WHERE snapshot = ?');
    this.sDelete = db.prepare('DELETE FROM snapshots WHERE id = ?');
    this.sDeleteMark = db.prepare('DELETE FROM prune_marks WHERE snapshot = ?');
    this.sCommit = db.prepare(
      `UPDATE snapshots SET key = ?, kind = ${KIND_CODE.committed}, created = ?, updated = ?, size = ?, inodes = ? WHERE id = ?`,
    );
    this.sTouch = db.prepare('UPDATE snapshots SET updated = ? WHERE id = ?');
    this.sIds = db.prepare<[], [number]>('SELECT id FROM snapshots').raw();
  }

  /**
   * Opens (creating if needed) the store at `file` and applies pending
   * migrations. A damaged or foreign file is reported, never reset.
   */
  static open(file: string, busyTimeout: number): Store {
    let db: Database.Database | undefined;
    try {
      db = new Database(file, { timeout: busyTimeout });
      // WAL: one fsync per commit and readers that never block the writer.
      db.pragma('journal_mode = WAL');
      db.pragma('synchronous = FULL');
      const fresh = migrate(db, file);
      const store = new Store(file, db);
      store.fresh = fresh;
      debug('opened %s (schema %d)', file, MIGRATIONS.length);
      return store;
    } catch (err) {
      db?.close();
      throw translate(err, file);
    }
  }

  /**
   * Resolves once everything committed so far is on disk. Commits run with
   * `synchronous=NORMAL`, which syncs the WAL only around checkpoints; this
   * adds the sync of the WAL after commits that FULL would do inside each,
   * as one `fdatasync(2)` on the thread pool, so that the caller can do
   * other disk work (deleting a removed snapshot's dirs) while it runs.
   * Commits made while a sync runs share the next one (group commit).
   * Every mutating call of the snapshotter awaits this (or calls
   * {@link durableNow}) before returning.
   * @throws UnavailableError when the sync fails (the disk reported an
   *   I/O error: what was committed may be lost on power failure).
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

  /**
   * {@link durable} on this thread, for calls that have nothing to do
   * meanwhile: a thread-pool round trip costs more than it would overlap.
   * @throws UnavailableError when the sync fails.
   */
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
    if (this.walFd !== undefined) {
      closeSync(this.walFd);
      this.walFd = undefined;
    }
    // Unmapped before SQLite closes: its close may delete the shm file.
    this.header?.unmap();
    this.cache.clear();
    this.all = undefined;
    if (this.reader) {
      this.endRead();
      this.reader.db.close();
      this.reader = null;
    }
    if (this.db.open) this.db.close();
  }

  private openReader(): NonNullable<Store['reader']> | null {
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
  private readonly endRead = (): void => {
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

  /** Runs `fn` in one BEGIN IMMEDIATE transaction and translates SQLite errors. */
  private write<T>(fn: () => T): T {
    try {
      this.endRead();
      return this.inTransaction.immediate(fn) as T;
    } catch (err) {
      throw translate(err, this.file);
    }
  }

  /** Runs `fn` as one consistent read. */
  private read<T>(fn: () => T): T {
    try {
      return this.inTransaction.deferred(fn) as T;
    } catch (err) {
      throw translate(err, this.file);
    }
  }

  /**
   * Whether the read caches may be used now, emptying them if anything was
   * committed since they were filled. Never inside a transaction, whose
   * own uncommitted changes the header does not show.
   */
  private cacheUsable(): boolean {
    if (this.header === undefined || this.db.inTransaction) return false;
    if (this.header.changed()) {
      this.cache.clear();
      this.all = undefined;
      this.endRead();
    }
    return true;
  }

  /** The record of `key` (shared: callers copy what they hand out), from the cache when current. */
  private cachedRecord(key: string): Record_ | undefined {
    try {
      if (!this.cacheUsable()) {
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
    } catch (err) {
      throw translate(err, this.file);
    }
  }

  /** The parent chain from the committed-link cache alone, or undefined if a link is not cached. */
  private cachedChain(parent: number | null): number[] | undefined {
    const ids: number[] = [];
    for (let next = parent; next !== null; ) {
      ids.push(next);
      const up = this.committedParent.get(next);
      if (up === undefined) return undefined;
      next = up;
    }
    return ids;
  }

  private getRow(key: string): Row | undefined {
    const raw = this.sGet.get(key);
    return raw === undefined ? undefined : toRow(raw);
  }

  /** The record of `key`, or undefined. Hot: usage. */
  get(key: string): Row | undefined {
    const rec = this.cachedRecord(key);
    return rec === undefined ? undefined : copyRow(rec);
  }

  /** The record of `key` with parent name and labels, or undefined. Hot: stat (one statement, or none when cached). */
  record(key: string): Record_ | undefined {
    const rec = this.cachedRecord(key);
    return rec === undefined ? undefined : copyRecord(rec);
  }

  private recordOf(key: string): Record_ | undefined {
    const raw = this.sRecord.get(key);
    return raw === undefined ? undefined : toRecord(raw);
  }

  /**
   * Ids of the parent chain starting at `parent` (immediate parent first).
   * Committed links are cached: they are immutable while they exist.
   */
  chain(parent: number | null): number[] {
    const ids: number[] = [];
    let next = parent;
    while (next !== null) {
      ids.push(next);
      let up = this.committedParent.get(next);
      if (up === undefined) {
        const raw = this.sParentOf.get(next);
        if (raw === undefined) throw new UnavailableError(`metadata store ${this.file} is inconsistent: snapshot id ${next} is referenced as a parent but missing; run check()`);
        up = raw[0];
        if (raw[1] === KIND_CODE.committed) this.committedParent.set(next, up);
      }
      next = up;
    }
    return ids;
  }

  /** A record and its parent chain, read consistently. Hot: mounts (no statement when cached). */
  rowWithChain(key: string): { row: Row; chain: number[] } | undefined {
    const rec = this.cachedRecord(key);
    if (rec === undefined) return undefined;
    // Committed links never change, so a chain made only of cached links
    // belongs to this record whenever the record itself is current.
    const chain = this.cachedChain(rec.parent);
    if (chain !== undefined) return { row: copyRow(rec), chain };
    return this.read(() => {
      const row = this.getRow(key);
      return row === undefined ? undefined : { row, chain: this.chain(row.parent) };
    });
  }

  /**
   * Creates a record after the checks of semantics.md, in their order, then
   * runs `stage` with the write lock held; if `stage` throws, nothing is
   * recorded. Hot: prepare, view.
   */
  create(req: CreateRequest, hooks: StageHooks): { id: number; chain: number[] } {
    return this.write(() => {
      if (this.sGet.get(req.key) !== undefined) {
        throw new AlreadyExistsError(`snapshot ${q(req.key)} already exists; choose another key, or remove the existing snapshot first`);
      }
      let parentId: number | null = null;
      if (req.parent !== '') {
        const parent = this.getRow(req.parent);
        if (parent === undefined) {
          throw new NotFoundError(`parent snapshot ${q(req.parent)} not found; commit a snapshot named ${q(req.parent)} first, or pass no parent`);
        }
        if (parent.kind !== 'committed') {
          throw new InvalidArgumentError(`parent ${q(req.parent)} is ${kindLabel(parent.kind)}, not committed; only committed snapshots can be parents, so commit it first`);
        }
        parentId = parent.id;
      }
      if (req.lateError) throw req.lateError;
      const chain = this.chain(parentId);
      hooks.stage(chain);
      const id = Number(this.sInsert.run(req.key, KIND_CODE[req.kind], parentId, req.now, req.now).lastInsertRowid);
      for (const [k, v] of Object.entries(req.labels)) this.sInsertLabel.run(id, k, v);
      hooks.place(id, chain);
      return { id, chain };
    });
  }

  /**
   * Checks that `key` can be committed as `name`, in semantics.md's order
   * (name taken first), and returns the active record.
   */
  checkCommit(name: string, key: string): Row {
    return this.read(() => this.commitTarget(name, key));
  }

  private commitTarget(name: string, key: string): Row {
    if (this.sGet.get(name) !== undefined) {
      throw new AlreadyExistsError(`cannot commit ${q(key)} as ${q(name)}: a snapshot named ${q(name)} already exists; choose another name`);
    }
    const row = this.getRow(key);
    if (row === undefined) throw new NotFoundError(`snapshot ${q(key)} not found; prepare it before committing it`);
    if (row.kind !== 'active') {
      throw new FailedPreconditionError(`cannot commit ${q(key)}: it is ${kindLabel(row.kind)}; only active snapshots can be committed`);
    }
    return row;
  }

  /** Turns the active `key` (which must still be record `id`) into the committed `name`. Hot: commit. */
  commit(req: { name: string; key: string; id: number; labels: Readonly<Record<string, string>>; size: number; inodes: number; now: number }): void {
    this.write(() => {
      const row = this.commitTarget(req.name, req.key);
      if (row.id !== req.id) {
        throw new NotFoundError(`snapshot ${q(req.key)} was removed and recreated while it was being committed; commit the new one again`);
      }
      this.sCommit.run(req.name, req.now, req.now, req.size, req.inodes, row.id);
      this.sDeleteLabels.run(row.id);
      for (const [k, v] of Object.entries(req.labels)) this.sInsertLabel.run(row.id, k, v);
      if (this.committedParent.size < 1_000_000) this.committedParent.set(row.id, row.parent);
    });
  }

  /**
   * Deletes the record of `key` (which must have no children) and returns
   * it. `guard` runs after those checks with the write lock held and may
   * throw to keep the record.
   */
  remove(key: string, guard?: (row: Row) => void): Row {
    return this.write(() => {
      const row = this.getRow(key);
      if (row === undefined) throw new NotFoundError(`snapshot ${q(key)} not found; nothing to remove`);
      if (this.sHasChild.get(row.id) !== undefined) {
        const n = this.sCountChildren.get(row.id)![0];
        throw new FailedPreconditionError(
          `cannot remove ${q(key)}: ${n} snapshot${n === 1 ? '' : 's'} depend${n === 1 ? 's' : ''} on it; remove its children first`,
        );
      }
      guard?.(row);
      this.deleteRecord(row.id);
      return row;
    });
  }

  private deleteRecord(id: number): void {
    this.sDeleteLabels.run(id);
    this.sDeleteMark.run(id);
    this.sDelete.run(id);
    this.committedParent.delete(id);
  }

  /** Runs `fn` in one BEGIN IMMEDIATE transaction (nested calls become savepoints). */
  exclusive<T>(fn: () => T): T {
    return this.write(fn);
  }

  /** When each marked snapshot was first marked by a two-phase prune. */
  pruneMarks(): Map<number, number> {
    return new Map(this.db.prepare<[], [number, number]>('SELECT snapshot, marked FROM prune_marks').raw().all());
  }

  /** Deletes the records `remove` (children first), sets and clears prune marks. Call inside `exclusive`. */
  applyPrune(remove: readonly number[], mark: readonly number[], unmark: readonly number[], now: number): void {
    const ins = this.db.prepare('INSERT OR IGNORE INTO prune_marks (snapshot, marked) VALUES (?, ?)');
    for (const id of unmark) this.sDeleteMark.run(id);
    for (const id of mark) ins.run(id, now);
    for (const id of remove) {
      if (this.sHasChild.get(id) !== undefined) throw new Error(`prune plan would orphan the children of snapshot id ${id}`);
      this.deleteRecord(id);
    }
  }

  /**
   * Changes the labels of `key`: `mutate` gets the current labels and
   * returns the new ones (it may throw to abort). Bumps `updated`.
   */
  updateLabels(key: string, mutate: (current: Record<string, string>) => Record<string, string>, now: number): Record_ {
    return this.write(() => {
      const current = this.recordOf(key);
      if (current === undefined) throw new NotFoundError(`snapshot ${q(key)} not found; nothing to update`);
      const next = mutate(current.labels);
      this.sDeleteLabels.run(current.id);
      for (const [k, v] of Object.entries(next)) this.sInsertLabel.run(current.id, k, v);
      this.sTouch.run(now, current.id);
      return { ...current, labels: next, updated: now };
    });
  }

  /**
   * Every record matching `filter`, ordered by key (bytewise, like
   * containerd's bolt buckets). When every OR-clause has an equality or
   * presence selector on a label or the name, candidates come from indexes.
   */
  walk(filter: Filter): Record_[] {
    const clauses = filter.clauses;
    try {
      if (clauses.length > 0 && clauses.every((c: readonly Selector[]) => c.some(indexable))) {
        return this.read(() => this.walkIndexed(filter));
      }
      const out: Record_[] = [];
      for (const rec of this.allRecords()) {
        if (clauses.length === 0 || filter.match({ kind: rec.kind, name: rec.key, parent: rec.parentName ?? '', labels: rec.labels })) {
          out.push(copyRecord(rec));
        }
      }
      return out;
    } catch (err) {
      throw translate(err, this.file);
    }
  }

  /** Every record in key order (shared: callers copy), from the cache when current; one statement otherwise. */
  private allRecords(): Record_[] {
    const usable = this.cacheUsable();
    if (usable && this.all !== undefined) return this.all;
    const all = this.sAllRecords.all().map(toRecord);
    if (usable && all.length <= CACHE_LIMIT) this.all = all;
    return all;
  }

  /** A walk whose every OR-clause has an indexed selector: candidates from the indexes, then the full filter. */
  private walkIndexed(filter: Filter): Record_[] {
    const ids = new Set<number>();
    for (const clause of filter.clauses) {
      for (const id of this.candidates(clause.find(indexable)!)) ids.add(id);
    }
    const out: Record_[] = [];
    for (const id of ids) {
      const raw = this.sRecordById.get(id);
      if (raw === undefined) continue;
      const rec = toRecord(raw);
      if (filter.match({ kind: rec.kind, name: rec.key, parent: rec.parentName ?? '', labels: rec.labels })) out.push(rec);
    }
    return out.sort(byKey);
  }

  private candidates(selector: Selector): number[] {
    if (selector.fieldpath[0] === 'name') {
      const row = this.sGet.get(selector.value);
      return row === undefined ? [] : [row[0]];
    }
    const key = selector.fieldpath.slice(1).join('.');
    return selector.op === '==' ? this.sLabelEquals.all(key, selector.value) : this.sLabelPresent.all(key);
  }

  /**
   * Runs `fn` with the write lock held and the set of live ids, so that no
   * other process can create a snapshot (and so a staging dir) meanwhile.
   */
  withLiveIds<T>(fn: (live: ReadonlySet<number>, lastAllocated: number) => T): T {
    return this.write(() => fn(new Set(this.sIds.all().map((r) => r[0])), this.lastAllocated()));
  }

  /** The highest id ever allocated (committed); ids above it were never recorded. */
  private lastAllocated(): number {
    const row = this.db.prepare<[], [number]>("SELECT seq FROM sqlite_sequence WHERE name = 'snapshots'").raw().get();
    return row?.[0] ?? 0;
  }

  /** Every record's id, key and kind, for consistency checks. */
  allRows(): Row[] {
    return this.read(() => this.db.prepare<[], RawRow>(`SELECT ${ROW_COLUMNS} FROM snapshots s ORDER BY s.id`).raw().all().map(toRow));
  }

  getMeta(key: string): string | undefined {
    try {
      return this.db.prepare<[string], { value: string }>('SELECT value FROM meta WHERE key = ?').get(key)?.value;
    } catch (err) {
      throw translate(err, this.file);
    }
  }

  deleteMeta(key: string): void {
    this.write(() => {
      this.db.prepare('DELETE FROM meta WHERE key = ?').run(key);
    });
  }

  setMeta(key: string, value: string): void {
    this.write(() => {
      this.db.prepare('INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value').run(key, value);
    });
  }
}

/** Applies pending migrations; returns true when the file had no schema at all. */
function migrate(db: Database.Database, file: string): boolean {
  const version = db.pragma('user_version', { simple: true }) as number;
  if (version > MIGRATIONS.length) {
    throw new UnavailableError(`metadata store ${file} has schema version ${version}, newer than this library knows (${MIGRATIONS.length}); upgrade overlay-snapshotter`);
  }
  if (version === MIGRATIONS.length) return false;
  let fresh = false;
  db.transaction(() => {
    // Re-read under the write lock: another process may have migrated meanwhile.
    const current = db.pragma('user_version', { simple: true }) as number;
    fresh = current === 0;
    for (let v = current; v < MIGRATIONS.length; v++) {
      db.exec(MIGRATIONS[v]!);
      debug('migrated %s to schema %d', file, v + 1);
    }
    db.pragma(`user_version = ${MIGRATIONS.length}`);
  }).immediate();
  return fresh;
}
