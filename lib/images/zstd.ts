/**
 * zstd compression of exported layers, with zstd compiled to WebAssembly
 * (@bokuweb/zstd-wasm, pinned). Node 20's zlib has no zstd, and the native
 * bindings on npm fetch prebuilt binaries at install time or build with
 * node-gyp (which downloads Node's headers): neither works offline. The
 * wasm build ships inside the package, runs the same code on every machine,
 * and so gives the same bytes everywhere for the same input and level
 * (zlib's zstd, where Node has it, would follow the system's libzstd).
 *
 * The library compresses whole buffers, so the stream is cut into frames
 * of {@link FRAME} bytes of input, each compressed on its own: a zstd stream
 * may hold any number of frames, and every decoder (zstd(1), containerd's,
 * fzstd) reads them as one. The cut points depend only on the byte count,
 * never on how the input arrived, so the output is deterministic.
 */
import { createRequire } from 'node:module';
import { Transform, type TransformCallback } from 'node:stream';

interface ZstdWasm {
  init(): Promise<void>;
  compress(buf: Uint8Array, level?: number): Uint8Array;
}
const zstd = createRequire(import.meta.url)('@bokuweb/zstd-wasm') as ZstdWasm;
let ready: Promise<void> | undefined;

/** Input bytes per frame: large enough that the frame boundaries cost well under 1% of ratio at level 3 (2 MiB window). */
export const FRAME = 4 * 1024 * 1024;
/** zstd's own default level. */
export const DEFAULT_ZSTD_LEVEL = 3;

/** A transform compressing its input to zstd frames; await {@link zstdReady} before the first write. */
export function zstdCompressor(level = DEFAULT_ZSTD_LEVEL): Transform {
  let pending: Buffer[] = [];
  let pendingBytes = 0;
  let frames = 0;
  const frame = (input: Buffer): Buffer => {
    frames++;
    const out = zstd.compress(input, level);
    return Buffer.from(out.buffer, out.byteOffset, out.byteLength);
  };
  return new Transform({
    highWaterMark: 1 << 20,
    transform(chunk: Buffer, _enc, cb: TransformCallback) {
      try {
        let off = 0;
        while (off < chunk.length) {
          const take = Math.min(FRAME - pendingBytes, chunk.length - off);
          pending.push(chunk.subarray(off, off + take));
          pendingBytes += take;
          off += take;
          if (pendingBytes === FRAME) {
            const input = Buffer.concat(pending, pendingBytes);
            pending = [];
            pendingBytes = 0;
            this.push(frame(input));
          }
        }
        cb();
      } catch (err) {
        cb(err as Error);
      }
    },
    flush(cb: TransformCallback) {
      try {
        // An empty input still makes one (empty) frame: zero bytes are not a zstd stream.
        if (pendingBytes > 0 || frames === 0) this.push(frame(Buffer.concat(pending, pendingBytes)));
        cb();
      } catch (err) {
        cb(err as Error);
      }
    },
  });
}

/** Loads the WebAssembly module once per process. */
export function zstdReady(): Promise<void> {
  ready ??= zstd.init();
  return ready;
}
