/**
 * A file written front to back beside an apply, bypassing the page cache
 * where the filesystem allows it (`O_DIRECT`). The image store keeps a copy
 * of each layer blob read from a tar, written while the same bytes are
 * applied; through the page cache that copy is a second GiB of fresh page
 * cache per GiB imported, which on a VM that hands freed memory back to its
 * host costs seconds of CPU (docs/layers.md, "Writes"). Written direct, it
 * costs a copy into page-aligned slots on the calling thread, and the
 * disk's time on the thread pool.
 *
 * Bytes are gathered into 1 MiB slots (kernel/aligned.ts); a full slot is
 * written at its offset, at most two at a time (the thread pool also reads
 * the source), with at most 16 MiB waiting: past that {@link drained} makes
 * the caller wait. The last slot is written padded to the block and the
 * file truncated to its size. Where the filesystem refuses `O_DIRECT` at
 * open (tmpfs before 6.6, some FUSE), or a direct write fails with EINVAL
 * (a device whose blocks are larger than a page), the rest is written
 * through the page cache, in 256 KiB pieces; `OVERLAY_SNAPSHOTTER_DIRECT_IO=0`
 * writes every file that way. Nothing is synced here: the
 * caller makes the file durable (the snapshotter's commit syncs its
 * filesystem).
 */
import { closeSync, constants as fsc, ftruncateSync, openSync, write } from 'node:fs';
import createDebug from 'debug';
import { ALIGN, type AlignedBuffer, mapAligned } from '../kernel/aligned.js';
import { errnoOf } from '../kernel/libc.js';

const debug = createDebug('overlay-snapshotter:layers');

const SLOT = 1024 * 1024;
/** Largest buffered write (docs/layers.md, "Writes": the page cache sizes its folios by the write). */
const PIECE = 256 * 1024;
const PARALLEL = 2;
const WRITE_AHEAD = 16 * 1024 * 1024;

function writeAt(fd: number, buf: Buffer, off: number, len: number, position: number): Promise<number> {
  return new Promise((resolve, reject) => write(fd, buf, off, len, position, (err, n) => (err ? reject(err) : resolve(n))));
}

async function writeAll(fd: number, buf: Buffer, len: number, position: number, piece: number): Promise<void> {
  let off = 0;
  while (off < len) {
    const n = await writeAt(fd, buf, off, Math.min(piece, len - off), position + off);
    if (n === 0) throw Object.assign(new Error(`write made no progress at byte ${position + off}`), { code: 'EIO' });
    off += n;
  }
}

export interface DirectWriterOptions {
  /**
   * Try `O_DIRECT`. Default `true`, unless `OVERLAY_SNAPSHOTTER_DIRECT_IO=0`
   * (for a filesystem that takes `O_DIRECT` but serves it badly); `false`
   * writes through the page cache (as after a fallback).
   */
  direct?: boolean;
  /** Mode of the new file. Default `0o644`. */
  mode?: number;
}

interface Job {
  slot: AlignedBuffer;
  at: number;
  len: number;
}

/** A new file, written in order by {@link write} and completed by {@link flushed}; see the module comment. */
export class DirectWriter {
  /** Bytes given to {@link write}. */
  size = 0;
  private sealed = 0;
  private cur: AlignedBuffer | undefined;
  private used = 0;
  private readonly queued: Job[] = [];
  private running = 0;
  /** Bytes given and not yet written. */
  private pending = 0;
  private readonly idle: AlignedBuffer[] = [];
  private bufferedFd: number | undefined;
  private failed: unknown;
  private waiters: (() => void)[] = [];
  private finished = false;
  private closed = false;

  private constructor(
    readonly path: string,
    private readonly fd: number,
    private isDirect: boolean,
  ) {}

