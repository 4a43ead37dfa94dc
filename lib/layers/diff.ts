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
 */
import { createHash } from 'node:crypto';
import { type Stats, closeSync, lstatSync, openSync, readSync, readdirSync, readlinkSync } from 'node:fs';
import { Transform, type Writable } from 'node:stream';
import { finished, pipeline } from 'node:stream/promises';
import zlib from 'node:zlib';
import tar, { type Header, type Pack } from 'tar-stream';
import { FailedPreconditionError, InvalidArgumentError, q } from '../errors.js';
import type { LayerDigest, LayerTarget } from './apply.js';
import { StreamHash } from './hash.js';
import { XATTR_PAX_PREFIX, paxBody } from './pax.js';
import { OPAQUE_MARKER, WHITEOUT_PREFIX, abs, joinRel } from './paths.js';
import { lgetxattr, llistxattr, splitdev } from './sys.js';

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

const OVERLAY_XATTR = /^(trusted|user)\.overlay\./;
/** Files up to this size are read in one go; larger ones stream in chunks of it. */
const CHUNK = 1024 * 1024;
/** Bytes we let pile up between the walk and the consumer before waiting. */
const HIGH_WATER = 8 * 1024 * 1024;
/** tar-stream encodes mtimes through a 32-bit `| 0`, and ids in 7 octal digits: past these, PAX records carry the value. */
const MAX_HEADER_TIME = 0x7fffffff;
const MAX_HEADER_ID = 0o7777777;
/**
 * Whiteout and opaque markers carry the epoch, as containerd writes them: the
 * time a whiteout was made says nothing about the content, and a re-applied
 * layer must diff to the same bytes.
 */
const MARKER_TIME = new Date(0);
/** Bytes of tar gathered before one write to the output. */
const BATCH = 1024 * 1024;

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

/** Walks the tree and feeds the packer, waiting whenever the consumer falls behind. */
class Differ {
  private readonly links = new Map<string, string>();
  private produced = 0;
  private consumed = 0;
  private waiter: { resolve: () => void; reject: (err: unknown) => void } | undefined;
  private failure: unknown;
  private readonly opaqueXattr: string;

  constructor(
    private readonly root: string,
    private readonly pack: Pack,
    private readonly epoch: number | undefined,
    userxattr: boolean,
  ) {
    this.opaqueXattr = userxattr ? 'user.overlay.opaque' : 'trusted.overlay.opaque';
  }

  /** Called by the output side for every chunk it takes from the packer. */
  took(n: number): void {
    this.consumed += n;
    if (this.waiter && this.produced - this.consumed <= HIGH_WATER / 2) {
      const w = this.waiter;
      this.waiter = undefined;
      w.resolve();
    }
  }

  fail(err: unknown): void {
    this.failure = err;
    const w = this.waiter;
    this.waiter = undefined;
    w?.reject(err);
  }

  /** Counts what was handed to the packer (a header block and padded data), and waits if too much is queued. */
  private async account(bytes: number, header = true): Promise<void> {
    this.produced += header ? 512 + bytes + ((512 - (bytes % 512)) % 512) : bytes;
    if (this.failure) throw this.failure;
    if (this.produced - this.consumed > HIGH_WATER) {
      await new Promise<void>((resolve, reject) => {
        this.waiter = { resolve, reject };
      });
    }
  }

  /** Whole seconds, clamped to the epoch option; negative times become 0. */
  private mtime(st: Stats): Date {
    const s = Math.floor(st.mtimeMs / 1000);
    const clamped = this.epoch !== undefined && s > this.epoch ? this.epoch : s;
    return new Date(Math.max(0, clamped) * 1000);
  }

  /** xattrs of a path, sorted, without overlayfs' own; refuses upper dirs overlay can't diff. */
  private xattrs(path: string, rel: string): { list: Array<[string, Buffer]>; opaque: boolean } {
    const list: Array<[string, Buffer]> = [];
    let opaque = false;
    const names = llistxattr(path);
    if (names.length === 0) return { list, opaque };
    for (const name of names.sort()) {
      if (OVERLAY_XATTR.test(name)) {
        const kind = name.slice(name.indexOf('.overlay.') + 9);
        if (kind === 'redirect' || kind === 'metacopy') {
          throw new FailedPreconditionError(
            `cannot diff ${q(rel)}: it carries overlayfs ${kind} metadata (mounted with redirect_dir or metacopy), so the upper alone does not hold its content`,
          );
        }
        if (name === this.opaqueXattr) {
          const v = lgetxattr(path, name);
          opaque = v !== undefined && v.length === 1 && v[0] === 0x79;
        }
        continue;
      }
      const value = lgetxattr(path, name);
      if (value !== undefined) list.push([name, value]);
    }
    return { list, opaque };
  }

