/**
 * One helper thread per kind of layer work (hashing, reading files, walking
 * trees), started at first use and shared by every stream of that kind. The
 * thread never keeps the process alive; if it fails or exits, whatever
 * waits on it is failed and the next use starts a new one.
 *
 * Owns the thread handles; starts them through kernel/threads.ts and knows
 * nothing of what they do.
 */
import type { Worker, WorkerOptions } from 'node:worker_threads';
import { startWorker } from '../kernel/threads.js';

/**
 * Returns a getter for the shared thread running the worker module at `url`
 * (see kernel/threads.ts). `onMessage` gets each message; `onFail` gets the
 * error when the thread fails or exits, and must fail everything waiting on it.
 */
export function sharedWorker<M>(
  name: string,
  url: URL,
  onMessage: (message: M) => void,
  onFail: (err: unknown) => void,
  options: Omit<WorkerOptions, 'eval' | 'execArgv'> = {},
): () => Worker {
  let worker: Worker | undefined;
  return () => {
    if (worker) return worker;
    const w = startWorker(url, options);
    w.on('message', onMessage);
    const fail = (err: unknown): void => {
      if (worker === w) worker = undefined;
      onFail(err);
    };
    w.on('error', fail);
    w.on('exit', (code) => fail(new Error(`layer ${name} worker exited with code ${code}`)));
    w.unref();
    worker = w;
    return w;
  };
}
