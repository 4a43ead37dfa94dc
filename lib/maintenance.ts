/**
 * The whole-root calls of the facade: `cleanup()` (and the recovery of
 * `open()`: its sweep, the volatile snapshots a crash left untrustworthy,
 * and the refusal to start over on lost metadata),
 * `check()` and `prune()`. Each holds the store's write lock
 * while it decides (so that no snapshot is created, nor staging dir filled,
 * meanwhile) and does the slow disk work after it: claiming and deleting
 * trees (disk/trash.ts), measuring them (disk/usage.ts), asking the kernel
 * what is mounted (kernel/mount/in-use.ts).
 *
 * Part of the facade: it may use every layer below (store/, disk/, kernel/,
 * model/, the prune planner) and is used by snapshotter.ts alone. It keeps
 * no state of its own; the prune lock lives in the store's `meta` table.
 */
import { existsSync, mkdirSync, readdirSync } from 'node:fs';
import createDebug from 'debug';
import { v4 as uuidv4 } from 'uuid';
import { livePoolDirs, STAGING_PREFIX } from './disk/staging.js';
import { TRASH_PREFIX, Trash, deleteSnapshotDir, deleteTrees } from './disk/trash.js';
import { diskUsage } from './disk/usage.js';
import { lostInReboot, volatileState } from './disk/volatile.js';
import { isAlive, ownerJudge, selfTag } from './kernel/liveness.js';
import { snapshotMounts } from './kernel/mount/in-use.js';
import { VOLATILE_LABEL } from './model/create-options.js';
import { FailedPreconditionError, UnavailableError } from './model/errors.js';
import { parseFilters } from './model/filters.js';
import { OWNER_LABEL } from './model/owner.js';
import type { Record_ } from './model/record.js';
import { type SpecSettings, snapshotDir } from './model/specs.js';
import type { Driver } from './model/types.js';
import { type PruneReport, type ResolvedPruneOptions, planPrune } from './prune.js';
import type { Store } from './store/store.js';

const debug = createDebug('overlay-snapshotter:snapshotter');

/** Entries of `snapshots/` that are a snapshot's directory are named by its id. */
export const DECIMAL_ID = /^[1-9][0-9]*$/;

/** What `cleanup()` did: entries of `snapshots/` deleted, and those kept because they are mounted. */
export interface CleanupReport {
  /** Names of the entries removed (ids of removed snapshots, `new-*` leftovers, strays). */
  removed: string[];
  /** Keys of the actives and views removed because the process their owner label names is gone (their entries are in `removed`). */
  abandoned: string[];
  /** Orphans left in place because something is mounted on or from them. */
  skipped: { name: string; mountPoints: string[] }[];
}

/** An active or view removed because the process its owner label names is gone. */
export interface AbandonedSnapshot {
  key: string;
  kind: 'active' | 'view';
  /** Its directory (gone now). */
  path: string;
  /** Its owner label (`pid=... start=... boot=... ns=...`). */
  owner: string;
}

/** What the recovery of `open()` removed: crash leftovers. */
export interface RecoveryReport {
  /** Entries of `snapshots/` deleted (staging dirs and unrecorded ids of crashed creations, directories of abandoned snapshots). */
  removed: string[];
  /** The abandoned actives and views removed. */
  abandoned: AbandonedSnapshot[];
}

/** One inconsistency found by `check()`. */
export interface CheckProblem {
  problem: 'missing-directory' | 'missing-fs' | 'missing-work' | 'orphan' | 'staging-leftover' | 'orphan-mounted' | 'abandoned';
  /** The snapshot's key or name, for problems of a record. */
  key?: string;
  /** The path concerned. */
  path: string;
  /** For `orphan-mounted`, and an `abandoned` snapshot that is mounted: where it is mounted. */
  mountPoints?: string[];
  /** For `abandoned`: its owner label (`pid=... start=... boot=... ns=...`), naming a process that is gone. */
  owner?: string;
  /** Whether `check({ repair: true })` fixed it. */
  repaired: boolean;
}

