/**
 * Whole-image import and export against the layer toolkit on the same data.
 *
 *   npx tsx bench/images.ts [--quick] [--json FILE] [--dir DIR] [--compression none|gzip] [--keep]
 *
 * Data: a three-layer image of 1 GiB (512 + 256 + 256 MiB in files of
 * ~100 KiB; --quick: a tenth), as an OCI image layout whose layer blobs
 * are plain tars (default) or gzip (level 1).
 *
 * Import: `importLayers` of the three blob files with their diffIDs (the
 * toolkit directly) vs `importImage` of the layout (which also reads
 * index.json, manifest and config, verifies every blob's digest and size
 * as it streams, and keeps each blob in the image store: a hard link for
 * a layout directory on the same filesystem, a copy written as it is read
 * for a tar) and of the same layout as a tar: its copies written past the
 * page cache (O_DIRECT, the default), and through it
 * (OVERLAY_SNAPSHOTTER_DIRECT_IO=0). Best of three interleaved runs, in a
 * different order each time, each into a fresh snapshotter root, `sync`
 * before each; nothing is deleted until the end (see bench/layers.ts for
 * why).
 *
 * Export, on the imported image with a small top layer (16 files of
 * 64 KiB) in an active: exportImage into a new layout (the base blobs are
 * hard-linked in; and with linkBlobs: false, copied), into a layout that holds
 * the base already (only the new layer is written), the diff of the top
 * layer alone (diffSnapshot, gzip: the floor), and, once, an export that
 * cannot reuse the base (an empty image store: every layer re-diffed).
 * Needs root and about 16 GiB free under --dir (default $TMPDIR or /tmp).
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream, mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import zlib from 'node:zlib';
import { Snapshotter, diffSnapshot, exportImage, importImage, importLayers, mountAll, unmountAll } from '../lib/index.js';

const args = process.argv.slice(2);
const quick = args.includes('--quick');
const keep = args.includes('--keep');
const flag = (name: string): string | undefined => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};
const jsonFile = flag('--json');
const baseDir = flag('--dir') ?? process.env.TMPDIR ?? tmpdir();
const compression = (flag('--compression') ?? 'none') as 'none' | 'gzip';
if (compression !== 'none' && compression !== 'gzip') throw new Error(`--compression takes none or gzip, not ${compression}`);
const runs = 3;
const MiB = 1024 * 1024;
const layerMiB = quick ? [51, 26, 26] : [512, 256, 256];
const FILE = 107_374;

function sync(): void {
  spawnSync('sync');
}

async function seconds(fn: () => Promise<unknown>): Promise<number> {
  sync();
  const t0 = process.hrtime.bigint();
  await fn();
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

function sha(bytes: Buffer): string {
  return `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
}

async function fileDigest(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(path, { highWaterMark: MiB })) h.update(chunk as Buffer);
  return `sha256:${h.digest('hex')}`;
}

/** Makes the layer trees, tars them, and lays out the image; returns the blob paths and diffIDs. */
async function makeImage(top: string): Promise<{ layout: string; blobs: string[]; diffIds: string[]; bytes: number }> {
  const pool = randomBytes(4 * MiB);
  const layout = join(top, 'layout');
  mkdirSync(join(layout, 'blobs', 'sha256'), { recursive: true });
  const blobs: string[] = [];
  const diffIds: string[] = [];
  const descs: { mediaType: string; digest: string; size: number }[] = [];
  let bytes = 0;
  for (const [l, mib] of layerMiB.entries()) {
    const tree = join(top, `tree${l}`);
    const files = Math.floor((mib * MiB) / FILE);
    for (let i = 0; i < files; i++) {
      const d = join(tree, `l${l}`, `d${i % 100}`);
      if (i < 100) mkdirSync(d, { recursive: true });
      const off = ((i + l * 7) * 7919) % (pool.length - FILE);
      writeFileSync(join(d, `f${i}`), pool.subarray(off, off + FILE));
    }
    const tar = join(top, `layer${l}.tar`);
    execFileSync('tar', ['--numeric-owner', '-cf', tar, '-C', tree, '.']);
    rmSync(tree, { recursive: true });
    diffIds.push(await fileDigest(tar));
    let blob = tar;
    if (compression === 'gzip') {
      blob = `${tar}.gz`;
      await pipeline(createReadStream(tar, { highWaterMark: MiB }), zlib.createGzip({ level: 1 }), createWriteStream(blob));
    }
    const digest = await fileDigest(blob);
    const size = statSync(blob).size;
    bytes += size;
    execFileSync('cp', [blob, join(layout, 'blobs', 'sha256', digest.slice(7))]);
    blobs.push(join(layout, 'blobs', 'sha256', digest.slice(7)));
    descs.push({ mediaType: compression === 'gzip' ? 'application/vnd.oci.image.layer.v1.tar+gzip' : 'application/vnd.oci.image.layer.v1.tar', digest, size });
  }
  const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', config: {}, rootfs: { type: 'layers', diff_ids: diffIds } }));
  writeFileSync(join(layout, 'blobs', 'sha256', sha(config).slice(7)), config);
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: sha(config), size: config.length },
      layers: descs,
    }),
  );
  writeFileSync(join(layout, 'blobs', 'sha256', sha(manifest).slice(7)), manifest);
  writeFileSync(
    join(layout, 'index.json'),
    JSON.stringify({ schemaVersion: 2, manifests: [{ mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: sha(manifest), size: manifest.length, annotations: { 'org.opencontainers.image.ref.name': 'bench' } }] }),
  );
  writeFileSync(join(layout, 'oci-layout'), '{"imageLayoutVersion":"1.0.0"}');
  return { layout, blobs, diffIds, bytes };
}

