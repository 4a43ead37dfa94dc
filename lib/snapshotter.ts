/**
 * The facade: the Snapshotter class, with containerd's snapshot lifecycle
 * (prepare, view, commit, remove, stat, update, usage, mounts, walk) over
 * the layers below it: the metadata store (store/), the snapshot
 * directories (disk/), the kernel boundary (kernel/) and the pure rules
 * (model/). The whole-root calls (cleanup, check, prune) are carried out by
 * maintenance.ts. Nothing below imports this module; lib/index.ts exports
 * it, and cli/, layers/ (through an interface) and images/ use it from there.
 *
 * It runs past 600 lines because each public call carries its TSDoc (the
 * API's reference: errors in the order they are checked) and the order of
 * its steps; what a step does lives below (the volatile, quota and ID-map
 * rules in model/ and disk/volatile.ts).
 */
import { chmodSync, lchownSync, mkdirSync, rmSync, statSync } from 'node:fs';
import { resolve } from 'node:path';
import createDebug from 'debug';
import { v4 as uuidv4 } from 'uuid';
import { type DriverRecord, checkDriverRuns, checkGivenDriver, inferDriver, recordDriver, recordedDriver } from './disk/driver.js';
import { copyTree } from './disk/native.js';
import { STAGING_PREFIX, StagingPool, moveIntoPlace } from './disk/staging.js';
import { emptyForReuse } from './disk/recycle.js';
import { deleteSnapshotDir } from './disk/trash.js';
import { diskUsage } from './disk/usage.js';
import { checkSyncable, forgetVolatile, readyVolatile, stampBoot } from './disk/volatile.js';
import { type Capabilities, probeCapabilities } from './kernel/capabilities.js';
import { wallClock } from './kernel/clock.js';
import { fault } from './kernel/faults.js';
import { errnoOf } from './kernel/libc.js';
import { unmountAll } from './kernel/mount/index.js';
import { snapshotMounts } from './kernel/mount/in-use.js';
import { syncFilesystem } from './kernel/syncfs.js';
import { type CheckReport, type CleanupReport, type RecoveryReport, type Root, check, cleanup, prune, recover, recoverVolatile, refuseSilentReset } from './maintenance.js';
import { FailedPreconditionError, InvalidArgumentError, NotFoundError, UnavailableError, q } from './model/errors.js';
import { parseFilters } from './model/filters.js';
import { VOLATILE_LABEL, checkCreateOptions, keepFixed, refuseFixedLabels, unavailableFor, withoutLabel } from './model/create-options.js';
import { idmapOptions, mappedOwner } from './model/idmap.js';
import { type ResolvedOptions, type SnapshotterOptions, resolveOptions } from './model/options.js';
import type { Record_ } from './model/record.js';
import { type SpecSettings, buildMounts, fsDir, overlayOptions, snapshotDir } from './model/specs.js';
import type { Driver, Info, Kind, Mount, SnapshotOptions, Usage } from './model/types.js';
import { checkKey, checkLabelSize, checkLabels, checkParent, checkSnapshotOptions, setLabel } from './model/validate.js';
import { type PruneOptions, type PruneReport, resolvePruneOptions } from './prune.js';
import { Store } from './store/store.js';

export type { AbandonedSnapshot, CheckProblem, CheckReport, CleanupReport, RecoveryReport } from './maintenance.js';

const debug = createDebug('overlay-snapshotter:snapshotter');

/** Label that `upperdirLabel` adds to actives and views. */
export const UPPERDIR_LABEL = 'containerd.io/snapshot/overlay.upperdir';

