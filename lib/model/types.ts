/**
 * Public data shapes shared by every module (see shared/spec/api.md).
 * Types only: no code, no imports.
 */

/** What a snapshot is: a writable `active`, a read-only `view`, or an immutable `committed` layer. */
export type Kind = 'view' | 'active' | 'committed';

/**
 * How a store keeps its snapshots: `overlay` diffs stacked at mount time,
 * or `native` full trees bound as they are. A property of the data, recorded
 * when the store is created (lib/disk/driver.ts).
 */
export type Driver = 'overlay' | 'native';

/** Metadata of one snapshot, as returned by `stat`, `update` and `walk`. */
export interface Info {
  /** What the snapshot is. */
  kind: Kind;
  /** The key (active or view) or name (committed). */
  name: string;
  /** Name of the committed parent; absent when the snapshot has none. */
  parent?: string;
  /** Labels; always present, `{}` when there are none. */
  labels: Record<string, string>;
  /** When the snapshot (or, for a committed one, the commit) was made, to the millisecond. */
  created: Date;
  /**
   * Nanoseconds past `created`'s millisecond, 0 to 999,999: the clock's
   * full precision, as containerd's Timestamps carry it. The time in
   * nanoseconds since the epoch is
   * `BigInt(created.getTime()) * 1_000_000n + BigInt(createdNanos)`.
   * 0 for snapshots made before the store kept nanoseconds.
   */
  createdNanos: number;
  /** When the snapshot was last changed by `update` (equals `created` until then), to the millisecond. */
  updated: Date;
  /** Nanoseconds past `updated`'s millisecond, 0 to 999,999 (see `createdNanos`). */
  updatedNanos: number;
}

/** Disk usage of a snapshot: allocated bytes (like `du -s`) and distinct inodes. */
export interface Usage {
  size: number;
  inodes: number;
}

/** A mount spec, with the same fields as containerd's `mount.Mount`. */
export interface Mount {
  /** Filesystem type: `bind` or `overlay`. */
  type: string;
  /** Source path for a bind, `overlay` for an overlay. */
  source: string;
  /** Optional target; `mountAll` takes the target as an argument instead. */
  target?: string;
  /** fstab-style words: flags such as `ro`, `rbind`, and filesystem data such as `lowerdir=...`. */
  options: string[];
}

/** Options of `prepare`, `view` and `commit`. */
export interface SnapshotOptions {
  /** Labels to set on the new snapshot. A label whose value is `''` is not stored. */
  labels?: Record<string, string>;
  /**
   * `prepare` only: mount the new active's overlay with `volatile`, which
   * skips every sync of its upper dir (the one at unmount included). It
   * cannot be committed until `sync(key)` has made it durable, and `open`
   * removes it when the machine went down while it was mounted. Same as
   * the label `containerd.io/snapshot/overlay-snapshotter.volatile` =
   * `'true'`, which it sets. Needs a parent (else the mount is a bind).
   * @default false
   */
  volatile?: boolean;
  /**
   * `prepare` only: bound what the new active's upper dir may hold, in
   * bytes (a number, or a string such as `'512M'` or `'10G'`, powers of
   * 1024) and in inodes, through project quotas. Same as the labels
   * `containerd.io/snapshot/overlay-snapshotter.quota.size` and
   * `.../quota.inodes`. Refused with UnavailableError in this version (see
   * docs/capabilities.md, "Size and inode quotas").
   */
  quota?: { size?: number | string; inodes?: number | string };
}
