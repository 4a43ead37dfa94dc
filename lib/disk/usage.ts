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
 * unavailable the Node walk is used.
 */
import { lstatSync, readdirSync } from 'node:fs';
import { MessageChannel, type MessagePort, Worker, isMainThread, receiveMessageOnPort, workerData } from 'node:worker_threads';
import koffi from 'koffi';
import { libc as loadLibc, syscallError } from '../kernel/libc.js';
import type { Usage } from '../model/types.js';

/**
 * Walks `root` without following symlinks. Entries that vanish during the
 * walk (a container still writing) are skipped, as du does.
 */
export function diskUsage(root: string): Usage {
  const sys = bindings();
  return sys === null ? nodeUsage(root) : fastUsage(sys, root);
}

interface Sys {
  openat(dirfd: number, path: Buffer, flags: number, mode: number): number;
  close(fd: number): number;
  getdents64(fd: number, buf: Buffer, len: number): number | bigint;
  statx(dirfd: number, path: Buffer, flags: number, mask: number, buf: Buffer): number;
}

let sys: Sys | null | undefined;

function bindings(): Sys | null {
  if (sys !== undefined) return sys;
  try {
    const libc = loadLibc();
    sys = {
      openat: libc.func('int openat(int dirfd, const uint8_t *path, int flags, int mode)') as Sys['openat'],
      close: libc.func('int close(int fd)') as Sys['close'],
      getdents64: libc.func('long getdents64(int fd, _Out_ uint8_t *buf, size_t len)') as Sys['getdents64'],
      statx: libc.func('int statx(int dirfd, const uint8_t *path, int flags, unsigned int mask, _Out_ uint8_t *buf)') as Sys['statx'],
    };
  } catch {
    // No glibc with statx (2.28) and getdents64 (2.30): the Node walk does.
    sys = null;
  }
  return sys;
}

const AT_FDCWD = -100;
const AT_SYMLINK_NOFOLLOW = 0x100;
const O_DIRECTORY = 0o200000;
const O_NOFOLLOW = 0o400000;
const O_CLOEXEC = 0o2000000;
const OPEN_DIR = O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC;
/** STATX_TYPE | STATX_MODE | STATX_NLINK | STATX_INO | STATX_BLOCKS. */
const STATX_MASK = 0x1 | 0x2 | 0x4 | 0x100 | 0x400;
const S_IFMT = 0o170000;
const S_IFDIR = 0o040000;
const ENOENT = 2;
const ENOTDIR = 20;
const TWO32 = 4294967296;

function sysError(syscall: string, path: string): Error {
  return syscallError(syscall, `${syscall} failed for ${path}`, path);
}

/** Paths are kept as latin1 strings (one char per byte), so that names that are not UTF-8 survive. */
function cPath(latin1: string): Buffer {
  return Buffer.from(`${latin1}\0`, 'latin1');
}

/** Scratch buffers of one walking thread. */
interface Buffers {
  sx: Buffer;
  sx32: Uint32Array;
  dents: Buffer;
  name: Buffer;
}

function buffers(): Buffers {
  // struct statx is the same on every architecture (unlike struct stat).
  const sx = Buffer.alloc(256);
  return { sx, sx32: new Uint32Array(sx.buffer, sx.byteOffset, 64), dents: Buffer.alloc(64 * 1024), name: Buffer.alloc(256 + 8) };
}

/** Running totals of one walking thread. */
interface Totals {
  size: number;
  inodes: number;
  /** (dev, inode) of every multiply-linked file counted. */
  seen: Set<string>;
  /** When set, multiply-linked files are listed here ([id, blocks]) instead of counted: the main thread merges them. */
  links?: [string, number][];
}

/**
 * Counts the entries of every directory on `stack` (latin1 paths; the
 * directories themselves are already counted), pushing subdirectories as
 * it goes. Returns early, with work left on the stack, once `budget`
 * entries are counted.
 */
