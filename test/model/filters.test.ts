/**
 * Walk filters: containerd's filter syntax (scanner, parser, quoting) and the
 * snapshot adaptor semantics, quirks included. See lib/model/filters.ts.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { runInNewContext } from 'node:vm';

import { InvalidArgumentError, isInvalidArgument, q } from '../../lib/model/errors.js';
import { MAX_REGEX_PROGRAM, parseFilters, type Filter, type FilterTarget, type Selector } from '../../lib/model/filters.js';
import { prng } from '../helpers/prng.js';

function snap(kind: string, name: string, parent = '', labels: Record<string, string> = {}): FilterTarget {
  return { kind, name, parent, labels };
}

const CORPUS: readonly FilterTarget[] = [
  snap('committed', 'base', '', { 'containerd.io/gc.root': '2024-01-01', team: 'infra' }),
  snap('committed', 'layer2', 'base', { team: 'apps', 'a.b': 'dotted' }),
  snap('active', 'work', 'layer2', { note: 'too complex, yo' }),
  snap('view', 'ro-view', 'layer2'),
  snap('active', 'scratch', '', { empty: '' }),
];

/** Names of the corpus snapshots the filters match, in corpus order. */
function names(...filters: string[]): string[] {
  const filter = parseFilters(filters);
  return CORPUS.filter((t) => filter.match(t)).map((t) => t.name);
}

const ALL = CORPUS.map((t) => t.name);

function selectors(filter: string): readonly Selector[] {
  const parsed = parseFilters([filter]);
  assert.equal(parsed.clauses.length, 1);
  return parsed.clauses[0]!;
}

/** Asserts an InvalidArgumentError that quotes the filter and, optionally, whose message matches `pattern`. */
function assertInvalid(filters: readonly unknown[], pattern?: RegExp): InvalidArgumentError {
  let caught: unknown;
  try {
    parseFilters(filters);
  } catch (err) {
    caught = err;
  }
  assert.ok(caught !== undefined, `expected ${filters.map(String).join(' | ')} to be rejected`);
  assert.ok(caught instanceof InvalidArgumentError, `expected InvalidArgumentError, got ${String(caught)}`);
  assert.equal((caught as InvalidArgumentError).code, 'ERR_INVALID_ARGUMENT');
  const message = (caught as InvalidArgumentError).message;
  const bad = filters.find((f) => typeof f === 'string' && f !== '' && !parses(f));
  if (typeof bad === 'string') assert.ok(message.includes(q(bad)), `message should quote the filter: ${message}`);
  if (pattern) assert.match(message, pattern);
  return caught as InvalidArgumentError;
}

function parses(filter: string): boolean {
  try {
    parseFilters([filter]);
    return true;
  } catch {
    return false;
  }
}

// --- OR, AND, and the empty cases ------------------------------------------

test('no filters match every snapshot', () => {
  const filter = parseFilters([]);
  assert.deepEqual(filter.clauses, []);
  assert.deepEqual(names(), ALL);
});

test('an empty filter string matches every snapshot, even OR-ed with a selective one', () => {
  assert.deepEqual(parseFilters(['']).clauses, []);
  assert.deepEqual(names(''), ALL);
  assert.deepEqual(names('name==base', ''), ALL);
  assert.deepEqual(parseFilters(['name==base', '']).clauses, []);
});

test('an empty filter string does not hide a syntax error in another string', () => {
  assertInvalid(['', 'name=='], /expected a value/);
});

test('a whitespace-only filter is a syntax error, unlike the empty string', () => {
  for (const blank of [' ', '\t', '\n', '  \u00a0 ']) assertInvalid([blank], /expected a field name/);
});

test('selectors separated by commas are AND-ed', () => {
  assert.deepEqual(names('kind==committed,labels.team==apps'), ['layer2']);
  assert.deepEqual(names('kind==committed,labels.team==nobody'), []);
  assert.equal(selectors('kind==active,name~=^s,labels.note').length, 3);
});

