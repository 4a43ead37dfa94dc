/**
 * Garbage collection: which snapshots nothing keeps alive, following
 * containerd's GC labels, with Docker-style prune filters and rkt-style
 * two-phase marking. This module plans; the Snapshotter carries the plan
 * out (records in one transaction, directories afterwards).
 *
 * Pure over records (model/): touches no file and no store. The facade's
 * maintenance.ts runs the plan.
 */
import { InvalidArgumentError, q } from './model/errors.js';
import { type Filter, parseFilters } from './model/filters.js';
import type { Record_ } from './model/record.js';
import type { Kind } from './model/types.js';

/** Marks a root: kept, with its parents. */
export const GC_ROOT_LABEL = 'containerd.io/gc.root';
/** `containerd.io/gc.ref.snapshot.<snapshotter>[/<suffix>] = <key>` keeps `<key>` alive. */
export const GC_REF_PREFIX = 'containerd.io/gc.ref.snapshot.';

/** Options of `Snapshotter.prune()`. */
export interface PruneOptions {
  /**
   * Docker-style filters, ANDed: `until=<timestamp|duration>` (only
   * snapshots not updated since then: RFC 3339, Unix seconds, or a Go
   * duration such as `24h` or `90m` before now), `label=<k>` /
   * `label=<k>=<v>` (only snapshots with that label; several must all
   * match), `label!=<k>` / `label!=<k>=<v>` (keep snapshots that match all
   * of them). Any other string is a walk filter (containerd syntax); walk
   * filters are ORed with each other and ANDed with the rest.
   */
  filters?: string[];
  /**
   * Also remove unreferenced actives and views (kept by default, except
   * those whose owner label names a process that is gone). @default false
   */
  includeActive?: boolean;
  /** Report what would be removed, and remove nothing. @default false */
  dryRun?: boolean;
  /**
   * Two-phase removal: a candidate is only marked on the first prune that
   * finds it, and removed by a later prune once it has stayed a candidate
   * for this many milliseconds. @default 0 (remove at once)
   */
  gracePeriod?: number;
  /** Mark candidates (for a later prune with `gracePeriod`) and remove nothing. @default false */
  markOnly?: boolean;
  /** The `<snapshotter>` part of `gc.ref.snapshot.<snapshotter>` labels that count. @default 'overlayfs' */
  snapshotterName?: string;
  /** The clock, in milliseconds since the epoch (injectable for tests). @default Date.now */
  now?: () => number;
  /** Called as directories are removed (and measured, in a dry run). */
  onProgress?: (progress: PruneProgress) => void;
}

export interface PruneProgress {
  done: number;
  total: number;
  /** Bytes reclaimed (or, in a dry run, that would be) so far. */
  bytes: number;
}

/** Why a snapshot was kept. */
export type KeepReason = 'root' | 'referenced' | 'parent' | 'active' | 'leased' | 'mounted' | 'too-young' | 'filtered' | 'grace-period';

export interface PruneReport {
  dryRun: boolean;
  /**
   * Removed (or, in a dry run, removable) snapshots, children before
   * parents, with their measured usage; `abandoned` marks an active or view
   * whose owner label names a process that is gone (removed without
   * `includeActive`).
   */
  removed: { name: string; kind: Kind; size: number; inodes: number; abandoned?: true }[];
  /** Every other snapshot, with the reason it was kept. */
  kept: { name: string; kind: Kind; reason: KeepReason }[];
  /** Candidates marked by this prune (mark-only or grace period). */
  marked: string[];
  /** Measured usage of what was removed. */
  reclaimed: { bytes: number; inodes: number };
}

export interface ResolvedPruneOptions {
  readonly includeActive: boolean;
  readonly dryRun: boolean;
  readonly gracePeriod: number;
  readonly markOnly: boolean;
  readonly snapshotterName: string;
  readonly now: () => number;
  readonly onProgress: ((progress: PruneProgress) => void) | undefined;
  readonly until: number | undefined;
  readonly labels: readonly LabelFilter[];
  readonly notLabels: readonly LabelFilter[];
  readonly walk: Filter | undefined;
}

interface LabelFilter {
  key: string;
  value?: string;
}

const KNOWN = ['filters', 'includeActive', 'dryRun', 'gracePeriod', 'markOnly', 'snapshotterName', 'now', 'onProgress'];