/** The result of `check()`: `ok` when nothing is (left) wrong. */
export interface CheckReport {
  ok: boolean;
  problems: CheckProblem[];
  /** The store's driver ({@link Snapshotter.driver}), which decides what a consistent snapshot is. */
  driver: Driver;
  /** Why the store has that driver ({@link Snapshotter.driverReason}). */
  driverReason: string;
}

/** What these calls need of an open snapshotter. */
export interface Root {
  /** The absolute root. */
  readonly root: string;
  readonly store: Store;
  readonly settings: SpecSettings;
  /** True once the snapshotter is closed (a prune that outlives it leaves its lock to be found stale). */
  closed(): boolean;
}

/**
 * Claims the orphans of `snapshots/` that `select` accepts (renaming them
 * to `rm-*` under the write lock), then deletes them and earlier claims
 * outside it.
 */
export async function sweep(r: Root, select: (name: string, lastAllocated: number) => boolean): Promise<CleanupReport> {
  const snapshotsDir = r.settings.snapshotsDir;
  const report: CleanupReport = { removed: [], abandoned: [], skipped: [] };
  const trash = r.store.withLiveIds((live, lastAllocated) => {
    let users: Map<number, string[]> | undefined;
    const pruning = new Set(livePruneHolder(r.store.getMeta(PRUNE_LOCK))?.ids ?? []);
    const pooled = livePoolDirs();
    const earlier: string[] = [];
    const orphans: string[] = [];
    for (const name of readdirSync(snapshotsDir)) {
      const id = DECIMAL_ID.test(name) ? Number(name) : undefined;
      if (id !== undefined && (live.has(id) || pruning.has(id))) continue;
      if (id === undefined && pooled(name)) continue;
      if (name.startsWith(TRASH_PREFIX)) {
        earlier.push(name);
        continue;
      }
      if (!select(name, lastAllocated)) continue;
      if (id !== undefined) {
        users ??= snapshotMounts(snapshotsDir);
        const at = users.get(id);
        if (at !== undefined) {
          report.skipped.push({ name, mountPoints: at });
          continue;
        }
      }
      orphans.push(name);
    }
    // Claimed under the lock: a crashed creation's id can be allocated
    // again, and must then find its place free, not deleted later.
    const claimed = new Trash(snapshotsDir, orphans.length);
    for (const name of earlier) claimed.adopt(name);
    // A synchronous remove (here or in another process) deletes its dir
    // after its transaction, without the lock: already gone is fine.
    for (const name of orphans) if (claimed.claim(name)) report.removed.push(name);
    return claimed;
  });
  await trash.empty('cleanup:mid');
  return report;
}

/** Snapshotter.cleanup: the abandoned actives and views, then every entry of `snapshots/` no record owns. */
export async function cleanup(r: Root): Promise<CleanupReport> {
  const abandoned = await removeAbandoned(r, findAbandoned(r.store));
  const report = await sweep(r, () => true);
  report.removed = [...new Set([...abandoned.removed, ...report.removed])];
  report.abandoned = abandoned.abandoned.map((a) => a.key);
  return report;
}

/**
 * The recovery of `open()`, as container managers do at start: leftovers of
 * crashed creations (staging dirs, ids never recorded) and of interrupted
 * cleanups, and abandoned snapshots (the temporary snapshots of crashed
 * imports and exports) go now; removed snapshots' dirs stay for cleanup().
 */
export async function recover(r: Root): Promise<RecoveryReport> {
  const { removed } = await sweep(r, (name, lastAllocated) => name.startsWith(STAGING_PREFIX) || (DECIMAL_ID.test(name) && Number(name) > lastAllocated));
  const abandoned = await removeAbandoned(r, findAbandoned(r.store));
  return { removed: [...removed, ...abandoned.removed], abandoned: abandoned.abandoned };
}

