/**
 * The layout is the architecture (docs/architecture.md): each folder of
 * lib/ is a layer, imports flow one way, from the command line down to the
 * pure model, and every helper thread is a module file started through
 * lib/kernel/threads.ts. These tests read the sources, so that a change
 * that breaks the layering fails here with the file, the import and the
 * rule it breaks.
 */
import assert from 'node:assert/strict';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import test from 'node:test';
import { fileURLToPath } from 'node:url';

const LIB = fileURLToPath(new URL('../lib/', import.meta.url));

/** Every module of lib/, as a path relative to lib/ (`store/store.ts`). */
function modules(dir = LIB): string[] {
  const out: string[] = [];
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) out.push(...modules(path));
    else if (entry.name.endsWith('.ts') || entry.name.endsWith('.cts')) out.push(relative(LIB, path));
  }
  return out.sort();
}

type Layer = 'cli' | 'server' | 'images' | 'api' | 'layers' | 'facade' | 'prune' | 'store' | 'disk' | 'kernel' | 'model';

/** The layer a module belongs to, by its place in lib/. */
function layerOf(rel: string): Layer | undefined {
  const top = rel.split('/')[0]!;
  if (top === 'cli' || top === 'server' || top === 'images' || top === 'layers' || top === 'store' || top === 'disk' || top === 'kernel' || top === 'model') return top;
  if (rel === 'index.ts') return 'api';
  if (rel === 'snapshotter.ts' || rel === 'maintenance.ts') return 'facade';
  if (rel === 'prune.ts') return 'prune';
  return undefined;
}

/**
 * What each layer may import besides its own modules. The server sees the
 * public API alone, and so does the command line, which also starts the
 * server (`serve`); images build on layers and the model, and the public API
 * re-exports them; layers reach
 * snapshots through an interface (layers/snapshot.ts), so they need only the
 * kernel and the model; the facade uses everything below it; the store uses
 * of the kernel its C library handle alone (see STORE_KERNEL); the kernel
 * and the disk know nothing of the store; the model imports nothing of ours.
 */
const ALLOWED: Record<Layer, readonly Layer[]> = {
  cli: ['api', 'server'],
  server: ['api'],
  images: ['layers', 'model'],
  api: ['facade', 'images', 'layers', 'prune', 'kernel', 'model'],
  layers: ['kernel', 'model'],
  facade: ['store', 'disk', 'kernel', 'prune', 'model'],
  prune: ['model'],
  store: ['kernel', 'model'],
  disk: ['kernel', 'model'],
  kernel: ['model'],
  model: [],
};

/** The one module of kernel/ that store/ may import: a handle, with no paths, mounts or probes behind it. */
const STORE_KERNEL = 'kernel/libc.ts';

