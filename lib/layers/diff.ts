/**
 * Diffing an overlay upper dir (or a parentless snapshot's whole `fs`) into
 * a layer tarball. The upper dir *is* the change set of an active overlay
 * snapshot: what it holds was added or changed, its whiteouts (char 0/0)
 * were deleted, and its opaque dirs replaced what the lowers had. So the
 * diff is one sorted walk of the upper, with no comparison against the
 * lowers (as containerd's overlay differ does when it can).
 *
 * Output is deterministic: directories first-to-last in a depth-first walk
 * with children sorted by name (the opaque marker, then whiteouts, then
 * the other entries), no user/group names, integer-second mtimes (clamped
 * to `sourceDateEpoch` when given), xattrs sorted by name. The same tree
 * gives the same bytes and so the same digest.
 *
 * Reads the upper (through walk.ts and reader.ts) and writes only to the
 * output stream; never mounts, never reads the metadata store.
 */
import { createHash } from 'node:crypto';
import { WriteStream, lstatSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname as pathDirname, join as pathJoin } from 'node:path';
import { Transform, type Writable } from 'node:stream';
import { finished, pipeline } from 'node:stream/promises';
import zlib from 'node:zlib';
import type { Header } from 'tar-stream';
import { FailedPreconditionError, InvalidArgumentError, q } from '../model/errors.js';
import type { LayerDigest, LayerTarget } from './apply.js';
import { StreamHash } from './hash.js';
import { type BatchReader, type FillFailure, type ReadJob, batchReader } from './reader.js';
import { XATTR_PAX_PREFIX, paxBody } from './pax.js';
import { OPAQUE_MARKER, joinRel } from './paths.js';
import { KIND, NUMS, type Walk, type WalkChunk, walk, walkError } from './walk.js';

/** Options of {@link diffLayer}. */
export interface DiffOptions {
  /** Compress the output: `'gzip'` or `'none'` (default `'none'`). */
  compression?: 'gzip' | 'none';
  /** gzip level, 1 (fast) to 9 (small); default 6 (zlib's default, as containerd uses). */
  gzipLevel?: number;
  /**
   * Clamp every mtime to this many seconds since the epoch, as
   * `SOURCE_DATE_EPOCH` does for reproducible builds. Default: no clamping.
   */
  sourceDateEpoch?: number;
}

/** What {@link diffLayer} wrote. */
export interface DiffResult extends LayerDigest {
  /** `sha256:<hex>` of the bytes written to `out` (equal to `digest` without compression). */
  compressedDigest: string;
  /** Bytes written to `out`. */
  compressedSize: number;
}

/** tar-stream encodes mtimes through a 32-bit `| 0`, and ids in 7 octal digits: past these, PAX records carry the value. */
const MAX_HEADER_TIME = 0x7fffffff;
const MAX_HEADER_ID = 0o7777777;
/**
 * Whiteout and opaque markers carry the epoch, as containerd writes them: the
 * time a whiteout was made says nothing about the content, and a re-applied
 * layer must diff to the same bytes.
 */
const MARKER_TIME = new Date(0);
/** Bytes of tar per batch: one read round trip and one write to the output (file bodies are split across batches). */
const BATCH = 1024 * 1024;
/**
 * Largest write(2) a layer call makes to a file. The kernel sizes the
 * page-cache folios of a buffered write by the write's length: a 1 MiB
 * write takes 1 MiB folios, which on a VM that hands freed memory back to
 * its host (free page reporting) land in memory the host must first back
 * again. On the development machine, a 1 GiB diff to a file took 2.4–3.6 s
 * in 1 MiB writes and 0.84–1.16 s in 256 KiB writes (paired processes,
 * nothing deleted between runs); `dd` shows the same (128 MiB: 0.34 s with
 * bs=1M, 0.06 s with bs=256K). GNU tar writes 10 KiB records.
 */
const MAX_WRITE = 256 * 1024;

/**
 * Whether tar-stream writes this name (and link name) in a plain ustar
 * header, by its own rule (headers.js `encode`): ASCII only, split at '/'
 * from the left into a prefix (<= 155) and a name (<= 100). If it did not,
 * it would add a PAX header of its own after ours, and readers keep only
 * the last one.
 */
