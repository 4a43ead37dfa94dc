/**
 * Run by test/native.test.ts as a second process on the same root: calls
 * `cleanup()` over and over until the file `argv[3]` appears, then prints
 * what it removed as JSON. After its first round it creates
 * `<argv[3]>.ready`, so that the test starts creating only then. Used to show that a native copy in progress is
 * never taken for an orphan.
 */
import { existsSync, writeFileSync } from 'node:fs';
import { Snapshotter } from '../../lib/index.js';

const [root, stopFile] = process.argv.slice(2);
if (root === undefined || stopFile === undefined) throw new Error('usage: cleanup-loop-child.ts <root> <stop-file>');
const sn = await Snapshotter.open(root, { driver: 'native' });
const removed: string[] = [];
let rounds = 0;
try {
  while (!existsSync(stopFile)) {
    const report = await sn.cleanup();
    removed.push(...report.removed);
    if (rounds++ === 0) writeFileSync(`${stopFile}.ready`, '');
    // A pause between rounds: SQLite's busy handler backs off, and a writer
    // that keeps missing a lock taken every few milliseconds can starve.
    await new Promise((r) => setTimeout(r, 20));
  }
} finally {
  await sn.close();
}
process.stdout.write(`${JSON.stringify({ rounds, removed })}\n`);
