/**
 * Disk usage of a directory tree as `du -s` counts it: allocated blocks ×
 * 512 and distinct inodes, each (dev, inode) once however many hard links
 * reach it, the root included.
 *
 * Hot: every commit walks the layer's upper dir, and `usage()` of an active
 * walks it live. The walk does what `du` does and nothing more: per
 * directory one open and a few `getdents64` calls, per entry one `statx`
 * relative to the directory's descriptor, through koffi. Node's
 * `readdirSync` + `lstatSync` make the kernel resolve the whole path again
 * for every entry and build a `Stats` object for it: about 45 % slower on
 * 50 000 files (docs/performance.md). Where koffi or these calls are
 * unavailable the Node walk is used. The walk is usage-walk.ts; a big tree
 * is shared with a helper thread (usage-worker.ts).
 *
 * Reads trees only, never writes them; knows no store and no mounts.
 */
import { lstatSync, readdirSync } from 'node:fs';
import { MessageChannel, type MessagePort, type Worker, receiveMessageOnPort } from 'node:worker_threads';
import { startWorker } from '../kernel/threads.js';
import type { Usage } from '../model/types.js';
import { ACCEPTED, CANCELLED, DONE, IDLE, type JobResult, POSTED, READY, type Sys, type Totals, bindings, buffers, startWalk, walkDirs } from './usage-walk.js';

/**
 * Walks `root` without following symlinks. Entries that vanish during the
 * walk (a container still writing) are skipped, as du does.
 */
export function diskUsage(root: string): Usage {
  const sys = bindings();
  return sys === null ? nodeUsage(root) : fastUsage(sys, root);
}

/** Entries the calling thread walks alone before it shares the rest of a big tree with the helper thread. */
const SHARE_AFTER = 4000;

function fastUsage(sys: Sys, root: string): Usage {
  const b = buffers();
  const t: Totals = { size: 0, inodes: 0, seen: new Set() };
  const stack = startWalk(sys, b, root, t);
  if (stack === undefined) return { size: 0, inodes: 0 };
  walkDirs(sys, b, stack, t, SHARE_AFTER);
  if (stack.length === 0) return { size: t.size, inodes: t.inodes };
  // A big tree: the kernel's per-entry cost dominates (as it does for du),
  // so a second thread walking half of what is left nearly halves the time.
  const shared = stack.length >= 2 ? helper() : undefined;
  const theirs = shared === undefined ? [] : stack.filter((_, i) => i % 2 === 1);
  const ours = shared === undefined ? stack : stack.filter((_, i) => i % 2 === 0);
  const job = shared?.post(theirs);
  const started = Date.now();
  let failure: { error: unknown } | undefined;
  try {
    walkDirs(sys, b, ours, t);
  } catch (error) {
    failure = { error };
  }
  // Collected even when our half failed, so that the helper is idle before the next job.
  const result = job?.result(Date.now() - started);
  if (failure !== undefined) throw failure.error;
  if (result === undefined) {
    if (theirs.length > 0) walkDirs(sys, b, theirs, t);
  } else {
    t.size += result.size;
    t.inodes += result.inodes;
    for (const [id, blocks] of result.links) {
      if (t.seen.has(id)) continue;
      t.seen.add(id);
      t.size += blocks * 512;
      t.inodes++;
    }
  }
  return { size: t.size, inodes: t.inodes };
}

/** How long a posted job may wait for the helper to take it before the caller walks it itself. */
const ACCEPT_TIMEOUT_MS = 2000;


interface Helper {
  /** Posts a job; `result` waits for it, given how long the caller took for its own half. */
  post(dirs: string[]): { result(ownMs: number): JobResult | undefined };
}

let helperState: { worker: Worker; port: MessagePort; flag: Int32Array } | null | undefined;

/**
 * The helper thread, started at the first big walk and kept (unreferenced,
 * so it never holds the process open). Until it has loaded, walks stay on
 * the calling thread; undefined also when threads are unavailable.
 */
function helper(): Helper | undefined {
  if (helperState === undefined) {
    try {
      const { port1, port2 } = new MessageChannel();
      const flag = new Int32Array(new SharedArrayBuffer(8));
      const worker = startWorker(new URL('./usage-worker.js', import.meta.url), { workerData: { port: port2, flag }, transferList: [port2] });
      worker.unref();
      port1.unref();
      worker.on('error', () => (helperState = null));
      worker.on('exit', () => (helperState = null));
      helperState = { worker, port: port1, flag };
    } catch {
      helperState = null;
    }
    return undefined;
  }
  const state = helperState;
  if (state === null || Atomics.load(state.flag, 1) !== READY || Atomics.load(state.flag, 0) !== IDLE) return undefined;
  return {
    post(dirs) {
      // Drop an answer to an earlier job that was given up on.
      while (receiveMessageOnPort(state.port) !== undefined);
      Atomics.store(state.flag, 0, POSTED);
      state.port.postMessage(dirs);
      return {
        result(ownMs) {
          let since = Date.now();
          // A helper that died mid-job (it never throws: errors come back as answers) must not hang us.
          const deadline = since + 60_000 + 4 * ownMs;
          for (;;) {
            const now = Atomics.load(state.flag, 0);
            if (now === DONE) break;
            if (Date.now() > deadline) {
              helperState = null;
              void state.worker.terminate();
              throw new Error('disk usage helper thread stopped answering');
            }
            if (now === POSTED && Date.now() - since > ACCEPT_TIMEOUT_MS) {
              if (Atomics.compareExchange(state.flag, 0, POSTED, CANCELLED) === POSTED) {
                helperState = null;
                void state.worker.terminate();
                return undefined;
              }
            }
            if (now === ACCEPTED) since = Date.now();
            Atomics.wait(state.flag, 0, now, 100);
          }
          Atomics.store(state.flag, 0, IDLE);
          const answer = receiveMessageOnPort(state.port)?.message as JobResult | undefined;
          if (answer === undefined) return undefined;
          if (answer.error !== undefined) throw Object.assign(new Error(answer.error.message), answer.error.code === undefined ? {} : { code: answer.error.code });
          return answer;
        },
      };
    },
  };
}

/** The portable walk: readdir and lstat by path. */
function nodeUsage(root: string): Usage {
  const seen = new Set<string>();
  let size = 0;
  let inodes = 0;
  const top = lstatSync(root, { throwIfNoEntry: false });
  if (top === undefined) return { size, inodes };
  size += top.blocks * 512;
  inodes++;
  const stack: string[] = top.isDirectory() ? [root] : [];
  for (let dir = stack.pop(); dir !== undefined; dir = stack.pop()) {
    let names: string[];
    try {
      names = readdirSync(dir);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') continue;
      throw err;
    }
    for (const name of names) {
      const path = `${dir}/${name}`;
      const child = lstatSync(path, { throwIfNoEntry: false });
      if (child === undefined) continue;
      if (child.isDirectory()) {
        stack.push(path);
      } else if (child.nlink > 1) {
        const id = `${child.dev}:${child.ino}`;
        if (seen.has(id)) continue;
        seen.add(id);
      }
      size += child.blocks * 512;
      inodes++;
    }
  }
  return { size, inodes };
}
