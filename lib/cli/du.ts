/**
 * Disk usage of a directory tree as `du -sx` counts it: allocated bytes
 * (512-byte blocks), each inode once, not crossing into other filesystems.
 * `cleanup` measures what it is about to delete with it (the library's
 * CleanupReport names the entries but not their size).
 */
import { lstatSync, readdirSync } from 'node:fs';
import { setImmediate as yieldToLoop } from 'node:timers/promises';

export interface DiskUsage {
  bytes: number;
  inodes: number;
}

/** Walks `path`; a path that is gone counts as empty. Yields to the event loop now and then so a progress bar can draw. */
export async function diskUsage(path: string, onEntry?: (bytesSoFar: number) => void): Promise<DiskUsage> {
  const seen = new Set<string>();
  let bytes = 0;
  let inodes = 0;
  let top;
  try {
    top = lstatSync(path, { bigint: true });
  } catch {
    return { bytes: 0, inodes: 0 };
  }
  const dev = top.dev;
  const stack = [path];
  let visited = 0;
  while (stack.length > 0) {
    const p = stack.pop()!;
    let st;
    try {
      st = lstatSync(p, { bigint: true });
    } catch {
      continue; // removed meanwhile
    }
    if (st.dev !== dev) continue;
    const id = `${st.ino}`;
    if (st.nlink > 1n || st.isDirectory()) {
      if (seen.has(id)) continue;
      seen.add(id);
    }
    bytes += Number(st.blocks) * 512;
    inodes++;
    if (st.isDirectory()) {
      try {
        for (const name of readdirSync(p)) stack.push(`${p}/${name}`);
      } catch {
        // unreadable or removed meanwhile: counted as what we saw
      }
    }
    if (++visited % 2048 === 0) {
      onEntry?.(bytes);
      await yieldToLoop();
    }
  }
  onEntry?.(bytes);
  return { bytes, inodes };
}
