/**
 * Human output: aligned tables, IEC sizes, times, snapshot names made safe
 * for a terminal, trees, and `mount` command lines. Pure functions.
 */
import type { Info, Mount } from '../index.js';

const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'] as const;

/** `512 B`, `8.0 KiB`, `1.5 MiB`: powers of 1024, one decimal from KiB on. */
export function humanSize(bytes: number): string {
  if (!Number.isFinite(bytes)) return String(bytes);
  let value = Math.abs(bytes);
  let unit = 0;
  while (value >= 1024 && unit < UNITS.length - 1) {
    value /= 1024;
    unit++;
  }
  // 1023.96 KiB would print as "1024.0 KiB": carry it to the next unit.
  if (unit > 0 && value.toFixed(1) === '1024.0' && unit < UNITS.length - 1) {
    value /= 1024;
    unit++;
  }
  const sign = bytes < 0 ? '-' : '';
  return unit === 0 ? `${sign}${value} B` : `${sign}${value.toFixed(1)} ${UNITS[unit]}`;
}

/** Seconds as `0:07`, `12:03`, `1:02:03`. */
export function humanDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return '-:--';
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const ss = String(s % 60).padStart(2, '0');
  return h > 0 ? `${h}:${String(m).padStart(2, '0')}:${ss}` : `${m}:${ss}`;
}

/** A time in UTC to the second: `2026-01-02T15:04:05Z`. */
export function humanTime(date: Date): string {
  return `${date.toISOString().slice(0, 19)}Z`;
}

// Keys and names are arbitrary strings: newlines, tabs, escapes and blanks
// would break a table or a terminal, so such names are shown JSON-quoted.
const UNSAFE = /[\s"\\\u0000-\u001f\u007f-\u009f\u2028\u2029]|^$/u;

/** A snapshot name as shown to a human: as is, or JSON-quoted when it has blanks or control characters. */
export function displayName(name: string): string {
  return UNSAFE.test(name) ? JSON.stringify(name) : name;
}

/** `k=v,k2=v2`, sorted by key; `-` when there are none. */
export function labelList(labels: Readonly<Record<string, string>>): string {
  const keys = Object.keys(labels).sort();
  if (keys.length === 0) return '-';
  return keys.map((k) => `${displayName(k)}=${displayName(labels[k]!)}`).join(',');
}

/** Width in terminal columns (code points; wide characters count as one). */
function width(s: string): number {
  let n = 0;
  for (const _ of s) n++;
  return n;
}

export type Align = 'left' | 'right';

/**
 * Rows aligned under a header, columns separated by two spaces. The last
 * column is never padded (so lines carry no trailing blanks).
 */
export function table(header: readonly string[], rows: readonly (readonly string[])[], align: readonly Align[] = []): string {
  const all = [header, ...rows];
  const widths = header.map((_, c) => Math.max(...all.map((r) => width(r[c] ?? ''))));
  const lines = all.map((row) =>
    row
      .map((cell, c) => {
        if (c === row.length - 1 && align[c] !== 'right') return cell;
        const pad = ' '.repeat((widths[c] ?? 0) - width(cell));
        return align[c] === 'right' ? pad + cell : cell + pad;
      })
      .join('  ')
      .trimEnd(),
  );
  return `${lines.join('\n')}\n`;
}

/** `Key:   value` lines, keys padded to one width. */
export function fields(pairs: readonly (readonly [string, string])[]): string {
  const w = Math.max(...pairs.map(([k]) => width(k))) + 1;
  return pairs.map(([k, v]) => `${`${k}:`.padEnd(w + 1)} ${v}`.trimEnd()).join('\n') + '\n';
}

/** The stable JSON form of an Info: `parent` is `null` when there is none; times are ISO 8601. */
export interface InfoJson {
  name: string;
  kind: Info['kind'];
  parent: string | null;
  labels: Record<string, string>;
  created: string;
  updated: string;
}

export function infoJson(info: Info): InfoJson {
  return {
    name: info.name,
    kind: info.kind,
    parent: info.parent ?? null,
    labels: info.labels,
    created: info.created.toISOString(),
    updated: info.updated.toISOString(),
  };
}

export interface TreeNode {
  name: string;
  kind: Info['kind'];
  children: TreeNode[];
}

/**
 * The forest of parent chains: snapshots without a (known) parent are roots,
 * children sorted by name. Built without recursion (chains can be long).
 */
export function buildForest(infos: readonly Info[]): TreeNode[] {
  const nodes = new Map<string, TreeNode>();
  for (const i of infos) nodes.set(i.name, { name: i.name, kind: i.kind, children: [] });
  const roots: TreeNode[] = [];
  for (const i of infos) {
    const node = nodes.get(i.name)!;
    const parent = i.parent === undefined ? undefined : nodes.get(i.parent);
    (parent === undefined ? roots : parent.children).push(node);
  }
  const byName = (a: TreeNode, b: TreeNode) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0);
  roots.sort(byName);
  for (const n of nodes.values()) n.children.sort(byName);
  return roots;
}

/** Draws a forest with box-drawing guides, one snapshot per line: `name (kind)`. */
export function drawForest(roots: readonly TreeNode[]): string {
  const out: string[] = [];
  // Depth-first with an explicit stack: [node, prefix for its line, prefix for its children].
  const stack: [TreeNode, string, string][] = [];
  for (let i = roots.length - 1; i >= 0; i--) stack.push([roots[i]!, '', '']);
  while (stack.length > 0) {
    const [node, linePrefix, childPrefix] = stack.pop()!;
    out.push(`${linePrefix}${displayName(node.name)} (${node.kind})`);
    for (let i = node.children.length - 1; i >= 0; i--) {
      const last = i === node.children.length - 1;
      stack.push([node.children[i]!, `${childPrefix}${last ? '└── ' : '├── '}`, `${childPrefix}${last ? '    ' : '│   '}`]);
    }
  }
  return out.length === 0 ? '' : `${out.join('\n')}\n`;
}

/** Quotes a word for a POSIX shell, only when it needs it. */
export function shellQuote(word: string): string {
  if (/^[A-Za-z0-9_@%+=:,./-]+$/.test(word)) return word;
  return `'${word.replace(/'/g, `'\\''`)}'`;
}

/**
 * A util-linux `mount` command line for one mount spec, as `ctr snapshots
 * mounts` prints them. Binds use `-o bind,...`/`-o rbind,...` (util-linux
 * applies `ro` with a remount itself); other types `-t TYPE SOURCE`.
 */
export function mountCommand(m: Mount, target: string): string {
  const opts = m.options.length > 0 ? ['-o', shellQuote(m.options.join(','))] : [];
  if (m.type === 'bind' || m.type === 'rbind') {
    const options = m.options.some((o) => o === 'bind' || o === 'rbind') ? m.options : [m.type, ...m.options];
    return ['mount', '-o', shellQuote(options.join(',')), shellQuote(m.source), shellQuote(target)].join(' ');
  }
  return ['mount', '-t', shellQuote(m.type), ...opts, shellQuote(m.source), shellQuote(target)].join(' ');
}

/** Mount specs as a table: TYPE, SOURCE, OPTIONS (comma-joined). */
export function mountsTable(mounts: readonly Mount[]): string {
  return table(
    ['TYPE', 'SOURCE', 'OPTIONS'],
    mounts.map((m) => [m.type, m.source, m.options.join(',')]),
  );
}