/**
 * An overlayfs snapshotter with containerd's semantics, keeping its
 * metadata in SQLite under `<root>/metadata.db` and each snapshot's data in
 * `<root>/snapshots/<id>/`.
 *
 * A snapshot is `active` (writable), a `view` (read-only), or `committed`
 * (an immutable layer that others can stack on). Keys and names share one
 * namespace and are plain strings, never paths.
 *
 * @example Import a layer
 * ```ts
 * const sn = await Snapshotter.open('/var/lib/my-runtime/snapshots');
 * const mounts = await sn.prepare('extract-layer-1');      // no parent: a bind of an empty dir
 * await mountAll(mounts, '/tmp/target');
 * // ... unpack the layer tarball into /tmp/target ...
 * await unmountAll('/tmp/target');
 * await sn.commit('layer-1', 'extract-layer-1');           // now an immutable layer
 * ```
 *
 * @example Import the next layer on top of it
 * ```ts
 * const mounts = await sn.prepare('extract-layer-2', 'layer-1'); // overlay: lowerdir = layer-1
 * await mountAll(mounts, '/tmp/target');
 * // ... unpack the second tarball: deletions become overlay whiteouts ...
 * await unmountAll('/tmp/target');
 * await sn.commit('layer-2', 'extract-layer-2');
 * ```
 *
 * @example Run a container on the image
 * ```ts
 * const mounts = await sn.prepare('container-1', 'layer-2'); // lowerdir = layer-2:layer-1
 * await mountAll(mounts, '/run/ctr/rootfs');                 // or hand `mounts` to runc
 * // ... the container runs; its writes land in its own upper dir ...
 * await unmountAll('/run/ctr/rootfs');
 * await sn.remove('container-1');
 * ```
 */
export class Snapshotter {
  /** The absolute root this snapshotter manages. */
  readonly root: string;
  private readonly options: ResolvedOptions;
  private readonly store: Store;
  private readonly settings: SpecSettings;
  private readonly snapshotsDir: string;
  /** Whether mkdir's mode survives the umask, so that `fs` needs no explicit chmod (hot path). */
  private readonly umaskClean: boolean;
  /** Staging dirs for actives, made ahead (lib/disk/staging.ts). */
  private readonly pool: StagingPool;
  private closed = false;
  /** Removals deleting their directories now (see {@link durable}). */
  private deleting = 0;
  private recovery: RecoveryReport = { removed: [], abandoned: [] };
  /** What the whole-root calls (maintenance.ts) need of this snapshotter. */
  private readonly maintained: Root;
  /**
   * What the kernel and the root's filesystem can do, probed at the first
   * open on this kernel release and read back from the store afterwards
   * (see docs/capabilities.md). A frozen object.
   */
  readonly capabilities: Capabilities;

  /**
   * How this store keeps its snapshots: `'overlay'` (diffs stacked at
   * mount) or `'native'` (full copies, bound). Recorded when the store was
   * created and the same at every open (see the `driver` option).
   */
  readonly driver: Driver;
  /** Why the store has {@link driver}: given at creation, chosen from the root's capabilities, or read from older data. */
  readonly driverReason: string;

  private lostAtOpen: readonly string[] = [];
  /**
   * The keys of volatile actives that {@link open} removed because their
   * upper was mounted when the machine last went down (a crash or a
   * reboot): overlayfs never synced it, so its data cannot be trusted, and
   * the kernel would not mount it again. Empty when there were none.
   */
  get volatileLost(): readonly string[] {
    return this.lostAtOpen;
  }

  private constructor(root: string, options: ResolvedOptions, store: Store, settings: SpecSettings, umaskClean: boolean, capabilities: Capabilities, driver: DriverRecord) {
    this.root = root;
    this.options = options;
    this.store = store;
    this.settings = settings;
    this.snapshotsDir = settings.snapshotsDir;
    this.umaskClean = umaskClean;
    this.pool = new StagingPool(settings.snapshotsDir, umaskClean);
    this.capabilities = capabilities;
    this.driver = driver.driver;
    this.driverReason = driver.reason;
    this.maintained = { root, store, settings, closed: () => this.closed };
  }

