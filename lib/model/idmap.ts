/**
 * containerd's ID-mapping labels: `containerd.io/snapshot/uidmapping` and
 * `.../gidmapping`, each `ctr:host:size[,ctr:host:size...]`. A new
 * snapshot's `fs` dir is owned by the host ids that container root maps to.
 *
 * Pure: parses labels; the chown itself is the facade's.
 */
import { InvalidArgumentError, q } from './errors.js';

export const UID_MAPPING_LABEL = 'containerd.io/snapshot/uidmapping';
export const GID_MAPPING_LABEL = 'containerd.io/snapshot/gidmapping';

const MAX_ID = 0xffffffff;

/** The host id that container id 0 maps to under `mapping`; throws InvalidArgumentError if malformed or unmapped. */
export function hostRoot(mapping: string, label: string): number {
  for (const range of mapping.split(',')) {
    const parts = range.split(':');
    const nums = parts.map((p) => (/^\d{1,10}$/.test(p) ? Number(p) : NaN));
    if (nums.length !== 3 || nums.some((n) => Number.isNaN(n) || n > MAX_ID) || nums[2] === 0) {
      throw new InvalidArgumentError(
        `label ${q(label)} has the malformed range ${q(range)}; expected ctr:host:size with whole numbers and a size above 0, ranges separated by commas`,
      );
    }
    const [ctr, host, size] = nums as [number, number, number];
    if (ctr + size > MAX_ID + 1 || host + size > MAX_ID + 1) {
      throw new InvalidArgumentError(`label ${q(label)}: range ${q(range)} runs past the 32-bit id space`);
    }
    if (ctr === 0) return host;
  }
  throw new InvalidArgumentError(`label ${q(label)} = ${q(mapping)} does not map container root (id 0); add a range that starts at 0`);
}

/** The owner for a new `fs` dir from the mapping labels, or undefined when neither label is set. */
export function mappedOwner(labels: Readonly<Record<string, string>>): { uid: number; gid: number } | undefined {
  const uidMap = Object.hasOwn(labels, UID_MAPPING_LABEL) ? labels[UID_MAPPING_LABEL] : undefined;
  const gidMap = Object.hasOwn(labels, GID_MAPPING_LABEL) ? labels[GID_MAPPING_LABEL] : undefined;
  if (uidMap === undefined && gidMap === undefined) return undefined;
  if (uidMap === undefined || gidMap === undefined) {
    throw new InvalidArgumentError(`labels ${q(UID_MAPPING_LABEL)} and ${q(GID_MAPPING_LABEL)} go together; set both or neither`);
  }
  return { uid: hostRoot(uidMap, UID_MAPPING_LABEL), gid: hostRoot(gidMap, GID_MAPPING_LABEL) };
}
