import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { InvalidArgumentError, UnavailableError } from '../../../lib/model/errors.js';
import {
  MAX_LOWER_LAYERS,
  STRATEGY_ENV,
  mountAll,
  overlayLowerLimit,
  parseMountOptions,
  resolveOverlayStrategy,
  unmountAll,
  type OverlayStrategy,
} from '../../../lib/kernel/mount/index.js';
import { escapeOverlayPath, parseLowerdirs } from '../../../lib/kernel/mount/overlay-plan.js';
import type { Mount } from '../../../lib/model/types.js';
import { mountPoints, removeTree } from '../../helpers/fixtures.js';
import { mountTestOptions } from '../../helpers/require-mount.js';
import { makeWhiteout } from '../../helpers/whiteout.js';

const STRATEGIES = ['mount-api', 'legacy'] as const satisfies readonly OverlayStrategy[];

// ---------------------------------------------------------------------------
// helpers

/** One /proc/self/mountinfo entry: mount point, fs type and super options. */
interface MountInfo {
  mountPoint: string;
  fstype: string;
  superOptions: string;
}

function unescapeMountinfo(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}

function mountinfo(): MountInfo[] {
  return fs
    .readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((line) => {
      const fields = line.split(' ');
      const dash = fields.indexOf('-');
      return { mountPoint: unescapeMountinfo(fields[4]!), fstype: fields[dash + 1]!, superOptions: fields[dash + 3] ?? '' };
    });
}

/** How many mounts are stacked on `path`. */
function mountCount(path: string): number {
  return mountPoints().filter((p) => p === path).length;
}

/** Mount points at or below `dir`. */
function mountsBelow(dir: string): string[] {
  return mountPoints().filter((p) => p === dir || p.startsWith(`${dir}/`));
}

/** The topmost mount on `path`. */
function topMount(path: string): MountInfo | undefined {
  return mountinfo()
    .filter((m) => m.mountPoint === path)
    .at(-1);
}

function mkdirs(...dirs: string[]): void {
  for (const d of dirs) fs.mkdirSync(d, { recursive: true });
}

/** A fresh temp dir under os.tmpdir(), removed (after checking nothing is mounted below it) when `fn` ends. */
async function withTemp(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = fs.realpathSync(fs.mkdtempSync(join(tmpdir(), 'ovl-mount-test-')));
  try {
    await fn(dir);
  } finally {
    await removeTree(dir);
  }
}

/** Every entry below `dir` as `d path`, `f path=content`, `l path->target` or `c path major/minor`, sorted. */
function tree(dir: string): string[] {
  const out: string[] = [];
  const walk = (rel: string): void => {
    for (const entry of fs.readdirSync(join(dir, rel), { withFileTypes: true })) {
      const path = rel === '' ? entry.name : `${rel}/${entry.name}`;
      if (entry.isDirectory()) {
        out.push(`d ${path}`);
        walk(path);
      } else if (entry.isFile()) {
        out.push(`f ${path}=${fs.readFileSync(join(dir, path), 'utf8')}`);
      } else if (entry.isSymbolicLink()) {
        out.push(`l ${path}->${fs.readlinkSync(join(dir, path))}`);
      } else {
        const st = fs.statSync(join(dir, path));
        out.push(`c ${path} ${st.rdev}`);
      }
    }
  };
  walk('');
  return out.sort();
}

function isWhiteout(path: string): boolean {
  const st = fs.lstatSync(path);
  return st.isCharacterDevice() && st.rdev === 0;
}

async function rejectsWithCode(promise: Promise<unknown>, code: string, check?: (err: NodeJS.ErrnoException) => void): Promise<void> {
  await assert.rejects(promise, (err: NodeJS.ErrnoException) => {
    assert.equal(err.code, code, err.message);
    check?.(err);
    return true;
  });
}

// ---------------------------------------------------------------------------
// parseMountOptions: pure

