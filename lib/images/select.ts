/**
 * Choosing the image to import from a source: by name (`ref`), then by
 * platform in a multi-platform index, and reading (and verifying) its
 * manifest and config. Works on OCI layouts (`index.json`) and docker
 * archives (`manifest.json`); a docker 25+ archive, which holds both, is
 * read as the OCI layout it also is.
 */
import { createHash } from 'node:crypto';
import { InvalidArgumentError, NotFoundError } from '../model/errors.js';
import {
  CONTAINERD_NAME_ANNOTATION,
  type Compression,
  type Descriptor,
  type ImageConfig,
  MAX_CONFIG_BYTES,
  MAX_MANIFEST_BYTES,
  MEDIA,
  REF_ANNOTATION,
  layerCompression,
  parseArchiveManifest,
  parseConfig,
  parseIndex,
  parseManifest,
  type Platform,
} from './media.js';
import { formatPlatform, platformMatches } from './platform.js';
import { type SourceReader, checkRelPath } from './source.js';

/** One layer of the chosen image, and where its bytes are. */
export interface SourceLayer {
  /** Path of the layer's file in the source. */
  path: string;
  /** From the config's `rootfs.diff_ids`. */
  diffId: string;
  /** The blob's descriptor (OCI); absent in a docker archive, whose manifest names files, not digests. */
  desc?: Descriptor;
  /** Declared by the media type (OCI); found from the first bytes otherwise. */
  compression?: Compression;
  /** Bytes of the file. */
  size: number;
}

/** The image a source holds under the ref and platform asked for. */
export interface SelectedImage {
  /** `oci` for a layout (dir or tar), `docker` for a docker archive's manifest.json. */
  format: 'oci' | 'docker';
  /** The name it carries in the source (ref annotation or first matching tag), if any. */
  ref?: string;
  /** The manifest's descriptor and bytes (OCI; for docker archives the import writes one). */
  manifest?: { desc: Descriptor; bytes: Buffer };
  config: { digest: string; bytes: Buffer; value: ImageConfig; mediaType: string };
  layers: SourceLayer[];
  platform: Platform;
}

export function blobPath(digest: string): string {
  return `blobs/${digest.replace(':', '/')}`;
}

