/**
 * Snapshot-level calls: find the directory to write from a snapshot's mount
 * spec, then apply or diff there; and the image unpacker's loop (prepare →
 * apply → commit under the OCI chain ID). They use only the snapshotter's
 * public API, typed structurally ({@link LayerSnapshotter}) so that any
 * object with these methods works, this package's Snapshotter included.
 */
import { createHash } from 'node:crypto';
import type { Readable, Writable } from 'node:stream';
import createDebug from 'debug';
import { v4 as uuidv4 } from 'uuid';
import { FailedPreconditionError, InvalidArgumentError, isAlreadyExists, isNotFound, q } from '../model/errors.js';
import type { Info, Mount, SnapshotOptions } from '../model/types.js';
import { type ApplyOptions, type ApplyResult, type LayerTarget, applyLayer } from './apply.js';
import type { Compression } from './compression.js';
import { type DiffOptions, type DiffResult, diffLayer } from './diff.js';
import { ownerLabels } from './owner.js';

const debug = createDebug('overlay-snapshotter:layers');

/** The part of the Snapshotter API the layer calls use. */
export interface LayerSnapshotter {
  prepare(key: string, parent?: string, opts?: SnapshotOptions): Promise<Mount[]>;
  mounts(key: string): Promise<Mount[]>;
  commit(name: string, key: string, opts?: SnapshotOptions): Promise<void>;
  remove(key: string): Promise<void>;
  stat(key: string): Promise<Info>;
}

/**
 * The directories behind an active snapshot's mount spec: for an overlay,
 * `upperdir=` and the `lowerdir=` list (immediate parent first; `lowerdir+=`
 * options too); for the read-write bind of a parentless active, its source.
 * A read-only mount (a view) has nothing to write and is refused.
 */
export function targetFromMounts(mounts: readonly Mount[], key = '(mounts)'): LayerTarget {
  if (mounts.length !== 1) {
    throw new InvalidArgumentError(`snapshot ${q(key)}: expected exactly one mount, got ${mounts.length}`);
  }
  const m = mounts[0]!;
  if (m.type === 'bind' || m.type === 'rbind') {
    if (m.options.includes('ro')) throw new FailedPreconditionError(`snapshot ${q(key)} is read-only (a view): only an active snapshot has changes`);
    return { upper: m.source, lowers: [] };
  }
  if (m.type === 'overlay') {
    let upper: string | undefined;
    const lowers: string[] = [];
    let userxattr = false;
    for (const opt of m.options) {
      if (opt.startsWith('upperdir=')) upper = opt.slice('upperdir='.length);
      else if (opt.startsWith('lowerdir=')) lowers.push(...opt.slice('lowerdir='.length).split(':'));
      else if (opt.startsWith('lowerdir+=')) lowers.push(opt.slice('lowerdir+='.length));
      else if (opt === 'userxattr') userxattr = true;
    }
    if (upper === undefined) throw new FailedPreconditionError(`snapshot ${q(key)} is read-only (a view): only an active snapshot has changes`);
    for (const dir of [upper, ...lowers]) {
      if (!dir.startsWith('/')) throw new InvalidArgumentError(`snapshot ${q(key)}: overlay directory ${q(dir)} is not absolute`);
    }
    return userxattr ? { upper, lowers, userxattr } : { upper, lowers };
  }
  throw new InvalidArgumentError(`snapshot ${q(key)}: cannot write into a mount of type ${q(m.type)}`);
}

/** Applies a layer to the active snapshot `key` (see {@link applyLayer}). */
export async function apply(
  snapshotter: Pick<LayerSnapshotter, 'mounts'>,
  key: string,
  stream: Readable | AsyncIterable<Uint8Array>,
  opts?: ApplyOptions,
): Promise<ApplyResult> {
  return applyLayer(stream, targetFromMounts(await snapshotter.mounts(key), key), opts);
}

/**
 * Writes the changes of the active snapshot `key` against its parent as a
 * layer (see {@link diffLayer}). A read-write bind whose snapshot has a
 * parent (the native driver, where an active holds a full copy of its
 * parent's tree) has no change set to read, and is refused with
 * `FailedPreconditionError` rather than diffed as a whole tree; pass an
 * object with `stat` for that check.
 */
export async function diff(
  snapshotter: Pick<LayerSnapshotter, 'mounts'> & Partial<Pick<LayerSnapshotter, 'stat'>>,
  key: string,
  out: Writable,
  opts?: DiffOptions,
): Promise<DiffResult> {
  const target = targetFromMounts(await snapshotter.mounts(key), key);
  if (target.lowers.length === 0 && typeof snapshotter.stat === 'function') {
    const info = await snapshotter.stat(key);
    if (info.parent !== undefined && info.parent !== '') {
      throw new FailedPreconditionError(
        `cannot diff ${q(key)}: its mount is a plain copy of its parent ${q(info.parent)} (native driver), not an overlay upper; diffing a copy against its parent is not supported yet`,
      );
    }
  }
  return diffLayer(target, out, opts);
}

const DIGEST = /^sha256:[0-9a-f]{64}$/;

/**
 * OCI chain IDs: `ChainID(L0) = DiffID(L0)`,
 * `ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln))`.
 */