describe('parseMountOptions', () => {
  test('fstab flag words become MS_* flags and every other word is data, in order', () => {
    const p = parseMountOptions(['ro', 'nosuid', 'lowerdir=/a:/b', 'nodev', 'noexec', 'index=off', 'rbind']);
    assert.equal(p.flags, 0x1 | 0x2 | 0x4 | 0x8 | 0x1000 | 0x4000);
    assert.deepEqual(p.data, ['lowerdir=/a:/b', 'index=off']);
    assert.equal(p.readonly, true);
    assert.equal(p.bind, true);
    assert.equal(p.propagation, 0);
  });

  test('sync, dirsync, remount, bind and the atime words map to their MS_ values', () => {
    const flagsOf = (...words: string[]) => parseMountOptions(words).flags;
    assert.equal(flagsOf('sync'), 0x10);
    assert.equal(flagsOf('remount'), 0x20);
    assert.equal(flagsOf('dirsync'), 0x80);
    assert.equal(flagsOf('noatime'), 0x400);
    assert.equal(flagsOf('nodiratime'), 0x800);
    assert.equal(flagsOf('bind'), 0x1000);
    assert.equal(flagsOf('relatime'), 0x200000);
    assert.equal(flagsOf('strictatime'), 0x1000000);
    assert.equal(flagsOf('defaults'), 0);
  });

  test('a later word overrides an earlier one: rw after ro, one atime mode at a time', () => {
    const p = parseMountOptions(['ro', 'nosuid', 'rw', 'suid', 'relatime', 'noatime']);
    assert.equal(p.readonly, false);
    assert.equal(p.flags, 0x400);
  });

  test('propagation words are kept apart from the flags, recursive ones with MS_REC', () => {
    assert.deepEqual(parseMountOptions(['rprivate']), { flags: 0, propagation: 0x40000 | 0x4000, data: [], readonly: false, bind: false });
    assert.equal(parseMountOptions(['shared']).propagation, 0x100000);
    assert.equal(parseMountOptions(['rslave']).propagation, 0x80000 | 0x4000);
    assert.equal(parseMountOptions(['unbindable']).propagation, 0x20000);
    assert.equal(parseMountOptions(['private', 'rprivate']).propagation, 0x40000 | 0x4000);
  });

  test('conflicting propagation words and malformed words are InvalidArgumentError', () => {
    assert.throws(() => parseMountOptions(['private', 'shared']), InvalidArgumentError);
    assert.throws(() => parseMountOptions(['']), InvalidArgumentError);
    assert.throws(() => parseMountOptions(['a\0b']), InvalidArgumentError);
    assert.throws(() => parseMountOptions([42 as unknown as string]), InvalidArgumentError);
    assert.throws(() => parseMountOptions('ro' as unknown as string[]), InvalidArgumentError);
  });
});

// ---------------------------------------------------------------------------
// checks made before any syscall: no root needed

