/**
 * Run by test/driver.test.ts, several at once on one brand-new root: opens
 * the snapshotter at `argv[2]` with the driver `argv[3]` (`-` for none),
 * once `argv[4]` exists (so that every child starts together), and prints
 * the driver it got, or the error code it failed with, as JSON.
 */
import { existsSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { Snapshotter, type Driver } from '../../lib/index.js';

const [root, driver, startFile] = process.argv.slice(2);
if (root === undefined || driver === undefined || startFile === undefined) throw new Error('usage: open-child.ts <root> <overlay|native|-> <start-file>');
while (!existsSync(startFile)) await sleep(5);
try {
  const sn = await Snapshotter.open(root, driver === '-' ? {} : { driver: driver as Driver });
  process.stdout.write(`${JSON.stringify({ driver: sn.driver })}\n`);
  await sn.close();
} catch (err) {
  process.stdout.write(`${JSON.stringify({ code: (err as { code?: string }).code ?? String(err) })}\n`);
}
