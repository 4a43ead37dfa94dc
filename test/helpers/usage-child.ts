/**
 * Child process for the usage test, run under `strace -f`: walks DIR with
 * diskUsage, 100 ms apart (the helper thread that the first big walk
 * starts gets ready meanwhile), until the file STOP exists or MAX walks
 * are done. After each walk it writes `DONE <walk> <size> <inodes>` to
 * stderr with one write(2), so that the parent's strace log shows which
 * threads opened the tree's directories during each walk.
 *
 *   tsx usage-child.ts DIR STOP MAX
 */
import { existsSync, writeSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { diskUsage } from '../../lib/disk/usage.js';

const [dir, stop, max] = process.argv.slice(2);
if (dir === undefined || stop === undefined || max === undefined) throw new Error('usage: usage-child.ts <dir> <stop-file> <max-walks>');
for (let i = 0; i < Number(max) && !existsSync(stop); i++) {
  const usage = diskUsage(dir);
  writeSync(2, `DONE ${i} ${usage.size} ${usage.inodes}\n`);
  await sleep(100);
}
