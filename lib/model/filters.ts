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
 */

import { RE2JS } from 're2js';

import { InvalidArgumentError, q } from './errors.js';

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
 * Largest accepted `~=` program, in RE2 instructions. Typical patterns take
 * tens; a literal as long as the largest possible label (4 KiB) fits. Go's
 * own limit is in the millions, which in a walk over thousands of
 * snapshots would be a denial of service rather than a filter.
 */
export const MAX_REGEX_PROGRAM = 10_000;

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

// ---------------------------------------------------------------------------
// Matching

const FIELD_UNKNOWN = 0;
const FIELD_KIND = 1;
const FIELD_NAME = 2;
const FIELD_PARENT = 3;
const FIELD_LABEL = 4;

const OP_PRESENT = 0;
const OP_EQUAL = 1;
const OP_NOT_EQUAL = 2;
const OP_MATCHES = 3;

const OP_CODES: Readonly<Record<Operator, number>> = { present: OP_PRESENT, '==': OP_EQUAL, '!=': OP_NOT_EQUAL, '~=': OP_MATCHES };

const hasOwn = Object.prototype.hasOwnProperty;

/**
 * A selector resolved once at parse time: which field, the label key already
 * joined, the regex already compiled. All instances share one shape so the
 * hot loop below stays monomorphic.
 */
class CompiledSelector {
  readonly field: number;
  readonly key: string;
  readonly op: number;
  readonly value: string;
  readonly re: RE2JS | null;
  readonly selector: Selector;

  constructor(selector: Selector, re: RE2JS | null) {
    const head = selector.fieldpath[0];
    this.field =
      head === 'kind' ? FIELD_KIND
      : head === 'name' ? FIELD_NAME
      : head === 'parent' ? FIELD_PARENT
      : head === 'labels' ? FIELD_LABEL
      : FIELD_UNKNOWN;
    this.key = this.field === FIELD_LABEL ? selector.fieldpath.slice(1).join('.') : '';
    this.op = OP_CODES[selector.op];
    this.value = selector.value;
    this.re = re;
    this.selector = selector;
  }

  /** Hot path: runs for every snapshot of a walk. No allocation. */
  test(target: FilterTarget): boolean {
    let present: boolean;
    let value: string;
    switch (this.field) {
      case FIELD_KIND: {
        const kind = target.kind;
        present = kind === 'active' || kind === 'view' || kind === 'committed';
        value = present ? kind : '';
        break;
      }
      case FIELD_NAME:
        present = true;
        value = target.name;
        break;
      case FIELD_PARENT:
        present = true;
        value = target.parent ?? '';
        break;
      case FIELD_LABEL: {
        const labels = target.labels;
        present = labels != null && hasOwn.call(labels, this.key);
        value = present ? (labels[this.key] as string) : '';
        break;
      }
      default:
        present = false;
        value = '';
    }
    switch (this.op) {
      case OP_PRESENT:
        return present;
      case OP_EQUAL:
        return present && value === this.value;
      case OP_NOT_EQUAL:
        // containerd compares the adaptor's value without checking presence.
        return value !== this.value;
      default:
        // Likewise: a missing field is matched as the empty string.
        return (this.re as RE2JS).test(value);
    }
  }
}

class ParsedFilter implements Filter {
  readonly clauses: readonly (readonly Selector[])[];
  readonly #compiled: readonly (readonly CompiledSelector[])[];

  constructor(clauses: readonly (readonly Selector[])[], compiled: readonly (readonly CompiledSelector[])[]) {
    this.clauses = clauses;
    this.#compiled = compiled;
    Object.freeze(this);
  }

  /** Hot path: plain loops, no closures, no allocation. */
  match(target: FilterTarget): boolean {
    const compiled = this.#compiled;
    if (compiled.length === 0) return true;
    for (let i = 0; i < compiled.length; i++) {
      const clause = compiled[i] as readonly CompiledSelector[];
      let all = true;
      for (let j = 0; j < clause.length; j++) {
        if (!(clause[j] as CompiledSelector).test(target)) {
          all = false;
          break;
        }
      }
      if (all) return true;
    }
    return false;
  }
}

const MATCH_ALL: Filter = new ParsedFilter(Object.freeze([]), []);

// ---------------------------------------------------------------------------
// Scanning
//
// The scanner works on code points and reproduces the token boundaries of
// containerd's scanner, which decide what is accepted: whitespace is skipped
// only in front of a token, the parser looks at the raw next character to
// decide whether a selector or a field path goes on, and a bare value is
// scanned only right after an operator.

