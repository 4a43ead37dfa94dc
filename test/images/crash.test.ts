/**
 * A crashed import leaves nothing that nothing removes. Imports killed with
 * SIGKILL mid-apply (`overlay-snapshotter import` of a 40 MiB layer read
 * from a pipe, importImage) each leave an `import-<uuid>` active holding
 * part of the layer, labelled with the owner (pid, start time, boot id, pid
 * namespace) of the process that made it, which is gone. The snapshotter
 * judges that label: check() lists such a snapshot as `abandoned`, and
 * check({ repair }), cleanup(), prune() and the next open remove it; a
 * live owner's snapshot, a mounted one, and one without the label or with
 * a value that is not an owner are left alone.
 *
 * The test process keeps a Snapshotter open across the kills: open removes
 * abandoned snapshots, and this one opened before they were abandoned.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { type CheckProblem, type Info, Snapshotter, listImages } from '../../lib/index.js';
import { OWNER_LABEL, ownerAlive, ownerValue, parseOwner } from '../../lib/layers/index.js';
import { formatOwner } from '../../lib/model/owner.js';
import { removeTree, tempDir, withMounted } from '../helpers/fixtures.js';
import { REPO } from '../helpers/cli.js';
import { makeLayout } from '../helpers/images.js';
import { packTar } from '../helpers/layers.js';
import { assertPrerequisite, mountTestOptions, prerequisiteOptions, toolSkipReason } from '../helpers/require-mount.js';

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

/** The one import active a killed import left, checked to be labelled with a dead owner and to hold data. */
async function leftover(sn: Snapshotter): Promise<{ info: Info; dir: string }> {
  const left = (await actives(sn)).filter((a) => a.name.startsWith('import-'));
  assert.equal(left.length, 1, `one import active left: ${left.map((a) => a.name).join(', ')}`);
  const info = left[0]!;
  assert.match(info.name, /^import-[0-9a-f-]{36}$/);
  assert.equal(ownerAlive(info.labels[OWNER_LABEL]!), false, `${info.name}: its owner (${info.labels[OWNER_LABEL]}) is gone`);
  const { problems } = await sn.check();
  const p = problems.find((x) => x.key === info.name);
  assert.ok(p, `check() lists ${info.name}`);
  assert.ok(statSync(join(p.path, 'fs', 'big')).size > 0, 'it holds part of the layer');
  return { info, dir: p.path };
}

/** An owner label value naming this process's boot and namespace but a start time no process of ours has: a dead owner. */
function deadOwner(): string {
  return formatOwner({ ...parseOwner(ownerValue())!, start: '1' });
}

