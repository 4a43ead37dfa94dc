/**
 * Helpers for the layer tests: trees described as data and built on disk,
 * GNU tar layers made from them, a reference extraction (GNU tar, then OCI
 * whiteouts applied by hand), tree and tar fingerprints to compare entry by
 * entry, and overlay mounts done with the `mount` command.
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  chmodSync,
  lchownSync,
  linkSync,
  lstatSync,
  lutimesSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  readlinkSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable, Writable } from 'node:stream';
import tar from 'tar-stream';
import { type EntryHeader, captureRawXattrs, entryXattrs } from '../../lib/layers/pax.js';
import { mknod } from '../../lib/kernel/files.js';
import { lsetxattr, lxattrs } from '../../lib/kernel/xattr.js';

/**
 * Runs `fn` with OVERLAY_SNAPSHOTTER_HASH_WORKER set to `mode` (`'1'`: the
 * layer helper threads, `'0'`: everything on the calling thread), then puts
 * the variable back as it was.
 */
export async function inMode<T>(mode: '0' | '1', fn: () => Promise<T>): Promise<T> {
  const saved = process.env.OVERLAY_SNAPSHOTTER_HASH_WORKER;
  process.env.OVERLAY_SNAPSHOTTER_HASH_WORKER = mode;
  try {
    return await fn();
  } finally {
    if (saved === undefined) delete process.env.OVERLAY_SNAPSHOTTER_HASH_WORKER;
    else process.env.OVERLAY_SNAPSHOTTER_HASH_WORKER = saved;
  }
}

/** One node of a tree to build. Paths are relative, parents listed before children. */
export type Spec =
  | { path: string; type: 'dir'; mode?: number; uid?: number; gid?: number; mtime?: number; xattrs?: Record<string, Buffer | string> }
  | { path: string; type: 'file'; content?: string | Buffer; mode?: number; uid?: number; gid?: number; mtime?: number; xattrs?: Record<string, Buffer | string> }
  | { path: string; type: 'symlink'; target: string; uid?: number; gid?: number; mtime?: number }
  | { path: string; type: 'hardlink'; target: string }
  | { path: string; type: 'char' | 'block'; major: number; minor: number; mode?: number; mtime?: number }
  | { path: string; type: 'fifo'; mode?: number; mtime?: number };

export function tempDir(prefix = 'layers-'): string {
  return mkdtempSync(join(tmpdir(), prefix));
}

/** Builds `specs` under `root`; dir times are set last so children do not disturb them. */
export function buildTree(root: string, specs: Spec[]): void {
  mkdirSync(root, { recursive: true });
  const dirTimes: Array<[string, number]> = [];
  for (const s of specs) {
    const p = join(root, s.path);
    const mtime = 'mtime' in s && s.mtime !== undefined ? s.mtime : 1_600_000_000;
    switch (s.type) {
      case 'dir':
        mkdirSync(p, { recursive: true });
        lchownSync(p, s.uid ?? 0, s.gid ?? 0);
        chmodSync(p, s.mode ?? 0o755);
        for (const [k, v] of Object.entries(s.xattrs ?? {})) lsetxattr(p, k, Buffer.from(v));
        dirTimes.push([p, mtime]);
        break;
      case 'file':
        writeFileSync(p, s.content ?? '');
        lchownSync(p, s.uid ?? 0, s.gid ?? 0);
        chmodSync(p, s.mode ?? 0o644);
        for (const [k, v] of Object.entries(s.xattrs ?? {})) lsetxattr(p, k, Buffer.from(v));
        lutimesSync(p, mtime, mtime);
        break;
      case 'symlink':
        symlinkSync(s.target, p);
        lchownSync(p, s.uid ?? 0, s.gid ?? 0);
        lutimesSync(p, mtime, mtime);
        break;
      case 'hardlink':
        linkSync(join(root, s.target), p);
        break;
      case 'char':
      case 'block':
        mknod(p, s.type === 'char' ? 'character-device' : 'block-device', s.mode ?? 0o600, s.major, s.minor);
        chmodSync(p, s.mode ?? 0o600);
        lutimesSync(p, mtime, mtime);
        break;
      case 'fifo':
        mknod(p, 'fifo', s.mode ?? 0o644);
        chmodSync(p, s.mode ?? 0o644);
        lutimesSync(p, mtime, mtime);
        break;
    }
  }
  for (const [p, t] of dirTimes.reverse()) lutimesSync(p, t, t);
  lutimesSync(root, 1_600_000_000, 1_600_000_000);
}

/** A layer tar of the tree at `dir`, made by GNU tar (PAX, numeric owners, all xattrs). */
export function gnuTar(dir: string): Buffer {
  return execFileSync('tar', ['--xattrs', "--xattrs-include=*", '--format=pax', '--numeric-owner', '-C', dir, '-cf', '-', '.'], {
    maxBuffer: 1 << 30,
  });
}

