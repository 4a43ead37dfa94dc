/**
 * The scanner and the parser of containerd's filter language (filters.ts
 * has the language and its quirks): code points in, {@link CompiledSelector}s
 * out, every error an InvalidArgumentError that quotes the filter, gives the
 * offset and says how to write it. Pure; matching is filter-match.ts.
 */
import { RE2JS } from 're2js';
import { InvalidArgumentError, q } from './errors.js';
import { CompiledSelector } from './filter-match.js';
import type { Operator } from './filters.js';

/**
 * Largest accepted `~=` program, in RE2 instructions. Typical patterns take
 * tens; a literal as long as the largest possible label (4 KiB) fits. Go's
 * own limit is in the millions, which in a walk over thousands of
 * snapshots would be a denial of service rather than a filter.
 */
export const MAX_REGEX_PROGRAM = 10_000;

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

export class Parser {
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
