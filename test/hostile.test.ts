/**
 * Hostile input: generated filters and keys either get their typed error or
 * a correct result, never a crash or a hang, and failing calls leave the
 * store exactly as it was.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { RE2JS } from 're2js';
import { type Info, type Snapshotter } from '../lib/index.js';
import { type Selector, parseFilters } from '../lib/model/filters.js';
import { snapshotEntries, withSnapshotter } from './helpers/fixtures.js';
import { prng } from './helpers/load.js';

const PIECES = [
  'kind', 'name', 'parent', 'labels', '.', ',', '==', '!=', '~=', '"', '/', '|', '\\', ' ', '\0', '\n', '../', '..',
  'a', 'k1', 'committed', 'active', '"containerd.io/gc.root"', '(a+)+$', '.*', '[', ']', '{1000}', '\u00e9', '\ud800', '=', '!', '~',
  // Whole selector parts, so that many filters parse and select some snapshots but not all.
  'name==', 'kind==', 'parent==', 'name~=', 'labels.a', 'labels.tier', 'base', 'v1', 'view', '1$', '^k', ',kind!=view',
];

function generate(rand: () => number): string {
  const r = rand();
  if (r < 0.02) return 'a'.repeat(100_000);
  if (r < 0.04) return `name~=/${'(a+)+'.repeat(20)}$/`;
  if (r < 0.1) return String.fromCharCode(...Array.from({ length: Math.floor(rand() * 40) }, () => Math.floor(rand() * 0x10000)));
  const n = 1 + Math.floor(rand() * 8);
  let s = '';
  for (let i = 0; i < n; i++) s += PIECES[Math.floor(rand() * PIECES.length)]!;
  return s;
}

/**
 * A second, deliberately plain evaluator of parsed selectors, written from
 * the rules in lib/model/filters.ts's documentation rather than from its code, so
 * that a matching bug there cannot also be the expectation here.
 */
function naiveMatch(clauses: readonly (readonly Selector[])[], info: Info): boolean {
  if (clauses.length === 0) return true;
  return clauses.some((clause) =>
    clause.every((sel) => {
      const [head, ...rest] = sel.fieldpath;
      let present = false;
      let value = '';
      if (head === 'kind' || head === 'name') {
        present = true;
        value = head === 'kind' ? info.kind : info.name;
      } else if (head === 'parent') {
        present = true;
        value = info.parent ?? '';
      } else if (head === 'labels') {
        const key = rest.join('.');
        present = Object.keys(info.labels).includes(key);
        value = present ? info.labels[key]! : '';
      }
      if (sel.op === 'present') return present;
      if (sel.op === '==') return present && value === sel.value;
      if (sel.op === '!=') return value !== sel.value;
      return RE2JS.compile(sel.value).matcher(value).find();
    }),
  );
}

/** Filters and the names they must select among base (committed, root), k1 (active on base) and v1 (view of base). */
const TABLE: Array<[string[], string[]]> = [
  [[], ['base', 'k1', 'v1']],
  [[''], ['base', 'k1', 'v1']],
  [['kind==committed'], ['base']],
  [['kind!=committed'], ['k1', 'v1']],
  [['kind'], ['base', 'k1', 'v1']],
  [['name==k1'], ['k1']],
  [['name.x==k1'], ['k1']],
  [['name~=1$'], ['k1', 'v1']],
  [['name~="^k"'], ['k1']],
  [['name~=/^v/'], ['v1']],
  [['name~=(a+)+$'], []],
  [['parent'], ['base', 'k1', 'v1']],
  [['parent==base'], ['k1', 'v1']],
  [['parent!=""'], ['k1', 'v1']],
  [['parent==""'], ['base']],
  [['labels."containerd.io/gc.root"'], ['base']],
  [['labels."containerd.io/gc.root"==x'], ['base']],
  [['labels.a'], ['k1']],
  [['labels.a==aaaa'], ['k1']],
  [['labels.a!=aaaa'], ['base', 'v1']],
  [['labels.a~=^$'], ['base', 'v1']],
  [['labels.a~=a{4}'], ['k1']],
  [['labels.tier==a,kind==committed'], ['base']],
  [['labels.tier==a,kind==active'], []],
  [['kind==view', 'name==base'], ['base', 'v1']],
  [['kind==view', ''], ['base', 'k1', 'v1']],
  [['nofield'], []],
  [['nofield!=x'], ['base', 'k1', 'v1']],
];

