/**
 * Schema migrations (lib/store/schema.ts) on stores made before them: the
 * nanosecond columns of migration 3 added to a store of schema 2 with its
 * records and times as they were, and a store of a newer schema refused
 * as an older library refuses it.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import Database from 'better-sqlite3';
import { type Info, Snapshotter } from '../../lib/index.js';
import { wallClock } from '../../lib/kernel/clock.js';
import { MIGRATIONS } from '../../lib/store/schema.js';
import { removeTree, tempDir } from '../helpers/fixtures.js';

interface Column {
  name: string;
  type: string;
  notnull: number;
  dflt_value: string | null;
  pk: number;
}

const columns = (db: Database.Database, table: string) =>
  (db.prepare(`SELECT name, type, "notnull", dflt_value, pk FROM pragma_table_info('${table}') ORDER BY cid`).all() as Column[]);

/** The tables of a store made by the first `n` migrations, as `pragma table_info` shows them. */
function schemaOf(n: number): Record<string, Column[]> {
  const db = new Database(':memory:');
  try {
    for (const sql of MIGRATIONS.slice(0, n)) db.exec(sql);
    const tables = db.prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name").pluck().all() as string[];
    return Object.fromEntries(tables.map((t) => [t, columns(db, t)]));
  } finally {
    db.close();
  }
}

async function infos(sn: Snapshotter): Promise<Map<string, Info>> {
  const out = new Map<string, Info>();
  await sn.walk((info) => void out.set(info.name, info));
  return out;
}

test('a store of schema 2 gains nanosecond times: its records keep their millisecond times with 0 nanoseconds, new times are whole', async () => {
  const top = tempDir();
  const root = join(top, 'root');
  const file = join(root, 'metadata.db');
  try {
    const sn = await Snapshotter.open(root);
    await sn.prepare('base-a', undefined, { labels: { k: 'v' } });
    await sn.commit('base', 'base-a');
    await sn.prepare('ctr', 'base');
    await sn.update({ name: 'ctr', labels: { x: '1' } });
    await sn.close();

    // Back to schema 2, the shape the previous migrations made: the same tables without the nanosecond columns.
    const old = new Database(file);
    old.exec('ALTER TABLE snapshots DROP COLUMN created_ns; ALTER TABLE snapshots DROP COLUMN updated_ns; PRAGMA user_version = 2;');
    assert.deepEqual(columns(old, 'snapshots'), schemaOf(2).snapshots, 'the fixture has schema 2\'s snapshots table');
    const times = new Map(
      (old.prepare('SELECT key, created, updated FROM snapshots').raw().all() as [string, number, number][]).map(([key, created, updated]) => [key, { created, updated }]),
    );
    old.close();

    const again = await Snapshotter.open(root);
    try {
      const db = new Database(file, { readonly: true });
      try {
        assert.equal(db.pragma('user_version', { simple: true }), MIGRATIONS.length);
        assert.deepEqual(Object.fromEntries(Object.keys(schemaOf(MIGRATIONS.length)).map((t) => [t, columns(db, t)])), schemaOf(MIGRATIONS.length));
      } finally {
        db.close();
      }
      const before = await infos(again);
      assert.deepEqual([...before.keys()], ['base', 'ctr']);
      for (const [name, info] of before) {
        assert.deepEqual(
          [info.created.getTime(), info.updated.getTime(), info.createdNanos, info.updatedNanos],
          [times.get(name)!.created, times.get(name)!.updated, 0, 0],
          `${name} keeps its millisecond times and reads 0 nanoseconds`,
        );
      }
      assert.deepEqual(before.get('base')!.labels, {});
      assert.deepEqual(before.get('ctr')!.labels, { x: '1' });

      const start = wallClock();
      const updated = await again.update({ name: 'ctr', labels: { x: '2' } });
      const startNs = BigInt(start.ms) * 1_000_000n + BigInt(start.ns);
      assert.ok(BigInt(updated.updated.getTime()) * 1_000_000n + BigInt(updated.updatedNanos) >= startNs, 'a new time has the clock\'s precision');
      assert.equal(updated.createdNanos, 0, 'the created time stays as it was');
      await again.prepare('next', 'base');
      const next = await again.stat('next');
      assert.equal(next.createdNanos, next.updatedNanos);
    } finally {
      await again.close();
    }
  } finally {
    await removeTree(top);
  }
});

test('a store of a newer schema is refused with ERR_UNAVAILABLE naming both versions, and left as it was', async () => {
  const top = tempDir();
  const root = join(top, 'root');
  const file = join(root, 'metadata.db');
  try {
    const sn = await Snapshotter.open(root);
    await sn.prepare('a');
    await sn.close();
    const db = new Database(file);
    db.pragma(`user_version = ${MIGRATIONS.length + 1}`);
    db.close();
    await assert.rejects(Snapshotter.open(root), (err: Error & { code?: string }) => {
      assert.equal(err.code, 'ERR_UNAVAILABLE');
      assert.match(err.message, new RegExp(`schema version ${MIGRATIONS.length + 1}, newer than this library knows \\(${MIGRATIONS.length}\\); upgrade overlay-snapshotter`));
      return true;
    });
    const after = new Database(file, { readonly: true });
    try {
      assert.equal(after.pragma('user_version', { simple: true }), MIGRATIONS.length + 1);
      assert.deepEqual(after.prepare('SELECT key FROM snapshots').pluck().all(), ['a']);
    } finally {
      after.close();
    }
  } finally {
    await removeTree(top);
  }
});
