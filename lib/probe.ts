/**
 * Kernel and filesystem checks made when a root is opened (semantics.md,
 * "Kernel and filesystem checks at open").
 */
import { existsSync, mkdirSync, readFileSync, rmSync, statfsSync, writeFileSync } from 'node:fs';
import { release } from 'node:os';
import createDebug from 'debug';
import koffi from 'koffi';
import type * as Koffi from 'koffi';
import { v4 as uuidv4 } from 'uuid';
import { mountAll, unmountAll } from './mount/index.js';

const debug = createDebug('overlay-snapshotter:probe');

/** statfs f_type values the checks care about. */
export const OVERLAYFS_SUPER_MAGIC = 0x794c7630;
export const TMPFS_MAGIC = 0x01021994;

const INDEX_PARAM = '/sys/module/overlay/parameters/index';

/** True when the overlay module exposes the `index` parameter, so specs carry `index=off`. */
export function kernelHasIndexParam(): boolean {
  return existsSync(INDEX_PARAM);
}

/** True when `overlay` is listed in /proc/filesystems. */
export function overlayListed(): boolean {
  try {
    return /\toverlay$/m.test(readFileSync('/proc/filesystems', 'utf8'));
  } catch {
    return false;
  }
}

/** The statfs magic number of the filesystem holding `path`. */
export function filesystemType(path: string): number {
  return Number(statfsSync(path).type);
}

/**
 * True when this process is inside a user namespace (its uid map is not the
 * identity map of the initial namespace).
 */
export function inUserNamespace(): boolean {
  try {
    const map = readFileSync('/proc/self/uid_map', 'utf8').trim().split(/\s+/);
    return !(map.length === 3 && map[0] === '0' && map[1] === '0' && map[2] === '4294967295');
  } catch {
    return false;
  }
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type CFunction = (...args: any[]) => any;
let readdirBinding: { opendir: CFunction; readdir: CFunction; closedir: CFunction; dirent: Koffi.TypeObject } | undefined;

function bindReaddir(): NonNullable<typeof readdirBinding> {
  if (readdirBinding) return readdirBinding;
  const libc = koffi.load('libc.so.6');
  const dirent = koffi.struct('overlay_snapshotter_dirent64', {
    d_ino: 'uint64',
    d_off: 'int64',
    d_reclen: 'uint16',
    d_type: 'uint8',
    d_name: koffi.array('char', 256, 'String'),
  });
  readdirBinding = {
    dirent,
    opendir: libc.func('void *opendir(const char *name)'),
    readdir: libc.func('void *readdir64(void *dirp)'),
    closedir: libc.func('int closedir(void *dirp)'),
  };
  return readdirBinding;
}

/**
 * True when directory entries on the filesystem of `dir` carry their type
 * (d_type). Node's readdir hides DT_UNKNOWN by falling back to lstat, so the
 * entries are read with readdir(3) directly.
 */
export function supportsDType(dir: string): boolean {
  const probe = `${dir}/dtype-${uuidv4()}`;
  mkdirSync(probe, { mode: 0o700 });
  try {
    writeFileSync(`${probe}/file`, '');
    const b = bindReaddir();
    const handle = b.opendir(probe);
    if (handle === null) throw new Error(`opendir ${probe} failed (errno ${koffi.errno()})`);
    try {
      for (let entry = b.readdir(handle); entry !== null; entry = b.readdir(handle)) {
        const d = koffi.decode(entry, b.dirent) as { d_type: number; d_name: string };
        if (d.d_name === 'file') return d.d_type !== 0; // 0 = DT_UNKNOWN
      }
      return false;
    } finally {
      b.closedir(handle);
    }
  } finally {
    rmSync(probe, { recursive: true, force: true });
  }
}

/**
 * Mounts an overlay with two lowerdirs in a scratch dir under `dir`, as
 * containerd does at start, and returns the error if it fails. Without the
 * privilege to mount at all (EPERM), the answer is `undefined`: specs can
 * still be handed to a runtime that has it.
 */
export async function overlayMountError(dir: string): Promise<Error | undefined> {
  const base = `${dir}/overlay-probe-${uuidv4()}`;
  const paths = ['lower1', 'lower2', 'upper', 'work', 'merged'].map((n) => `${base}/${n}`);
  for (const p of paths) mkdirSync(p, { recursive: true, mode: 0o700 });
  const [lower1, lower2, upper, work, merged] = paths as [string, string, string, string, string];
  try {
    await mountAll([{ type: 'overlay', source: 'overlay', options: [`workdir=${work}`, `upperdir=${upper}`, `lowerdir=${lower2}:${lower1}`] }], merged);
    await unmountAll(merged);
    return undefined;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EPERM') {
      debug('overlay mount probe: no privilege to mount (%s); skipped', (err as Error).message);
      return undefined;
    }
    return err as Error;
  } finally {
    await unmountAll(merged).catch(() => undefined);
    rmSync(base, { recursive: true, force: true });
  }
}

/** The running kernel's release, the key under which probe results are cached. */
export function kernelRelease(): string {
  return release();
}
