/**
 * The stream every imported blob flows through on its way to the layer
 * applier: it counts the bytes (more than declared fails at once), checks
 * that the first bytes announce the declared compression, hashes the blob
 * when its digest is not already the layer's diffID (which the applier
 * computes anyway, so an uncompressed layer is hashed once), and copies the
 * bytes into the image store. At the end a size or digest that does not
 * match fails the stream, and so the apply, which then undoes itself: the
 * verification is part of the one pass over the data.
 */
import { Transform, type TransformCallback } from 'node:stream';
import { InvalidArgumentError } from '../model/errors.js';
import { StreamHash, detectCompression } from '../layers/index.js';
import type { Compression } from './media.js';
import type { BlobWriter } from './store.js';

export interface VerifyOptions {
  /** For messages: which blob this is. */
  what: string;
  /** The size the blob must have; undefined when unknown (docker archives give none). */
  size?: number;
  /**
   * The digest to check; `'any'` to hash without checking (the caller
   * checks); `'compressed'` to hash only if the bytes turn out compressed
   * (an uncompressed layer's digest is its diffID, which the applier
   * computes). Default: not hashed.
   */
  digest?: string;
  /** The compression the media type declares; checked against the first bytes. */
  compression?: Compression;
  /** Receives a copy of every chunk (the store's blob). */
  tee?: BlobWriter;
  /** Called with the bytes seen so far, as they pass. */
  onBytes?: (bytes: number) => void;
}

/** What a {@link verifier} saw, once it has ended. */
export interface Verified {
  size: number;
  /** The compression the first bytes announce. */
  compression: Compression;
  /** `sha256:` of the bytes, when they were hashed. */
  digest?: string;
}

export function verifier(opts: VerifyOptions): Transform & { result: Promise<Verified> } {
  let seen = 0;
  let hash: StreamHash | undefined;
  /** Chunks seen before the compression is known (at least 6 bytes are needed to tell). */
  let held: Buffer[] | undefined = [];
  let heldBytes = 0;
  let compression: Compression = 'none';
  let settle!: (v: Verified) => void;
  let reject!: (err: unknown) => void;
  const result = new Promise<Verified>((res, rej) => {
    settle = res;
    reject = rej;
  });
  result.catch(() => {});

  const decide = (): void => {
    const chunks = held!;
    held = undefined;
    const found = detectCompression(Buffer.concat(chunks).subarray(0, 6));
    if (found === 'xz' || found === 'bzip2') throw new InvalidArgumentError(`${opts.what} is ${found}-compressed, which is not supported: use gzip, zstd or a plain tar`);
    compression = found;
    if (opts.compression !== undefined && found !== opts.compression) {
      throw new InvalidArgumentError(`${opts.what}: its media type says ${opts.compression === 'none' ? 'uncompressed' : opts.compression}, its content is ${found === 'none' ? 'not compressed' : found}`);
    }
    if (opts.digest !== undefined && (opts.digest !== 'compressed' || found !== 'none')) hash = new StreamHash();
    for (const c of chunks) hash?.update(c);
  };

  const stream = new Transform({
    highWaterMark: 1 << 20,
    transform(chunk: Buffer, _enc, cb: TransformCallback) {
      try {
        seen += chunk.length;
        if (opts.size !== undefined && seen > opts.size) {
          throw new InvalidArgumentError(`${opts.what} is larger than the ${opts.size} bytes its descriptor declares`);
        }
        if (held !== undefined) {
          held.push(chunk);
          heldBytes += chunk.length;
          if (heldBytes >= 6) decide();
        } else {
          hash?.update(chunk);
        }
        opts.onBytes?.(seen);
        if (opts.tee) {
          opts.tee.write(chunk);
          // The store's copy is written on the thread pool; wait here when it falls far behind.
          const waiting = opts.tee.drained();
          if (waiting) {
            waiting.then(() => cb(null, chunk), cb);
            return;
          }
        }
        cb(null, chunk);
      } catch (err) {
        cb(err as Error);
      }
    },
    flush(cb: TransformCallback) {
      void (async () => {
        try {
          if (held !== undefined) decide();
          if (opts.size !== undefined && seen !== opts.size) {
            throw new InvalidArgumentError(`${opts.what} is ${seen} bytes, its descriptor declares ${opts.size} (truncated?)`);
          }
          // The copy is complete before the apply is: the snapshotter's commit then syncs it with the layer.
          await opts.tee?.flushed();
          const v: Verified = { size: seen, compression };
          if (hash) {
            v.digest = await hash.digest();
            hash = undefined;
            if (opts.digest !== undefined && opts.digest !== 'compressed' && opts.digest !== 'any' && v.digest !== opts.digest) {
              throw new InvalidArgumentError(`${opts.what} does not match its digest ${opts.digest} (its content hashes to ${v.digest})`);
            }
          }
          settle(v);
          cb();
        } catch (err) {
          reject(err);
          cb(err as Error);
        }
      })();
    },
    destroy(err, cb) {
      hash?.abort();
      reject(err ?? new Error('stream destroyed'));
      cb(err);
    },
  });
  return Object.assign(stream, { result });
}