function fitsUstar(name: string, linkname: string | undefined): boolean {
  if (linkname !== undefined && (linkname.length > 100 || Buffer.byteLength(linkname) !== linkname.length)) return false;
  if (Buffer.byteLength(name) !== name.length) return false;
  let rest = name;
  let prefix = '';
  while (rest.length > 100) {
    const i = rest.indexOf('/');
    if (i === -1) return false;
    prefix += prefix ? `/${rest.slice(0, i)}` : rest.slice(0, i);
    rest = rest.slice(i + 1);
  }
  return prefix.length <= 155;
}

function validateDiffOptions(opts: DiffOptions): void {
  const { compression, sourceDateEpoch, gzipLevel } = opts;
  if (compression !== undefined && compression !== 'gzip' && compression !== 'none') {
    throw new InvalidArgumentError(`Expected \`compression\` to be 'gzip' or 'none', got ${q(String(compression))}`);
  }
  if (sourceDateEpoch !== undefined && !(Number.isInteger(sourceDateEpoch) && sourceDateEpoch >= 0)) {
    throw new InvalidArgumentError(`Expected \`sourceDateEpoch\` to be a non-negative integer, got ${String(sourceDateEpoch)}`);
  }
  if (gzipLevel !== undefined && !(Number.isInteger(gzipLevel) && gzipLevel >= 1 && gzipLevel <= 9)) {
    throw new InvalidArgumentError(`Expected \`gzipLevel\` to be an integer from 1 to 9, got ${String(gzipLevel)}`);
  }
  for (const key of Object.keys(opts)) {
    if (!['compression', 'sourceDateEpoch', 'gzipLevel'].includes(key)) {
      throw new InvalidArgumentError(`Unknown diff option ${q(key)}: expected compression, gzipLevel or sourceDateEpoch`);
    }
  }
}

/** tar-stream's own header codec (the module `pack` uses; not in its exports map, so loaded by path). */
interface TarHeaders {
  encode(header: Header): Buffer | null;
  encodePax(opts: { name: string; linkname?: string; pax?: Record<string, string> }): Buffer;
}
const requireCjs = createRequire(import.meta.url);
const tarHeaders = requireCjs(pathJoin(pathDirname(requireCjs.resolve('tar-stream')), 'headers.js')) as TarHeaders;

/** Batches of output laid out ahead of the consumer; each one is a round trip to the reader. */
const IN_FLIGHT = 6;

/** One batch of tar output: headers and padding written, holes left for the file bodies the reader fills. */
interface Batch {
  ab: ArrayBufferLike;
  buf: Buffer;
  used: number;
  jobs: ReadJob[];
}

type Item = { batch: Batch; filled: Promise<FillFailure | undefined> } | { error: unknown };

/**
 * Lays the tar out into batches, entry by entry in the order the walk (see
 * walk.ts) gives them; batches go to the reader as soon as they are full,
 * and {@link diffLayer} takes them back in order.
 */
class Differ {
  private cur: Batch;
  /** The chunk of walk entries being laid out, its data as bytes, and the next entry in it. */
  private chunk: WalkChunk | undefined;
  private data = new Uint8Array(0);
  private next = 0;
  private nextLink = 0;
  private nextXattrs = 0;
  /** Sealed batches (and a walk error, in its place), in output order. */
  readonly queue: Item[] = [];
  done = false;
  /** Bytes of tar laid out so far. */
  size = 0;

  constructor(
    private readonly walk: Walk,
    private readonly reader: BatchReader,
    private readonly epoch: number | undefined,
  ) {
    this.cur = this.newBatch();
  }

  private newBatch(): Batch {
    const ab = this.reader.alloc(BATCH);
    return { ab, buf: Buffer.from(ab), used: 0, jobs: [] };
  }

  private seal(): void {
    const b = this.cur;
    if (b.used === 0) return;
    this.queue.push({ batch: b, filled: this.reader.fill(b.ab, b.used, b.jobs) });
    this.cur = this.newBatch();
  }

  /** Copies bytes into the output. */
  private put(bytes: Buffer): void {
    let off = 0;
    while (off < bytes.length) {
      const b = this.cur;
      const n = Math.min(BATCH - b.used, bytes.length - off);
      bytes.copy(b.buf, b.used, off, off + n);
      b.used += n;
      off += n;
      if (b.used === BATCH) this.seal();
    }
    this.size += bytes.length;
  }

  /** Copies a body the walk read (`size` bytes from `at` in the chunk's data) and its padding into the output. */
  private copy(src: Uint8Array, at: number, size: number): void {
    let off = 0;
    while (off < size) {
      const b = this.cur;
      const n = Math.min(BATCH - b.used, size - off);
      b.buf.set(src.subarray(at + off, at + off + n), b.used);
      b.used += n;
      off += n;
      if (b.used === BATCH) this.seal();
    }
    this.size += size;
    this.pad(size);
  }

