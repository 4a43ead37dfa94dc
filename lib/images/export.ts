/**
 * exportImage: a committed chain or an active snapshot as an image that
 * other tools load: an OCI image layout directory, an OCI layout tar, or a
 * docker archive (which is also an OCI layout tar: `docker save`'s format
 * since Docker 25).
 *
 * Each layer is its snapshot's change set: an imported layer reuses its
 * blob from the image store (found by chain ID, so the exported image
 * shares the base's blobs and chain IDs); any other layer is diffed. The
 * config starts from the stored image the chain was built on (its
 * `config`, its history up to the reused layers), adds a history entry per
 * new layer and sets `rootfs.diff_ids`.
 *
 * Deterministic: the same snapshots and options give the same bytes. The
 * only times written are `sourceDateEpoch` (or `SOURCE_DATE_EPOCH`), which
 * also clamps file mtimes; without it `created` is left out.
 */
import { type Hash, createHash } from 'node:crypto';
import { createReadStream, createWriteStream, rmSync } from 'node:fs';
import { Transform, type Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import createDebug from 'debug';
import { v4 as uuidv4 } from 'uuid';
import { FailedPreconditionError, InvalidArgumentError, NotFoundError } from '../model/errors.js';
import type { Info, Mount } from '../model/types.js';
import { type LayerTarget, chainIds, decompress, diff as diffSnapshot, diffLayer, ownerLabels } from '../layers/index.js';
import { type ImageProgress, type ImageSnapshotter, storeDir } from './import.js';
import { LayoutWriter, packLayout, scratchBeside } from './layout.js';
import {
  CONTAINERD_NAME_ANNOTATION,
  type Descriptor,
  type HistoryEntry,
  type ImageConfig,
  MAX_CONFIG_BYTES,
  MAX_MANIFEST_BYTES,
  MEDIA,
  type Manifest,
  type Platform,
  REF_ANNOTATION,
  canonicalJson,
  layerCompression,
  layerMediaType,
  parseConfig,
  parseManifest,
} from './media.js';
import { formatPlatform, parsePlatform, runningPlatform } from './platform.js';
import { normalizeRef } from './select.js';
import { ImageStore, type LayerRecord, type StoredImage } from './store.js';
import { DEFAULT_ZSTD_LEVEL, zstdCompressor, zstdReady } from './zstd.js';

const debug = createDebug('overlay-snapshotter:images');

export type ExportFormat = 'oci' | 'oci-archive' | 'docker-archive';

/** The parts of an image config's `config` a builder sets (OCI image spec names). */
export interface RunConfig {
  User?: string;
  ExposedPorts?: Record<string, Record<string, never>>;
  Env?: string[];
  Entrypoint?: string[];
  Cmd?: string[];
  Volumes?: Record<string, Record<string, never>>;
  WorkingDir?: string;
  Labels?: Record<string, string>;
  StopSignal?: string;
  [field: string]: unknown;
}

/** Options of {@link exportImage}. */
export interface ExportImageOptions {
  /** `oci` (default): a layout directory; `oci-archive`: a tar of one; `docker-archive`: a tar `docker load` reads (layers uncompressed, as `docker save` writes them). */
  format?: ExportFormat;
  /** The image's name: `org.opencontainers.image.ref.name` in index.json (and RepoTags in a docker archive, which needs a docker reference). */
  ref?: string;
  /** Compression of new layers: `gzip` (default) or `zstd`. Reused blobs stay as imported. Ignored for `docker-archive`. */
  compression?: 'gzip' | 'zstd';
  /** gzip level 1-9, default 6. */
  gzipLevel?: number;
  /** zstd level 1-19, default 3. */
  zstdLevel?: number;
  /**
   * Seconds since the epoch: the `created` time of the config and of new
   * history entries, and the clamp of every mtime in new layers. Default:
   * `SOURCE_DATE_EPOCH` from the environment; without either, `created` is
   * left out and mtimes are kept.
   */
  sourceDateEpoch?: number;
  /** Ref of the stored image to start the config from. Default: the stored image whose top is the highest reused layer of the chain. */
  base?: string;
  /** Fields of the config's `config` to set over the base's (Env, Cmd, Entrypoint, WorkingDir, User, Labels, ...). */
  config?: RunConfig;
  /** One history entry per new layer, bottom first (`created_by`, `comment`, `author`; `created` defaults to `sourceDateEpoch`). */
  history?: HistoryEntry[];
  /** The history entry of every new layer when `history` is not given. Default `{ created_by: 'overlay-snapshotter image export' }`. */
  layerHistory?: HistoryEntry;
  /** Author of the config. */
  author?: string;
  /** The platform to declare; default the base's, else the running one. */
  platform?: string | Platform;
  /** Annotations of the manifest. */
  annotations?: Record<string, string>;
  /** The image store to reuse blobs from. Default `<snapshotter root>/images`. */
  store?: string;
  /**
   * Reused blobs are hard-linked from the image store into the target when
   * both are on one filesystem (an export over a big base then costs only
   * its new layers); the files are shared, so nothing may change them in
   * place (image tools never do: they write new files). `false`: copy them
   * (a reflink where the filesystem can). Default `true`.
   */
  linkBlobs?: boolean;
  /** Called as layers are written. */
  onProgress?: (progress: ImageProgress) => void;
}

/** One layer of an exported image. */
export interface ExportedLayer {
  /** The snapshot the layer is the change set of. */
  snapshot: string;
  diffId: string;
  digest: string;
  mediaType: string;
  size: number;
  /** `reused`: the blob of an imported layer; `diffed`: made now. */
  status: 'reused' | 'diffed';
}

/** What {@link exportImage} wrote. */
export interface ExportImageResult {
  target: string;
  format: ExportFormat;
  ref?: string;
  manifestDigest: string;
  manifestSize: number;
  configDigest: string;
  /** Chain ID of the top layer (the name importImage gives it). */
  chainId: string;
  layers: ExportedLayer[];
}

const KNOWN = [
  'format',
  'ref',
  'compression',
  'gzipLevel',
  'zstdLevel',
  'sourceDateEpoch',
  'base',
  'config',
  'history',
  'layerHistory',
  'author',
  'platform',
  'annotations',
  'store',
  'linkBlobs',
  'onProgress',
];

interface Resolved {
  format: ExportFormat;
  ref: string | undefined;
  compression: 'gzip' | 'zstd' | 'none';
  gzipLevel: number;
  zstdLevel: number;
  sourceDateEpoch: number | undefined;
  base: string | undefined;
  config: RunConfig | undefined;
  history: HistoryEntry[] | undefined;
  layerHistory: HistoryEntry | undefined;
  author: string | undefined;
  platform: Platform | undefined;
  annotations: Record<string, string> | undefined;
  store: string | undefined;
  linkBlobs: boolean;
  onProgress: ((p: ImageProgress) => void) | undefined;
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function resolveExport(sn: ImageSnapshotter, options: ExportImageOptions | undefined): Resolved {
  if (options !== undefined && !isRecord(options)) throw new InvalidArgumentError('Expected exportImage options to be an object');
  const o = Object.assign(Object.create(null) as Record<string, unknown>, options);
  for (const key of Object.keys(o)) if (!KNOWN.includes(key)) throw new InvalidArgumentError(`Unknown exportImage option \`${key}\`; known options: ${KNOWN.join(', ')}`);
  const format = (o.format ?? 'oci') as ExportFormat;
  if (!['oci', 'oci-archive', 'docker-archive'].includes(format)) throw new InvalidArgumentError(`Expected \`format\` to be 'oci', 'oci-archive' or 'docker-archive', got ${JSON.stringify(o.format)}`);
  const str = (name: string): string | undefined => {
    const v = o[name];
    if (v !== undefined && (typeof v !== 'string' || v === '')) throw new InvalidArgumentError(`Expected \`${name}\` to be a non-empty string, got ${JSON.stringify(v)}`);
    return v as string | undefined;
  };
  const ref = str('ref');
  if (ref !== undefined && format === 'docker-archive' && normalizeRef(ref) === undefined) {
    throw new InvalidArgumentError(`a docker archive names its image by a docker reference (name[:tag]); ${JSON.stringify(ref)} is not one`);
  }
  const compression = o.compression ?? 'gzip';
  if (compression !== 'gzip' && compression !== 'zstd') throw new InvalidArgumentError(`Expected \`compression\` to be 'gzip' or 'zstd', got ${JSON.stringify(compression)}`);
  const int = (name: string, min: number, max: number): number | undefined => {
    const v = o[name];
    if (v !== undefined && !(Number.isInteger(v) && (v as number) >= min && (v as number) <= max)) throw new InvalidArgumentError(`Expected \`${name}\` to be an integer from ${min} to ${max}, got ${JSON.stringify(v)}`);
    return v as number | undefined;
  };
  let sourceDateEpoch = int('sourceDateEpoch', 0, 253402300799);
  if (sourceDateEpoch === undefined && process.env.SOURCE_DATE_EPOCH !== undefined && process.env.SOURCE_DATE_EPOCH !== '') {
    const env = process.env.SOURCE_DATE_EPOCH;
    if (!/^\d+$/.test(env)) throw new InvalidArgumentError(`SOURCE_DATE_EPOCH must be whole seconds since the epoch, got ${JSON.stringify(env)}`);
    sourceDateEpoch = Number(env);
  }
  if (o.config !== undefined && !isRecord(o.config)) throw new InvalidArgumentError('Expected `config` to be an object (Env, Cmd, Entrypoint, ...)');
  if (o.history !== undefined && (!Array.isArray(o.history) || o.history.some((h) => !isRecord(h)))) throw new InvalidArgumentError('Expected `history` to be an array of objects, one per new layer');
  if (o.layerHistory !== undefined && !isRecord(o.layerHistory)) throw new InvalidArgumentError('Expected `layerHistory` to be an object like { created_by: "..." }');
  if (o.annotations !== undefined && (!isRecord(o.annotations) || Object.values(o.annotations).some((v) => typeof v !== 'string'))) {
    throw new InvalidArgumentError('Expected `annotations` to map strings to strings');
  }
  if (o.onProgress !== undefined && typeof o.onProgress !== 'function') throw new InvalidArgumentError('Expected `onProgress` to be a function');
  if (o.linkBlobs !== undefined && typeof o.linkBlobs !== 'boolean') throw new InvalidArgumentError(`Expected \`linkBlobs\` to be a boolean, got ${JSON.stringify(o.linkBlobs)}`);
  let platform: Platform | undefined;
  if (typeof o.platform === 'string') platform = parsePlatform(o.platform);
  else if (isRecord(o.platform)) platform = parsePlatform(formatPlatform(o.platform as unknown as Platform));
  else if (o.platform !== undefined) throw new InvalidArgumentError('Expected `platform` to be "os/arch[/variant]" or an object');
  let store: string | undefined;
  if (o.store !== undefined || (typeof sn.root === 'string' && sn.root !== '')) store = storeDir(sn, o.store);
  return {
    format,
    ref,
    compression: format === 'docker-archive' ? 'none' : compression,
    gzipLevel: int('gzipLevel', 1, 9) ?? 6,
    zstdLevel: int('zstdLevel', 1, 19) ?? DEFAULT_ZSTD_LEVEL,
    sourceDateEpoch,
    base: str('base'),
    config: o.config as RunConfig | undefined,
    history: o.history as HistoryEntry[] | undefined,
    layerHistory: o.layerHistory as HistoryEntry | undefined,
    author: str('author'),
    platform,
    annotations: o.annotations as Record<string, string> | undefined,
    store,
    linkBlobs: o.linkBlobs !== false,
    onProgress: o.onProgress as ((p: ImageProgress) => void) | undefined,
  };
}

/** RFC 3339 in UTC, whole seconds. */
function rfc3339(seconds: number): string {
  return new Date(seconds * 1000).toISOString().replace(/\.000Z$/, 'Z');
}

/** The snapshots of `key`'s chain, bottom first. */
async function chainOf(sn: ImageSnapshotter, key: string): Promise<Info[]> {
  const top = await sn.stat(key);
  if (top.kind === 'view') throw new FailedPreconditionError(`cannot export ${JSON.stringify(key)}: it is a view; export an active or committed snapshot`);
  const chain = [top];
  for (let cur = top; cur.parent !== undefined && cur.parent !== ''; ) {
    cur = await sn.stat(cur.parent);
    chain.push(cur);
  }
  return chain.reverse();
}

/**
 * The directories of a committed snapshot, seen through a view on it: the
 * view's top lower (or its bind source) is the snapshot's own `fs`, its
 * change set; the rest are its parents.
 */
function committedTarget(mounts: readonly Mount[], name: string, hasParent: boolean): LayerTarget {
  const m = mounts[0];
  if (mounts.length !== 1 || m === undefined) throw new InvalidArgumentError(`view of ${JSON.stringify(name)}: expected one mount, got ${mounts.length}`);
  if (m.type === 'bind' || m.type === 'rbind') {
    if (hasParent) {
      throw new FailedPreconditionError(`cannot diff ${JSON.stringify(name)}: its view is a plain copy of its chain (native driver), not an overlay layer`);
    }
    return { upper: m.source, lowers: [] };
  }
  if (m.type !== 'overlay') throw new InvalidArgumentError(`view of ${JSON.stringify(name)}: cannot read a mount of type ${JSON.stringify(m.type)}`);
  const lowers: string[] = [];
  let userxattr = false;
  for (const opt of m.options) {
    if (opt.startsWith('lowerdir=')) lowers.push(...opt.slice('lowerdir='.length).split(':'));
    else if (opt.startsWith('lowerdir+=')) lowers.push(opt.slice('lowerdir+='.length));
    else if (opt === 'userxattr') userxattr = true;
  }
  const [upper, ...rest] = lowers;
  if (upper === undefined || !upper.startsWith('/')) throw new InvalidArgumentError(`view of ${JSON.stringify(name)}: no absolute lowerdir in its mount`);
  return userxattr ? { upper, lowers: rest, userxattr } : { upper, lowers: rest };
}

/** Counts what passes, and hashes it when asked (the compressed digest of a zstd layer). */
class Tap extends Transform {
  private readonly hash: Hash | undefined;
  size = 0;
  constructor(
    private readonly onBytes: (n: number) => void,
    hashing: boolean,
  ) {
    super({ highWaterMark: 1 << 20 });
    this.hash = hashing ? createHash('sha256') : undefined;
  }
  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null, data?: Buffer) => void): void {
    this.hash?.update(chunk);
    this.size += chunk.length;
    this.onBytes(this.size);
    cb(null, chunk);
  }
  digest(): string {
    return `sha256:${this.hash!.digest('hex')}`;
  }
}

