/**
 * Child process for the crash tests: a second, live snapshotter on the
 * root. It makes one snapshot (and removes it) so that its staging pool
 * fills, prints the names of its pool dirs as one JSON line once there are
 * five (four its thread made, and the probe's, recycled: lib/disk/recycle.ts),
 * and stays open until its stdin ends; then it closes (which
 * removes the pool) and exits 0.
 *
 *   tsx holder-child.ts ROOT
 */
import { readdirSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { Snapshotter } from '../../lib/index.js';

const [root] = process.argv.slice(2);
if (root === undefined) throw new Error('usage: holder-child.ts <root>');
const sn = await Snapshotter.open(root);
await sn.prepare('holder-probe');
await sn.remove('holder-probe');
const own = (): string[] => readdirSync(`${root}/snapshots`).filter((n) => n.startsWith(`new-${process.pid}.`));
for (let i = 0; own().length < 5; i++) {
  if (i === 1000) throw new Error('the staging pool held fewer than 5 dirs after 10 s');
  await sleep(10);
}
process.stdout.write(`${JSON.stringify(own().sort())}\n`);
process.stdin.resume();
await new Promise((resolve) => process.stdin.once('end', resolve));
await sn.close();