  /** Writes `n` zero bytes (batches are reused, so not zero to begin with). */
  private zeros(n: number): void {
    this.size += n;
    while (n > 0) {
      const b = this.cur;
      const k = Math.min(BATCH - b.used, n);
      b.buf.fill(0, b.used, b.used + k);
      b.used += k;
      n -= k;
      if (b.used === BATCH) this.seal();
    }
  }

  /** tar's padding of a body of `size` bytes to the next 512-byte block. */
  private pad(size: number): void {
    const rest = size & 511;
    if (rest) this.zeros(512 - rest);
  }

  /** A hole for `size` bytes of the file `rel`, filled by the reader (a file the walk did not read). */
  private body(rel: string, size: number): void {
    let off = 0;
    do {
      const b = this.cur;
      const n = Math.min(BATCH - b.used, size - off);
      b.jobs.push({ rel, fileOff: off, len: n, bufOff: b.used });
      b.used += n;
      off += n;
      if (b.used === BATCH) this.seal();
    } while (off < size);
    this.size += size;
    this.pad(size);
  }

  /** Ends the archive (two zero blocks) and sends the last batch. */
  finish(): void {
    this.zeros(1024);
    this.seal();
  }

  /** Header bytes of one entry, as tar-stream's pack writes them (its defaults, then ustar or its own PAX header). */
  private encode(h: Header & { linkname?: string }): void {
    if (!h.size || h.type === 'symlink') h.size = 0;
    if (!h.mode) h.mode = h.type === 'directory' ? 0o755 : 0o644;
    if (!h.uid) h.uid = 0;
    if (!h.gid) h.gid = 0;
    if (!h.pax) {
      const buf = tarHeaders.encode(h);
      if (buf) {
        this.put(buf);
        return;
      }
    }
    const paxHeader = tarHeaders.encodePax({ name: h.name, linkname: h.linkname, pax: h.pax as Record<string, string> | undefined });
    const nh = {
      name: 'PaxHeader',
      mode: h.mode,
      uid: h.uid,
      gid: h.gid,
      size: paxHeader.byteLength,
      mtime: h.mtime,
      type: 'pax-header',
      linkname: h.linkname && 'PaxHeader',
      uname: h.uname,
      gname: h.gname,
      devmajor: h.devmajor,
      devminor: h.devminor,
    } as unknown as Header;
    this.put(tarHeaders.encode(nh)!);
    this.put(paxHeader);
    this.pad(paxHeader.byteLength);
    nh.size = h.size;
    nh.type = h.type;
    this.put(tarHeaders.encode(nh)!);
  }

  /** Whole seconds, clamped to the epoch option; negative times become 0. */
  private mtime(mtimeMs: number): Date {
    const s = Math.floor(mtimeMs / 1000);
    const clamped = this.epoch !== undefined && s > this.epoch ? this.epoch : s;
    return new Date(Math.max(0, clamped) * 1000);
  }

  /** Writes one entry's header(s); binary xattr values go in a PAX header we build (see pax.ts). */
  private add(header: Header & { linkname?: string }, xattrs: Array<[string, Buffer]>): void {
    // Values the ustar fields cannot hold go in PAX records (tar-stream would write garbage).
    const big: Array<[string, string]> = [];
    const secs = header.mtime.getTime() / 1000;
    if (secs > MAX_HEADER_TIME) {
      big.push(['mtime', String(secs)]);
      header.mtime = new Date(MAX_HEADER_TIME * 1000);
    }
    if (header.uid > MAX_HEADER_ID) big.push(['uid', String(header.uid)]);
    if (header.gid > MAX_HEADER_ID) big.push(['gid', String(header.gid)]);
    if (xattrs.length > 0 || big.length > 0) {
      const textual = xattrs.every(([, v]) => Buffer.from(v.toString('utf8'), 'utf8').equals(v));
      if (textual) {
        const pax: Record<string, string> = Object.fromEntries(big);
        for (const [k, v] of xattrs) pax[XATTR_PAX_PREFIX + k] = v.toString('utf8');
        (header as { pax?: unknown }).pax = pax;
      } else {
        const records: Array<[string, string | Buffer]> = [...big];
        const name = header.name;
        const linkname = header.linkname || undefined;
        if (!fitsUstar(name, linkname)) {
          records.push(['path', name]);
          if (linkname !== undefined) records.push(['linkpath', linkname]);
          const tag = createHash('sha256').update(name).digest('hex').slice(0, 16);
          header.name = `PaxPath.${tag}`;
          if (linkname !== undefined) header.linkname = `PaxLink.${tag}`;
        }
        for (const [k, v] of xattrs) records.push([XATTR_PAX_PREFIX + k, v]);
        const paxData = paxBody(records);
        const base = name.replace(/\/$/, '');
        // tar-stream writes PAX bodies only as UTF-8 strings: this one, with byte values, is its own entry.
        this.encode({
          name: `PaxHeaders/${base.slice(base.lastIndexOf('/') + 1).slice(0, 80).replace(/[^\x20-\x7e]/g, '_')}`,
          type: 'pax-header',
          size: paxData.length,
          mode: 0o644,
          mtime: header.mtime,
        } as unknown as Header);
        this.put(paxData);
        this.pad(paxData.length);
      }
    }
    this.encode(header);
  }

