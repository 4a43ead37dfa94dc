/**
 * Listing and removing the images of the image store. Removing an image
 * drops its record, the blobs no other image uses, and the
 * `containerd.io/gc.root` label of its top layer when no other image has
 * the same top; its snapshots are then ordinary unreferenced layers, which
 * `prune` removes (unless something else keeps them).
 */
import { InvalidArgumentError, isNotFound } from '../model/errors.js';
import { releaseRoots, storeDir, type ImageSnapshotter } from './import.js';
import { MAX_MANIFEST_BYTES, type Platform, parseManifest } from './media.js';
import { refMatches } from './select.js';
import { ImageStore, type StoredImage } from './store.js';

/** One stored image, as {@link listImages} shows it. */
export interface ImageInfo {
  ref?: string;
  /** Chain ID of the top layer (the snapshot to build on). */
  chainId: string;
  manifestDigest: string;
  platform?: Platform;
  layers: number;
  /** Bytes of the layer blobs as stored. */
  size: number;
  /** When it was imported (RFC 3339), if recorded. */
  imported?: string;
  /** Whether the top layer is a committed snapshot now (false once pruned or removed). */
  present: boolean;
}

export interface RemoveImageResult {
  removed: ImageInfo[];
  /** Top layers whose `containerd.io/gc.root` label was dropped (now prunable). */
  released: string[];
}

async function describe(sn: Pick<ImageSnapshotter, 'stat'>, store: ImageStore, image: StoredImage): Promise<ImageInfo> {
  let layers = 0;
  let size = 0;
  try {
    const m = parseManifest(store.readBlob(image.manifest.digest, MAX_MANIFEST_BYTES), `stored manifest ${image.manifest.digest}`);
    layers = m.layers.length;
    size = m.layers.reduce((s, l) => s + l.size, 0);
  } catch {
    // A damaged record is still listed, so that it can be removed.
  }
  let present = false;
  try {
    present = (await sn.stat(image.chainId)).kind === 'committed';
  } catch (err) {
    if (!isNotFound(err)) throw err;
  }
  const info: ImageInfo = { chainId: image.chainId, manifestDigest: image.manifest.digest, layers, size, present };
  if (image.ref !== undefined) info.ref = image.ref;
  if (image.manifest.platform) info.platform = image.manifest.platform;
  if (image.imported !== undefined) info.imported = image.imported;
  return info;
}

function storeOption(options: { store?: string } | undefined, call: string): string | undefined {
  if (options === undefined) return undefined;
  if (typeof options !== 'object' || options === null) throw new InvalidArgumentError(`Expected ${call} options to be an object`);
  for (const key of Object.keys(options)) if (key !== 'store') throw new InvalidArgumentError(`Unknown ${call} option \`${key}\`; the only one is \`store\``);
  return options.store;
}

/** The images of the image store, sorted by ref (unnamed ones last, by digest). */
export async function listImages(sn: Pick<ImageSnapshotter, 'stat'> & { readonly root?: string }, options?: { store?: string }): Promise<ImageInfo[]> {
  const store = ImageStore.open(storeDir(sn, storeOption(options, 'listImages')));
  const out: ImageInfo[] = [];
  for (const image of store.list()) out.push(await describe(sn, store, image));
  const key = (i: ImageInfo): string => (i.ref !== undefined ? `0${i.ref}` : `1${i.manifestDigest}`);
  return out.sort((a, b) => (key(a) < key(b) ? -1 : key(a) > key(b) ? 1 : 0));
}

/**
 * Removes the image named `ref` (as stored, or the same docker reference
 * in another form), or the images with that manifest digest.
 * @throws NotFoundError when no stored image matches.
 */
export async function removeImage(sn: Pick<ImageSnapshotter, 'stat' | 'update'> & { readonly root?: string }, ref: string, options?: { store?: string }): Promise<RemoveImageResult> {
  if (typeof ref !== 'string' || ref === '') throw new InvalidArgumentError(`Expected an image ref or manifest digest, got ${JSON.stringify(ref)}`);
  const store = ImageStore.open(storeDir(sn, storeOption(options, 'removeImage')));
  const matches = (i: StoredImage): boolean => (i.ref !== undefined && refMatches(ref, i.ref)) || i.manifest.digest === ref;
  const described = new Map<string, ImageInfo>();
  for (const image of store.list()) if (matches(image)) described.set(image.manifest.digest + (image.ref ?? ''), await describe(sn, store, image));
  const gone = await store.remove(matches, JSON.stringify(ref));
  const released = await releaseRoots(sn, store, gone);
  return { removed: gone.map((g) => described.get(g.manifest.digest + (g.ref ?? ''))!).filter((i) => i !== undefined), released };
}
