/**
 * Reading an image source without trusting it: an OCI image layout
 * directory, or a tar of one, or a docker archive (`docker save`; a tar, or
 * the directory it unpacks to). Files are named by paths relative to the
 * source's top, checked before use: no absolute paths, no `..`, no NUL.
 *
 * In a directory every component is opened below its parent's descriptor
 * (through `/proc/self/fd/<fd>/<name>`) with `O_NOFOLLOW`, so a symlinked
 * `blobs/` or blob is refused, never followed, and nothing outside the
 * directory is read. In a tar, entries are found by a scan of the headers
 * (positioned reads, the data is skipped) and read in place; a symlink or
 * hard link entry is followed only to another entry of the same tar (as
 * `docker save` links duplicate layers).
 */
import { closeSync, constants as fsc, createReadStream, fstatSync, linkSync, lstatSync, openSync, readSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname as pathDirname, join as pathJoin, posix } from 'node:path';
import type { Readable } from 'node:stream';
import { InvalidArgumentError, NotFoundError } from '../model/errors.js';

/** What {@link openSource} found at a path. */
export type SourceKind = 'directory' | 'tar';

/** A file of a source: where it is and how large. */
interface Located {
  size: number;
  open(): Readable;
}

/** Read access to the files of an image source. */
export interface SourceReader {
  readonly kind: SourceKind;
  /** The path given, for messages. */
  readonly path: string;
  /** Whether `rel` is a regular file of the source (after following links inside a tar). */
  has(rel: string): boolean;
  /** The size of `rel`, or NotFound. */
  size(rel: string): number;
  /** The whole of `rel`, refusing one larger than `max` bytes before reading it. */
  read(rel: string, max: number): Buffer;
  /** A stream of `rel`'s bytes. */
  open(rel: string): Readable;
  /** The first `n` bytes of `rel` (fewer if it is shorter). */
  head(rel: string, n: number): Buffer;
  /**
   * Hard-links `rel` to `dest` when that is as safe as a copy: `rel` is a
   * regular file of a directory source, on the same filesystem, that only
   * root (or this process's user) can change. Returns false when not
   * (then copy).
   */
  linkTo(rel: string, dest: string): boolean;
  close(): void;
}

/** Throws unless `rel` is a plain relative path that stays inside the source. */
export function checkRelPath(rel: string, what: string): string {
  if (typeof rel !== 'string' || rel === '' || rel.includes('\0')) throw new InvalidArgumentError(`${what}: invalid path ${JSON.stringify(rel)}`);
  if (rel.startsWith('/')) throw new InvalidArgumentError(`${what}: path ${JSON.stringify(rel)} is absolute; an image may only name files inside itself`);
  const parts = rel.split('/').filter((p) => p !== '' && p !== '.');
  if (parts.includes('..')) throw new InvalidArgumentError(`${what}: path ${JSON.stringify(rel)} points outside the image (..)`);
  if (parts.length === 0) throw new InvalidArgumentError(`${what}: invalid path ${JSON.stringify(rel)}`);
  return parts.join('/');
}

function errno(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : undefined;
}

/** An OCI layout or unpacked docker archive directory. */
class DirectorySource implements SourceReader {
  readonly kind = 'directory' as const;
  constructor(readonly path: string) {}

  /**
   * Opens `rel` below the top, one component at a time relative to the
   * previous one's descriptor, never following a symlink.
   */
  private openFile(rel: string): number | undefined {
    const parts = checkRelPath(rel, this.path).split('/');
    let dir = openSync(this.path, fsc.O_RDONLY | fsc.O_DIRECTORY);
    try {
      for (let i = 0; i < parts.length; i++) {
        const last = i === parts.length - 1;
        const flags = fsc.O_RDONLY | fsc.O_NOFOLLOW | (last ? fsc.O_NONBLOCK | fsc.O_NOCTTY : fsc.O_DIRECTORY);
        let fd: number;
        try {
          fd = openSync(`/proc/self/fd/${dir}/${parts[i]}`, flags);
        } catch (err) {
          const code = errno(err);
          if (code === 'ENOENT') return undefined;
          if (code === 'ELOOP' || code === 'ENOTDIR') {
            const at = parts.slice(0, i + 1).join('/');
            throw new InvalidArgumentError(`${this.path}: ${JSON.stringify(at)} is a symlink or not a directory; an image layout must hold its files itself (refusing to follow it)`);
          }
          throw err;
        }
        closeSync(dir);
        dir = fd;
      }
      const fd = dir;
      dir = -1;
      if (!fstatSync(fd).isFile()) {
        closeSync(fd);
        throw new InvalidArgumentError(`${this.path}: ${JSON.stringify(rel)} is not a regular file`);
      }
      return fd;
    } finally {
      if (dir >= 0) closeSync(dir);
    }
  }

