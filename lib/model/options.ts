/**
 * Snapshotter options: the public interface, its defaults in one place, and
 * a flat list of guards that turn a caller's mistake into an
 * InvalidArgumentError saying what was expected and what came.
 *
 * Pure: it checks and resolves, and opens nothing.
 */
import { InvalidArgumentError } from './errors.js';
import type { Driver } from './types.js';

/** Options of {@link Snapshotter.open}. Every field is optional. */
export interface SnapshotterOptions {
  /**
   * Defer the disk work of `remove()` to `cleanup()`: `remove` only deletes
   * the record, and `cleanup` later deletes every directory no record owns.
   * @default false
   */
  asyncRemove?: boolean;
  /**
   * Make `stat`, `update` and `walk` show the label
   * `containerd.io/snapshot/overlay.upperdir` with the upper directory of
   * actives and views (filters are evaluated before it is added).
   * @default false
   */
  upperdirLabel?: boolean;
  /**
   * Extra overlay mount options, placed before `userxattr` and `index=off`
   * in every overlay mount spec, e.g. `['redirect_dir=on']` or
   * `['index=on']` (which suppresses the automatic `index=off`).
   * `lowerdir=`, `upperdir=` and `workdir=` are managed by the snapshotter
   * and refused here.
   * @default []
   */
  mountOptions?: string[];
  /**
   * Add `uidmap=`/`gidmap=` options (first) to the overlay mount specs of
   * snapshots carrying the labels `containerd.io/snapshot/uidmapping` and
   * `containerd.io/snapshot/gidmapping`, for kernels with idmapped overlay
   * layers.
   * @default false
   */
  remapIds?: boolean;
  /**
   * Add `userxattr` to overlay specs. `'auto'` adds it when the process runs
   * in a user namespace on kernel 5.11+ and the root's filesystem stores
   * `user.*` xattrs (not tmpfs before Linux 6.6): see
   * `capabilities.userxattrNeeded` and docs/capabilities.md.
   * @default 'auto'
   */
  userxattr?: boolean | 'auto';
  /**
   * Make a layer's data durable before `commit` records it (one `syncfs`
   * of the snapshot's filesystem), so that a power cut can never leave a
   * committed layer with missing or empty files. Turn it off only where
   * layers are throwaway (CI builds): commits are then faster, and after a
   * power cut a committed layer may have lost data.
   * @default true
   */
  durableLayers?: boolean;
  /**
   * Let `remove` unmount what is mounted from the snapshot (a container's
   * rootfs) before removing it. Without it, `remove` of a mounted snapshot
   * fails with FailedPreconditionError naming the mount point.
   * @default false
   */
  unmountOnRemove?: boolean;
  /**
   * How long a call waits, in milliseconds, for another process holding the
   * metadata store's write lock before it fails with UnavailableError.
   * @default 30000
   */
  busyTimeout?: number;
  /**
   * How snapshots are stored and mounted. `'overlay'` stacks layers with
   * overlayfs; `'native'` works on any root: each new active with a parent
   * starts as a full copy of its parent's tree (reflinked where the
   * filesystem can), and every mount is a bind. See docs/capabilities.md.
   *
   * The driver belongs to the data, so a store records it when it is
   * created and keeps it: when not given, an existing store uses its own,
   * and a new store takes `'overlay'` where the root supports it (see
   * `capabilities.defaultDriver`), else `'native'`. Given, it must match
   * an existing store's driver (else FailedPreconditionError, nothing
   * changed); `'overlay'` on a root where overlay cannot run (a root on
   * overlayfs, a filesystem without d_type, no overlay in the kernel)
   * fails with UnavailableError.
   * @default not given: the store's own driver, or chosen for a new store
   */
  driver?: Driver | undefined;
}

/** Options after defaults are applied. */
export interface ResolvedOptions {
  readonly asyncRemove: boolean;
  readonly upperdirLabel: boolean;
  readonly mountOptions: readonly string[];
  readonly remapIds: boolean;
  readonly userxattr: boolean | 'auto';
  readonly busyTimeout: number;
  readonly durableLayers: boolean;
  readonly unmountOnRemove: boolean;
  /** `undefined`: not given (the store's recorded driver, or chosen at creation). */
  readonly driver: Driver | undefined;
}

const DEFAULTS: ResolvedOptions = {
  asyncRemove: false,
  upperdirLabel: false,
  mountOptions: [],
  remapIds: false,
  userxattr: 'auto',
  busyTimeout: 30_000,
  durableLayers: true,
  unmountOnRemove: false,
  driver: undefined,
};