test('several filter strings are OR-ed', () => {
  assert.deepEqual(names('name==base', 'kind==view'), ['base', 'ro-view']);
  assert.deepEqual(names('name==base,kind==view', 'name==work'), ['work']);
  const filter = parseFilters(['name==base', 'kind==view,parent==layer2']);
  assert.equal(filter.clauses.length, 2);
  assert.equal(filter.clauses[1]!.length, 2);
});

// --- operators ---------------------------------------------------------------

test('== matches the exact value of kind, name, parent and a label', () => {
  assert.deepEqual(names('kind==active'), ['work', 'scratch']);
  assert.deepEqual(names('name==layer2'), ['layer2']);
  assert.deepEqual(names('parent==layer2'), ['work', 'ro-view']);
  assert.deepEqual(names('labels.team==infra'), ['base']);
  assert.deepEqual(names('name==lay'), []);
});

test('== requires the field to be present, so a missing label never equals ""', () => {
  assert.deepEqual(names('labels.empty==""'), ['scratch']);
  assert.deepEqual(names('labels.missing==""'), []);
});

test('!= does not require presence: a missing field reads as "" and so differs', () => {
  assert.deepEqual(names('labels.team!=infra'), ['layer2', 'work', 'ro-view', 'scratch']);
  assert.deepEqual(names('name!=base'), ['layer2', 'work', 'ro-view', 'scratch']);
  assert.deepEqual(names('labels.missing!=""'), []);
});

test('parent!="" selects snapshots that have a parent and parent=="" the roots', () => {
  assert.deepEqual(names('parent!=""'), ['layer2', 'work', 'ro-view']);
  assert.deepEqual(names('parent==""'), ['base', 'scratch']);
  assert.deepEqual(names('parent'), ALL, 'parent is present even when empty');
});

test('~= matches an unanchored RE2 regular expression', () => {
  assert.deepEqual(names('name~=a'), ['base', 'layer2', 'scratch']);
  assert.deepEqual(names('name~=^s'), ['scratch']);
  assert.deepEqual(names('name~=^(base|work)$'), ['base', 'work']);
  assert.deepEqual(names('labels.note~=complex'), ['work']);
  assert.deepEqual(names('name~=(?i)^BASE$'), ['base']);
});

test('~= matches a missing field as the empty string', () => {
  assert.deepEqual(names('labels.team~=^$'), ['work', 'ro-view', 'scratch']);
  assert.deepEqual(names('labels.nothing~=/.*/'), ALL);
  assert.deepEqual(names('labels.nothing~=/./'), []);
});

test('a field without operator tests presence', () => {
  assert.deepEqual(names('labels.team'), ['base', 'layer2']);
  assert.deepEqual(names('labels.empty'), ['scratch'], 'a label with an empty value is present');
  assert.deepEqual(names('name'), ALL);
  assert.deepEqual(names('kind'), ALL);
  assert.deepEqual(selectors('labels.team'), [{ fieldpath: ['labels', 'team'], op: 'present', value: '' }]);
});

test('unknown fields are never present and read as ""', () => {
  assert.deepEqual(names('size'), []);
  assert.deepEqual(names('size==""'), []);
  assert.deepEqual(names('size!=1'), ALL);
  assert.deepEqual(names('size~=^$'), ALL);
  assert.deepEqual(names('labels'), [], 'labels alone looks up the empty key');
});

test('kind is present only for the three known kinds', () => {
  const filter = parseFilters(['kind']);
  assert.equal(filter.match(snap('bogus', 'x')), false);
  assert.equal(filter.match(snap('view', 'x')), true);
  assert.equal(parseFilters(['kind!=bogus']).match(snap('bogus', 'x')), true);
});

// --- field paths -------------------------------------------------------------

test('a quoted fieldpath element may contain "." and "/"', () => {
  assert.deepEqual(names('labels."containerd.io/gc.root"'), ['base']);
  assert.deepEqual(names('labels."containerd.io/gc.root"==2024-01-01'), ['base']);
  assert.deepEqual(selectors('labels."containerd.io/gc.root"')[0]!.fieldpath, ['labels', 'containerd.io/gc.root']);
});