  /**
   * Opens the snapshotter at `root`, creating the root (mode 0700) and
   * `snapshots/` if missing; reopening finds every snapshot as it was
   * (crash leftovers removed: {@link recovered}).
   *
   * The store's driver is recorded when it is created: given as `driver`,
   * else `'overlay'` where the root supports it and `'native'` elsewhere
   * (`capabilities.defaultDriver`); every later open uses the recorded one.
   *
   * @throws InvalidArgumentError for a bad root or option (an unknown
   *   option is named, with the closest known one).
   * @throws FailedPreconditionError when `driver` is given and is not the
   *   store's (nothing is changed).
   * @throws UnavailableError when the store's driver (or the `driver`
   *   given for a new store) is `'overlay'` and the root is on overlayfs,
   *   its filesystem lacks d_type or overlay is missing from the kernel (the
   *   message names the reason), the root cannot be created or written, or
   *   the metadata store is damaged.
   */
  static async open(root: string, options?: SnapshotterOptions): Promise<Snapshotter> {
    if (typeof root !== 'string' || root === '' || root.includes('\0')) {
      throw new InvalidArgumentError(`Expected root to be a non-empty path, got ${typeof root === 'string' ? q(root) : typeof root}`);
    }
    const resolved = resolveOptions(options);
    const abs = resolve(root);
    const snapshotsDir = `${abs}/snapshots`;
    try {
      mkdirSync(abs, { recursive: true, mode: 0o700 });
      mkdirSync(snapshotsDir, { recursive: true, mode: 0o700 });
    } catch (err) {
      throw new UnavailableError(`cannot create snapshotter root ${abs} (${errnoOf(err) ?? String(err)}); choose a writable directory`, { cause: err });
    }
    if (!statSync(abs).isDirectory()) throw new UnavailableError(`snapshotter root ${abs} is not a directory; choose a directory`);
    const store = Store.open(`${abs}/metadata.db`, resolved.busyTimeout);
    try {
      if (store.fresh) refuseSilentReset(snapshotsDir, store.file);
      // The driver belongs to the data (lib/disk/driver.ts): a mismatch is refused before anything changes.
      const recorded = recordedDriver(store);
      const rows = recorded !== undefined || store.fresh ? [] : store.allRows();
      const known = recorded ?? inferDriver(snapshotsDir, rows);
      const when = rows.length === 0 ? 'when the store was created' : 'at the first open that recorded drivers (the data read the same with either)';
      if (known !== undefined) checkGivenDriver(abs, known, resolved.driver);
      // Probes once per kernel release (files, one mount); afterwards one read of the store.
      const capabilities = await probeCapabilities(abs, { cache: store });
      let driver =
        known ??
        (resolved.driver !== undefined
          ? { driver: resolved.driver, reason: `given ${when}` }
          : { driver: capabilities.defaultDriver, reason: `chosen ${when}, as ${capabilities.defaultDriverReason}` });
      checkDriverRuns(abs, driver, known !== undefined, capabilities.overlayUnavailable);
      if (recorded === undefined) {
        // Another process opening the same new root may have recorded first: its choice holds.
        driver = recordDriver(store, driver);
        checkGivenDriver(abs, driver, resolved.driver);
        checkDriverRuns(abs, driver, true, capabilities.overlayUnavailable);
      }
      debug('%s uses the %s driver: %s', abs, driver.driver, driver.reason);
      const userxattr = resolved.userxattr === 'auto' ? capabilities.userxattrNeeded : resolved.userxattr;
      const settings: SpecSettings = {
        snapshotsDir,
        overlayOptions: overlayOptions(resolved.mountOptions, userxattr, capabilities.indexParameter),
        driver: driver.driver,
      };
      const umask = process.umask();
      const sn = new Snapshotter(abs, resolved, store, settings, (0o755 & umask) === 0, capabilities, driver);
      await store.durable();
      // Recovery, as container managers do at start (maintenance.ts).
      sn.recovery = await recover(sn.maintained);
      if (sn.recovery.removed.length > 0) debug('open %s: removed crash leftovers %o', abs, sn.recovery);
      sn.lostAtOpen = await recoverVolatile(sn.maintained);
      debug('opened %s (options %o, overlay options %o)', abs, resolved, settings.overlayOptions);
      return sn;
    } catch (err) {
      store.close();
      throw err;
    }
  }

  /** The crash leftovers {@link open} removed: staging dirs, unrecorded ids, abandoned snapshots (see {@link cleanup}). */
  get recovered(): RecoveryReport {
    return this.recovery;
  }

  private ensureOpen(): void {
    if (this.closed) throw new UnavailableError(`snapshotter at ${this.root} is closed; open it again with Snapshotter.open()`);
  }

  /**
   * Returns the metadata of the snapshot `key` (any kind).
   * @throws NotFoundError when `key` does not exist.
   */
  async stat(key: string): Promise<Info> {
    this.ensureOpen();
    checkKey(key, 'key');
    const rec = this.store.record(key);
    if (rec === undefined) throw new NotFoundError(`snapshot ${q(key)} not found`);
    return this.toInfo(rec);
  }