interface Written {
  diffId: string;
  digest: string;
  size: number;
  mediaType: string;
}

/** Diffs one snapshot into a new blob of the layout. */
async function diffInto(
  sn: ImageSnapshotter,
  info: Info,
  top: boolean,
  layout: LayoutWriter,
  o: Resolved,
  onBytes: (n: number) => void,
): Promise<Written> {
  const tmp = layout.temp();
  const file = createWriteStream(tmp, { mode: 0o644 });
  const diffOpts = {
    compression: o.compression === 'gzip' ? ('gzip' as const) : ('none' as const),
    ...(o.compression === 'gzip' ? { gzipLevel: o.gzipLevel } : {}),
    ...(o.sourceDateEpoch !== undefined ? { sourceDateEpoch: o.sourceDateEpoch } : {}),
  };
  const run = async (out: Writable) => {
    if (top && info.kind === 'active') return diffSnapshot(sn, info.name, out, diffOpts);
    const view = `export-${uuidv4()}`;
    const mounts = await sn.view(view, info.name, { labels: ownerLabels() });
    try {
      return await diffLayer(committedTarget(mounts, info.name, info.parent !== undefined && info.parent !== ''), out, diffOpts);
    } finally {
      await sn.remove(view).catch((err: unknown) => debug('could not remove the export view %s: %o', view, err));
    }
  };
  // diffLayer compresses gzip itself (on the thread pool) and reports the digest; zstd is compressed here, and hashed after.
  const zstd = o.compression === 'zstd';
  if (zstd) await zstdReady();
  const t = new Tap(onBytes, zstd);
  const head: Transform = zstd ? zstdCompressor(o.zstdLevel) : t;
  const flowing = zstd ? pipeline(head, t, file) : pipeline(t, file);
  flowing.catch(() => {});
  let r;
  try {
    r = await run(head);
    await flowing;
  } catch (err) {
    head.destroy();
    await flowing.catch(() => {});
    throw err;
  }
  const digest = zstd ? t.digest() : r.compressedDigest;
  layout.commit(tmp, digest);
  return { diffId: r.digest, digest, size: zstd ? t.size : r.compressedSize, mediaType: layerMediaType(o.compression) };
}