/** End of input. */
const EOF = -1;
/** A character that may appear nowhere in a filter (NUL, U+FFFD, unpaired surrogate). */
const ILLEGAL = -2;

const BACKSLASH = 0x5c;
const COMMA = 0x2c;
const DOT = 0x2e;
const DQUOTE = 0x22;
const SLASH = 0x2f;
const PIPE = 0x7c;

type TokenKind = 'eof' | 'illegal' | 'quoted' | 'value' | 'field' | 'separator' | 'operator' | 'other';

interface Token {
  readonly kind: TokenKind;
  /** UTF-16 offsets into the filter string; `text` is `src.slice(start, end)`. */
  readonly start: number;
  readonly end: number;
}

interface Problem {
  readonly offset: number;
  readonly message: string;
  readonly hint: string;
}

/** Go's unicode.IsSpace: Latin-1 spaces plus the White_Space property (not U+FEFF, unlike JS `\s`). */
function isSpace(c: number): boolean {
  if (c <= 0xff) return c === 0x20 || (c >= 0x09 && c <= 0x0d) || c === 0x85 || c === 0xa0;
  return c === 0x1680 || (c >= 0x2000 && c <= 0x200a) || c === 0x2028 || c === 0x2029 || c === 0x202f || c === 0x205f || c === 0x3000;
}

function isFieldRune(c: number): boolean {
  return (c >= 0x61 && c <= 0x7a) || (c >= 0x41 && c <= 0x5a) || (c >= 0x30 && c <= 0x39) || c === 0x5f || c === 0x2d;
}

function isOperatorRune(c: number): boolean {
  return c === 0x3d || c === 0x21 || c === 0x7e; // = ! ~
}

function isQuoteRune(c: number): boolean {
  return c === DQUOTE || c === SLASH || c === PIPE;
}

/** Go's IsGraphic minus spaces: letters, marks, numbers, punctuation, symbols. */
const GRAPHIC = /^[\p{L}\p{M}\p{N}\p{P}\p{S}]$/u;

/** Characters that continue a bare value: graphic, not a space, not `,`. */
function isValueRune(c: number): boolean {
  if (c < 0) return false;
  if (c < 0x80) return c > 0x20 && c < 0x7f && c !== COMMA;
  return !isSpace(c) && GRAPHIC.test(String.fromCodePoint(c));
}

function digitValue(c: number): number {
  if (c >= 0x30 && c <= 0x39) return c - 0x30;
  if (c >= 0x61 && c <= 0x66) return c - 0x61 + 10;
  if (c >= 0x41 && c <= 0x46) return c - 0x41 + 10;
  return 16;
}

const HINT_FIELD = 'field names are made of A-Z a-z 0-9 _ - and separated by "."; put any other name in double quotes, e.g. labels."containerd.io/gc.root"';
const HINT_VALUE = 'put a value in double quotes when it is empty, contains spaces or commas, or starts with . , = ! ~ / | or ", e.g. name=="a, b"';
const HINT_ESCAPE = 'inside quotes a backslash starts a Go escape (\\\\ \\" \\n \\t \\xHH \\uHHHH ...); write \\\\ for a backslash, e.g. name~="\\\\d+" or name~=/\\\\d+/';
const HINT_TERMINATE = 'end a quoted string on the same line with the character that opened it and escape that character inside it with a backslash; outside quotes / and | open a quoted string, so put a name containing them in double quotes, e.g. labels."containerd.io/gc.root"';
const HINT_ILLEGAL = 'filters may not contain NUL, U+FFFD or unpaired surrogates; write them as escapes inside a quoted value, e.g. "\\x00"';

class Scanner {
  readonly src: string;
  /** Start of the character read last. */
  start = 0;
  /** Offset just past the character read last. */
  end = 0;
  /** Set after an operator: the next unquoted token is a bare value. */
  expectValue = false;
  /** The first problem seen; kept like containerd's scanner keeps its first error. */
  problem: Problem | undefined;

  constructor(src: string) {
    this.src = src;
  }

