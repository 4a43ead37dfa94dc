/**
 * The image documents we read and write (OCI image spec v1 and Docker's
 * schema 2, which share their shape): media types, descriptors, indexes,
 * manifests and configs, parsed from untrusted bytes into checked objects.
 * Pure: no files, no snapshots.
 */
import { InvalidArgumentError } from '../model/errors.js';

export const MEDIA = Object.freeze({
  ociLayout: 'application/vnd.oci.image.layout.v1+json',
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  ociConfig: 'application/vnd.oci.image.config.v1+json',
  ociLayer: 'application/vnd.oci.image.layer.v1.tar',
  ociLayerGzip: 'application/vnd.oci.image.layer.v1.tar+gzip',
  ociLayerZstd: 'application/vnd.oci.image.layer.v1.tar+zstd',
  dockerList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  dockerConfig: 'application/vnd.docker.container.image.v1+json',
  dockerLayer: 'application/vnd.docker.image.rootfs.diff.tar',
  dockerLayerGzip: 'application/vnd.docker.image.rootfs.diff.tar.gzip',
});

/** `org.opencontainers.image.ref.name`: an image's name (or tag) in an index. */
export const REF_ANNOTATION = 'org.opencontainers.image.ref.name';
/** containerd's full image name in an exported index (its ref.name is then only the tag). */
export const CONTAINERD_NAME_ANNOTATION = 'io.containerd.image.name';

/**
 * Upper bounds of the JSON documents we read. A descriptor that declares
 * more is refused before a byte is read; a file without a descriptor
 * (index.json, manifest.json) is measured first. Registries cap manifests
 * at 4 MiB; configs with long histories stay far below 8 MiB.
 */
export const MAX_MANIFEST_BYTES = 4 * 1024 * 1024;
export const MAX_CONFIG_BYTES = 8 * 1024 * 1024;

const DIGEST = /^sha256:[0-9a-f]{64}$/;
const ANY_DIGEST = /^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$/;

export type Compression = 'gzip' | 'zstd' | 'none';

export interface Platform {
  os: string;
  architecture: string;
  variant?: string;
}

export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  annotations?: Record<string, string>;
  platform?: Platform;
  urls?: string[];
}

export interface Index {
  schemaVersion: 2;
  mediaType?: string;
  manifests: Descriptor[];
  annotations?: Record<string, string>;
}

export interface Manifest {
  schemaVersion: 2;
  mediaType?: string;
  config: Descriptor;
  layers: Descriptor[];
  annotations?: Record<string, string>;
}

/** One `history` entry of an image config. */
export interface HistoryEntry {
  created?: string;
  created_by?: string;
  author?: string;
  comment?: string;
  empty_layer?: boolean;
}

/** An image config: the fields we use, checked; the rest kept as read. */
export interface ImageConfig {
  architecture: string;
  os: string;
  variant?: string;
  created?: string;
  author?: string;
  config?: Record<string, unknown>;
  rootfs: { type: 'layers'; diff_ids: string[] };
  history?: HistoryEntry[];
  [field: string]: unknown;
}

/** A docker-archive `manifest.json` entry (`docker save`). */
export interface ArchiveEntry {
  Config: string;
  RepoTags: string[];
  Layers: string[];
}