/**
 * What a container runtime without overlayfs does: extract each layer with
 * GNU tar over the previous ones, then apply its whiteouts by deleting.
 */
export function referenceExtract(layers: Buffer[], dir: string): void {
  mkdirSync(dir, { recursive: true });
  for (const layer of layers) {
    const entries = tarNames(layer);
    execFileSync('tar', ['--xattrs', '--xattrs-include=*', '--numeric-owner', '-xpf', '-', '-C', dir], { input: layer, stdio: ['pipe', 'ignore', 'pipe'] });
    const inLayer = new Set(entries);
    for (const name of entries) {
      const base = name.slice(name.lastIndexOf('/') + 1);
      if (!base.startsWith('.wh.')) continue;
      const parent = name.includes('/') ? name.slice(0, name.lastIndexOf('/')) : '';
      const parentPath = join(dir, parent);
      const st = lstatSync(parentPath);
      if (base === '.wh..wh..opq') {
        for (const child of readdirSync(parentPath)) {
          const rel = parent === '' ? child : `${parent}/${child}`;
          if (!inLayer.has(rel)) rmSync(join(dir, rel), { recursive: true, force: true });
        }
      } else {
        rmSync(join(parentPath, base.slice(4)), { recursive: true, force: true });
      }
      rmSync(join(parentPath, base), { force: true });
      lutimesSync(parentPath, st.atime, st.mtime);
    }
  }
}