export function chainIds(diffIds: readonly string[]): string[] {
  const out: string[] = [];
  let chain: string | undefined;
  for (const id of diffIds) {
    if (!DIGEST.test(id)) throw new InvalidArgumentError(`Expected a diffID of the form sha256:<64 hex>, got ${q(id)}`);
    chain = chain === undefined ? id : `sha256:${createHash('sha256').update(`${chain} ${id}`).digest('hex')}`;
    out.push(chain);
  }
  return out;
}

/** A layer to import: a stream, or a function that opens one (called only if the layer must be applied). */
export type LayerSource =
  | Readable
  | AsyncIterable<Uint8Array>
  | {
      /** The layer data, or a function opening it on demand. */
      stream: Readable | AsyncIterable<Uint8Array> | (() => Readable | AsyncIterable<Uint8Array> | Promise<Readable | AsyncIterable<Uint8Array>>);
      /** The layer's diffID (`sha256:` of the uncompressed tar), if known: lets an existing layer be skipped unread, and is verified after applying. */
      diffID?: string;
    };

/** Options of {@link importLayers}. */
export interface ImportOptions {
  /** Labels for each committed snapshot. */
  labels?: Record<string, string>;
  /** Passed to each {@link applyLayer}. */
  apply?: ApplyOptions;
  /**
   * Called after each layer with what was done. `size` (bytes of the
   * uncompressed tar) and `compression` are there when the layer was read.
   */
  onLayer?: (event: { index: number; chainID: string; diffID: string; skipped: boolean; size?: number; compression?: Compression }) => void;
}

function isDescriptor(layer: LayerSource): layer is Exclude<LayerSource, Readable | AsyncIterable<Uint8Array>> {
  return typeof layer === 'object' && layer !== null && 'stream' in layer && !(Symbol.asyncIterator in layer);
}

async function exists(snapshotter: LayerSnapshotter, name: string): Promise<boolean> {
  try {
    const info = await snapshotter.stat(name);
    return info.kind === 'committed';
  } catch (err) {
    if (isNotFound(err)) return false;
    throw err;
  }
}

function discard(layer: LayerSource): void {
  const s = isDescriptor(layer) ? layer.stream : layer;
  if (typeof s === 'object' && s !== null && typeof (s as Readable).destroy === 'function') (s as Readable).destroy();
}

/**
 * Unpacks an image's layers, bottom first, into committed snapshots named by
 * their chain IDs, and returns the top one's name (what a container's
 * `prepare` takes as parent).
 *
 * Skip rule: a layer whose chain ID is already a committed snapshot is not
 * applied. The chain ID needs the layer's diffID, so a layer whose diffID
 * is passed in (from the image config's `rootfs.diff_ids`) is skipped
 * without reading its stream (which is destroyed, or never opened if given
 * as a function). A layer without one must be applied to learn it; if its
 * chain ID then turns out to exist (or another importer committed it
 * meanwhile), the fresh snapshot is removed and the existing one used.
 *
 * Each layer is applied in a fresh active with a unique key
 * (`import-<uuid>`), so concurrent imports of the same image do not clash;
 * on any failure that active is removed and the error rethrown. The active
 * carries `OWNER_LABEL` (this process), so that one left by a crash can be
 * told from one in use. A given
 * diffID that does not match the data is an `InvalidArgumentError`.
 */
export async function importLayers(snapshotter: LayerSnapshotter, layers: readonly LayerSource[], opts: ImportOptions = {}): Promise<string> {
  if (layers.length === 0) throw new InvalidArgumentError('importLayers needs at least one layer');
  let parent: string | undefined;
  for (let index = 0; index < layers.length; index++) {
    const layer = layers[index]!;
    const given = isDescriptor(layer) ? layer.diffID : undefined;
    if (given !== undefined) {
      const chain = chainIds(parent === undefined ? [given] : [parent, given]).at(-1)!;
      if (await exists(snapshotter, chain)) {
        debug('layer %d (%s) already present as %s', index, given, chain);
        discard(layer);
        opts.onLayer?.({ index, chainID: chain, diffID: given, skipped: true });
        parent = chain;
        continue;
      }
    }
    const key = `import-${uuidv4()}`;
    // Labelled with this process, so that what a crash leaves is known for garbage (owner.ts).
    await snapshotter.prepare(key, parent, { labels: ownerLabels() });
    let committed = false;
    try {
      const src = isDescriptor(layer) ? (typeof layer.stream === 'function' ? await layer.stream() : layer.stream) : layer;
      const result = await apply(snapshotter, key, src, opts.apply);
      if (given !== undefined && result.digest !== given) {
        throw new InvalidArgumentError(`layer ${index}: diffID is ${result.digest}, expected ${given}`);
      }
      const chain = chainIds(parent === undefined ? [result.digest] : [parent, result.digest]).at(-1)!;
      let skipped = false;
      try {
        await snapshotter.commit(chain, key, opts.labels ? { labels: opts.labels } : undefined);
        committed = true;
      } catch (err) {
        if (!isAlreadyExists(err)) throw err;
        // Present already (its diffID was not known in advance) or committed by a concurrent import.
        if (!(await exists(snapshotter, chain))) throw err;
        skipped = true;
      }
      opts.onLayer?.({ index, chainID: chain, diffID: result.digest, skipped, size: result.size, compression: result.compression });
      parent = chain;
    } finally {
      if (!committed) {
        await snapshotter.remove(key).catch((err: unknown) => {
          debug('could not remove %s after a failed import: %o', key, err);
        });
      }
    }
  }
  return parent!;
}
