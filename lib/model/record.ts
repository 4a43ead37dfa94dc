/**
 * A snapshot record as the metadata store keeps it and the facade and the
 * prune planner read it: plain data, no behaviour. Owns the shape only; the
 * store decides how it is stored (lib/store/), never this module.
 */
import type { Kind } from './types.js';

/** A wall-clock time as records keep it: whole milliseconds since the epoch and the nanoseconds past them. */
export interface WallTime {
  /** Milliseconds since the epoch (what a Date holds). */
  readonly ms: number;
  /** Nanoseconds past `ms`, 0 to 999,999. */
  readonly ns: number;
}

/**
 * A snapshot record as stored. Each time is two numbers: milliseconds since
 * the epoch (what prune's filters compare, what a Date holds) and the
 * nanoseconds past that millisecond (0 to 999,999), the clock's full
 * precision without a number past 2^53.
 */
export interface Row {
  readonly id: number;
  readonly key: string;
  readonly kind: Kind;
  readonly parent: number | null;
  readonly created: number;
  readonly createdNanos: number;
  readonly updated: number;
  readonly updatedNanos: number;
  readonly size: number;
  readonly inodes: number;
}

/** A record with its parent's name and its labels. */
export interface Record_ extends Row {
  readonly parentName: string | null;
  readonly labels: Record<string, string>;
}