  /**
   * Changes the labels of `info.name` and returns the new Info. Without
   * fieldpaths all labels are replaced by `info.labels`; with `labels.<k>`
   * paths only those keys are set (or deleted, when absent or '' in
   * `info.labels`); `labels` replaces them all. Other fields are ignored.
   * @throws NotFoundError when the snapshot does not exist.
   * @throws InvalidArgumentError for a fieldpath other than `labels` or
   *   `labels.<k>`, or a label too large.
   */
  async update(info: Partial<Info> & { name: string }, ...fieldpaths: string[]): Promise<Info> {
    this.ensureOpen();
    if (typeof info !== 'object' || info === null) throw new InvalidArgumentError('Expected info to be an object with a `name`');
    const key = checkKey(info.name, 'info.name');
    const rec = this.store.updateLabels(
      key,
      (current) => {
        for (const path of fieldpaths) {
          if (typeof path !== 'string' || !(path === 'labels' || (path.startsWith('labels.') && path.length > 7))) {
            throw new InvalidArgumentError(
              `cannot update field ${typeof path === 'string' ? q(path) : typeof path} of snapshot ${q(key)}: only "labels" and "labels.<key>" can be updated`,
            );
          }
        }
        const incoming = checkLabels(info.labels, true);
        const dropEmpty = (labels: Record<string, string>): Record<string, string> => {
          const out: Record<string, string> = {};
          for (const [k, v] of Object.entries(labels)) if (v !== '') setLabel(out, k, v);
          return out;
        };
        if (fieldpaths.length === 0) return keepFixed(current, dropEmpty(incoming));
        let next = { ...current };
        for (const path of fieldpaths) {
          if (path === 'labels') {
            next = dropEmpty(incoming);
            continue;
          }
          const k = path.slice('labels.'.length);
          const v = Object.hasOwn(incoming, k) ? incoming[k]! : '';
          if (v === '') delete next[k];
          else {
            checkLabelSize(k, v);
            setLabel(next, k, v);
          }
        }
        return keepFixed(current, next);
      },
      wallClock(),
    );
    await this.durable();
    return this.toInfo(rec);
  }

  /**
   * Disk usage: walked live for an active (inode-deduplicated allocated
   * size, like `du -s`), stored at commit for a committed snapshot, zero for
   * a view.
   * @throws NotFoundError when `key` does not exist.
   */
  async usage(key: string): Promise<Usage> {
    this.ensureOpen();
    checkKey(key, 'key');
    const row = this.store.get(key);
    if (row === undefined) throw new NotFoundError(`snapshot ${q(key)} not found`);
    if (row.kind === 'view') return { size: 0, inodes: 0 };
    if (row.kind === 'committed') return { size: row.size, inodes: row.inodes };
    const upper = fsDir(this.settings, row.id);
    const usage = diskUsage(upper);
    if (usage.inodes === 0) {
      // Removed meanwhile (NotFound), or the store is damaged.
      if (this.store.get(key)?.id !== row.id) throw new NotFoundError(`snapshot ${q(key)} not found`);
      throw this.missingDir(key, upper);
    }
    return usage;
  }

  /**
   * The mount spec of an active or view snapshot (always one mount).
   * @throws NotFoundError when `key` does not exist.
   * @throws FailedPreconditionError when `key` is committed.
   */
  async mounts(key: string): Promise<Mount[]> {
    // Hot path: one read, parent links from cache.
    this.ensureOpen();
    checkKey(key, 'key');
    const found = this.store.rowWithChain(key);
    if (found === undefined) throw new NotFoundError(`snapshot ${q(key)} not found`);
    const { row, labels, chain } = found;
    if (row.kind === 'committed') {
      throw new FailedPreconditionError(`snapshot ${q(key)} is committed and has no mounts; prepare or view an active snapshot on it instead`);
    }
    const idmap = this.options.remapIds ? idmapOptions(labels) : [];
    const volatile = row.kind === 'active' && chain.length > 0 && this.settings.driver === 'overlay' && labels[VOLATILE_LABEL] === 'true';
    if (volatile) readyVolatile(key, snapshotDir(this.settings, row.id), () => snapshotMounts(this.snapshotsDir, row.id).has(row.id));
    return buildMounts(this.settings, row.kind, row.id, chain, idmap, volatile);
  }

