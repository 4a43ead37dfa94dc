/**
 * Child process for the crash tests: opens the root and runs one call,
 * with OVERLAY_SNAPSHOTTER_FAULT set by the parent so that it dies with
 * SIGKILL at the named point. Exits 0 only if the call completed, which
 * the parent treats as "the fault point was never reached".
 *
 *   tsx crash-child.ts ROOT OPERATION [asyncRemove]
 */
import { Snapshotter } from '../../lib/index.js';

const [root, operation, mode] = process.argv.slice(2);
const sn = await Snapshotter.open(root!, { asyncRemove: mode === 'async' });
switch (operation) {
  case 'prepare':
    await sn.prepare('victim', 'base');
    break;
  case 'view':
    await sn.view('victim', 'base');
    break;
  case 'commit':
    await sn.commit('victim', 'victim-active');
    break;
  case 'remove':
    await sn.remove('victim');
    break;
  case 'cleanup':
    await sn.cleanup();
    break;
  case 'prune':
    await sn.prune();
    break;
  default:
    throw new Error(`unknown operation ${operation}`);
}
await sn.close();
