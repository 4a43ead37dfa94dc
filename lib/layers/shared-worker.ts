/**
 * One helper thread per kind of layer work (hashing, reading files, walking
 * trees), started at first use and shared by every stream of that kind. The
 * thread never keeps the process alive; if it fails or exits, whatever
 * waits on it is failed and the next use starts a new one.
 */
import { Worker, type WorkerOptions } from 'node:worker_threads';

/**
 * Returns a getter for the shared thread running `source` (evaluated
 * JavaScript). `onMessage` gets each message; `onFail` gets the error when
 * the thread fails or exits, and must fail everything waiting on it.
 */
export function sharedWorker<M>(
  name: string,
  source: string,
  onMessage: (message: M) => void,
  onFail: (err: unknown) => void,
  options: Omit<WorkerOptions, 'eval' | 'execArgv'> = {},
): () => Worker {
  let worker: Worker | undefined;
  return () => {
    if (worker) return worker;
    const w = new Worker(source, { ...options, eval: true, execArgv: [] });
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
