/**
 * Mount specs, as pure functions of a snapshot's id, its parent chain and
 * the resolved overlay settings (semantics.md, "Mount specs"). No I/O here,
 * so the table can be tested without root.
 *
 * Knows the layout `<root>/snapshots/<id>/{fs,work}` and nothing of the
 * store or the kernel.
 */
import type { Kind, Mount } from './types.js';

/** Settings that shape every overlay spec of one snapshotter; fixed at open. */
export interface SpecSettings {
  /** `<root>/snapshots`. */
  readonly snapshotsDir: string;
  /** Configured mount options, user namespace and index handling already folded in, in spec order. */
  readonly overlayOptions: readonly string[];
  /** `'native'`: every `fs` is a full tree and every mount a bind (lib/disk/native.ts). Default `'overlay'`. */
  readonly driver?: 'overlay' | 'native';
}

/**
 * The overlay options every spec carries after `lowerdir=`: the configured
 * ones, then `userxattr` where needed, then `index=off` where the kernel has
 * the `index` parameter, unless the configured options already set `index=`.
 */
export function overlayOptions(configured: readonly string[], userxattr: boolean, kernelHasIndex: boolean): string[] {
  const out = [...configured];
  if (userxattr && !out.includes('userxattr')) out.push('userxattr');
  if (kernelHasIndex && !out.some((o) => o.startsWith('index='))) out.push('index=off');
  return out;
}

export function snapshotDir(settings: SpecSettings, id: number): string {
  return `${settings.snapshotsDir}/${id}`;
}

export function fsDir(settings: SpecSettings, id: number): string {
  return `${settings.snapshotsDir}/${id}/fs`;
}

export function workDir(settings: SpecSettings, id: number): string {
  return `${settings.snapshotsDir}/${id}/work`;
}

/**
 * The one mount of a snapshot. `parents` are the ids of its parent chain,
 * immediate parent first; `idmap` holds `uidmap=`/`gidmap=` options that
 * come first when ID mapping is on and the labels are present; `volatile`
 * adds overlayfs' `volatile` to an active's overlay. Hot: every prepare,
 * view and mounts call builds one.
 *
 * ID maps go on the mounts of committed layers (the lower layers of an
 * overlay, and the bind of a view of one layer), which hold the ids of
 * the image unmapped. A snapshot's own dir (an overlay's upper, the bind
 * of a parentless snapshot) is written by the container with host ids and
 * owned by the mapped root, so it is not mapped again.
 */
export function buildMounts(settings: SpecSettings, kind: Kind, id: number, parents: readonly number[], idmap: readonly string[] = [], volatile = false): Mount[] {
  if (settings.driver === 'native') {
    // An active's own fs is its whole tree; a view shows its parent's (already merged) tree as it is.
    const source = kind === 'view' && parents.length > 0 ? parents[0]! : id;
    return [{ type: 'bind', source: fsDir(settings, source), options: [kind === 'active' ? 'rw' : 'ro', 'rbind'] }];
  }
  if (parents.length === 0) {
    return [{ type: 'bind', source: fsDir(settings, id), options: [kind === 'active' ? 'rw' : 'ro', 'rbind'] }];
  }
  if (kind === 'view' && parents.length === 1) {
    return [{ type: 'bind', source: fsDir(settings, parents[0]!), options: [...idmap, 'ro', 'rbind'] }];
  }
  let lower = 'lowerdir=';
  for (let i = 0; i < parents.length; i++) {
    if (i > 0) lower += ':';
    lower += fsDir(settings, parents[i]!);
  }
  const options: string[] = [...idmap];
  if (kind === 'active') options.push(`workdir=${workDir(settings, id)}`, `upperdir=${fsDir(settings, id)}`);
  options.push(lower, ...settings.overlayOptions);
  if (volatile && kind === 'active') options.push('volatile');
  return [{ type: 'overlay', source: 'overlay', options }];
}