/** Entry names of a tar, cleaned (`./a/` → `a`), root left out. */
export function tarNames(layer: Buffer): string[] {
  const out = execFileSync('tar', ['-tf', '-'], { input: layer, maxBuffer: 1 << 30 }).toString('utf8');
  return out
    .split('\n')
    .map((n) => n.replace(/^\.\//, '').replace(/\/$/, ''))
    .filter((n) => n !== '' && n !== '.');
}

/** A comparable description of one file-system entry. */
export interface Fingerprint {
  type: string;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  sha?: string;
  link?: string;
  rdev?: string;
  mtime: number;
  xattrs: string;
}

/**
 * Every xattr, overlayfs' own included: an opaque marker left on an upper
 * dir hides the lower layers' entries of that dir, so "the upper as before"
 * must see it. (A mounted overlay does not list them, so merged views
 * compare the same with or without.)
 */
function xattrString(map: Map<string, Buffer>): string {
  return [...map]
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
    .map(([k, v]) => `${k}=${v.toString('hex')}`)
    .join(',');
}

/** Every entry below `root` (root left out), plus the hard-link groups (names sharing an inode). */
export function treeFingerprint(root: string, opts: { dirMtimes?: boolean } = {}): { entries: Map<string, Fingerprint>; links: string[] } {
  const entries = new Map<string, Fingerprint>();
  const inodes = new Map<string, string[]>();
  const walk = (rel: string): void => {
    for (const name of readdirSync(join(root, rel)).sort()) {
      const r = rel === '' ? name : `${rel}/${name}`;
      const p = join(root, r);
      const st = lstatSync(p);
      const type = st.isDirectory() ? 'dir' : st.isFile() ? 'file' : st.isSymbolicLink() ? 'symlink' : st.isCharacterDevice() ? 'char' : st.isBlockDevice() ? 'block' : st.isFIFO() ? 'fifo' : 'other';
      const fp: Fingerprint = {
        type,
        mode: type === 'symlink' ? 0 : st.mode & 0o7777,
        uid: st.uid,
        gid: st.gid,
        size: type === 'file' ? st.size : 0,
        mtime: type === 'dir' && !opts.dirMtimes ? 0 : Math.floor(st.mtimeMs / 1000),
        xattrs: xattrString(lxattrs(p)),
      };
      if (type === 'file') fp.sha = createHash('sha256').update(readFileSync(p)).digest('hex');
      if (type === 'symlink') fp.link = readlinkSync(p);
      if (type === 'char' || type === 'block') fp.rdev = String(st.rdev);
      entries.set(r, fp);
      if (type !== 'dir' && st.nlink > 1) {
        const key = `${st.dev}:${st.ino}`;
        inodes.set(key, [...(inodes.get(key) ?? []), r]);
      }
      if (type === 'dir') walk(r);
    }
  };
  walk('');
  const links = [...inodes.values()].filter((g) => g.length > 1).map((g) => g.sort().join(' = ')).sort();
  return { entries, links };
}

/** A comparable description of every entry of a tar; hard links resolved to their target's description. */
export async function tarFingerprint(layer: Buffer): Promise<{ entries: Map<string, Fingerprint>; links: string[] }> {
  const entries = new Map<string, Fingerprint>();
  const groups = new Map<string, string[]>();
  const extract = tar.extract();
  captureRawXattrs(extract);
  const done = new Promise<void>((resolve, reject) => {
    extract.on('finish', () => resolve());
    extract.on('error', reject);
  });
  extract.on('entry', (header, stream, next) => {
    const chunks: Buffer[] = [];
    stream.on('data', (c) => chunks.push(c as Buffer));
    stream.on('end', () => {
      const name = header.name.replace(/^\.\//, '').replace(/\/$/, '');
      if (name === '' || name === '.') return next();
      const pax = (header.pax ?? {}) as Record<string, string>;
      const xattrs = entryXattrs(header as unknown as EntryHeader) ?? new Map<string, Buffer>();
      const base = name.slice(name.lastIndexOf('/') + 1);
      const type =
        header.type === 'directory' ? 'dir' : header.type === 'file' || header.type === 'contiguous-file' ? 'file' : header.type === 'symlink' ? 'symlink' : header.type === 'character-device' ? 'char' : header.type === 'block-device' ? 'block' : header.type === 'fifo' ? 'fifo' : header.type === 'link' ? 'link' : 'other';
      if (base.startsWith('.wh.')) {
        // Markers: only their presence matters.
        entries.set(name, { type: 'whiteout', mode: 0, uid: 0, gid: 0, size: 0, mtime: 0, xattrs: '' });
        return next();
      }
      if (type === 'link') {
        const target = (header.linkname ?? '').replace(/^\.\//, '');
        const t = entries.get(target);
        if (t) entries.set(name, { ...t });
        const root = [...groups.entries()].find(([, g]) => g.includes(target))?.[0] ?? target;
        groups.set(root, [...(groups.get(root) ?? [target]), name]);
        return next();
      }
      const data = Buffer.concat(chunks);
      const mtime = pax.mtime !== undefined ? Math.floor(Number(pax.mtime)) : Math.floor(header.mtime.getTime() / 1000);
      const fp: Fingerprint = {
        type,
        mode: type === 'symlink' ? 0 : header.mode & 0o7777,
        uid: header.uid,
        gid: header.gid,
        size: type === 'file' ? data.length : 0,
        mtime,
        xattrs: xattrString(xattrs),
      };
      if (type === 'file') fp.sha = createHash('sha256').update(data).digest('hex');
      if (type === 'symlink') fp.link = header.linkname ?? '';
      if (type === 'char' || type === 'block') fp.rdev = `${header.devmajor}:${header.devminor}`;
      entries.set(name, fp);
      next();
    });
    stream.resume();
  });
  Readable.from([layer]).pipe(extract as unknown as NodeJS.WritableStream);
  await done;
  const links = [...groups.values()].map((g) => g.sort().join(' = ')).sort();
  return { entries, links };
}

/** Makes a tar with tar-stream from header/body pairs (for layers GNU tar cannot make, like malicious ones). */
export async function packTar(entries: Array<{ header: Record<string, unknown> & { name: string }; body?: string | Buffer }>): Promise<Buffer> {
  const pack = tar.pack();
  const chunks: Buffer[] = [];
  const done = new Promise<void>((resolve, reject) => {
    pack.on('data', (c) => chunks.push(c as Buffer));
    pack.on('end', () => resolve());
    pack.on('error', reject);
  });
  for (const e of entries) {
    const header = { mode: 0o644, mtime: new Date(1_600_000_000_000), ...e.header } as Parameters<typeof pack.entry>[0];
    if (e.body !== undefined) pack.entry(header, e.body);
    else pack.entry(header);
  }
  pack.finalize();
  await done;
  return Buffer.concat(chunks);
}

/** Mounts a read-only overlay of `lowers` (top first) at `target` with the mount command; `extra` adds options (`userxattr`). */
export function mountOverlay(lowers: string[], target: string, extra: string[] = []): void {
  execFileSync('mount', ['-t', 'overlay', 'overlay', '-o', [`lowerdir=${lowers.join(':')}`, ...extra].join(','), target]);
}

export function unmount(target: string): void {
  try {
    execFileSync('umount', [target], { stdio: 'ignore' });
  } catch {
    /* not mounted */
  }
}

/** A collector Writable and the bytes it gathered. */
export function collector(): { stream: Writable; bytes: () => Buffer } {
  const chunks: Buffer[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, cb) {
      chunks.push(chunk);
      cb();
    },
  });
  return { stream, bytes: () => Buffer.concat(chunks) };
}

/** Differences between two fingerprint maps, as readable lines (empty when equal). */
export function compareFingerprints(a: Map<string, Fingerprint>, b: Map<string, Fingerprint>, labels = ['expected', 'actual']): string[] {
  const out: string[] = [];
  for (const [k, v] of a) {
    const w = b.get(k);
    if (!w) out.push(`${k}: only in ${labels[0]}`);
    else if (JSON.stringify(v) !== JSON.stringify(w)) out.push(`${k}: ${labels[0]} ${JSON.stringify(v)} != ${labels[1]} ${JSON.stringify(w)}`);
  }
  for (const k of b.keys()) if (!a.has(k)) out.push(`${k}: only in ${labels[1]}`);
  return out;
}