  /**
   * Creates the active snapshot `key` on the committed `parent` (or empty)
   * and returns its mounts.
   *
   * With `volatile` (or the label `containerd.io/snapshot/overlay-snapshotter.volatile`
   * = `true`) its overlay skips every sync of the upper dir, the one at
   * unmount included; it cannot be committed until {@link sync} has made it
   * durable, and {@link open} removes it when the machine went down while
   * it was mounted. `quota` (or the `...quota.size` / `...quota.inodes`
   * labels) bounds what it may hold; see docs/capabilities.md.
   * @throws AlreadyExistsError when `key` is taken.
   * @throws NotFoundError when `parent` does not exist.
   * @throws InvalidArgumentError when `parent` is not committed, or for an
   *   empty key, bad labels, a bad ID-mapping label, a bad `volatile` or
   *   `quota`, or `volatile` without a parent (the mount is then a bind).
   * @throws UnavailableError for `volatile` where the kernel's overlayfs
   *   lacks it or the store's driver is native, and for `quota` (project
   *   quotas: refused in this version, with what the root lacks); nothing
   *   is created then.
   */
  async prepare(key: string, parent?: string, opts?: SnapshotOptions): Promise<Mount[]> {
    return this.create('active', key, parent, opts);
  }

  /**
   * Creates the read-only view `key` of the committed `parent` (or empty)
   * and returns its mounts. Errors as {@link prepare}.
   */
  async view(key: string, parent?: string, opts?: SnapshotOptions): Promise<Mount[]> {
    return this.create('view', key, parent, opts);
  }

  private async create(kind: 'active' | 'view', key: string, parent: string | undefined, opts: SnapshotOptions | undefined): Promise<Mount[]> {
    // Hot path: one transaction holding a rename (plus a chown where the
    // parent asks for one); the staging dir comes ready from the pool
    // (lib/disk/staging.ts), else three mkdirs inside the transaction. The pool's
    // thread makes the next dir while this one waits for the WAL sync.
    this.ensureOpen();
    checkKey(key, 'key');
    const parentKey = checkParent(parent);
    const options = checkCreateOptions(kind, opts);
    const unavailable = unavailableFor(options, parentKey, this.driver, this.capabilities);
    if (unavailable !== undefined) throw unavailable;
    const { labels, volatile } = options;
    let owner: { uid: number; gid: number } | undefined;
    let lateError: Error | undefined;
    try {
      owner = mappedOwner(labels);
    } catch (err) {
      lateError = err as Error;
    }
    let staging: string | undefined;
    let fromPool = false;
    let target: string | undefined;
    let created: { id: number; chain: number[] };
    const stage = (chain: number[]): string => {
      const dir = `${this.snapshotsDir}/${STAGING_PREFIX}${uuidv4()}`;
      staging = dir;
      mkdirSync(dir, 0o700);
      const fs = `${dir}/fs`;
      if (this.settings.driver === 'native' && kind === 'active' && chain.length > 0) {
        // Native driver: the parent's whole tree, copied under the write lock (lib/disk/native.ts).
        copyTree(fsDir(this.settings, chain[0]!), fs);
      } else {
        mkdirSync(fs, 0o755);
        if (!this.umaskClean) chmodSync(fs, 0o755);
      }
      if (kind === 'active') mkdirSync(`${dir}/work`, 0o711);
      return dir;
    };
    const own = (chain: number[], dir: string): void => {
      const fs = `${dir}/fs`;
      if (owner !== undefined) {
        lchownSync(fs, owner.uid, owner.gid);
      } else if (chain.length > 0) {
        const st = this.statParentFs(chain[0]!, parentKey);
        if (st.uid !== process.geteuid?.() || st.gid !== process.getegid?.()) lchownSync(fs, st.uid, st.gid);
      }
    };
    try {
      created = this.store.create(
        { key, kind, parent: parentKey, labels, now: wallClock(), lateError },
        {
          stage: (chain) => {
            // Taken only once the checks passed, so that failed calls leave the pool as it was.
            const pooled = kind === 'active' && this.settings.driver === 'overlay' ? this.pool.take() : undefined;
            if (pooled !== undefined) {
              staging = pooled;
              fromPool = true;
            } else {
              stage(chain);
            }
            own(chain, staging!);
            if (volatile) stampBoot(staging!);
            fault('create:after-staging');
          },
          place: (id, chain) => {
            fault('create:after-record');
            const dir = snapshotDir(this.settings, id);
            try {
              moveIntoPlace(staging!, dir);
            } catch (err) {
              // A pool dir deleted behind our back (by hand, or by an older
              // version's cleanup): stage afresh.
              if (errnoOf(err) !== 'ENOENT' || !fromPool) throw err;
              own(chain, stage(chain));
              if (volatile) stampBoot(staging!);
              moveIntoPlace(staging!, dir);
            }
            target = dir;
            staging = undefined;
            fault('create:after-rename');
          },
        },
      );
    } catch (err) {
      // Nothing was recorded: remove whatever the failed attempt left on disk.
      for (const dir of [staging, target]) if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
      throw err;
    }
    await this.durable();
    const idmap = this.options.remapIds ? idmapOptions(labels) : [];
    return buildMounts(this.settings, kind, created.id, created.chain, idmap, volatile);
  }

