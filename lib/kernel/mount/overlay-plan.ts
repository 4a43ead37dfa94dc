/**
 * An overlay mount's data words, checked and sorted before any syscall:
 * `lowerdir=` parsed into layers (as the kernel parses it, escapes and
 * data-only layers included), `upperdir=`/`workdir=` unescaped, the rest
 * kept in order, and the chain held to {@link MAX_LOWER_LAYERS}. Pure: a
 * malformed option or a chain over the limit fails here with
 * InvalidArgumentError and nothing is mounted. Mounting is overlay.ts.
 */
import { resolve } from 'node:path';
import { InvalidArgumentError, q } from '../../model/errors.js';

/** overlayfs stacks at most this many lower layers (OVL_MAX_STACK in fs/overlayfs/params.h). */
export const MAX_LOWER_LAYERS = 500;

/**
 * The deepest chain of lower layers `mountAll` can mount here: the
 * kernel's limit, which both strategies reach whatever the root path
 * length. Callers can check a chain against it before mounting.
 */
export function overlayLowerLimit(): number {
  return MAX_LOWER_LAYERS;
}

/** One lower layer; `path` is the real path, with overlayfs' `\` escapes removed. */
export interface LowerLayer {
  path: string;
  /** A data-only layer (after `::` in `lowerdir=`), added with `datadir+`. */
  data: boolean;
}

/** One overlay option, in the order given. Paths are unescaped. */
export type OverlayOption =
  | {
      kind: 'lowerdir';
      layers: LowerLayer[];
      /** The value as given when it has no `\` and so is already in escaped form (what mount(2) gets back). */
      plain?: string;
    }
  | { kind: 'upperdir' | 'workdir'; path: string }
  | { kind: 'other'; word: string; key: string; value: string | undefined };

/** An overlay mount, checked and ready for either strategy. */
export interface OverlayPlan {
  options: OverlayOption[];
  /** Lower layers, data-only ones included (they count towards the limit too). */
  layers: number;
  /** `upperdir` was given: the mount is writable unless `ro`. */
  writable: boolean;
}

const ESCAPED = /[\\:,]/g;

/** Escapes a path for an overlay options string: `\`, `:` and `,` get a backslash. */
export function escapeOverlayPath(path: string): string {
  if (!path.includes('\\') && !path.includes(':') && !path.includes(',')) return path;
  return path.replace(ESCAPED, (c) => `\\${c}`);
}

/** Removes overlayfs escapes the way the kernel's ovl_unescape does: `\x` is `x`. */
export function unescapeOverlayPath(value: string): string {
  if (!value.includes('\\')) return value;
  let out = '';
  for (let i = 0; i < value.length; i++) {
    let c = value[i]!;
    if (c === '\\') {
      i++;
      if (i >= value.length) break;
      c = value[i]!;
    }
    out += c;
  }
  return out;
}

/** Splits one data word at unescaped commas, as overlayfs splits its options string. */
function splitOptionWords(word: string): string[] {
  if (!word.includes('\\')) return word.split(',').filter((w) => w !== '');
  const out: string[] = [];
  let start = 0;
  for (let i = 0; i < word.length; i++) {
    const c = word[i];
    if (c === '\\') i++;
    else if (c === ',') {
      out.push(word.slice(start, i));
      start = i + 1;
    }
  }
  out.push(word.slice(start));
  return out.filter((w) => w !== '');
}

/**
 * Parses a `lowerdir=` value: layers separated by unescaped `:`, data-only
 * layers after `::`, `\` escaping `:`, `,` and `\` itself. Mirrors the
 * kernel's rules so that a bad value fails here, with a clear message,
 * whichever strategy mounts it.
 */
export function parseLowerdirs(value: string): LowerLayer[] {
  if (value === '') throw new InvalidArgumentError('overlay option "lowerdir=" is empty: give at least one lower directory');
  if (value.startsWith(':')) throw new InvalidArgumentError(`overlay option lowerdir=${q(value)} starts with ":": appending lower layers is not supported`);
  if (!value.includes('\\')) return parsePlainLowerdirs(value);
  const raw: string[] = [];
  const colons: number[] = []; // number of colons before raw[i]
  let current = '';
  let run = 0;
  for (let i = 0; i < value.length; i++) {
    const c = value[i]!;
    if (c === '\\') {
      current += c + (value[i + 1] ?? '');
      i++;
      continue;
    }
    if (c === ':') {
      if (run === 0) {
        raw.push(current);
        current = '';
      }
      run++;
      if (run > 2) throw new InvalidArgumentError(`overlay option lowerdir=${q(value)} has ":::": only ":" and "::" separate layers`);
      continue;
    }
    if (run > 0) colons.push(run);
    run = 0;
    current += c;
  }
  if (run > 0) throw new InvalidArgumentError(`overlay option lowerdir=${q(value)} ends with ":": escape a colon in a path as "\\:"`);
  raw.push(current);
  const layers: LowerLayer[] = [];
  let data = false;
  for (let i = 0; i < raw.length; i++) {
    if (i > 0) {
      const sep = colons[i - 1];
      if (sep === 2) data = true;
      else if (data) throw new InvalidArgumentError(`overlay option lowerdir=${q(value)}: a regular lower layer cannot follow a data-only layer ("::")`);
    }
    const path = unescapeOverlayPath(raw[i]!);
    if (path === '') throw new InvalidArgumentError(`overlay option lowerdir=${q(value)} has an empty layer`);
    layers.push({ path, data });
  }
  return layers;
}