const GO_DURATION = /^(?:(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h))+$/;
const UNIT_MS: Record<string, number> = { ns: 1e-6, us: 1e-3, µs: 1e-3, μs: 1e-3, ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/** Parses Docker's `until` value into an instant (ms since the epoch). */
export function parseUntil(value: string, now: number): number {
  if (GO_DURATION.test(value)) {
    let ms = 0;
    for (const [, n, unit] of value.matchAll(/(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)/g)) ms += Number(n) * UNIT_MS[unit!]!;
    return now - ms;
  }
  if (/^\d+(\.\d+)?$/.test(value)) return Number(value) * 1000;
  if (/^\d{4}-\d{2}-\d{2}([T ][\d:.]+(Z|[+-]\d{2}:?\d{2})?)?$/.test(value)) {
    const t = Date.parse(value);
    if (!Number.isNaN(t)) return t;
  }
  throw new InvalidArgumentError(
    `invalid until filter ${q(value)}: expected a duration such as 24h or 90m, Unix seconds, or an RFC 3339 timestamp such as 2026-01-02T15:04:05Z`,
  );
}

function parseLabelFilter(value: string, name: string): LabelFilter {
  if (value === '') throw new InvalidArgumentError(`invalid ${name} filter: expected ${name}=<key> or ${name}=<key>=<value>`);
  const eq = value.indexOf('=');
  return eq < 0 ? { key: value } : { key: value.slice(0, eq), value: value.slice(eq + 1) };
}

/** Validates prune options and applies defaults. */
export function resolvePruneOptions(options: unknown): ResolvedPruneOptions {
  const input = (options ?? {}) as Record<string, unknown>;
  if (typeof input !== 'object' || Array.isArray(input)) throw new InvalidArgumentError('Expected prune options to be an object');
  for (const name of Object.keys(input)) {
    if (!KNOWN.includes(name)) throw new InvalidArgumentError(`Unknown prune option \`${name}\`; known options: ${KNOWN.join(', ')}`);
  }
  for (const name of ['includeActive', 'dryRun', 'markOnly']) {
    if (input[name] !== undefined && typeof input[name] !== 'boolean') throw new InvalidArgumentError(`Expected \`${name}\` to be a boolean, got ${typeof input[name]}`);
  }
  const grace = input.gracePeriod ?? 0;
  if (typeof grace !== 'number' || !Number.isFinite(grace) || grace < 0) {
    throw new InvalidArgumentError(`Expected \`gracePeriod\` to be a number of milliseconds ≥ 0, got ${String(grace)}`);
  }
  const name = input.snapshotterName ?? 'overlayfs';
  if (typeof name !== 'string' || name === '') throw new InvalidArgumentError('Expected `snapshotterName` to be a non-empty string');
  const now = input.now ?? Date.now;
  if (typeof now !== 'function') throw new InvalidArgumentError('Expected `now` to be a function returning milliseconds');
  if (input.onProgress !== undefined && typeof input.onProgress !== 'function') throw new InvalidArgumentError('Expected `onProgress` to be a function');
  const filters = input.filters ?? [];
  if (!Array.isArray(filters) || filters.some((f) => typeof f !== 'string')) {
    throw new InvalidArgumentError('Expected `filters` to be an array of strings such as "until=24h" or "label=app=web"');
  }
  let until: number | undefined;
  const labels: LabelFilter[] = [];
  const notLabels: LabelFilter[] = [];
  const walk: string[] = [];
  for (const f of filters as string[]) {
    if (f.startsWith('until=')) {
      if (until !== undefined) throw new InvalidArgumentError('more than one until filter given; pass one');
      until = parseUntil(f.slice(6), (now as () => number)());
    } else if (f.startsWith('label!=')) {
      notLabels.push(parseLabelFilter(f.slice(7), 'label!'));
    } else if (f.startsWith('label=')) {
      labels.push(parseLabelFilter(f.slice(6), 'label'));
    } else {
      walk.push(f);
    }
  }
  return {
    includeActive: input.includeActive === true,
    dryRun: input.dryRun === true,
    gracePeriod: grace,
    markOnly: input.markOnly === true,
    snapshotterName: name,
    now: now as () => number,
    onProgress: input.onProgress as ResolvedPruneOptions['onProgress'],
    until,
    labels,
    notLabels,
    walk: walk.length > 0 ? parseFilters(walk) : undefined,
  };
}

function hasLabel(labels: Readonly<Record<string, string>>, f: LabelFilter): boolean {
  if (!Object.hasOwn(labels, f.key)) return false;
  return f.value === undefined || labels[f.key] === f.value;
}

/** Whether the filters let `r` be removed (Docker: all `label` match; not all `label!` match). */
function selectable(r: Record_, o: ResolvedPruneOptions): boolean {
  if (!o.labels.every((f) => hasLabel(r.labels, f))) return false;
  if (o.notLabels.length > 0 && o.notLabels.every((f) => hasLabel(r.labels, f))) return false;
  if (o.walk !== undefined && !o.walk.match({ kind: r.kind, name: r.key, parent: r.parentName ?? '', labels: r.labels })) return false;
  return true;
}

export interface PrunePlan {
  /** Records to remove, children before parents. */
  remove: Record_[];
  kept: { rec: Record_; reason: KeepReason }[];
  /** Ids to mark now (first seen as candidates). */
  mark: number[];
  /** Ids whose mark no longer applies. */
  unmark: number[];
}

/**
 * Decides what to remove. `marks` maps ids to when they were marked;
 * `mounted` holds ids that something is mounted from; `owners` tells, for
 * snapshots with an owner label (model/owner.ts), whether that owner still
 * runs: a live owner keeps its snapshot (a lease), and an active or view
 * whose owner is gone is a candidate even without `includeActive`.
 */
export function planPrune(
  records: readonly Record_[],
  mounted: ReadonlySet<number>,
  marks: ReadonlyMap<number, number>,
  o: ResolvedPruneOptions,
  owners: ReadonlyMap<number, boolean> = new Map(),
): PrunePlan {
  const byId = new Map(records.map((r) => [r.id, r]));
  const byKey = new Map(records.map((r) => [r.key, r]));
  const refPrefix = `${GC_REF_PREFIX}${o.snapshotterName}`;
  const now = o.now();

  const initial = (r: Record_): KeepReason | undefined => {
    if (mounted.has(r.id)) return 'mounted';
    if (Object.hasOwn(r.labels, GC_ROOT_LABEL)) return 'root';
    const owned = owners.get(r.id);
    if (owned === true) return 'leased';
    if (r.kind !== 'committed' && !o.includeActive && owned !== false) return 'active';
    if (!selectable(r, o)) return 'filtered';
    if (o.until !== undefined && r.updated > o.until) return 'too-young';
    return undefined;
  };

  const propagate = (keep: Map<number, KeepReason>): void => {
    const queue = [...keep.keys()];
    const hold = (id: number | null | undefined, reason: KeepReason) => {
      if (id === null || id === undefined || keep.has(id)) return;
      keep.set(id, reason);
      queue.push(id);
    };
    for (let id = queue.pop(); id !== undefined; id = queue.pop()) {
      const r = byId.get(id)!;
      hold(r.parent, 'parent');
      for (const [k, v] of Object.entries(r.labels)) {
        if (k.startsWith(refPrefix) && (k.length === refPrefix.length || k[refPrefix.length] === '/')) hold(byKey.get(v)?.id, 'referenced');
      }
    }
  };

  const keep = new Map<number, KeepReason>();
  for (const r of records) {
    const reason = initial(r);
    if (reason !== undefined) keep.set(r.id, reason);
  }
  propagate(keep);

  const mark: number[] = [];
  const unmark: number[] = [];
  for (const [id] of marks) if (keep.has(id)) unmark.push(id);
  if (o.markOnly || o.gracePeriod > 0) {
    for (const r of records) {
      if (keep.has(r.id)) continue;
      const since = marks.get(r.id);
      if (since === undefined) mark.push(r.id);
      if (o.markOnly || since === undefined || now - since < o.gracePeriod) keep.set(r.id, 'grace-period');
    }
    propagate(keep);
  }

  const depth = (r: Record_): number => {
    let d = 0;
    for (let p = r.parent; p !== null; p = byId.get(p)?.parent ?? null) d++;
    return d;
  };
  const remove = records.filter((r) => !keep.has(r.id)).map((r) => [depth(r), r] as const);
  remove.sort((a, b) => b[0] - a[0]);
  return {
    remove: remove.map(([, r]) => r),
    kept: records.filter((r) => keep.has(r.id)).map((rec) => ({ rec, reason: keep.get(rec.id)! })),
    mark,
    unmark,
  };
}