/** The inconsistencies between records and directories (Snapshotter.check), repaired where safe when `repair`. */
export async function check(r: Root, repair: boolean, driver: { driver: Driver; reason: string }): Promise<CheckReport> {
  const snapshotsDir = r.settings.snapshotsDir;
  const problems: CheckProblem[] = [];
  const rows = r.store.allRows();
  const live = new Set(rows.map((row) => row.id));
  const users = snapshotMounts(snapshotsDir);
  const abandoned = findAbandoned(r.store);
  for (const rec of abandoned) {
    const at = users.get(rec.id);
    problems.push({ problem: 'abandoned', key: rec.key, path: snapshotDir(r.settings, rec.id), owner: rec.labels[OWNER_LABEL]!, ...(at ? { mountPoints: at } : {}), repaired: false });
  }
  for (const row of rows) {
    const dir = snapshotDir(r.settings, row.id);
    if (!existsSync(dir)) {
      problems.push({ problem: 'missing-directory', key: row.key, path: dir, repaired: false });
      continue;
    }
    if (!existsSync(`${dir}/fs`)) problems.push({ problem: 'missing-fs', key: row.key, path: `${dir}/fs`, repaired: false });
    if (row.kind === 'active' && !existsSync(`${dir}/work`)) {
      if (repair) mkdirSync(`${dir}/work`, 0o711);
      problems.push({ problem: 'missing-work', key: row.key, path: `${dir}/work`, repaired: repair });
    }
  }
  const pooled = livePoolDirs();
  for (const name of readdirSync(snapshotsDir)) {
    const id = DECIMAL_ID.test(name) ? Number(name) : undefined;
    if (id !== undefined && live.has(id)) continue;
    if (id === undefined && pooled(name)) continue;
    const path = `${snapshotsDir}/${name}`;
    const at = id === undefined ? undefined : users.get(id);
    problems.push(
      at !== undefined
        ? { problem: 'orphan-mounted', path, mountPoints: at, repaired: false }
        : { problem: name.startsWith(STAGING_PREFIX) ? 'staging-leftover' : 'orphan', path, repaired: false },
    );
  }
  if (repair && abandoned.length > 0) {
    const gone = new Set((await removeAbandoned(r, abandoned)).abandoned.map((a) => a.key));
    for (const p of problems) if (p.problem === 'abandoned' && gone.has(p.key!)) p.repaired = true;
  }
  if (repair && problems.some((p) => p.problem === 'orphan' || p.problem === 'staging-leftover')) {
    const { removed } = await sweep(r, () => true);
    for (const p of problems) {
      if ((p.problem === 'orphan' || p.problem === 'staging-leftover') && removed.includes(p.path.slice(snapshotsDir.length + 1))) p.repaired = true;
    }
  }
  return { ok: problems.every((p) => p.repaired), problems, driver: driver.driver, driverReason: driver.reason };
}

/** The snapshots with an owner label: indexed, so that finding them reads only those. */
const OWNED = parseFilters([`labels."${OWNER_LABEL}"`]);

/**
 * The actives and views whose owner label (model/owner.ts) names a process
 * that is gone: temporary snapshots of a crashed import or export. A value
 * that does not parse, or names a process this one cannot see, is not
 * judged; committed snapshots are complete layers, left to prune().
 */
function findAbandoned(store: Store): Record_[] {
  const judge = ownerJudge();
  return store.walk(OWNED).filter((rec) => rec.kind !== 'committed' && judge(rec.labels[OWNER_LABEL]!) === false);
}

/**
 * Removes abandoned snapshots as remove() would, each in its own
 * transaction, then their directories (as a sweep: claimed under the lock).
 * One that is mounted, has children, or changed since it was judged (gone,
 * made again, relabelled) is left alone. Returns the snapshots removed and
 * the entries of `snapshots/` deleted.
 */