function walkDirs(sys: Sys, b: Buffers, stack: string[], t: Totals, budget = Infinity): void {
  const { sx, sx32, dents, name } = b;
  let walked = 0;
  for (let dir = stack.pop(); dir !== undefined; dir = walked >= budget ? undefined : stack.pop()) {
    const fd = sys.openat(AT_FDCWD, cPath(dir), OPEN_DIR, 0);
    if (fd < 0) {
      const errno = koffi.errno();
      if (errno === ENOENT || errno === ENOTDIR) continue;
      throw sysError('openat', Buffer.from(dir, 'latin1').toString());
    }
    try {
      for (;;) {
        const n = Number(sys.getdents64(fd, dents, dents.length));
        if (n === 0) break;
        if (n < 0) throw sysError('getdents64', Buffer.from(dir, 'latin1').toString());
        // struct linux_dirent64: d_ino u64, d_off s64, d_reclen u16, d_type u8, d_name (NUL-terminated).
        for (let off = 0; off < n; ) {
          const reclen = dents[off + 16]! | (dents[off + 17]! << 8);
          const start = off + 19;
          off += reclen;
          if (dents[start] === 0x2e && (dents[start + 1] === 0 || (dents[start + 1] === 0x2e && dents[start + 2] === 0))) continue;
          dents.copy(name, 0, start, off);
          walked++;
          if (sys.statx(fd, name, AT_SYMLINK_NOFOLLOW, STATX_MASK, sx) !== 0) {
            if (koffi.errno() === ENOENT) continue;
            throw sysError('statx', `${Buffer.from(dir, 'latin1').toString()}/${name.toString('utf8', 0, name.indexOf(0))}`);
          }
          const blocks = sx32[12]! + sx32[13]! * TWO32;
          if (((sx[28]! | (sx[29]! << 8)) & S_IFMT) === S_IFDIR) {
            stack.push(`${dir}/${dents.toString('latin1', start, dents.indexOf(0, start))}`);
          } else if (sx32[4]! > 1) {
            const id = `${sx32[34]}:${sx32[35]}:${sx32[8]! + sx32[9]! * TWO32}`;
            if (t.seen.has(id)) continue;
            t.seen.add(id);
            if (t.links !== undefined) {
              t.links.push([id, blocks]);
              continue;
            }
          }
          t.size += blocks * 512;
          t.inodes++;
        }
      }
    } finally {
      sys.close(fd);
    }
  }
}

/** Entries the calling thread walks alone before it shares the rest of a big tree with the helper thread. */
const SHARE_AFTER = 4000;

function fastUsage(sys: Sys, root: string): Usage {
  const b = buffers();
  const t: Totals = { size: 0, inodes: 0, seen: new Set() };
  const top = Buffer.from(root).toString('latin1');
  if (sys.statx(AT_FDCWD, cPath(top), AT_SYMLINK_NOFOLLOW, STATX_MASK, b.sx) !== 0) {
    if (koffi.errno() === ENOENT || koffi.errno() === ENOTDIR) return { size: 0, inodes: 0 };
    throw sysError('statx', root);
  }
  t.size += (b.sx32[12]! + b.sx32[13]! * TWO32) * 512;
  t.inodes++;
  const stack: string[] = ((b.sx[28]! | (b.sx[29]! << 8)) & S_IFMT) === S_IFDIR ? [top] : [];
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

/** What the helper thread sends back for a job. */
interface JobResult {
  size: number;
  inodes: number;
  links: [string, number][];
  error?: { message: string; code?: string };
}

const ROLE = 'overlay-snapshotter:usage';
// States of the job slot (flag[0]) and readiness (flag[1]).
const IDLE = 0;
const POSTED = 1;
const ACCEPTED = 2;
const DONE = 3;
const CANCELLED = 4;
const READY = 1;
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
      const options = { workerData: { role: ROLE, port: port2, flag }, transferList: [port2] };
      let worker: Worker;
      if (import.meta.url.endsWith('.ts')) {
        // Running from source under tsx, whose loader does not reach workers by itself.
        const tsx = import.meta.resolve('tsx/esm/api');
        worker = new Worker(`import(${JSON.stringify(tsx)}).then((m) => { m.register(); return import(${JSON.stringify(import.meta.url)}); });`, { ...options, eval: true });
      } else {
        worker = new Worker(new URL(import.meta.url), options);
      }
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

if (!isMainThread && (workerData as { role?: unknown } | null)?.role === ROLE) {
  const data = workerData as { port: MessagePort; flag: Int32Array };
  serve(data.port, data.flag);
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