  private statParentFs(id: number, parent: string): { uid: number; gid: number } {
    const path = fsDir(this.settings, id);
    try {
      return statSync(path);
    } catch (err) {
      throw new UnavailableError(
        `the directory of parent ${q(parent)} (${path}) is missing or unreadable (${errnoOf(err) ?? String(err)}); the store is damaged: run check() and restore or remove ${q(parent)}`,
        { cause: err },
      );
    }
  }

  /**
   * Turns the active snapshot `key` into the committed snapshot `name`
   * (same directory, no data moved); `key` is gone afterwards. Its usage is
   * measured and stored. Labels are those passed here, not the active's.
   * @throws AlreadyExistsError when `name` is taken (checked first).
   * @throws NotFoundError when `key` does not exist.
   * @throws FailedPreconditionError when `key` is a view or committed, or
   *   volatile and not yet made durable by {@link sync}.
   */
  async commit(name: string, key: string, opts?: SnapshotOptions): Promise<void> {
    this.ensureOpen();
    checkKey(name, 'name');
    checkKey(key, 'key');
    const labels = checkSnapshotOptions(opts);
    refuseFixedLabels(labels, 'a commit');
    const row = this.store.checkCommit(name, key);
    if (this.store.label(key, VOLATILE_LABEL) === 'true') {
      throw new FailedPreconditionError(
        `cannot commit volatile snapshot ${q(key)}: its data was never made durable (overlayfs skipped every sync of its upper); call sync(${JSON.stringify(key)}) first, once it is unmounted`,
      );
    }
    // The usage walk and the sync are slow disk work: done outside the write transaction.
    const upper = fsDir(this.settings, row.id);
    let usage: Usage;
    try {
      usage = diskUsage(upper);
      if (usage.inodes === 0) throw Object.assign(new Error(`${upper} is missing`), { code: 'ENOENT' });
      // The layer's data must be on disk before the record says it is committed.
      if (this.options.durableLayers) syncFilesystem(upper);
    } catch (err) {
      if (errnoOf(err) !== 'ENOENT') throw err;
      // Removed meanwhile (NotFound, also when recreated under the same key), or the store is damaged.
      if (this.store.checkCommit(name, key).id !== row.id) throw new NotFoundError(`snapshot ${q(key)} was removed and recreated while it was being committed; commit the new one again`);
      throw this.missingDir(key, upper);
    }
    this.ensureOpen();
    fault('commit:before-transaction');
    this.store.commit({ name, key, id: row.id, labels, size: usage.size, inodes: usage.inodes, now: wallClock() });
    fault('commit:after-transaction');
    await this.durable();
  }

