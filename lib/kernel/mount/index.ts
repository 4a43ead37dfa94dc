/** Mounting mount specs: no knowledge of snapshots or the metadata store. */
export { mountAll, unmountAll } from './mount.js';
export type { MountAllOptions } from './mount.js';
export { STRATEGY_ENV, resolveOverlayStrategy } from './overlay.js';
export { MAX_LOWER_LAYERS, overlayLowerLimit } from './overlay-plan.js';
export type { OverlayStrategy } from './overlay.js';
export { parseMountOptions } from './options.js';
export type { ParsedMountOptions } from './options.js';
export type { SyscallError } from './syscalls.js';
