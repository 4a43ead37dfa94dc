/**
 * The `overlay-snapshotter` command line, run as child processes against
 * temp roots: human and --json output, exit codes, prompts, and progress
 * bars on a pseudo-terminal.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { release } from 'node:os';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { before, describe, test } from 'node:test';
import { Snapshotter, chainIds, unmountAll, type Mount } from '../../lib/index.js';
import { createProgram } from '../../lib/cli/program.js';
import { cli, cliAt, gzip, inTerminal, json, makeLayer, sha256, tarNames, terminalSkipReason, type CliResult } from '../helpers/cli.js';
import { isMounted, removeTree, tempDir, upperOf } from '../helpers/fixtures.js';
import { OWNER_LABEL, ownerValue, parseOwner } from '../../lib/layers/index.js';
import { formatOwner } from '../../lib/model/owner.js';
import { assertPrerequisite, mountTestOptions, prerequisiteOptions } from '../helpers/require-mount.js';

/** Commits `name` on `parent` holding a file `data` of `bytes` bytes. */
async function layer(sn: Snapshotter, name: string, parent?: string, labels?: Record<string, string>, bytes = 8192): Promise<void> {
  writeFileSync(join(upperOf(await sn.prepare(`${name}-extract`, parent)), 'data'), Buffer.alloc(bytes, 7));
  await sn.commit(name, `${name}-extract`, labels ? { labels } : undefined);
}

/** A fresh root (under a temp dir), set up by `setup` through the library, then closed; always removed. */
async function withRoot(setup: ((sn: Snapshotter) => Promise<void>) | undefined, fn: (root: string, top: string) => Promise<void>, options?: { asyncRemove?: boolean }): Promise<void> {
  const top = tempDir('ovl-cli-');
  const root = join(top, 'root');
  try {
    if (setup !== undefined) {
      const sn = await Snapshotter.open(root, options);
      try {
        await setup(sn);
      } finally {
        await sn.close();
      }
    }
    await fn(root, top);
  } finally {
    await removeTree(top);
  }
}

/** A failure is one line on stderr, `overlay-snapshotter: <message>`, without a stack trace. */
function assertOneLineError(r: CliResult, code: number, pattern: RegExp): void {
  assert.equal(r.code, code, `exit code (stderr: ${r.stderr})`);
  assert.match(r.stderr, /^overlay-snapshotter: /);
  assert.match(r.stderr, pattern);
  assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace without DEBUG');
}

function duBytes(dir: string): number {
  return Number(execFileSync('du', ['-s', '-B1', '--exclude=new-*', dir], { encoding: 'utf8' }).split('\t')[0]);
}

const ESC = '\u001b';

