/**
 * What `prepare` can ask of a new writable snapshot beyond its labels: a
 * volatile upper (overlayfs' `volatile`: no syncs) and size and inode
 * quotas. Each is an option of `prepare` and a label, so that snapshots
 * made through containerd (which passes on labels under
 * `containerd.io/snapshot/`) can carry them too.
 *
 * Pure: checks and resolves options and labels; whether the kernel and
 * the root's filesystem can honour them is the facade's question.
 */
import { InvalidArgumentError, UnavailableError, q } from './errors.js';
import type { Kind } from './types.js';
import { checkLabels, ownLabel, setLabel } from './validate.js';

/** Marks an active as volatile: `true` or `false`. Set at prepare; `sync()` clears it. */
export const VOLATILE_LABEL = 'containerd.io/snapshot/overlay-snapshotter.volatile';
/** The byte limit of an active's upper dir: a whole number of bytes, or with a K, M, G or T suffix (powers of 1024). */
export const QUOTA_SIZE_LABEL = 'containerd.io/snapshot/overlay-snapshotter.quota.size';
/** The inode limit of an active's upper dir: a whole number. */
export const QUOTA_INODES_LABEL = 'containerd.io/snapshot/overlay-snapshotter.quota.inodes';

/** The labels that describe how an active was made: set at prepare only, never by `update()` or `commit()`. */
export const FIXED_LABELS: readonly string[] = [VOLATILE_LABEL, QUOTA_SIZE_LABEL, QUOTA_INODES_LABEL];

/** Limits on what one writable snapshot may hold. */
export interface Quota {
  /** Bytes. */
  readonly size?: number;
  /** Inodes (files, directories, links...). */
  readonly inodes?: number;
}

/** A new snapshot's options, checked. */
export interface CreateOptions {
  /** The labels to record; with the `volatile` option, the volatile label is among them. */
  readonly labels: Record<string, string>;
  readonly volatile: boolean;
  readonly quota: Quota | undefined;
}

const UNITS: Readonly<Record<string, number>> = { '': 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40 };

/** `'10G'`, `'512m'`, `'1048576'` or a number -> bytes; undefined when it is none of these. */
export function parseSize(value: unknown): number | undefined {
  if (typeof value === 'number') return Number.isSafeInteger(value) && value > 0 ? value : undefined;
  if (typeof value !== 'string') return undefined;
  const m = /^(\d{1,16})([kmgt]?)$/i.exec(value);
  if (m === null) return undefined;
  const bytes = Number(m[1]) * UNITS[m[2]!.toLowerCase()]!;
  return Number.isSafeInteger(bytes) && bytes > 0 ? bytes : undefined;
}

function parseCount(value: unknown): number | undefined {
  if (typeof value === 'number') return Number.isSafeInteger(value) && value > 0 ? value : undefined;
  if (typeof value !== 'string' || !/^\d{1,16}$/.test(value)) return undefined;
  const n = Number(value);
  return Number.isSafeInteger(n) && n > 0 ? n : undefined;
}

function badSize(what: string, value: unknown): InvalidArgumentError {
  return new InvalidArgumentError(`Expected ${what} to be a whole number of bytes above 0, or a string like "512M" or "10G" (powers of 1024), got ${describeValue(value)}`);
}

function badCount(what: string, value: unknown): InvalidArgumentError {
  return new InvalidArgumentError(`Expected ${what} to be a whole number of inodes above 0, got ${describeValue(value)}`);
}

/** The option, or the label when the option is absent; both given must agree. */
function agree<T>(option: T | undefined, label: T | undefined, optionName: string, labelName: string): T | undefined {
  if (option !== undefined && label !== undefined && option !== label) {
    throw new InvalidArgumentError(`option \`${optionName}\` and label ${q(labelName)} disagree; give one, or the same value in both`);
  }
  return option ?? label;
}

