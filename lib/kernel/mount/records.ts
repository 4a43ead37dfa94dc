/**
 * Mount records: what `mountAll` mounted where, kept for the overlay mounts
 * whose layers the mount table does not name by their real paths.
 *
 * Removal, cleanup, prune and check refuse to delete a snapshot's
 * directories while a mount uses them, and learn that from
 * /proc/self/mountinfo. The kernel shows there the layer paths it was
 * given, which are the real paths for a plain mount(2), but not when a
 * chain did not fit: the mount API names a path over 255 bytes as
 * `/proc/self/fd/<n>`, and mount(2) with a long chain gets paths relative
 * to a directory it was called from, or descriptor numbers. For such a
 * mount `mountAll` writes a record into the store's root before the first
 * syscall that hides a path, and completes it with the mount's id once it
 * is mounted; `unmountAll` deletes it. Records are plain files under
 * `<root>/mount-records/` (not synced: a mount does not outlive a reboot,
 * and the page cache outlives the process that wrote them), so every
 * process on the root sees them, including after the mounting process
 * exited.
 *
 * A record protects its paths while it is live:
 * - complete (it has the mount's id): the mount table has a mount with that
 *   id, on that target, with the same options. Ids are reused after an
 *   unmount, so a record can look live again only for a mount that looks
 *   the same in every field: the error is then a refused removal, never a
 *   deletion;
 * - pending (written, not yet mounted): its writer is alive, or an overlay
 *   is mounted on its target.
 * A record that is not live is deleted by whoever finds it so (the mount
 * was taken off by another process, or the mounting process died before
 * mounting). A record from another mount namespace is judged by the
 * mounting process's view of it while that process lives; when it is gone
 * and its namespace cannot be seen, the record is kept and stays live
 * (refusing is the safe side); delete its file by hand once that
 * namespace is gone.
 *
 * This module knows of snapshot stores only the layout of their roots
 * (`<root>/snapshots/<id>/fs` beside `<root>/metadata.db`); it never reads
 * the metadata store.
 */