  read(): number {
    const src = this.src;
    if (this.end >= src.length) {
      this.start = this.end = src.length;
      return EOF;
    }
    this.start = this.end;
    const c = src.codePointAt(this.end) as number;
    this.end += c > 0xffff ? 2 : 1;
    // Go reads the filter as UTF-8: NUL is rejected explicitly, and an
    // undecodable byte and a literal U+FFFD both decode to the error rune.
    // An unpaired surrogate is the JavaScript form of an undecodable byte.
    if (c === 0) return this.illegal('NUL character');
    if (c === 0xfffd) return this.illegal('U+FFFD replacement character');
    if (c >= 0xd800 && c <= 0xdfff) return this.illegal('unpaired UTF-16 surrogate');
    return c;
  }

  peek(): number {
    const { start, end } = this;
    const c = this.read();
    this.start = start;
    this.end = end;
    return c;
  }

  scan(): Token {
    let c = this.read();
    while (isSpace(c)) c = this.read();
    const start = this.start;
    if (c === EOF) return { kind: 'eof', start, end: start };
    if (c === ILLEGAL) return { kind: 'illegal', start, end: this.end };
    if (isQuoteRune(c)) {
      const ok = this.scanQuoted(c, start);
      return { kind: ok ? 'quoted' : 'illegal', start, end: this.end };
    }
    if (c === COMMA || c === DOT) {
      this.expectValue = false;
      return { kind: 'separator', start, end: this.end };
    }
    if (isOperatorRune(c)) {
      while (isOperatorRune(this.peek())) this.read();
      this.expectValue = true;
      return { kind: 'operator', start, end: this.end };
    }
    if (this.expectValue) {
      // The first character of a bare value is taken whatever it is (it is
      // not a quote, separator, operator or space: those were handled above).
      while (isValueRune(this.peek())) this.read();
      this.expectValue = false;
      return { kind: 'value', start, end: this.end };
    }
    if (isFieldRune(c)) {
      while (isFieldRune(this.peek())) this.read();
      return { kind: 'field', start, end: this.end };
    }
    return { kind: 'other', start, end: this.end };
  }

  /** Reads up to the closing quote; false if the string is unterminated or has a bad escape. */
  private scanQuoted(quote: number, open: number): boolean {
    this.escapesOk = true;
    let c = this.read();
    while (c !== quote) {
      if (c === 0x0a || c < 0) {
        if (c !== ILLEGAL) {
          this.report(open, `quoted string opened with ${q(String.fromCodePoint(quote))} is not terminated`, HINT_TERMINATE);
        }
        return false;
      }
      c = c === BACKSLASH ? this.scanEscape(quote) : this.read();
    }
    return this.escapesOk;
  }

  /** Cleared by scanEscape when an escape in the current quoted string is malformed. */
  private escapesOk = true;

  /** Reads the escape after a backslash; returns the character that follows it. */
  private scanEscape(quote: number): number {
    const at = this.start;
    const e = this.read();
    switch (e) {
      case 0x61: case 0x62: case 0x66: case 0x6e: case 0x72: case 0x74: case 0x76: // a b f n r t v
      case BACKSLASH:
      case quote:
        return this.read();
      case 0x78: // x
        return this.scanDigits(this.read(), 16, 2, at);
      case 0x75: // u
        return this.scanDigits(this.read(), 16, 4, at);
      case 0x55: // U
        return this.scanDigits(this.read(), 16, 8, at);
      default:
        if (e >= 0x30 && e <= 0x37) return this.scanDigits(e, 8, 3, at);
        // Like containerd, keep scanning to find the end of the string: the
        // character after the backslash is looked at again by the caller.
        this.escapesOk = false;
        if (e !== ILLEGAL) this.report(at, 'invalid escape sequence', HINT_ESCAPE);
        return e;
    }
  }

  /** Consumes `count` digits of `base` starting with `c`; returns the character after them. */
  private scanDigits(c: number, base: number, count: number, at: number): number {
    while (count > 0 && digitValue(c) < base) {
      c = this.read();
      count--;
    }
    if (count > 0) {
      this.escapesOk = false;
      if (c !== ILLEGAL) this.report(at, 'invalid numeric escape sequence', HINT_ESCAPE);
    }
    return c;
  }

  private illegal(what: string): number {
    this.report(this.start, `${what} is not allowed`, HINT_ILLEGAL);
    return ILLEGAL;
  }

  report(offset: number, message: string, hint: string): void {
    this.problem ??= { offset, message, hint };
  }
}

// ---------------------------------------------------------------------------
// Parsing
//
//   selectors := selector ("," selector)*
//   selector  := fieldpath [operator value]
//   fieldpath := field ("." field)*
//   field     := [A-Za-z0-9_-]+ | "go string"
//   operator  := "==" | "!=" | "~="
//   value     := bare | "go string" | /go string/ (~= only) | |go string| (~= only)