test('a label key is the rest of the fieldpath joined with "."', () => {
  assert.deepEqual(names('labels.a.b'), ['layer2']);
  assert.deepEqual(names('labels."a.b"'), ['layer2']);
  assert.deepEqual(names('labels."a".b==dotted'), ['layer2']);
  assert.deepEqual(selectors('labels.a.b')[0]!.fieldpath, ['labels', 'a', 'b']);
});

test('parts after kind, name or parent are ignored, as containerd does', () => {
  assert.deepEqual(names('name.anything==base'), ['base']);
  assert.deepEqual(names('kind.x.y==view'), ['ro-view']);
});

test('the first fieldpath element may be quoted too, and a quoted element may be empty', () => {
  assert.deepEqual(names('"name"==work'), ['work']);
  assert.deepEqual(selectors('labels.""')[0]!.fieldpath, ['labels', '']);
  assert.equal(parseFilters(['labels.""==v']).match(snap('view', 'x', '', { '': 'v' })), true);
});

test('bare field names may use A-Z a-z 0-9 _ - in any position', () => {
  assert.deepEqual(selectors('labels.9-a_B')[0]!.fieldpath, ['labels', '9-a_B']);
  assert.deepEqual(selectors('-')[0]!.fieldpath, ['-']);
});

test('label lookup ignores inherited properties of the labels object', () => {
  assert.deepEqual(names('labels.toString'), []);
  assert.deepEqual(names('labels.__proto__'), []);
  assert.deepEqual(names('labels.constructor!=""'), []);
  const nullProto = Object.assign(Object.create(null) as Record<string, string>, { k: 'v' });
  assert.equal(parseFilters(['labels.k==v']).match(snap('view', 'x', '', nullProto)), true);
});

// --- values ------------------------------------------------------------------

test('a quoted value decodes Go escapes', () => {
  const cases: [string, string][] = [
    [String.raw`"a\"b"`, 'a"b'],
    [String.raw`"back\\slash"`, 'back\\slash'],
    [String.raw`"\a\b\f\n\r\t\v"`, '\x07\b\f\n\r\t\v'],
    [String.raw`"\x41\101\u00e9\U0001F600"`, 'AAé😀'],
    [String.raw`"\xc3\xa9"`, 'é'],
    [String.raw`"\ud800"`, '\ufffd'],
    [String.raw`"\x00"`, '\0'],
    ['"it\'s"', "it's"],
    ['""', ''],
  ];
  for (const [quoted, value] of cases) {
    assert.equal(selectors(`name==${quoted}`)[0]!.value, value, quoted);
  }
});

test('commas, spaces and dots inside a quoted value are part of it', () => {
  assert.deepEqual(names('labels.note=="too complex, yo"'), ['work']);
  assert.deepEqual(names('labels.note=="too complex, yo",kind==active'), ['work']);
  assert.equal(selectors('name==" a.b, c "')[0]!.value, ' a.b, c ');
});

test('a bare value runs to a comma or whitespace and may contain = . / " and \'', () => {
  assert.equal(selectors('name==a=b.c')[0]!.value, 'a=b.c');
  assert.equal(selectors('name==x/../y')[0]!.value, 'x/../y');
  assert.equal(selectors('name==a"b')[0]!.value, 'a"b');
  assert.equal(selectors("name=='x'")[0]!.value, "'x'", 'single quotes are not quotes');
  assert.equal(selectors('name==sha256:abc@1')[0]!.value, 'sha256:abc@1');
  assert.equal(selectors('name==牛')[0]!.value, '牛');
});

test('a bare value cannot start with . , = ! or ~', () => {
  assertInvalid(['name==.hidden'], /expected a value/);
  assertInvalid(['name==../x'], /expected a value/);
  assertInvalid(['name==,x'], /expected a value/);
  assertInvalid(['name== =x'], /expected a value/);
  assertInvalid(['name===x'], /unsupported operator "==="/);
  assertInvalid(['name==!x'], /unsupported operator "==!"/);
  assert.equal(selectors('name=="../x"')[0]!.value, '../x');
});