describe('mountAll argument checks (before any syscall)', () => {
  const target = join(tmpdir(), 'ovl-mount-test-never-created', 'target');

  test('the lower layer limit is the kernel limit of 500', () => {
    assert.equal(MAX_LOWER_LAYERS, 500);
    assert.equal(overlayLowerLimit(), 500);
  });

  test('a chain of 501 lower layers is InvalidArgumentError naming the limit 500 and the depth', async () => {
    const lower = Array.from({ length: 501 }, (_, i) => `/nonexistent/snapshots/${1000501 - i}/fs`).join(':');
    for (const strategy of STRATEGIES) {
      await assert.rejects(mountAll([{ type: 'overlay', source: 'overlay', options: [`lowerdir=${lower}`] }], target, { strategy }), (err: Error) => {
        assert.ok(err instanceof InvalidArgumentError, String(err));
        assert.match(err.message, /\b501\b/);
        assert.match(err.message, /\b500\b/);
        return true;
      });
    }
  });

  test('malformed specs, options and mountAll options are InvalidArgumentError', async () => {
    const overlay = (...options: string[]): Mount[] => [{ type: 'overlay', source: 'overlay', options }];
    const cases: Array<[string, Mount[], string, object?]> = [
      ['empty option word', [{ type: 'bind', source: '/x', options: [''] }], target],
      ['options not an array', [{ type: 'bind', source: '/x', options: 'ro' as unknown as string[] }], target],
      ['empty type', [{ type: '', source: '/x', options: [] }], target],
      ['empty target', [{ type: 'bind', source: '/x', options: [] }], ''],
      ['spec with its own target', [{ type: 'bind', source: '/x', target: '/elsewhere', options: [] }], target],
      ['two propagation types', [{ type: 'bind', source: '/x', options: ['private', 'shared'] }], target],
      ['overlay without lowerdir', overlay('upperdir=/u', 'workdir=/w'), target],
      ['lowerdir ending in a colon', overlay('lowerdir=/a:/b:'), target],
      ['lowerdir with ":::"', overlay('lowerdir=/a:::/b'), target],
      ['lowerdir starting with a colon', overlay('lowerdir=:/a'), target],
      ['empty lowerdir', overlay('lowerdir='), target],
      ['two lowerdir options', overlay('lowerdir=/a', 'lowerdir=/b'), target],
      ['lowerdir+ in a spec', overlay('lowerdir=/a', 'lowerdir+=/b'), target],
      ['regular layer after a data-only layer', overlay('lowerdir=/a::/d:/b'), target],
      ['unknown strategy', overlay('lowerdir=/a:/b'), target, { strategy: 'fast' }],
      ['misspelt mountAll option', overlay('lowerdir=/a:/b'), target, { stratgy: 'legacy' }],
    ];
    for (const [name, mounts, where, opts] of cases) {
      await assert.rejects(mountAll(mounts, where, opts as { strategy?: OverlayStrategy }), InvalidArgumentError, name);
    }
  });

  test('lowerdir values parse the same with and without escapes: layers top first, data-only layers after "::"', () => {
    const plain = parseLowerdirs('/a:/b::/d1::/d2');
    assert.deepEqual(plain, [
      { path: '/a', data: false },
      { path: '/b', data: false },
      { path: '/d1', data: true },
      { path: '/d2', data: true },
    ]);
    // A backslash anywhere takes the escaping parser; a no-op escape must not change the result.
    assert.deepEqual(parseLowerdirs('/\\a:/b::/d1::/d2'), plain);
    assert.deepEqual(parseLowerdirs('/x\\:y:/z'), [
      { path: '/x:y', data: false },
      { path: '/z', data: false },
    ]);
    for (const bad of ['/a:::/b', '/a:/b:', '/a::/d:/b', '/a::']) {
      const escaped = bad.replace('/a', '/\\a');
      const message = (value: string) => {
        try {
          parseLowerdirs(value);
        } catch (err) {
          assert.ok(err instanceof InvalidArgumentError, String(err));
          return err.message.replace(/lowerdir=.*?( has | ends |: a regular)/, 'lowerdir=<value>$1');
        }
        assert.fail(`${value} parsed`);
      };
      assert.equal(message(bad), message(escaped), bad);
    }
  });

  test('a misspelt mountAll option names the known one', async () => {
    await assert.rejects(mountAll([], target, { stratgy: 'legacy' } as unknown as { strategy?: OverlayStrategy }), /"strategy"/);
  });

  test('an ID map without its pair (uidmap= alone) is InvalidArgumentError, and one on a type other than bind or overlay UnavailableError', async () => {
    const mounts: Mount[] = [{ type: 'overlay', source: 'overlay', options: ['uidmap=0:1000:10', 'lowerdir=/a:/b'] }];
    await assert.rejects(mountAll(mounts, target), (err: Error) => err instanceof InvalidArgumentError && /uidmap= without gidmap=/.test(err.message));
    const tmpfs: Mount[] = [{ type: 'tmpfs', source: 'tmpfs', options: ['uidmap=0:1000:10', 'gidmap=0:1000:10'] }];
    await assert.rejects(mountAll(tmpfs, target), (err: Error) => err instanceof UnavailableError && /ID-maps new bind and overlay mounts only/.test(err.message));
  });

  test('mountAll of no mounts does nothing: no mount is made and the target is not even created', async () => {
    assert.equal(await mountAll([], target), undefined);
    assert.deepEqual(mountsBelow(join(target, '..')), []);
    assert.equal(fs.existsSync(join(target, '..')), false);
  });

  test(`the strategy is the option, else ${STRATEGY_ENV}, else the probe`, (t) => {
    const saved = process.env[STRATEGY_ENV];
    try {
      process.env[STRATEGY_ENV] = 'legacy';
      assert.equal(resolveOverlayStrategy(), 'legacy');
      assert.equal(resolveOverlayStrategy('auto'), 'legacy');
      assert.equal(resolveOverlayStrategy('mount-api'), 'mount-api');
      process.env[STRATEGY_ENV] = 'mount-api';
      assert.equal(resolveOverlayStrategy(), 'mount-api');
      assert.equal(resolveOverlayStrategy('legacy'), 'legacy');
      process.env[STRATEGY_ENV] = 'fast';
      assert.throws(() => resolveOverlayStrategy(), (err: Error) => err instanceof InvalidArgumentError && err.message.includes(STRATEGY_ENV));
      delete process.env[STRATEGY_ENV];
      const probed = resolveOverlayStrategy();
      assert.ok(probed === 'mount-api' || probed === 'legacy');
      assert.equal(resolveOverlayStrategy('auto'), probed);
      t.diagnostic(`auto picks ${probed} on this kernel`);
    } finally {
      if (saved === undefined) delete process.env[STRATEGY_ENV];
      else process.env[STRATEGY_ENV] = saved;
    }
  });
});

// ---------------------------------------------------------------------------
// real mounts (root)

