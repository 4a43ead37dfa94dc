/**
 * containerd's filter language for snapshot walks.
 *
 * `walk(fn, ...filters)` takes zero or more filter strings. The strings are
 * OR-ed; each string is a comma-separated AND of selectors, and a selector is
 * `fieldpath [op value]`:
 *
 * ```text
 * kind==committed                       equality
 * name!=base                            inequality (a missing field counts as "")
 * name~=^sha256:                        RE2 regular expression, unanchored
 * labels."containerd.io/gc.root"        presence (no operator)
 * parent!=""                            "has a parent"
 * kind==active,labels.team==infra       AND
 * ```
 *
 * The grammar, the quoting rules and the matching rules follow containerd's
 * `filters` package (scanner, parser, quote) and the snapshot adaptor that
 * containerd's own overlay snapshotter uses for Walk (snapshots/storage),
 * quirks included, so that a filter means the same thing here as it does
 * there. The quirks a user is most likely to meet:
 *
 * - `""` is a filter that matches everything (and, OR-ed, makes the whole
 *   walk match everything); a string of only whitespace is a syntax error.
 * - Whitespace may precede a field, an operator or a value, but not a `,`
 *   or the end of the string: `name==a ,kind==view` and `name==a ` are errors.
 * - A bare value runs until `,` or whitespace, so `name==a=b.c` compares with
 *   `a=b.c`; it cannot start with `.` `,` `=` `!` `~` `/` `|` or `"`.
 * - Quoted strings use Go syntax and Go escapes only. `/…/` and `|…|` are
 *   accepted for `~=` values alone, and they are not raw: `\d` inside them is
 *   an invalid escape, write `\\d` (or leave the value bare: `name~=\d+`).
 * - `!=` and `~=` do not require the field to exist: a missing label reads
 *   as "", so `labels.x!=y` and `labels.x~=^$` match snapshots without `x`.
 * - `labels.a.b` looks up the label key `a.b` (the parts after `labels` are
 *   joined with `.`), the same key as `labels."a.b"`. For `kind`, `name` and
 *   `parent` any further parts are ignored: `name.x==k` is `name==k`.
 *
 * Deliberate differences from containerd, each to keep a walk from failing
 * silently or running unbounded:
 *
 * - A `~=` pattern that does not compile is an error when the filter is
 *   parsed (containerd logs it and lets the selector match nothing).
 * - A pattern that compiles to more than {@link MAX_REGEX_PROGRAM} RE2
 *   instructions is rejected: matching is linear in the input but also in
 *   the program size, and walks run every selector on every snapshot.
 * - A quoted string whose `\x`/octal escapes decode to bytes that are not
 *   UTF-8 is rejected: no name or label (JavaScript strings stored as UTF-8)
 *   could ever equal it, and the store could not bind it to SQL faithfully.
 *
 * Regular expressions use re2js, a port of RE2 with Go's syntax and
 * linear-time matching, so a pattern such as `(a+)+$` cannot backtrack.
 *
 * This module owns the language's public face (the types and
 * {@link parseFilters}); the scanner and parser are in filter-syntax.ts, the
 * matching in filter-match.ts. Pure: no I/O, nothing of the store (which
 * plans indexed walks from {@link Selector}s on its own side).
 */

import { InvalidArgumentError } from './errors.js';
import { type CompiledSelector, MATCH_ALL, ParsedFilter } from './filter-match.js';
import { Parser } from './filter-syntax.js';

export { MAX_REGEX_PROGRAM } from './filter-syntax.js';

/** What a filter is matched against: the parts of a snapshot's Info it can see. */
export interface FilterTarget {
  /** `'active'`, `'view'` or `'committed'`; any other string reads as a missing field. */
  kind: string;
  name: string;
  /** Name of the parent, `''` when there is none (the field is present either way). */
  parent: string;
  labels: Readonly<Record<string, string>>;
}

/** `present` is a selector without operator: "the field exists". */
export type Operator = 'present' | '==' | '!=' | '~=';

/**
 * One parsed selector, frozen.
 *
 * How a field path resolves against a snapshot (containerd's snapshot adaptor):
 * - `fieldpath[0]` is `kind`, `name` or `parent`: that field; later parts are
 *   ignored. `name` and `parent` are always present (`parent` is `''` for a
 *   root); `kind` is present for the three known kinds.
 * - `fieldpath[0]` is `labels`: the label whose key is
 *   `fieldpath.slice(1).join('.')`, present only if the snapshot has it.
 * - anything else: never present, and its value reads as `''`.
 *
 * Operators: `present` is true when the field is present; `==` when it is
 * present and equal to `value`; `!=` when its value (`''` if missing)
 * differs from `value`; `~=` when `value`, an RE2 pattern, matches anywhere
 * in the field's value (`''` if missing).
 */
export interface Selector {
  readonly fieldpath: readonly string[];
  readonly op: Operator;
  /** The unquoted value; `''` for `present`. For `~=` the RE2 pattern source. */
  readonly value: string;
}

/** A parsed set of filter strings, frozen. */
export interface Filter {
  /**
   * OR of ANDs: one clause per filter string, each a non-empty list of
   * selectors that must all match. Empty array = match everything (no
   * filter was given, or one of them was `""`).
   */
  readonly clauses: readonly (readonly Selector[])[];
  /** True when `target` satisfies at least one clause. Allocates nothing itself (re2js does its own matching). */
  match(target: FilterTarget): boolean;
}

/**
 * Parses walk filters: the strings are OR-ed, no strings match everything.
 *
 * @throws InvalidArgumentError when an element is not a string, or a string
 *   is not a valid filter (the message quotes it, gives the UTF-16 offset of
 *   the problem and how to quote), or a `~=` pattern does not compile or is
 *   too large. Nothing else is thrown for any input.
 */
export function parseFilters(filters: readonly unknown[]): Filter {
  if (!Array.isArray(filters)) {
    throw new InvalidArgumentError(`Expected filters to be an array of strings, got ${typeName(filters)}`);
  }
  const clauses: (readonly Selector[])[] = [];
  const compiled: CompiledSelector[][] = [];
  let matchAll = filters.length === 0;
  for (let i = 0; i < filters.length; i++) {
    const filter: unknown = filters[i];
    if (typeof filter !== 'string') {
      throw new InvalidArgumentError(`Expected filter ${i} to be a string, got ${typeName(filter)}`);
    }
    // containerd special-cases the empty string as "match everything"; the
    // other strings are still parsed so that a bad one is still reported.
    if (filter === '') {
      matchAll = true;
      continue;
    }
    const selectors = new Parser(filter).parse();
    clauses.push(Object.freeze(selectors.map((s) => s.selector)));
    compiled.push(selectors);
  }
  return matchAll ? MATCH_ALL : new ParsedFilter(Object.freeze(clauses), compiled);
}

function typeName(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'array';
  return typeof value;
}
