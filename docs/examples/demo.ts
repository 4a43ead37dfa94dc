/**
 * Demo: import two layer tarballs, prepare a container on them, mount it, show
 * what the container sees, then unmount and clean up.
 *
 *   npm run demo                 # temporary root, removed afterwards
 *   npm run demo -- --root DIR   # keep the store in DIR
 */
import { mkdtempSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync, lstatSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { Readable } from 'node:stream';
import tar from 'tar-stream';
import { Snapshotter, importLayers, mountAll, unmountAll, type Mount } from 'overlay-snapshotter';

const { values } = parseArgs({ options: { root: { type: 'string' }, help: { type: 'boolean', short: 'h' } } });
if (values.help) {
  console.log('usage: npm run demo [-- --root DIR]');
  process.exit(0);
}

const scratch = mkdtempSync(join(tmpdir(), 'overlay-snapshotter-demo-'));
const root = values.root ?? join(scratch, 'root');
const target = join(scratch, 'rootfs');
mkdirSync(target);

/** Mounts `mounts` on the scratch target, runs `fn`, and always unmounts. */
async function mounted(mounts: Mount[], fn: (dir: string) => void): Promise<void> {
  await mountAll(mounts, target);
  try {
    fn(target);
  } finally {
    await unmountAll(target);
  }
}

function show(dir: string, prefix = ''): void {
  for (const name of readdirSync(dir).sort()) {
    const path = join(dir, name);
    const st = lstatSync(path);
    if (st.isDirectory()) {
      console.log(`  ${prefix}${name}/`);
      show(path, `${prefix}${name}/`);
    } else {
      console.log(`  ${prefix}${name}  ${JSON.stringify(readFileSync(path, 'utf8').trim())}`);
    }
  }
}

/** A layer tarball made in memory: `files` maps paths to contents ('' + trailing / for a dir). */
async function layerTar(files: Record<string, string>): Promise<Buffer> {
  const pack = tar.pack();
  for (const [name, body] of Object.entries(files)) {
    if (name.endsWith('/')) pack.entry({ name, type: 'directory', mode: 0o755 });
    else pack.entry({ name, mode: 0o644 }, body);
  }
  pack.finalize();
  const chunks: Buffer[] = [];
  for await (const chunk of pack) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

const sn = await Snapshotter.open(root);
let top: string | undefined;
const layers: string[] = [];
try {
  console.log(`store: ${root}`);

  // Two image layers as OCI tarballs: the second changes a file, deletes
  // one (an OCI whiteout, .wh.<name>) and adds one.
  const layer1 = await layerTar({
    'etc/': '',
    'etc/os-release': 'NAME=demo\n',
    'hello.txt': 'hello from layer 1\n',
    'obsolete.txt': 'to be deleted by layer 2\n',
  });
  const layer2 = await layerTar({
    'hello.txt': 'hello from layer 2\n',
    '.wh.obsolete.txt': '',
    'app.sh': 'echo running\n',
  });
  top = await importLayers(sn, [Readable.from([layer1]), Readable.from([layer2])], {
    onLayer: ({ index, chainID }) => {
      layers.unshift(chainID);
      console.log(`imported layer ${index + 1} as ${chainID.slice(0, 19)}…`);
    },
  });

  // A container on the image.
  const container = `demo-container-${Date.now().toString(36)}`;
  const mounts = await sn.prepare(container, top);
  console.log('container mount spec:');
  console.log(`  ${mounts[0]!.type} ${mounts[0]!.source} ${mounts[0]!.options.join(',')}`);
  await mounted(mounts, (d) => {
    writeFileSync(join(d, 'scratch.log'), 'written by the container\n');
    console.log('the container sees:');
    show(d);
  });
  const usage = await sn.usage(container);
  console.log(`container upper layer: ${usage.size} bytes in ${usage.inodes} inodes`);

  // Tear down: the container first, then the layers, children before parents.
  for (const key of [container, ...layers]) await sn.remove(key);
  await sn.cleanup();
  console.log('removed the container and both layers; done');
} finally {
  await sn.close();
  await unmountAll(target);
  rmSync(scratch, { recursive: true, force: true });
}
