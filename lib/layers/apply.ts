/**
 * Applying a layer tarball to a directory: an overlay upper dir (with the
 * lower dirs below it, read only) or the `fs` dir of a parentless snapshot.
 *
 * The rules, in short (docs/layers.md has the long form):
 *
 * - Every entry name is cleaned and checked ({@link cleanName}); its parent
 *   is resolved one component at a time in the *merged* view (upper over
 *   lowers, honouring whiteouts and opaque dirs), and a parent that is a
 *   symlink (planted earlier in this layer, already in the upper, or in any
 *   lower) or not a directory is refused. We never follow a symlink: files
 *   are created with `O_EXCL|O_NOFOLLOW`, metadata is set on descriptors or
 *   with the `l*` calls, and a parent we did not create is `lstat`ed.
 * - A parent that exists only in a lower is copied up (mode, owner, xattrs),
 *   as overlayfs would; a missing parent is created 0755 root-owned, as
 *   containerd does.
 * - `.wh.<name>` becomes an overlay whiteout (char 0/0) and `.wh..wh..opq`
 *   the opaque xattr on its directory; with no lowers (parentless snapshot)
 *   both simply delete. A whiteout hides only what lies below this layer:
 *   entries this layer already wrote are kept, wherever the marker sits.
 * - A hard link may point to a file of this layer, of the upper, or of a
 *   lower: a lower file is first copied up to its own path in the upper
 *   (the link must share an inode, and lowers are read only).
 *
 * Atomicity: nothing is ever overwritten in place. What the layer creates is
 * journalled; what it replaces or deletes from the upper is renamed aside
 * into an undo dir next to the upper (same filesystem, so a rename), and the
 * metadata and times of pre-existing dirs it touches are recorded first. If
 * any entry is refused or any call fails, the journal is played backwards
 * and the upper is as it was; on success the undo dir is deleted. This
 * costs nothing when the upper starts empty (the import case): there is
 * nothing to rename aside. A crash mid-apply leaves a half-applied upper
 * (and maybe the undo dir beside it); the import helper only commits after
 * a successful apply, so such an active is never committed.
 */
import type { Readable } from 'node:stream';
import tar from 'tar-stream';
import { InvalidArgumentError, q } from '../model/errors.js';
import { Applier, type PendingFile } from './applier.js';
import { type Compression, decompress } from './compression.js';
import { StreamHash, useWorker } from './hash.js';
import { writersReady } from './writer.js';
import { type EntryHeader, captureRawXattrs } from './pax.js';

/** Where a layer goes: the directory written, and the read-only layers below it. */
export interface LayerTarget {
  /** The directory to write: an overlay `upperdir`, or the `fs` dir of a parentless snapshot. */
  upper: string;
  /** Overlay lower dirs, immediate parent first; `[]` for a parentless snapshot (whiteouts then delete). */
  lowers: string[];
  /**
   * The overlay is mounted with `userxattr` (user namespaces): opaque dirs
   * carry `user.overlay.opaque` instead of `trusted.overlay.opaque`.
   * Default `false`.
   */
  userxattr?: boolean;
}

/** Options of {@link applyLayer}. */
export interface ApplyOptions {
  /**
   * Restore owners (uid/gid) from the layer. Default: `true` when running as
   * root, else `false` (files then belong to the caller, as with `tar` run
   * by a user).
   */
  sameOwner?: boolean;
  /**
   * Directory for entries the layer replaces or deletes, kept until the
   * apply succeeds so a failure can put them back. It must be on the same
   * filesystem as the upper. Default: a fresh `.apply-undo-<uuid>` directory
   * next to the upper (inside the snapshot's own directory), made only when
   * needed and removed afterwards.
   */
  undoDir?: string;
}

/** The digest and size of the uncompressed tar stream (its OCI diffID). */
export interface LayerDigest {
  /** `sha256:<hex>` of the uncompressed tar: the layer's diffID. */
  digest: string;
  /** Bytes of the uncompressed tar. */
  size: number;
}

/** What {@link applyLayer} found and did. */
export interface ApplyResult extends LayerDigest {
  /** The compression detected from the stream's first bytes. */
  compression: Compression;
}

/**
 * Applies a layer tarball (plain, gzip or zstd, detected from its first
 * bytes) to `target`, and returns the sha256 digest and size of the
 * uncompressed tar (the layer's OCI diffID). Entries that would write
 * outside the target are refused with an `InvalidArgumentError` naming the
 * entry; on any failure the target is restored to its state before the call.
 *
 * The target must not be mounted or otherwise changed while this runs.
 */
export async function applyLayer(stream: Readable | AsyncIterable<Uint8Array>, target: LayerTarget, opts: ApplyOptions = {}): Promise<ApplyResult> {
  const applier = new Applier(target, opts, useWorker() ? writersReady() : false);
  const hash = new StreamHash();
  let compression: Compression = 'none';
  try {
    const input = await decompress(stream);
    compression = input.compression;
    const extract = tar.extract();
    captureRawXattrs(extract);
    extract.on('entry', (h, body, next) => {
      const header = h as unknown as EntryHeader;
      // A failure destroys the extractor, which destroys the entry stream with the same error: it is reported once, below.
      body.on('error', () => {});
      let file: PendingFile | undefined;
      try {
        file = applier.begin(header);
      } catch (err) {
        body.resume();
        next(err as Error);
        return;
      }
      if (!file) {
        body.on('end', () => next());
        body.resume();
        return;
      }
      const pending = file;
      let failed = false;
      body.on('data', (chunk) => {
        if (failed) return;
        try {
          applier.write(pending, chunk as Buffer);
        } catch (err) {
          failed = true;
          next(err as Error);
        }
      });
      body.on('end', () => {
        if (failed) return;
        try {
          applier.finishFile(pending);
        } catch (err) {
          next(err as Error);
          return;
        }
        next();
      });
    });
    await new Promise<void>((resolve, reject) => {
      const src = input.stream;
      let settled = false;
      const fail = (err: unknown): void => {
        if (settled) return;
        settled = true;
        src.destroy();
        extract.destroy();
        reject(err);
      };
      extract.on('error', fail);
      extract.on('finish', () => {
        if (settled) return;
        settled = true;
        resolve();
      });
      extract.on('drain', () => {
        src.resume();
      });
      src.on('error', fail);
      src.on('data', (chunk: Buffer) => {
        hash.update(chunk);
        if (!extract.write(chunk)) src.pause();
      });
      src.on('end', () => {
        (extract as unknown as { end(): void }).end();
      });
    });
    applier.commit();
  } catch (err) {
    hash.abort();
    try {
      applier.rollback();
    } catch (undoErr) {
      throw new AggregateError([err, undoErr], `applying the layer failed and so did restoring ${q(target.upper)}: ${(undoErr as Error).message}`);
    }
    throw asLayerError(err);
  }
  return { digest: await hash.digest(), size: hash.size, compression };
}

/** tar-stream's format errors are the caller's bad input: make them InvalidArgument. */
function asLayerError(err: unknown): unknown {
  if (err instanceof InvalidArgumentError) return err;
  const msg = (err as Error)?.message ?? '';
  if (/Invalid tar header|Unexpected end of data|unknown format|Header exceeds max size|incorrect header check|unexpected end of file|invalid/i.test(msg) && !(err as NodeJS.ErrnoException).syscall) {
    return new InvalidArgumentError(`layer is not a valid tar stream: ${msg}`, { cause: err });
  }
  return err;
}
