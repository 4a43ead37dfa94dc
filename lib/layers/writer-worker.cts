/**
 * A writer thread (started by writer.ts): makes the files of each batch it
 * is handed, in order, with exactly the calls the applier would make on
 * the main thread (open O_CREAT|O_EXCL|O_NOFOLLOW, write, fchown, fchmod,
 * futimes, close), reports the first failure, sends the batch's buffer
 * back for reuse and counts the batch done in shared memory. Decides
 * nothing: every path, mode and owner comes checked from the applier.
 */
import { closeSync, constants, fchmodSync, fchownSync, futimesSync, openSync, writeSync } from 'node:fs';
import { type MessagePort, workerData } from 'node:worker_threads';
import type { WriteFailure, WriteReply, WriteRequest } from './writer.js';

const { port, counter } = workerData as { port: MessagePort; counter: Int32Array };
const FLAGS = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW;
// Counters (writer.ts): [0] batches done, [1] this thread's state, RUNNING (1) from now on.
Atomics.store(counter, 1, 1);
Atomics.notify(counter, 1);

port.on('message', (m: WriteRequest) => {
  let failure: WriteFailure | undefined;
  try {
    const buf = Buffer.from(m.ab);
    const n = m.paths.length;
    const v = m.nums;
    for (let i = 0; i < n; i++) {
      const k = 8 * i;
      const off = v[k]!;
      const len = v[k + 1]!;
      const mode = v[k + 2]!;
      const uid = v[k + 3]!;
      const gid = v[k + 4]!;
      const chmod = v[k + 5]!;
      let fd: number | undefined;
      try {
        fd = openSync(m.paths[i]!, FLAGS, mode);
        let done = 0;
        while (done < len) done += writeSync(fd, buf, off + done, len - done);
        if (uid !== -1) fchownSync(fd, uid, gid);
        if (chmod !== -1) fchmodSync(fd, chmod);
        futimesSync(fd, v[k + 6]!, v[k + 7]!);
      } finally {
        if (fd !== undefined) closeSync(fd);
      }
    }
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    failure = { message: e.message, code: e.code, errno: e.errno, syscall: e.syscall, path: e.path };
  }
  // The batch goes back for reuse: fresh memory would cost the main thread a page fault per 4 KiB.
  port.postMessage({ id: m.id, failure, ab: m.ab } satisfies WriteReply, [m.ab]);
  Atomics.add(counter, 0, 1);
  Atomics.notify(counter, 0);
});