class Parser {
  readonly #src: string;
  readonly #scanner: Scanner;

  constructor(src: string) {
    this.#src = src;
    this.#scanner = new Scanner(src);
  }

  parse(): CompiledSelector[] {
    const selectors = [this.#selector()];
    for (;;) {
      const c = this.#scanner.peek();
      if (c === EOF) return selectors;
      if (c !== COMMA) {
        if (c === ILLEGAL) this.#failIllegal();
        const at = this.#scanner.end;
        throw this.#error(
          at,
          `expected "," or the end of the filter, found ${describe(this.#src, at)}`,
          'separate selectors with "," and no space before it, and quote values that contain spaces or commas',
        );
      }
      this.#scanner.scan();
      selectors.push(this.#selector());
    }
  }

  #selector(): CompiledSelector {
    const fieldpath = this.#fieldpath();
    const next = this.#scanner.peek();
    if (next === COMMA || next === EOF) {
      return new CompiledSelector(Object.freeze({ fieldpath, op: 'present', value: '' }), null);
    }
    const op = this.#operator();
    const value = this.#value(op === '~=');
    let re: RE2JS | null = null;
    if (op === '~=') re = this.#compileRegex(value, this.#valueStart);
    return new CompiledSelector(Object.freeze({ fieldpath, op, value }), re);
  }

  #fieldpath(): readonly string[] {
    const parts = [this.#field()];
    while (this.#scanner.peek() === DOT) {
      this.#scanner.scan();
      parts.push(this.#field());
    }
    return Object.freeze(parts);
  }

  #field(): string {
    const tok = this.#scanner.scan();
    switch (tok.kind) {
      case 'field':
        return this.#src.slice(tok.start, tok.end);
      case 'quoted':
        return this.#unquote(tok, false);
      case 'illegal':
        return this.#failIllegal();
      default:
        throw this.#error(tok.start, `expected a field name or a quoted field, found ${describeToken(this.#src, tok)}`, HINT_FIELD);
    }
  }

