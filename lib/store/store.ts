/**
 * The metadata store: one SQLite file per root, in WAL mode, so that several
 * processes can share one root (each mutation is one `BEGIN IMMEDIATE`
 * transaction; readers never block writers). Every mutating call of the
 * snapshotter is durable when it returns: SQLite runs with
 * `synchronous=NORMAL` (the WAL is synced around checkpoints) and
 * {@link Store.durableNow} or {@link Store.durable} syncs the WAL after
 * commits (wal-sync.ts), which together is what `synchronous=FULL` does; the
 * second runs the sync on the thread pool, so that a caller can delete
 * directories meanwhile. Reads outside transactions go through the read
 * cache (read-cache.ts); the tables and their codecs are in schema.ts.
 *
 * Owns the connection, the queries and the transactions. The store knows no
 * paths and no kernel: callers that must do directory work inside a
 * transaction (staging a new snapshot) pass a callback that runs while the
 * write lock is held. Of lib/kernel/ it may use the C library handle alone
 * (wal-header.ts maps the WAL index), never mounts, probes or the tree.
 */
import Database from 'better-sqlite3';
import createDebug from 'debug';
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
import type { Record_, Row, WallTime } from '../model/record.js';
import type { Kind } from '../model/types.js';
import { ownLabel } from '../model/validate.js';
import { ReadCache } from './read-cache.js';
import {
  FULL_COLUMNS,
  FULL_FROM,
  KIND_CODE,
  MIGRATIONS,
  ROW_COLUMNS,
  type RawFull,
  type RawRow,
  byKey,
  copyRecord,
  copyRow,
  migrate,
  toRecord,
  toRow,
} from './schema.js';
import { WalHeader } from './wal-header.js';
import { WalSync } from './wal-sync.js';
import { WriterLock } from './writer-lock.js';

const debug = createDebug('overlay-snapshotter:store');

export interface CreateRequest {
  key: string;
  kind: 'active' | 'view';
  parent: string;
  labels: Readonly<Record<string, string>>;
  now: WallTime;
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
  /** The WAL-index header, mapped: whether anything was committed since it was last read. */
  private readonly header: WalHeader | undefined;
  /** Read caches, valid while the header is unchanged and used only outside transactions. */
  private readonly reads: ReadCache;
  /** The sync of the WAL after commits (Store.durable). */
  private readonly sync: WalSync;
  private readonly writer: WriterLock;
  /** Transaction runners made once: `db.transaction()` per call costs more than a cached read. */
  private readonly inTransaction: Database.Transaction<(fn: () => unknown) => unknown>;

  // Prepared statements: hot paths (prepare, commit, stat, mounts) use these.
  private readonly sGet: Database.Statement<[string], RawRow>;
  private readonly sParentOf: Database.Statement<[number], [number | null, number]>;
  private readonly sHasChild: Database.Statement<[number], [number]>;
  private readonly sCountChildren: Database.Statement<[number], [number]>;
  private readonly sInsert: Database.Statement<[string, number, number | null, number, number, number, number]>;
  private readonly sInsertLabel: Database.Statement<[number, string, string]>;
  private readonly sDeleteLabels: Database.Statement<[number]>;
  private readonly sDelete: Database.Statement<[number]>;
  private readonly sDeleteMark: Database.Statement<[number]>;
  private readonly sCommit: Database.Statement<[string, number, number, number, number, number, number, number]>;
  private readonly sTouch: Database.Statement<[number, number, number]>;
  private readonly sIds: Database.Statement<[], [number]>;
  private readonly sRecord: Database.Statement<[string], RawFull>;
  private readonly sRecordById: Database.Statement<[number], RawFull>;
  private readonly sAllRecords: Database.Statement<[], RawFull>;
  private readonly sLabelEquals: Database.Statement<[string, string], number>;
  private readonly sLabelPresent: Database.Statement<[string], number>;

  private constructor(file: string, db: Database.Database, busyTimeout: number) {
    this.file = file;
    this.db = db;
    this.writer = new WriterLock(`${file}-lock`, busyTimeout);
    this.header = WalHeader.map(file);
    this.sync = new WalSync(file, this.header, db);
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
    this.sInsert = db.prepare('INSERT INTO snapshots (key, kind, parent, created, created_ns, updated, updated_ns) VALUES (?, ?, ?, ?, ?, ?, ?)');
    this.sInsertLabel = db.prepare('INSERT INTO labels (snapshot, key, value) VALUES (?, ?, ?)');
    this.sDeleteLabels = db.prepare('DELETE FROM labels WHERE snapshot = ?');
    this.sDelete = db.prepare('DELETE FROM snapshots WHERE id = ?');
    this.sDeleteMark = db.prepare('DELETE FROM prune_marks WHERE snapshot = ?');
    this.sCommit = db.prepare(
      `UPDATE snapshots SET key = ?, kind = ${KIND_CODE.committed}, created = ?, created_ns = ?, updated = ?, updated_ns = ?, size = ?, inodes = ? WHERE id = ?`,
    );
    this.sTouch = db.prepare('UPDATE snapshots SET updated = ?, updated_ns = ? WHERE id = ?');
    this.sIds = db.prepare<[], [number]>('SELECT id FROM snapshots').raw();
    this.reads = new ReadCache(file, db, this.header, this.sRecord);
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
      const store = new Store(file, db, busyTimeout);
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
    return this.sync.durable();
  }