/** Writes a stored blob uncompressed (docker archives), checking it against its diffID on the way. */
async function decompressInto(store: ImageStore, rec: LayerRecord, layout: LayoutWriter, link: boolean, onBytes: (n: number) => void): Promise<Written> {
  const compression = layerCompression({ mediaType: rec.blob.mediaType, digest: rec.blob.digest, size: rec.blob.size }, `stored layer ${rec.chainId}`);
  if (compression === 'none') {
    layout.copyIn(store.blobPath(rec.blob.digest), rec.blob.digest, rec.blob.size, link);
    return { diffId: rec.diffId, digest: rec.blob.digest, size: rec.blob.size, mediaType: MEDIA.ociLayer };
  }
  const tmp = layout.temp();
  const t = new Tap(onBytes, true);
  const { stream } = await decompress(createReadStream(store.blobPath(rec.blob.digest), { highWaterMark: 1 << 20 }));
  await pipeline(stream, t, createWriteStream(tmp, { mode: 0o644 }));
  const digest = t.digest();
  if (digest !== rec.diffId) throw new InvalidArgumentError(`stored layer ${rec.chainId} decompresses to ${digest}, not its diffID ${rec.diffId}: the image store is damaged`);
  layout.commit(tmp, digest);
  return { diffId: rec.diffId, digest, size: t.size, mediaType: MEDIA.ociLayer };
}

