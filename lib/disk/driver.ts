/**
 * Which driver a store uses. The driver is a property of the data, not of
 * an open: an overlay store keeps each layer as a diff that only makes
 * sense stacked on its parents, a native store keeps each snapshot as a
 * full tree. Opening one as the other succeeds on the kernel's side and
 * shows containers the wrong tree (an overlay active bound alone has none
 * of its parents' files; native trees stacked as lowers repeat every file),
 * so a store records its driver in the `meta` table when it is created and
 * every open follows the record.
 *
 * Stores made before the record existed get one at their first open, from
 * what their data shows (see {@link inferDriver}); where it shows nothing,
 * both drivers read the data alike, and the driver given (or chosen as for
 * a new store) is recorded.
 *
 * Reads snapshot dirs only, never writes them, and reaches the store only
 * through {@link DriverStore}, which the facade passes: disk/ does not
 * import store/.
 */
import { existsSync, lstatSync, readdirSync, type BigIntStats } from 'node:fs';
import createDebug from 'debug';
import { FailedPreconditionError, UnavailableError, q } from '../model/errors.js';
import type { Driver, Kind } from '../model/types.js';

const debug = createDebug('overlay-snapshotter:driver');

/** The meta key of the store's driver record. */
export const DRIVER_META = 'driver';

/** A store's driver and how it came to be that one, as recorded. */
export interface DriverRecord {
  readonly driver: Driver;
  /** Why, in words: given at creation, chosen by the root's capabilities, or read from the data. */
  readonly reason: string;
}

/** What the decision needs of the metadata store. */
export interface DriverStore {
  readonly file: string;
  getMeta(key: string): string | undefined;
  setMeta(key: string, value: string): void;
  exclusive<T>(fn: () => T): T;
}

function isDriver(value: unknown): value is Driver {
  return value === 'overlay' || value === 'native';
}

/**
 * The recorded driver, `undefined` when there is no record yet. A record
 * this library cannot read is a damaged store: guessing could show
 * containers the wrong trees.
 */
export function recordedDriver(store: DriverStore): DriverRecord | undefined {
  const value = store.getMeta(DRIVER_META);
  if (value === undefined) return undefined;
  try {
    const parsed = JSON.parse(value) as Partial<DriverRecord> | null;
    if (parsed !== null && typeof parsed === 'object' && isDriver(parsed.driver)) {
      return { driver: parsed.driver, reason: typeof parsed.reason === 'string' ? parsed.reason : 'recorded' };
    }
  } catch {
    // Reported below.
  }
  throw new UnavailableError(
    `metadata store ${store.file} has an unreadable driver record (${q(value)}); set it to {"driver":"overlay"} or {"driver":"native"} as the data is, or restore metadata.db from a backup`,
  );
}

/**
 * Records `choice` as the store's driver in one short transaction, unless
 * another process recorded one first (two opens of a brand-new root): then
 * that one is returned, and the caller checks it as it checks any record.
 */
export function recordDriver(store: DriverStore, choice: DriverRecord): DriverRecord {
  return store.exclusive(() => {
    const earlier = recordedDriver(store);
    if (earlier !== undefined) return earlier;
    store.setMeta(DRIVER_META, JSON.stringify({ driver: choice.driver, reason: choice.reason }));
    debug('recorded driver %s for %s: %s', choice.driver, store.file, choice.reason);
    return choice;
  });
}

/**
 * FailedPreconditionError when `given` is not the store's driver; nothing
 * has been changed when it is thrown.
 */
export function checkGivenDriver(root: string, store: DriverRecord, given: Driver | undefined): void {
  if (given === undefined || given === store.driver) return;
  throw new FailedPreconditionError(
    `the store at ${root} uses the ${q(store.driver)} driver, but the ${q(given)} driver was asked for: a store cannot change driver; ` +
      `open it with no driver (it uses its own) or with ${q(store.driver)}, or create a new root for ${q(given)} and import the images there`,
  );
}

/**
 * UnavailableError when `driver` is overlay and overlay cannot run at the
 * root (`overlayUnavailable` says why, as the capabilities do): for a new
 * store, before anything is recorded, so that it can still be opened with
 * the native driver.
 */
export function checkDriverRuns(root: string, driver: DriverRecord, existing: boolean, overlayUnavailable: string | null): void {
  const why = overlayUnavailable;
  if (driver.driver !== 'overlay' || why === null) return;
  throw new UnavailableError(existing ? `the store at ${root} uses the "overlay" driver, which cannot run here: ${why}` : why);
}

/** A snapshot as the inference needs it. */
export interface DriverRow {
  readonly id: number;
  readonly key: string;
  readonly kind: Kind;
  readonly parent: number | null;
}

