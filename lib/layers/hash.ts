/**
 * SHA-256 of a layer stream, off the main thread when the stream is large.
 *
 * Hashing costs about as much CPU as GNU tar spends on a whole extraction
 * (~1.7 GB/s with SHA-NI against tar's ~1 GB/s of read+write), so on the
 * main thread it alone would keep apply and diff well below tar's speed.
 * Small streams are hashed inline (a worker is not worth starting), and so
 * is everything on a single-CPU machine (see `useWorker`); once a
 * stream passes {@link INLINE_LIMIT} bytes, what was seen so far and all that
 * follows goes to a shared worker thread, copied into 1 MiB batches that are
 * transferred, not cloned, and transferred back once hashed for the next
 * batch, since fresh memory costs a page fault per 4 KiB (1 GiB apply on
 * tmpfs, paired runs: median about 1.09 s -> 1.05 s). The thread is
 * hash-worker.ts.
 *
 * Owns the hash thread and its batches; reads and writes no file.
 */
import { createHash } from 'node:crypto';
import { availableParallelism } from 'node:os';
import { sharedWorker } from './shared-thread.js';

/** Streams up to this size are hashed on the calling thread. */
const INLINE_LIMIT = 8 * 1024 * 1024;

/**
 * Whether large streams go to the worker: when there is a second CPU for it
 * (bench/layers.ts on 2 CPUs: 1 GiB-class apply 0.49× → 0.73× of GNU tar's
 * speed, diff 0.32× → 0.48×). `OVERLAY_SNAPSHOTTER_HASH_WORKER=1|0` forces it.
 */
export function useWorker(): boolean {
  const env = process.env.OVERLAY_SNAPSHOTTER_HASH_WORKER;
  if (env === '1') return true;
  if (env === '0') return false;
  return availableParallelism() >= 2;
}
const BATCH = 1024 * 1024;

/** What the hash thread (hash-worker.ts) is sent: a batch of one stream, its end, or its abandonment. */
export type HashRequest = { id: number; chunk: ArrayBuffer; length: number } | { id: number; done: true } | { id: number; abort: true };
/** What it sends back: a hashed batch's buffer, for reuse, or a stream's digest. */
export type HashReply = { ab: ArrayBuffer } | { id: number; digest: string };

interface Pending {
  resolve: (hex: string) => void;
  reject: (err: unknown) => void;
}

/** Staging buffers back from the worker, for reuse: fresh memory costs a page fault per 4 KiB. */
const spare: ArrayBuffer[] = [];
const SPARE_MAX = 16;
let nextId = 1;
let active = 0;
const pending = new Map<number, Pending>();

const hashWorker = sharedWorker<HashReply>(
  'hash',
  new URL('./hash-worker.cjs', import.meta.url),
  (m) => {
    if ('ab' in m) {
      if (spare.length < SPARE_MAX) spare.push(m.ab);
      return;
    }
    const p = pending.get(m.id);
    if (!p) return;
    pending.delete(m.id);
    p.resolve(m.digest);
  },
  (err) => {
    for (const p of pending.values()) p.reject(err);
    pending.clear();
  },
);

function fresh(): Buffer {
  const ab = spare.pop();
  return ab ? Buffer.from(ab) : Buffer.allocUnsafeSlow(BATCH);
}

/** One stream's hash in the worker. */
class RemoteHash {
  private readonly id = nextId++;
  private readonly w = hashWorker();
  private staging = fresh();
  private used = 0;
  private finished = false;

  constructor() {
    // Keep the process alive while a hash is in the worker (the caller awaits it).
    if (active++ === 0) this.w.ref();
  }

  update(chunk: Uint8Array): void {
    let off = 0;
    while (off < chunk.length) {
      const n = Math.min(BATCH - this.used, chunk.length - off);
      this.staging.set(chunk.subarray(off, off + n), this.used);
      this.used += n;
      off += n;
      if (this.used === BATCH) this.send();
    }
  }

  private send(): void {
    if (this.used === 0) return;
    const ab = this.staging.buffer as ArrayBuffer;
    this.w.postMessage({ id: this.id, chunk: ab, length: this.used } satisfies HashRequest, [ab]);
    this.staging = fresh();
    this.used = 0;
  }

  private release(): void {
    if (this.finished) return;
    this.finished = true;
    if (--active === 0) this.w.unref();
  }

  digest(): Promise<string> {
    this.send();
    return new Promise<string>((resolve, reject) => {
      pending.set(this.id, {
        resolve: (hex) => {
          this.release();
          resolve(hex);
        },
        reject: (err) => {
          this.release();
          reject(err);
        },
      });
      this.w.postMessage({ id: this.id, done: true } satisfies HashRequest);
    });
  }

  abort(): void {
    if (this.finished) return;
    this.w.postMessage({ id: this.id, abort: true } satisfies HashRequest);
    this.release();
  }
}

/** SHA-256 and byte count of a stream, fed chunk by chunk. Chunks must not be modified after `update`. */
export class StreamHash {
  private inline: ReturnType<typeof createHash> | undefined = createHash('sha256');
  private held: Uint8Array[] = [];
  private remote: RemoteHash | undefined;
  private readonly offload = useWorker();
  /** Bytes seen so far. */
  size = 0;

  update(chunk: Uint8Array): void {
    this.size += chunk.length;
    if (this.remote) {
      this.remote.update(chunk);
      return;
    }
    this.inline!.update(chunk);
    if (!this.offload) return;
    this.held.push(chunk);
    if (this.size > INLINE_LIMIT) {
      this.remote = new RemoteHash();
      for (const c of this.held) this.remote.update(c);
      this.held = [];
      this.inline = undefined;
    }
  }

  /** `sha256:<hex>` of everything fed. */
  async digest(): Promise<string> {
    if (this.remote) return `sha256:${await this.remote.digest()}`;
    this.held = [];
    return `sha256:${this.inline!.digest('hex')}`;
  }

  /** Drops the hash (after a failure), freeing the worker's state. */
  abort(): void {
    this.remote?.abort();
    this.held = [];
  }
}
