/**
 * Helpers for the image tests: OCI image layouts and docker archives made
 * in-process from small layers (so each test can also make them wrong on
 * purpose), and tars of directories.
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { createRequire } from 'node:module';
import { packTar } from './layers.js';

const zstd = createRequire(import.meta.url)('@bokuweb/zstd-wasm') as { init(): Promise<void>; compress(b: Uint8Array, level?: number): Uint8Array };
let zstdReady: Promise<void> | undefined;

export function sha(bytes: Buffer): string {
  return `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
}

export type LayerCompression = 'gzip' | 'zstd' | 'none';

export const MEDIA_LAYER: Record<LayerCompression, string> = {
  none: 'application/vnd.oci.image.layer.v1.tar',
  gzip: 'application/vnd.oci.image.layer.v1.tar+gzip',
  zstd: 'application/vnd.oci.image.layer.v1.tar+zstd',
};

/** A layer tar of files (`path -> content`, a trailing `/` makes a directory). */
export async function layerTar(files: Record<string, string>): Promise<Buffer> {
  return packTar(
    Object.entries(files).map(([name, content]) =>
      name.endsWith('/') ? { header: { name, type: 'directory', mode: 0o755 } } : { header: { name, type: 'file', mode: 0o644 }, body: content },
    ),
  );
}

export async function compress(tar: Buffer, compression: LayerCompression): Promise<Buffer> {
  if (compression === 'gzip') return gzipSync(tar);
  if (compression === 'zstd') {
    zstdReady ??= zstd.init();
    await zstdReady;
    return Buffer.from(zstd.compress(tar, 3));
  }
  return tar;
}

export interface TestImage {
  ref?: string;
  layers: Buffer[];
  compression?: LayerCompression;
  platform?: { os: string; architecture: string; variant?: string };
  /** Extra fields of the config's `config`. */
  run?: Record<string, unknown>;
}

export interface WrittenImage {
  manifest: { digest: string; size: number; bytes: Buffer };
  config: { digest: string; bytes: Buffer };
  layers: { digest: string; size: number; diffId: string; mediaType: string }[];
  diffIds: string[];
}

export function writeBlob(layout: string, bytes: Buffer): string {
  const digest = sha(bytes);
  mkdirSync(join(layout, 'blobs', 'sha256'), { recursive: true });
  writeFileSync(join(layout, 'blobs', 'sha256', digest.slice(7)), bytes);
  return digest;
}

/** Writes the blobs of one image into `layout` and returns their digests (index.json is the caller's). */
export async function writeImage(layout: string, image: TestImage): Promise<WrittenImage> {
  const compression = image.compression ?? 'gzip';
  const platform = image.platform ?? { os: 'linux', architecture: 'amd64' };
  const layers: WrittenImage['layers'] = [];
  for (const tar of image.layers) {
    const blob = await compress(tar, compression);
    layers.push({ digest: writeBlob(layout, blob), size: blob.length, diffId: sha(tar), mediaType: MEDIA_LAYER[compression] });
  }
  const diffIds = layers.map((l) => l.diffId);
  const config = Buffer.from(
    JSON.stringify({
      architecture: platform.architecture,
      os: platform.os,
      ...(platform.variant ? { variant: platform.variant } : {}),
      config: { Env: ['PATH=/bin'], ...image.run },
      rootfs: { type: 'layers', diff_ids: diffIds },
      history: diffIds.map((_, i) => ({ created_by: `step ${i}` })),
    }),
  );
  const configDigest = writeBlob(layout, config);
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: configDigest, size: config.length },
      layers: layers.map((l) => ({ mediaType: l.mediaType, digest: l.digest, size: l.size })),
    }),
  );
  const manifestDigest = writeBlob(layout, manifest);
  return { manifest: { digest: manifestDigest, size: manifest.length, bytes: manifest }, config: { digest: configDigest, bytes: config }, layers, diffIds };
}

/** An OCI layout holding `images`, each listed in index.json under its ref (and platform). */
export async function makeLayout(layout: string, images: TestImage[]): Promise<WrittenImage[]> {
  mkdirSync(layout, { recursive: true });
  writeFileSync(join(layout, 'oci-layout'), '{"imageLayoutVersion":"1.0.0"}');
  const written: WrittenImage[] = [];
  const manifests: unknown[] = [];
  for (const image of images) {
    const w = await writeImage(layout, image);
    written.push(w);
    manifests.push({
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      digest: w.manifest.digest,
      size: w.manifest.size,
      ...(image.ref ? { annotations: { 'org.opencontainers.image.ref.name': image.ref } } : {}),
      ...(image.platform ? { platform: image.platform } : {}),
    });
  }
  writeIndex(layout, manifests);
  return written;
}

export function writeIndex(layout: string, manifests: unknown[]): void {
  writeFileSync(join(layout, 'index.json'), JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.index.v1+json', manifests }));
}

/** A docker archive (`docker save`'s classic format: `<id>/layer.tar`, `<config>.json`, manifest.json) of one image, as a directory. */
export async function makeDockerDir(dir: string, image: TestImage & { tags?: string[] }): Promise<{ diffIds: string[] }> {
  mkdirSync(dir, { recursive: true });
  const diffIds = image.layers.map((t) => sha(t));
  const paths: string[] = [];
  for (const [i, tar] of image.layers.entries()) {
    const id = createHash('sha256').update(`layer ${i} ${diffIds[i]}`).digest('hex');
    mkdirSync(join(dir, id));
    writeFileSync(join(dir, id, 'layer.tar'), await compress(tar, image.compression ?? 'none'));
    paths.push(`${id}/layer.tar`);
  }
  const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', config: {}, rootfs: { type: 'layers', diff_ids: diffIds } }));
  const configName = `${sha(config).slice(7)}.json`;
  writeFileSync(join(dir, configName), config);
  writeFileSync(join(dir, 'manifest.json'), JSON.stringify([{ Config: configName, RepoTags: image.tags ?? [], Layers: paths }]));
  return { diffIds };
}

/** GNU tar of a directory's contents (what `docker save` or an OCI layout tar looks like). */
export function tarDir(dir: string, file: string): void {
  execFileSync('tar', ['-cf', file, '-C', dir, '.']);
}