async function snapshotOf(sn: Snapshotter): Promise<string> {
  const all: Info[] = [];
  await sn.walk((i) => void all.push(i));
  return JSON.stringify(all);
}

test('10,000 generated filters and keys get a typed error or a correct result and never change the store', async () => {
  await withSnapshotter({}, async (sn, root) => {
    await sn.prepare('b');
    await sn.commit('base', 'b', { labels: { 'containerd.io/gc.root': 'x', tier: 'a' } });
    await sn.prepare('k1', 'base', { labels: { a: 'aaaa' } });
    await sn.view('v1', 'base');
    const all: Info[] = [];
    await sn.walk((i) => void all.push(i));
    assert.deepEqual(all.map((x) => x.name), ['base', 'k1', 'v1']);
    // The naive evaluator and walk both agree with the table.
    for (const [filters, names] of TABLE) {
      const seen: string[] = [];
      await sn.walk((info) => void seen.push(info.name), ...filters);
      assert.deepEqual(seen, names, `walk with ${JSON.stringify(filters)}`);
      const clauses = parseFilters(filters).clauses;
      assert.deepEqual(all.filter((x) => naiveMatch(clauses, x)).map((x) => x.name), names, `naive evaluation of ${JSON.stringify(filters)}`);
    }
    const before = await snapshotOf(sn);
    const rand = prng(20261125);
    let typed = 0;
    let ok = 0;
    let partial = 0;
    for (let i = 0; i < 10_000; i++) {
      const input = generate(rand);
      // As a filter: a typed error, or exactly the snapshots the filter matches.
      try {
        const seen: string[] = [];
        await sn.walk((info) => void seen.push(info.name), input);
        const expected = all.filter((x) => naiveMatch(parseFilters([input]).clauses, x)).map((x) => x.name);
        assert.deepEqual(seen, expected, `filter ${JSON.stringify(input.slice(0, 80))}`);
        ok++;
        if (seen.length > 0 && seen.length < all.length) partial++;
      } catch (err) {
        assert.equal((err as { code?: string }).code, 'ERR_INVALID_ARGUMENT', `filter ${JSON.stringify(input.slice(0, 80))}: ${String(err)}`);
        typed++;
      }
      // As a key: stat finds nothing (or the snapshot of that name), a create on a missing parent fails typed.
      try {
        const info = await sn.stat(input);
        assert.ok(all.some((x) => x.name === info.name));
      } catch (err) {
        assert.ok(['ERR_NOT_FOUND', 'ERR_INVALID_ARGUMENT'].includes((err as { code: string }).code), String(err));
      }
      // As a parent: only '' (no parent) and the committed 'base' can work; anything else fails typed.
      if (input === '' || input === 'base') {
        await sn.prepare(`fuzz-${i}`, input);
        await sn.remove(`fuzz-${i}`);
      } else {
        await assert.rejects(sn.prepare(`fuzz-${i}`, input), (err: { code?: string }) => ['ERR_NOT_FOUND', 'ERR_INVALID_ARGUMENT'].includes(err.code!));
      }
      if (i % 1000 === 0) assert.equal(await snapshotOf(sn), before, 'failing calls changed nothing');
    }
    assert.equal(await snapshotOf(sn), before, 'failing calls changed nothing');
    await sn.cleanup();
    assert.deepEqual(snapshotEntries(root), ['1', '2', '3']);
    assert.ok(typed > 1000 && ok > 100 && partial > 50, `typed errors ${typed}, results ${ok}, of which ${partial} select some snapshots but not all`);
  });
});

test('keys of every shape work as keys and never reach the filesystem', async () => {
  await withSnapshotter({}, async (sn, root) => {
    const rand = prng(7);
    const made: string[] = [];
    for (let i = 0; i < 300; i++) {
      const key = `${generate(rand).replace(/\0/g, '')}#${i}`;
      try {
        await sn.prepare(key);
        made.push(key);
      } catch (err) {
        assert.equal((err as { code?: string }).code, 'ERR_INVALID_ARGUMENT', String(err));
        assert.match(key, /[\ud800-\udfff]/, 'only keys that are not well-formed Unicode are refused');
      }
    }
    for (const key of made) assert.equal((await sn.stat(key)).name, key);
    assert.ok(snapshotEntries(root).every((n) => /^\d+$/.test(n)));
    assert.equal(snapshotEntries(root).length, made.length);
  });
});
