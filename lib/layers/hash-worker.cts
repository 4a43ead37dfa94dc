/**
 * The hash thread (started by hash.ts): one SHA-256 per stream id, fed
 * batches that are transferred in and transferred back once hashed, for
 * reuse. Owns the hashes of the streams in flight; touches no file.
 */
import { createHash, type Hash } from 'node:crypto';
import { parentPort } from 'node:worker_threads';
import type { HashRequest, HashReply } from './hash.js';

const port = parentPort!;
const hashes = new Map<number, Hash>();
port.on('message', (m: HashRequest) => {
  if ('chunk' in m) {
    let h = hashes.get(m.id);
    if (!h) hashes.set(m.id, (h = createHash('sha256')));
    h.update(new Uint8Array(m.chunk, 0, m.length));
    port.postMessage({ ab: m.chunk } satisfies HashReply, [m.chunk]);
  } else if ('done' in m) {
    const h = hashes.get(m.id) ?? createHash('sha256');
    hashes.delete(m.id);
    port.postMessage({ id: m.id, digest: h.digest('hex') } satisfies HashReply);
  } else {
    hashes.delete(m.id);
  }
});