  /** Adds one entry; binary xattr values go in a PAX header we build (see pax.ts). */
  private async add(header: Header & { linkname?: string }, xattrs: Array<[string, Buffer]>, body?: Buffer): Promise<Writable> {
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
        const ph: Header = {
          name: `PaxHeaders/${base.slice(base.lastIndexOf('/') + 1).slice(0, 80).replace(/[^\x20-\x7e]/g, '_')}`,
          type: 'file',
          size: paxData.length,
          mode: 0o644,
          mtime: header.mtime,
        } as Header;
        this.pack.entry(ph, paxData);
        // tar-stream writes PAX bodies only as UTF-8 strings; a byte body has to be entered as a
        // file and retyped before the packer encodes its header (it does so on a later tick).
        (ph as { type: string }).type = 'pax-header';
        await this.account(paxData.length);
      }
    }
    const sink = (body ? this.pack.entry(header, body) : this.pack.entry(header)) as unknown as Writable;
    // A file entered without its body streams its data later and counts it then.
    await this.account(body?.length ?? 0);
    return sink;
  }

  /** A file small enough to read in one go: one read into a buffer of its size. */
  private async addFile(path: string, rel: string, st: Stats, header: Header, xattrs: Array<[string, Buffer]>): Promise<void> {
    const size = st.size;
    const buf = Buffer.allocUnsafe(size);
    const fd = openSync(path, 'r');
    try {
      let off = 0;
      while (off < size) {
        const n = readSync(fd, buf, off, size - off, off);
        if (n === 0) throw new FailedPreconditionError(`${q(rel)} shrank while being diffed`);
        off += n;
      }
    } finally {
      closeSync(fd);
    }
    header.size = size;
    await this.add(header, xattrs, buf);
  }

  /** A large file: streamed into its entry chunk by chunk, waiting for the consumer. */
  private async streamFile(path: string, rel: string, st: Stats, header: Header, xattrs: Array<[string, Buffer]>): Promise<void> {
    header.size = st.size;
    const fd = openSync(path, 'r');
    try {
      const sink = await this.add(header, xattrs);
      let off = 0;
      while (off < st.size) {
        const want = Math.min(CHUNK, st.size - off);
        // A fresh buffer per chunk: the packer keeps a reference until the consumer takes it.
        const buf = Buffer.allocUnsafe(want);
        let got = 0;
        while (got < want) {
          const n = readSync(fd, buf, got, want - got, off + got);
          if (n === 0) throw new FailedPreconditionError(`${q(rel)} shrank while being diffed`);
          got += n;
        }
        off += want;
        sink.write(buf);
        await this.account(want, false);
      }
      sink.end();
      await this.account((512 - (st.size % 512)) % 512, false);
    } finally {
      closeSync(fd);
    }
  }

  async walk(dirRel: string): Promise<void> {
    const dirPath = abs(this.root, dirRel);
    const names = readdirSync(dirPath).sort();
    const whiteouts: Array<[string, Stats]> = [];
    const others: Array<[string, Stats]> = [];
    for (const name of names) {
      const st = lstatSync(`${dirPath}/${name}`);
      if (st.isCharacterDevice() && st.rdev === 0) whiteouts.push([name, st]);
      else others.push([name, st]);
    }
    for (const [name] of whiteouts) {
      await this.add(
        { name: joinRel(dirRel, WHITEOUT_PREFIX + name), type: 'file', size: 0, mode: 0, uid: 0, gid: 0, mtime: MARKER_TIME } as Header,
        [],
        Buffer.alloc(0),
      );
    }
    for (const [name, st] of others) {
      const rel = joinRel(dirRel, name);
      await this.entry(rel, `${dirPath}/${name}`, st);
    }
  }

  private async entry(rel: string, path: string, st: Stats): Promise<void> {
    const { list, opaque } = this.xattrs(path, rel);
    const header = { name: rel, mode: st.mode & 0o7777, uid: st.uid, gid: st.gid, mtime: this.mtime(st) } as Header & { linkname?: string };
    if (st.isDirectory()) {
      header.type = 'directory';
      // tar-stream does not add the conventional trailing slash to directory names itself.
      header.name = `${rel}/`;
      await this.add(header, list);
      if (opaque) {
        await this.add({ name: joinRel(rel, OPAQUE_MARKER), type: 'file', size: 0, mode: 0, uid: 0, gid: 0, mtime: MARKER_TIME } as Header, [], Buffer.alloc(0));
      }
      await this.walk(rel);
      return;
    }
    if (st.nlink > 1) {
      const key = `${st.dev}:${st.ino}`;
      const first = this.links.get(key);
      if (first !== undefined) {
        header.type = 'link';
        header.linkname = first;
        header.size = 0;
        await this.add(header, []);
        return;
      }
      this.links.set(key, rel);
    }
    if (st.isFile()) {
      header.type = 'file';
      if (st.size <= CHUNK) return this.addFile(path, rel, st, header, list);
      return this.streamFile(path, rel, st, header, list);
    }
    if (st.isSymbolicLink()) {
      header.type = 'symlink';
      header.linkname = readlinkSync(path);
      await this.add(header, list);
      return;
    }
    if (st.isCharacterDevice() || st.isBlockDevice()) {
      header.type = st.isCharacterDevice() ? 'character-device' : 'block-device';
      const { major, minor } = splitdev(st.rdev);
      header.devmajor = major;
      header.devminor = minor;
      await this.add(header, list);
      return;
    }
    if (st.isFIFO()) {
      header.type = 'fifo';
      await this.add(header, list);
      return;
    }
    // Sockets are not part of a filesystem image (tar skips them too).
  }

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

  const pack = tar.pack();
  const differ = new Differ(root, pack, opts.sourceDateEpoch, target.userxattr ?? false);
  const hashU = new StreamHash();
  const hashC = new StreamHash();
  const gzip = opts.compression === 'gzip' ? zlib.createGzip({ level: opts.gzipLevel ?? 6 }) : undefined;
  const tapC = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      hashC.update(chunk);
      cb(null, chunk);
    },
  });
  const head: Writable = gzip ?? out;
  const flowing = (gzip ? pipeline(gzip, tapC, out) : finished(out)).catch((err: unknown) => {
    differ.fail(err);
    throw err;
  });
  // tar-stream emits a header, a body and a padding chunk per entry. Writing each on its own costs
  // a round trip through the writable per chunk (a file stream's buffer is only 16 KiB), so the
  // packer's output is gathered into batches of about BATCH bytes first.
  let batch: Buffer[] = [];
  let batchLen = 0;
  const flush = (): void => {
    if (batchLen === 0) return;
    const buf = batch.length === 1 ? batch[0]! : Buffer.concat(batch, batchLen);
    batch = [];
    batchLen = 0;
    if (!head.write(buf)) {
      pack.pause();
      head.once('drain', () => pack.resume());
    }
  };
  pack.on('data', (data) => {
    const chunk = data as Buffer;
    hashU.update(chunk);
    if (chunk.length >= BATCH / 4) {
      // File data in big pieces: no point copying it into a batch.
      flush();
      batch.push(chunk);
      batchLen = chunk.length;
      flush();
    } else {
      batch.push(chunk);
      batchLen += chunk.length;
      if (batchLen >= BATCH) flush();
    }
    differ.took(chunk.length);
  });
  pack.on('end', () => {
    flush();
    head.end();
  });
  pack.on('error', (err) => {
    head.destroy(err as Error);
  });
  try {
    await differ.walk('');
    pack.finalize();
  } catch (err) {
    pack.destroy(err as Error);
    await flowing.catch(() => {});
    hashU.abort();
    hashC.abort();
    throw err;
  }
  try {
    await flowing;
  } catch (err) {
    hashU.abort();
    hashC.abort();
    throw err;
  }
  const digest = await hashU.digest();
  if (gzip) return { digest, size: hashU.size, compressedDigest: await hashC.digest(), compressedSize: hashC.size };
  hashC.abort();
  return { digest, size: hashU.size, compressedDigest: digest, compressedSize: hashU.size };
}
