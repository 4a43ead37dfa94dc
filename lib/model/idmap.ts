/**
 * containerd's ID-mapping labels: `containerd.io/snapshot/uidmapping` and
 * `.../gidmapping`, each `ctr:host:size[,ctr:host:size...]`, and the
 * `uidmap=`/`gidmap=` mount options made from them. A new snapshot's `fs`
 * dir is owned by the host ids that container root maps to; an ID-mapped
 * mount shows its layers through a user namespace with these extents.
 *
 * Pure: parses and checks mappings; the chown, the user namespace and the
 * mounts are the facade's and kernel/'s.
 */
import { InvalidArgumentError, q } from './errors.js';
import { ownLabel } from './validate.js';

export const UID_MAPPING_LABEL = 'containerd.io/snapshot/uidmapping';
export const GID_MAPPING_LABEL = 'containerd.io/snapshot/gidmapping';

const MAX_ID = 0xffffffff;

/**
 * The most extents a user namespace's uid_map or gid_map holds
 * (UID_GID_MAP_MAX_EXTENTS, Linux 4.15+; five before).
 */
export const MAX_ID_EXTENTS = 340;

/** One range of a mapping: `count` ids from `inside` (the container's) onto `outside` (the host's). */
export interface IdExtent {
  readonly inside: number;
  readonly outside: number;
  readonly count: number;
}

/**
 * Parses a mapping `ctr:host:size[,ctr:host:size...]` as the kernel would
 * take it in a uid_map: whole numbers, sizes above 0, no range past the
 * 32-bit id space, no two ranges overlapping on either side, at most
 * {@link MAX_ID_EXTENTS} of them. `what` names the label or option in errors.
 * @throws InvalidArgumentError for anything the kernel would refuse.
 */
export function parseIdMapping(mapping: string, what: string): IdExtent[] {
  if (typeof mapping !== 'string' || mapping === '') throw new InvalidArgumentError(`${what} is empty; expected ctr:host:size ranges separated by commas`);
  const ranges = mapping.split(',');
  if (ranges.length > MAX_ID_EXTENTS) {
    throw new InvalidArgumentError(`${what} has ${ranges.length} ranges, more than the kernel's ${MAX_ID_EXTENTS} extents of a user namespace's map; merge adjacent ranges`);
  }
  const extents: IdExtent[] = [];
  for (const range of ranges) {
    const parts = range.split(':');
    const nums = parts.map((p) => (/^\d{1,10}$/.test(p) ? Number(p) : NaN));
    if (nums.length !== 3 || nums.some((n) => Number.isNaN(n) || n > MAX_ID) || nums[2] === 0) {
      throw new InvalidArgumentError(
        `${what} has the malformed range ${q(range)}; expected ctr:host:size with whole numbers and a size above 0, ranges separated by commas`,
      );
    }
    const [inside, outside, count] = nums as [number, number, number];
    if (inside + count > MAX_ID + 1 || outside + count > MAX_ID + 1) {
      throw new InvalidArgumentError(`${what}: range ${q(range)} runs past the 32-bit id space`);
    }
    for (const other of extents) {
      const side = overlaps(other.inside, other.count, inside, count) ? 'container' : overlaps(other.outside, other.count, outside, count) ? 'host' : undefined;
      if (side !== undefined) {
        throw new InvalidArgumentError(
          `${what}: range ${q(range)} overlaps ${q(`${other.inside}:${other.outside}:${other.count}`)} on the ${side} side; each id may be mapped once`,
        );
      }
    }
    extents.push({ inside, outside, count });
  }
  return extents;
}

function overlaps(a: number, aCount: number, b: number, bCount: number): boolean {
  return a < b + bCount && b < a + aCount;
}

/** The host id that container id 0 maps to under `mapping`; throws InvalidArgumentError if malformed or unmapped. */
export function hostRoot(mapping: string, label: string): number {
  const root = parseIdMapping(mapping, `label ${q(label)}`).find((e) => e.inside === 0);
  if (root === undefined) {
    throw new InvalidArgumentError(`label ${q(label)} = ${q(mapping)} does not map container root (id 0); add a range that starts at 0`);
  }
  return root.outside;
}

/** The owner for a new `fs` dir from the mapping labels, or undefined when neither label is set. */
export function mappedOwner(labels: Readonly<Record<string, string>>): { uid: number; gid: number } | undefined {
  const uidMap = ownLabel(labels, UID_MAPPING_LABEL);
  const gidMap = ownLabel(labels, GID_MAPPING_LABEL);
  if (uidMap === undefined && gidMap === undefined) return undefined;
  if (uidMap === undefined || gidMap === undefined) {
    throw new InvalidArgumentError(`labels ${q(UID_MAPPING_LABEL)} and ${q(GID_MAPPING_LABEL)} go together; set both or neither`);
  }
  return { uid: hostRoot(uidMap, UID_MAPPING_LABEL), gid: hostRoot(gidMap, GID_MAPPING_LABEL) };
}

/** The `uidmap=`/`gidmap=` options of the mapping labels (empty when they are not both set). */
export function idmapOptions(labels: Readonly<Record<string, string>>): string[] {
  const uid = ownLabel(labels, UID_MAPPING_LABEL);
  const gid = ownLabel(labels, GID_MAPPING_LABEL);
  return uid !== undefined && gid !== undefined ? [`uidmap=${uid}`, `gidmap=${gid}`] : [];
}

/** The ID mapping a mount spec asks for: both maps, parsed. */
export interface MountIdMapping {
  /** The options as given, which name the user namespace to map through (one per distinct pair). */
  readonly uidmap: string;
  readonly gidmap: string;
  readonly uids: readonly IdExtent[];
  readonly gids: readonly IdExtent[];
}

/**
 * Takes the `uidmap=`/`gidmap=` words out of a mount's filesystem data
 * (they are for the mounter, not the filesystem) and parses them. Returns
 * undefined when there are none; `rest` is the data without them.
 * @throws InvalidArgumentError for a malformed map, one given twice, or
 *   one given without the other.
 */
export function takeIdMapping(data: readonly string[], where: string): { mapping: MountIdMapping | undefined; rest: string[] } {
  let uidmap: string | undefined;
  let gidmap: string | undefined;
  const rest: string[] = [];
  for (const word of data) {
    const key = word.startsWith('uidmap=') ? 'uidmap' : word.startsWith('gidmap=') ? 'gidmap' : undefined;
    if (key === undefined) {
      rest.push(word);
      continue;
    }
    if ((key === 'uidmap' ? uidmap : gidmap) !== undefined) throw new InvalidArgumentError(`${where} has more than one ${key}= option; give all ranges in one, separated by commas`);
    if (key === 'uidmap') uidmap = word.slice(7);
    else gidmap = word.slice(7);
  }
  if (uidmap === undefined && gidmap === undefined) return { mapping: undefined, rest };
  if (uidmap === undefined || gidmap === undefined) {
    throw new InvalidArgumentError(`${where} has ${uidmap === undefined ? 'gidmap=' : 'uidmap='} without ${uidmap === undefined ? 'uidmap=' : 'gidmap='}; an ID-mapped mount needs both`);
  }
  const uids = parseIdMapping(uidmap, `${where}: uidmap=`);
  const gids = parseIdMapping(gidmap, `${where}: gidmap=`);
  return { mapping: { uidmap, gidmap, uids, gids }, rest };
}
