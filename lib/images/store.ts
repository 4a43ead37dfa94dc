/**
 * The image store: what importImage keeps so that images can be listed,
 * removed, and exported again without re-diffing their layers. It is
 * itself an OCI image layout (`skopeo inspect oci:<store>:<ref>` reads
 * it), by default `<snapshotter root>/images`:
 *
 *   oci-layout, index.json    the images: manifest descriptors annotated
 *                             with their ref and top chain ID
 *   blobs/sha256/<hex>        manifests, configs and the layer blobs as imported
 *   layers/<hex>.json         chain ID <hex> -> its layer blob, diffID and size
 *   ingest/                   blobs being written (named by their writer)
 *   leases/                   blobs a running import has written but not yet
 *                             indexed, so that a removal meanwhile keeps them
 *   lock                      held while index.json is rewritten
 *
 * Blobs are content-addressed and renamed into place once verified;
 * layer records are one file each, written by rename; only index.json is
 * read-modify-written, under the lock. What a killed process leaves
 * (ingest files, leases, a lock) names its owner (lib/layers/owner.ts) and
 * is swept by the next user once the owner is gone.
 */
import { closeSync, constants as fsc, fsyncSync, mkdirSync, openSync, readFileSync, readdirSync, renameSync, rmSync, statSync, unlinkSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import createDebug from 'debug';
import { v4 as uuidv4 } from 'uuid';
import { NotFoundError, UnavailableError } from '../model/errors.js';
import { DirectWriter, ownerAlive, ownerValue } from '../layers/index.js';
import { type Descriptor, type Index, MAX_MANIFEST_BYTES, MEDIA, REF_ANNOTATION, canonicalJson, checkDigest, parseIndex, parseJson, parseManifest } from './media.js';
import { sha256 } from './select.js';

const debug = createDebug('overlay-snapshotter:images');

/** Annotation of a stored image: the chain ID of its top layer (the snapshot to build on). */
export const CHAIN_ANNOTATION = 'overlay-snapshotter/chain-id';
/** Annotation of a stored image: when it was imported (RFC 3339). */
export const IMPORTED_ANNOTATION = 'overlay-snapshotter/imported';

/** What the store knows of one layer, by its chain ID. */
export interface LayerRecord {
  chainId: string;
  diffId: string;
  /** Bytes of the uncompressed tar, when known. */
  size?: number;
  /** The blob as imported (compressed or not). */
  blob: { mediaType: string; digest: string; size: number };
}

/** An image in the store. */
export interface StoredImage {
  /** Its name, absent for an image imported without one. */
  ref?: string;
  /** The manifest's descriptor in the store's index.json. */
  manifest: Descriptor;
  /** Chain ID of the top layer: the committed snapshot to `prepare` on. */
  chainId: string;
  imported?: string;
}

const LOCK_WAIT_MS = 30_000;

function errno(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : undefined;
}

function hexOf(digest: string): string {
  return checkDigest(digest, 'digest').slice('sha256:'.length);
}

/** Writes `bytes` to `path` by way of a synced temp file and a rename: readers see the old or the new file. */
function writeAtomic(path: string, bytes: Buffer): void {
  const tmp = `${path}.tmp-${uuidv4()}`;
  const fd = openSync(tmp, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL, 0o644);
  try {
    writeSync(fd, bytes);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  try {
    renameSync(tmp, path);
  } catch (err) {
    rmSync(tmp, { force: true });
    throw err;
  }
}

/**
 * A blob being written into the store; {@link commit} moves it into place
 * under its digest. The caller's thread is busy applying the same bytes:
 * the file is written on the thread pool, past the page cache where the
 * filesystem allows (layers/direct-writer.ts), with bounded write-ahead
 * ({@link drained}).
 */
export class BlobWriter {
  private readonly file: DirectWriter;

  constructor(private readonly store: ImageStore, readonly path: string) {
    this.file = DirectWriter.create(path);
  }

  /** Queues a copy of `chunk`; throws the failure of an earlier write. */
  write(chunk: Uint8Array): void {
    this.file.write(chunk);
  }

  /** Resolves once few enough bytes are waiting (undefined when they are already). */
  drained(): Promise<void> | undefined {
    return this.file.drained();
  }

  /** Resolves once every byte is written; rejects with a write's failure. */
  flushed(): Promise<void> {
    return this.file.flushed();
  }

  /** Moves the bytes written into place as `digest` (which the caller has verified). */
  async commit(digest: string): Promise<void> {
    await this.file.flushed();
    await this.file.close();
    renameSync(this.path, this.store.blobPath(digest));
  }

  async abort(): Promise<void> {
    await this.file.close();
    rmSync(this.path, { force: true });
  }
}

/** The blobs one import has written and not yet indexed; kept by removals while the import runs. */
export class Lease {
  private readonly digests = new Set<string>();
  constructor(private readonly path: string) {
    this.flush();
  }

  add(digest: string): void {
    if (this.digests.has(digest)) return;
    this.digests.add(digest);
    this.flush();
  }

  private flush(): void {
    writeAtomic(this.path, Buffer.from(`${ownerValue()}\n${[...this.digests].join('\n')}\n`));
  }

  release(): void {
    rmSync(this.path, { force: true });
  }
}

export class ImageStore {
  private constructor(readonly dir: string) {}

  /** Opens (creating if needed) the store at `dir`, and sweeps what dead processes left in it. */
  static open(dir: string): ImageStore {
    for (const sub of ['', 'blobs', 'blobs/sha256', 'layers', 'ingest', 'leases']) mkdirSync(join(dir, sub), { recursive: true, mode: 0o700 });
    const store = new ImageStore(dir);
    try {
      writeFileSync(join(dir, 'oci-layout'), '{"imageLayoutVersion":"1.0.0"}', { flag: 'wx', mode: 0o644 });
    } catch (err) {
      if (errno(err) !== 'EEXIST') throw err;
    }
    try {
      writeFileSync(join(dir, 'index.json'), canonicalJson({ schemaVersion: 2, mediaType: MEDIA.ociIndex, manifests: [] }), { flag: 'wx', mode: 0o644 });
    } catch (err) {
      if (errno(err) !== 'EEXIST') throw err;
    }
    store.sweep();
    return store;
  }

  blobPath(digest: string): string {
    return join(this.dir, 'blobs', 'sha256', hexOf(digest));
  }

  /** Whether the blob is here (with that size, when given). */
  hasBlob(digest: string, size?: number): boolean {
    const st = statSync(this.blobPath(digest), { throwIfNoEntry: false });
    return st !== undefined && st.isFile() && (size === undefined || st.size === size);
  }

  /** A new blob being written; the name says whose it is, for {@link sweep}. */
  writer(): BlobWriter {
    return new BlobWriter(this, this.ingestPath());
  }

  /** A fresh ingest path for a blob placed by other means (a hard link), moved in by {@link commitIngest}. */
  ingestPath(): string {
    return join(this.dir, 'ingest', `${encodeURIComponent(ownerValue())}.${uuidv4()}`);
  }

  /** Moves an ingest file into place as `digest` (which the caller has verified). */
  commitIngest(path: string, digest: string): void {
    renameSync(path, this.blobPath(digest));
  }

  /** Stores a small blob (a manifest or config) and returns its digest. */
  putBlob(bytes: Buffer): string {
    const digest = sha256(bytes);
    if (!this.hasBlob(digest, bytes.length)) writeAtomic(this.blobPath(digest), bytes);
    return digest;
  }

  /** A stored blob, checked: at most `max` bytes and the digest it is named by. */
  readBlob(digest: string, max: number): Buffer {
    const path = this.blobPath(digest);
    const st = statSync(path, { throwIfNoEntry: false });
    if (st === undefined) throw new NotFoundError(`blob ${digest} is not in the image store ${this.dir}`);
    if (st.size > max) throw new UnavailableError(`blob ${digest} in the image store ${this.dir} is ${st.size} bytes, more than ${max}: the store is damaged`);
    const bytes = readFileSync(path);
    if (sha256(bytes) !== digest) throw new UnavailableError(`blob ${digest} in the image store ${this.dir} does not match its digest: the store is damaged; remove the image and import it again`);
    return bytes;
  }

  /** The record of the layer with this chain ID; undefined for a name that is not a chain ID. */
  layer(chainId: string): LayerRecord | undefined {
    if (!/^sha256:[0-9a-f]{64}$/.test(chainId)) return undefined;
    let bytes: Buffer;
    try {
      bytes = readFileSync(join(this.dir, 'layers', `${hexOf(chainId)}.json`));
    } catch (err) {
      if (errno(err) === 'ENOENT') return undefined;
      throw err;
    }
    try {
      const v = parseJson(bytes, 'layer record') as unknown as LayerRecord;
      if (v.chainId !== chainId || typeof v.blob?.digest !== 'string') return undefined;
      return v;
    } catch {
      debug('ignoring unreadable layer record for %s', chainId);
      return undefined;
    }
  }

  /**
   * Records a layer's blob, unless a record with its blob present is there
   * already: the first import of a layer decides which blob an export
   * reuses (the same layer may come gzip'd in one image and plain in
   * another), so that later imports do not change what exports write.
   */
  putLayer(rec: LayerRecord): void {
    const had = this.layer(rec.chainId);
    if (had !== undefined && this.hasBlob(had.blob.digest, had.blob.size)) {
      if (had.size === undefined && rec.size !== undefined) writeAtomic(join(this.dir, 'layers', `${hexOf(rec.chainId)}.json`), canonicalJson({ ...had, size: rec.size }));
      return;
    }
    const out: LayerRecord = { chainId: rec.chainId, diffId: rec.diffId, blob: { mediaType: rec.blob.mediaType, digest: rec.blob.digest, size: rec.blob.size } };
    if (rec.size !== undefined) out.size = rec.size;
    writeAtomic(join(this.dir, 'layers', `${hexOf(rec.chainId)}.json`), canonicalJson(out));
  }

  lease(): Lease {
    return new Lease(join(this.dir, 'leases', `${uuidv4()}.lease`));
  }

  private readIndex(): Index {
    return parseIndex(readFileSync(join(this.dir, 'index.json')), `${this.dir}/index.json`);
  }

  /** The images in the store, as index.json lists them. */
  list(): StoredImage[] {
    return this.readIndex().manifests.flatMap((desc) => {
      const chainId = desc.annotations?.[CHAIN_ANNOTATION];
      if (chainId === undefined) return [];
      const image: StoredImage = { manifest: desc, chainId };
      const ref = desc.annotations?.[REF_ANNOTATION];
      if (ref !== undefined) image.ref = ref;
      const imported = desc.annotations?.[IMPORTED_ANNOTATION];
      if (imported !== undefined) image.imported = imported;
      return [image];
    });
  }

  /**
   * Records an image, replacing one of the same ref (or, without a ref, an
   * unnamed entry of the same manifest); returns the replaced entries. The
   * blobs they alone used are removed.
   */
  async add(image: StoredImage): Promise<StoredImage[]> {
    return this.locked(() => {
      const index = this.readIndex();
      const same = (d: Descriptor): boolean =>
        image.ref !== undefined ? d.annotations?.[REF_ANNOTATION] === image.ref : d.annotations?.[REF_ANNOTATION] === undefined && d.digest === image.manifest.digest;
      const replaced = index.manifests.filter(same);
      const annotations: Record<string, string> = {};
      if (image.ref !== undefined) annotations[REF_ANNOTATION] = image.ref;
      annotations[CHAIN_ANNOTATION] = image.chainId;
      if (image.imported !== undefined) annotations[IMPORTED_ANNOTATION] = image.imported;
      const desc: Descriptor = { mediaType: image.manifest.mediaType, digest: image.manifest.digest, size: image.manifest.size, annotations };
      if (image.manifest.platform) desc.platform = image.manifest.platform;
      index.manifests = [...index.manifests.filter((d) => !same(d)), desc];
      this.writeIndex(index);
      if (replaced.length > 0) this.collect(index);
      return replaced.map((d) => this.toStored(d));
    });
  }

  /**
   * Removes the images named `ref` (or with that manifest digest), and the
   * blobs no remaining image uses. Returns what was removed.
   * @throws NotFoundError when none matches.
   */
  async remove(match: (image: StoredImage) => boolean, what: string): Promise<StoredImage[]> {
    return this.locked(() => {
      const index = this.readIndex();
      const gone = index.manifests.filter((d) => match(this.toStored(d)));
      if (gone.length === 0) throw new NotFoundError(`no image ${what} in the image store ${this.dir}; list them with \`image ls\``);
      index.manifests = index.manifests.filter((d) => !gone.includes(d));
      this.writeIndex(index);
      this.collect(index);
      return gone.map((d) => this.toStored(d));
    });
  }

  private toStored(d: Descriptor): StoredImage {
    const s: StoredImage = { manifest: d, chainId: d.annotations?.[CHAIN_ANNOTATION] ?? '' };
    const ref = d.annotations?.[REF_ANNOTATION];
    if (ref !== undefined) s.ref = ref;
    return s;
  }

  private writeIndex(index: Index): void {
    writeAtomic(join(this.dir, 'index.json'), canonicalJson({ schemaVersion: 2, mediaType: MEDIA.ociIndex, manifests: index.manifests }));
  }

  /** Deletes blobs (and layer records) that no indexed image and no live import uses. Called under the lock. */
  private collect(index: Index): void {
    const keep = new Set<string>();
    for (const d of index.manifests) {
      keep.add(d.digest);
      try {
        const m = parseManifest(this.readBlob(d.digest, MAX_MANIFEST_BYTES), `stored manifest ${d.digest}`);
        keep.add(m.config.digest);
        for (const l of m.layers) keep.add(l.digest);
      } catch (err) {
        // Keep everything rather than guess what a damaged image used.
        debug('not collecting: manifest %s unreadable: %o', d.digest, err);
        return;
      }
    }
    for (const digest of this.leased()) keep.add(digest);
    const removed = new Set<string>();
    for (const hex of readdirSync(join(this.dir, 'blobs', 'sha256'))) {
      if (!/^[0-9a-f]{64}$/.test(hex) || keep.has(`sha256:${hex}`)) continue;
      rmSync(join(this.dir, 'blobs', 'sha256', hex), { force: true });
      removed.add(`sha256:${hex}`);
    }
    for (const name of readdirSync(join(this.dir, 'layers'))) {
      const m = /^([0-9a-f]{64})\.json$/.exec(name);
      if (!m) continue;
      const rec = this.layer(`sha256:${m[1]}`);
      if (rec === undefined || removed.has(rec.blob.digest) || !this.hasBlob(rec.blob.digest)) rmSync(join(this.dir, 'layers', name), { force: true });
    }
    debug('collected %d blobs from %s', removed.size, this.dir);
  }

  /** Digests held by leases of live imports; leases of dead ones are deleted. */
  private leased(): Set<string> {
    const out = new Set<string>();
    for (const name of readdirSync(join(this.dir, 'leases'))) {
      const path = join(this.dir, 'leases', name);
      let lines: string[];
      try {
        lines = readFileSync(path, 'utf8').split('\n');
      } catch {
        continue;
      }
      if (ownerAlive(lines[0] ?? '') === false) {
        rmSync(path, { force: true });
        continue;
      }
      for (const l of lines.slice(1)) if (l !== '') out.add(l);
    }
    return out;
  }

  /** Removes ingest files, leases and temp files whose writer is gone. */
  sweep(): void {
    for (const name of readdirSync(join(this.dir, 'ingest'))) {
      const owner = decodeURIComponent(name.slice(0, name.lastIndexOf('.')));
      if (ownerAlive(owner) === false) {
        debug('removing ingest leftover %s', name);
        rmSync(join(this.dir, 'ingest', name), { force: true });
      }
    }
    this.leased();
  }

  /** Runs `fn` holding the store's lock (a file naming its holder; a dead holder's lock is broken). */
  private async locked<T>(fn: () => T): Promise<T> {
    const path = join(this.dir, 'lock');
    const deadline = Date.now() + LOCK_WAIT_MS;
    for (;;) {
      try {
        writeFileSync(path, ownerValue(), { flag: 'wx', mode: 0o600 });
        break;
      } catch (err) {
        if (errno(err) !== 'EEXIST') throw err;
      }
      let holder = '';
      try {
        holder = readFileSync(path, 'utf8');
      } catch {
        continue;
      }
      // Two waiters may both find the same dead holder; the second's unlink could then remove the
      // first's fresh lock. Rare (a holder died, and two processes wait), and it costs at worst a
      // lost index.json update, which the next import of that image makes again.
      if (holder !== '' && ownerAlive(holder) === false) {
        debug('breaking the lock of %s, held by a dead process (%s)', this.dir, holder);
        try {
          unlinkSync(path);
        } catch {
          /* someone else broke it */
        }
        continue;
      }
      if (Date.now() > deadline) throw new UnavailableError(`the image store ${this.dir} is locked by another process (${holder}); try again when it is done`);
      await new Promise((r) => setTimeout(r, 20));
    }
    try {
      return fn();
    } finally {
      rmSync(path, { force: true });
    }
  }
}
