/**
 * File creation for {@link applyLayer} on helper threads. Making a file
 * (open O_CREAT|O_EXCL, write, fchown, fchmod, futimens, close) is mostly
 * kernel time, and for a layer of many small files it is most of the
 * apply; with a second CPU, two worker threads do it while the main thread
 * parses the tar and checks every entry. The main thread still decides
 * everything (path checks, the journal, modes and owners): a worker only
 * runs the calls it is handed, in order, and reports the first failure.
 *
 * The protocol is synchronous on the main side, so the applier stays
 * synchronous: batches go out with `postMessage`; each worker counts the
 * batches it has finished in a shared Int32Array, and {@link Writers.barrier}
 * blocks with `Atomics.wait` until every batch sent is done, then reads the
 * replies with `receiveMessageOnPort`. The applier calls it before anything
 * that could see or touch a file still in flight (replacing or deleting an
 * entry this layer made, hard links, opaque dirs, setting dir times at the
 * end, undo). The threads are writer-worker.ts.
 *
 * A thread that never starts (its file missing from a build, a load error)
 * would leave that wait blocked for good, with the error event that says
 * so queued behind it: so an apply uses the threads only once
 * {@link writersReady} has seen each of them running, and otherwise makes
 * its files on the main thread.
 *
 * Owns the threads and their batches; makes only the files it is handed.
 */
import { MessageChannel, type MessagePort, type Worker, receiveMessageOnPort } from 'node:worker_threads';
import { startWorker } from '../kernel/threads.js';

/** One file to make: `body` is `len` bytes at `off` of the batch. */
export interface FileOp {
  path: string;
  mode: number;
  off: number;
  len: number;
  /** fchown to these, or -1 to skip. */
  uid: number;
  gid: number;
  /** fchmod to this, or -1 to skip (open already gave the mode). */
  chmod: number;
  atime: number;
  mtime: number;
}

/** A writer thread's first failure in a batch: the system error's fields. */
export interface WriteFailure {
  message: string;
  code?: string | undefined;
  errno?: number | undefined;
  syscall?: string | undefined;
  path?: string | undefined;
}

/**
 * A batch for a writer thread (writer-worker.ts): file bodies in `ab`, and
 * per file its path and 8 numbers: offset, length, mode, uid, gid, chmod
 * (-1: none), atime, mtime.
 */
export interface WriteRequest {
  id: number;
  ab: ArrayBuffer;
  paths: string[];
  nums: Float64Array;
}
/** A batch done: the first failure if any, and the buffer back for reuse. */
export interface WriteReply {
  id: number;
  failure: WriteFailure | undefined;
  ab: ArrayBuffer;
}

interface Slot {
  worker: Worker;
  port: MessagePort;
  /** [DONE]: batches finished; [STATE]: STARTING, RUNNING or STOPPED. */
  counter: Int32Array;
  sent: number;
}

/** Indexes and values of a slot's shared counters (writer-worker.cts sets RUNNING first thing). */
export const DONE = 0;
export const STATE = 1;
export const STARTING = 0;
export const RUNNING = 1;
export const STOPPED = 2;

let slots: Slot[] | undefined;
/** Set once the threads failed to start: this process makes its files on the main thread. */
let unavailable = false;
/** Failures reported for each apply (by id), read from the ports by whichever apply drains them. */
const failures = new Map<number, WriteFailure>();
let nextId = 1;
/** Batches handed to the threads in this process. */
let batches = 0;

/** How many batches of files the writer threads were handed in this process (for tests: whether an apply used them). */
export function writerBatches(): number {
  return batches;
}
/** Batches back from the workers, for reuse. */
const free: ArrayBuffer[] = [];

const WORKERS = 2;
/** Bytes of file data per batch, and the most files. */
const BATCH = 1024 * 1024;
const MAX_FILES = 256;
/** Batches in flight per worker before the main thread waits for one. */
const MAX_AHEAD = 3;
/**
 * Files up to this size are handed to the workers; bigger ones are written on the main thread
 * (their data costs a copy into the batch, which for a 100 KiB file costs about what handing
 * over its open/write/close saves).
 */
export const DEFER_MAX = 64 * 1024;

function startSlots(): Slot[] {
  if (slots) return slots;
  slots = [];
  for (let i = 0; i < WORKERS; i++) {
    const { port1, port2 } = new MessageChannel();
    const counter = new Int32Array(new SharedArrayBuffer(8));
    const worker = startWorker(new URL('./writer-worker.cjs', import.meta.url), { workerData: { port: port2, counter }, transferList: [port2] });
    worker.unref();
    port1.unref();
    const stopped = (): void => {
      // Seen by a wait that starts after this; one already blocked is the case writersReady() rules out at start.
      Atomics.store(counter, STATE, STOPPED);
      Atomics.notify(counter, STATE);
      Atomics.notify(counter, DONE);
      slots = undefined;
    };
    worker.on('error', stopped);
    worker.on('exit', stopped);
    slots.push({ worker, port: port1, counter, sent: 0 });
  }
  return slots;
}

