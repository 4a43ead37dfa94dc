/**
 * The library's shapes (Info, Mount, Kind, labels, Date) to and from the
 * messages of containerd's snapshots API, both ways: the server sends what
 * the library returns, the client gives back what the library would.
 */
import { type Info, type Kind, type Mount, InvalidArgumentError } from '../index.js';
import { Kind as WireKind, type Info as WireInfo } from './gen/containerd/services/snapshots/v1/snapshots.js';
import type { Mount as WireMount } from './gen/containerd/types/mount.js';
import type { Timestamp } from './gen/google/protobuf/timestamp.js';

const TO_WIRE_KIND: Readonly<Record<Kind, WireKind>> = { view: WireKind.VIEW, active: WireKind.ACTIVE, committed: WireKind.COMMITTED };

/** The wire kind of a library kind; UNKNOWN when there is none. */
export function kindToWire(kind: Kind | undefined): WireKind {
  return (kind !== undefined && Object.hasOwn(TO_WIRE_KIND, kind) ? TO_WIRE_KIND[kind] : undefined) ?? WireKind.UNKNOWN;
}

/** The library's kind of a wire kind; undefined for UNKNOWN and numbers outside the enum. */
export function kindFromWire(kind: number): Kind | undefined {
  switch (kind) {
    case WireKind.VIEW:
      return 'view';
    case WireKind.ACTIVE:
      return 'active';
    case WireKind.COMMITTED:
      return 'committed';
    default:
      return undefined;
  }
}

/**
 * A time as the library gives it (a Date and the nanoseconds past its
 * millisecond) as a protobuf Timestamp. Missing nanoseconds (an Info from a
 * served object that has none) count as 0.
 */
export function timestampOf(date: Date, nanos: number | undefined): Timestamp {
  const ms = date.getTime();
  const seconds = Math.floor(ms / 1000);
  return { seconds, nanos: (ms - seconds * 1000) * 1_000_000 + (nanos ?? 0) };
}

/** A Timestamp as a Date (to the millisecond, what a Date holds); the epoch when absent. */
export function dateOf(ts: Timestamp | undefined): Date {
  if (ts === undefined) return new Date(0);
  return new Date(ts.seconds * 1000 + Math.floor(ts.nanos / 1_000_000));
}

/** The nanoseconds of a Timestamp past its millisecond (what {@link dateOf} leaves out); 0 when absent. */
export function nanosOf(ts: Timestamp | undefined): number {
  return ts === undefined ? 0 : ts.nanos % 1_000_000;
}

/** Labels as a plain object, keeping a key named `__proto__` as an own property. */
export function labelsOf(map: ReadonlyMap<string, string>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [key, value] of map) Object.defineProperty(out, key, { value, enumerable: true, writable: true, configurable: true });
  return out;
}

/** Labels as the Map the generated code encodes (own properties only, `__proto__` included). */
export function labelMap(labels: Readonly<Record<string, string>> | undefined): Map<string, string> {
  return new Map(labels === undefined ? [] : Object.entries(labels));
}

export function infoToWire(info: Info): WireInfo {
  return {
    name: info.name,
    parent: info.parent ?? '',
    kind: kindToWire(info.kind),
    createdAt: timestampOf(info.created, info.createdNanos),
    updatedAt: timestampOf(info.updated, info.updatedNanos),
    labels: labelMap(info.labels),
  };
}

/** The library's Info of a wire Info; throws InvalidArgumentError for a kind outside the enum. */
export function infoFromWire(info: WireInfo): Info {
  const kind = kindFromWire(info.kind);
  if (kind === undefined) throw new InvalidArgumentError(`snapshot ${JSON.stringify(info.name)} came with unknown kind ${info.kind}`);
  const out: Info = {
    kind,
    name: info.name,
    labels: labelsOf(info.labels),
    created: dateOf(info.createdAt),
    createdNanos: nanosOf(info.createdAt),
    updated: dateOf(info.updatedAt),
    updatedNanos: nanosOf(info.updatedAt),
  };
  if (info.parent !== '') out.parent = info.parent;
  return out;
}

export function mountsToWire(mounts: readonly Mount[]): WireMount[] {
  return mounts.map((m) => ({ type: m.type, source: m.source, target: m.target ?? '', options: m.options }));
}

export function mountsFromWire(mounts: readonly WireMount[]): Mount[] {
  return mounts.map((m) => {
    const out: Mount = { type: m.type, source: m.source, options: m.options };
    if (m.target !== '') out.target = m.target;
    return out;
  });
}
