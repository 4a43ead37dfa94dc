/** Temp roots, mounted targets and mount-table checks shared by the tests. */
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Snapshotter, mountAll, unmountAll, type Mount, type SnapshotterOptions } from '../../lib/index.js';

/** Mount points currently listed in /proc/self/mountinfo (octal escapes decoded). */
export function mountPoints(): string[] {
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((line) => line.split(' ')[4]!.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8))));
}

export function isMounted(path: string): boolean {
  return mountPoints().includes(path);
}

/** Whether `name` is a staging dir of this process's pool (lib/disk/staging.ts), kept ready while a snapshotter is open. */
export function isOwnPoolDir(name: string): boolean {
  return name.startsWith(`new-${process.pid}.`);
}

/** The entries of `<root>/snapshots`, sorted, without this process's pool of ready staging dirs. */
export function snapshotEntries(root: string): string[] {
  return readdirSync(`${root}/snapshots`).filter((n) => !isOwnPoolDir(n)).sort();
}

/** The upper (writable) directory of an active snapshot's mount spec: the bind source, or `upperdir=`. */
export function upperOf(mounts: readonly Mount[]): string {
  const m = mounts[0];
  if (m === undefined) throw new Error('no mount');
  if (m.type === 'bind') return m.source;
  const opt = m.options.find((o) => o.startsWith('upperdir='));
  if (opt === undefined) throw new Error(`no upperdir in ${JSON.stringify(m)}`);
  return opt.slice('upperdir='.length);
}

/** Makes a fresh temp dir; `extra` lengthens its path (for long-root tests). */
export function tempDir(prefix = 'ovl-snap-', extra = ''): string {
  const base = mkdtempSync(join(tmpdir(), prefix));
  if (extra === '') return base;
  const long = join(base, extra);
  rmSync(long, { recursive: true, force: true });
  return long;
}

/** Unmounts anything still mounted below `dir`, then deletes it. Never deletes through a mount. */
export async function removeTree(dir: string): Promise<void> {
  const below = mountPoints()
    .filter((p) => p === dir || p.startsWith(`${dir}/`))
    .sort((a, b) => b.length - a.length);
  for (const p of below) await unmountAll(p);
  if (mountPoints().some((p) => p === dir || p.startsWith(`${dir}/`))) throw new Error(`refusing to delete ${dir}: still mounted`);
  rmSync(dir, { recursive: true, force: true });
}

/** Opens a snapshotter on a fresh temp root, runs `fn`, then closes it and removes the root. */
export async function withSnapshotter(
  options: SnapshotterOptions | undefined,
  fn: (sn: Snapshotter, root: string) => Promise<void>,
  rootExtra = '',
): Promise<void> {
  const top = tempDir();
  const root = rootExtra === '' ? join(top, 'root') : join(top, rootExtra);
  const sn = await Snapshotter.open(root, options);
  try {
    await fn(sn, root);
  } finally {
    await sn.close();
    await removeTree(top);
  }
}

/** Mounts `mounts` on a fresh temp dir, runs `fn` with it, and always unmounts and removes it. */
export async function withMounted<T>(mounts: Mount[], fn: (target: string) => Promise<T> | T): Promise<T> {
  const target = tempDir('ovl-mnt-');
  try {
    await mountAll(mounts, target);
    return await fn(target);
  } finally {
    await unmountAll(target);
    rmSync(target, { recursive: true, force: true });
  }
}