describe('overlay-snapshotter CLI', () => {
  test('every command has --help with the global options; the program lists them all', async () => {
    const program = createProgram();
    const names = program.commands.map((c) => c.name());
    const expected = ['ls', 'tree', 'info', 'usage', 'prepare', 'view', 'sync', 'commit', 'rm', 'label', 'mounts', 'mount', 'unmount', 'apply', 'diff', 'import', 'image', 'cleanup', 'prune', 'check', 'capabilities', 'serve'];
    assert.deepEqual(names, expected);
    for (const c of program.commands) {
      const help = c.helpInformation();
      assert.match(help, new RegExp(`^Usage: overlay-snapshotter ${c.name()}`), c.name());
      assert.match(help, /--root <dir>/, `${c.name()} shows the global options`);
      assert.match(help, /--json/, c.name());
    }
    const [top, sub, version] = await Promise.all([cli(['--help']), cli(['prune', '--help']), cli(['--version'])]);
    assert.equal(top.code, 0);
    for (const n of expected) assert.match(top.stdout, new RegExp(`^  ${n}\\b`, 'm'), `--help lists ${n}`);
    assert.match(top.stdout, /Exit codes: 0 ok/);
    assert.equal(sub.code, 0);
    assert.match(sub.stdout, /--grace-period <duration>/);
    assert.match(sub.stdout, /--dry-run/);
    assert.equal(version.code, 0);
    assert.match(version.stdout, /^\d+\.\d+\.\d+\n$/);
  });

  test('usage errors exit 2 with one line on stderr and no stack trace; DEBUG adds the stack', async () => {
    await withRoot(
      async (sn) => layer(sn, 'base'),
      async (root) => {
        const [unknownCmd, missingArg, unknownOpt, badPair, badDuration, badFilter, excess, badDriver, debug] = await Promise.all([
          cliAt(root, ['bogus']),
          cliAt(root, ['mounts']),
          cliAt(root, ['ls', '--bogus']),
          cliAt(root, ['label', 'base', 'novalue']),
          cliAt(root, ['prune', '--grace-period', 'soon']),
          cliAt(root, ['ls', '--filter', 'kind==']),
          cliAt(root, ['info', 'a', 'b']),
          cliAt(root, ['--driver', 'zfs', 'ls']),
          cliAt(root, ['ls', '--filter', 'kind=='], { env: { DEBUG: 'overlay-snapshotter:nothing' } }),
        ]);
        assertOneLineError(unknownCmd, 2, /unknown command 'bogus'/);
        assertOneLineError(missingArg, 2, /missing required argument 'key'/);
        assertOneLineError(unknownOpt, 2, /unknown option '--bogus'/);
        assertOneLineError(badPair, 2, /expected KEY=VALUE \(or KEY= to delete\), got "novalue"/);
        assertOneLineError(badDuration, 2, /expected a duration such as 30m/);
        assertOneLineError(badFilter, 2, /filter/);
        assertOneLineError(excess, 2, /too many arguments/);
        assertOneLineError(badDriver, 2, /Allowed choices are overlay, native/);
        assert.equal(debug.code, 2);
        assert.match(debug.stderr, /^overlay-snapshotter: .*filter/);
        assert.match(debug.stderr, /\n\s+at /, 'DEBUG shows the stack');
        for (const r of [unknownCmd, missingArg, unknownOpt, badPair, badFilter]) assert.equal(r.stdout, '');
      },
    );
  });

  test('missing keys exit 3, taken keys 4, wrong states 5, and --json keeps the error on stderr', async () => {
    await withRoot(
      async (sn) => {
        await layer(sn, 'base');
        await sn.prepare('c1', 'base');
      },
      async (root, top) => {
        const results = await Promise.all([
          cliAt(root, ['info', 'nope']),
          cliAt(root, ['--json', 'mounts', 'nope']),
          cliAt(root, ['commit', 'x', 'nope']),
          cliAt(root, ['tree', 'nope']),
          cliAt(root, ['prepare', 'x', 'nope']),
          cli(['--root', join(top, 'elsewhere'), 'ls']),
          cliAt(root, ['prepare', 'base']),
          cliAt(root, ['--json', 'view', 'c1', 'base']),
          cliAt(root, ['mounts', 'base']),
          cliAt(root, ['rm', 'base']),
        ]);
        const [info, mounts, commit, tree, parent, noRoot, taken, takenJson, committed, hasChildren] = results;
        assertOneLineError(info!, 3, /snapshot "nope" not found/);
        assertOneLineError(mounts!, 3, /snapshot "nope" not found/);
        assert.equal(mounts!.stdout, '', '--json prints no document on failure');
        assertOneLineError(commit!, 3, /"nope" not found/);
        assertOneLineError(tree!, 3, /"nope" not found/);
        assertOneLineError(parent!, 3, /parent snapshot "nope" not found/);
        assertOneLineError(noRoot!, 3, /no snapshotter store at .*elsewhere/);
        assert.equal(existsSync(join(top, 'elsewhere')), false, 'a read-only command creates no root');
        assertOneLineError(taken!, 4, /"base"/);
        assertOneLineError(takenJson!, 4, /"c1"/);
        assertOneLineError(committed!, 5, /committed/);
        assertOneLineError(hasChildren!, 5, /cannot remove "base": 1 snapshot/);
      },
    );
  });

  test('prepare --volatile makes a volatile container that commit refuses (exit 5) until sync; --quota-size is refused here (exit 6) with the reason', async () => {
    await withRoot(
      async (sn) => layer(sn, 'base'),
      async (root) => {
        const prep = await cliAt(root, ['--json', 'prepare', 'ctr', 'base', '--volatile']);
        assert.equal(prep.code, 0, prep.stderr);
        assert.equal(json<{ mounts: Mount[] }>(prep).mounts[0]!.options.at(-1), 'volatile');
        assertOneLineError(await cliAt(root, ['commit', 'layer', 'ctr']), 5, /never made durable.*sync/);
        const synced = await cliAt(root, ['--json', 'sync', 'ctr']);
        assert.equal(synced.code, 0, synced.stderr);
        assert.deepEqual(json<{ labels: Record<string, string> }>(synced).labels, {}, 'the volatile label is cleared');
        assert.equal((await cliAt(root, ['commit', 'layer', 'ctr'])).code, 0);
        const caps = json<{ projectQuotas: boolean | null }>(await cliAt(root, ['--json', 'capabilities']));
        const quota = await cliAt(root, ['prepare', 'q', 'base', '--quota-size', '1G', '--quota-inodes', '1000']);
        assertOneLineError(quota, 6, caps.projectQuotas === true ? /does not set them yet/ : /needs project quotas on the root's filesystem/);
        assertOneLineError(await cliAt(root, ['prepare', 'q', 'base', '--quota-size', 'lots']), 2, /quota.size/);
      },
    );
  });

  test('prepare, view, commit, label, info, ls, tree and rm in human and --json form', async () => {
    await withRoot(undefined, async (root) => {
      const prep = await cliAt(root, ['--json', 'prepare', 'base-x', '--label', 'a=1']);
      assert.equal(prep.code, 0, prep.stderr);
      const prepJson = json<{ key: string; mounts: Mount[] }>(prep);
      assert.equal(prepJson.key, 'base-x');
      assert.equal(prepJson.mounts.length, 1);
      assert.equal(prepJson.mounts[0]!.type, 'bind');
      assert.deepEqual(prepJson.mounts[0]!.options, ['rw', 'rbind']);
      writeFileSync(join(prepJson.mounts[0]!.source, 'hello'), 'hi\n');

      const commit = await cliAt(root, ['commit', 'base', 'base-x', '--label', 'containerd.io/gc.root=yes']);
      assert.equal(commit.code, 0, commit.stderr);
      assert.equal(commit.stdout, '', 'commit is silent');
      const [c1, v1, odd] = await Promise.all([
        cliAt(root, ['prepare', 'c1', 'base']),
        cliAt(root, ['--json', 'view', 'v1', 'base']),
        cliAt(root, ['prepare', 'two words', 'base']),
      ]);
      assert.equal(c1.code, 0, c1.stderr);
      const [header, row] = c1.stdout.trimEnd().split('\n');
      assert.match(header!, /^TYPE {5}SOURCE {3}OPTIONS$/);
      assert.match(row!, /^overlay {2}overlay {2}.*upperdir=.*lowerdir=/);
      assert.equal(v1.code, 0, v1.stderr);
      assert.deepEqual(json<{ mounts: Mount[] }>(v1).mounts[0]!.options, ['ro', 'rbind']);
      assert.equal(odd.code, 0, odd.stderr);

      const set = await cliAt(root, ['label', 'c1', 'x=1', 'y=2', 'containerd.io/gc.ref.snapshot.overlayfs=v1']);
      assert.equal(set.code, 0, set.stderr);
      assert.equal(set.stdout, 'containerd.io/gc.ref.snapshot.overlayfs=v1\nx=1\ny=2\n');
      const del = await cliAt(root, ['--json', 'label', 'c1', 'x=', 'containerd.io/gc.ref.snapshot.overlayfs=']);
      assert.equal(del.code, 0, del.stderr);
      assert.deepEqual(json<{ labels: Record<string, string> }>(del).labels, { y: '2' });

      const [info, infoJson, ls, lsJson, lsFiltered, lsQuiet, tree, treeJson] = await Promise.all([
        cliAt(root, ['info', 'c1']),
        cliAt(root, ['info', 'c1', '--json']),
        cliAt(root, ['ls']),
        cliAt(root, ['list', '--json']),
        cliAt(root, ['ls', '-q', '--filter', 'kind==view', '--filter', 'labels.y==2']),
        cliAt(root, ['ls', '-q']),
        cliAt(root, ['tree']),
        cliAt(root, ['tree', 'base', '--json']),
      ]);
      assert.equal(info.code, 0, info.stderr);
      assert.match(info.stdout, /^Key: {6}c1\nKind: {5}active\nParent: {3}base\nCreated: {2}\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\nUpdated: {2}.*\nLabels:\n {2}y=2\n$/);
      const ij = json<Record<string, unknown>>(infoJson);
      assert.deepEqual(Object.keys(ij), ['name', 'kind', 'parent', 'labels', 'created', 'updated']);
      assert.equal(ij.parent, 'base');
      assert.ok(!Number.isNaN(Date.parse(ij.created as string)));

      // ls: a header and rows whose columns start where the header's do.
      const lines = ls.stdout.trimEnd().split('\n');
      assert.equal(lines.length, 5);
      const cols = ['PARENT', 'KIND', 'CREATED', 'LABELS'].map((h) => lines[0]!.indexOf(h));
      assert.ok(cols.every((c) => c > 0));
      const base = lines.find((l) => l.startsWith('base '))!;
      assert.equal(base.slice(cols[1]!, cols[1]! + 9), 'committed');
      assert.equal(base.slice(cols[3]!), 'containerd.io/gc.root=yes');
      const c1Line = lines.find((l) => l.startsWith('c1 '))!;
      assert.equal(c1Line.slice(cols[0]!, cols[0]! + 4), 'base');
      assert.ok(lines.some((l) => l.startsWith('"two words" ')), 'names with blanks are quoted');
      const lj = json<{ name: string; kind: string; parent: string | null }[]>(lsJson);
      assert.deepEqual(
        lj.map((i) => [i.name, i.kind, i.parent]),
        [
          ['base', 'committed', null],
          ['c1', 'active', 'base'],
          ['two words', 'active', 'base'],
          ['v1', 'view', 'base'],
        ],
      );
      assert.equal(lsFiltered.stdout, 'c1\nv1\n', 'filters are ORed');
      assert.equal(lsQuiet.stdout, 'base\nc1\n"two words"\nv1\n');
      assert.equal(tree.stdout, 'base (committed)\n├── c1 (active)\n├── "two words" (active)\n└── v1 (view)\n');
      assert.deepEqual(json(treeJson), [
        {
          name: 'base',
          kind: 'committed',
          children: [
            { name: 'c1', kind: 'active', children: [] },
            { name: 'two words', kind: 'active', children: [] },
            { name: 'v1', kind: 'view', children: [] },
          ],
        },
      ]);

      const rm = await cliAt(root, ['--json', 'rm', 'v1', 'nope', 'two words']);
      assert.equal(rm.code, 3, 'the first failure decides the exit code');
      assert.deepEqual(json(rm), { removed: ['v1', 'two words'], failed: [{ key: 'nope', code: 'ERR_NOT_FOUND', message: 'snapshot "nope" not found; nothing to remove' }] });
      assert.match(rm.stderr, /^overlay-snapshotter: snapshot "nope" not found/);
      assert.equal((await cliAt(root, ['ls', '-q'])).stdout, 'base\nc1\n');
    });
  });

  test('usage prints human sizes with a total, and --json the same numbers', async () => {
    await withRoot(
      async (sn) => {
        await layer(sn, 'base', undefined, undefined, 300_000);
        writeFileSync(join(upperOf(await sn.prepare('c1', 'base')), 'f'), Buffer.alloc(50_000, 1));
        await sn.view('v1', 'base');
      },
      async (root) => {
        const [human, all, one] = await Promise.all([cliAt(root, ['usage']), cliAt(root, ['usage', '--json']), cliAt(root, ['usage', 'c1', '--json'])]);
        assert.equal(human.code, 0, human.stderr);
        assert.equal(human.stderr, '', 'no progress bar without a terminal');
        const u = json<{ snapshots: { name: string; kind: string; size: number; inodes: number }[]; total: { size: number; inodes: number } }>(all);
        assert.deepEqual(
          u.snapshots.map((s) => s.name),
          ['base', 'c1', 'v1'],
        );
        const base = u.snapshots[0]!;
        assert.ok(base.size >= 300_000 && base.inodes >= 2);
        assert.deepEqual(u.snapshots[2], { name: 'v1', kind: 'view', size: 0, inodes: 0 });
        assert.equal(u.total.size, u.snapshots.reduce((s, x) => s + x.size, 0));
        const lines = human.stdout.trimEnd().split('\n');
        assert.match(lines[0]!, /^KEY +KIND +SIZE +INODES$/);
        assert.match(lines[1]!, /^base +committed +\d+\.\d KiB +\d+$/);
        assert.match(lines[3]!, /^v1 +view +0 B +0$/);
        assert.match(lines[4]!, /^TOTAL +\d+\.\d KiB +\d+$/);
        assert.equal(lines[1]!.length, lines[4]!.length, 'sizes and inode counts are right-aligned');
        assert.deepEqual(json<{ snapshots: unknown[] }>(one).snapshots, [u.snapshots[1]]);
      },
    );
  });

  test('mount and unmount a snapshot; mounts --mount-command prints a working mount(8) line', mountTestOptions(), async () => {
    await withRoot(
      async (sn) => {
        await layer(sn, 'base');
        await sn.prepare('c1', 'base');
      },
      async (root, top) => {
        const target = join(top, 'mnt');
        mkdirSync(target);
        try {
          const mounted = await cliAt(root, ['--json', 'mount', 'c1', target]);
          assert.equal(mounted.code, 0, mounted.stderr);
          assert.equal(json<{ target: string }>(mounted).target, target);
          assert.ok(isMounted(target));
          assert.equal(readFileSync(join(target, 'data')).length, 8192, 'the parent layer is visible');
          writeFileSync(join(target, 'written'), 'x');
          const un = await cliAt(root, ['unmount', target]);
          assert.equal(un.code, 0, un.stderr);
          assert.equal(un.stdout, '');
          assert.ok(!isMounted(target));

          const line = await cliAt(root, ['mounts', 'c1', '--mount-command', target]);
          assert.equal(line.code, 0, line.stderr);
          assert.match(line.stdout, /^mount -t overlay -o \S*upperdir=\S* overlay \S+\n$/);
          execFileSync('sh', ['-c', line.stdout]);
          assert.ok(isMounted(target));
          assert.equal(readFileSync(join(target, 'written'), 'utf8'), 'x', 'the active upper is mounted again');
          const again = await cliAt(root, ['umount', target]);
          assert.equal(again.code, 0, again.stderr);
          assert.ok(!isMounted(target));
          assert.equal((await cliAt(root, ['unmount', target])).code, 0, 'unmounting what is not mounted is fine');
        } finally {
          await unmountAll(target);
        }
      },
    );
  });

  test('import, apply and diff layers from files and pipes', async () => {
    await withRoot(undefined, async (root, top) => {
      const l1 = await makeLayer([{ name: 'etc/', type: 'directory' }, { name: 'etc/os-release', content: 'NAME=test\n' }, { name: 'a.txt', content: 'A' }]);
      const l2 = await makeLayer([{ name: 'b.txt', content: 'B' }, { name: '.wh.a.txt', content: '' }]);
      writeFileSync(join(top, 'l1.tar'), l1);
      writeFileSync(join(top, 'l2.tar.gz'), gzip(l2));
      const [c1, c2] = chainIds([sha256(l1), sha256(l2)]) as [string, string];

      const imp = await cliAt(root, ['--json', 'import', join(top, 'l1.tar'), join(top, 'l2.tar.gz'), '--label', 'src=test']);
      assert.equal(imp.code, 0, imp.stderr);
      assert.equal(imp.stderr, '');
      const ij = json<{ top: string; layers: { index: number; chainID: string; diffID: string; skipped: boolean }[] }>(imp);
      assert.equal(ij.top, c2);
      assert.deepEqual(
        ij.layers.map((l) => [l.index, l.chainID, l.diffID, l.skipped]),
        [
          [0, c1, sha256(l1), false],
          [1, c2, sha256(l2), false],
        ],
      );
      const again = await cliAt(root, ['import', '--diff-id', sha256(l1), join(top, 'l1.tar')]);
      assert.equal(again.code, 0, again.stderr);
      assert.match(again.stdout, /^LAYER +FILE +STATUS +CHAIN ID\n0 +\S+l1\.tar +present +sha256:/);
      assert.match(again.stdout, new RegExp(`\ntop: ${c1}\n$`));

      const prep = await cliAt(root, ['prepare', 'work', c2]);
      assert.equal(prep.code, 0, prep.stderr);
      const l3 = await makeLayer([{ name: 'c.txt', content: 'C'.repeat(3000) }]);
      const applied = await cliAt(root, ['--json', 'apply', 'work', '-'], { input: l3 });
      assert.equal(applied.code, 0, applied.stderr);
      assert.deepEqual(json(applied), { key: 'work', digest: sha256(l3), size: l3.length, compression: 'none', read: l3.length });

      const [toStdout, toStdoutJson, toFile, mismatch, missingKey, missingFile, view] = await Promise.all([
        cliAt(root, ['diff', 'work']),
        cliAt(root, ['--json', 'diff', 'work', '-']),
        cliAt(root, ['--json', 'diff', 'work', join(top, 'out.tar.gz'), '--gzip', '--gzip-level', '9']),
        cliAt(root, ['import', '--diff-id', sha256(l2), join(top, 'l1.tar')]),
        cliAt(root, ['apply', 'nope', join(top, 'l1.tar')]),
        cliAt(root, ['apply', 'work', join(top, 'missing.tar')]),
        cliAt(root, ['diff', c2, join(top, 'never.tar')]),
      ]);
      assert.equal(toStdout.code, 0, toStdout.stderr);
      assert.deepEqual(await tarNames(toStdout.out), ['c.txt']);
      assert.match(toStdout.stderr, /^Key: +work\nDigest: +sha256:[0-9a-f]{64} \(diffID\)\n/, 'the summary goes to stderr when the layer is on stdout');
      assert.equal(toStdoutJson.code, 0, toStdoutJson.stderr);
      const dj = JSON.parse(toStdoutJson.stderr) as { digest: string; compressedSize: number; file: string | null };
      assert.equal(dj.digest, sha256(toStdoutJson.out));
      assert.equal(dj.compressedSize, toStdoutJson.out.length);
      assert.equal(dj.file, null);
      assert.equal(toFile.code, 0, toFile.stderr);
      const fj = json<{ digest: string; compressedDigest: string; compressedSize: number; compression: string }>(toFile);
      const written = readFileSync(join(top, 'out.tar.gz'));
      assert.equal(fj.compression, 'gzip');
      assert.equal(fj.compressedSize, written.length);
      assert.equal(fj.compressedDigest, sha256(written));
      assert.equal(fj.digest, sha256(gunzipSync(written)));
      assert.equal(fj.digest, dj.digest, 'the same changes give the same diffID');
      assertOneLineError(mismatch, 2, /diffID is sha256:.*expected sha256:/);
      assertOneLineError(missingKey, 3, /snapshot "nope" not found/);
      assertOneLineError(missingFile, 1, /ENOENT.*missing\.tar/);
      assertOneLineError(view, 5, /committed/);
      assert.equal(existsSync(join(top, 'never.tar')), false, 'no output file for a failed diff');
    });
  });

  test('cleanup deletes what no snapshot owns and reports the bytes reclaimed', async () => {
    await withRoot(
      async (sn) => {
        await layer(sn, 'one', undefined, undefined, 100_000);
        await layer(sn, 'two', undefined, undefined, 200_000);
        await layer(sn, 'kept');
        await sn.remove('one');
        await sn.remove('two');
      },
      async (root) => {
        const snapshots = join(root, 'snapshots');
        const before = duBytes(snapshots);
        const r = await cliAt(root, ['--json', 'cleanup']);
        assert.equal(r.code, 0, r.stderr);
        assert.equal(r.stderr, '');
        const c = json<{ removed: { name: string; size: number; inodes: number }[]; skipped: unknown[]; reclaimed: { bytes: number; inodes: number } }>(r);
        assert.equal(c.removed.length, 2);
        assert.ok(c.removed.every((x) => /^\d+$/.test(x.name) && x.size > 0 && x.inodes >= 3));
        assert.deepEqual(c.skipped, []);
        assert.equal(c.reclaimed.bytes, before - duBytes(snapshots), 'reclaimed bytes equal the drop in du -s of snapshots/');
        assert.ok(c.reclaimed.bytes >= 300_000);
        assert.equal(c.reclaimed.inodes, c.removed.reduce((s, x) => s + x.inodes, 0));
        assert.equal(readdirSync(snapshots).length, 1);
        const human = await cliAt(root, ['cleanup']);
        assert.equal(human.code, 0, human.stderr);
        assert.equal(human.stdout, 'nothing to clean up\n');
      },
      { asyncRemove: true },
    );
    await withRoot(
      async (sn) => {
        await layer(sn, 'one', undefined, undefined, 100_000);
        await sn.remove('one');
      },
      async (root) => {
        const human = await cliAt(root, ['cleanup']);
        assert.equal(human.code, 0, human.stderr);
        assert.match(human.stdout, /^ENTRY +SIZE +INODES\n1 +\d+\.\d KiB +\d+\nremoved 1 entry, reclaimed \d+\.\d KiB \(\d+ inodes\)\n$/);
      },
      { asyncRemove: true },
    );
  });

  test('prune without a terminal does not ask; --dry-run, --filter, --mark-only, --grace-period and --all', async () => {
    await withRoot(
      async (sn) => {
        await layer(sn, 'rooted', undefined, { 'containerd.io/gc.root': 'x' });
        await layer(sn, 'loose');
        await layer(sn, 'keep', undefined, { keep: '1' });
        await sn.prepare('a1');
      },
      async (root) => {
        type Report = { dryRun: boolean; removed: { name: string; kind: string; size: number }[]; kept: { name: string; reason: string }[]; marked: string[]; reclaimed: { bytes: number } };
        const names = (r: Report) => r.removed.map((x) => x.name).sort();
        const reason = (r: Report, n: string) => r.kept.find((k) => k.name === n)?.reason;

        const dry = await cliAt(root, ['--json', 'prune', '--dry-run']);
        assert.equal(dry.code, 0, dry.stderr);
        assert.equal(dry.stderr, '', 'no prompt and no progress bar without a terminal');
        const dj = json<Report>(dry);
        assert.equal(dj.dryRun, true);
        assert.deepEqual(names(dj), ['keep', 'loose']);
        assert.ok(dj.reclaimed.bytes >= 16_384);
        assert.equal(reason(dj, 'rooted'), 'root');
        assert.equal(reason(dj, 'a1'), 'active');

        const filtered = await cliAt(root, ['--json', 'prune', '--filter', 'label!=keep']);
        assert.equal(filtered.code, 0, filtered.stderr);
        assert.equal(filtered.stderr, '');
        assert.deepEqual(names(json<Report>(filtered)), ['loose']);
        assert.equal(reason(json<Report>(filtered), 'keep'), 'filtered');

        const mark = await cliAt(root, ['--json', 'prune', '--mark-only']);
        assert.deepEqual(json<Report>(mark).marked, ['keep']);
        assert.deepEqual(names(json<Report>(mark)), []);
        const grace = await cliAt(root, ['--json', 'prune', '--grace-period', '1h']);
        assert.equal(grace.code, 0, grace.stderr);
        assert.deepEqual(names(json<Report>(grace)), []);
        assert.equal(reason(json<Report>(grace), 'keep'), 'grace-period');

        const all = await cliAt(root, ['prune', '--all', '-v']);
        assert.equal(all.code, 0, all.stderr);
        assert.match(all.stdout, /^Deleted snapshots:\nNAME +KIND +SIZE +INODES\n/);
        assert.match(all.stdout, /\na1 +active +\d/);
        assert.match(all.stdout, /\nkeep +committed +\d+\.\d KiB/);
        assert.match(all.stdout, /\nKept:\nNAME +KIND +REASON\nrooted +committed +root\n/);
        assert.match(all.stdout, /\nTotal reclaimed space: \d+\.\d KiB \(\d+ inodes\)\n$/);
        assert.equal((await cliAt(root, ['ls', '-q'])).stdout, 'rooted\n');
        assertOneLineError(await cliAt(root, ['prune', '--filter', 'until=tomorrow']), 2, /invalid until filter "tomorrow"/);
      },
    );
  });

  test('check exits 7 while problems remain; --repair fixes them', async () => {
    await withRoot(
      async (sn) => layer(sn, 'base'),
      async (root) => {
        writeFileSync(join(root, 'snapshots', 'stray'), 'x');
        const [human, asJson] = await Promise.all([cliAt(root, ['check']), cliAt(root, ['check', '--json'])]);
        assert.equal(human.code, 7);
        assert.match(human.stdout, /^driver: overlay \(chosen when the store was created, as overlay runs here: .*\)\nPROBLEM +KEY +PATH +REPAIRED\norphan +- +\S+\/snapshots\/stray +no\n$/);
        assert.equal(human.stderr, 'overlay-snapshotter: 1 problem left; run check --repair to fix what can be fixed\n');
        assert.equal(asJson.code, 7);
        const report = json<{ driverReason: string }>(asJson);
        assert.deepEqual(report, {
          ok: false,
          problems: [{ problem: 'orphan', key: null, path: join(root, 'snapshots', 'stray'), mountPoints: null, owner: null, repaired: false }],
          driver: 'overlay',
          driverReason: report.driverReason,
        });
        assert.match(report.driverReason, /^chosen when the store was created, as overlay runs here/);
        const repaired = await cliAt(root, ['check', '--repair', '--json']);
        assert.equal(repaired.code, 0, repaired.stderr);
        assert.equal(json<{ ok: boolean; problems: { repaired: boolean }[] }>(repaired).problems[0]!.repaired, true);
        const clean = await cliAt(root, ['check']);
        assert.equal(clean.code, 0);
        assert.match(clean.stdout, /^driver: overlay \(.*\)\nok: no problems found\n$/);
      },
    );
  });

  test('check, cleanup and prune name the abandoned snapshots (their owner gone) that their open removed', async () => {
    const dead = formatOwner({ ...parseOwner(ownerValue())!, start: '1' });
    /** Leaves the active `key` of a dead owner in the store at `root`, as a crashed import does. */
    const abandon = async (root: string, key: string) => {
      const sn = await Snapshotter.open(root);
      await sn.prepare(key, undefined, { labels: { [OWNER_LABEL]: dead } });
      await sn.close();
    };
    await withRoot(
      async (sn) => layer(sn, 'base'),
      async (root) => {
        await abandon(root, 'import-a');
        const asJson = await cliAt(root, ['check', '--json']);
        assert.equal(asJson.code, 0, asJson.stderr);
        const { problems } = json<{ problems: { path: string }[] }>(asJson);
        assert.deepEqual(problems, [{ problem: 'abandoned', key: 'import-a', path: problems[0]?.path, mountPoints: null, owner: dead, repaired: true }]);
        assert.match(problems[0]!.path, /\/snapshots\/\d+$/);
        assert.equal(existsSync(problems[0]!.path), false);

        await abandon(root, 'import-b');
        const human = await cliAt(root, ['check']);
        assert.equal(human.code, 0, human.stderr);
        assert.match(human.stdout, /\nPROBLEM +KEY +PATH +REPAIRED\nabandoned +import-b +\S+\/snapshots\/\d+ +yes\n$/);

        await abandon(root, 'import-c');
        const cleanup = await cliAt(root, ['cleanup', '--json']);
        assert.equal(cleanup.code, 0, cleanup.stderr);
        assert.deepEqual(json<{ abandoned: string[] }>(cleanup).abandoned, ['import-c']);
        await abandon(root, 'import-d');
        const cleanupHuman = await cliAt(root, ['cleanup']);
        assert.equal(cleanupHuman.stdout, 'removed abandoned snapshots (their owner is gone): import-d\nremoved 0 entries, reclaimed 0 B (0 inodes)\n');

        await abandon(root, 'import-e');
        const prune = await cliAt(root, ['prune', '--json', '--dry-run']);
        assert.equal(prune.code, 0, prune.stderr);
        assert.deepEqual(json<{ abandonedAtOpen: string[] }>(prune).abandonedAtOpen, ['import-e']);
        await abandon(root, 'import-f');
        const pruneHuman = await cliAt(root, ['prune', '--dry-run']);
        assert.match(pruneHuman.stdout, /^Removed at open, their owner being gone: import-f\nWould delete:\nNAME /);
        assert.equal((await cliAt(root, ['ls', '-q'])).stdout, 'base\n');
      },
    );
  });

  test('--driver and $OVERLAY_SNAPSHOTTER_DRIVER obey the recorded driver: another one exits 5 saying where it came from and changes nothing; info shows the driver', async () => {
    await withRoot(
      async (sn) => layer(sn, 'base'),
      async (root, top) => {
        const [flag, env, same, info, infoJson] = await Promise.all([
          cliAt(root, ['--driver', 'native', 'prepare', 'c1', 'base']),
          cliAt(root, ['prepare', 'c2', 'base'], { env: { OVERLAY_SNAPSHOTTER_DRIVER: 'native' } }),
          cliAt(root, ['--driver', 'overlay', 'ls', '-q']),
          cliAt(root, ['info']),
          cliAt(root, ['info', '--json']),
        ]);
        assertOneLineError(flag, 5, /uses the "overlay" driver, but the "native" driver was asked for: .* \(the driver came from --driver native: drop it to use the store's own\)\n$/);
        assertOneLineError(env, 5, /uses the "overlay" driver, .* \(the driver came from \$OVERLAY_SNAPSHOTTER_DRIVER=native: drop it to use the store's own\)\n$/);
        assert.equal(same.code, 0, same.stderr);
        assert.equal(same.stdout, 'base\n', 'the refused prepares created nothing');
        assert.equal(info.code, 0, info.stderr);
        assert.match(info.stdout, /^Root: +\S+\/root\nDriver: +overlay\nWhy: +chosen when the store was created, as overlay runs here: .*\nSnapshots: +1\n$/);
        const store = json<Record<string, unknown>>(infoJson);
        assert.deepEqual([Object.keys(store), store.root, store.driver, store.snapshots], [['root', 'driver', 'driverReason', 'snapshots'], root, 'overlay', 1]);

        // A store created with --driver native keeps it: later commands need no flag, and the variable asking for overlay is refused.
        const other = join(top, 'native-root');
        const made = await cli(['--root', other, '--driver', 'native', '--json', 'prepare', 'x']);
        assert.equal(made.code, 0, made.stderr);
        const [commit, asked] = await Promise.all([
          cli(['--root', other, 'commit', 'x-layer', 'x']),
          cli(['--root', other, 'info', 'x'], { env: { OVERLAY_SNAPSHOTTER_DRIVER: 'overlay' } }),
        ]);
        assert.equal(commit.code, 0, commit.stderr);
        assertOneLineError(asked, 5, /uses the "native" driver, but the "overlay" driver was asked for/);
        const child = await cli(['--root', other, '--json', 'prepare', 'y', 'x-layer']);
        assert.equal(child.code, 0, child.stderr);
        assert.equal(json<{ mounts: Mount[] }>(child).mounts[0]!.type, 'bind', 'native: a copy, bound');
        assert.equal(json<{ driver: string }>(await cli(['--root', other, '--json', 'info'])).driver, 'native');
      },
    );
  });

  test('capabilities shows every probed field, for a store and for a root that does not exist yet', async () => {
    await withRoot(
      async (sn) => layer(sn, 'base'),
      async (root, top) => {
        const missing = join(top, 'not', 'yet');
        const [asJson, human, notYet] = await Promise.all([cliAt(root, ['capabilities', '--json']), cliAt(root, ['capabilities']), cli(['--root', missing, 'capabilities'])]);
        assert.equal(asJson.code, 0, asJson.stderr);
        const caps = json<Record<string, unknown>>(asJson);
        assert.equal(caps.kernelRelease, release());
        assert.equal(caps.cached, true, 'an existing store answers from its cache');
        for (const k of ['overlay', 'dType', 'rootFilesystem', 'mountStrategy', 'overlayUnavailable', 'defaultDriver', 'defaultDriverReason']) assert.ok(k in caps, k);
        assert.equal(caps.driver, 'overlay', "the store's own driver");
        assert.match(String(caps.driverReason), /^chosen when the store was created/);
        assert.equal(human.code, 0, human.stderr);
        assert.match(human.stdout, /^CAPABILITY +VALUE\nkernelRelease +\S+\n/);
        for (const k of Object.keys(caps)) assert.match(human.stdout, new RegExp(`\\n${k} +\\S`), k);
        assert.equal(notYet.code, 0, notYet.stderr);
        assert.match(notYet.stdout, /does not exist: probed in .* instead\.\n$/);
        assert.match(notYet.stdout, /\ndefaultDriver +overlay\n/);
        assert.match(notYet.stdout, /\ndriver +-\n/, 'no store, no driver');
        assert.equal(existsSync(join(top, 'not')), false, 'nothing is created for a missing root');
      },
    );
  });

  const TERMINAL_MISSING = terminalSkipReason();
  describe('on a terminal', prerequisiteOptions(TERMINAL_MISSING), () => {
    before(() => assertPrerequisite(TERMINAL_MISSING));

    test('prune asks first, and "n" keeps everything', async () => {
      await withRoot(
        async (sn) => layer(sn, 'loose'),
        async (root) => {
          const r = await inTerminal(['--root', root, 'prune'], { input: 'n\n' });
          assert.equal(r.code, 1, r.output);
          assert.match(r.output, /WARNING! This will remove every committed snapshot that nothing keeps alive from /);
          assert.match(r.output, /Are you sure you want to continue\? \[y\/N\] /);
          assert.match(r.output, /overlay-snapshotter: prune aborted: nothing removed/);
          assert.equal((await cliAt(root, ['ls', '-q'])).stdout, 'loose\n');
          const yes = await inTerminal(['--root', root, 'prune'], { input: 'y\n' });
          assert.equal(yes.code, 0, yes.output);
          assert.match(yes.output, /Deleted snapshots:/);
        },
      );
    });

    test('prune --force draws a progress bar with counts, bytes and throughput that ends at 100% and restores the cursor', async () => {
      await withRoot(
        async (sn) => {
          for (let i = 0; i < 40; i++) await layer(sn, `l${String(i).padStart(2, '0')}`, undefined, undefined, 20_000);
        },
        async (root) => {
          const r = await inTerminal(['--root', root, 'prune', '--force']);
          assert.equal(r.code, 0, r.output);
          assert.doesNotMatch(r.output, /WARNING!/, '--force does not ask');
          const hide = r.output.indexOf(`${ESC}[?25l`);
          const show = r.output.lastIndexOf(`${ESC}[?25h`);
          assert.ok(hide >= 0 && show > hide, 'the cursor is hidden while the bar runs, then shown again');
          const bar = r.output.slice(hide, show);
          const frames = bar.split(`${ESC}[1G`).filter((f) => f.startsWith('prune'));
          assert.ok(frames.length >= 2, 'the bar is drawn, then redrawn in place');
          const last = frames.at(-1)!;
          assert.match(last, /^prune \[█+\] 100% \| 40\/40 snapshots \| \d+\.\d [KM]iB \| [\d.]+ [KMG]?i?B\/s \| \d+:\d\d/);
          // After the bar: its line ends, and the report follows on lines of its own.
          const after = r.output.slice(show);
          assert.match(after, /^\u001b\[\?25h\u001b8\r?\n+Deleted snapshots:\r?\n/);
          assert.match(after, /Total reclaimed space: \d+\.\d [KM]iB/);
          assert.equal((await cliAt(root, ['ls', '-q'])).stdout, '');
        },
      );
    });

    test('import shows layers and bytes; --json shows no bar; diff refuses to write a layer to the terminal', async () => {
      await withRoot(undefined, async (root, top) => {
        const files: string[] = [];
        for (let i = 0; i < 3; i++) {
          const f = join(top, `l${i}.tar`);
          writeFileSync(f, await makeLayer([{ name: `f${i}`, content: 'x'.repeat(100_000) }]));
          files.push(f);
        }
        const imp = await inTerminal(['--root', root, 'import', ...files]);
        assert.equal(imp.code, 0, imp.output);
        assert.match(imp.output, /import \[█+\] 100% \| 3\/3 layers \| \d+\.\d KiB\/\d+\.\d KiB \| /);
        assert.match(imp.output, /\u001b\[\?25h\u001b8\r?\nLAYER +FILE +STATUS +CHAIN ID\r?\n/);

        const quiet = await inTerminal(['--root', root, '--json', 'import', ...files]);
        assert.equal(quiet.code, 0, quiet.output);
        assert.doesNotMatch(quiet.output, /\u001b\[\?25l/, 'no bar with --json');
        assert.equal((JSON.parse(quiet.output.replace(/\r/g, '')) as { layers: unknown[] }).layers.length, 3);

        await cliAt(root, ['prepare', 'w']);
        const refused = await inTerminal(['--root', root, 'diff', 'w']);
        assert.equal(refused.code, 2, refused.output);
        assert.match(refused.output, /overlay-snapshotter: refusing to write a layer to a terminal; redirect stdout or name a FILE/);
        const redirected = await inTerminal(['--root', root, 'diff', 'w'], { shellSuffix: ' > /dev/null' });
        assert.equal(redirected.code, 0, redirected.output);
        assert.match(redirected.output, /diff \| 1\.0 KiB \| /, 'a bar without a total shows bytes and throughput');
        assert.match(redirected.output, /Digest: +sha256:/);
      });
    });
  });
});