interface Figure {
  id: string;
  label: string;
  seconds: number;
  samples: number[];
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('bench/images.ts needs root (layers keep owners; overlay uppers need trusted xattrs)');
  const top = mkdtempSync(join(baseDir, 'images-bench-'));
  const figures: Figure[] = [];
  const record = (id: string, label: string, samples: number[]): void => {
    figures.push({ id, label, seconds: Math.min(...samples), samples });
    process.stderr.write(`  ${label}: ${samples.map((s) => s.toFixed(3)).join(' / ')} s\n`);
  };
  try {
    process.stderr.write(`making a ${layerMiB.join(' + ')} MiB image (${compression})\n`);
    const image = await makeImage(top);
    let rootN = 0;
    const freshRoot = (): string => join(top, `root${rootN++}`);

    const archive = join(top, 'layout.tar');
    execFileSync('tar', ['-cf', archive, '-C', image.layout, '.']);

    // Import: toolkit vs importImage of the layout (blobs linked into the store) and of its tar (blobs copied, directly or not), interleaved.
    const samples: number[][] = [[], [], [], []];
    let lastRoot = '';
    const orders = [
      [0, 1, 2, 3],
      [3, 2, 1, 0],
      [1, 3, 0, 2],
    ];
    for (let r = 0; r < runs; r++) {
      for (const side of orders[r % orders.length]!) {
        const root = freshRoot();
        const sn = await Snapshotter.open(root);
        try {
          if (side === 0) {
            samples[0]!.push(await seconds(() => importLayers(sn, image.blobs.map((b, i) => ({ stream: () => createReadStream(b, { highWaterMark: MiB }), diffID: image.diffIds[i]! })))));
          } else if (side === 1) {
            samples[1]!.push(await seconds(() => importImage(sn, image.layout)));
            lastRoot = root;
          } else if (side === 2) {
            samples[2]!.push(await seconds(() => importImage(sn, archive)));
          } else {
            process.env.OVERLAY_SNAPSHOTTER_DIRECT_IO = '0';
            try {
              samples[3]!.push(await seconds(() => importImage(sn, archive)));
            } finally {
              delete process.env.OVERLAY_SNAPSHOTTER_DIRECT_IO;
            }
          }
        } finally {
          await sn.close();
        }
      }
    }
    process.stderr.write('import\n');
    record('import.toolkit', 'importLayers of the 3 blobs (toolkit)', samples[0]!);
    record('import.image', 'importImage of the layout (blobs linked into the store)', samples[1]!);
    record('import.image-tar', 'importImage of the layout as a tar (blobs copied into the store past the page cache)', samples[2]!);
    record('import.image-tar-cached', 'the same, copies through the page cache (OVERLAY_SNAPSHOTTER_DIRECT_IO=0)', samples[3]!);

    // Export, on the last importImage root.
    process.stderr.write('export\n');
    const sn = await Snapshotter.open(lastRoot);
    try {
      const imported = await importImage(sn, image.layout);
      await sn.prepare('build', imported.chainId);
      const mnt = join(top, 'mnt');
      mkdirSync(mnt);
      await mountAll(await sn.mounts('build'), mnt);
      try {
        mkdirSync(join(mnt, 'app'));
        for (let i = 0; i < 16; i++) writeFileSync(join(mnt, 'app', `f${i}`), randomBytes(64 * 1024));
      } finally {
        await unmountAll(mnt);
      }
      const timed = async (fn: (r: number) => Promise<unknown>, n = runs): Promise<number[]> => {
        const out: number[] = [];
        for (let r = 0; r < n; r++) out.push(await seconds(() => fn(r)));
        return out;
      };
      record('export.top-diff', 'diff of the top layer alone (gzip)', await timed((r) => diffSnapshot(sn, 'build', createWriteStream(join(top, `top-${r}.tar.gz`)), { compression: 'gzip' })));
      record('export.fresh-layout', 'exportImage into a new layout (base blobs linked in)', await timed((r) => exportImage(sn, 'build', join(top, `out-${r}`))));
      record('export.fresh-layout-copy', 'exportImage into a new layout, linkBlobs: false (base blobs copied)', await timed((r) => exportImage(sn, 'build', join(top, `outc-${r}`), { linkBlobs: false })));
      await exportImage(sn, 'build', join(top, 'out-same'));
      record('export.same-layout', 'exportImage into a layout holding the base', await timed(() => exportImage(sn, 'build', join(top, 'out-same'))));
      mkdirSync(join(top, 'empty-store'));
      record('export.no-reuse', 'exportImage with no image store (every layer re-diffed, gzip)', await timed(() => exportImage(sn, 'build', join(top, 'out-noreuse'), { store: join(top, 'empty-store') }), 1));
      await sn.remove('build');
    } finally {
      await sn.close();
    }

    const t = Object.fromEntries(figures.map((f) => [f.id, f.seconds]));
    const ratio = t['import.image']! / t['import.toolkit']!;
    console.log(`\n${layerMiB.join(' + ')} MiB image, layers ${compression === 'gzip' ? 'gzip -1' : 'uncompressed'} (${(image.bytes / MiB).toFixed(0)} MiB of blobs); best of ${runs}\n`);
    console.log('| figure | seconds (best) | runs |');
    console.log('|---|---|---|');
    for (const f of figures) console.log(`| ${f.label} | ${f.seconds.toFixed(3)} | ${f.samples.map((s) => s.toFixed(3)).join(', ')} |`);
    console.log(
      `\nimportImage / importLayers: ${ratio.toFixed(2)}× for the layout, ${(t['import.image-tar']! / t['import.toolkit']!).toFixed(2)}× for its tar (goal <= 1.2×); ${(t['import.image-tar-cached']! / t['import.toolkit']!).toFixed(2)}× for the tar with copies through the page cache`,
    );
    console.log(`export over the base, into a layout holding it / top-layer diff: ${(t['export.same-layout']! / t['export.top-diff']!).toFixed(2)}×; no reuse: ${(t['export.no-reuse']! / t['export.same-layout']!).toFixed(0)}× slower`);
    if (jsonFile) {
      writeFileSync(jsonFile, `${JSON.stringify({ quick, runs, compression, layersMiB: layerMiB, blobBytes: image.bytes, dir: baseDir, node: process.version, figures, importRatio: ratio, tarRatio: t['import.image-tar']! / t['import.toolkit']! }, null, 2)}\n`);
    }
  } finally {
    if (!keep) rmSync(top, { recursive: true, force: true });
  }
}

await main();
