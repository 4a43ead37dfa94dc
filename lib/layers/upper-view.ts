/**
 * What one apply knows of its upper and sees of the lowers below it: the
 * paths of the upper it has created or checked, and overlayfs' lookup in
 * the merged view (one component at a time, stopping at whiteouts,
 * non-directories and opaque dirs). Reads the upper and the lowers, writes
 * nothing; the applier (applier.ts) changes the upper and tells this view.
 */
import { type Stats, lstatSync } from 'node:fs';
import { InvalidArgumentError, q } from '../model/errors.js';
import type { LayerTarget } from './apply.js';
import { abs, dirname, isWithin, joinRel } from './paths.js';
import { lgetxattr } from '../kernel/xattr.js';

/** What we know about a path of the upper that this apply has created or checked. */
export interface Node {
  /** Made by this apply (so: ours to replace or delete, and not hidden by whiteouts). */
  created: boolean;
  dir: boolean;
  /** An overlay whiteout this apply made. */
  whiteout?: boolean;
  /** For dirs: carries the opaque xattr (hides the lowers below it). */
  opaque?: boolean;
}

export function lstatOrNull(path: string): Stats | undefined {
  return lstatSync(path, { throwIfNoEntry: false });
}

export function isWhiteoutStat(st: Stats): boolean {
  return st.isCharacterDevice() && st.rdev === 0;
}

/** The known state of one apply's upper, and the merged view through it. */
export class UpperView {
  readonly upper: string;
  /** Overlay lower dirs, immediate parent first. */
  readonly lowers: string[];
  /** There are lowers: whiteouts and opaque dirs are made, not just deletions. */
  readonly overlay: boolean;
  readonly opaqueXattr: string;
  readonly nodes = new Map<string, Node>();
  /** Dirs that have children recorded in `nodes` (so removal must forget them). */
  private readonly hasChildNodes = new Set<string>();
  /** Dir mode and times, set when all entries are in (children would disturb mtimes). */
  readonly finalDirs = new Map<string, { mode: number; times?: { atime: number; mtime: number } }>();

  /** @throws InvalidArgumentError when the upper is not a directory. */
  constructor(target: LayerTarget) {
    this.upper = target.upper.replace(/\/+$/, '') || '/';
    this.lowers = target.lowers.map((l) => l.replace(/\/+$/, '') || '/');
    this.overlay = this.lowers.length > 0;
    this.opaqueXattr = target.userxattr ? 'user.overlay.opaque' : 'trusted.overlay.opaque';
    const st = lstatOrNull(this.upper);
    if (!st?.isDirectory()) throw new InvalidArgumentError(`apply target ${q(this.upper)} is not a directory`);
    this.nodes.set('', { created: false, dir: true, opaque: this.overlay && this.isOpaqueOnDisk(this.upper) });
  }

  isOpaqueOnDisk(path: string): boolean {
    const v = lgetxattr(path, this.opaqueXattr);
    return v !== undefined && v.length === 1 && v[0] === 0x79; // "y"
  }

  /** Records what we learnt about `rel` (and remembers that its parent has recorded children). */
  remember(rel: string, node: Node): void {
    this.nodes.set(rel, node);
    this.hasChildNodes.add(dirname(rel));
  }

  /** Forgets `rel` and everything below it (after it was removed or moved aside). */
  forget(rel: string, wasDir: boolean): void {
    this.nodes.delete(rel);
    this.finalDirs.delete(rel);
    if (!wasDir || !this.hasChildNodes.has(rel)) return;
    for (const key of this.nodes.keys()) if (isWithin(key, rel)) this.nodes.delete(key);
    for (const key of this.finalDirs.keys()) if (isWithin(key, rel)) this.finalDirs.delete(key);
    for (const key of this.hasChildNodes) if (isWithin(key, rel)) this.hasChildNodes.delete(key);
  }

  /**
   * The lower layers (indexes) that contribute children to the merged dir
   * `dirRel`, whose components are known upper dirs: overlayfs' lookup, one
   * component at a time, stopping at whiteouts, non-dirs and opaque dirs.
   */
  lowerStack(dirRel: string): number[] {
    if (!this.overlay) return [];
    let stack = this.lowers.map((_, i) => i);
    if (this.nodes.get('')?.opaque) return [];
    if (dirRel === '') return stack;
    let prefix = '';
    for (const part of dirRel.split('/')) {
      prefix = joinRel(prefix, part);
      if (this.nodes.get(prefix)?.opaque) return [];
      const next: number[] = [];
      for (const i of stack) {
        const path = abs(this.lowers[i]!, prefix);
        const st = lstatOrNull(path);
        if (!st) continue;
        if (!st.isDirectory()) break; // a whiteout or non-dir ends the merge here
        next.push(i);
        if (this.isOpaqueOnDisk(path)) break;
      }
      stack = next;
      if (stack.length === 0) break;
    }
    return stack;
  }

  /** What the lowers show at `rel` (whose parent is a known upper dir), or nothing. */
  lookupLower(rel: string): { path: string; st: Stats } | undefined {
    for (const i of this.lowerStack(dirname(rel))) {
      const path = abs(this.lowers[i]!, rel);
      const st = lstatOrNull(path);
      if (!st) continue;
      if (isWhiteoutStat(st)) return undefined;
      return { path, st };
    }
    return undefined;
  }
}