/**
 * Checks the options of `prepare` (`kind` `'active'`) or `view`:
 * `{ labels?, volatile?, quota? }`, and the labels that stand for the
 * last two. A view has no upper dir, so neither applies to it.
 * @throws InvalidArgumentError for an unknown option, a bad value, an
 *   option and its label that disagree, or either on a view.
 */
export function checkCreateOptions(kind: Extract<Kind, 'active' | 'view'>, opts: unknown): CreateOptions {
  if (opts === undefined || opts === null) return { labels: {}, volatile: false, quota: undefined };
  if (typeof opts !== 'object' || Array.isArray(opts)) {
    throw new InvalidArgumentError(`Expected snapshot options to be an object like { labels }, got ${describeValue(opts)}`);
  }
  const known = kind === 'active' ? ['labels', 'volatile', 'quota'] : ['labels'];
  for (const name of Object.keys(opts)) {
    if (known.includes(name)) continue;
    if (name === 'volatile' || name === 'quota') {
      throw new InvalidArgumentError(`snapshot option \`${name}\` applies to prepare only: a view has no upper dir to write`);
    }
    throw new InvalidArgumentError(`Unknown snapshot option \`${name}\`; the known ones are ${known.map((k) => `\`${k}\``).join(', ')}`);
  }
  const o = opts as { labels?: unknown; volatile?: unknown; quota?: unknown };
  const labels = checkLabels(o.labels);
  if (kind === 'view') {
    refuseFixedLabels(labels, 'a view: it has no upper dir to write');
    return { labels, volatile: false, quota: undefined };
  }

  if (o.volatile !== undefined && typeof o.volatile !== 'boolean') throw new InvalidArgumentError(`Expected \`volatile\` to be a boolean, got ${describeValue(o.volatile)}`);
  const volatileLabel = ownLabel(labels, VOLATILE_LABEL);
  if (volatileLabel !== undefined && volatileLabel !== 'true' && volatileLabel !== 'false') {
    throw new InvalidArgumentError(`Expected label ${q(VOLATILE_LABEL)} to be "true" or "false", got ${q(volatileLabel)}`);
  }
  const volatile = agree(o.volatile as boolean | undefined, volatileLabel === undefined ? undefined : volatileLabel === 'true', 'volatile', VOLATILE_LABEL) ?? false;
  if (volatile) labels[VOLATILE_LABEL] = 'true';

  let optionQuota: { size?: unknown; inodes?: unknown } | undefined;
  if (o.quota !== undefined) {
    if (typeof o.quota !== 'object' || o.quota === null || Array.isArray(o.quota)) {
      throw new InvalidArgumentError(`Expected \`quota\` to be an object like { size: '10G', inodes: 100000 }, got ${describeValue(o.quota)}`);
    }
    for (const name of Object.keys(o.quota)) {
      if (name !== 'size' && name !== 'inodes') throw new InvalidArgumentError(`Unknown quota field \`${name}\`; the known ones are \`size\` and \`inodes\``);
    }
    optionQuota = o.quota;
    if (optionQuota.size === undefined && optionQuota.inodes === undefined) throw new InvalidArgumentError('`quota` sets no limit; give `size`, `inodes` or both');
  }
  const sizeOption = optionQuota?.size === undefined ? undefined : (parseSize(optionQuota.size) ?? fail(badSize('`quota.size`', optionQuota.size)));
  const inodesOption = optionQuota?.inodes === undefined ? undefined : (parseCount(optionQuota.inodes) ?? fail(badCount('`quota.inodes`', optionQuota.inodes)));
  const sizeText = ownLabel(labels, QUOTA_SIZE_LABEL);
  const inodesText = ownLabel(labels, QUOTA_INODES_LABEL);
  const sizeLabel = sizeText === undefined ? undefined : (parseSize(sizeText) ?? fail(badSize(`label ${q(QUOTA_SIZE_LABEL)}`, sizeText)));
  const inodesLabel = inodesText === undefined ? undefined : (parseCount(inodesText) ?? fail(badCount(`label ${q(QUOTA_INODES_LABEL)}`, inodesText)));
  const size = agree(sizeOption, sizeLabel, 'quota.size', QUOTA_SIZE_LABEL);
  const inodes = agree(inodesOption, inodesLabel, 'quota.inodes', QUOTA_INODES_LABEL);
  const quota = size === undefined && inodes === undefined ? undefined : { ...(size !== undefined && { size }), ...(inodes !== undefined && { inodes }) };
  return { labels, volatile, quota };
}

