/**
 * A snapshot record as the metadata store keeps it and the facade and the
 * prune planner read it: plain data, no behaviour. Owns the shape only; the
 * store decides how it is stored (lib/store/), never this module.
 */
import type { Kind } from './types.js';

/** A snapshot record as stored. Times are milliseconds since the epoch. */
export interface Row {
  readonly id: number;
  readonly key: string;
  readonly kind: Kind;
  readonly parent: number | null;
  readonly created: number;
  readonly updated: number;
  readonly size: number;
  readonly inodes: number;
}

/** A record with its parent's name and its labels. */
export interface Record_ extends Row {
  readonly parentName: string | null;
  readonly labels: Record<string, string>;
}