  private locate(rel: string): Located & { fd: number } {
    const fd = this.openFile(rel);
    if (fd === undefined) throw new NotFoundError(`${this.path}: ${JSON.stringify(rel)} not found`);
    const size = fstatSync(fd).size;
    return { fd, size, open: () => createReadStream('', { fd, autoClose: true, highWaterMark: 1 << 20 }) };
  }

  has(rel: string): boolean {
    const fd = this.openFile(rel);
    if (fd === undefined) return false;
    closeSync(fd);
    return true;
  }

  size(rel: string): number {
    const l = this.locate(rel);
    closeSync(l.fd);
    return l.size;
  }

  read(rel: string, max: number): Buffer {
    const l = this.locate(rel);
    try {
      if (l.size > max) throw new InvalidArgumentError(`${this.path}: ${JSON.stringify(rel)} is ${l.size} bytes, more than the ${max} allowed for it`);
      return readExactly(l.fd, 0, l.size);
    } finally {
      closeSync(l.fd);
    }
  }

  open(rel: string): Readable {
    return this.locate(rel).open();
  }

  head(rel: string, n: number): Buffer {
    const l = this.locate(rel);
    try {
      return readExactly(l.fd, 0, Math.min(n, l.size));
    } finally {
      closeSync(l.fd);
    }
  }

  linkTo(rel: string, dest: string): boolean {
    const fd = this.openFile(rel);
    if (fd === undefined) return false;
    let ino: number;
    let dev: number;
    try {
      const st = fstatSync(fd);
      const euid = process.geteuid?.() ?? 0;
      // Writable only by its owner, and the owner is root or us: nobody else can change the stored copy later.
      if ((st.uid !== 0 && st.uid !== euid) || (st.mode & 0o022) !== 0) return false;
      ino = st.ino;
      dev = st.dev;
    } finally {
      closeSync(fd);
    }
    try {
      linkSync(pathJoin(this.path, checkRelPath(rel, this.path)), dest);
    } catch (err) {
      const code = errno(err);
      if (code === 'EXDEV' || code === 'EPERM' || code === 'EMLINK' || code === 'ENOENT') return false;
      throw err;
    }
    // The path was walked again by link(2): keep the link only if it is the file inspected above.
    const st = lstatSync(dest);
    if (st.isFile() && st.ino === ino && st.dev === dev) return true;
    rmSync(dest, { force: true });
    return false;
  }

  close(): void {}
}

function readExactly(fd: number, position: number, length: number): Buffer {
  const buf = Buffer.allocUnsafe(length);
  let off = 0;
  while (off < length) {
    const n = readSync(fd, buf, off, length - off, position + off);
    if (n === 0) throw new InvalidArgumentError(`unexpected end of file (read ${off} of ${length} bytes)`);
    off += n;
  }
  return buf;
}

/** tar-stream's header codec (not in its exports map, so loaded by path, as lib/layers/diff.ts does). */
interface TarHeader {
  name: string;
  size: number;
  type: string | null;
  linkname: string | null;
}
interface TarHeaders {
  decode(buf: Buffer, filenameEncoding: string, allowUnknownFormat: boolean): TarHeader | null;
  decodePax(buf: Buffer): Record<string, string>;
  decodeLongPath(buf: Buffer, encoding: string): string;
}
const requireCjs = createRequire(import.meta.url);
const tarHeaders = requireCjs(pathJoin(pathDirname(requireCjs.resolve('tar-stream')), 'headers.js')) as TarHeaders;

interface TarEntry {
  type: 'file' | 'symlink' | 'link' | 'other';
  offset: number;
  size: number;
  linkname?: string;
}

/** Headers (and PAX/GNU name records) larger than this are not a docker archive's. */
const MAX_META = 1024 * 1024;

function normalName(name: string): string {
  return name.split('/').filter((p) => p !== '' && p !== '.').join('/');
}

/** A tar: an OCI layout tar or a docker archive. */
class TarSource implements SourceReader {
  readonly kind = 'tar' as const;
  private readonly entries = new Map<string, TarEntry>();

