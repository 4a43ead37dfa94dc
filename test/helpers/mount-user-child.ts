/**
 * Child process for the mount-record tests: a second process on the same
 * root. Opens it, runs each operation given on the command line, and
 * prints one JSON line per operation with its outcome (the error's code
 * and message, or the report). `mount:KEY:TARGET:STRATEGY` mounts the
 * snapshot's specs and leaves them mounted when the process exits.
 *
 *   tsx mount-user-child.ts ROOT OPERATION...
 */
import { Snapshotter, mountAll } from '../../lib/index.js';

const [root, ...operations] = process.argv.slice(2);
const sn = await Snapshotter.open(root!);
for (const operation of operations) {
  const [op, key, target, strategy] = operation.split(':');
  try {
    let report: unknown;
    if (op === 'remove') await sn.remove(key!);
    else if (op === 'cleanup') report = await sn.cleanup();
    else if (op === 'prune') report = await sn.prune({ includeActive: true });
    else if (op === 'check') report = await sn.check();
    else if (op === 'repair') report = await sn.check({ repair: true });
    else if (op === 'mount') await mountAll(await sn.mounts(key!), target!, { strategy: strategy as 'auto' });
    else throw new Error(`unknown operation ${operation}`);
    console.log(JSON.stringify({ op: operation, ok: true, report }));
  } catch (err) {
    const e = err as Error & { code?: string };
    console.log(JSON.stringify({ op: operation, ok: false, code: e.code, message: e.message }));
  }
}
await sn.close();
