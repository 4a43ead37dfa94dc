/**
 * Writing images: an OCI image layout directory (new, or an existing one
 * that gains an image), and the tars made from one (an OCI layout tar, a
 * docker archive). Everything is written so that the same image gives the
 * same bytes: blobs are content-addressed, documents are built in a fixed
 * key order, and the tars list their entries sorted, owned by 0:0 with
 * fixed modes and one fixed mtime.
 */
import { closeSync, constants as fsc, copyFileSync, createReadStream, createWriteStream, fsyncSync, linkSync, lstatSync, mkdirSync, openSync, readFileSync, readdirSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import tar from 'tar-stream';
import { v4 as uuidv4 } from 'uuid';
import { FailedPreconditionError, InvalidArgumentError } from '../model/errors.js';
import { type Descriptor, MAX_MANIFEST_BYTES, MEDIA, REF_ANNOTATION, canonicalJson, parseIndex } from './media.js';
import { sha256 } from './select.js';

const OCI_LAYOUT = canonicalJson({ imageLayoutVersion: '1.0.0' });

function errno(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : undefined;
}

/** An OCI image layout being written. */
export class LayoutWriter {
  readonly blobs: string;
  private readonly temps = new Set<string>();

  private constructor(readonly dir: string) {
    this.blobs = join(dir, 'blobs', 'sha256');
  }

  /**
   * Opens `dir` for writing: created if missing; an empty directory or an
   * existing OCI layout is fine (the image is added to it); anything else
   * is refused rather than mixed into.
   */
  static open(dir: string): LayoutWriter {
    const st = lstatSync(dir, { throwIfNoEntry: false });
    if (st === undefined) {
      mkdirSync(dir, { recursive: true, mode: 0o755 });
    } else {
      if (!st.isDirectory()) throw new InvalidArgumentError(`export target ${JSON.stringify(dir)} exists and is not a directory`);
      const entries = readdirSync(dir);
      if (entries.length > 0 && !entries.includes('oci-layout')) {
        throw new FailedPreconditionError(`export target ${JSON.stringify(dir)} is a non-empty directory that is not an OCI image layout; choose a new or empty directory`);
      }
      for (const sub of ['blobs', 'blobs/sha256']) {
        const s = lstatSync(join(dir, sub), { throwIfNoEntry: false });
        if (s !== undefined && !s.isDirectory()) throw new InvalidArgumentError(`export target ${JSON.stringify(dir)}: ${sub} is not a directory (a symlink?)`);
      }
    }
    const w = new LayoutWriter(dir);
    mkdirSync(w.blobs, { recursive: true, mode: 0o755 });
    return w;
  }

  blobPath(digest: string): string {
    return join(this.blobs, digest.slice('sha256:'.length));
  }

  /** Whether the layout holds this blob already, with this size. */
  has(digest: string, size: number): boolean {
    const st = lstatSync(this.blobPath(digest), { throwIfNoEntry: false });
    return st !== undefined && st.isFile() && st.size === size;
  }

  /** A fresh temp path among the blobs, for a blob whose digest is known only once written. */
  temp(): string {
    const path = join(this.blobs, `.tmp-${uuidv4()}`);
    this.temps.add(path);
    return path;
  }

  /** Moves a written temp file into place as `digest`. */
  commit(temp: string, digest: string): void {
    renameSync(temp, this.blobPath(digest));
    this.temps.delete(temp);
  }

  /**
   * Puts a blob in, unless it is here already: a hard link when `link` and
   * the filesystem allow, else a copy (a reflink where the filesystem can).
   */
  copyIn(from: string, digest: string, size: number, link: boolean): void {
    if (this.has(digest, size)) return;
    const tmp = this.temp();
    try {
      if (!link) throw Object.assign(new Error('copy asked for'), { code: 'EXDEV' });
      linkSync(from, tmp);
    } catch (err) {
      if (!['EXDEV', 'EPERM', 'EMLINK'].includes(errno(err) ?? '')) throw err;
      copyFileSync(from, tmp, fsc.COPYFILE_FICLONE);
    }
    if (statSync(tmp).size !== size) throw new Error(`blob ${digest} copied from ${from} is not ${size} bytes`);
    this.commit(tmp, digest);
  }

  /** Writes a small blob (manifest, config) and returns its digest. */
  put(bytes: Buffer): string {
    const digest = sha256(bytes);
    if (!this.has(digest, bytes.length)) {
      const tmp = this.temp();
      writeFileSync(tmp, bytes, { mode: 0o644 });
      this.commit(tmp, digest);
    }
    return digest;
  }

  /**
   * Writes index.json with `desc` added, replacing an entry of the same ref
   * (or of the same digest, without a ref), and the `oci-layout` file.
   */
  index(desc: Descriptor): void {
    let manifests: Descriptor[] = [];
    const path = join(this.dir, 'index.json');
    const st = lstatSync(path, { throwIfNoEntry: false });
    if (st !== undefined) {
      if (!st.isFile() || st.size > MAX_MANIFEST_BYTES) throw new InvalidArgumentError(`export target ${JSON.stringify(this.dir)}: index.json is not a regular file of at most ${MAX_MANIFEST_BYTES} bytes`);
      manifests = parseIndex(readFileSync(path), `${this.dir}/index.json`).manifests;
    }
    const ref = desc.annotations?.[REF_ANNOTATION];
    manifests = manifests.filter((d) => (ref !== undefined ? d.annotations?.[REF_ANNOTATION] !== ref : d.digest !== desc.digest || d.annotations?.[REF_ANNOTATION] !== undefined));
    manifests.push(desc);
    atomicWrite(path, canonicalJson({ schemaVersion: 2, mediaType: MEDIA.ociIndex, manifests }));
    atomicWrite(join(this.dir, 'oci-layout'), OCI_LAYOUT);
  }

  /** Writes any other top-level file (docker's manifest.json). */
  file(name: string, bytes: Buffer): void {
    atomicWrite(join(this.dir, name), bytes);
  }

  /** Removes temp files left by a failure. */
  abort(): void {
    for (const t of this.temps) rmSync(t, { force: true });
    this.temps.clear();
  }
}

function atomicWrite(path: string, bytes: Buffer): void {
  const tmp = join(dirname(path), `.${basename(path)}.tmp-${uuidv4()}`);
  writeFileSync(tmp, bytes, { mode: 0o644 });
  renameSync(tmp, path);
}

/**
 * Packs the layout `dir` into the tar `target` (written beside it, synced,
 * then renamed into place): directories, then files, sorted by path, mode
 * 0755/0644, owner 0:0, every mtime `mtime` (seconds).
 */
export async function packLayout(dir: string, target: string, mtime: number): Promise<void> {
  const files: { name: string; dir: boolean; size: number }[] = [];
  const walk = (rel: string): void => {
    for (const name of readdirSync(join(dir, rel)).sort()) {
      const r = rel === '' ? name : `${rel}/${name}`;
      const st = lstatSync(join(dir, r));
      if (st.isDirectory()) {
        files.push({ name: r, dir: true, size: 0 });
        walk(r);
      } else if (st.isFile()) {
        files.push({ name: r, dir: false, size: st.size });
      }
    }
  };
  walk('');
  files.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const tmp = join(dirname(target), `.${basename(target)}.tmp-${uuidv4()}`);
  const pack = tar.pack();
  const out = createWriteStream(tmp, { mode: 0o644 });
  const written = pipeline(pack, out);
  written.catch(() => {});
  const date = new Date(mtime * 1000);
  try {
    for (const f of files) {
      const header = { name: f.name, mode: f.dir ? 0o755 : 0o644, uid: 0, gid: 0, mtime: date, uname: '', gname: '' };
      if (f.dir) {
        pack.entry({ ...header, type: 'directory' });
        continue;
      }
      const entry = pack.entry({ ...header, type: 'file', size: f.size });
      await pipeline(createReadStream(join(dir, f.name), { highWaterMark: 1 << 20 }), entry);
    }
    pack.finalize();
    await written;
    const fd = openSync(tmp, 'r');
    try {
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, target);
  } catch (err) {
    pack.destroy();
    await written.catch(() => {});
    rmSync(tmp, { force: true });
    throw err;
  }
}

/** A scratch directory beside `target` (same filesystem, so blobs move by rename), for an archive's layout. */
export function scratchBeside(target: string): string {
  const dir = join(dirname(target), `.${basename(target)}.layout-${uuidv4()}`);
  mkdirSync(dir, { mode: 0o700 });
  return dir;
}