const KNOWN = Object.keys(DEFAULTS) as (keyof ResolvedOptions)[];

/** Options that the snapshotter sets itself and a caller must not pass in `mountOptions`. */
const MANAGED_MOUNT_OPTIONS = ['lowerdir', 'upperdir', 'workdir', 'lowerdir+', 'datadir+'];

function describe(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'array';
  return typeof value;
}

/** Levenshtein distance, for "did you mean" on misspelt option names. */
function distance(a: string, b: string): number {
  const row = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    let prev = row[0]!;
    row[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const cur = row[j]!;
      row[j] = Math.min(row[j]! + 1, row[j - 1]! + 1, prev + (a[i - 1]!.toLowerCase() === b[j - 1]!.toLowerCase() ? 0 : 1));
      prev = cur;
    }
  }
  return row[b.length]!;
}

function suggestion(name: string): string {
  let best: string | undefined;
  let bestDistance = Infinity;
  for (const known of KNOWN) {
    const d = distance(name, known);
    if (d < bestDistance) {
      best = known;
      bestDistance = d;
    }
  }
  return best !== undefined && bestDistance <= 3 ? `; did you mean \`${best}\`?` : `; known options: ${KNOWN.join(', ')}`;
}

function checkMountOption(option: unknown, index: number): void {
  if (typeof option !== 'string') {
    throw new InvalidArgumentError(`Expected \`mountOptions[${index}]\` to be a string, got ${describe(option)}`);
  }
  if (option === '' || /[,\0\n]/.test(option)) {
    throw new InvalidArgumentError(
      `Expected \`mountOptions[${index}]\` to be one non-empty mount option without commas, NUL or newlines, got ${JSON.stringify(option)}; pass each option as its own array element`,
    );
  }
  const name = option.split('=', 1)[0]!;
  if (MANAGED_MOUNT_OPTIONS.includes(name)) {
    throw new InvalidArgumentError(
      `\`mountOptions\` must not set \`${name}\`: the snapshotter builds lowerdir, upperdir and workdir itself`,
    );
  }
}

/**
 * Validates `options` and applies defaults. Throws InvalidArgumentError for
 * an unknown option (naming the closest known one) or a value of the wrong type.
 */
export function resolveOptions(options: unknown): ResolvedOptions {
  if (options === undefined || options === null) return { ...DEFAULTS };
  if (typeof options !== 'object' || Array.isArray(options)) {
    throw new InvalidArgumentError(`Expected options to be an object, got ${describe(options)}`);
  }
  const input = options as Record<string, unknown>;
  for (const name of Object.keys(input)) {
    if (!(KNOWN as string[]).includes(name)) {
      throw new InvalidArgumentError(`Unknown option \`${name}\`${suggestion(name)}`);
    }
  }
  const out: Record<string, unknown> = Object.create(null);
  for (const name of KNOWN) out[name] = input[name] === undefined ? DEFAULTS[name] : input[name];

  for (const name of ['asyncRemove', 'upperdirLabel', 'remapIds', 'durableLayers', 'unmountOnRemove'] as const) {
    if (typeof out[name] !== 'boolean') {
      throw new InvalidArgumentError(`Expected \`${name}\` to be a boolean, got ${describe(out[name])}`);
    }
  }
  if (out.driver !== undefined && out.driver !== 'overlay' && out.driver !== 'native') {
    throw new InvalidArgumentError(`Expected \`driver\` to be 'overlay' or 'native', got ${typeof out.driver === 'string' ? JSON.stringify(out.driver) : describe(out.driver)}`);
  }
  if (out.userxattr !== 'auto' && typeof out.userxattr !== 'boolean') {
    throw new InvalidArgumentError(`Expected \`userxattr\` to be true, false or 'auto', got ${describe(out.userxattr)}`);
  }
  const timeout = out.busyTimeout;
  if (typeof timeout !== 'number' || !Number.isInteger(timeout) || timeout < 0 || timeout > 2 ** 31 - 1) {
    throw new InvalidArgumentError(`Expected \`busyTimeout\` to be a whole number of milliseconds (0 to 2147483647), got ${describe(timeout) === 'number' ? String(timeout) : describe(timeout)}`);
  }
  if (!Array.isArray(out.mountOptions)) {
    throw new InvalidArgumentError(`Expected \`mountOptions\` to be an array of strings, got ${describe(out.mountOptions)}`);
  }
  out.mountOptions.forEach(checkMountOption);
  out.mountOptions = Object.freeze([...(out.mountOptions as string[])]);
  return Object.freeze(out) as unknown as ResolvedOptions;
}
