/**
 * Guards for caller input: keys, names and labels. Keys are user strings,
 * never paths; these checks only keep out what cannot round-trip through
 * SQLite and C APIs (NUL, lone surrogates) and what containerd refuses.
 *
 * Pure: checks values, reads and writes nothing.
 */
import { InvalidArgumentError, q } from './errors.js';

/** Sets an own property even for the key `__proto__`, which plain assignment would swallow. */
export function setLabel(labels: Record<string, string>, key: string, value: string): void {
  if (key === '__proto__') {
    Object.defineProperty(labels, key, { value, enumerable: true, writable: true, configurable: true });
  } else {
    labels[key] = value;
  }
}

/** The value of label `key`, undefined when absent (never a property inherited from Object.prototype). */
export function ownLabel(labels: Readonly<Record<string, string>>, key: string): string | undefined {
  return Object.hasOwn(labels, key) ? labels[key] : undefined;
}

/** containerd's limit on one label: key and value together, in bytes. */
export const MAX_LABEL_BYTES = 4096;

const LONE_SURROGATE = /\p{Surrogate}/u;

function describe(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  return typeof value;
}

/** Returns `value` if it is a usable key or name; throws InvalidArgumentError naming `what` otherwise. */
export function checkKey(value: unknown, what: string): string {
  if (typeof value !== 'string') {
    throw new InvalidArgumentError(`Expected ${what} to be a string, got ${describe(value)}`);
  }
  if (value === '') throw new InvalidArgumentError(`${what} must not be empty; pass a non-empty string`);
  if (value.includes('\0')) throw new InvalidArgumentError(`${what} ${q(value)} contains a NUL character; remove it`);
  if (LONE_SURROGATE.test(value)) {
    throw new InvalidArgumentError(`${what} ${q(value)} is not well-formed Unicode (lone surrogate); it could not be stored faithfully`);
  }
  return value;
}

/** `parent` may be omitted, undefined or '' for "no parent". */
export function checkParent(value: unknown): string {
  return value === undefined || value === '' ? '' : checkKey(value, 'parent');
}

function checkLabelText(text: string, what: string): void {
  if (text.includes('\0')) throw new InvalidArgumentError(`${what} contains a NUL character; remove it`);
  if (LONE_SURROGATE.test(text)) throw new InvalidArgumentError(`${what} is not well-formed Unicode (lone surrogate)`);
}

/** Throws InvalidArgumentError when a label's key and value together exceed {@link MAX_LABEL_BYTES}. */
export function checkLabelSize(key: string, value: string): void {
  // Each UTF-16 unit is at most 3 UTF-8 bytes: skip the exact count for short labels (hot path).
  if ((key.length + value.length) * 3 <= MAX_LABEL_BYTES) return;
  const bytes = Buffer.byteLength(key) + Buffer.byteLength(value);
  if (bytes > MAX_LABEL_BYTES) {
    throw new InvalidArgumentError(
      `label ${q(key)} is ${bytes} bytes long with its value, over the limit of ${MAX_LABEL_BYTES} bytes for key and value together; shorten it`,
    );
  }
}

/**
 * Validates a labels argument and returns a fresh copy. Labels whose value
 * is '' are dropped (containerd does not store them) unless `keepEmpty`,
 * which update needs to tell "delete this key" apart.
 */
export function checkLabels(labels: unknown, keepEmpty = false): Record<string, string> {
  const out: Record<string, string> = {};
  if (labels === undefined || labels === null) return out;
  if (typeof labels !== 'object' || Array.isArray(labels)) {
    throw new InvalidArgumentError(`Expected labels to be an object of strings, got ${describe(labels)}`);
  }
  for (const [key, value] of Object.entries(labels)) {
    if (typeof value !== 'string') {
      throw new InvalidArgumentError(`Expected label ${q(key)} to be a string, got ${describe(value)}; label values are strings`);
    }
    if (key === '') throw new InvalidArgumentError('a label key must not be empty');
    checkLabelText(key, `label key ${q(key)}`);
    checkLabelText(value, `value of label ${q(key)}`);
    checkLabelSize(key, value);
    if (value !== '' || keepEmpty) setLabel(out, key, value);
  }
  return out;
}

/** Options objects of prepare/view/commit: `{ labels? }`. */
export function checkSnapshotOptions(opts: unknown): Record<string, string> {
  if (opts === undefined || opts === null) return {};
  if (typeof opts !== 'object' || Array.isArray(opts)) {
    throw new InvalidArgumentError(`Expected snapshot options to be an object like { labels }, got ${describe(opts)}`);
  }
  for (const name of Object.keys(opts)) {
    if (name !== 'labels') throw new InvalidArgumentError(`Unknown snapshot option \`${name}\`; the only one is \`labels\``);
  }
  return checkLabels((opts as { labels?: unknown }).labels);
}