function drainReplies(slot: Slot): void {
  for (;;) {
    const r = receiveMessageOnPort(slot.port) as { message: WriteReply } | undefined;
    if (!r) return;
    if (free.length < WORKERS * (MAX_AHEAD + 1)) free.push(r.message.ab);
    if (r.message.failure && !failures.has(r.message.id)) failures.set(r.message.id, r.message.failure);
  }
}

function done(slot: Slot): number {
  return Atomics.load(slot.counter, DONE);
}

/** `Atomics.waitAsync` (Node has it; TypeScript's ES2023 library does not declare it). */
const waitAsync = (Atomics as unknown as { waitAsync(a: Int32Array, i: number, v: number): { async: boolean; value: Promise<string> | string } }).waitAsync;

/**
 * Whether the writer threads run, starting them at the first call: waits
 * (without blocking the event loop) until each has started or failed to.
 * After a failure, false for the rest of the process.
 */
export async function writersReady(): Promise<boolean> {
  if (unavailable) return false;
  const started = startSlots();
  const states = await Promise.all(
    started.map(async (slot) => {
      const waited = waitAsync(slot.counter, STATE, STARTING);
      if (!waited.async) return Atomics.load(slot.counter, STATE);
      // The wait alone does not keep the event loop alive; the starting thread does, until it runs.
      slot.worker.ref();
      try {
        await waited.value;
      } finally {
        slot.worker.unref();
      }
      return Atomics.load(slot.counter, STATE);
    }),
  );
  if (states.every((state) => state === RUNNING)) return true;
  unavailable = true;
  for (const slot of started) void slot.worker.terminate();
  slots = undefined;
  return false;
}

/** Blocks until `slot` has at most `ahead` batches unfinished. */
function waitFor(slot: Slot, ahead: number): void {
  for (;;) {
    const d = done(slot);
    if (slot.sent - d <= ahead) return;
    if (Atomics.load(slot.counter, STATE) === STOPPED) throw new Error('a writer thread of the layer apply stopped; the apply is undone, try it again');
    Atomics.wait(slot.counter, DONE, d, 1000);
  }
}

function toError(f: WriteFailure): NodeJS.ErrnoException {
  const err: NodeJS.ErrnoException = new Error(f.message);
  if (f.code !== undefined) err.code = f.code;
  if (f.errno !== undefined) err.errno = f.errno;
  if (f.syscall !== undefined) err.syscall = f.syscall;
  if (f.path !== undefined) err.path = f.path;
  return err;
}

/** One apply's file writers. */
export class Writers {
  private readonly id = nextId++;
  private readonly slots = startSlots();
  private next = 0;
  private ab = new ArrayBuffer(BATCH);
  private buf = Buffer.from(this.ab);
  private used = 0;
  private ops: FileOp[] = [];
  /** The file being collected: its body so far goes at `used`. */
  private open: FileOp | undefined;

  /** Starts a file; its body follows with {@link write}, then {@link end}. */
  begin(op: FileOp): void {
    if (this.used + op.len > BATCH || this.ops.length >= MAX_FILES) this.send();
    op.off = this.used;
    this.open = op;
  }

  write(chunk: Buffer): void {
    chunk.copy(this.buf, this.used);
    this.used += chunk.length;
  }

  end(): void {
    const op = this.open!;
    this.open = undefined;
    op.len = this.used - op.off;
    this.ops.push(op);
  }

  /** Drops a file begun but not ended (its entry failed). */
  cancel(): void {
    if (this.open) this.used = this.open.off;
    this.open = undefined;
  }

  private send(): void {
    if (this.ops.length === 0) return;
    const slot = this.slots[this.next]!;
    this.next = (this.next + 1) % this.slots.length;
    waitFor(slot, MAX_AHEAD - 1);
    drainReplies(slot);
    this.check();
    const n = this.ops.length;
    const paths = new Array<string>(n);
    const nums = new Float64Array(8 * n);
    for (let i = 0; i < n; i++) {
      const op = this.ops[i]!;
      const k = 8 * i;
      paths[i] = op.path;
      nums[k] = op.off;
      nums[k + 1] = op.len;
      nums[k + 2] = op.mode;
      nums[k + 3] = op.uid;
      nums[k + 4] = op.gid;
      nums[k + 5] = op.chmod;
      nums[k + 6] = op.atime;
      nums[k + 7] = op.mtime;
    }
    slot.sent++;
    batches++;
    slot.port.postMessage({ id: this.id, ab: this.ab, paths, nums } satisfies WriteRequest, [this.ab]);
    this.ab = free.pop() ?? new ArrayBuffer(BATCH);
    this.buf = Buffer.from(this.ab);
    this.used = 0;
    this.ops = [];
  }

  private check(): void {
    const f = failures.get(this.id);
    if (f) {
      failures.delete(this.id);
      throw toError(f);
    }
  }

  /** Sends what is collected and blocks until every file handed over exists; throws the first failure. */
  barrier(): void {
    this.send();
    for (const slot of this.slots) {
      waitFor(slot, 0);
      drainReplies(slot);
    }
    this.check();
  }

  /** For undo: waits for the workers and forgets any failure. */
  settle(): void {
    this.cancel();
    this.ops = [];
    this.used = 0;
    for (const slot of this.slots) {
      waitFor(slot, 0);
      drainReplies(slot);
    }
    failures.delete(this.id);
  }
}
