/**
 * importImage: an image (OCI layout, its tar, or a docker archive) into
 * committed snapshots named by chain ID, and into the image store.
 *
 * One pass over each layer blob: the file is read once, and on its way to
 * the applier it is counted, hashed where its digest is not its diffID,
 * and copied into the store (verify.ts). A blob that does not match fails
 * its apply, which undoes itself; the active is removed (importLayers).
 * Layers whose chain ID is already committed are not read at all (their
 * blob is copied into the store only if it is missing there).
 */
import { createReadStream, rmSync } from 'node:fs';
import { join } from 'node:path';
import { pipeline } from 'node:stream';
import createDebug from 'debug';
import { InvalidArgumentError } from '../model/errors.js';
import type { Info, Mount, SnapshotOptions } from '../model/types.js';
import { type ApplyOptions, type LayerSnapshotter, type LayerSource, OWNER_LABEL, chainIds, detectCompression, importLayers, ownerLabels } from '../layers/index.js';
import { type Compression, type ImageConfig, MEDIA, type Platform, canonicalJson, layerMediaType } from './media.js';
import { formatPlatform, parsePlatform, runningPlatform } from './platform.js';
import { type SelectedImage, type SourceLayer, selectImage } from './select.js';
import { openSource } from './source.js';
import { type BlobWriter, ImageStore, type LayerRecord, type StoredImage } from './store.js';
import { type Verified, verifier } from './verify.js';

const debug = createDebug('overlay-snapshotter:images');

/** containerd's GC root label: the top layer of a stored image is kept by `prune`, with its parents. */
export const GC_ROOT_LABEL = 'containerd.io/gc.root';

/** The snapshotter calls images need: the layer calls, plus `update` (labels) and `view` (export of committed layers). */
export interface ImageSnapshotter extends LayerSnapshotter {
  update(info: Partial<Info> & { name: string }, ...fieldpaths: string[]): Promise<Info>;
  view(key: string, parent?: string, opts?: SnapshotOptions): Promise<Mount[]>;
  /** The snapshotter's root: the image store defaults to `<root>/images`. */
  readonly root?: string;
}

/** Progress of an import or export, per layer and bytes. */
export interface ImageProgress {
  /** Index of the layer concerned, bottom first. */
  layer: number;
  layers: number;
  /** `reading`: bytes are flowing; then `applied`, `reused` (present already: not read) or, for export, `written`. */
  status: 'reading' | 'applied' | 'reused' | 'written';
  /** Bytes of this layer's blob done so far. */
  bytes: number;
  /** Bytes of the layers before it. */
  doneBytes: number;
  /** Bytes of all layer blobs, when known (import: the blob sizes; export: unknown until written). */
  totalBytes?: number;
}

/** Options of {@link importImage}. */
export interface ImportImageOptions {
  /**
   * Which image of the source: a name as its index.json annotates it
   * (`org.opencontainers.image.ref.name` or `io.containerd.image.name`) or
   * as a docker archive tags it; docker names match in full or short form
   * (`busybox` = `docker.io/library/busybox:latest`). Default: the only
   * image of the source. The image is stored under the name it carries.
   */
  ref?: string;
  /** `os/arch[/variant]` or an object; default the running platform. */
  platform?: string | Platform;
  /** The image store directory. Default `<snapshotter root>/images`. */
  store?: string;
  /** Passed to each layer's apply (owners, undo dir). */
  apply?: ApplyOptions;
  /** Called as layers are read and committed. */
  onProgress?: (progress: ImageProgress) => void;
}

/** One layer of an imported image. */
export interface ImportedLayer {
  index: number;
  diffId: string;
  chainId: string;
  /** The layer blob: its digest, media type and size. */
  digest: string;
  mediaType: string;
  size: number;
  /** `applied`: unpacked now; `reused`: its chain ID was already a committed snapshot. */
  status: 'applied' | 'reused';
}

/** What {@link importImage} did. */
export interface ImportImageResult {
  /** Chain ID of the top layer: the committed snapshot to `prepare` a container or build step on. */
  chainId: string;
  /** The name the image is stored under, if it has one. */
  ref?: string;
  manifestDigest: string;
  configDigest: string;
  config: ImageConfig;
  platform: Platform;
  layers: ImportedLayer[];
  /** The image store it was recorded in. */
  store: string;
}

const KNOWN = ['ref', 'platform', 'store', 'apply', 'onProgress'];