  /**
   * Makes the data of the active snapshot `key` durable: one `syncfs` of
   * its upper dir's filesystem. For a volatile snapshot (see
   * {@link prepare}) it also clears the volatile mark, so that it can be
   * committed, and the kernel's mark of its earlier mounts, so that it can
   * be mounted again (its mounts are then ordinary, synced ones).
   * @throws NotFoundError when `key` does not exist.
   * @throws FailedPreconditionError when `key` is not active; for a
   *   volatile one, when it is mounted (the mount would go on skipping
   *   syncs) or its upper was mounted when the machine last went down.
   */
  async sync(key: string): Promise<void> {
    this.ensureOpen();
    checkKey(key, 'key');
    const rec = this.store.record(key);
    if (rec === undefined) throw new NotFoundError(`snapshot ${q(key)} not found`);
    if (rec.kind !== 'active') throw new FailedPreconditionError(`cannot sync ${q(key)}: it is ${rec.kind === 'view' ? 'a view' : 'committed'}, and only an active snapshot has an upper to sync`);
    const dir = snapshotDir(this.settings, rec.id);
    const volatile = rec.labels[VOLATILE_LABEL] === 'true';
    if (volatile) checkSyncable(key, dir, snapshotMounts(this.snapshotsDir, rec.id).get(rec.id));
    const upper = fsDir(this.settings, rec.id);
    try {
      syncFilesystem(upper);
    } catch (err) {
      if (errnoOf(err) !== 'ENOENT') throw err;
      if (this.store.get(key)?.id !== rec.id) throw new NotFoundError(`snapshot ${q(key)} not found`);
      throw this.missingDir(key, upper);
    }
    if (!volatile) return;
    forgetVolatile(dir);
    this.store.updateLabels(key, (current) => withoutLabel(current, VOLATILE_LABEL), wallClock());
    await this.durable();
  }

  /**
   * Returns once what this call committed is on disk. It first lets the
   * calls started in the same turn commit too (`Promise.all` of many
   * prepares), so that one sync serves them all. Then, alone, it syncs the
   * WAL on this thread (a thread-pool round trip would cost more than it
   * overlaps), which makes the later ones' syncs no-ops; while other calls
   * wait for a sync or delete a removed snapshot, it waits for the next
   * sync on the pool instead, which serves every call that committed
   * before it starts (group commit): many callers at once cost one sync per
   * group, not one each.
   */
  private async durable(): Promise<void> {
    await undefined;
    if (this.deleting > 0 || this.store.syncing) await this.store.durable();
    else this.store.durableNow();
  }

  private missingDir(key: string, path: string): UnavailableError {
    return new UnavailableError(`the directory of snapshot ${q(key)} (${path}) is missing; the store is damaged: run check() and remove ${q(key)}`);
  }

  /**
   * Removes the snapshot `key`, which must have no children. In sync mode
   * (the default) its directory is deleted once the record is gone; with
   * `asyncRemove` only the record goes and {@link cleanup} deletes the
   * directory later.
   * @throws NotFoundError when `key` does not exist.
   * @throws FailedPreconditionError when other snapshots depend on it.
   */
  async remove(key: string): Promise<void> {
    this.ensureOpen();
    checkKey(key, 'key');
    if (this.options.unmountOnRemove) {
      const row = this.store.get(key);
      for (const mountPoint of row === undefined ? [] : (snapshotMounts(this.snapshotsDir).get(row.id) ?? [])) {
        debug('remove %s: unmounting %s first', key, mountPoint);
        await unmountAll(mountPoint);
      }
    }
    const row = this.store.remove(key, (found) => {
      const users = snapshotMounts(this.snapshotsDir, found.id).get(found.id);
      if (users !== undefined) {
        throw new FailedPreconditionError(
          `cannot remove ${q(key)}: it is mounted at ${users.join(', ')}; unmount it first (or open the snapshotter with \`unmountOnRemove\`)`,
        );
      }
    });
    fault('remove:after-record');
    if (this.options.asyncRemove) {
      await this.durable();
      return;
    }
    // semantics.md deletes the dir once the transaction has committed, not
    // once it is synced: the deletion runs while the WAL sync does.
    const durable = this.store.durable();
    durable.catch(() => {}); // awaited below
    const dir = snapshotDir(this.settings, row.id);
    this.deleting++;
    try {
      const alone = this.deleting === 1;
      // An active snapshot's dir left as it was made goes back to the staging pool (lib/disk/recycle.ts).
      const reused = row.kind === 'active' && this.settings.driver === 'overlay' && this.pool.adopting && (await emptyForReuse(dir, alone, this.umaskClean)) && this.pool.adopt(dir);
      if (!reused) await deleteSnapshotDir(dir, alone);
    } catch (err) {
      // The record is gone, so the dir is an orphan that cleanup() removes.
      debug('remove %s: deleting %s failed, left for cleanup: %s', key, dir, (err as Error).message);
    } finally {
      this.deleting--;
    }
    await durable;
  }

