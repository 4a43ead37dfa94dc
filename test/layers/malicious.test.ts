/**
 * The malicious corpus: layers built here with tar-stream that try to write
 * outside the target. Each must be refused with an InvalidArgumentError that
 * names the entry; nothing outside may change, and the upper (which a good
 * layer filled first, and which the bad layer starts by changing in every
 * way the journal covers) must be exactly as before.
 */
import assert from 'node:assert/strict';
import { lstatSync, mkdirSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { describe, test } from 'node:test';
import { InvalidArgumentError, q } from '../../lib/model/errors.js';
import { applyLayer } from '../../lib/layers/apply.js';
import { buildTree, compareFingerprints, packTar, tempDir, treeFingerprint } from '../helpers/layers.js';
import { REQUIRE_MOUNT, assertCanMount, mountTestOptions } from '../helpers/require-mount.js';

type Entry = { header: Record<string, unknown> & { name: string }; body?: string | Buffer };

const file = (name: string, body = 'x'): Entry => ({ header: { name, type: 'file' }, body });
const dir = (name: string, mode = 0o755): Entry => ({ header: { name, type: 'directory', mode } });
const symlink = (name: string, linkname: string): Entry => ({ header: { name, type: 'symlink', linkname } });
const hardlink = (name: string, linkname: string): Entry => ({ header: { name, type: 'link', linkname } });

/** Entries that change the prepared upper in every way the undo journal has to reverse. */
const prelude: Entry[] = [
  file('new-file', 'new'),
  file('a', 'replaced'),
  file('d/.wh.child1', ''),
  dir('d', 0o700),
  file('e/.wh..wh..opq', ''),
  file('e/fresh', 'fresh'),
  dir('brand-new'),
  file('brand-new/inside'),
];

interface Case {
  name: string;
  entries: (outside: string) => Entry[];
  /** The entry the error must name. */
  culprit: string | ((outside: string) => string);
  overlayOnly?: boolean;
}

const cases: Case[] = [
  { name: 'absolute path', entries: (o) => [file(`${o}/evil`)], culprit: (o) => `${o}/evil` },
  { name: 'leading ..', entries: () => [file('../evil')], culprit: '../evil' },
  { name: '.. inside the path', entries: () => [file('d/../../evil')], culprit: 'd/../../evil' },
  { name: 'long PAX name with ..', entries: () => [file(`${'p/'.repeat(60)}${'../'.repeat(70)}evil`)], culprit: `${'p/'.repeat(60)}${'../'.repeat(70)}evil` },
  { name: 'symlink planted in the layer (absolute)', entries: (o) => [symlink('esc', o), file('esc/evil')], culprit: 'esc/evil' },
  { name: 'symlink planted in the layer (relative)', entries: () => [symlink('esc', '../outside'), file('esc/evil')], culprit: 'esc/evil' },
  { name: 'symlink to "." planted in the layer', entries: () => [symlink('here', '.'), file('here/evil')], culprit: 'here/evil' },
  { name: 'dir replaced by a symlink, then written through', entries: (o) => [dir('sw'), symlink('sw', o), file('sw/evil')], culprit: 'sw/evil' },
  { name: 'symlink already in the upper', entries: () => [file('usym/evil')], culprit: 'usym/evil' },
  { name: 'symlink in a lower layer', entries: () => [file('lsym/evil')], culprit: 'lsym/evil', overlayOnly: true },
  { name: 'symlink in a lower layer, deeper', entries: () => [dir('ldir'), file('ldir/inner-sym/evil')], culprit: 'ldir/inner-sym/evil', overlayOnly: true },
  { name: 'hard link to ../', entries: () => [hardlink('hl', '../outside/secret')], culprit: 'hl' },
  { name: 'hard link to an absolute path', entries: (o) => [hardlink('hl', `${o}/secret`)], culprit: 'hl' },
  { name: 'hard link through a planted symlink', entries: (o) => [symlink('esc', o), hardlink('hl', 'esc/secret')], culprit: 'hl' },
  { name: 'hard link through an upper symlink', entries: () => [hardlink('hl', 'usym/secret')], culprit: 'hl' },
  { name: 'hard link through a lower symlink', entries: () => [hardlink('hl', 'lsym/secret')], culprit: 'hl', overlayOnly: true },
  { name: 'hard link to a directory', entries: () => [hardlink('hl', 'd')], culprit: 'hl' },
  { name: 'hard link to itself', entries: () => [hardlink('self', 'self')], culprit: 'self' },
  { name: 'hard link to a missing file', entries: () => [hardlink('hl', 'nope')], culprit: 'hl' },
  { name: 'whiteout through a planted symlink', entries: (o) => [symlink('esc', o), file('esc/.wh.secret', '')], culprit: 'esc/.wh.secret' },
  { name: 'whiteout through an upper symlink', entries: () => [file('usym/.wh.secret', '')], culprit: 'usym/.wh.secret' },
  { name: 'whiteout through a lower symlink', entries: () => [file('lsym/.wh.secret', '')], culprit: 'lsym/.wh.secret', overlayOnly: true },
  { name: 'opaque marker through a planted symlink', entries: (o) => [symlink('esc', o), file('esc/.wh..wh..opq', '')], culprit: 'esc/.wh..wh..opq' },
  { name: 'opaque marker through an upper symlink', entries: () => [file('usym/.wh..wh..opq', '')], culprit: 'usym/.wh..wh..opq' },
  { name: 'whiteout of ".." ', entries: () => [file('d/.wh...', '')], culprit: 'd/.wh...' },
  { name: 'whiteout of "."', entries: () => [file('d/.wh..', '')], culprit: 'd/.wh..' },
  { name: 'whiteout with no name', entries: () => [file('d/.wh.', '')], culprit: 'd/.wh.' },
  { name: 'character device 0/0 posing as a whiteout', entries: () => [{ header: { name: 'fake', type: 'character-device', devmajor: 0, devminor: 0 } }], culprit: 'fake' },
  { name: 'overlay opaque xattr smuggled in PAX', entries: () => [{ header: { name: 'ox', type: 'directory', pax: { 'SCHILY.xattr.trusted.overlay.opaque': 'y' } } }], culprit: 'ox' },
  { name: 'overlay redirect xattr smuggled in PAX', entries: () => [{ header: { name: 'rx', type: 'file', pax: { 'SCHILY.xattr.trusted.overlay.redirect': '/etc' } }, body: 'r' }], culprit: 'rx' },
  { name: 'file used as a directory', entries: () => [file('plain'), file('plain/evil')], culprit: 'plain/evil' },
];

function setup(top: string): { outside: string; upper: string; lower: string } {
  const outside = join(top, 'outside');
  const lower = join(top, 'lower');
  const upper = join(top, 'upper');
  buildTree(outside, [
    { path: 'secret', type: 'file', content: 'top secret' },
    { path: 'keep', type: 'dir' },
    { path: 'keep/me', type: 'file', content: 'me' },
  ]);
  buildTree(lower, [
    { path: 'lsym', type: 'symlink', target: outside },
    { path: 'ldir', type: 'dir' },
    { path: 'ldir/inner-sym', type: 'symlink', target: '../../outside' },
    { path: 'd', type: 'dir' },
  ]);
  mkdirSync(upper);
  return { outside, upper, lower };
}

/** A good layer first, so the bad one has something to damage. */
async function fillUpper(upper: string, lowers: string[], outside: string): Promise<void> {
  const good = await packTar([
    file('a', 'original'),
    dir('d'),
    file('d/child1', 'c1'),
    file('d/child2', 'c2'),
    dir('e'),
    file('e/x', 'ex'),
    symlink('usym', outside),
  ]);
  await applyLayer(Readable.from([good]), { upper, lowers });
}

for (const mode of ['overlay', 'parentless'] as const) {
  describe(`malicious layers are refused and undone (${mode})`, mountTestOptions(), () => {
    for (const c of cases) {
      if (c.overlayOnly && mode === 'parentless') continue;
      test(`${c.name}: InvalidArgumentError naming the entry, nothing outside changed, upper as before`, async () => {
        if (REQUIRE_MOUNT) assertCanMount();
        const top = tempDir('layers-evil-');
        try {
          const { outside, upper, lower } = setup(top);
          const lowers = mode === 'overlay' ? [lower] : [];
          await fillUpper(upper, lowers, outside);
          const outsideBefore = treeFingerprint(outside, { dirMtimes: true });
          const upperBefore = treeFingerprint(upper, { dirMtimes: true });
          const rootBefore = lstatSync(upper);
          const lowerBefore = treeFingerprint(lower, { dirMtimes: true });
          const layer = await packTar([...prelude, ...c.entries(outside)]);
          const culprit = typeof c.culprit === 'function' ? c.culprit(outside) : c.culprit;
          await assert.rejects(applyLayer(Readable.from([layer]), { upper, lowers }), (err: unknown) => {
            assert.ok(err instanceof InvalidArgumentError, `expected InvalidArgumentError, got ${String(err)}`);
            assert.ok(err.message.includes(q(culprit)), `message ${err.message} should name ${q(culprit)}`);
            return true;
          });
          assert.deepEqual(compareFingerprints(outsideBefore.entries, treeFingerprint(outside, { dirMtimes: true }).entries), []);
          assert.deepEqual(compareFingerprints(lowerBefore.entries, treeFingerprint(lower, { dirMtimes: true }).entries), []);
          const upperAfter = treeFingerprint(upper, { dirMtimes: true });
          assert.deepEqual(compareFingerprints(upperBefore.entries, upperAfter.entries, ['before', 'after']), []);
          const rootAfter = lstatSync(upper);
          assert.equal(rootAfter.mode, rootBefore.mode);
          assert.equal(rootAfter.mtimeMs, rootBefore.mtimeMs, 'the upper root mtime is restored');
          assert.deepEqual(readdirSync(top).sort(), ['lower', 'outside', 'upper'], 'no undo dir left behind');
        } finally {
          rmSync(top, { recursive: true, force: true });
        }
      });
    }
  });
}