test('/regex/ and |regex| quote ~= values', () => {
  assert.deepEqual(names('name~=/^l.*2$/'), ['layer2']);
  assert.deepEqual(names(String.raw`name~=|^(base\|work)$|`), ['base', 'work'], '\\| escapes the quote');
  assertInvalid(['name~=|^(base|work)$|'], /RE2/);
  assertInvalid(['name~=.*'], /expected a value/);
  assert.equal(selectors(String.raw`name~=/a\/b/`)[0]!.value, 'a/b');
  assert.equal(selectors(String.raw`name~=|a\|b|`)[0]!.value, 'a|b');
  assert.equal(selectors('name~=|a/b|')[0]!.value, 'a/b');
  assert.equal(selectors('name~=/[abc]{0,1}"\\//,name!=foo').length, 2);
});

test('inside /…/ a regex backslash must be doubled; a bare regex keeps it', () => {
  assertInvalid([String.raw`name~=/\d+/`], /invalid escape sequence/);
  assertInvalid([String.raw`name~="\d+"`], /invalid escape sequence/);
  assert.equal(selectors(String.raw`name~=/\\d+/`)[0]!.value, String.raw`\d+`);
  assert.equal(selectors(String.raw`name~="\\d+"`)[0]!.value, String.raw`\d+`);
  assert.equal(selectors(String.raw`name~=\d+`)[0]!.value, String.raw`\d+`);
  assert.deepEqual(names(String.raw`name~=\d$`), ['layer2']);
});

test('/…/ and |…| quoting is rejected for == and != values and for fields', () => {
  assertInvalid(['name==/x/'], /only allowed for ~= values/);
  assertInvalid(['name!=|x|'], /only allowed for ~= values/);
  assertInvalid(['labels./x/'], /only allowed for ~= values/);
  assertInvalid(['labels.|foo|==bar'], /only allowed for ~= values/);
});

test('a quoted value that decodes to invalid UTF-8 is rejected', () => {
  assertInvalid([String.raw`name=="\xff"`], /not valid UTF-8/);
  assertInvalid([String.raw`labels."\xc3"`], /not valid UTF-8/);
});

// --- whitespace ----------------------------------------------------------------

test('whitespace is allowed before a field, an operator and a value, and after a comma', () => {
  assert.deepEqual(selectors('  name  ==  base'), [{ fieldpath: ['name'], op: '==', value: 'base' }]);
  assert.deepEqual(names(' name==base,\tkind==committed'), ['base']);
  assert.deepEqual(names('name==work,\n kind==active'), ['work']);
  assert.deepEqual(selectors('labels. team')[0]!.fieldpath, ['labels', 'team']);
  assert.deepEqual(selectors('name ==\u00a0base')[0]!.value, 'base', 'NBSP is whitespace, as in Go');
});

test('whitespace before a comma, before "." or at the end is a syntax error', () => {
  assertInvalid(['name==base '], /at offset 10: expected "," or the end of the filter, found " "/);
  assertInvalid(['name==base ,kind==view'], /expected ","/);
  assertInvalid(['labels.team '], /expected an operator/);
  assertInvalid(['labels .team'], /expected an operator/);
  assertInvalid(['name=="x" '], /expected ","/);
});

test('U+FEFF and U+200B are not whitespace, as in Go', () => {
  assertInvalid(['\ufeffname'], /expected a field name/);
  assert.equal(selectors('name==\u200bx')[0]!.value, '\u200bx', 'any character starts a bare value');
  assertInvalid(['name==x\u200b'], /expected ","/);
});

// --- syntax errors -------------------------------------------------------------

test('a trailing comma is a syntax error', () => {
  assertInvalid(['name==foo,'], /at offset 10: expected a field name or a quoted field, found the end of the filter/);
  assertInvalid([','], /expected a field name/);
  assertInvalid(['name,,kind'], /expected a field name/);
});

test('a missing value is a syntax error', () => {
  assertInvalid(['name=='], /at offset 6: expected a value or a quoted value, found the end of the filter/);
  assertInvalid(['name!='], /expected a value/);
  assertInvalid(['image~=,id!=x'], /expected a value/);
});

