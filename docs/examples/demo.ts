/**
 * Demo: import two layers, prepare a container on them, mount it, show
 * what the container sees, then unmount and clean up.
 *
 *   npm run demo                 # temporary root, removed afterwards
 *   npm run demo -- --root DIR   # keep the store in DIR
 */
import { mkdtempSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync, lstatSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { Snapshotter, mountAll, unmountAll, type Mount } from 'overlay-snapshotter';

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

const sn = await Snapshotter.open(root);
const run = Date.now().toString(36);
try {
  console.log(`store: ${root}`);

  // Layer 1: a base with two files.
  await mounted(await sn.prepare(`extract-1-${run}`), (d) => {
    mkdirSync(join(d, 'etc'));
    writeFileSync(join(d, 'etc', 'os-release'), 'NAME=demo\n');
    writeFileSync(join(d, 'hello.txt'), 'hello from layer 1\n');
    writeFileSync(join(d, 'obsolete.txt'), 'to be deleted by layer 2\n');
  });
  await sn.commit(`layer-1-${run}`, `extract-1-${run}`);
  console.log(`committed layer-1-${run}`);

  // Layer 2 on top: changes a file, deletes one, adds one.
  await mounted(await sn.prepare(`extract-2-${run}`, `layer-1-${run}`), (d) => {
    writeFileSync(join(d, 'hello.txt'), 'hello from layer 2\n');
    rmSync(join(d, 'obsolete.txt'));
    writeFileSync(join(d, 'app.sh'), 'echo running\n');
  });
  await sn.commit(`layer-2-${run}`, `extract-2-${run}`);
  console.log(`committed layer-2-${run}`);

  // A container on the image.
  const mounts = await sn.prepare(`container-${run}`, `layer-2-${run}`);
  console.log('container mount spec:');
  console.log(`  ${mounts[0]!.type} ${mounts[0]!.source} ${mounts[0]!.options.join(',')}`);
  await mounted(mounts, (d) => {
    writeFileSync(join(d, 'scratch.log'), 'written by the container\n');
    console.log('the container sees:');
    show(d);
  });
  const usage = await sn.usage(`container-${run}`);
  console.log(`container upper layer: ${usage.size} bytes in ${usage.inodes} inodes`);

  // Tear down: container first, then the layers, children before parents.
  for (const key of [`container-${run}`, `layer-2-${run}`, `layer-1-${run}`]) await sn.remove(key);
  await sn.cleanup();
  console.log('removed the container and both layers; done');
} finally {
  await sn.close();
  await unmountAll(target);
  rmSync(scratch, { recursive: true, force: true });
}
