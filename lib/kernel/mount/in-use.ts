/**
 * Which snapshot directories are mounted somewhere, so that removal and
 * cleanup never delete a tree a container is still running on.
 *
 * A snapshot is in use when a mount point lies inside its directory, when a
 * bind mount's source is inside it, when an overlay in the mount table
 * names it as a lowerdir, upperdir or workdir, or when a live mount record
 * of the store names it (an overlay that `mountAll` made with layers named
 * in a form the mount table does not show: records.ts).
 *
 * Reads the mount table and the mount records of the store's root, never
 * the metadata store, and unmounts nothing.
 */
import { realpathSync, statSync } from 'node:fs';
import { dirname } from 'node:path';
import { readRecords, recordIsLive } from './records.js';
import { type MountEntry, mountTableText, readMountTable } from './table.js';

function unescape(field: string): string {
  return field.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(parseInt(octal, 8)));
}

function deviceOf(path: string): string {
  const st = statSync(path);
  return `${Math.floor(st.dev / 256) & 0xfff}:${(st.dev & 0xff) | ((st.dev >> 12) & 0xfff00)}`;
}

/** The real path of each snapshots dir (the mount table shows real paths), cached. */
const realDirs = new Map<string, string>();

function realDir(dir: string): string {
  let real = realDirs.get(dir);
  if (real === undefined) {
    try {
      real = realpathSync(dir);
    } catch {
      return dir; // gone: nothing of ours can be mounted, and nothing cached
    }
    realDirs.set(dir, real);
  }
  return real;
}

/**
 * Maps snapshot ids under `snapshotsDir` to the mount points that use them.
 * Reads the store's mount records, then the mount table, once each. With
 * `only`, answers for that id alone, and skips parsing when neither can
 * mention it (hot path: remove): every path form that names a snapshot's
 * directory contains `/<id>`.
 */
export function snapshotMounts(snapshotsDir: string, only?: number): Map<number, string[]> {
  const users = new Map<number, string[]>();
  // Records first: a mount made after this read shows in the table read after it.
  const records = readRecords(dirname(snapshotsDir), only);
  const text = mountTableText();
  if (only !== undefined && records.length === 0 && !text.includes(`/${only}`)) return users;
  const table = readMountTable(text);
  const real = realDir(snapshotsDir);
  const prefixes = real === snapshotsDir ? [`${snapshotsDir}/`] : [`${snapshotsDir}/`, `${real}/`];
  const add = (path: string, mountPoint: string) => {
    const prefix = prefixes.find((p) => path.startsWith(p));
    if (prefix === undefined) return;
    const id = Number(path.slice(prefix.length).split('/', 1)[0]);
    if (!Number.isSafeInteger(id) || id <= 0) return;
    const list = users.get(id);
    if (list === undefined) users.set(id, [mountPoint]);
    else if (!list.includes(mountPoint)) list.push(mountPoint);
  };

  // Bind sources appear as paths inside their filesystem: translate ours
  // into that form through the mount that holds the snapshots dir.
  let device: string | undefined;
  let holder: MountEntry | undefined;
  try {
    device = deviceOf(snapshotsDir);
    for (const m of table) {
      if (m.device !== device) continue;
      if (real === m.mountPoint || real.startsWith(m.mountPoint === '/' ? '/' : `${m.mountPoint}/`)) {
        if (holder === undefined || m.mountPoint.length > holder.mountPoint.length) holder = m;
      }
    }
  } catch {
    // The snapshots dir is gone: nothing of ours can be mounted.
  }

  for (const m of table) {
    add(m.mountPoint, m.mountPoint);
    if (holder !== undefined && m.device === device) {
      const rel = m.root === '/' ? '' : m.root;
      const holderRel = holder.root === '/' ? '' : holder.root;
      if (rel.startsWith(holderRel)) {
        const abs = (holder.mountPoint === '/' ? '' : holder.mountPoint) + rel.slice(holderRel.length);
        add(abs === '' ? '/' : abs, m.mountPoint);
      }
    }
    if (m.fsType === 'overlay') {
      for (const raw of m.superOptions.split(',')) {
        // The kernel octal-escapes commas inside paths, so split first, then unescape.
        const opt = unescape(raw);
        const eq = opt.indexOf('=');
        if (eq < 0) continue;
        const name = opt.slice(0, eq);
        if (name !== 'lowerdir' && name !== 'upperdir' && name !== 'workdir' && name !== 'lowerdir+' && name !== 'datadir+') continue;
        for (const dir of opt.slice(eq + 1).split(/(?<!\\):+/)) add(dir.replace(/\\(.)/g, '$1'), m.mountPoint);
      }
    }
  }
  for (const record of records) {
    if (!recordIsLive(record, table)) continue;
    for (const path of record.paths) if (typeof path === 'string') add(path, record.target);
  }
  return users;
}