  /**
   * Lays out entries until {@link IN_FLIGHT} batches are queued or the walk
   * has ended (then sets {@link done}); waits for the walk only when no batch
   * is queued, so that the caller can write those meanwhile. A failure takes
   * its place in the queue.
   */
  async fill(): Promise<void> {
    try {
      while (!this.done && this.queue.length < IN_FLIGHT) {
        let chunk = this.chunk;
        if (!chunk || this.next === chunk.n) {
          if (chunk?.failure) throw walkError(chunk.failure);
          if (chunk?.done) {
            this.finish();
            this.done = true;
            return;
          }
          if (chunk) this.walk.recycle(chunk);
          chunk = this.walk.take();
          if (!chunk) {
            if (this.queue.length > 0) return;
            await this.walk.wait();
            continue;
          }
          this.chunk = chunk;
          this.data = chunk.data ? new Uint8Array(chunk.data) : new Uint8Array(0);
          this.next = this.nextLink = this.nextXattrs = 0;
          continue;
        }
        this.entry(chunk, this.next++);
      }
    } catch (err) {
      this.seal();
      this.queue.push({ error: err });
      this.done = true;
    }
  }

  /** Lays out entry `i` of `chunk` (hot: once per file of the tree). */
  private entry(chunk: WalkChunk, i: number): void {
    const kind = chunk.kinds[i]!;
    const rel = chunk.rels[i]!;
    if (kind === KIND.whiteout) {
      this.encode({ name: rel, type: 'file', size: 0, mode: 0, uid: 0, gid: 0, mtime: MARKER_TIME } as Header);
      return;
    }
    const k = i * NUMS;
    const nums = chunk.nums;
    const mode = nums[k]!;
    const header = { name: rel, mode: mode & 0o7777, uid: nums[k + 1]!, gid: nums[k + 2]!, mtime: this.mtime(nums[k + 3]!) } as Header & {
      linkname?: string;
    };
    let link: string | undefined;
    const links = chunk.links[this.nextLink];
    if (links !== undefined && links[0] === i) {
      link = links[1];
      this.nextLink++;
    }
    let list: Array<[string, Buffer]> = [];
    const xattrs = chunk.xattrs[this.nextXattrs];
    if (xattrs !== undefined && xattrs[0] === i) {
      list = xattrs[1].map(([name, v]) => [name, Buffer.from(v.buffer, v.byteOffset, v.byteLength)]);
      this.nextXattrs++;
    }
    switch (kind) {
      case KIND.directory:
      case KIND.opaqueDirectory:
        header.type = 'directory';
        // tar-stream does not add the conventional trailing slash to directory names itself.
        header.name = `${rel}/`;
        this.add(header, list);
        if (kind === KIND.opaqueDirectory) {
          this.encode({ name: joinRel(rel, OPAQUE_MARKER), type: 'file', size: 0, mode: 0, uid: 0, gid: 0, mtime: MARKER_TIME } as Header);
        }
        return;
      case KIND.hardlink:
        header.type = 'link';
        header.linkname = link ?? '';
        header.size = 0;
        this.add(header, []);
        return;
      case KIND.file: {
        const size = nums[k + 4]!;
        header.type = 'file';
        header.size = size;
        this.add(header, list);
        const at = nums[k + 7]!;
        if (at >= 0) {
          // Read by the walk: copied in place of a hole.
          this.copy(this.data, at, size);
        } else {
          this.body(rel, size);
        }
        return;
      }
      case KIND.symlink:
        header.type = 'symlink';
        header.linkname = link ?? '';
        this.add(header, list);
        return;
      case KIND.characterDevice:
      case KIND.blockDevice: {
        header.type = kind === KIND.characterDevice ? 'character-device' : 'block-device';
        header.devmajor = nums[k + 5]!;
        header.devminor = nums[k + 6]!;
        this.add(header, list);
        return;
      }
      case KIND.fifo:
        header.type = 'fifo';
        this.add(header, list);
        return;
    }
  }
}

