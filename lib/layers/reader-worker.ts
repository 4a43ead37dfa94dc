/**
 * The reader thread (started by reader.ts): fills each batch of a diff in
 * place (fill.ts) and feeds it, in order, to that diff's SHA-256. Owns the
 * open trees and the hashes of the diffs in flight; reads the trees only.
 */
import { createHash, type Hash } from 'node:crypto';
import { parentPort } from 'node:worker_threads';
import { type Tree, closeTree, fill, openTree } from './fill.js';
import type { ReadReply, ReadRequest } from './reader.js';

const port = parentPort!;
const hashes = new Map<number, Hash>();
const trees = new Map<number, Tree>();

function end(id: number): void {
  hashes.delete(id);
  const t = trees.get(id);
  trees.delete(id);
  if (t) closeTree(t);
}

port.on('message', (m: ReadRequest) => {
  if ('ab' in m) {
    const buf = Buffer.from(m.ab, 0, m.used);
    let t = trees.get(m.id);
    if (!t) trees.set(m.id, (t = openTree(m.root!)));
    const failure = fill(t, buf, m.rels, m.nums);
    if (!failure) {
      let h = hashes.get(m.id);
      if (!h) hashes.set(m.id, (h = createHash('sha256')));
      h.update(buf);
    }
    port.postMessage({ id: m.id, seq: m.seq, failure } satisfies ReadReply);
  } else if ('done' in m) {
    const h = hashes.get(m.id) ?? createHash('sha256');
    end(m.id);
    port.postMessage({ id: m.id, seq: -1, digest: h.digest('hex') } satisfies ReadReply);
  } else {
    end(m.id);
  }
});