test('an unsupported or missing operator is a syntax error', () => {
  assertInvalid(['name=x'], /unsupported operator "="/);
  assertInvalid(['name=~x'], /unsupported operator "=~"/);
  assertInvalid(['name!x'], /unsupported operator "!"/);
  assertInvalid(['name<x'], /expected an operator \(==, != or ~=\)/);
  assertInvalid(['name x'], /expected an operator/);
});

test('an unterminated quote is a syntax error', () => {
  assertInvalid(['labels."a'], /at offset 7: quoted string opened with "\\"" is not terminated/);
  assertInvalid(['name~=/abc'], /not terminated/);
  assertInvalid(['name~=|abc'], /not terminated/);
  assertInvalid(['name=="a\nb"'], /not terminated/);
  assertInvalid(['labels.ns/key==value'], /not terminated/);
  assertInvalid([String.raw`name=="a\"`], /not terminated/);
});

test('malformed escapes are syntax errors', () => {
  assertInvalid([String.raw`labels."\g"`], /invalid escape sequence/);
  assertInvalid([String.raw`labels."\xaz"`], /invalid numeric escape sequence/);
  assertInvalid([String.raw`name=="\u12"`], /invalid numeric escape sequence/);
  assertInvalid([String.raw`name=="\400"`], /above \\377/);
  assertInvalid([String.raw`name=="\U00110000"`], /beyond U\+10FFFF/);
  assertInvalid([String.raw`name=="\'"`], /invalid escape sequence/);
  assertInvalid([String.raw`name=="\/"`], /invalid escape sequence/);
});

test('an empty fieldpath element is a syntax error', () => {
  assertInvalid(['labels.'], /at offset 7: expected a field name or a quoted field/);
  assertInvalid(['labels..team'], /expected a field name/);
  assertInvalid(['.team'], /expected a field name/);
  assertInvalid(['labels.?x'], /expected a field name/);
  assertInvalid(['labels.牛'], /expected a field name/);
});

test('input after a complete selector is a syntax error', () => {
  assertInvalid(['name==a b'], /expected "," or the end of the filter, found " "/);
  assertInvalid(['name=="a"b'], /found "b"/);
  assertInvalid(['name==a\u0001'], /expected ","/);
});

test('NUL, U+FFFD and unpaired surrogates are rejected anywhere', () => {
  assertInvalid(['name\0'], /NUL character is not allowed/);
  assertInvalid(['name=="a\0"'], /NUL character/);
  assertInvalid(['name==a\ufffd'], /U\+FFFD/);
  assertInvalid(['name==\ud800'], /unpaired UTF-16 surrogate/);
  assertInvalid(['"\udc00"'], /unpaired UTF-16 surrogate/);
});

test('a ~= pattern that does not compile is rejected at parse time', () => {
  const err = assertInvalid(['name~=('], /not a valid RE2 regular expression/);
  assert.ok(err.cause instanceof Error, 'the re2js error is kept as cause');
  assertInvalid(['name~=a**'], /RE2/);
  assertInvalid(['name~=(?<=a)b'], /RE2/);
  assertInvalid(['name~=a{1001}'], /RE2/);
  assertInvalid(['name~=' + '('.repeat(2000) + ')'.repeat(2000)], /RE2/);
  assertInvalid(['name==x', 'kind~=['], /RE2/);
});

test('a ~= pattern larger than the program limit is rejected', () => {
  assertInvalid([`name~=${'[^a]{1000}'.repeat(11)}`], new RegExp(`more than the limit of ${MAX_REGEX_PROGRAM}`));
  assert.equal(selectors(`name~=${'[^a]{1000}'.repeat(2)}`).length, 1);
});

test('error messages quote the filter, give the offset and say how to quote', () => {
  const err = assertInvalid(['labels.containerd.io/gc.root==x']);
  assert.match(err.message, /^invalid filter "labels\.containerd\.io\/gc\.root==x" at offset 20: /);
  assert.match(err.message, /labels\."containerd\.io\/gc\.root"/, 'shows the quoted form');
  assert.match(assertInvalid(['name==a b']).message, /quote values that contain spaces/);
  assert.match(assertInvalid([String.raw`name~=/\d/`]).message, /write \\\\ for a backslash/);
  assert.ok(isInvalidArgument(err));
});

test('non-string filters are rejected with InvalidArgumentError', () => {
  for (const bad of [1, null, undefined, {}, ['name'], Symbol('x'), 10n]) {
    assertInvalid(['name', bad], /Expected filter 1 to be a string, got /);
  }
  assert.throws(() => parseFilters('name==x' as unknown as unknown[]), isInvalidArgument);
  assert.throws(() => parseFilters(undefined as unknown as unknown[]), /Expected filters to be an array of strings, got undefined/);
});

// --- the AST ----------------------------------------------------------------------

test('the parsed filter and its AST are frozen', () => {
  const filter = parseFilters(['labels."a.b"==c,kind', 'name~=x']);
  assert.deepEqual(filter.clauses, [
    [
      { fieldpath: ['labels', 'a.b'], op: '==', value: 'c' },
      { fieldpath: ['kind'], op: 'present', value: '' },
    ],
    [{ fieldpath: ['name'], op: '~=', value: 'x' }],
  ]);
  assert.ok(Object.isFrozen(filter));
  assert.ok(Object.isFrozen(filter.clauses));
  for (const clause of filter.clauses) {
    assert.ok(Object.isFrozen(clause));
    for (const s of clause) {
      assert.ok(Object.isFrozen(s));
      assert.ok(Object.isFrozen(s.fieldpath));
    }
  }
});

test('a filter matches 10 000 snapshots consistently with a straightforward evaluation', () => {
  const filter = parseFilters(['kind==committed,labels.team==infra', 'name~=^n1\\d*5$', 'parent!="",labels.x']);
  let expected = 0;
  let actual = 0;
  for (let i = 0; i < 10_000; i++) {
    const labels: Record<string, string> = {};
    if (i % 3 === 0) labels.team = 'infra';
    if (i % 7 === 0) labels.x = '';
    const t = snap(i % 2 === 0 ? 'committed' : 'active', `n${i}`, i % 5 === 0 ? '' : `n${i - 1}`, labels);
    const want =
      (t.kind === 'committed' && t.labels.team === 'infra') || /^n1\d*5$/.test(t.name) || (t.parent !== '' && 'x' in t.labels);
    if (want) expected++;
    if (filter.match(t)) actual++;
    assert.equal(filter.match(t), want, t.name);
  }
  assert.equal(actual, expected);
});

// --- regex bombs and fuzzing ---------------------------------------------------------

const BOMB_INPUT = `${'a'.repeat(100_000)}!`;

/**
 * Runs `fn` and fails if it has not returned after `ms` (vm's watchdog
 * interrupts even a regex stuck in backtracking), so that a backtracking
 * engine fails this test instead of hanging the run. The bound is a hang
 * guard, not a speed check: linear matching takes milliseconds here,
 * backtracking these patterns on 100k characters would take years.
 */
function withinTimeout(ms: number, fn: () => void): void {
  try {
    runInNewContext('run()', { run: fn }, { timeout: ms });
  } catch (err) {
    if ((err as { code?: string }).code === 'ERR_SCRIPT_EXECUTION_TIMEOUT') assert.fail(`still matching after ${ms} ms: the engine backtracks`);
    throw err;
  }
}

test('nested-quantifier regexes match a 100k-character value in linear time (a backtracking engine fails on a 10 s bound instead of hanging)', () => {
  const cases: [string, boolean][] = [
    ['(a+)+$', false],
    ['(a|aa)+$', false],
    ['(.*a){20}$', false],
    ['^(a+)+b', false],
    ['(?:a+?)+?!x', false],
    ['(a|a?)+$', true], // matches the empty string at the end
    ['(a*)*$', true],
  ];
  withinTimeout(10_000, () => {
    for (const [pattern, expected] of cases) {
      const filter = parseFilters([`name~=/${pattern}/`, `labels.k~=/${pattern}/`]);
      assert.equal(filter.match(snap('view', BOMB_INPUT)), expected, pattern);
      assert.equal(filter.match(snap('view', '!', '', { k: BOMB_INPUT })), expected, pattern);
    }
    assert.equal(parseFilters(['name~=(a+)+!$']).match(snap('view', BOMB_INPUT)), true);
  });
});

/** Quotes like Go's strconv.Quote would, for the characters the filter syntax can carry. */
function goQuote(s: string): string {
  let out = '"';
  for (const ch of s) {
    const c = ch.codePointAt(0)!;
    if (ch === '"') out += '\\"';
    else if (ch === '\\') out += '\\\\';
    else if (ch === '\n') out += '\\n';
    else if (c < 0x20 || c === 0x7f) out += `\\x${c.toString(16).padStart(2, '0')}`;
    else if (c === 0xfffd) out += '\\ufffd';
    else out += ch;
  }
  return `${out}"`;
}

test('generated well-formed filters parse to the selectors they were built from', () => {
  const rand = prng(0x5eed);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)]!;
  const ws = (): string => (rand() < 0.2 ? pick([' ', '\t', '  ', '\n']) : '');
  const text = (): string => {
    const alphabet = ['a', 'Z', '0', '_', '-', '.', '/', ',', ' ', '"', '\\', '\n', '\0', '=', '~', '|', 'é', '牛', '😀', '\ufffd', "'"];
    let s = '';
    const n = Math.floor(rand() * 8);
    for (let i = 0; i < n; i++) s += pick(alphabet);
    return s;
  };
  const isBareField = (s: string): boolean => /^[A-Za-z0-9_-]+$/.test(s);
  const isBareValue = (s: string): boolean => /^[A-Za-z0-9_-][A-Za-z0-9_.\-:@/=~!]*$/.test(s);
  for (let i = 0; i < 2_000; i++) {
    const expected: Selector[] = [];
    const parts: string[] = [];
    const count = 1 + Math.floor(rand() * 4);
    for (let k = 0; k < count; k++) {
      const fieldpath = [pick(['kind', 'name', 'parent', 'labels', 'x-1']), ...Array.from({ length: Math.floor(rand() * 3) }, text)];
      const op = pick(['present', '==', '!=', '~='] as const);
      let value = op === 'present' ? '' : text();
      if (op === '~=') value = value.replace(/[^A-Za-z0-9 ,._-]/g, '');
      let src = ws() + fieldpath.map((f) => (isBareField(f) && rand() < 0.8 ? f : goQuote(f))).join('.');
      if (op !== 'present') {
        src += ws() + op + ws();
        src += isBareValue(value) && rand() < 0.7 ? value : op === '~=' && rand() < 0.3 ? `/${value}/` : goQuote(value);
      }
      parts.push(src);
      expected.push({ fieldpath, op, value });
    }
    const filter = parts.join(',');
    assert.deepEqual(parseFilters([filter]).clauses, [expected], filter);
  }
});

