/**
 * The read-only mapping of a store's WAL-index header, which tells whether
 * anything was committed since it was last looked at: the read cache and
 * the WAL sync both ask it. Owns the mapping (mmap of SQLite's own shm
 * descriptor) and nothing else; it never writes the file, never opens a
 * descriptor of the shm file of its own (see {@link WalHeader.map}), and
 * uses of the C library only mmap/munmap, through kernel/libc.ts.
 */
import { readdirSync, statSync } from 'node:fs';
import createDebug from 'debug';
import koffi from 'koffi';
import { libc as loadLibc } from '../kernel/libc.js';

const debug = createDebug('overlay-snapshotter:store');

type Libc = { mmap: (...args: unknown[]) => unknown; munmap: (...args: unknown[]) => number };
let libc: Libc | undefined;

/**
 * The WAL-index header of a store (the first 48 bytes of `<db>-shm`, in
 * SQLite's documented wal-index format, https://www.sqlite.org/walformat.html),
 * mapped read-only. Every commit by any connection of any process rewrites
 * it (frame count, change counter, checksums; salts on a WAL restart), so
 * while it reads the same, nothing was committed and what was read before
 * is still current. Checking it is a few memory loads, where asking SQLite
 * costs a read transaction (two fcntl locks on the shm file, about 2.5 µs,
 * more than the rest of a `stat`).
 */
export class WalHeader {
  private readonly seen = new Int32Array(12);
  private words: Int32Array | undefined;

  private constructor(
    private readonly address: unknown,
    words: Int32Array,
  ) {
    this.words = words;
  }

  /**
   * Maps the header of `file`'s WAL index through SQLite's own descriptor
   * of the shm file, or returns undefined (then nothing is cached). Opening
   * and closing a descriptor of our own would drop every fcntl lock this
   * process holds on the file (POSIX locks are per process and per file),
   * SQLite's included, and let another process reinitialise the shm under
   * us.
   */
  static map(file: string): WalHeader | undefined {
    try {
      libc ??= (() => {
        const lib = loadLibc();
        return {
          mmap: lib.func('void *mmap(void *addr, size_t length, int prot, int flags, int fd, long offset)') as Libc['mmap'],
          munmap: lib.func('int munmap(void *addr, size_t length)') as Libc['munmap'],
        };
      })();
      const shm = statSync(`${file}-shm`, { throwIfNoEntry: false });
      // SQLite sizes the shm file before it writes the header; mapping past its end would fault.
      if (shm === undefined || shm.size < 4096) return undefined;
      let fd: number | undefined;
      for (const name of readdirSync('/proc/self/fd')) {
        const st = statSync(`/proc/self/fd/${name}`, { throwIfNoEntry: false });
        if (st !== undefined && st.dev === shm.dev && st.ino === shm.ino) {
          fd = Number(name);
          break;
        }
      }
      if (fd === undefined) return undefined;
      const address = libc.mmap(null, 4096, 1 /* PROT_READ */, 1 /* MAP_SHARED */, fd, 0);
      if (address === null || BigInt.asUintN(64, BigInt(koffi.address(address))) === 0xffffffffffffffffn) return undefined;
      return new WalHeader(address, new Int32Array(koffi.view(address, 48)));
    } catch (err) {
      debug('not caching reads of %s: %s', file, (err as Error).message);
      return undefined;
    }
  }

  /** True when the header differs from the one seen at the previous call (a commit happened since). */
  changed(): boolean {
    const words = this.words!;
    const seen = this.seen;
    let changed = false;
    for (let i = 0; i < 12; i++) {
      const w = words[i]!;
      if (w !== seen[i]) {
        seen[i] = w;
        changed = true;
      }
    }
    return changed;
  }

  /** True when the header differs from `copy` (a commit happened since `copy` was taken). */
  differsFrom(copy: Int32Array): boolean {
    const words = this.words!;
    for (let i = 0; i < 12; i++) if (words[i] !== copy[i]) return true;
    return false;
  }

  /** Copies the current header into `copy`. */
  copyTo(copy: Int32Array): void {
    copy.set(this.words!);
  }

  unmap(): void {
    if (this.words === undefined) return;
    this.words = undefined;
    libc!.munmap(this.address, 4096);
  }
}