  /** Creates `path` (which must not exist). */
  static create(path: string, options: DirectWriterOptions = {}): DirectWriter {
    const mode = options.mode ?? 0o644;
    const flags = fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL;
    if (options.direct ?? process.env.OVERLAY_SNAPSHOTTER_DIRECT_IO !== '0') {
      try {
        return new DirectWriter(path, openSync(path, flags | fsc.O_DIRECT, mode), true);
      } catch (err) {
        if (errnoOf(err) !== 'EINVAL') throw err;
        // Refused after the file was made (the open checks O_DIRECT last): it is ours, empty.
        debug('%s: no O_DIRECT here, writing through the page cache', path);
        return new DirectWriter(path, openSync(path, fsc.O_WRONLY | fsc.O_CREAT, mode), false);
      }
    }
    return new DirectWriter(path, openSync(path, flags, mode), false);
  }

  /** Whether writes still bypass the page cache. */
  get direct(): boolean {
    return this.isDirect;
  }

  /** Copies `chunk` in; throws the failure of an earlier write. */
  write(chunk: Uint8Array): void {
    if (this.failed !== undefined) throw this.failed;
    if (this.finished) throw new Error(`${this.path}: write after the end`);
    this.size += chunk.length;
    this.pending += chunk.length;
    let off = 0;
    while (off < chunk.length) {
      const slot = (this.cur ??= this.idle.pop() ?? mapAligned(SLOT));
      const n = Math.min(chunk.length - off, SLOT - this.used);
      slot.buffer.set(chunk.subarray(off, off + n), this.used);
      this.used += n;
      off += n;
      if (this.used === SLOT) this.seal();
    }
  }

  /** Resolves when a write completes, if too many bytes are waiting; undefined when few enough are. */
  drained(): Promise<void> | undefined {
    if (this.pending <= WRITE_AHEAD || this.failed !== undefined) return undefined;
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  /** Writes what is left and truncates the file to {@link size}; rejects with a write's failure. No more writes after it. */
  async flushed(): Promise<void> {
    if (!this.finished) {
      this.finished = true;
      if (this.used > 0) this.seal();
    }
    await this.settled();
    if (this.failed !== undefined) throw this.failed;
    // The last direct write was padded to the block.
    ftruncateSync(this.fd, this.size);
  }

  /** Stops writing (what is queued is dropped), waits for writes under way, releases the slots and closes the file. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.finished = true;
    for (const job of this.queued.splice(0)) this.idle.push(job.slot);
    await this.settled();
    this.closed = true;
    for (const slot of [...this.idle.splice(0), ...(this.cur ? [this.cur] : [])]) slot.unmap();
    this.cur = undefined;
    closeSync(this.fd);
    if (this.bufferedFd !== undefined) closeSync(this.bufferedFd);
  }

  private async settled(): Promise<void> {
    while (this.running > 0 || this.queued.length > 0) await new Promise<void>((resolve) => this.waiters.push(resolve));
  }

  private seal(): void {
    this.queued.push({ slot: this.cur!, at: this.sealed, len: this.used });
    this.sealed += this.used;
    this.cur = undefined;
    this.used = 0;
    this.pump();
  }

  private pump(): void {
    while (this.running < PARALLEL && this.queued.length > 0) {
      const job = this.queued.shift()!;
      this.running++;
      void this.run(job).then(() => {
        this.running--;
        this.pending -= job.len;
        this.idle.push(job.slot);
        this.pump();
        for (const wake of this.waiters.splice(0)) wake();
      });
    }
  }

  private async run(job: Job): Promise<void> {
    if (this.failed !== undefined) return;
    try {
      if (this.isDirect) {
        try {
          await writeAll(this.fd, job.slot.buffer, Math.ceil(job.len / ALIGN) * ALIGN, job.at, SLOT);
          return;
        } catch (err) {
          if (errnoOf(err) !== 'EINVAL') throw err;
          this.fallBack();
        }
      }
      // Positional writes: a slot the direct write left half done is written whole again.
      await writeAll(this.bufferedFd ?? this.fd, job.slot.buffer, job.len, job.at, PIECE);
    } catch (err) {
      this.failed ??= err;
    }
  }

  private fallBack(): void {
    if (!this.isDirect) return;
    this.isDirect = false;
    debug('%s: a direct write failed with EINVAL, writing through the page cache from here', this.path);
    this.bufferedFd = openSync(this.path, fsc.O_WRONLY);
  }
}