describe('mounting', mountTestOptions(), () => {
  test('a rw bind shows the source and writes go through to it', async () => {
    await withTemp(async (dir) => {
      const src = join(dir, 'src');
      const target = join(dir, 'target');
      mkdirs(src, target);
      fs.writeFileSync(join(src, 'a'), 'from source');
      try {
        await mountAll([{ type: 'bind', source: src, options: ['rw', 'rbind'] }], target);
        assert.equal(mountCount(target), 1);
        assert.equal(fs.readFileSync(join(target, 'a'), 'utf8'), 'from source');
        fs.writeFileSync(join(target, 'b'), 'through the bind');
        assert.equal(fs.readFileSync(join(src, 'b'), 'utf8'), 'through the bind');
      } finally {
        await unmountAll(target);
      }
      assert.equal(mountCount(target), 0);
    });
  });

  test('a ro bind is read-only: a write fails with EROFS and the source stays writable', async () => {
    await withTemp(async (dir) => {
      const src = join(dir, 'src');
      const target = join(dir, 'target');
      mkdirs(src, target);
      fs.writeFileSync(join(src, 'a'), 'from source');
      try {
        await mountAll([{ type: 'bind', source: src, options: ['ro', 'rbind'] }], target);
        assert.equal(fs.readFileSync(join(target, 'a'), 'utf8'), 'from source');
        assert.throws(() => fs.writeFileSync(join(target, 'b'), 'x'), { code: 'EROFS' });
        assert.match(topMount(target)?.superOptions ?? '', /^rw/, 'the filesystem itself stays rw');
        fs.writeFileSync(join(src, 'c'), 'source still writable');
        assert.equal(fs.readFileSync(join(target, 'c'), 'utf8'), 'source still writable');
      } finally {
        await unmountAll(target);
      }
    });
  });

  test('bind options nosuid,nodev,noexec take effect through the remount, and a propagation word after the mount', async () => {
    await withTemp(async (dir) => {
      const src = join(dir, 'src');
      const target = join(dir, 'target');
      mkdirs(src, target);
      try {
        await mountAll([{ type: 'bind', source: src, options: ['rbind', 'nosuid', 'nodev', 'noexec', 'rshared'] }], target);
        const line = fs
          .readFileSync('/proc/self/mountinfo', 'utf8')
          .split('\n')
          .find((l) => l.split(' ')[4] === target);
        const mountOptions = line?.split(' ')[5]?.split(',') ?? [];
        for (const o of ['rw', 'nosuid', 'nodev', 'noexec']) assert.ok(mountOptions.includes(o), `${o} in ${mountOptions.join(',')}`);
        assert.match(line ?? '', / shared:\d+ /, 'rshared: the mount joined a peer group');
      } finally {
        await unmountAll(target);
      }
    });
  });

  for (const strategy of STRATEGIES) {
    test(`an overlay of 2 lowers and an upper (${strategy}) shows the lower files and writes land in the upper`, async () => {
      await withTemp(async (dir) => {
        const [l1, l2, upper, work, target] = ['l1', 'l2', 'upper', 'work', 'target'].map((n) => join(dir, n)) as [string, string, string, string, string];
        mkdirs(l1, l2, upper, work, target);
        fs.writeFileSync(join(l1, 'top'), 'top layer');
        fs.writeFileSync(join(l1, 'both'), 'top wins');
        fs.writeFileSync(join(l2, 'both'), 'bottom loses');
        fs.writeFileSync(join(l2, 'bottom'), 'bottom layer');
        const cwd = process.cwd();
        try {
          await mountAll([{ type: 'overlay', source: 'overlay', options: [`workdir=${work}`, `upperdir=${upper}`, `lowerdir=${l1}:${l2}`] }], target, { strategy });
          assert.equal(process.cwd(), cwd);
          assert.equal(topMount(target)?.fstype, 'overlay');
          assert.match(topMount(target)?.superOptions ?? '', strategy === 'mount-api' ? /lowerdir\+=/ : /lowerdir=/);
          assert.deepEqual(fs.readdirSync(target).sort(), ['both', 'bottom', 'top']);
          assert.equal(fs.readFileSync(join(target, 'both'), 'utf8'), 'top wins');
          fs.writeFileSync(join(target, 'new'), 'written');
          fs.writeFileSync(join(target, 'bottom'), 'changed');
          fs.rmSync(join(target, 'top'));
          assert.equal(fs.readFileSync(join(upper, 'new'), 'utf8'), 'written');
          assert.equal(fs.readFileSync(join(upper, 'bottom'), 'utf8'), 'changed');
          assert.ok(isWhiteout(join(upper, 'top')));
          assert.equal(fs.readFileSync(join(l2, 'bottom'), 'utf8'), 'bottom layer');
          assert.ok(fs.existsSync(join(l1, 'top')));
        } finally {
          await unmountAll(target);
        }
        assert.deepEqual(mountsBelow(dir), []);
      });
    });

    test(`an overlay of lowers only is read-only (${strategy})`, async () => {
      await withTemp(async (dir) => {
        const [l1, l2, target] = ['l1', 'l2', 'target'].map((n) => join(dir, n)) as [string, string, string];
        mkdirs(l1, l2, target);
        fs.writeFileSync(join(l1, 'a'), 'a');
        fs.writeFileSync(join(l2, 'b'), 'b');
        try {
          await mountAll([{ type: 'overlay', source: 'overlay', options: [`lowerdir=${l1}:${l2}`, 'index=off'] }], target, { strategy });
          assert.deepEqual(fs.readdirSync(target).sort(), ['a', 'b']);
          assert.throws(() => fs.writeFileSync(join(target, 'c'), 'x'), { code: 'EROFS' });
        } finally {
          await unmountAll(target);
        }
      });
    });

    test(`flag words on an overlay apply to it: ro,nosuid,nodev,noatime with an upper (${strategy})`, async () => {
      await withTemp(async (dir) => {
        const [l1, l2, upper, work, target] = ['l1', 'l2', 'upper', 'work', 'target'].map((n) => join(dir, n)) as [string, string, string, string, string];
        mkdirs(l1, l2, upper, work, target);
        fs.writeFileSync(join(l1, 'a'), 'a');
        try {
          await mountAll(
            [{ type: 'overlay', source: 'overlay', options: ['ro', 'nosuid', 'nodev', 'noatime', `workdir=${work}`, `upperdir=${upper}`, `lowerdir=${l1}:${l2}`] }],
            target,
            { strategy },
          );
          const line = fs
            .readFileSync('/proc/self/mountinfo', 'utf8')
            .split('\n')
            .find((l) => l.split(' ')[4] === target);
          const mountOptions = line?.split(' ')[5]?.split(',') ?? [];
          for (const o of ['ro', 'nosuid', 'nodev', 'noatime']) assert.ok(mountOptions.includes(o), `${o} in ${mountOptions.join(',')}`);
          assert.equal(fs.readFileSync(join(target, 'a'), 'utf8'), 'a');
          assert.throws(() => fs.writeFileSync(join(target, 'b'), 'x'), { code: 'EROFS' });
        } finally {
          await unmountAll(target);
        }
      });
    });

    test(`an unknown overlay option fails with EINVAL naming target and type, nothing mounted (${strategy})`, async () => {
      await withTemp(async (dir) => {
        const [l1, l2, target] = ['l1', 'l2', 'target'].map((n) => join(dir, n)) as [string, string, string];
        mkdirs(l1, l2, target);
        try {
          await rejectsWithCode(mountAll([{ type: 'overlay', source: 'overlay', options: [`lowerdir=${l1}:${l2}`, 'bogus=1'] }], target, { strategy }), 'EINVAL', (err) => {
            assert.ok(err.message.includes(target), err.message);
            assert.match(err.message, /overlay/);
            assert.equal(err.errno, -22);
          });
          assert.equal(mountCount(target), 0);
        } finally {
          await unmountAll(target);
        }
      });
    });

    test(`paths with ":", "," and "\\" in layer names mount as escaped (${strategy})`, async () => {
      await withTemp(async (dir) => {
        const [l1, l2, l3, upper, work, target] = ['lower:one', 'lower,two', 'back\\slash', 'up,per', 'work:dir', 'target'].map((n) => join(dir, n)) as [
          string,
          string,
          string,
          string,
          string,
          string,
        ];
        mkdirs(l1, l2, l3, upper, work, target);
        fs.writeFileSync(join(l1, 'one'), '1');
        fs.writeFileSync(join(l2, 'two'), '2');
        fs.writeFileSync(join(l3, 'three'), '3');
        const e = escapeOverlayPath;
        try {
          await mountAll(
            [{ type: 'overlay', source: 'overlay', options: [`workdir=${e(work)}`, `upperdir=${e(upper)}`, `lowerdir=${e(l1)}:${e(l2)}:${e(l3)}`] }],
            target,
            { strategy },
          );
          assert.deepEqual(fs.readdirSync(target).sort(), ['one', 'three', 'two']);
          fs.writeFileSync(join(target, 'w'), 'w');
          assert.ok(fs.existsSync(join(upper, 'w')));
        } finally {
          await unmountAll(target);
        }
      });
    });

    test(`layer paths longer than 255 bytes mount (${strategy})`, async () => {
      await withTemp(async (dir) => {
        const deep = join(dir, 'p'.repeat(200), 'q'.repeat(60));
        const [l1, l2, upper, work] = ['l1', 'l2', 'upper', 'work'].map((n) => join(deep, n)) as [string, string, string, string];
        const target = join(dir, 'target');
        mkdirs(l1, l2, upper, work, target);
        assert.ok(Buffer.byteLength(l1) > 255);
        fs.writeFileSync(join(l1, 'a'), 'a');
        fs.writeFileSync(join(l2, 'b'), 'b');
        try {
          await mountAll([{ type: 'overlay', source: 'overlay', options: [`workdir=${work}`, `upperdir=${upper}`, `lowerdir=${l1}:${l2}`] }], target, { strategy });
          assert.deepEqual(fs.readdirSync(target).sort(), ['a', 'b']);
          fs.writeFileSync(join(target, 'c'), 'c');
          assert.ok(fs.existsSync(join(upper, 'c')));
        } finally {
          await unmountAll(target);
        }
      });
    });
  }

  test('auto mounts a chain whose options fit in a page with one mount(2)', async () => {
    const saved = process.env[STRATEGY_ENV];
    await withTemp(async (dir) => {
      const [l1, l2, upper, work, target] = ['l1', 'l2', 'upper', 'work', 'target'].map((n) => join(dir, n)) as [string, string, string, string, string];
      mkdirs(l1, l2, upper, work, target);
      fs.writeFileSync(join(l1, 'a'), 'a');
      try {
        delete process.env[STRATEGY_ENV];
        await mountAll([{ type: 'overlay', source: 'overlay', options: [`workdir=${work}`, `upperdir=${upper}`, `lowerdir=${l1}:${l2}`] }], target, { strategy: 'auto' });
        assert.doesNotMatch(topMount(target)?.superOptions ?? '', /lowerdir\+=/);
        assert.match(topMount(target)?.superOptions ?? '', /lowerdir=/);
        assert.deepEqual(fs.readdirSync(target), ['a']);
      } finally {
        if (saved !== undefined) process.env[STRATEGY_ENV] = saved;
        await unmountAll(target);
      }
    });
  });

  test('under auto, a failing overlay mount carries the kernel\'s reason where the mount API exists, and nothing is mounted', async () => {
    const saved = process.env[STRATEGY_ENV];
    await withTemp(async (dir) => {
      const [l1, l2, target] = ['l1', 'l2', 'target'].map((n) => join(dir, n)) as [string, string, string];
      mkdirs(l1, l2, target);
      try {
        delete process.env[STRATEGY_ENV];
        await rejectsWithCode(mountAll([{ type: 'overlay', source: 'overlay', options: [`lowerdir=${l1}:${l2}`, 'bogus=1'] }], target), 'EINVAL', (err) => {
          assert.ok(err.message.includes(target), err.message);
          if (resolveOverlayStrategy() === 'mount-api') assert.match(err.message, /kernel: .*bogus/, err.message);
        });
        assert.equal(mountCount(target), 0);
      } finally {
        if (saved !== undefined) process.env[STRATEGY_ENV] = saved;
        await unmountAll(target);
      }
    });
  });

  test(`${STRATEGY_ENV}=legacy forces mount(2) when no strategy is passed`, async () => {
    const saved = process.env[STRATEGY_ENV];
    await withTemp(async (dir) => {
      const [l1, l2, target] = ['l1', 'l2', 'target'].map((n) => join(dir, n)) as [string, string, string];
      mkdirs(l1, l2, target);
      try {
        process.env[STRATEGY_ENV] = 'legacy';
        await mountAll([{ type: 'overlay', source: 'overlay', options: [`lowerdir=${l1}:${l2}`] }], target);
        assert.doesNotMatch(topMount(target)?.superOptions ?? '', /lowerdir\+=/);
        assert.match(topMount(target)?.superOptions ?? '', /lowerdir=/);
      } finally {
        if (saved === undefined) delete process.env[STRATEGY_ENV];
        else process.env[STRATEGY_ENV] = saved;
        await unmountAll(target);
      }
    });
  });

  test('stacked mounts on one target all come off with one unmountAll', async () => {
    await withTemp(async (dir) => {
      const [a, b, l1, l2, target] = ['a', 'b', 'l1', 'l2', 'target'].map((n) => join(dir, n)) as [string, string, string, string, string];
      mkdirs(a, b, l1, l2, target);
      fs.writeFileSync(join(a, 'a'), 'a');
      fs.writeFileSync(join(b, 'b'), 'b');
      fs.writeFileSync(join(l1, 'l1'), 'l1');
      fs.writeFileSync(join(l2, 'l2'), 'l2');
      try {
        await mountAll(
          [
            { type: 'bind', source: a, options: ['rbind', 'rw'] },
            { type: 'bind', source: b, options: ['rbind', 'ro'] },
          ],
          target,
        );
        assert.equal(mountCount(target), 2);
        assert.deepEqual(fs.readdirSync(target), ['b']);
        await mountAll([{ type: 'overlay', source: 'overlay', options: [`lowerdir=${l1}:${l2}`] }], target);
        assert.equal(mountCount(target), 3);
        assert.deepEqual(fs.readdirSync(target).sort(), ['l1', 'l2']);
        await unmountAll(target);
        assert.equal(mountCount(target), 0);
        assert.deepEqual(fs.readdirSync(target), []);
      } finally {
        await unmountAll(target);
      }
      assert.deepEqual(mountsBelow(dir), []);
    });
  });

  for (const strategy of STRATEGIES) {
    test(`a failing later mount unmounts the earlier ones; the error names target and type (${strategy})`, async () => {
      await withTemp(async (dir) => {
        const [a, l1, target] = ['a', 'l1', 'target'].map((n) => join(dir, n)) as [string, string, string];
        mkdirs(a, l1, target);
        try {
          await rejectsWithCode(
            mountAll(
              [
                { type: 'bind', source: a, options: ['rbind', 'ro'] },
                { type: 'overlay', source: 'overlay', options: [`lowerdir=${l1}:${join(dir, 'missing')}`] },
              ],
              target,
              { strategy },
            ),
            'ENOENT',
            (err) => {
              assert.ok(err.message.includes(target), err.message);
              assert.match(err.message, /overlay/);
            },
          );
          assert.equal(mountCount(target), 0);
        } finally {
          await unmountAll(target);
        }
      });
    });
  }

  test('unmountAll of a path that is not mounted, or does not exist, succeeds', async () => {
    await withTemp(async (dir) => {
      await unmountAll(dir);
      await unmountAll(join(dir, 'missing', 'deeper'));
    });
  });

  test('unmountAll waits out EBUSY while a file stays open in the mount', async () => {
    await withTemp(async (dir) => {
      const src = join(dir, 'src');
      const target = join(dir, 'target');
      mkdirs(src, target);
      fs.writeFileSync(join(src, 'held'), 'x');
      let fd: number | undefined;
      try {
        await mountAll([{ type: 'bind', source: src, options: ['rbind'] }], target);
        fd = fs.openSync(join(target, 'held'), 'r');
        // While the file is open the kernel refuses a plain unmount with EBUSY.
        const plain = spawnSync('umount', [target], { encoding: 'utf8' });
        assert.notEqual(plain.status, 0, 'umount(8) of a busy mount fails');
        assert.match(plain.stderr, /busy/);
        assert.equal(mountCount(target), 1);
        const held = fd;
        let mountedWhenClosed: boolean | undefined;
        setTimeout(() => {
          mountedWhenClosed = mountCount(target) === 1;
          fs.closeSync(held);
        }, 200);
        await unmountAll(target);
        fd = undefined;
        // Returned only after the close, and the mount was still there until then (a lazy detach would be gone at once).
        assert.equal(mountedWhenClosed, true, 'unmountAll returned before the file was closed, or detached the mount while it was busy');
        assert.equal(mountCount(target), 0);
      } finally {
        await unmountAll(target);
      }
    });
  });
});

