/**
 * Starting the library's helper threads. Every helper thread runs a module
 * of this library (a `*-worker.ts` file, compiled to `*-worker.js` beside
 * the module that starts it), started as
 * `startWorker(new URL('./name-worker.js', import.meta.url), options)`.
 * A thread whose whole module graph is Node's own modules is a CommonJS
 * file (`*-worker.cts`, started as `./name-worker.cjs`): a CommonJS entry
 * starts about 7 ms sooner than an ES module one, whose loader a worker
 * sets up afresh, which is what the threads held in strings cost before.
 * From dist/ that is the compiled file itself. From the TypeScript sources
 * under tsx (the tests and benches), whose loader does not reach worker
 * threads, the thread first registers tsx, then imports the `.ts` file: the
 * same module either way, with the same imports as the main thread's.
 *
 * Owns the start only; each thread's protocol belongs to the module that
 * starts it and its worker file. Knows nothing of layers or stores.
 */
import { Worker, type WorkerOptions } from 'node:worker_threads';

/** Whether this library runs from its sources (a `.ts` module under tsx) rather than from dist/. */
const FROM_SOURCE = import.meta.url.endsWith('.ts');

/**
 * Starts the worker module at `url` (the compiled `.js` name). The thread
 * gets no `execArgv`: the process's own flags (a preloaded loader, an
 * inspector port) are not the thread's, and a preload would cost every
 * start. Errors of the thread come as its `error` event, as for any Worker.
 */
export function startWorker(url: URL, options: Omit<WorkerOptions, 'eval' | 'execArgv'> = {}): Worker {
  if (!FROM_SOURCE) return new Worker(url, { ...options, execArgv: [] });
  const source = url.href.replace(/\.(c?)js$/, '.$1ts');
  const esm = import.meta.resolve('tsx/esm/api');
  // A CommonJS thread's require() calls go through tsx's CommonJS hooks, an ES module's imports through its ESM hooks.
  const cjs = source.endsWith('.cts') ? `import { register as registerCjs } from ${JSON.stringify(import.meta.resolve('tsx/cjs/api'))};\nregisterCjs();\n` : '';
  const boot = `import { register } from ${JSON.stringify(esm)};\n${cjs}register();\nawait import(${JSON.stringify(source)});\n`;
  return new Worker(new URL(`data:text/javascript,${encodeURIComponent(boot)}`), { ...options, execArgv: [] });
}
