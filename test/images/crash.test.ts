/**
 * A crashed import leaves nothing that nothing removes. Import runs killed
 * with SIGKILL mid-apply (three `overlay-snapshotter import` runs of a
 * 40 MiB layer read from a pipe, one importImage) each leave an
 * `import-<uuid>` active holding part of the layer. Each carries the owner
 * label (pid, start time, boot id) of the process that made it, which is
 * gone: that much holds now, and the image store's own leftovers (partial
 * blobs, leases) are swept by the next import.
 *
 * Removing such actives is the snapshotter's part (open, cleanup(),
 * prune(); check() listing them): those assertions are `todo` until the
 * snapshotter judges OWNER_LABEL (lib/snapshotter.ts and lib/prune.ts are
 * being moved on another branch; see docs/images.md, "Crashes").
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readdirSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { after, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { type Info, Snapshotter, listImages } from '../../lib/index.js';
import { OWNER_LABEL, ownerAlive, ownerValue } from '../../lib/layers/index.js';
import { removeTree, tempDir } from '../helpers/fixtures.js';
import { REPO } from '../helpers/cli.js';
import { makeLayout } from '../helpers/images.js';
import { packTar } from '../helpers/layers.js';
import { mountTestOptions } from '../helpers/require-mount.js';

const here = dirname(fileURLToPath(import.meta.url));
const LAYER_BYTES = 40 * 1024 * 1024;

/** Whether a snapshot not in `before` holds `name` with data in it: the apply is under way. */
function applying(root: string, name: string, before: ReadonlySet<string>): boolean {
  for (const id of readdirSync(join(root, 'snapshots'))) {
    if (before.has(id)) continue;
    const st = statSync(join(root, 'snapshots', id, 'fs', name), { throwIfNoEntry: false });
    if (st !== undefined && st.size > 0) return true;
  }
  return false;
}

/** Runs `overlay-snapshotter import -` on a pipe, feeds it half of `layer`, waits until the apply has written data, then kills it. */
async function killedCliImport(root: string, layer: Buffer): Promise<void> {
  const before = new Set(readdirSync(join(root, 'snapshots')));
  const child = spawn(process.execPath, ['--import', 'tsx', join(REPO, 'lib/cli/main.ts'), '--root', root, 'import', '-'], { cwd: REPO, stdio: ['pipe', 'ignore', 'pipe'] });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
  let stderr = '';
  child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
  child.stdin.on('error', () => {});
  child.stdin.write(layer.subarray(0, layer.length / 2));
  const deadline = Date.now() + 60_000;
  while (!applying(root, 'big', before)) {
    if (Date.now() > deadline || child.exitCode !== null) throw new Error(`import never started applying: ${stderr}`);
    await new Promise((r) => setTimeout(r, 20));
  }
  child.kill('SIGKILL');
  const end = await exited;
  assert.equal(end.signal, 'SIGKILL', `the import was killed mid-apply (${stderr})`);
}

async function actives(sn: Snapshotter): Promise<Info[]> {
  const out: Info[] = [];
  await sn.walk((i) => void out.push(i), 'kind==active');
  return out;
}

describe('a crashed import', mountTestOptions(), () => {
  const top = tempDir('ovl-img-crash-');
  const root = join(top, 'root');
  let layer: Buffer;
  after(() => removeTree(top));

  test('three CLI imports and one importImage killed with SIGKILL mid-apply leave four import actives labelled with their dead owners', async () => {
    layer = await packTar([{ header: { name: 'big', type: 'file', mode: 0o644 }, body: randomBytes(LAYER_BYTES) }]);
    const sn = await Snapshotter.open(root);
    await sn.close();
    for (let i = 0; i < 3; i++) await killedCliImport(root, layer);
    await makeLayout(join(top, 'layout'), [{ ref: 'big', layers: [layer], compression: 'none' }]);
    const r = spawnSync(process.execPath, ['--import', 'tsx', join(here, '../helpers/image-crash-child.ts'), root, join(top, 'layout'), String(LAYER_BYTES / 2)], { cwd: REPO, encoding: 'utf8' });
    assert.equal(r.signal, 'SIGKILL', `importImage was killed mid-apply (${r.stderr})`);
    const again = await Snapshotter.open(root);
    try {
      const left = await actives(again);
      assert.equal(left.length, 4);
      for (const a of left) {
        assert.match(a.name, /^import-[0-9a-f-]{36}$/);
        assert.equal(ownerAlive(a.labels[OWNER_LABEL]!), false, `${a.name}: its owner (${a.labels[OWNER_LABEL]}) is gone`);
      }
      // Each holds part of the layer: the space a crash loses until the active is removed.
      assert.ok(left.every((a) => a.labels[OWNER_LABEL] !== undefined));
      // The image store's leftovers of the killed importImage (its partial blob, its lease) go at the next use of the store.
      await listImages(again);
      assert.deepEqual(readdirSync(join(root, 'images', 'ingest')), []);
      assert.deepEqual(readdirSync(join(root, 'images', 'leases')), []);
    } finally {
      await again.close();
    }
  });

  test('check() lists the import actives whose owner is gone', { todo: 'the snapshotter does not judge OWNER_LABEL yet (lib/snapshotter.ts check(), after the lib/ reorganisation)' }, async () => {
    const sn = await Snapshotter.open(root);
    try {
      const report = await sn.check();
      const listed = report.problems.filter((p) => p.key?.startsWith('import-'));
      assert.equal(listed.length, 4);
      assert.equal(report.ok, false);
    } finally {
      await sn.close();
    }
  });

  test('open, cleanup() and prune() remove the import actives whose owner is gone, and nothing else', { todo: 'the snapshotter does not judge OWNER_LABEL yet (lib/snapshotter.ts open/cleanup, lib/prune.ts, after the lib/ reorganisation)' }, async () => {
    const sn = await Snapshotter.open(root);
    try {
      await sn.prepare('unlabelled');
      await sn.cleanup();
      await sn.prune();
      assert.deepEqual((await actives(sn)).map((a) => a.name), ['unlabelled']);
      await sn.remove('unlabelled');
    } finally {
      await sn.close();
    }
  });

  test('an import running meanwhile keeps its active: a live owner is never judged gone', async () => {
    const sn = await Snapshotter.open(root);
    try {
      await sn.prepare('import-live', undefined, { labels: { [OWNER_LABEL]: ownerValue() } });
      assert.equal(ownerAlive((await sn.stat('import-live')).labels[OWNER_LABEL]!), true);
      await sn.cleanup();
      await sn.prune();
      assert.equal((await sn.stat('import-live')).kind, 'active');
    } finally {
      await sn.close();
    }
  });
});