function checkOptions(options: unknown, known: readonly string[], call: string): Record<string, unknown> {
  if (options === undefined) return Object.create(null) as Record<string, unknown>;
  if (typeof options !== 'object' || options === null) throw new InvalidArgumentError(`Expected ${call} options to be an object`);
  for (const key of Object.keys(options)) {
    if (!known.includes(key)) throw new InvalidArgumentError(`Unknown ${call} option \`${key}\`; known options: ${known.join(', ')}`);
  }
  return Object.assign(Object.create(null) as Record<string, unknown>, options);
}

/** The store directory for `sn`: the option, else `<root>/images`. */
export function storeDir(sn: { readonly root?: string }, option: unknown): string {
  if (option !== undefined) {
    if (typeof option !== 'string' || option === '') throw new InvalidArgumentError(`Expected \`store\` to be a directory path, got ${JSON.stringify(option)}`);
    return option;
  }
  if (typeof sn.root === 'string' && sn.root !== '') return join(sn.root, 'images');
  throw new InvalidArgumentError('this snapshotter has no `root`; pass the image store directory as the `store` option');
}

/** Validates the options of importImage and applies defaults. */
function resolveImport(sn: ImageSnapshotter, options: ImportImageOptions | undefined) {
  const o = checkOptions(options, KNOWN, 'importImage');
  if (o.ref !== undefined && (typeof o.ref !== 'string' || o.ref === '')) throw new InvalidArgumentError(`Expected \`ref\` to be a non-empty string, got ${JSON.stringify(o.ref)}`);
  let platform: Platform;
  const explicit = o.platform !== undefined;
  if (o.platform === undefined) platform = runningPlatform();
  else if (typeof o.platform === 'string') platform = parsePlatform(o.platform);
  else if (typeof o.platform === 'object' && o.platform !== null) platform = parsePlatform(formatPlatform(o.platform as Platform));
  else throw new InvalidArgumentError(`Expected \`platform\` to be "os/arch[/variant]" or an object, got ${typeof o.platform}`);
  if (o.onProgress !== undefined && typeof o.onProgress !== 'function') throw new InvalidArgumentError('Expected `onProgress` to be a function');
  return {
    ref: o.ref as string | undefined,
    platform,
    explicit,
    store: storeDir(sn, o.store),
    apply: o.apply as ApplyOptions | undefined,
    onProgress: o.onProgress as ((p: ImageProgress) => void) | undefined,
  };
}

/** Per-layer state of one import: the stream read (if it was), and the store's copy (written as read, or a hard link read through). */
interface Reading {
  verified: Promise<Verified>;
  tee?: BlobWriter;
  linked?: string;
}

/** The blob digest of a layer: declared (OCI), its diffID (uncompressed), or what the verifier hashed. */
function blobDigest(layer: SourceLayer, v: Verified): string {
  if (layer.desc) return layer.desc.digest;
  if (v.compression === 'none') return layer.diffId;
  return v.digest!;
}

/** Reads a layer blob into the store without applying it (a layer present as a snapshot, whose blob the store lacks). */
async function storeOnly(image: SelectedImage, index: number, open: (layer: SourceLayer) => NodeJS.ReadableStream, store: ImageStore): Promise<Verified> {
  const layer = image.layers[index]!;
  const tee = store.writer();
  const v = verifier({ what: `layer ${index} (${layer.path})`, size: layer.size, digest: layer.desc?.digest ?? 'any', ...(layer.compression ? { compression: layer.compression } : {}), tee });
  try {
    await new Promise<void>((resolve, reject) => {
      pipeline(open(layer), v, (err) => (err ? reject(err) : resolve()));
      v.resume();
    });
    const got = await v.result;
    if (!layer.desc && got.compression === 'none' && got.digest !== layer.diffId) {
      throw new InvalidArgumentError(`layer ${index} (${layer.path}) hashes to ${got.digest}, its diff_id is ${layer.diffId}`);
    }
    await tee.commit(blobDigest(layer, got));
    return got;
  } catch (err) {
    await tee.abort();
    throw err;
  }
}