// ---------------------------------------------------------------------------
// long chains (root)

type Op = { kind: 'write'; path: string; content: string } | { kind: 'delete'; path: string };

/** What layer `i` (1 = base) adds, changes and deletes. */
function layerOps(i: number): Op[] {
  const ops: Op[] = [
    { kind: 'write', path: 'shared.txt', content: `shared from layer ${i}\n` },
    { kind: 'write', path: `files/f${i}.txt`, content: `added by layer ${i}\n` },
  ];
  if (i > 1) ops.push({ kind: 'write', path: `files/f${i - 1}.txt`, content: `changed by layer ${i}\n` });
  if (i > 2 && i % 3 === 0) ops.push({ kind: 'delete', path: `files/f${i - 2}.txt` });
  if (i % 10 === 1) ops.push({ kind: 'write', path: `dirs/d${i}/nested/x.txt`, content: `x of ${i}\n` });
  // A directory deleted by a whiteout, then made again above it: only the new content shows.
  if (i % 10 === 5 && i > 4) ops.push({ kind: 'delete', path: `dirs/d${i - 4}` });
  if (i % 10 === 8 && i > 7) ops.push({ kind: 'write', path: `dirs/d${i - 7}/y.txt`, content: `recreated by ${i}\n` });
  return ops;
}

