/**
 * The tables of the metadata store and how their rows read: the schema
 * migrations (`PRAGMA user_version` counts those applied) and the codecs
 * between SQLite's raw rows and {@link Row} / {@link Record_}. Owns no
 * connection and no query of its own besides the migrations; knows no
 * paths and no kernel.
 */
import type Database from 'better-sqlite3';
import createDebug from 'debug';
import { UnavailableError } from '../model/errors.js';
import type { Record_, Row } from '../model/record.js';
import type { Kind } from '../model/types.js';

const debug = createDebug('overlay-snapshotter:store');

/** Schema migrations; `PRAGMA user_version` is the number applied. Append only. */
export const MIGRATIONS: readonly string[] = [
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
  // 3: the nanoseconds past \`created\`'s and \`updated\`'s millisecond (0..999999), so that
  // times keep the clock's precision. The millisecond columns stay what prune filters on.
  // ADD COLUMN with a constant default rewrites no row: records made before read 0.
  `ALTER TABLE snapshots ADD COLUMN created_ns INTEGER NOT NULL DEFAULT 0;
   ALTER TABLE snapshots ADD COLUMN updated_ns INTEGER NOT NULL DEFAULT 0;`,
];

export const KIND_CODE: Record<Kind, number> = { view: 0, active: 1, committed: 2 };
const KIND_NAME: readonly Kind[] = ['view', 'active', 'committed'];

export type RawRow = [number, string, number, number | null, number, number, number, number, number, number];

export const ROW_COLUMNS = 's.id, s.key, s.kind, s.parent, s.created, s.updated, s.size, s.inodes, s.created_ns, s.updated_ns';

export function toRow(r: RawRow): Row {
  return {
    id: r[0],
    key: r[1],
    kind: KIND_NAME[r[2]]!,
    parent: r[3],
    created: r[4],
    createdNanos: r[8],
    updated: r[5],
    updatedNanos: r[9],
    size: r[6],
    inodes: r[7],
  };
}

/** A raw row followed by its parent's key and its labels as a JSON object (`json_group_object`). */
export type RawFull = [...RawRow, string | null, string | null];

/**
 * The columns of a record with its parent's name and its labels in one
 * statement: one read (one pair of WAL read locks) instead of three.
 */
export const FULL_COLUMNS = `${ROW_COLUMNS}, p.key, (SELECT json_group_object(l.key, l.value) FROM labels l WHERE l.snapshot = s.id)`;
export const FULL_FROM = 'snapshots s LEFT JOIN snapshots p ON p.id = s.parent';

export function toRecord(r: RawFull): Record_ {
  return {
    id: r[0],
    key: r[1],
    kind: KIND_NAME[r[2]]!,
    parent: r[3],
    created: r[4],
    createdNanos: r[8],
    updated: r[5],
    updatedNanos: r[9],
    size: r[6],
    inodes: r[7],
    parentName: r[10],
    // JSON.parse makes own properties, `__proto__` included, as setLabel does.
    labels: r[11] === null || r[11] === '{}' ? {} : (JSON.parse(r[11]) as Record<string, string>),
  };
}

/** A caller's own copy of a cached record (the labels object is theirs to change). */
export function copyRecord(r: Record_): Record_ {
  return {
    id: r.id,
    key: r.key,
    kind: r.kind,
    parent: r.parent,
    created: r.created,
    createdNanos: r.createdNanos,
    updated: r.updated,
    updatedNanos: r.updatedNanos,
    size: r.size,
    inodes: r.inodes,
    parentName: r.parentName,
    labels: { ...r.labels },
  };
}

export function copyRow(r: Row): Row {
  return {
    id: r.id,
    key: r.key,
    kind: r.kind,
    parent: r.parent,
    created: r.created,
    createdNanos: r.createdNanos,
    updated: r.updated,
    updatedNanos: r.updatedNanos,
    size: r.size,
    inodes: r.inodes,
  };
}

/** Sort key for a UTF-16 code unit such that code-unit order becomes code-point (= UTF-8 byte) order. */
function unitRank(u: number): number {
  return u < 0xd800 ? u : u < 0xe000 ? u + 0x2000 : u - 0x800;
}

/** Orders records by key bytewise (UTF-8), as SQLite's BINARY collation and containerd's bolt buckets do. */
export function byKey(a: Record_, b: Record_): number {
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

/** Applies pending migrations; returns true when the file had no schema at all. */
export function migrate(db: Database.Database, file: string): boolean {
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
