/**
 * The staging pool's thread (started by staging.ts): makes dirs while fewer
 * than `size` are ready, sleeps on the TAKEN counter otherwise; on stop,
 * removes what was not taken. After its first error it makes no more (the
 * error goes to the pool as a message; prepare then stages its own). Owns
 * the dirs it made and has not handed over; touches nothing else.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { MADE, type PoolData, STOP, TAKEN, makePoolDir, removePoolDir } from './staging-slots.cjs';

const { counters, base, size, umaskClean } = workerData as PoolData;
const s = new Int32Array(counters);
// After a failure the dirs already made stay on offer; nothing more is made.
let broken = false;
while (Atomics.load(s, STOP) === 0) {
  const made = Atomics.load(s, MADE);
  const taken = Atomics.load(s, TAKEN);
  if (broken || made - taken >= size) {
    Atomics.wait(s, TAKEN, taken);
    continue;
  }
  const dir = `${base}-${made}`;
  try {
    makePoolDir(dir, umaskClean);
  } catch (err) {
    removePoolDir(dir);
    broken = true;
    parentPort!.postMessage(String((err as Error | undefined)?.message));
    continue;
  }
  Atomics.store(s, MADE, made + 1);
}
for (let n = Atomics.load(s, TAKEN); n < Atomics.load(s, MADE); n++) removePoolDir(`${base}-${n}`);