  /**
   * {@link durable} on this thread, for calls that have nothing to do
   * meanwhile: a thread-pool round trip costs more than it would overlap.
   * @throws UnavailableError when the sync fails.
   */
  durableNow(): void {
    this.sync.durableNow();
  }

  /** Whether a {@link durable} sync is running (or queued): a commit made now can share the next one. */
  get syncing(): boolean {
    return this.sync.busy;
  }

  close(): void {
    this.sync.close();
    this.writer.close();
    // Unmapped before SQLite closes: its close may delete the shm file.
    this.header?.unmap();
    this.reads.close();
    if (this.db.open) this.db.close();
  }

  /** Runs `fn` in one BEGIN IMMEDIATE transaction and translates SQLite errors. */
  private write<T>(fn: () => T): T {
    this.writer.acquire();
    try {
      this.reads.endRead();
      return this.inTransaction.immediate(fn) as T;
    } catch (err) {
      throw translate(err, this.file);
    } finally {
      this.writer.release();
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

  /** The record of `key` (shared: callers copy what they hand out), from the cache when current. */
  private cachedRecord(key: string): Record_ | undefined {
    try {
      return this.reads.record(key);
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

  /** The value of label `name` of snapshot `key` (undefined when either is missing), with no copy of the record. Hot: commit. */
  label(key: string, name: string): string | undefined {
    const labels = this.cachedRecord(key)?.labels;
    return labels === undefined ? undefined : ownLabel(labels, name);
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

  /**
   * A record, its labels and its parent chain, read consistently. The
   * labels are shared with the read cache: read them, never change them.
   * Hot: mounts (no statement when cached).
   */
  rowWithChain(key: string): { row: Row; labels: Readonly<Record<string, string>>; chain: number[] } | undefined {
    const rec = this.cachedRecord(key);
    if (rec === undefined) return undefined;
    // Committed links never change, so a chain made only of cached links
    // belongs to this record whenever the record itself is current.
    const chain = this.cachedChain(rec.parent);
    if (chain !== undefined) return { row: copyRow(rec), labels: rec.labels, chain };
    return this.read(() => {
      const found = this.recordOf(key);
      return found === undefined ? undefined : { row: found, labels: found.labels, chain: this.chain(found.parent) };
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
      const now = req.now;
      const id = Number(this.sInsert.run(req.key, KIND_CODE[req.kind], parentId, now.ms, now.ns, now.ms, now.ns).lastInsertRowid);
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
  commit(req: { name: string; key: string; id: number; labels: Readonly<Record<string, string>>; size: number; inodes: number; now: WallTime }): void {
    this.write(() => {
      const row = this.commitTarget(req.name, req.key);
      if (row.id !== req.id) {
        throw new NotFoundError(`snapshot ${q(req.key)} was removed and recreated while it was being committed; commit the new one again`);
      }
      const now = req.now;
      this.sCommit.run(req.name, now.ms, now.ns, now.ms, now.ns, req.size, req.inodes, row.id);
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
   * returns the new ones (it may throw to abort). Bumps `updated` to `now`,
   * or to `created` should the clock have been set back since: an updated
   * time never precedes the created one.
   */
  updateLabels(key: string, mutate: (current: Record<string, string>) => Record<string, string>, now: WallTime): Record_ {
    return this.write(() => {
      const current = this.recordOf(key);
      if (current === undefined) throw new NotFoundError(`snapshot ${q(key)} not found; nothing to update`);
      const next = mutate(current.labels);
      this.sDeleteLabels.run(current.id);
      for (const [k, v] of Object.entries(next)) this.sInsertLabel.run(current.id, k, v);
      const behind = now.ms < current.created || (now.ms === current.created && now.ns < current.createdNanos);
      const ms = behind ? current.created : now.ms;
      const ns = behind ? current.createdNanos : now.ns;
      this.sTouch.run(ms, ns, current.id);
      return { ...current, labels: next, updated: ms, updatedNanos: ns };
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
    return this.reads.records(() => this.sAllRecords.all().map(toRecord));
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