/** Children compared with their parents, at most. */
const SAMPLE_CHILDREN = 8;
/** Entries of a parent's tree looked up in a child, at most per child: a bounded, one-off cost. */
const SAMPLE_ENTRIES = 512;

/** What comparing one child's `fs` with its parent's showed. */
type Verdict = 'native' | 'overlay' | 'whiteout' | undefined;

/** overlayfs marks a deletion with a character device numbered 0/0. */
function isWhiteout(st: BigIntStats): boolean {
  return st.isCharacterDevice() && st.rdev === 0n;
}

function sameFile(a: BigIntStats, b: BigIntStats): boolean {
  return (a.mode & 0o170000n) === (b.mode & 0o170000n) && a.size === b.size && a.mtimeNs === b.mtimeNs;
}

/**
 * Looks up the first {@link SAMPLE_ENTRIES} entries of the parent's tree in
 * the child's. A native child starts as a copy of its parent, so most of the
 * parent's files are there unchanged (same type, size and nanosecond mtime,
 * which `cp -a` keeps); an overlay child holds only what its container
 * changed, so few or none are. A whiteout (a 0/0 character device) over a
 * parent's entry that is none is overlay's alone. A parent with
 * directories only tells nothing: an overlay child copies up the
 * directories it writes into.
 */
function compare(parentFs: string, childFs: string): Verdict {
  let files = 0;
  let same = 0;
  let seen = 0;
  const queue = [''];
  while (queue.length > 0 && seen < SAMPLE_ENTRIES) {
    const rel = queue.shift()!;
    for (const name of readdirSync(`${parentFs}${rel}`)) {
      if (seen++ >= SAMPLE_ENTRIES) break;
      const path = `${rel}/${name}`;
      const lower = lstatSync(`${parentFs}${path}`, { bigint: true });
      const upper = lstatSync(`${childFs}${path}`, { bigint: true, throwIfNoEntry: false });
      if (upper !== undefined && isWhiteout(upper) && !isWhiteout(lower)) return 'whiteout';
      if (lower.isDirectory()) {
        if (upper?.isDirectory() === true) queue.push(path);
        continue;
      }
      files++;
      if (upper !== undefined && sameFile(lower, upper)) same++;
    }
  }
  if (files === 0) return undefined;
  return same * 2 >= files ? 'native' : 'overlay';
}

/**
 * The driver the data of a store made before drivers were recorded shows,
 * `undefined` when it shows none (no snapshot with a non-empty parent, or
 * as many children pointing each way). Reads only: an active whose `work`
 * holds overlay's own `work/` has been mounted as an overlay, which the
 * native driver never does; otherwise up to {@link SAMPLE_CHILDREN} actives
 * and committed snapshots (actives first, newest first) are compared with
 * their parents.
 */
export function inferDriver(snapshotsDir: string, rows: readonly DriverRow[]): DriverRecord | undefined {
  const children = rows
    .filter((r) => r.parent !== null && r.kind !== 'view')
    .sort((a, b) => Number(b.kind === 'active') - Number(a.kind === 'active') || b.id - a.id);
  for (const r of children) {
    if (r.kind === 'active' && existsSync(`${snapshotsDir}/${r.id}/work/work`)) {
      return { driver: 'overlay', reason: `read from the data at the first open that recorded drivers: active ${q(r.key)} has been mounted as an overlay` };
    }
  }
  const votes = { native: [] as string[], overlay: [] as string[] };
  for (const r of children) {
    if (votes.native.length + votes.overlay.length >= SAMPLE_CHILDREN) break;
    let verdict: Verdict;
    try {
      verdict = compare(`${snapshotsDir}/${r.parent}/fs`, `${snapshotsDir}/${r.id}/fs`);
    } catch (err) {
      // A damaged or unreadable snapshot tells nothing; check() reports it.
      debug('driver inference: cannot compare %s with its parent: %s', r.key, (err as Error).message);
      continue;
    }
    if (verdict === 'whiteout') {
      return { driver: 'overlay', reason: `read from the data at the first open that recorded drivers: ${q(r.key)} holds an overlay whiteout` };
    }
    if (verdict !== undefined) votes[verdict].push(r.key);
  }
  debug('driver inference in %s: native %o, overlay %o', snapshotsDir, votes.native, votes.overlay);
  const n = votes.native.length;
  const o = votes.overlay.length;
  if (n === o) return undefined;
  const driver: Driver = n > o ? 'native' : 'overlay';
  const [first] = votes[driver];
  const how = driver === 'native' ? "full copies of their parents' trees" : "only their own changes, not their parents' files";
  return {
    driver,
    reason: `read from the data at the first open that recorded drivers: ${Math.max(n, o)} of ${n + o} snapshots compared with their parents (${q(first!)} among them) hold ${how}`,
  };
}
