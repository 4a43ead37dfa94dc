/**
 * Layer entry names: normalisation and the refusals that keep every write
 * inside the target. A layer path is always relative to the root of the
 * snapshot; we refuse rather than reinterpret anything that could point
 * elsewhere (containerd strips a leading `/` and resolves `..` lexically; we
 * refuse both, as the issue asks, because a layer that needs either is not
 * one a well-behaved builder makes).
 *
 * Pure: names in, names or refusals out; touches no file.
 */
import { InvalidArgumentError, q } from '../model/errors.js';

/** OCI whiteout prefix: `.wh.<name>` deletes `<name>` from the layers below. */
export const WHITEOUT_PREFIX = '.wh.';
/** OCI opaque marker: hides everything the layers below put in its directory. */
export const OPAQUE_MARKER = '.wh..wh..opq';
/** aufs metadata (`.wh..wh.plnk`, `.wh..wh.aufs`): never content, skipped as containerd does. */
export const WHITEOUT_META_PREFIX = '.wh..wh.';

/** An error for a refused layer entry; the message names the entry and why. */
export function refuse(entry: string, why: string): InvalidArgumentError {
  return new InvalidArgumentError(`layer entry ${q(entry)} refused: ${why}`);
}

/**
 * The relative, slash-joined form of a tar entry name (`''` for the root),
 * or a refusal. `./a//b/` becomes `a/b`. Absolute names, `..` components
 * and NUL bytes are refused.
 */
export function cleanName(name: string, entry: string = name, what = 'path'): string {
  if (name.includes('\0')) throw refuse(entry, `${what} contains a NUL byte`);
  if (name.startsWith('/')) throw refuse(entry, `${what} ${q(name)} is absolute`);
  // Fast path: most names are already clean (`usr/bin/ls`, `etc/`).
  if (!name.includes('//') && !name.startsWith('./') && !name.includes('/./') && !name.includes('..') && name !== '.') {
    return name.endsWith('/') ? name.slice(0, -1) : name;
  }
  const parts: string[] = [];
  for (const part of name.split('/')) {
    if (part === '' || part === '.') continue;
    if (part === '..') throw refuse(entry, `${what} ${q(name)} has a ".." component`);
    parts.push(part);
  }
  return parts.join('/');
}

export function dirname(rel: string): string {
  const i = rel.lastIndexOf('/');
  return i < 0 ? '' : rel.slice(0, i);
}

export function basename(rel: string): string {
  return rel.slice(rel.lastIndexOf('/') + 1);
}

export function joinRel(dir: string, base: string): string {
  return dir === '' ? base : `${dir}/${base}`;
}

/** `root/rel` without `path.join`'s normalisation (the name is clean already). */
export function abs(root: string, rel: string): string {
  return rel === '' ? root : `${root}/${rel}`;
}

/** True when `rel` is `dir` or inside it. */
export function isWithin(rel: string, dir: string): boolean {
  return dir === '' || rel === dir || (rel.startsWith(dir) && rel.charCodeAt(dir.length) === 47);
}