/** The history entries of `base` that describe its first `layers` layers (empty-layer entries among them kept). */
function historyFor(base: ImageConfig | undefined, layers: number, wholeBase: boolean): HistoryEntry[] {
  const out: HistoryEntry[] = [];
  let seen = 0;
  for (const h of base?.history ?? []) {
    if (!h.empty_layer) {
      if (seen === layers) break;
      seen++;
    } else if (seen === layers && !wholeBase) {
      break;
    }
    out.push(h);
  }
  // A base without (enough) history: one plain entry per layer, so that entries and layers still line up.
  for (; seen < layers; seen++) out.push({ comment: 'imported layer' });
  return out;
}

/**
 * Exports the committed snapshot or active `key`, with its chain, as an
 * image at `target`: an OCI layout directory (`format: 'oci'`, default;
 * created, or an existing layout gains the image), or a tar file
 * (`oci-archive`, `docker-archive`). Layers imported with importImage reuse
 * their blobs; the others are diffed (gzip by default). See
 * {@link ExportImageOptions}. The snapshots must not change meanwhile.
 *
 * @throws NotFoundError when `key` (or `base`) does not exist.
 * @throws FailedPreconditionError for a view, or a target directory that is not a layout.
 * @throws InvalidArgumentError for bad options.
 */
