/**
 * The image-builder toolkit: apply layer tarballs into snapshots, diff
 * snapshots back into layers, and import an image's layers as a chain of
 * committed snapshots. See docs/layers.md.
 */
export { applyLayer } from './apply.js';
export type { ApplyOptions, ApplyResult, LayerDigest, LayerTarget } from './apply.js';
export { diffLayer } from './diff.js';
export type { DiffOptions, DiffResult } from './diff.js';
export { apply, chainIds, diff, importLayers, targetFromMounts } from './snapshot.js';
export type { ImportOptions, LayerSnapshotter, LayerSource } from './snapshot.js';
export { decompress, detectCompression } from './compression.js';
export type { Compression } from './compression.js';
export { OWNER_LABEL, ownerAlive, ownerLabels, ownerValue, parseOwner } from './owner.js';
export type { Owner } from './owner.js';
export { StreamHash } from './hash.js';
export { DirectWriter } from './direct-writer.js';
export type { DirectWriterOptions } from './direct-writer.js';