async function removeAbandoned(r: Root, found: readonly Record_[]): Promise<{ abandoned: AbandonedSnapshot[]; removed: string[] }> {
  const ids = new Set<string>();
  const abandoned: AbandonedSnapshot[] = [];
  for (const rec of found) {
    try {
      r.store.remove(rec.key, (row) => {
        if (row.id !== rec.id || r.store.label(rec.key, OWNER_LABEL) !== rec.labels[OWNER_LABEL]) throw new Error('it changed since it was judged');
        const at = snapshotMounts(r.settings.snapshotsDir, row.id).get(row.id);
        if (at !== undefined) throw new Error(`it is mounted at ${at.join(', ')}`);
      });
      ids.add(String(rec.id));
      abandoned.push({ key: rec.key, kind: rec.kind as AbandonedSnapshot['kind'], path: snapshotDir(r.settings, rec.id), owner: rec.labels[OWNER_LABEL]! });
    } catch (err) {
      debug('abandoned %s (owner %s) left in place: %s', rec.key, rec.labels[OWNER_LABEL], (err as Error).message);
    }
  }
  if (abandoned.length === 0) return { abandoned, removed: [] };
  await r.store.durable();
  const { removed } = await sweep(r, (name) => ids.has(name));
  debug('removed abandoned snapshots %o', abandoned);
  return { abandoned, removed };
}

/**
 * A store file without a schema beside snapshot directories means the
 * metadata was lost (deleted, truncated to nothing): refuse rather than
 * start over and orphan every layer. Called by open() on a fresh schema.
 */
export function refuseSilentReset(snapshotsDir: string, file: string): void {
  const ids = readdirSync(snapshotsDir).filter((n) => DECIMAL_ID.test(n));
  if (ids.length > 0) {
    throw new UnavailableError(
      `metadata store ${file} is empty but ${snapshotsDir} holds ${ids.length} snapshot director${ids.length === 1 ? 'y' : 'ies'}; restore metadata.db from a backup, or move the snapshots away to start afresh`,
    );
  }
}

/** Volatile actives, found through the labels index. */
const VOLATILE = parseFilters([`kind==active,labels."${VOLATILE_LABEL}"==true`]);

/**
 * The recovery of open() for volatile actives: one whose upper was mounted
 * when the machine last went down (the kernel's mark from another boot,
 * disk/volatile.ts) lost what overlayfs never synced, and the kernel will
 * not mount it again, so it is removed, as the crash has already lost it.
 * Returns the keys removed. A snapshot mounted now (in this boot) is never
 * one of them.
 */
export async function recoverVolatile(r: Root): Promise<string[]> {
  const lost: string[] = [];
  const dirs: string[] = [];
  for (const rec of r.store.walk(VOLATILE)) {
    const dir = snapshotDir(r.settings, rec.id);
    if (!lostInReboot(volatileState(dir))) continue;
    try {
      r.store.remove(rec.key, (row) => {
        if (row.id !== rec.id) throw new FailedPreconditionError(`snapshot ${rec.key} was replaced meanwhile`);
        const at = snapshotMounts(r.settings.snapshotsDir, row.id).get(row.id);
        if (at !== undefined) throw new FailedPreconditionError(`snapshot ${rec.key} is mounted at ${at.join(', ')}`);
      });
    } catch (err) {
      debug('volatile %s lost in a reboot, but kept: %s', rec.key, (err as Error).message);
      continue;
    }
    lost.push(rec.key);
    dirs.push(dir);
  }
  if (lost.length === 0) return lost;
  await r.store.durable();
  for (const dir of dirs) {
    // The record is gone: a dir that cannot be deleted now is an orphan for cleanup().
    await deleteSnapshotDir(dir).catch((err: Error) => debug('could not delete %s, left for cleanup: %s', dir, err.message));
  }
  debug('open %s: removed volatile snapshots whose upper was in use when the machine went down: %o', r.root, lost);
  return lost;
}

/** Meta key of the prune lock: who runs a prune, and which ids it is deleting. */
const PRUNE_LOCK = 'prune-lock';
/** Matches every snapshot. */
const ALL = parseFilters([]);

/** The prune lock's holder if it is a live process, else undefined (a crashed prune's lock is stale). */
function livePruneHolder(value: string | undefined): { pid: number; since: number; ids: number[] } | undefined {
  if (value === undefined) return undefined;
  try {
    const lock = JSON.parse(value) as { pid: number; start?: string; since: number; ids?: number[] };
    if (!isAlive(lock.pid, lock.start)) return undefined;
    return { pid: lock.pid, since: lock.since, ids: lock.ids ?? [] };
  } catch {
    return undefined;
  }
}