/**
 * Imports an image: selects it in `source` (an OCI image layout
 * directory, an OCI layout tar, or a docker archive) by ref and platform,
 * verifies each blob's digest and size as it reads it, applies the layers
 * bottom first as committed snapshots named by chain ID (skipping those
 * already present), and records the image in the image store (its top
 * layer labelled `containerd.io/gc.root`, so `prune` keeps the image).
 *
 * A failure leaves the store as it was, except for layers that were
 * completely applied and verified before it (committed, reusable by the
 * next import).
 *
 * @throws InvalidArgumentError for a malformed, unsupported or hostile
 *   image (digest or size mismatch, a path outside the source, an
 *   oversized document, a symlinked `blobs/`, a foreign layer).
 * @throws NotFoundError when no image has that ref or platform.
 */
export async function importImage(sn: ImageSnapshotter, source: string, options?: ImportImageOptions): Promise<ImportImageResult> {
  const o = resolveImport(sn, options);
  if (typeof source !== 'string' || source === '') throw new InvalidArgumentError(`Expected source to be a path, got ${JSON.stringify(source)}`);
  const store = ImageStore.open(o.store);
  const src = openSource(source);
  const lease = store.lease();
  /** Layers this import committed: they carry OWNER_LABEL (kept while we run) until the image is recorded. */
  const ours: string[] = [];
  const readings: (Reading | undefined)[] = [];
  const done: { event: { index: number; chainID: string; skipped: boolean; size?: number } }[] = [];
  try {
    const image = selectImage(src, o.ref, o.platform, o.explicit);
    const chains = chainIds(image.layers.map((l) => l.diffId));
    const totalBytes = image.layers.reduce((s, l) => s + l.size, 0);
    let doneBytes = 0;
    const open = (layer: SourceLayer): NodeJS.ReadableStream => src.open(layer.path);
    const sources: LayerSource[] = image.layers.map((layer, index) => ({
      diffID: layer.diffId,
      stream: () => {
        const stored = layer.desc !== undefined && store.hasBlob(layer.desc.digest, layer.desc.size);
        // A blob of a layout directory on the store's filesystem that only root can change is linked
        // rather than copied, and read (and so verified) through the link: one pass, no second write.
        let linked: string | undefined;
        if (!stored && layer.desc !== undefined) {
          const path = store.ingestPath();
          if (src.linkTo(layer.path, path)) linked = path;
        }
        const tee = stored || linked !== undefined ? undefined : store.writer();
        const v = verifier({
          what: `layer ${index} (${layer.desc?.digest ?? layer.path})`,
          size: layer.size,
          // An uncompressed blob's digest is its diffID, which the applier computes and importLayers checks.
          ...(layer.desc ? (layer.compression === 'none' ? {} : { digest: layer.desc.digest }) : { digest: 'compressed' as const }),
          ...(layer.compression ? { compression: layer.compression } : {}),
          ...(tee ? { tee } : {}),
          onBytes: (bytes) => o.onProgress?.({ layer: index, layers: image.layers.length, status: 'reading', bytes, doneBytes, totalBytes }),
        });
        readings[index] = tee ? { verified: v.result, tee } : linked !== undefined ? { verified: v.result, linked } : { verified: v.result };
        pipeline(linked !== undefined ? createReadStream(linked, { highWaterMark: 1 << 20 }) : src.open(layer.path), v, () => {});
        if (stored) lease.add(layer.desc!.digest);
        return v;
      },
    }));
    const top = await importLayers(sn, sources, {
      labels: ownerLabels(),
      ...(o.apply ? { apply: o.apply } : {}),
      onLayer: (e) => {
        done.push({ event: e });
        // Read and committed by us (a commit that found the layer present reports skipped).
        if (readings[e.index] && !e.skipped) ours.push(e.chainID);
        doneBytes += image.layers[e.index]!.size;
        o.onProgress?.({ layer: e.index, layers: image.layers.length, status: e.skipped ? 'reused' : 'applied', bytes: image.layers[e.index]!.size, doneBytes, totalBytes });
      },
    });
    if (top !== chains.at(-1)) throw new Error(`internal: import ended at ${top}, expected ${chains.at(-1)}`);

    // Blobs: commit the copies made while applying; copy those of layers skipped unread, if missing.
    const layers: ImportedLayer[] = [];
    const records: LayerRecord[] = [];
    for (const { event } of done) {
      const layer = image.layers[event.index]!;
      const reading = readings[event.index];
      let verified: Verified;
      if (reading) {
        verified = await reading.verified;
        const digest = blobDigest(layer, verified);
        if (reading.tee) {
          const tee = reading.tee;
          reading.tee = undefined;
          await tee.commit(digest);
        } else if (reading.linked !== undefined) {
          store.commitIngest(reading.linked, digest);
          reading.linked = undefined;
        }
        lease.add(digest);
      } else if (layer.desc && store.hasBlob(layer.desc.digest, layer.desc.size)) {
        verified = { size: layer.size, compression: layer.compression! };
      } else if (!layer.desc && detectCompression(src.head(layer.path, 6)) === 'none' && store.hasBlob(layer.diffId, layer.size)) {
        // A plain tar of a docker archive: its digest is its diffID, whose blob the store has.
        verified = { size: layer.size, compression: 'none' };
      } else {
        verified = await storeOnly(image, event.index, open, store);
        lease.add(blobDigest(layer, verified));
      }
      const digest = blobDigest(layer, verified);
      const mediaType = layer.desc?.mediaType ?? layerMediaType(verified.compression);
      layers.push({ index: event.index, diffId: layer.diffId, chainId: event.chainID, digest, mediaType, size: layer.size, status: event.skipped ? 'reused' : 'applied' });
      const rec: LayerRecord = { chainId: event.chainID, diffId: layer.diffId, blob: { mediaType, digest, size: layer.size } };
      const size = event.size ?? store.layer(event.chainID)?.size;
      if (size !== undefined) rec.size = size;
      records.push(rec);
    }
    for (const rec of records) store.putLayer(rec);

    // The manifest: as read (OCI), or written for a docker archive, which has none.
    const configDigest = store.putBlob(image.config.bytes);
    lease.add(configDigest);
    let manifestBytes: Buffer;
    let mediaType: string;
    if (image.manifest) {
      manifestBytes = image.manifest.bytes;
      mediaType = image.manifest.desc.mediaType;
    } else {
      manifestBytes = canonicalJson({
        schemaVersion: 2,
        mediaType: MEDIA.ociManifest,
        config: { mediaType: MEDIA.ociConfig, digest: configDigest, size: image.config.bytes.length },
        layers: layers.map((l) => ({ mediaType: l.mediaType, digest: l.digest, size: l.size })),
      });
      mediaType = MEDIA.ociManifest;
    }
    const manifestDigest = store.putBlob(manifestBytes);
    lease.add(manifestDigest);
    const stored: StoredImage = {
      manifest: { mediaType, digest: manifestDigest, size: manifestBytes.length, platform: image.platform },
      chainId: top,
      imported: new Date().toISOString(),
    };
    if (image.ref !== undefined) stored.ref = image.ref;
    await sn.update({ name: top, labels: { [GC_ROOT_LABEL]: stored.imported! } }, `labels.${GC_ROOT_LABEL}`);
    const replaced = await store.add(stored);
    await releaseRoots(sn, store, replaced);
    const result: ImportImageResult = {
      chainId: top,
      manifestDigest,
      configDigest,
      config: image.config.value,
      platform: image.platform,
      layers,
      store: store.dir,
    };
    if (image.ref !== undefined) result.ref = image.ref;
    debug('imported %s from %s: %s (%d layers, %d applied)', image.ref ?? manifestDigest, source, top, layers.length, layers.filter((l) => l.status === 'applied').length);
    return result;
  } finally {
    for (const r of readings) {
      await r?.tee?.abort();
      if (r?.linked !== undefined) rmSync(r.linked, { force: true });
    }
    src.close();
    lease.release();
    // The committed layers are complete: they stop being ours (see OWNER_LABEL) whatever happened.
    for (const name of ours) {
      await sn.update({ name, labels: {} }, `labels.${OWNER_LABEL}`).catch((err: unknown) => debug('could not drop the owner label of %s: %o', name, err));
    }
  }
}

/** Drops `containerd.io/gc.root` from the top layers of images no longer stored, unless another stored image has the same top. */
export async function releaseRoots(sn: Pick<ImageSnapshotter, 'update'>, store: ImageStore, gone: readonly StoredImage[]): Promise<string[]> {
  const still = new Set(store.list().map((i) => i.chainId));
  const released: string[] = [];
  for (const chain of new Set(gone.map((g) => g.chainId))) {
    if (chain === '' || still.has(chain)) continue;
    try {
      await sn.update({ name: chain, labels: {} }, `labels.${GC_ROOT_LABEL}`);
      released.push(chain);
    } catch (err) {
      debug('could not drop the gc.root label of %s: %o', chain, err);
    }
  }
  return released;
}

export type { Compression };