export async function exportImage(sn: ImageSnapshotter, key: string, target: string, options?: ExportImageOptions): Promise<ExportImageResult> {
  const o = resolveExport(sn, options);
  if (typeof target !== 'string' || target === '') throw new InvalidArgumentError(`Expected target to be a path, got ${JSON.stringify(target)}`);
  const chain = await chainOf(sn, key);
  const store = o.store !== undefined ? ImageStore.open(o.store) : undefined;

  // Reuse: from the bottom, as long as each committed layer is the stored one its chain ID names.
  const reused: LayerRecord[] = [];
  for (const info of chain) {
    if (store === undefined || info.kind !== 'committed') break;
    const rec = store.layer(info.name);
    if (rec === undefined || !store.hasBlob(rec.blob.digest, rec.blob.size)) break;
    if (chainIds([...reused.map((r) => r.diffId), rec.diffId]).at(-1) !== info.name) break;
    reused.push(rec);
  }
  const baseImage = findBase(store, o.base, chain.slice(0, reused.length).map((i) => i.name));
  const baseManifest = baseImage ? parseManifest(store!.readBlob(baseImage.manifest.digest, MAX_MANIFEST_BYTES), `stored manifest ${baseImage.manifest.digest}`) : undefined;
  const baseConfigBytes = baseManifest ? store!.readBlob(baseManifest.config.digest, MAX_CONFIG_BYTES) : undefined;
  const baseConfig = baseConfigBytes ? parseConfig(baseConfigBytes, `stored config ${baseManifest!.config.digest}`) : undefined;
  const baseLayers = baseImage ? chain.findIndex((i) => i.name === baseImage.chainId) + 1 : 0;
  // The base's own blobs for its layers (the store's records may name another blob of the same layer).
  if (baseManifest && baseConfig && baseConfig.rootfs.diff_ids.length === baseManifest.layers.length && baseManifest.layers.length === baseLayers) {
    for (let i = 0; i < baseLayers; i++) {
      const blob = baseManifest.layers[i]!;
      if (baseConfig.rootfs.diff_ids[i] === reused[i]!.diffId && store!.hasBlob(blob.digest, blob.size)) {
        reused[i] = { ...reused[i]!, blob: { mediaType: blob.mediaType, digest: blob.digest, size: blob.size } };
      }
    }
  }

  const fresh = chain.length - reused.length;
  if (o.history !== undefined && o.history.length !== fresh) {
    throw new InvalidArgumentError(`\`history\` has ${o.history.length} entries for ${fresh} new layers (${chain.slice(reused.length).map((i) => JSON.stringify(i.name)).join(', ') || 'none'})`);
  }

  const archive = o.format !== 'oci';
  const layoutDir = archive ? scratchBeside(target) : target;
  let layout: LayoutWriter | undefined;
  try {
    layout = LayoutWriter.open(layoutDir);
    const layers: ExportedLayer[] = [];
    let doneBytes = 0;
    const progress = (index: number, status: ImageProgress['status'], bytes: number): void => {
      o.onProgress?.({ layer: index, layers: chain.length, status, bytes, doneBytes });
    };
    for (let i = 0; i < chain.length; i++) {
      const info = chain[i]!;
      let w: Written;
      let status: ExportedLayer['status'];
      if (i < reused.length) {
        const rec = reused[i]!;
        status = 'reused';
        if (o.format === 'docker-archive') {
          w = await decompressInto(store!, rec, layout, o.linkBlobs, (n) => progress(i, 'reading', n));
        } else {
          layout.copyIn(store!.blobPath(rec.blob.digest), rec.blob.digest, rec.blob.size, o.linkBlobs);
          // Docker's layer types name the same bytes; an OCI manifest names them the OCI way.
          const compression = layerCompression({ mediaType: rec.blob.mediaType, digest: rec.blob.digest, size: rec.blob.size }, `stored layer ${rec.chainId}`);
          w = { diffId: rec.diffId, digest: rec.blob.digest, size: rec.blob.size, mediaType: layerMediaType(compression) };
        }
      } else {
        status = 'diffed';
        w = await diffInto(sn, info, i === chain.length - 1, layout, o, (n) => progress(i, 'reading', n));
      }
      doneBytes += w.size;
      progress(i, status === 'reused' ? 'reused' : 'written', w.size);
      layers.push({ snapshot: info.name, diffId: w.diffId, digest: w.digest, mediaType: w.mediaType, size: w.size, status });
    }
    const diffIds = layers.map((l) => l.diffId);
    const topChain = chainIds(diffIds).at(-1)!;

    // The base's own documents, byte for byte, when nothing is added or changed.
    const unchanged =
      baseImage !== undefined && baseLayers === chain.length && fresh === 0 && o.config === undefined && o.author === undefined && o.platform === undefined && o.annotations === undefined && o.format !== 'docker-archive';
    let configDigest: string;
    let manifestBytes: Buffer;
    let platform: Platform;
    if (unchanged) {
      configDigest = layout.put(baseConfigBytes!);
      manifestBytes = store!.readBlob(baseImage.manifest.digest, MAX_MANIFEST_BYTES);
      platform = { os: baseConfig!.os, architecture: baseConfig!.architecture, ...(baseConfig!.variant ? { variant: baseConfig!.variant } : {}) };
    } else {
      platform = o.platform ?? (baseConfig ? { os: baseConfig.os, architecture: baseConfig.architecture, ...(baseConfig.variant ? { variant: baseConfig.variant } : {}) } : runningPlatform());
      const created = o.sourceDateEpoch !== undefined ? rfc3339(o.sourceDateEpoch) : undefined;
      const history = historyFor(baseConfig, reused.length, baseLayers === reused.length);
      for (let i = 0; i < fresh; i++) {
        const given = o.history?.[i] ?? o.layerHistory ?? { created_by: 'overlay-snapshotter image export' };
        const entry: HistoryEntry = {};
        const when = given.created ?? created;
        if (when !== undefined) entry.created = when;
        if (given.author !== undefined) entry.author = given.author;
        entry.created_by = given.created_by ?? '';
        if (given.comment !== undefined) entry.comment = given.comment;
        history.push(entry);
      }
      const { created: _c, author: _a, architecture: _ar, os: _os, variant: _v, config: baseRun, rootfs: _r, history: _h, ...rest } = baseConfig ?? ({} as Partial<ImageConfig>);
      const config: Record<string, unknown> = {};
      if (created !== undefined) config.created = created;
      const author = o.author ?? baseConfig?.author;
      if (author !== undefined) config.author = author;
      config.architecture = platform.architecture;
      config.os = platform.os;
      if (platform.variant !== undefined) config.variant = platform.variant;
      Object.assign(config, rest);
      config.config = { ...(baseRun ?? {}), ...(o.config ?? {}) };
      config.rootfs = { type: 'layers', diff_ids: diffIds };
      config.history = history;
      const configBytes = canonicalJson(config);
      configDigest = layout.put(configBytes);
      const manifest: Manifest = {
        schemaVersion: 2,
        mediaType: MEDIA.ociManifest,
        config: { mediaType: MEDIA.ociConfig, digest: configDigest, size: configBytes.length },
        layers: layers.map((l) => ({ mediaType: l.mediaType, digest: l.digest, size: l.size })),
      };
      if (o.annotations !== undefined) manifest.annotations = { ...o.annotations };
      manifestBytes = canonicalJson(manifest);
    }
    const manifestDigest = layout.put(manifestBytes);
    const annotations: Record<string, string> = {};
    if (o.ref !== undefined) {
      const full = normalizeRef(o.ref);
      if (full !== undefined && full !== o.ref) annotations[CONTAINERD_NAME_ANNOTATION] = full;
      annotations[REF_ANNOTATION] = o.ref;
    }
    const desc: Descriptor = { mediaType: MEDIA.ociManifest, digest: manifestDigest, size: manifestBytes.length };
    if (Object.keys(annotations).length > 0) desc.annotations = annotations;
    desc.platform = platform;
    layout.index(desc);
    if (o.format === 'docker-archive') {
      const entry = { Config: `blobs/sha256/${configDigest.slice(7)}`, RepoTags: o.ref !== undefined ? [familiar(o.ref)] : [], Layers: layers.map((l) => `blobs/sha256/${l.digest.slice(7)}`) };
      layout.file('manifest.json', canonicalJson([entry]));
    }
    if (archive) await packLayout(layoutDir, target, o.sourceDateEpoch ?? 0);
    const result: ExportImageResult = { target, format: o.format, manifestDigest, manifestSize: manifestBytes.length, configDigest, chainId: topChain, layers };
    if (o.ref !== undefined) result.ref = o.ref;
    debug('exported %s to %s (%s): %d layers, %d reused', key, target, o.format, layers.length, reused.length);
    return result;
  } catch (err) {
    layout?.abort();
    throw err;
  } finally {
    if (archive) rmSync(layoutDir, { recursive: true, force: true });
  }
}