  constructor(
    readonly path: string,
    private readonly fd: number,
  ) {
    const fileSize = fstatSync(fd).size;
    let pos = 0;
    let longName: string | undefined;
    let pax: Record<string, string> | undefined;
    const block = Buffer.alloc(512);
    while (pos + 512 <= fileSize) {
      readSync(fd, block, 0, 512, pos);
      let h: TarHeader | null;
      try {
        h = tarHeaders.decode(block, 'utf-8', true);
      } catch (err) {
        throw new InvalidArgumentError(`${path}: not a valid tar at byte ${pos} (${(err as Error).message})`);
      }
      if (h === null) break; // end-of-archive block
      const dataAt = pos + 512;
      const size = pax?.size !== undefined ? Number(pax.size) : h.size;
      if (!Number.isSafeInteger(size) || size < 0 || dataAt + size > fileSize) throw new InvalidArgumentError(`${path}: tar entry ${JSON.stringify(h.name)} runs past the end of the file`);
      pos = dataAt + Math.ceil(size / 512) * 512;
      if (h.type === 'pax-header' || h.type === 'gnu-long-path' || h.type === 'gnu-long-link-path') {
        if (size > MAX_META) throw new InvalidArgumentError(`${path}: tar metadata record of ${size} bytes`);
        const body = readExactly(fd, dataAt, size);
        if (h.type === 'pax-header') pax = tarHeaders.decodePax(body);
        else if (h.type === 'gnu-long-path') longName = tarHeaders.decodeLongPath(body, 'utf-8');
        continue;
      }
      if (h.type === 'pax-global-header') continue;
      const name = normalName(pax?.path ?? longName ?? h.name);
      const linkname = pax?.linkpath ?? h.linkname ?? undefined;
      pax = undefined;
      longName = undefined;
      if (name === '') continue;
      const type = h.type === 'file' || h.type === 'contiguous-file' ? 'file' : h.type === 'symlink' ? 'symlink' : h.type === 'link' ? 'link' : 'other';
      const entry: TarEntry = { type, offset: dataAt, size };
      if (linkname !== undefined) entry.linkname = linkname;
      this.entries.set(name, entry);
    }
  }

  /** The regular-file entry `rel` names, following links to other entries (at most 16). */
  private find(rel: string): TarEntry | undefined {
    let name = checkRelPath(rel, this.path);
    for (let hops = 0; hops < 16; hops++) {
      const e = this.entries.get(name);
      if (e === undefined) return undefined;
      if (e.type === 'file') return e;
      if (e.type === 'other' || e.linkname === undefined) throw new InvalidArgumentError(`${this.path}: ${JSON.stringify(rel)} is not a regular file`);
      // A hard link names an entry from the top; a symlink is relative to its own directory.
      const target = e.type === 'link' ? e.linkname : posix.join(posix.dirname(name), e.linkname);
      if (target.startsWith('/') || posix.normalize(target).split('/').includes('..')) {
        throw new InvalidArgumentError(`${this.path}: ${JSON.stringify(rel)} links outside the archive (${JSON.stringify(e.linkname)})`);
      }
      name = normalName(posix.normalize(target));
    }
    throw new InvalidArgumentError(`${this.path}: too many links resolving ${JSON.stringify(rel)}`);
  }

  private locate(rel: string): TarEntry {
    const e = this.find(rel);
    if (e === undefined) throw new NotFoundError(`${this.path}: ${JSON.stringify(rel)} not found in the archive`);
    return e;
  }

  has(rel: string): boolean {
    return this.find(rel) !== undefined;
  }

  size(rel: string): number {
    return this.locate(rel).size;
  }

  read(rel: string, max: number): Buffer {
    const e = this.locate(rel);
    if (e.size > max) throw new InvalidArgumentError(`${this.path}: ${JSON.stringify(rel)} is ${e.size} bytes, more than the ${max} allowed for it`);
    return readExactly(this.fd, e.offset, e.size);
  }

  open(rel: string): Readable {
    const e = this.locate(rel);
    if (e.size === 0) return createReadStream('/dev/null');
    return createReadStream('', { fd: this.fd, start: e.offset, end: e.offset + e.size - 1, autoClose: false, highWaterMark: 1 << 20 });
  }

  head(rel: string, n: number): Buffer {
    const e = this.locate(rel);
    return readExactly(this.fd, e.offset, Math.min(n, e.size));
  }

  linkTo(): boolean {
    return false;
  }

  close(): void {
    closeSync(this.fd);
  }
}

/**
 * Opens an image source: a directory (OCI layout, or an unpacked docker
 * archive) or a tar file. A compressed tar is refused (decompress it first:
 * its entries cannot be read in place).
 */
export function openSource(path: string): SourceReader {
  let fd: number;
  try {
    fd = openSync(path, fsc.O_RDONLY | fsc.O_NONBLOCK | fsc.O_NOCTTY);
  } catch (err) {
    if (errno(err) === 'ENOENT') throw new NotFoundError(`image source ${JSON.stringify(path)} not found`);
    throw err;
  }
  const st = fstatSync(fd);
  if (st.isDirectory()) {
    closeSync(fd);
    return new DirectorySource(path);
  }
  if (!st.isFile()) {
    closeSync(fd);
    throw new InvalidArgumentError(`image source ${JSON.stringify(path)} is neither a directory nor a file`);
  }
  const head = Buffer.alloc(6);
  const n = readSync(fd, head, 0, 6, 0);
  if ((n >= 2 && head[0] === 0x1f && head[1] === 0x8b) || (n >= 4 && head.readUInt32BE(0) === 0x28b52ffd)) {
    closeSync(fd);
    throw new InvalidArgumentError(`image source ${JSON.stringify(path)} is a compressed archive; decompress it first (gunzip, unzstd): its files are read in place`);
  }
  try {
    return new TarSource(path, fd);
  } catch (err) {
    closeSync(fd);
    throw err;
  }
}