/** The error for a batch the reader could not fill. */
function readFailure(batch: Batch, f: FillFailure): Error {
  const rel = batch.jobs[f.index]?.rel ?? '';
  if (f.shrank) return new FailedPreconditionError(`${q(rel)} shrank while being diffed: diff an active that nothing is writing to`);
  const err: NodeJS.ErrnoException = new Error(f.message ?? `cannot read ${q(rel)}`);
  if (f.code !== undefined) err.code = f.code;
  if (f.errno !== undefined) err.errno = f.errno;
  if (f.syscall !== undefined) err.syscall = f.syscall;
  if (f.path !== undefined) err.path = f.path;
  return err;
}

/**
 * Writes the changes held in `target.upper` as a layer tar to `out` (which
 * is ended when done) and returns the digests: `digest`/`size` of the
 * uncompressed tar (the diffID) and `compressedDigest`/`compressedSize` of
 * what was written. With no lowers, the whole tree is the layer.
 *
 * `target.lowers` is not read: an overlay upper is already the change set.
 * The upper must not change while this runs (diff an active that is not
 * mounted, or whose container is stopped).
 */
export async function diffLayer(target: LayerTarget, out: Writable, opts: DiffOptions = {}): Promise<DiffResult> {
  validateDiffOptions(opts);
  const root = target.upper.replace(/\/+$/, '') || '/';
  const st = lstatSync(root, { throwIfNoEntry: false });
  if (!st?.isDirectory()) throw new InvalidArgumentError(`diff source ${q(root)} is not a directory`);

  const walker = walk(root, target.userxattr ? 'user.overlay.opaque' : 'trusted.overlay.opaque');
  const reader = batchReader(root);
  const differ = new Differ(walker, reader, opts.sourceDateEpoch);
  const hashC = new StreamHash();
  const gzip = opts.compression === 'gzip' ? zlib.createGzip({ level: opts.gzipLevel ?? 6 }) : undefined;
  const tapC = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      hashC.update(chunk);
      cb(null, chunk);
    },
  });
  const head: Writable = gzip ?? out;
  // A file stream is done with a chunk when its write callback runs, so the batch can be reused then;
  // other writables may keep what they are given.
  const reuse = !gzip && out instanceof WriteStream;
  const flowing = gzip ? pipeline(gzip, tapC, out) : finished(out);
  // Rejects only: raced against 'drain' so that a failing output does not leave us waiting.
  const failed = new Promise<never>((_, reject) => {
    flowing.catch(reject);
  });
  failed.catch(() => {});
  try {
    for (;;) {
      await differ.fill();
      const item = differ.queue.shift();
      if (!item) break;
      if ('error' in item) throw item.error;
      const failure = await item.filled;
      if (failure) throw readFailure(item.batch, failure);
      const { ab, used } = item.batch;
      // In writes of at most MAX_WRITE bytes (see above), waiting whenever the stream asks: a file
      // stream (16 KiB high-water mark) then writes each on its own, where parts it held at once
      // would go out joined in one writev.
      for (let off = 0; off < used; off += MAX_WRITE) {
        const part = Buffer.from(ab, off, Math.min(MAX_WRITE, used - off));
        const last = off + MAX_WRITE >= used;
        const ok = last && reuse
          ? head.write(part, (err) => {
              if (!err) reader.recycle(ab);
            })
          : head.write(part);
        if (!ok) await Promise.race([new Promise<void>((resolve) => head.once('drain', resolve)), failed]);
      }
    }
    head.end();
    await flowing;
  } catch (err) {
    walker.close();
    reader.close();
    hashC.abort();
    head.destroy(err as Error);
    await flowing.catch(() => {});
    throw err;
  }
  const digest = await reader.digest();
  if (gzip) return { digest, size: differ.size, compressedDigest: await hashC.digest(), compressedSize: hashC.size };
  hashC.abort();
  return { digest, size: differ.size, compressedDigest: digest, compressedSize: differ.size };
}