function fuzzCases(rand: () => number): string[] {
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)]!;
  const pieces = [
    'kind', 'name', 'parent', 'labels', '.', ',', '==', '!=', '~=', '=', '!', '~', ' ', '\t', '\n', '"', '/', '|', '\\',
    "'", '\0', '../', '..', 'a', 'x', '0', '-', '_', '"a.b"', '"containerd.io/gc.root"', '/a+/', '|b|', '(a+)+$', '[', '(',
    '\\x41', '\\xff', '\\u00e9', '\\U0010ffff', '\\400', '\\q', '\ufffd', '\ud800', '\udc00', '😀', '牛', '\u00a0', '\u200b',
    '{1000}', '{1001}', '*', '+', '?', '^', '$', '\\d', '\\\\',
  ];
  const valid = ['kind==active', 'labels."containerd.io/gc.root"', 'parent!=""', 'name~=/^a.*$/', 'name~=|x|,kind==view', 'labels.a.b==c d'];
  const out: string[] = [];
  for (let i = 0; i < 12_000; i++) {
    const mode = i % 4;
    let s = '';
    if (mode === 0) {
      // Random UTF-16 code units, lone surrogates and NUL included.
      const n = Math.floor(rand() * 24);
      for (let k = 0; k < n; k++) s += String.fromCharCode(rand() < 0.7 ? Math.floor(rand() * 128) : Math.floor(rand() * 0x10000));
    } else if (mode === 1) {
      // Random bytes as Latin-1.
      const n = Math.floor(rand() * 24);
      for (let k = 0; k < n; k++) s += String.fromCharCode(Math.floor(rand() * 256));
    } else if (mode === 2) {
      const n = 1 + Math.floor(rand() * 12);
      for (let k = 0; k < n; k++) s += pick(pieces);
    } else {
      // Mutations of valid filters.
      const chars = [...pick(valid)];
      const edits = 1 + Math.floor(rand() * 3);
      for (let k = 0; k < edits; k++) {
        const at = Math.floor(rand() * (chars.length + 1));
        const r = rand();
        if (r < 0.33) chars.splice(at, 1);
        else if (r < 0.66) chars.splice(at, 0, pick(pieces));
        else chars[at] = pick(pieces);
      }
      s = chars.join('');
    }
    out.push(s);
  }
  // Very long inputs.
  const long = 100_000;
  out.push(
    'a'.repeat(long),
    `name==${'x'.repeat(long)}`,
    `name=="${'x'.repeat(long)}`,
    `name=="${'\\\\'.repeat(long / 2)}"`,
    `labels.${'a.'.repeat(long / 2)}b`,
    `labels.${'a.'.repeat(long / 2)}`,
    `${'name==x,'.repeat(long / 8)}kind`,
    `name~=${'a'.repeat(long)}`,
    `name~=/${'('.repeat(long / 2)}/`,
    `name~=${'(a+)+'.repeat(200)}$`,
    ' '.repeat(long),
    '"'.repeat(long),
    '\0'.repeat(long),
    '\ud800'.repeat(long),
    `name==${'../'.repeat(long / 3)}`,
    `name=="${'../'.repeat(long / 3)}"`,
  );
  return out;
}