/** A value for an error message: strings and numbers as they are, other things by their type. */
function describeValue(value: unknown): string {
  if (typeof value === 'string') return q(value);
  if (typeof value === 'number') return String(value);
  if (value === null) return 'null';
  return Array.isArray(value) ? 'an array' : typeof value;
}

function fail(err: Error): never {
  throw err;
}

/** Throws InvalidArgumentError when `labels` hold a label that only prepare may set. */
export function refuseFixedLabels(labels: Readonly<Record<string, string>>, where: string): void {
  for (const key of FIXED_LABELS) {
    if (Object.hasOwn(labels, key)) throw new InvalidArgumentError(`label ${q(key)} is set by prepare only, not on ${where}`);
  }
}

/**
 * The first label that only prepare may set and that an update would
 * add, change or remove; undefined when it keeps them all as they are.
 */
export function changedFixedLabel(before: Readonly<Record<string, string>>, after: Readonly<Record<string, string>>): string | undefined {
  return FIXED_LABELS.find((key) => ownLabel(before, key) !== ownLabel(after, key));
}

/** The labels of an update, refused when they would add, change or remove a label that only prepare sets. */
export function keepFixed(current: Readonly<Record<string, string>>, next: Record<string, string>): Record<string, string> {
  const changed = changedFixedLabel(current, next);
  if (changed !== undefined) {
    const way = changed === VOLATILE_LABEL ? ' (sync() makes a volatile snapshot durable and clears it)' : '';
    throw new InvalidArgumentError(`label ${q(changed)} is set by prepare and cannot be added, changed or removed by update${way}`);
  }
  return next;
}

/** A copy of `labels` without `key`. */
export function withoutLabel(labels: Readonly<Record<string, string>>, key: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(labels)) if (k !== key) setLabel(out, k, v);
  return out;
}

/** What the kernel and the root offer a new active (a subset of the capabilities). */
export interface CreateSupport {
  readonly kernelRelease: string;
  readonly volatileOverlay: boolean | null;
  readonly projectQuotasUnavailable: string | null;
}

/**
 * The error for what a store with `driver`, on a kernel and root with
 * `support`, cannot give a new active with `options` (on `parent`, '' for
 * none); undefined when it can. Asked before anything is made.
 */
export function unavailableFor(options: CreateOptions, parent: string, driver: 'overlay' | 'native', support: CreateSupport): Error | undefined {
  if (options.volatile) {
    if (driver === 'native') return new UnavailableError("`volatile` is an overlayfs option, and this store uses the native driver, whose mounts are binds; leave it out");
    if (parent === '') return new InvalidArgumentError('`volatile` needs a parent: a snapshot without one is mounted as a bind, which has no overlay to make volatile');
    if (support.volatileOverlay === false) {
      return new UnavailableError(`\`volatile\` needs overlayfs' volatile option (Linux 5.10+), which this kernel (${support.kernelRelease}) lacks; leave it out`);
    }
  }
  if (options.quota === undefined) return undefined;
  const missing = support.projectQuotasUnavailable;
  return new UnavailableError(
    missing !== null
      ? `\`quota\` needs project quotas on the root's filesystem, and ${missing}`
      : '`quota`: project quotas are on for the root\'s filesystem, but this version does not set them yet (docs/capabilities.md, "Size and inode quotas"); leave it out',
  );
}