/**
 * {@link parseLowerdirs} of a value without `\` (the usual one: nothing to
 * unescape), by splitting at `:`; the same errors, checked in the same order.
 * Hot path: every overlay mount parses its chain.
 */
function parsePlainLowerdirs(value: string): LowerLayer[] {
  if (value.includes(':::')) throw new InvalidArgumentError(`overlay option lowerdir=${q(value)} has ":::": only ":" and "::" separate layers`);
  if (value.endsWith(':')) throw new InvalidArgumentError(`overlay option lowerdir=${q(value)} ends with ":": escape a colon in a path as "\\:"`);
  const layers: LowerLayer[] = [];
  let data = false;
  // After the checks above, an empty part can only be the middle of a "::".
  let double = false;
  for (const part of value.split(':')) {
    if (part === '') {
      double = true;
      continue;
    }
    if (double) data = true;
    else if (data) throw new InvalidArgumentError(`overlay option lowerdir=${q(value)}: a regular lower layer cannot follow a data-only layer ("::")`);
    double = false;
    layers.push({ path: part, data });
  }
  return layers;
}

/**
 * Checks the data words of an overlay mount and sorts them into layers and
 * other options. Pure: runs before any syscall, so a chain over the limit
 * or a malformed option fails with InvalidArgumentError and nothing is
 * mounted.
 */
export function planOverlay(data: readonly string[], target: string): OverlayPlan {
  const options: OverlayOption[] = [];
  let lowerdirs: LowerLayer[] | undefined;
  let writable = false;
  const words = data.some((w) => w.includes(',')) ? data.flatMap(splitOptionWords) : data;
  for (const word of words) {
    const eq = word.indexOf('=');
    const key = eq === -1 ? word : word.slice(0, eq);
    const value = eq === -1 ? undefined : word.slice(eq + 1);
    if (key === 'lowerdir') {
      if (lowerdirs !== undefined) throw new InvalidArgumentError(`overlay on ${q(target)} has more than one lowerdir= option: give all lower layers in one, top first`);
      lowerdirs = parseLowerdirs(value ?? '');
      // Without a backslash no layer path has `:`, `,` or `\`: escaping it again would give the value back.
      options.push(value!.includes('\\') ? { kind: 'lowerdir', layers: lowerdirs } : { kind: 'lowerdir', layers: lowerdirs, plain: value! });
    } else if (key === 'upperdir' || key === 'workdir') {
      if (!value) throw new InvalidArgumentError(`overlay option ${key}= on ${q(target)} is empty`);
      if (key === 'upperdir') writable = true;
      options.push({ kind: key, path: unescapeOverlayPath(value) });
    } else if (key === 'lowerdir+' || key === 'datadir+') {
      throw new InvalidArgumentError(`overlay option ${q(word)} on ${q(target)}: give lower layers as one lowerdir= option separated by ":" (mountAll uses ${key} itself where the kernel has it)`);
    } else {
      options.push({ kind: 'other', word, key, value });
    }
  }
  if (lowerdirs === undefined) throw new InvalidArgumentError(`overlay on ${q(target)} has no lowerdir= option`);
  if (lowerdirs.length > MAX_LOWER_LAYERS) {
    throw new InvalidArgumentError(
      `overlay on ${q(target)} has ${lowerdirs.length} lower layers, more than the kernel's limit of ${MAX_LOWER_LAYERS} (overlayfs' OVL_MAX_STACK); flatten the chain`,
    );
  }
  return { options, layers: lowerdirs.length, writable };
}

/**
 * Every directory an overlay mount uses (lower layers, upper and work
 * dirs), as absolute paths: what a mount record must protect when the
 * kernel is given them in another form.
 */
export function overlayPaths(plan: OverlayPlan): string[] {
  const paths: string[] = [];
  for (const option of plan.options) {
    if (option.kind === 'lowerdir') for (const layer of option.layers) paths.push(resolve(layer.path));
    else if (option.kind !== 'other') paths.push(resolve(option.path));
  }
  return paths;
}