import { mkdirSync, readdirSync, readFileSync, realpathSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import createDebug from 'debug';
import { v4 as uuidv4 } from 'uuid';
import { UnavailableError, q } from '../../model/errors.js';
import { isAlive, selfTag } from '../liveness.js';
import { mountIdOf } from './syscalls.js';
import { type MountEntry, mountNamespace, mountTableText, readMountTable } from './table.js';

const debug = createDebug('overlay-snapshotter:mount');

/** The folder of a store's root that holds its mount records. */
export const RECORDS_DIR = 'mount-records';

/** One record, as stored (JSON). */
export interface MountRecord {
  /** Format version. */
  v: 1;
  /** The mount point, as a real path (what mountinfo shows). */
  target: string;
  /** Every directory the mount uses (lower layers, upper and work dirs), as the spec named them. */
  paths: string[];
  /** The mounting process: pid and start time (kernel/liveness.ts). */
  pid: number;
  start?: string | undefined;
  /** The mount namespace it mounted in. */
  ns?: string | undefined;
  /** The mount's id and options in the mount table; absent while pending. */
  mountId?: number;
  superOptions?: string;
}

/** A record this process wrote, and its file. */
export interface WrittenRecord {
  file: string;
  record: MountRecord;
}

/** A snapshot dir inside a store: `<root>/snapshots/<decimal id>/...`. */
const SNAPSHOT_PATH = /^(\/.*)\/snapshots\/[1-9][0-9]*(?:\/|$)/;

/** Roots already seen to hold a metadata store. */
const knownRoots = new Set<string>();

/** The store root that `path` lies in, when it is a snapshot's directory of a store of this library. */
export function storeRootOf(path: string): string | undefined {
  const root = SNAPSHOT_PATH.exec(path)?.[1];
  if (root === undefined) return undefined;
  if (knownRoots.has(root)) return root;
  if (statSync(`${root}/metadata.db`, { throwIfNoEntry: false })?.isFile() !== true) return undefined;
  knownRoots.add(root);
  return root;
}

/** Records written by this process, by target, for unmountAll. */
const ours = new Map<string, WrittenRecord[]>();

function writeRecord(file: string, record: MountRecord): void {
  const dir = file.slice(0, file.lastIndexOf('/'));
  const tmp = `${dir}/.${uuidv4()}.tmp`;
  writeFileSync(tmp, `${JSON.stringify(record)}\n`, { mode: 0o600 });
  renameSync(tmp, file);
}

/**
 * Writes a pending record for an overlay about to be mounted on `target`
 * with some of `paths` named in a form the mount table will not show:
 * one record in each store root those paths lie in (none for paths of no
 * store). Called before the syscall that hides them.
 * @throws UnavailableError when a record cannot be written: mounting
 *   unrecorded would let a removal delete through the mount.
 */
export function recordMount(target: string, paths: readonly string[]): WrittenRecord[] {
  const roots = new Set<string>();
  for (const path of paths) {
    const root = storeRootOf(path);
    if (root !== undefined) roots.add(root);
  }
  if (roots.size === 0) return [];
  let real: string;
  try {
    real = realpathSync(target);
  } catch {
    real = target; // the mount fails on it anyway
  }
  const { pid, start } = selfTag();
  const written: WrittenRecord[] = [];
  for (const root of roots) {
    const dir = `${root}/${RECORDS_DIR}`;
    const record: MountRecord = { v: 1, target: real, paths: [...paths], pid, start, ns: mountNamespace() };
    const file = `${dir}/${uuidv4()}.json`;
    try {
      mkdirSync(dir, { recursive: true, mode: 0o700 });
      writeRecord(file, record);
    } catch (err) {
      dropRecords(written);
      throw new UnavailableError(
        `cannot record the overlay mount on ${q(target)} in ${dir} (${(err as NodeJS.ErrnoException).code ?? String(err)}): without the record, a removal could delete the snapshots under the mount; make ${dir} writable for this process`,
        { cause: err },
      );
    }
    written.push({ file, record });
  }
  const list = ours.get(real) ?? [];
  list.push(...written);
  ours.set(real, list);
  debug('recorded the overlay mount on %s in %o (%d paths)', real, written.map((w) => w.file), paths.length);
  return written;
}

/**
 * Completes the records of a mount just made on their target with the
 * mount's id and options, so that a later unmount by anyone makes them stale.
 */
export function recordMounted(written: readonly WrittenRecord[]): void {
  if (written.length === 0) return;
  const target = written[0]!.record.target;
  const table = readMountTable(mountTableText());
  const id = mountIdOf(target);
  const entry = id === undefined ? table.filter((m) => m.mountPoint === target).at(-1) : table.find((m) => m.id === id);
  if (entry === undefined) return; // stays pending: live while this process lives or an overlay is on the target
  for (const w of written) {
    w.record.mountId = entry.id;
    w.record.superOptions = entry.superOptions;
    try {
      writeRecord(w.file, w.record);
    } catch (err) {
      debug('could not complete mount record %s (it stays pending): %s', w.file, (err as Error).message);
    }
  }
}

/** Deletes records (of a mount that failed, or was taken off). */
export function dropRecords(written: readonly WrittenRecord[]): void {
  for (const w of written) {
    rmSync(w.file, { force: true });
    const list = ours.get(w.record.target);
    if (list === undefined) continue;
    const rest = list.filter((x) => x !== w);
    if (rest.length === 0) ours.delete(w.record.target);
    else ours.set(w.record.target, rest);
  }
}

/**
 * Deletes the records this process wrote for mounts on `target`, once
 * everything there is unmounted. Hot path (every unmountAll): a map lookup
 * when there are none.
 */
export function clearRecords(target: string): void {
  if (ours.size === 0) return;
  let list = ours.get(target);
  if (list === undefined) {
    try {
      list = ours.get(realpathSync(target));
    } catch {
      return;
    }
  }
  if (list !== undefined) dropRecords([...list]);
}

/** A record read from disk, with its file. */
export interface StoredRecord extends MountRecord {
  file: string;
}

/**
 * The records under `root` (only those naming a directory of snapshot
 * `only`, when given). Read before the mount table that judges them, so
 * that a mount made in between is seen in the table.
 */
export function readRecords(root: string, only?: number): StoredRecord[] {
  const dir = `${root}/${RECORDS_DIR}`;
  // Hot path (every remove): one stat, no exception, when there are no records.
  if (statSync(dir, { throwIfNoEntry: false }) === undefined) return [];
  const out: StoredRecord[] = [];
  const needle = only === undefined ? undefined : `/${only}/`;
  for (const name of readdirSync(dir)) {
    if (!name.endsWith('.json')) continue;
    const file = `${dir}/${name}`;
    let record: MountRecord;
    try {
      record = JSON.parse(readFileSync(file, 'utf8')) as MountRecord;
    } catch (err) {
      // Gone meanwhile (unmounted), or damaged: a damaged record protects nothing it can name.
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') debug('ignoring unreadable mount record %s: %s', file, (err as Error).message);
      continue;
    }
    if (record === null || typeof record !== 'object' || typeof record.target !== 'string' || !Array.isArray(record.paths)) continue;
    if (needle !== undefined && !record.paths.some((p) => typeof p === 'string' && (p.includes(needle) || p.endsWith(needle.slice(0, -1))))) continue;
    out.push({ ...record, file });
  }
  return out;
}

/**
 * Whether `record` still stands for a mount, judged on `table` (this
 * process's mount table, read after the record). Deletes a record found
 * stale in its own namespace.
 */
export function recordIsLive(record: StoredRecord, table: readonly MountEntry[]): boolean {
  let entries = table;
  const ns = mountNamespace();
  if (record.ns !== undefined && ns !== undefined && record.ns !== ns) {
    // Another namespace: only its mounting process can show us its table.
    if (!isAlive(record.pid, record.start)) return true;
    try {
      entries = readMountTable(readFileSync(`/proc/${record.pid}/mountinfo`, 'utf8'));
    } catch {
      return true;
    }
  }
  const live =
    record.mountId === undefined
      ? isAlive(record.pid, record.start) || entries.some((m) => m.mountPoint === record.target && m.fsType === 'overlay')
      : entries.some((m) => m.id === record.mountId && m.mountPoint === record.target && m.superOptions === record.superOptions);
  if (!live) {
    debug('mount record %s is stale (nothing of it is mounted on %s): deleting it', record.file, record.target);
    rmSync(record.file, { force: true });
  }
  return live;
}