export function sha256(bytes: Buffer): string {
  return `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
}

/** A JSON blob, checked against its descriptor: declared size within `max`, actual size and digest as declared. */
export function readBlob(src: SourceReader, desc: Descriptor, max: number, what: string): Buffer {
  if (desc.size > max) throw new InvalidArgumentError(`${what} ${desc.digest} declares ${desc.size} bytes, more than the ${max} allowed; refusing to read it`);
  const bytes = src.read(blobPath(desc.digest), max);
  if (bytes.length !== desc.size) throw new InvalidArgumentError(`${what} ${desc.digest} is ${bytes.length} bytes, its descriptor says ${desc.size}`);
  const actual = sha256(bytes);
  if (actual !== desc.digest) throw new InvalidArgumentError(`${what} ${desc.digest} does not match its digest (its content hashes to ${actual})`);
  return bytes;
}

const DOCKER_HUB = 'docker.io';

/** A docker reference in full (`docker.io/library/busybox:latest`), or undefined if `ref` is not one. */
export function normalizeRef(ref: string): string | undefined {
  const m = /^((?:[a-zA-Z0-9.-]+(?::[0-9]+)?\/)?[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:\/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*)(?::([\w][\w.-]{0,127}))?(@sha256:[0-9a-f]{64})?$/.exec(ref);
  if (!m) return undefined;
  let name = m[1]!;
  const slash = name.indexOf('/');
  const first = slash < 0 ? '' : name.slice(0, slash);
  if (slash < 0 || !(first.includes('.') || first.includes(':') || first === 'localhost')) name = `${DOCKER_HUB}/${name}`;
  if (name.startsWith(`${DOCKER_HUB}/`) && !name.slice(DOCKER_HUB.length + 1).includes('/')) name = `${DOCKER_HUB}/library/${name.slice(DOCKER_HUB.length + 1)}`;
  const tag = m[2] ?? (m[3] ? undefined : 'latest');
  return `${name}${tag !== undefined ? `:${tag}` : ''}${m[3] ?? ''}`;
}

/** Whether the name `have` (from the source) answers to `want`: the same string, or the same docker reference. */
export function refMatches(want: string, have: string): boolean {
  if (want === have) return true;
  const a = normalizeRef(want);
  return a !== undefined && a === normalizeRef(have);
}

/** The names of an index entry, the one the image is stored under first. */
function names(desc: Descriptor): string[] {
  const a = desc.annotations ?? {};
  const ref = a[REF_ANNOTATION];
  const full = a[CONTAINERD_NAME_ANNOTATION];
  // containerd's exports put the name in io.containerd.image.name and only its tag in ref.name.
  const order = typeof ref === 'string' && typeof full === 'string' && full.endsWith(`:${ref}`) ? [full, ref] : [ref, full];
  return order.filter((n): n is string => typeof n === 'string' && n !== '');
}

function isIndexType(t: string): boolean {
  return t === MEDIA.ociIndex || t === MEDIA.dockerList;
}

function isManifestType(t: string): boolean {
  return t === MEDIA.ociManifest || t === MEDIA.dockerManifest;
}

/** BuildKit's provenance/SBOM manifests sit in indexes beside the images, as `unknown/unknown`. */
function isAttestation(desc: Descriptor): boolean {
  return desc.annotations?.['vnd.docker.reference.type'] === 'attestation-manifest' || (desc.platform?.os === 'unknown' && desc.platform.architecture === 'unknown');
}

interface Candidate {
  desc: Descriptor;
  ref?: string;
}

function describeRefs(list: readonly string[]): string {
  return list.length === 0 ? 'none' : list.map((r) => JSON.stringify(r)).join(', ');
}

function checkPlatform(config: ImageConfig, want: Platform, explicit: boolean, what: string): Platform {
  const have: Platform = { os: config.os, architecture: config.architecture };
  if (typeof config.variant === 'string' && config.variant !== '') have.variant = config.variant;
  if (!platformMatches(want, have)) {
    throw new NotFoundError(
      `${what} is for ${formatPlatform(have)}, not ${formatPlatform(want)}${explicit ? '' : ' (this machine)'}; pass platform ${formatPlatform(have)} to import it anyway`,
    );
  }
  return have;
}

function selectOci(src: SourceReader, want: string | undefined, platform: Platform, explicit: boolean): SelectedImage {
  const index = parseIndex(src.read('index.json', MAX_MANIFEST_BYTES), `${src.path}: index.json`);
  let top: Candidate[] = index.manifests.map((desc) => {
    const c: Candidate = { desc };
    const n = names(desc);
    if (n[0] !== undefined) c.ref = n[0];
    return c;
  });
  if (want !== undefined) {
    const all = top.flatMap((c) => names(c.desc));
    top = top.filter((c) => names(c.desc).some((n) => refMatches(want, n)));
    if (top.length === 0) throw new NotFoundError(`${src.path}: no image named ${JSON.stringify(want)}; it has ${describeRefs([...new Set(all)])}`);
    for (const c of top) c.ref = names(c.desc).find((n) => refMatches(want, n))!;
  }
  // Open nested indexes (multi-platform images) one level down; their manifests keep the name.
  const found: Candidate[] = [];
  for (const c of top) {
    if (isIndexType(c.desc.mediaType)) {
      const nested = parseIndex(readBlob(src, c.desc, MAX_MANIFEST_BYTES, 'index'), `${src.path}: index ${c.desc.digest}`);
      for (const d of nested.manifests) if (isManifestType(d.mediaType)) found.push(c.ref === undefined ? { desc: d } : { desc: d, ref: c.ref });
    } else if (isManifestType(c.desc.mediaType)) {
      found.push(c);
    }
  }
  const images = found.filter((c) => !isAttestation(c.desc));
  if (images.length === 0) throw new NotFoundError(`${src.path}: no image manifest${want === undefined ? '' : ` named ${JSON.stringify(want)}`} in index.json`);
  const fitting = images.filter((c) => c.desc.platform === undefined || platformMatches(platform, c.desc.platform));
  if (fitting.length === 0) {
    const have = [...new Set(images.map((c) => formatPlatform(c.desc.platform!)))];
    throw new NotFoundError(`${src.path}: no image for platform ${formatPlatform(platform)}${explicit ? '' : ' (this machine)'}; it has ${have.join(', ')}`);
  }
  // Several entries may be the same manifest under several names; distinct manifests need a choice.
  const digests = [...new Set(fitting.map((c) => c.desc.digest))];
  if (digests.length > 1) {
    const refs = [...new Set(fitting.map((c) => c.ref).filter((r): r is string => r !== undefined))];
    const platformsDiffer = new Set(fitting.map((c) => (c.desc.platform ? formatPlatform(c.desc.platform) : ''))).size > 1;
    throw new InvalidArgumentError(
      `${src.path}: ${digests.length} images match${want === undefined ? '' : ` ${JSON.stringify(want)}`}; choose one by ${platformsDiffer ? 'platform' : 'ref'} (refs: ${describeRefs(refs)})`,
    );
  }
  const chosen = fitting[0]!;
  const manifestBytes = readBlob(src, chosen.desc, MAX_MANIFEST_BYTES, 'manifest');
  const manifest = parseManifest(manifestBytes, `${src.path}: manifest ${chosen.desc.digest}`);
  const configBytes = readBlob(src, manifest.config, MAX_CONFIG_BYTES, 'config');
  const config = parseConfig(configBytes, `${src.path}: config ${manifest.config.digest}`);
  const have = checkPlatform(config, platform, explicit, `${src.path}: image ${chosen.ref ?? chosen.desc.digest}`);
  const diffIds = config.rootfs.diff_ids;
  if (diffIds.length !== manifest.layers.length) {
    throw new InvalidArgumentError(`${src.path}: manifest ${chosen.desc.digest} has ${manifest.layers.length} layers but its config lists ${diffIds.length} diff_ids`);
  }
  const layers = manifest.layers.map((desc, i): SourceLayer => {
    const what = `${src.path}: layer ${i} (${desc.digest})`;
    const compression = layerCompression(desc, what);
    if (compression === 'none' && desc.digest !== diffIds[i]) {
      throw new InvalidArgumentError(`${what}: an uncompressed layer's digest must equal its diff_id ${diffIds[i]}`);
    }
    return { path: blobPath(desc.digest), diffId: diffIds[i]!, desc, compression, size: desc.size };
  });
  const selected: SelectedImage = {
    format: 'oci',
    manifest: { desc: chosen.desc, bytes: manifestBytes },
    config: { digest: manifest.config.digest, bytes: configBytes, value: config, mediaType: manifest.config.mediaType },
    layers,
    platform: have,
  };
  if (chosen.ref !== undefined) selected.ref = chosen.ref;
  return selected;
}