test('fuzz: every generated string parses or throws InvalidArgumentError, and matching completes', () => {
  const rand = prng(20240601);
  const cases = fuzzCases(rand);
  assert.ok(cases.length >= 10_000);
  const targets: FilterTarget[] = [
    snap('committed', 'base', '', { 'containerd.io/gc.root': 'x', a: '../', 'a.b': 'c d' }),
    snap('active', 'aaaa!', 'base', { '': '' }),
    snap('view', '', '', {}),
    snap('view', '../..', 'a', { x: '\0' }),
  ];
  let parsed = 0;
  let rejected = 0;
  const check = (filters: string[]): void => {
    let filter: Filter;
    try {
      filter = parseFilters(filters);
    } catch (err) {
      assert.ok(err instanceof InvalidArgumentError, `${JSON.stringify(filters).slice(0, 200)} threw ${String(err)}`);
      assert.equal(err.code, 'ERR_INVALID_ARGUMENT');
      rejected++;
      return;
    }
    parsed++;
    for (const clause of filter.clauses) {
      assert.ok(clause.length > 0);
      for (const s of clause) {
        assert.ok(s.fieldpath.length > 0);
        assert.ok(['present', '==', '!=', '~='].includes(s.op));
        assert.equal(typeof s.value, 'string');
      }
    }
    for (const t of targets) assert.equal(typeof filter.match(t), 'boolean');
  };
  for (let i = 0; i < cases.length; i++) {
    check([cases[i]!]);
    if (i % 10 === 0) check([cases[i]!, cases[(i * 7) % cases.length]!]);
  }
  assert.ok(parsed > 500, `only ${parsed} of the generated filters parsed`);
  assert.ok(rejected > 500, `only ${rejected} of the generated filters were rejected`);

  // Regex bombs against a 100k-character name and label.
  const bombTarget = snap('view', BOMB_INPUT, BOMB_INPUT, { k: BOMB_INPUT });
  for (const pattern of ['(a+)+$', '(a|aa)+$', '(a*)*b', '(x+x+)+y', '(.*){1,32000}[bc]', '([a-z]+)*!x']) {
    for (const filter of [`name~=${pattern}`, `labels.k~=/${pattern}/`, `parent~="${pattern}"`]) {
      try {
        assert.equal(typeof parseFilters([filter]).match(bombTarget), 'boolean');
      } catch (err) {
        assert.ok(err instanceof InvalidArgumentError, String(err));
      }
    }
  }
});
