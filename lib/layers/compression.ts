/**
 * Compression of layer streams, detected from the first bytes rather than
 * from a media type: gzip (`1f 8b`), zstd (`28 b5 2f fd`), otherwise plain
 * tar. Node 20 has no zstd in `zlib`, so we use fzstd (pure JS) there and
 * `zlib`'s own decoder where it exists (Node >= 22.15).
 */
import { Readable, Transform, pipeline } from 'node:stream';
import zlib from 'node:zlib';
import { Decompress as ZstdDecompress } from 'fzstd';
import { InvalidArgumentError } from '../model/errors.js';

export type Compression = 'gzip' | 'zstd' | 'none';

/** Which compression the first bytes of a stream announce. */
export function detectCompression(head: Uint8Array): Compression | 'xz' | 'bzip2' {
  if (head.length >= 2 && head[0] === 0x1f && head[1] === 0x8b) return 'gzip';
  if (head.length >= 4 && head[0] === 0x28 && head[1] === 0xb5 && head[2] === 0x2f && head[3] === 0xfd) return 'zstd';
  if (head.length >= 6 && head[0] === 0xfd && head[1] === 0x37 && head[2] === 0x7a && head[3] === 0x58 && head[4] === 0x5a && head[5] === 0x00) return 'xz';
  if (head.length >= 3 && head[0] === 0x42 && head[1] === 0x5a && head[2] === 0x68) return 'bzip2';
  return 'none';
}

// zlib's default 16 KiB output chunks cost a syscall per 16 KiB of file data downstream.
const CHUNK = 256 * 1024;

function zstdTransform(): Transform {
  type ZlibWithZstd = typeof zlib & { createZstdDecompress?: (opts?: object) => Transform };
  const native = (zlib as ZlibWithZstd).createZstdDecompress;
  if (typeof native === 'function') return native({ chunkSize: CHUNK });
  let decoder: ZstdDecompress | undefined;
  return new Transform({
    transform(chunk: Buffer, _enc, cb) {
      try {
        decoder ??= new ZstdDecompress((data) => {
          if (data.length > 0) this.push(Buffer.from(data.buffer, data.byteOffset, data.byteLength));
        });
        decoder.push(chunk);
        cb();
      } catch (err) {
        cb(err as Error);
      }
    },
    flush(cb) {
      try {
        decoder?.push(new Uint8Array(0), true);
        cb();
      } catch (err) {
        cb(err as Error);
      }
    },
  });
}

/**
 * A readable of the decompressed bytes of `source` and the compression that
 * was found. Reads just enough of `source` to see its magic bytes.
 */
export async function decompress(source: Readable | AsyncIterable<Uint8Array>): Promise<{ stream: Readable; compression: Compression }> {
  const it = source[Symbol.asyncIterator]() as AsyncIterator<Uint8Array>;
  const head: Buffer[] = [];
  let headLen = 0;
  let done = false;
  while (headLen < 6) {
    const r = await it.next();
    if (r.done) {
      done = true;
      break;
    }
    const chunk = Buffer.isBuffer(r.value) ? r.value : Buffer.from(r.value);
    head.push(chunk);
    headLen += chunk.length;
  }
  const first = Buffer.concat(head);
  const found = detectCompression(first);
  if (found === 'xz' || found === 'bzip2') {
    await it.return?.();
    throw new InvalidArgumentError(`layer is ${found}-compressed, which is not supported: use gzip, zstd or a plain tar`);
  }
  const whole = Readable.from(
    (async function* () {
      if (first.length > 0) yield first;
      if (done) return;
      for (;;) {
        const r = await it.next();
        if (r.done) return;
        yield Buffer.isBuffer(r.value) ? r.value : Buffer.from(r.value);
      }
    })(),
    { objectMode: false, highWaterMark: CHUNK },
  );
  if (found === 'none') return { stream: whole, compression: 'none' };
  const decoder = found === 'gzip' ? zlib.createGunzip({ chunkSize: CHUNK }) : zstdTransform();
  // pipeline destroys the decoder on a source error, so its reader sees it.
  pipeline(whole, decoder, () => {});
  return { stream: decoder, compression: found };
}
