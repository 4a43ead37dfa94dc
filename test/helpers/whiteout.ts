/**
 * Overlay whiteouts for hand-built layers: a character device 0/0 at the
 * deleted path. Node cannot mknod, so this calls libc through koffi (glibc
 * >= 2.33 exports mknod), falling back to spawning mknod(1). Needs root.
 */
import { spawnSync } from 'node:child_process';
import koffi from 'koffi';

const S_IFCHR = 0o020000;

type Mknod = (path: string, mode: number, dev: number) => number;
let mknod: Mknod | null | undefined;

function bind(): Mknod | null {
  if (mknod !== undefined) return mknod;
  try {
    mknod = koffi.load('libc.so.6').func('int mknod(const char *path, unsigned int mode, unsigned long dev)') as Mknod;
  } catch {
    mknod = null;
  }
  return mknod;
}

/** Creates a whiteout (char device 0/0) at `path`; its parent must exist. */
export function makeWhiteout(path: string): void {
  const fn = bind();
  if (fn) {
    if (fn(path, S_IFCHR | 0o000, 0) === 0) return;
    throw new Error(`mknod ${path} failed: errno ${koffi.errno()}`);
  }
  const res = spawnSync('mknod', [path, 'c', '0', '0'], { encoding: 'utf8' });
  if (res.status !== 0) throw new Error(`mknod ${path} failed: ${res.stderr || res.error?.message}`);
}
