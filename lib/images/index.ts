/**
 * Whole images for image builders: import an OCI image layout (directory
 * or tar) or a docker archive into committed snapshots and the image
 * store, and export a snapshot chain as an image other tools load. Built
 * on the layer toolkit (lib/layers/) and the snapshotter's public API; it
 * owns the image store directory (`<root>/images` by default) and nothing
 * under `<root>/snapshots`. See docs/images.md.
 */
export { importImage, GC_ROOT_LABEL } from './import.js';
export type { ImageProgress, ImageSnapshotter, ImportImageOptions, ImportImageResult, ImportedLayer } from './import.js';
export { exportImage } from './export.js';
export type { ExportFormat, ExportImageOptions, ExportImageResult, ExportedLayer, RunConfig } from './export.js';
export { listImages, removeImage } from './manage.js';
export type { ImageInfo, RemoveImageResult } from './manage.js';
export { CHAIN_ANNOTATION } from './store.js';
export type { HistoryEntry, ImageConfig, Platform } from './media.js';
