/**
 * The usage helper thread (started by usage.ts): walks each job's
 * directories with the same walk as the calling thread (usage-walk.ts) and
 * answers through the port, flagging the job slot as it takes and finishes
 * a job. It never throws: errors go back as answers. Reads the tree only.
 */
import { type MessagePort, workerData } from 'node:worker_threads';
import { ACCEPTED, DONE, type JobResult, POSTED, READY, type Totals, bindings, buffers, walkDirs } from './usage-walk.js';

/** The helper thread's side: walk each job's directories and answer through the port. */
function serve(port: MessagePort, flag: Int32Array): void {
  const s = bindings();
  const b = buffers();
  port.on('message', (dirs: string[]) => {
    if (Atomics.compareExchange(flag, 0, POSTED, ACCEPTED) !== POSTED) return;
    let answer: JobResult;
    try {
      if (s === null) throw new Error('no system calls in the usage helper');
      const t: Totals = { size: 0, inodes: 0, seen: new Set(), links: [] };
      walkDirs(s, b, dirs, t);
      answer = { size: t.size, inodes: t.inodes, links: t.links! };
    } catch (err) {
      const code = (err as { code?: unknown }).code;
      answer = { size: 0, inodes: 0, links: [], error: { message: (err as Error).message, ...(typeof code === 'string' ? { code } : {}) } };
    }
    port.postMessage(answer);
    Atomics.store(flag, 0, DONE);
    Atomics.notify(flag, 0);
  });
  Atomics.store(flag, 1, READY);
}

const data = workerData as { port: MessagePort; flag: Int32Array };
serve(data.port, data.flag);