/** Writes layer `i`'s ops as an overlay layer (deletions as whiteouts) and applies them to the flat reference. */
function buildLayer(layerDir: string, refDir: string, i: number): void {
  fs.mkdirSync(layerDir, { recursive: true });
  for (const op of layerOps(i)) {
    const inLayer = join(layerDir, op.path);
    const inRef = join(refDir, op.path);
    fs.mkdirSync(join(inLayer, '..'), { recursive: true });
    if (op.kind === 'write') {
      fs.writeFileSync(inLayer, op.content);
      fs.mkdirSync(join(inRef, '..'), { recursive: true });
      fs.writeFileSync(inRef, op.content);
    } else {
      makeWhiteout(inLayer);
      fs.rmSync(inRef, { recursive: true, force: true });
    }
  }
}

describe('long overlay chains', mountTestOptions(), () => {
  let top = '';
  let root = '';
  const layer = (i: number) => join(root, 'snapshots', String(1000000 + i), 'fs');
  /** `lowerdir=` of layers n..1, top first. */
  const lowerdir = (n: number) =>
    `lowerdir=${Array.from({ length: n }, (_, k) => layer(n - k)).join(':')}`;
  let nextId = 2000000;
  /** A new snapshot-like upper and work dir under the long root, and a mount target. */
  const freshOverlayDirs = () => {
    const id = ++nextId;
    const dirs = { upper: join(root, 'snapshots', String(id), 'fs'), work: join(root, 'snapshots', String(id), 'work'), target: join(root, `mnt-${id}`) };
    mkdirs(dirs.upper, dirs.work, dirs.target);
    return dirs;
  };

  before(() => {
    top = fs.realpathSync(fs.mkdtempSync(join(tmpdir(), 'ovl-mount-chain-')));
    root = join(top, 'a-long-root-directory-name-'.padEnd(140, 'x'));
    assert.ok(root.length >= 150, `root path is ${root.length} characters`);
    const live = join(top, 'ref-live');
    fs.mkdirSync(live, { recursive: true });
    for (let i = 1; i <= MAX_LOWER_LAYERS + 1; i++) {
      buildLayer(layer(i), live, i);
      if (i === 128 || i === MAX_LOWER_LAYERS) fs.cpSync(live, join(top, `ref${i}`), { recursive: true });
    }
  });

  after(async () => {
    if (top !== '') await removeTree(top);
  });

  for (const n of [128, MAX_LOWER_LAYERS]) {
    for (const strategy of STRATEGIES) {
      test(`${n} layers (${strategy}): the merged view equals the flat reference and writes land in the upper`, async () => {
        const { upper, work, target } = freshOverlayDirs();
        const cwd = process.cwd();
        try {
          await mountAll([{ type: 'overlay', source: 'overlay', options: [`workdir=${work}`, `upperdir=${upper}`, lowerdir(n), 'index=off'] }], target, { strategy });
          assert.equal(process.cwd(), cwd, 'the cwd is restored');
          const info = topMount(target);
          assert.equal(info?.fstype, 'overlay');
          if (strategy === 'mount-api') assert.match(info?.superOptions ?? '', /lowerdir\+=/);
          // 128 layers fit once the common directory is stripped; 500 need the descriptor names.
          else if (n === 128) assert.match(info?.superOptions ?? '', /lowerdir=1000128\/fs:1000127\/fs:/);
          else assert.match(info?.superOptions ?? '', /lowerdir=\d+:\d+:/);

          assert.deepEqual(tree(target), tree(join(top, `ref${n}`)));

          fs.writeFileSync(join(target, 'new.txt'), 'new\n');
          fs.writeFileSync(join(target, 'shared.txt'), 'changed in the container\n');
          fs.rmSync(join(target, 'files', `f${n}.txt`));
          assert.equal(fs.readFileSync(join(upper, 'new.txt'), 'utf8'), 'new\n');
          assert.equal(fs.readFileSync(join(upper, 'shared.txt'), 'utf8'), 'changed in the container\n');
          assert.ok(isWhiteout(join(upper, 'files', `f${n}.txt`)));
          assert.equal(fs.readFileSync(join(layer(n), 'shared.txt'), 'utf8'), `shared from layer ${n}\n`, 'lowers are untouched');
          assert.ok(fs.existsSync(join(layer(n), 'files', `f${n}.txt`)));
        } finally {
          await unmountAll(target);
        }
        assert.deepEqual(mountsBelow(top), []);
      });
    }
  }

  test('128 layers under auto go through the mount API where the kernel has it, else mount(2) with stripped paths', async () => {
    const saved = process.env[STRATEGY_ENV];
    const { upper, work, target } = freshOverlayDirs();
    try {
      delete process.env[STRATEGY_ENV];
      await mountAll([{ type: 'overlay', source: 'overlay', options: [`workdir=${work}`, `upperdir=${upper}`, lowerdir(128), 'index=off'] }], target);
      const superOptions = topMount(target)?.superOptions ?? '';
      if (resolveOverlayStrategy() === 'mount-api') assert.match(superOptions, /lowerdir\+=/);
      else assert.match(superOptions, /lowerdir=1000128\/fs:/);
      assert.deepEqual(tree(target), tree(join(top, 'ref128')));
    } finally {
      if (saved !== undefined) process.env[STRATEGY_ENV] = saved;
      await unmountAll(target);
    }
    assert.deepEqual(mountsBelow(top), []);
  });

  for (const strategy of STRATEGIES) {
    test(`501 layers (${strategy}) is InvalidArgumentError naming the limit 500 and the depth, and nothing is mounted`, async () => {
      const { upper, work, target } = freshOverlayDirs();
      try {
        await assert.rejects(
          mountAll([{ type: 'overlay', source: 'overlay', options: [`workdir=${work}`, `upperdir=${upper}`, lowerdir(MAX_LOWER_LAYERS + 1)] }], target, { strategy }),
          (err: Error) => {
            assert.ok(err instanceof InvalidArgumentError, String(err));
            assert.match(err.message, /\b501\b/);
            assert.match(err.message, /\b500\b/);
            return true;
          },
        );
        assert.deepEqual(mountsBelow(top), []);
      } finally {
        await unmountAll(target);
      }
    });
  }
});