  #operator(): Operator {
    const tok = this.#scanner.scan();
    if (tok.kind === 'operator') {
      const text = this.#src.slice(tok.start, tok.end);
      if (text === '==' || text === '!=' || text === '~=') return text;
      throw this.#error(tok.start, `unsupported operator ${q(text)}`, 'the operators are == (equal), != (not equal) and ~= (matches an RE2 regular expression); quote a value that starts with = ! or ~');
    }
    if (tok.kind === 'illegal') return this.#failIllegal();
    throw this.#error(
      tok.start,
      `expected an operator (==, != or ~=), "," or the end of the filter after the field path, found ${describeToken(this.#src, tok)}`,
      `a field alone tests presence; ${HINT_FIELD}`,
    );
  }

  /** Where the value read last starts, for regex errors. */
  #valueStart = 0;

  #value(regex: boolean): string {
    const tok = this.#scanner.scan();
    this.#valueStart = tok.start;
    switch (tok.kind) {
      case 'value':
      case 'field':
        return this.#src.slice(tok.start, tok.end);
      case 'quoted':
        return this.#unquote(tok, regex);
      case 'illegal':
        return this.#failIllegal();
      default:
        throw this.#error(tok.start, `expected a value or a quoted value, found ${describeToken(this.#src, tok)}`, HINT_VALUE);
    }
  }

  /** Decodes a quoted token with Go string escapes; `/` and `|` quotes only where `alternates`. */
  #unquote(tok: Token, alternates: boolean): string {
    const src = this.#src;
    const quote = src.charCodeAt(tok.start);
    if (quote !== DQUOTE && !alternates) {
      throw this.#error(tok.start, `${q(String.fromCharCode(quote))} quoting is only allowed for ~= values`, 'use double quotes here, e.g. labels."a/b"==x or name=="/x/"');
    }
    const body = src.slice(tok.start + 1, tok.end - 1);
    if (!body.includes('\\')) return body;

    const bytes: number[] = [];
    for (let i = 0; i < body.length; ) {
      const c = body.codePointAt(i) as number;
      if (c !== BACKSLASH) {
        pushUtf8(bytes, c);
        i += c > 0xffff ? 2 : 1;
        continue;
      }
      // The scanner has already checked the shape of every escape.
      const e = body.charCodeAt(i + 1);
      i += 2;
      switch (e) {
        case 0x61: bytes.push(0x07); break;
        case 0x62: bytes.push(0x08); break;
        case 0x66: bytes.push(0x0c); break;
        case 0x6e: bytes.push(0x0a); break;
        case 0x72: bytes.push(0x0d); break;
        case 0x74: bytes.push(0x09); break;
        case 0x76: bytes.push(0x0b); break;
        case 0x78: // \xHH is a single byte, which may not be UTF-8 on its own
          bytes.push(Number.parseInt(body.slice(i, i + 2), 16));
          i += 2;
          break;
        case 0x75:
        case 0x55: {
          const n = e === 0x75 ? 4 : 8;
          const v = Number.parseInt(body.slice(i, i + n), 16);
          if (v > 0x10ffff) {
            throw this.#error(tok.start + 1 + i - 2, `escape \\${body.slice(i - 1, i + n)} is beyond U+10FFFF`, HINT_ESCAPE);
          }
          // Go encodes a surrogate code point as U+FFFD.
          pushUtf8(bytes, v >= 0xd800 && v <= 0xdfff ? 0xfffd : v);
          i += n;
          break;
        }
        default:
          if (e >= 0x30 && e <= 0x37) {
            const v = Number.parseInt(body.slice(i - 1, i + 2), 8);
            if (v > 0xff) {
              throw this.#error(tok.start + 1 + i - 2, `octal escape \\${body.slice(i - 1, i + 2)} is above \\377`, HINT_ESCAPE);
            }
            bytes.push(v);
            i += 2;
          } else {
            // \\ and the escaped quote character
            bytes.push(e);
          }
      }
    }
    try {
      return UTF8.decode(Uint8Array.from(bytes));
    } catch {
      throw this.#error(
        tok.start,
        'quoted string decodes to bytes that are not valid UTF-8',
        'names and labels are UTF-8 text; write characters as \\uHHHH (or complete UTF-8 sequences of \\xHH)',
      );
    }
  }

  #compileRegex(pattern: string, at: number): RE2JS {
    let re: RE2JS;
    try {
      re = RE2JS.compile(pattern);
    } catch (err) {
      const reason = err instanceof Error ? err.message : String(err);
      throw this.#error(
        at,
        `~= value ${q(pattern)} is not a valid RE2 regular expression (${reason})`,
        'see https://github.com/google/re2/wiki/Syntax; inside "..." /.../ or |...| quotes a regex backslash is written \\\\',
        err,
      );
    }
    const size = re.programSize();
    if (size > MAX_REGEX_PROGRAM) {
      throw this.#error(at, `~= value ${q(pattern)} compiles to ${size} RE2 instructions, more than the limit of ${MAX_REGEX_PROGRAM}`, 'use a shorter pattern or smaller repeat counts');
    }
    return re;
  }

  #failIllegal(): never {
    const problem = this.#scanner.problem;
    // An illegal token always comes with a recorded problem; the fallback
    // only keeps this total.
    throw this.#error(problem?.offset ?? this.#scanner.start, problem?.message ?? 'invalid input', problem?.hint ?? HINT_ILLEGAL);
  }

  #error(offset: number, message: string, hint: string, cause?: unknown): InvalidArgumentError {
    return new InvalidArgumentError(
      `invalid filter ${q(this.#src)} at offset ${offset}: ${message}; ${hint}`,
      cause === undefined ? undefined : { cause },
    );
  }
}

const UTF8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

function pushUtf8(bytes: number[], c: number): void {
  if (c < 0x80) {
    bytes.push(c);
  } else if (c < 0x800) {
    bytes.push(0xc0 | (c >> 6), 0x80 | (c & 0x3f));
  } else if (c < 0x10000) {
    bytes.push(0xe0 | (c >> 12), 0x80 | ((c >> 6) & 0x3f), 0x80 | (c & 0x3f));
  } else {
    bytes.push(0xf0 | (c >> 18), 0x80 | ((c >> 12) & 0x3f), 0x80 | ((c >> 6) & 0x3f), 0x80 | (c & 0x3f));
  }
}

function describe(src: string, offset: number): string {
  if (offset >= src.length) return 'the end of the filter';
  const c = src.codePointAt(offset) as number;
  return q(String.fromCodePoint(c));
}

function describeToken(src: string, tok: Token): string {
  if (tok.kind === 'eof') return 'the end of the filter';
  const text = src.slice(tok.start, tok.end);
  return text.length > 40 ? `${q(text.slice(0, 40))}...` : q(text);
}

function typeName(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'array';
  return typeof value;
}