function selectDocker(src: SourceReader, want: string | undefined, platform: Platform, explicit: boolean): SelectedImage {
  const entries = parseArchiveManifest(src.read('manifest.json', MAX_MANIFEST_BYTES), `${src.path}: manifest.json`);
  let chosen = entries;
  let ref: string | undefined;
  const allTags = entries.flatMap((e) => e.RepoTags);
  if (want !== undefined) {
    chosen = entries.filter((e) => e.RepoTags.some((t) => refMatches(want, t)));
    if (chosen.length === 0) throw new NotFoundError(`${src.path}: no image tagged ${JSON.stringify(want)}; it has ${describeRefs(allTags)}`);
    ref = chosen[0]!.RepoTags.find((t) => refMatches(want, t));
  }
  if (chosen.length === 0) throw new NotFoundError(`${src.path}: manifest.json lists no image`);
  if (chosen.length > 1) throw new InvalidArgumentError(`${src.path}: ${chosen.length} images; choose one by ref (tags: ${describeRefs(allTags)})`);
  const entry = chosen[0]!;
  ref ??= entry.RepoTags[0];
  const configPath = checkRelPath(entry.Config, `${src.path}: manifest.json Config`);
  const configBytes = src.read(configPath, MAX_CONFIG_BYTES);
  const config = parseConfig(configBytes, `${src.path}: ${configPath}`);
  const have = checkPlatform(config, platform, explicit, `${src.path}: image ${ref ?? configPath}`);
  const diffIds = config.rootfs.diff_ids;
  if (diffIds.length !== entry.Layers.length) {
    throw new InvalidArgumentError(`${src.path}: manifest.json lists ${entry.Layers.length} layers but the config has ${diffIds.length} diff_ids`);
  }
  const layers = entry.Layers.map((p, i): SourceLayer => {
    const path = checkRelPath(p, `${src.path}: manifest.json layer ${i}`);
    return { path, diffId: diffIds[i]!, size: src.size(path) };
  });
  const selected: SelectedImage = {
    format: 'docker',
    config: { digest: sha256(configBytes), bytes: configBytes, value: config, mediaType: MEDIA.dockerConfig },
    layers,
    platform: have,
  };
  if (ref !== undefined) selected.ref = ref;
  return selected;
}

/**
 * The image of `src` named `ref` (any name when omitted, if there is only
 * one) for `platform`, with its manifest and config read and verified.
 * @throws NotFoundError when no image has that name or platform.
 * @throws InvalidArgumentError when several match, or a document is bad.
 */
export function selectImage(src: SourceReader, ref: string | undefined, platform: Platform, explicitPlatform: boolean): SelectedImage {
  if (src.has('index.json')) return selectOci(src, ref, platform, explicitPlatform);
  if (src.has('manifest.json')) return selectDocker(src, ref, platform, explicitPlatform);
  throw new InvalidArgumentError(`${src.path} is neither an OCI image layout (no index.json) nor a docker archive (no manifest.json)`);
}
