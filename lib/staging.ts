/**
 * Staging dirs made ahead of time. A new active snapshot is staged as
 * `snapshots/new-*` with `fs` and `work` inside, recorded, then renamed to
 * its id. The three mkdirs cost about as much as the rest of a prepare; the
 * pool makes them on the thread pool while the main thread waits for the
 * previous call's WAL sync, so that a burst of prepares pays for the sync
 * and the rename only.
 *
 * A pool dir is named `new-<pid>.<start>-<uuid>` after the process that
 * made it (see lib/liveness.ts): while that process runs, the dir is a
 * staging dir in use and cleanup leaves it alone; once the process is gone
 * it is a leftover like any other `new-*` dir, removed by the next open or
 * cleanup. `close()` removes the pool's dirs.
 */
import { chmod, mkdir, rmdir } from 'node:fs/promises';
import createDebug from 'debug';
import { v4 as uuidv4 } from 'uuid';
import { isAlive, selfTag } from './liveness.js';

const debug = createDebug('overlay-snapshotter:staging');

/** Prefix of staging dirs under `<root>/snapshots`; they never count as snapshots. */
export const STAGING_PREFIX = 'new-';

/** Dirs kept ready: enough for a burst of prepares, each refilled while the next waits for its sync. */
const POOL_SIZE = 2;

const OWNED = /^new-([1-9][0-9]*)\.([0-9]+)-/;

/**
 * A predicate telling which entries of `snapshots/` are staging dirs of a
 * live process's pool (memoised per pid: build one per scan).
 */
export function livePoolDirs(): (name: string) => boolean {
  const alive = new Map<string, boolean>();
  return (name) => {
    const m = OWNED.exec(name);
    if (m === null) return false;
    const owner = `${m[1]}.${m[2]}`;
    let live = alive.get(owner);
    if (live === undefined) {
      live = isAlive(Number(m[1]), m[2]);
      alive.set(owner, live);
    }
    return live;
  };
}

/** Empty active-snapshot staging dirs (`fs` 0755, `work` 0711), made ahead on the thread pool. */
export class StagingPool {
  private readonly ready: string[] = [];
  private readonly filling = new Set<Promise<void>>();
  private closed = false;

  /**
   * @param snapshotsDir `<root>/snapshots`.
   * @param umaskClean whether mkdir's mode survives the umask (else `fs` is chmod'ed).
   */
  constructor(
    private readonly snapshotsDir: string,
    private readonly umaskClean: boolean,
  ) {}

  /** A ready staging dir, now the caller's, or undefined when none is ready. Starts making the next. */
  take(): string | undefined {
    const dir = this.ready.pop();
    this.refill();
    return dir;
  }

  /** Starts making dirs until {@link POOL_SIZE} are ready or in the making. */
  private refill(): void {
    while (!this.closed && this.ready.length + this.filling.size < POOL_SIZE) {
      const fill = this.make().finally(() => this.filling.delete(fill));
      this.filling.add(fill);
    }
  }

  private async make(): Promise<void> {
    const tag = selfTag();
    const dir = `${this.snapshotsDir}/${STAGING_PREFIX}${tag.pid}.${tag.start ?? 0}-${uuidv4()}`;
    try {
      await mkdir(dir, 0o700);
      await Promise.all([
        mkdir(`${dir}/fs`, 0o755).then(() => (this.umaskClean ? undefined : chmod(`${dir}/fs`, 0o755))),
        mkdir(`${dir}/work`, 0o711),
      ]);
    } catch (err) {
      // Not fatal: prepare makes its own staging dir when none is ready.
      debug('cannot make staging dir %s: %s', dir, (err as Error).message);
      await removeStaging(dir);
      return;
    }
    if (this.closed) await removeStaging(dir);
    else this.ready.push(dir);
  }

  /** Stops refilling, waits for dirs in the making, and removes every ready dir. */
  async close(): Promise<void> {
    this.closed = true;
    await Promise.all(this.filling);
    await Promise.all(this.ready.splice(0).map(removeStaging));
  }
}

/** Removes an unused staging dir (its empty `work` and `fs`, then itself); what is already gone is fine. */
async function removeStaging(dir: string): Promise<void> {
  for (const path of [`${dir}/work`, `${dir}/fs`, dir]) {
    try {
      await rmdir(path);
    } catch (err) {
      if ((err as { code?: string }).code !== 'ENOENT') debug('cannot remove staging dir %s: %s', path, (err as Error).message);
    }
  }
}