function fail(what: string, detail: string): never {
  throw new InvalidArgumentError(`${what}: ${detail}`);
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Parses JSON bytes, refusing anything but an object. */
export function parseJson(bytes: Buffer, what: string): Record<string, unknown> {
  let value: unknown;
  try {
    value = JSON.parse(bytes.toString('utf8'));
  } catch (err) {
    fail(what, `not valid JSON (${(err as Error).message})`);
  }
  if (!isRecord(value)) fail(what, 'expected a JSON object');
  return value;
}

function stringRecord(v: unknown, what: string): Record<string, string> | undefined {
  if (v === undefined || v === null) return undefined;
  if (!isRecord(v) || Object.values(v).some((x) => typeof x !== 'string')) fail(what, 'annotations must map strings to strings');
  return v as Record<string, string>;
}

/** Checks a digest string: sha256 only (the only algorithm we verify); others are named in the refusal. */
export function checkDigest(v: unknown, what: string): string {
  if (typeof v !== 'string') fail(what, `expected a digest, got ${typeof v}`);
  if (DIGEST.test(v)) return v;
  if (ANY_DIGEST.test(v) && !v.startsWith('sha256:')) fail(what, `digest algorithm of ${JSON.stringify(v)} is not supported (only sha256)`);
  fail(what, `malformed digest ${JSON.stringify(v)}`);
}

function platform(v: unknown, what: string): Platform | undefined {
  if (v === undefined || v === null) return undefined;
  if (!isRecord(v) || typeof v.os !== 'string' || typeof v.architecture !== 'string') fail(what, 'platform needs string os and architecture');
  const p: Platform = { os: v.os, architecture: v.architecture };
  if (typeof v.variant === 'string' && v.variant !== '') p.variant = v.variant;
  return p;
}

/** A checked descriptor. Foreign layers (`urls`) would make us fetch from elsewhere: refused. */
export function parseDescriptor(v: unknown, what: string): Descriptor {
  if (!isRecord(v)) fail(what, 'expected a descriptor object');
  if (typeof v.mediaType !== 'string' || v.mediaType === '') fail(what, 'descriptor has no mediaType');
  const size = v.size;
  if (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0) fail(what, `descriptor size must be a non-negative integer, got ${JSON.stringify(size)}`);
  const d: Descriptor = { mediaType: v.mediaType, digest: checkDigest(v.digest, what), size };
  const annotations = stringRecord(v.annotations, what);
  if (annotations) d.annotations = annotations;
  const p = platform(v.platform, what);
  if (p) d.platform = p;
  if (v.urls !== undefined && v.urls !== null) {
    if (!Array.isArray(v.urls) || v.urls.some((u) => typeof u !== 'string')) fail(what, 'urls must be an array of strings');
    if (v.urls.length > 0) d.urls = v.urls as string[];
  }
  return d;
}

function schema2(v: Record<string, unknown>, what: string): void {
  if (v.schemaVersion !== 2) fail(what, `schemaVersion must be 2, got ${JSON.stringify(v.schemaVersion)}`);
}

export function parseIndex(bytes: Buffer, what: string): Index {
  const v = parseJson(bytes, what);
  schema2(v, what);
  if (v.mediaType !== undefined && v.mediaType !== MEDIA.ociIndex && v.mediaType !== MEDIA.dockerList) fail(what, `not an index (mediaType ${JSON.stringify(v.mediaType)})`);
  if (!Array.isArray(v.manifests)) fail(what, 'manifests must be an array');
  const index: Index = { schemaVersion: 2, manifests: v.manifests.map((m, i) => parseDescriptor(m, `${what}, manifests[${i}]`)) };
  if (typeof v.mediaType === 'string') index.mediaType = v.mediaType;
  const annotations = stringRecord(v.annotations, what);
  if (annotations) index.annotations = annotations;
  return index;
}

export function parseManifest(bytes: Buffer, what: string): Manifest {
  const v = parseJson(bytes, what);
  schema2(v, what);
  if (v.mediaType !== undefined && v.mediaType !== MEDIA.ociManifest && v.mediaType !== MEDIA.dockerManifest) fail(what, `not an image manifest (mediaType ${JSON.stringify(v.mediaType)})`);
  if (!Array.isArray(v.layers)) fail(what, 'layers must be an array');
  const m: Manifest = {
    schemaVersion: 2,
    config: parseDescriptor(v.config, `${what}, config`),
    layers: v.layers.map((l, i) => parseDescriptor(l, `${what}, layers[${i}]`)),
  };
  if (typeof v.mediaType === 'string') m.mediaType = v.mediaType;
  const annotations = stringRecord(v.annotations, what);
  if (annotations) m.annotations = annotations;
  if (m.config.mediaType !== MEDIA.ociConfig && m.config.mediaType !== MEDIA.dockerConfig) {
    fail(what, `config media type ${JSON.stringify(m.config.mediaType)} is not an image config (an artifact, not an image?)`);
  }
  return m;
}

export function parseConfig(bytes: Buffer, what: string): ImageConfig {
  const v = parseJson(bytes, what);
  if (typeof v.architecture !== 'string' || typeof v.os !== 'string') fail(what, 'architecture and os must be strings');
  const rootfs = v.rootfs;
  if (!isRecord(rootfs) || rootfs.type !== 'layers' || !Array.isArray(rootfs.diff_ids)) fail(what, 'rootfs must be { type: "layers", diff_ids: [...] }');
  rootfs.diff_ids.forEach((d, i) => checkDigest(d, `${what}, rootfs.diff_ids[${i}]`));
  if (v.history !== undefined && v.history !== null && !Array.isArray(v.history)) fail(what, 'history must be an array');
  if (v.config !== undefined && v.config !== null && !isRecord(v.config)) fail(what, 'config must be an object');
  return v as ImageConfig;
}

export function parseArchiveManifest(bytes: Buffer, what: string): ArchiveEntry[] {
  let value: unknown;
  try {
    value = JSON.parse(bytes.toString('utf8'));
  } catch (err) {
    fail(what, `not valid JSON (${(err as Error).message})`);
  }
  if (!Array.isArray(value)) fail(what, 'expected an array of images');
  return value.map((e, i) => {
    const w = `${what}[${i}]`;
    if (!isRecord(e) || typeof e.Config !== 'string' || !Array.isArray(e.Layers) || e.Layers.some((l) => typeof l !== 'string')) {
      fail(w, 'expected { Config: string, Layers: string[], RepoTags?: string[] }');
    }
    const tags = e.RepoTags ?? [];
    if (!Array.isArray(tags) || tags.some((t) => typeof t !== 'string')) fail(w, 'RepoTags must be an array of strings');
    return { Config: e.Config, Layers: e.Layers as string[], RepoTags: tags as string[] };
  });
}

const NONDISTRIBUTABLE = /^application\/vnd\.(oci\.image\.layer\.nondistributable\.v1\.tar|docker\.image\.rootfs\.foreign\.diff\.tar)/;

/**
 * The compression a layer's media type declares. Foreign (non-distributable)
 * layers and anything that is not a layer are refused, naming the type.
 */
export function layerCompression(desc: Descriptor, what: string): Compression {
  switch (desc.mediaType) {
    case MEDIA.ociLayer:
    case MEDIA.dockerLayer:
      return 'none';
    case MEDIA.ociLayerGzip:
    case MEDIA.dockerLayerGzip:
      return 'gzip';
    case MEDIA.ociLayerZstd:
      return 'zstd';
  }
  if (NONDISTRIBUTABLE.test(desc.mediaType) || desc.urls !== undefined) {
    fail(what, `foreign (non-distributable) layer ${desc.digest} of type ${JSON.stringify(desc.mediaType)}: its content is not in the image; fetch it into the layout first`);
  }
  fail(what, `unsupported layer media type ${JSON.stringify(desc.mediaType)}: expected an OCI or Docker layer (tar, tar+gzip, tar+zstd)`);
}

/** The OCI media type of a layer with this compression. */
export function layerMediaType(compression: Compression): string {
  return compression === 'gzip' ? MEDIA.ociLayerGzip : compression === 'zstd' ? MEDIA.ociLayerZstd : MEDIA.ociLayer;
}

/**
 * JSON as we write it: no whitespace, keys in the order the object was
 * built (we build every document in a fixed order), so the same document
 * gives the same bytes and digest everywhere.
 */
export function canonicalJson(value: unknown): Buffer {
  return Buffer.from(JSON.stringify(value), 'utf8');
}
