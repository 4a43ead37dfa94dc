/**
 * Who made a temporary snapshot: the import helpers label every active and
 * view they make with {@link OWNER_LABEL} naming this process, so that one
 * a crash leaves behind is known for garbage (the format is model/owner.ts;
 * the Snapshotter's open, cleanup(), check() and prune() judge it through
 * kernel/liveness.ts).
 */
import { ownerValue } from '../kernel/liveness.js';
import { OWNER_LABEL } from '../model/owner.js';

export { OWNER_LABEL, parseOwner } from '../model/owner.js';
export type { Owner } from '../model/owner.js';
export { ownerAlive, ownerValue } from '../kernel/liveness.js';

/** `{ [OWNER_LABEL]: <this process> }`, for the labels of a temporary snapshot. */
export function ownerLabels(): Record<string, string> {
  return { [OWNER_LABEL]: ownerValue() };
}