/** For each record with an owner label that can be judged: whether its owner still runs. */
function ownersOf(records: readonly Record_[]): Map<number, boolean> {
  const judge = ownerJudge();
  const owners = new Map<number, boolean>();
  for (const rec of records) {
    const alive = Object.hasOwn(rec.labels, OWNER_LABEL) ? judge(rec.labels[OWNER_LABEL]!) : undefined;
    if (alive !== undefined) owners.set(rec.id, alive);
  }
  return owners;
}

/** Snapshotter.prune with resolved options: lock, plan and records in transactions, then the directories. */
export async function prune(r: Root, o: ResolvedPruneOptions): Promise<PruneReport> {
  const { store, settings } = r;
  const snapshotsDir = settings.snapshotsDir;
  const token = uuidv4();
  store.exclusive(() => {
    const holder = livePruneHolder(store.getMeta(PRUNE_LOCK));
    if (holder !== undefined) {
      throw new UnavailableError(`a prune is already running on ${r.root} (process ${holder.pid} since ${new Date(holder.since).toISOString()}); wait for it to finish`);
    }
    store.setMeta(PRUNE_LOCK, JSON.stringify({ pid: process.pid, start: selfTag().start, since: Date.now(), token, ids: [] }));
  });
  try {
    const report: PruneReport = { dryRun: o.dryRun, removed: [], kept: [], marked: [], reclaimed: { bytes: 0, inodes: 0 } };
    let owners = new Map<number, boolean>();
    const decide = () => {
      const records = store.walk(ALL);
      owners = ownersOf(records);
      const plan = planPrune(records, new Set(snapshotMounts(snapshotsDir).keys()), store.pruneMarks(), o, owners);
      if (!o.dryRun) {
        store.applyPrune(plan.remove.map((rec) => rec.id), plan.mark, plan.unmark, o.now());
        // While this prune deletes them, cleanup() elsewhere must leave these dirs alone.
        store.setMeta(PRUNE_LOCK, JSON.stringify({ pid: process.pid, start: selfTag().start, since: Date.now(), token, ids: plan.remove.map((rec) => rec.id) }));
      }
      return plan;
    };
    const plan = o.dryRun ? decide() : store.exclusive(decide);
    await store.durable();
    report.kept = plan.kept.map(({ rec, reason }) => ({ name: rec.key, kind: rec.kind, reason }));
    const names = new Map(plan.kept.map(({ rec }) => [rec.id, rec.key]));
    for (const rec of plan.remove) names.set(rec.id, rec.key);
    report.marked = plan.mark.map((id) => names.get(id)!).filter((n) => n !== undefined);
    // Measured just before deletion, so the figures are what the disk gives back.
    const sizes = new Map<string, number>();
    for (const rec of plan.remove) {
      const dir = snapshotDir(settings, rec.id);
      const usage = diskUsage(dir);
      sizes.set(dir, usage.size);
      report.removed.push({ name: rec.key, kind: rec.kind, size: usage.size, inodes: usage.inodes, ...(rec.kind !== 'committed' && owners.get(rec.id) === false ? { abandoned: true } : {}) });
      report.reclaimed.inodes += usage.inodes;
    }
    let done = 0;
    let bytes = 0;
    const progress = (dir: string) => {
      bytes += sizes.get(dir)!;
      o.onProgress?.({ done: ++done, total: plan.remove.length, bytes });
    };
    if (o.dryRun) for (const dir of sizes.keys()) progress(dir);
    else await deleteTrees(snapshotsDir, [...sizes.keys()], 'prune:mid', progress);
    report.reclaimed.bytes = bytes;
    debug('prune %s: removed %d, kept %d, marked %d', r.root, report.removed.length, report.kept.length, report.marked.length);
    return report;
  } finally {
    if (!r.closed()) {
      store.exclusive(() => {
        const held = store.getMeta(PRUNE_LOCK);
        if (held !== undefined && (JSON.parse(held) as { token?: string }).token === token) store.deleteMeta(PRUNE_LOCK);
      });
    }
  }
}
