/**
 * Disk usage of a directory tree as `du -s` counts it: allocated blocks ×
 * 512 and distinct inodes, each (dev, inode) once however many hard links
 * reach it, the root included.
 */
import { lstatSync, readdirSync } from 'node:fs';
import type { Usage } from './types.js';

/**
 * Walks `root` without following symlinks. Entries that vanish during the
 * walk (a container still writing) are skipped, as du does.
 */
export function diskUsage(root: string): Usage {
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
