/**
 * Child process for the durability test: runs every kind of mutating call
 * and, as each returns, writes `DONE <call>` to stderr with one write(2),
 * so that the parent's strace log shows what was synced before it.
 *
 *   tsx durable-child.ts ROOT
 */
import { writeSync } from 'node:fs';
import { Snapshotter } from '../../lib/index.js';

const sn = await Snapshotter.open(process.argv[2]!);
const done = (call: string): void => void writeSync(2, `DONE ${call}\n`);
await sn.prepare('a');
done('prepare');
await sn.commit('c', 'a');
done('commit');
await sn.update({ name: 'c', labels: { x: 'y' } });
done('update');
await sn.view('v', 'c');
done('view');
for (let i = 0; i < 5; i++) await sn.prepare(`burst-${i}`, 'c');
done('prepare burst');
await Promise.all(Array.from({ length: 16 }, (_, i) => sn.prepare(`many-${i}`, 'c')));
done('concurrent prepares');
await Promise.all([...Array.from({ length: 5 }, (_, i) => sn.remove(`burst-${i}`)), ...Array.from({ length: 16 }, (_, i) => sn.remove(`many-${i}`))]);
done('concurrent removes');
await sn.remove('v');
done('remove');
await sn.close();
