/**
 * A minimal image builder, end to end: import a base image (an OCI layout
 * made here on the spot; any `skopeo copy … oci:DIR`, `umoci` or
 * `docker save` output works the same), prepare a build step on it, run
 * the step (here: write files into the mounted tree), commit it, and
 * export the result as an OCI image layout and a docker archive.
 *
 *   sudo npx tsx docs/examples/builder.ts                 # temporary root and output, removed afterwards
 *   sudo npx tsx docs/examples/builder.ts -- --out DIR    # keep the exported image in DIR (and DIR.tar)
 *
 * Needs root (mounting). If skopeo is installed, it shows what skopeo
 * reads from the export.
 */
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { gzipSync } from 'node:zlib';
import tar from 'tar-stream';
import { Snapshotter, exportImage, importImage, mountAll, unmountAll } from 'overlay-snapshotter';

const { values } = parseArgs({ options: { out: { type: 'string' }, help: { type: 'boolean', short: 'h' } } });
if (values.help) {
  console.log('usage: npx tsx docs/examples/builder.ts [-- --out DIR]');
  process.exit(0);
}

const scratch = mkdtempSync(join(tmpdir(), 'overlay-snapshotter-builder-'));
const out = values.out ?? join(scratch, 'my-app-oci');

/** A gzip'd layer tarball of `files` (path -> content; a trailing / makes a directory). */
async function layer(files: Record<string, string>): Promise<Buffer> {
  const pack = tar.pack();
  const chunks: Buffer[] = [];
  pack.on('data', (c: Buffer) => chunks.push(c));
  const done = new Promise<void>((resolve) => pack.on('end', () => resolve()));
  for (const [name, content] of Object.entries(files)) {
    const header = { name, mtime: new Date(1_600_000_000_000), uid: 0, gid: 0 };
    if (name.endsWith('/')) pack.entry({ ...header, type: 'directory', mode: 0o755 });
    else pack.entry({ ...header, type: 'file', mode: name.startsWith('bin/') ? 0o755 : 0o644 }, content);
  }
  pack.finalize();
  await done;
  return Buffer.concat(chunks);
}

const sha = (b: Buffer): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;

/** Writes a one-layer OCI image layout, `base:latest`, standing in for a real base image. */
async function makeBase(dir: string): Promise<void> {
  const tarball = await layer({ 'etc/': '', 'etc/os-release': 'NAME=example\n', 'bin/': '', 'bin/hello': '#!/bin/sh\necho hello\n' });
  const blob = gzipSync(tarball);
  const config = Buffer.from(
    JSON.stringify({ architecture: 'amd64', os: 'linux', config: { Env: ['PATH=/bin'] }, rootfs: { type: 'layers', diff_ids: [sha(tarball)] }, history: [{ created_by: 'base layer' }] }),
  );
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: sha(config), size: config.length },
      layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: sha(blob), size: blob.length }],
    }),
  );
  mkdirSync(join(dir, 'blobs', 'sha256'), { recursive: true });
  for (const b of [blob, config, manifest]) writeFileSync(join(dir, 'blobs', 'sha256', sha(b).slice(7)), b);
  writeFileSync(join(dir, 'oci-layout'), '{"imageLayoutVersion":"1.0.0"}');
  writeFileSync(
    join(dir, 'index.json'),
    JSON.stringify({ schemaVersion: 2, manifests: [{ mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: sha(manifest), size: manifest.length, annotations: { 'org.opencontainers.image.ref.name': 'latest' } }] }),
  );
}

const sn = await Snapshotter.open(join(scratch, 'root'));
const rootfs = join(scratch, 'rootfs');
mkdirSync(rootfs);
try {
  // 1. Import the base image.
  await makeBase(join(scratch, 'base'));
  const base = await importImage(sn, join(scratch, 'base'), { ref: 'latest', platform: 'linux/amd64' });
  console.log(`imported base: ${base.layers.length} layer(s), top ${base.chainId}`);

  // 2. Prepare a build step on it. 3. Run the step in the mounted tree.
  await mountAll(await sn.prepare('step-1', base.chainId), rootfs);
  try {
    mkdirSync(join(rootfs, 'app'));
    writeFileSync(join(rootfs, 'app', 'main.sh'), '#!/bin/sh\nhello\necho "built by the example"\n', { mode: 0o755 });
    writeFileSync(join(rootfs, 'etc', 'os-release'), 'NAME=example\nVARIANT=my-app\n');
  } finally {
    await unmountAll(rootfs);
  }

  // 4. Commit the step: more steps could be prepared on it.
  await sn.commit('my-app-step-1', 'step-1');

  // 5. Export: the base layer reuses its imported blob, the step is diffed.
  const options = {
    ref: 'my-app:1.0',
    config: { Cmd: ['/app/main.sh'] },
    history: [{ created_by: 'COPY main.sh /app/' }],
    sourceDateEpoch: 1_700_000_000,
  };
  const image = await exportImage(sn, 'my-app-step-1', out, options);
  for (const l of image.layers) console.log(`  layer ${l.digest} ${l.status} (${l.size} bytes)`);
  console.log(`exported ${image.ref} to ${out}: manifest ${image.manifestDigest}`);
  const archive = await exportImage(sn, 'my-app-step-1', `${out}.tar`, { ...options, format: 'docker-archive' });
  console.log(`and as a docker archive (docker load -i ${archive.target}), top chain ID ${archive.chainId}`);

  const skopeo = spawnSync('skopeo', ['inspect', `oci:${out}:my-app:1.0`], { encoding: 'utf8' });
  if (skopeo.status === 0) console.log(`skopeo inspect:\n${skopeo.stdout}`);
} finally {
  await sn.close();
  rmSync(rootfs, { recursive: true, force: true });
  if (values.out === undefined) rmSync(scratch, { recursive: true, force: true });
  else rmSync(join(scratch, 'root'), { recursive: true, force: true });
}