/** `docker.io/library/busybox:latest` → `busybox:latest`, as `docker save` writes RepoTags. */
function familiar(ref: string): string {
  const full = normalizeRef(ref)!;
  return full.replace(/^docker\.io\/library\//, '').replace(/^docker\.io\//, '');
}

/** The stored image to start the config from: the one named, or the one whose top is the highest reused layer. */
function findBase(store: ImageStore | undefined, ref: string | undefined, reusedChain: readonly string[]): StoredImage | undefined {
  if (store === undefined) {
    if (ref !== undefined) throw new InvalidArgumentError('`base` needs an image store (pass `store`)');
    return undefined;
  }
  const images = store.list();
  if (ref !== undefined) {
    const named = images.find((i) => i.ref === ref || i.manifest.digest === ref);
    if (named === undefined) throw new NotFoundError(`no image ${JSON.stringify(ref)} in the image store ${store.dir}`);
    if (!reusedChain.includes(named.chainId)) {
      throw new InvalidArgumentError(`base image ${JSON.stringify(ref)} (top ${named.chainId}) is not below the exported snapshot, or its layers are not the stored ones`);
    }
    return named;
  }
  for (let k = reusedChain.length - 1; k >= 0; k--) {
    const tops = images.filter((i) => i.chainId === reusedChain[k]);
    if (tops.length === 0) continue;
    // Several names for one top: the first by ref, then digest, so that the choice does not depend on import order.
    return [...tops].sort((a, b) => ((a.ref ?? '') + a.manifest.digest < (b.ref ?? '') + b.manifest.digest ? -1 : 1))[0];
  }
  return undefined;
}
