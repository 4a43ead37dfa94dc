export { Snapshotter, UPPERDIR_LABEL } from './snapshotter.js';
export type { CheckProblem, CheckReport, CleanupReport } from './snapshotter.js';
export type { SnapshotterOptions } from './options.js';
export type { KeepReason, PruneOptions, PruneProgress, PruneReport } from './prune.js';
export type { Info, Kind, Mount, SnapshotOptions, Usage } from './types.js';
export { mountAll, unmountAll } from './mount/index.js';
export { probeCapabilities } from './capabilities.js';
export type { Capabilities, CapabilityCache, ProbeCapabilitiesOptions } from './capabilities.js';
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
} from './errors.js';
export type { ErrorCode } from './errors.js';
export { applyLayer, diffLayer, importLayers, chainIds, targetFromMounts } from './layers/index.js';
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