describe('a crashed import', mountTestOptions(), () => {
  const top = tempDir('ovl-img-crash-');
  const root = join(top, 'root');
  let layer: Buffer;
  let sn: Snapshotter;
  before(async () => {
    layer = await packTar([{ header: { name: 'big', type: 'file', mode: 0o644 }, body: randomBytes(LAYER_BYTES) }]);
    sn = await Snapshotter.open(root);
  });
  after(async () => {
    await sn?.close();
    await removeTree(top);
  });

  /**
   * The problems of a report, without the staging dirs that the killed
   * process's pool had ready (`new-<pid>.<start>-…`, listed and repaired as
   * any dead process's are: how many there are depends on how far its
   * thread got before the kill).
   */
  const withoutDeadPool = (problems: readonly CheckProblem[], owner: string | undefined): CheckProblem[] => {
    const pid = /pid=([0-9]+)/.exec(owner ?? '')?.[1];
    return problems.filter((p) => !(p.problem === 'staging-leftover' && pid !== undefined && p.path.includes(`/new-${pid}.`)));
  };

  test('a CLI import killed with SIGKILL mid-apply leaves an import active of a dead owner, which check() lists as abandoned', async () => {
    await killedCliImport(root, layer);
    const { info, dir } = await leftover(sn);
    const report = await sn.check();
    assert.equal(report.ok, false);
    assert.deepEqual(
      withoutDeadPool(report.problems, info.labels[OWNER_LABEL]).map((p) => ({ ...p })),
      [{ problem: 'abandoned', key: info.name, path: dir, owner: info.labels[OWNER_LABEL], repaired: false }],
    );
  });

  test('check({ repair: true }) removes the abandoned active and its directory', async () => {
    const { info, dir } = await leftover(sn);
    const report = await sn.check({ repair: true });
    assert.ok(report.problems.every((p) => p.repaired), 'the pool dirs of the dead process go too');
    assert.deepEqual(withoutDeadPool(report.problems, info.labels[OWNER_LABEL]).map((p) => [p.problem, p.key, p.repaired]), [['abandoned', info.name, true]]);
    assert.equal(report.ok, true);
    assert.equal(existsSync(dir), false);
    assert.deepEqual(await actives(sn), []);
    assert.equal((await sn.check()).problems.length, 0);
  });

  test('cleanup() removes an abandoned active and its directory, and names it', async () => {
    await killedCliImport(root, layer);
    const { info, dir } = await leftover(sn);
    const report = await sn.cleanup();
    assert.deepEqual(report.abandoned, [info.name]);
    assert.ok(report.removed.includes(dir.slice(dir.lastIndexOf('/') + 1)), `its entry is among those removed: ${report.removed.join(', ')}`);
    assert.equal(existsSync(dir), false);
    assert.deepEqual(await actives(sn), []);
  });

  test('prune() removes an abandoned active without includeActive, and reports it abandoned with its size', async () => {
    await killedCliImport(root, layer);
    const { info, dir } = await leftover(sn);
    const dry = await sn.prune({ dryRun: true });
    assert.deepEqual(dry.removed.map((r) => [r.name, r.kind, r.abandoned]), [[info.name, 'active', true]]);
    const report = await sn.prune();
    assert.deepEqual(report.removed.map((r) => [r.name, r.kind, r.abandoned]), [[info.name, 'active', true]]);
    assert.ok(report.reclaimed.bytes > 0);
    assert.equal(existsSync(dir), false);
    assert.deepEqual(await actives(sn), []);
  });

  test('the next open removes an abandoned active, and says so in `recovered`', async () => {
    await killedCliImport(root, layer);
    const { info, dir } = await leftover(sn);
    const next = await Snapshotter.open(root);
    await next.close();
    assert.deepEqual(next.recovered.abandoned, [{ key: info.name, kind: 'active', path: dir, owner: info.labels[OWNER_LABEL] }]);
    assert.ok(next.recovered.removed.includes(dir.slice(dir.lastIndexOf('/') + 1)));
    assert.equal(existsSync(dir), false);
    assert.deepEqual(await actives(sn), []);
  });

  test('importImage killed with SIGKILL mid-apply leaves an abandoned active, and image store leftovers that its next use sweeps', async () => {
    await makeLayout(join(top, 'layout'), [{ ref: 'big', layers: [layer], compression: 'none' }]);
    const r = spawnSync(process.execPath, ['--import', 'tsx', join(here, '../helpers/image-crash-child.ts'), root, join(top, 'layout'), String(LAYER_BYTES / 2)], { cwd: REPO, encoding: 'utf8' });
    assert.equal(r.signal, 'SIGKILL', `importImage was killed mid-apply (${r.stderr})`);
    const { info } = await leftover(sn);
    await listImages(sn);
    assert.deepEqual(readdirSync(join(root, 'images', 'ingest')), []);
    assert.deepEqual(readdirSync(join(root, 'images', 'leases')), []);
    assert.deepEqual((await sn.cleanup()).abandoned, [info.name]);
  });

  test('a live owner keeps its snapshots: cleanup(), check() and prune({ includeActive }) leave its active and its committed layer (a lease)', async () => {
    const labels = { [OWNER_LABEL]: ownerValue() };
    await sn.prepare('import-live', undefined, { labels });
    await sn.prepare('layer-live-work');
    await sn.commit('layer-live', 'layer-live-work', { labels });
    assert.equal(ownerAlive(labels[OWNER_LABEL]!), true);
    await sn.cleanup();
    assert.equal((await sn.check()).ok, true);
    const report = await sn.prune({ includeActive: true });
    assert.deepEqual(report.removed, []);
    assert.deepEqual(report.kept.map((k) => [k.name, k.reason]), [['import-live', 'leased'], ['layer-live', 'leased']]);
    await sn.remove('import-live');
    await sn.remove('layer-live');
  });

  test('a snapshot without the label, with a value that is not an owner, or committed is left alone; one of an earlier boot is abandoned', async () => {
    const boot = parseOwner(ownerValue())!;
    await sn.prepare('unlabelled');
    await sn.prepare('foreign', undefined, { labels: { [OWNER_LABEL]: 'pid=1 made by hand' } });
    await sn.prepare('committed-work');
    await sn.commit('committed-dead', 'committed-work', { labels: { [OWNER_LABEL]: deadOwner() } });
    await sn.view('earlier-boot', undefined, { labels: { [OWNER_LABEL]: formatOwner({ ...boot, boot: '00000000-0000-4000-8000-000000000000' }) } });
    assert.deepEqual((await sn.check()).problems.map((p) => [p.problem, p.key]), [['abandoned', 'earlier-boot']]);
    assert.deepEqual((await sn.cleanup()).abandoned, ['earlier-boot']);
    assert.deepEqual((await actives(sn)).map((a) => a.name), ['foreign', 'unlabelled']);
    assert.equal((await sn.stat('committed-dead')).kind, 'committed');
    for (const key of ['foreign', 'unlabelled', 'committed-dead']) await sn.remove(key);
  });

  test('an abandoned active that is mounted is listed with its mount point and never removed', async () => {
    await sn.prepare('mounted-dead', undefined, { labels: { [OWNER_LABEL]: deadOwner() } });
    await withMounted(await sn.mounts('mounted-dead'), async (target) => {
      const report = await sn.check({ repair: true });
      assert.deepEqual(report.problems.map((p) => [p.problem, p.key, p.mountPoints, p.repaired]), [['abandoned', 'mounted-dead', [target], false]]);
      assert.deepEqual((await sn.cleanup()).abandoned, []);
      const pruned = await sn.prune();
      assert.deepEqual(pruned.kept.map((k) => [k.name, k.reason]), [['mounted-dead', 'mounted']]);
      const next = await Snapshotter.open(root);
      await next.close();
      assert.equal((await sn.stat('mounted-dead')).kind, 'active');
    });
    assert.deepEqual((await sn.cleanup()).abandoned, ['mounted-dead']);
  });

  const unshare = toolSkipReason('unshare', ['--pid', '--fork', '--mount-proc', 'true'], 'with pid namespaces (util-linux, root)');
  test('an owner in another pid namespace is judged by the processes of that namespace: kept while it runs, abandoned once it exits', prerequisiteOptions(unshare), async () => {
    assertPrerequisite(unshare);
    const script = `import(${JSON.stringify(join(REPO, 'lib/kernel/liveness.ts'))}).then((m) => { console.log(m.ownerValue()); process.stdin.resume(); process.stdin.on('end', () => process.exit(0)); })`;
    const child = spawn('unshare', ['--pid', '--fork', '--mount-proc', process.execPath, '--import', 'tsx', '-e', script], { cwd: REPO, stdio: ['pipe', 'pipe', 'inherit'] });
    const exited = new Promise<void>((resolve) => child.on('exit', () => resolve()));
    try {
      const value = await new Promise<string>((resolve, reject) => {
        createInterface({ input: child.stdout! }).once('line', resolve);
        child.once('exit', () => reject(new Error('the child in a new pid namespace exited before naming itself')));
      });
      const owner = parseOwner(value)!;
      assert.equal(owner.pid, 1, `the child is pid 1 of its namespace: ${value}`);
      assert.notEqual(owner.ns, parseOwner(ownerValue())!.ns);
      await sn.prepare('import-other-ns', undefined, { labels: { [OWNER_LABEL]: value } });
      assert.deepEqual((await sn.cleanup()).abandoned, []);
      assert.equal(ownerAlive(value), true);
      child.stdin!.end();
      await exited;
      assert.equal(ownerAlive(value), false);
      assert.deepEqual((await sn.cleanup()).abandoned, ['import-other-ns']);
    } finally {
      child.kill('SIGKILL');
      await exited;
    }
  });
});