/** The code of a module without its comments (examples in comments import things too). */
function code(rel: string): string {
  return readFileSync(join(LIB, rel), 'utf8')
    .replace(/\/\*[\s\S]*?\*\//g, '')
    .replace(/^\s*\/\/.*$/gm, '');
}

/** The modules of lib/ that `rel` imports, re-exports, loads or starts as a thread (relative specifiers only). */
function importsOf(rel: string): { spec: string; target: string }[] {
  const src = code(rel);
  const found: { spec: string; target: string }[] = [];
  const patterns = [/\bfrom\s+['"](\.[^'"]*)['"]/g, /\bimport\s*\(\s*['"`](\.[^'"`]*)['"`]/g, /\bimport\s+['"](\.[^'"]*)['"]/g, /new URL\(\s*['"](\.[^'"]*)['"]\s*,\s*import\.meta\.url/g];
  for (const re of patterns) {
    for (const m of src.matchAll(re)) {
      const spec = m[1]!;
      const path = resolve(dirname(join(LIB, rel)), spec);
      // Specifiers name the compiled `.js` file; the source is the `.ts` beside it.
      found.push({ spec, target: relative(LIB, path.replace(/\.(c?)js$/, '.$1ts')) });
    }
  }
  return found;
}

test('every module of lib/ belongs to a layer, and imports only what its layer may (lower layers never import higher ones)', () => {
  const problems: string[] = [];
  const all = modules();
  assert.ok(all.length > 50, 'lib/ was read');
  for (const rel of all) {
    const layer = layerOf(rel);
    if (layer === undefined) {
      problems.push(`${rel} lies outside the layers: put it in the folder of the layer it belongs to (docs/architecture.md)`);
      continue;
    }
    for (const { spec, target } of importsOf(rel)) {
      if (target.startsWith('..')) continue; // package.json, read by the CLI for its version
      if (!existsSync(join(LIB, target))) {
        problems.push(`${rel} imports ${spec}, which is not a module of lib/`);
        continue;
      }
      const to = layerOf(target);
      if (to === undefined || to === layer) continue;
      if (!ALLOWED[layer].includes(to)) {
        problems.push(`${rel} (${layer}) imports ${target} (${to}): ${layer} may import ${ALLOWED[layer].join(', ') || 'nothing of ours'}`);
      } else if (layer === 'store' && to === 'kernel' && target !== STORE_KERNEL) {
        problems.push(`${rel} (store) imports ${target}: of kernel/, the store may use ${STORE_KERNEL} alone`);
      }
    }
  }
  assert.deepEqual(problems, []);
});

test('every helper thread is a module file of lib/, started through kernel/threads.ts: no code in strings, no Worker made elsewhere', () => {
  const problems: string[] = [];
  const workers: string[] = [];
  for (const rel of modules()) {
    const src = code(rel);
    if (/eval\s*:\s*true/.test(src)) problems.push(`${rel} starts a worker from a string (eval: true)`);
    if (/new Function\s*\(/.test(src)) problems.push(`${rel} evaluates code held in a string (new Function)`);
    if (/new Worker\s*\(/.test(src) && rel !== 'kernel/threads.ts') problems.push(`${rel} makes a Worker itself: start it with startWorker (kernel/threads.ts)`);
    for (const m of src.matchAll(/new URL\(\s*['"](\.[^'"]*-worker\.c?js)['"]\s*,\s*import\.meta\.url/g)) {
      workers.push(relative(LIB, resolve(dirname(join(LIB, rel)), m[1]!.replace(/\.(c?)js$/, '.$1ts'))));
    }
  }
  for (const target of workers) if (!existsSync(join(LIB, target))) problems.push(`worker module ${target} does not exist`);
  // Nothing imports a worker module, so tsc compiles it to dist/ only if tsconfig.json includes files of its kind.
  const include = (JSON.parse(readFileSync(new URL('../tsconfig.json', import.meta.url), 'utf8')) as { include: string[] }).include;
  for (const target of workers) {
    const ext = target.slice(target.lastIndexOf('.'));
    if (!include.includes(`lib/**/*${ext}`)) problems.push(`worker module ${target}: tsconfig.json does not include lib/**/*${ext}, so it is missing from dist/`);
  }
  assert.deepEqual(problems, []);
  // The threads of the staging pool, the usage walk, and the layer hash, walk, reader and writers.
  assert.deepEqual([...new Set(workers)].sort(), [
    'disk/staging-worker.cts',
    'disk/usage-worker.ts',
    'layers/hash-worker.cts',
    'layers/reader-worker.ts',
    'layers/walk-worker.ts',
    'layers/writer-worker.cts',
  ]);
});

test('every module opens with a comment saying what it is, and one over 600 lines says in it why it is that long', () => {
  const problems: string[] = [];
  for (const rel of modules()) {
    const text = readFileSync(join(LIB, rel), 'utf8').replace(/^#!.*\n/, '');
    // Generated by `npm run proto` from lib/server/proto/: its generator's header says so.
    if (rel.startsWith('server/gen/') && text.startsWith('// Code generated by protoc-gen-ts_proto. DO NOT EDIT.')) continue;
    const header = /^\/\*\*[\s\S]*?\*\//.exec(text)?.[0];
    if (header === undefined) {
      problems.push(`${rel} does not open with a /** comment`);
      continue;
    }
    const lines = text.split('\n').length;
    if (lines > 620 && !/\b\d{3,} lines\b/.test(header)) problems.push(`${rel} has ${lines} lines and its header does not say why`);
  }
  assert.deepEqual(problems, []);
});
