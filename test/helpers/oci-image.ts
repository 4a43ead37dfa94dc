/**
 * A two-layer OCI image archive built from busybox-static, for the
 * containerd tests: layer 1 holds busybox and two files in /etc, layer 2
 * adds a file and deletes one of layer 1 with an OCI whiteout.
 */
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import tar from 'tar-stream';

export const BUSYBOX = '/bin/busybox';

/** What the image's files say, for checks of what a container sees. */
export const IMAGE_FILES = {
  layer1: 'written by layer 1\n',
  doomed: 'deleted by layer 2\n',
  layer2: 'written by layer 2\n',
} as const;

type Entry = { name: string; type: 'directory' } | { name: string; type: 'file'; body: Buffer | string; mode?: number } | { name: string; type: 'symlink'; target: string };

/** Same bytes every time: fixed times, owners and order. */
async function tarOf(entries: Entry[]): Promise<Buffer> {
  const pack = tar.pack();
  const chunks: Buffer[] = [];
  pack.on('data', (c: unknown) => chunks.push(c as Buffer));
  const done = new Promise<void>((resolve, reject) => {
    pack.on('end', resolve);
    pack.on('error', reject);
  });
  const common = { uid: 0, gid: 0, mtime: new Date(1_700_000_000_000) };
  for (const e of entries) {
    if (e.type === 'directory') pack.entry({ ...common, name: `${e.name}/`, type: 'directory', mode: 0o755 });
    else if (e.type === 'symlink') pack.entry({ ...common, name: e.name, type: 'symlink', linkname: e.target, mode: 0o777 });
    else pack.entry({ ...common, name: e.name, type: 'file', mode: e.mode ?? 0o644 }, typeof e.body === 'string' ? Buffer.from(e.body) : e.body);
  }
  pack.finalize();
  await done;
  return Buffer.concat(chunks);
}

function digest(data: Buffer | string): string {
  return `sha256:${createHash('sha256').update(data).digest('hex')}`;
}

function ociArch(): string {
  return process.arch === 'x64' ? 'amd64' : process.arch;
}

/**
 * Writes an OCI image layout archive (`ctr images import` reads it) named
 * `name` to `file`, and returns the layers' digests (uncompressed, so each
 * is also its diffID).
 */
export async function writeBusyboxImage(file: string, name: string): Promise<{ layers: string[] }> {
  const layer1 = await tarOf([
    { name: 'bin', type: 'directory' },
    { name: 'bin/busybox', type: 'file', body: readFileSync(BUSYBOX), mode: 0o755 },
    ...['sh', 'cat', 'ls', 'echo'].map((tool): Entry => ({ name: `bin/${tool}`, type: 'symlink', target: 'busybox' })),
    { name: 'etc', type: 'directory' },
    { name: 'etc/layer1.txt', type: 'file', body: IMAGE_FILES.layer1 },
    { name: 'etc/doomed.txt', type: 'file', body: IMAGE_FILES.doomed },
    ...['dev', 'proc', 'sys', 'tmp'].map((dir): Entry => ({ name: dir, type: 'directory' })),
  ]);
  const layer2 = await tarOf([
    { name: 'etc', type: 'directory' },
    { name: 'etc/layer2.txt', type: 'file', body: IMAGE_FILES.layer2 },
    // An OCI whiteout: the file of the same name in lower layers is deleted.
    { name: 'etc/.wh.doomed.txt', type: 'file', body: '' },
  ]);
  const layers = [layer1, layer2].map(digest);
  const config = JSON.stringify({
    architecture: ociArch(),
    os: 'linux',
    config: { Env: ['PATH=/bin'], Cmd: ['/bin/sh'] },
    rootfs: { type: 'layers', diff_ids: layers },
  });
  const manifest = JSON.stringify({
    schemaVersion: 2,
    mediaType: 'application/vnd.oci.image.manifest.v1+json',
    config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: digest(config), size: Buffer.byteLength(config) },
    layers: [layer1, layer2].map((l) => ({ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: digest(l), size: l.length })),
  });
  const index = JSON.stringify({
    schemaVersion: 2,
    mediaType: 'application/vnd.oci.image.index.v1+json',
    manifests: [
      {
        mediaType: 'application/vnd.oci.image.manifest.v1+json',
        digest: digest(manifest),
        size: Buffer.byteLength(manifest),
        platform: { architecture: ociArch(), os: 'linux' },
        annotations: { 'io.containerd.image.name': name, 'org.opencontainers.image.ref.name': name.slice(name.lastIndexOf(':') + 1) },
      },
    ],
  });
  const blobs = [layer1, layer2, Buffer.from(config), Buffer.from(manifest)];
  const archive = await tarOf([
    { name: 'oci-layout', type: 'file', body: JSON.stringify({ imageLayoutVersion: '1.0.0' }) },
    { name: 'index.json', type: 'file', body: index },
    { name: 'blobs', type: 'directory' },
    { name: 'blobs/sha256', type: 'directory' },
    ...blobs.map((b): Entry => ({ name: `blobs/sha256/${digest(b).slice('sha256:'.length)}`, type: 'file', body: b })),
  ]);
  writeFileSync(file, archive);
  return { layers };
}