  /**
   * Calls `fn` for every snapshot matching any of `filters` (containerd
   * filter syntax), in key order, one at a time, each awaited. No filter
   * matches all. `fn` may call other methods, such as `stat`.
   * @throws InvalidArgumentError when a filter does not parse (before any call).
   */
  async walk(fn: (info: Info) => void | Promise<void>, ...filters: string[]): Promise<void> {
    this.ensureOpen();
    if (typeof fn !== 'function') throw new InvalidArgumentError(`Expected walk's first argument to be a function, got ${typeof fn}`);
    const filter = parseFilters(filters);
    for (const rec of this.store.walk(filter)) await fn(this.toInfo(rec));
  }

  /**
   * Deletes every entry of `<root>/snapshots` that is not a live snapshot:
   * directories of removed snapshots and leftovers of crashed creations.
   * The entries are chosen while holding the store's write lock, so a
   * staging dir that another call or process is filling is never touched.
   * A directory that is still mounted somewhere is skipped and reported.
   * First it removes abandoned actives and views, unmounted ones whose
   * owner label names a process that is gone (docs/reliability.md).
   */
  async cleanup(): Promise<CleanupReport> {
    this.ensureOpen();
    return cleanup(this.maintained);
  }

  /**
   * Lists every inconsistency between records and directories: a record
   * whose directory, `fs` or `work` is missing, and every entry of
   * `snapshots/` that no record owns (mounted or not), and abandoned
   * actives and views. With `{ repair: true }` it fixes what is safe to fix
   * (removes unmounted orphans and abandoned snapshots, recreates a missing
   * `work` dir) and reports the rest.
   */
  async check(options: { repair?: boolean } = {}): Promise<CheckReport> {
    this.ensureOpen();
    if (typeof options !== 'object' || options === null) throw new InvalidArgumentError('Expected check options to be an object like { repair: true }');
    for (const name of Object.keys(options)) {
      if (name !== 'repair') throw new InvalidArgumentError(`Unknown check option \`${name}\`; the only one is \`repair\``);
    }
    return check(this.maintained, options.repair === true, { driver: this.driver, reason: this.driverReason });
  }

  /**
   * Removes the snapshots that nothing keeps alive, children before
   * parents, and reports what it removed (with the measured bytes and
   * inodes reclaimed) and what it kept and why. Kept: roots
   * (`containerd.io/gc.root`), snapshots referenced by a kept snapshot's
   * `containerd.io/gc.ref.snapshot.<snapshotter>[/<suffix>]` label, parents
   * of kept snapshots, actives and views (unless `includeActive`, or
   * abandoned), snapshots whose owner label names a live process, anything
   * mounted, and what the filters exclude. See {@link PruneOptions}.
   *
   * Records go in one transaction, so a snapshot created meanwhile (here or
   * in another process) is never removed; directories are deleted after it.
   * @throws UnavailableError when another prune is running on this root.
   * @throws InvalidArgumentError for bad options or filters.
   */
  async prune(options?: PruneOptions): Promise<PruneReport> {
    this.ensureOpen();
    return prune(this.maintained, resolvePruneOptions(options));
  }

  /**
   * Waits for the last commit's sync, removes the staging dirs made ahead
   * (lib/disk/staging.ts) and closes the metadata store. Every later call fails
   * with UnavailableError; closing twice is fine.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    try {
      await Promise.all([this.pool.close(), this.store.durable()]);
    } finally {
      this.store.close();
    }
  }

  private toInfo(rec: Record_): Info {
    const labels = rec.labels;
    if (this.options.upperdirLabel && rec.kind !== 'committed') setLabel(labels, UPPERDIR_LABEL, fsDir(this.settings, rec.id));
    const info: Info = {
      kind: rec.kind as Kind,
      name: rec.key,
      labels,
      created: new Date(rec.created),
      createdNanos: rec.createdNanos,
      updated: new Date(rec.updated),
      updatedNanos: rec.updatedNanos,
    };
    if (rec.parentName !== null) info.parent = rec.parentName;
    return info;
  }
}

