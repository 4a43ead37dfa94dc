/**
 * Prune time for 10,000 unreferenced snapshots among 20,000, and the
 * reclaimed-bytes check against `du -s` of snapshots/.
 *
 *   npx tsx bench/prune.ts [--quick] [--json FILE]
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { Snapshotter } from '../lib/index.js';

const { values } = parseArgs({ options: { quick: { type: 'boolean' }, json: { type: 'string' } } });
const total = values.quick ? 2_000 : 20_000;
const top = mkdtempSync(join(tmpdir(), 'bench-prune-'));
const root = join(top, 'root');
try {
  execFileSync('chattr', ['+T', top], { stdio: 'ignore' });
} catch {
  // Not ext4: the Orlov hint does not apply.
}

const du = () => Number(execFileSync('du', ['-s', '-B1', '--exclude=new-*', join(root, 'snapshots')], { encoding: 'utf8' }).split('\t')[0]);

try {
  const sn = await Snapshotter.open(root, { durableLayers: false });
  for (let i = 0; i < total; i++) {
    const key = `a${i}`;
    await sn.prepare(key);
    writeFileSync(join(root, 'snapshots', String(i + 1), 'fs', 'f'), 'x'.repeat(100));
    await sn.commit(`c${i}`, key, i % 2 === 0 ? { labels: { 'containerd.io/gc.root': 'keep' } } : undefined);
  }
  execFileSync('sync');
  const before = du();
  const t0 = process.hrtime.bigint();
  const report = await sn.prune();
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  const after = du();
  await sn.close();
  const result = {
    snapshots: total,
    removed: report.removed.length,
    seconds: Number(seconds.toFixed(3)),
    removedPerSecond: Math.round(report.removed.length / seconds),
    reclaimedBytes: report.reclaimed.bytes,
    duDropBytes: before - after,
    reclaimedMatchesDu: report.reclaimed.bytes === before - after,
  };
  console.log(`prune: ${result.removed} of ${result.snapshots} removed in ${result.seconds} s (${result.removedPerSecond}/s)`);
  console.log(`reclaimed ${result.reclaimedBytes} bytes; du -s of snapshots/ dropped ${result.duDropBytes} bytes: ${result.reclaimedMatchesDu ? 'equal' : 'DIFFERENT'}`);
  if (values.json) writeFileSync(values.json, `${JSON.stringify(result, null, 2)}\n`);
} finally {
  rmSync(top, { recursive: true, force: true });
}
