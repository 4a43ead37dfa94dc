/**
 * The public API of overlay-snapshotter: re-exports only, no logic. What is
 * exported here (and from layers/index.ts) is the package's contract
 * (docs/api.md); the command line and the server use the library through
 * this module alone. See docs/architecture.md for the layers behind it.
 */
export { Snapshotter, UPPERDIR_LABEL } from './snapshotter.js';
export type { AbandonedSnapshot, CheckProblem, CheckReport, CleanupReport, RecoveryReport } from './snapshotter.js';
export type { SnapshotterOptions } from './model/options.js';
export type { KeepReason, PruneOptions, PruneProgress, PruneReport } from './prune.js';
export type { Driver, Info, Kind, Mount, SnapshotOptions, Usage } from './model/types.js';
export { QUOTA_INODES_LABEL, QUOTA_SIZE_LABEL, VOLATILE_LABEL } from './model/create-options.js';
export { mountAll, unmountAll } from './kernel/mount/index.js';
export { probeCapabilities } from './kernel/capabilities.js';
export type { Capabilities, CapabilityCache, ProbeCapabilitiesOptions } from './kernel/capabilities.js';
export {
  SnapshotterError,
  NotFoundError,
  AlreadyExistsError,
  FailedPreconditionError,
  InvalidArgumentError,
  UnavailableError,
  isNotFound,
  isAlreadyExists,
  isFailedPrecondition,
  isInvalidArgument,
  isUnavailable,
} from './model/errors.js';
export type { ErrorCode } from './model/errors.js';
export { applyLayer, diffLayer, importLayers, chainIds, targetFromMounts, OWNER_LABEL, ownerLabels } from './layers/index.js';
export { apply as applyToSnapshot, diff as diffSnapshot } from './layers/index.js';
export type {
  ApplyOptions,
  ApplyResult,
  DiffOptions,
  DiffResult,
  ImportOptions,
  LayerDigest,
  LayerSource,
  LayerTarget,
  LayerSnapshotter,
} from './layers/index.js';
export { importImage, exportImage, listImages, removeImage } from './images/index.js';
export type {
  ExportFormat,
  ExportImageOptions,
  ExportImageResult,
  ExportedLayer,
  HistoryEntry,
  ImageConfig,
  ImageInfo,
  ImageProgress,
  ImageSnapshotter,
  ImportImageOptions,
  ImportImageResult,
  ImportedLayer,
  Platform,
  RemoveImageResult,
  RunConfig,
} from './images/index.js';
