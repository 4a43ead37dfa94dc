/**
 * The walk thread (started by walk.ts): runs the walks of diffs (walk-tree.ts)
 * a few chunks ahead of the main thread, each chunk's data buffer
 * transferred out and, once laid out, back in for reuse. Owns the open
 * directories of the walks in flight; reads the trees only.
 */
import { parentPort } from 'node:worker_threads';
import type { WalkReply, WalkRequest } from './walk.js';
import { DATA, type DataPool, POOL, type TreeWalk, createWalk } from './walk-tree.js';

const port = parentPort!;
const buffers: ArrayBuffer[] = [];
const pool: DataPool = {
  take: () => buffers.pop() ?? new ArrayBuffer(DATA),
  give: (ab) => {
    if (buffers.length < POOL) buffers.push(ab);
  },
};
const walks = new Map<number, TreeWalk>();
port.on('message', (m: WalkRequest) => {
  if ('give' in m && m.give) pool.give(m.give);
  if ('root' in m) {
    walks.set(m.id, createWalk(m.root, m.opaqueXattr, pool));
  } else if ('next' in m) {
    const walk = walks.get(m.id);
    if (!walk) return;
    const chunk = walk.next(m.next);
    if (chunk.done) walks.delete(m.id);
    const reply: WalkReply = Object.assign(chunk, { id: m.id });
    port.postMessage(reply, reply.data ? [reply.data] : []);
  } else {
    const walk = walks.get(m.id);
    walks.delete(m.id);
    if (walk) walk.close();
  }
});
