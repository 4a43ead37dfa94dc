/**
 * Child process for the multi-process test: runs OPS mixed calls with
 * overlapping keys on ROOT, counts what succeeded, and fails on any error
 * that is not one of the expected typed ones.
 *
 *   tsx concurrency-worker.ts ROOT SEED OPS
 */
import { Snapshotter } from '../../lib/index.js';
import { mixedLoad } from './load.js';

const [root, seed, ops] = process.argv.slice(2);
const sn = await Snapshotter.open(root!);
const counts = await mixedLoad(sn, Number(seed), Number(ops), false);
await sn.close();
process.stdout.write(JSON.stringify(counts));
