/** diskUsage counts as `du -s` does: allocated blocks and distinct inodes, hard links once, symlinks not followed. */
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { linkSync, mkdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { diskUsage } from '../../lib/disk/usage.js';
import { removeTree, tempDir } from '../helpers/fixtures.js';
import { assertPrerequisite, prerequisiteOptions, toolSkipReason } from '../helpers/require-mount.js';

function du(dir: string): { size: number; inodes: number } {
  const field = (flags: string[]) => Number(execFileSync('du', ['-s', ...flags, dir], { encoding: 'utf8' }).split('\t')[0]);
  return { size: field(['-B1']), inodes: field(['--inodes']) };
}

test('diskUsage agrees with du -s on files, nested dirs, hard links, symlinks, a fifo and a name that is not UTF-8', async () => {
  const dir = tempDir('ovl-usage-');
  try {
    mkdirSync(`${dir}/a/b/c`, { recursive: true });
    writeFileSync(`${dir}/a/one`, Buffer.alloc(10_000, 1));
    writeFileSync(`${dir}/a/b/c/two`, 'two');
    writeFileSync(`${dir}/empty`, '');
    linkSync(`${dir}/a/one`, `${dir}/a/b/link-to-one`);
    linkSync(`${dir}/a/one`, `${dir}/link-to-one`);
    symlinkSync('/etc', `${dir}/symlink-to-etc`);
    execFileSync('mkfifo', [`${dir}/fifo`]);
    const odd = Buffer.concat([Buffer.from(`${dir}/`), Buffer.from([0xff, 0xfe, 0x41])]);
    mkdirSync(odd);
    writeFileSync(Buffer.concat([odd, Buffer.from('/inside')]), 'x'.repeat(5000));
    assert.deepEqual(diskUsage(dir), du(dir));
  } finally {
    await removeTree(dir);
  }
});

test('diskUsage of a missing path is zero, of a file its own blocks', async () => {
  const dir = tempDir('ovl-usage-');
  try {
    assert.deepEqual(diskUsage(`${dir}/missing`), { size: 0, inodes: 0 });
    writeFileSync(`${dir}/file`, Buffer.alloc(9000, 1));
    assert.deepEqual(diskUsage(`${dir}/file`), du(`${dir}/file`));
  } finally {
    await removeTree(dir);
  }
});

const STRACE_MISSING = toolSkipReason('strace', ['-V'], 'to see which threads walk the tree');
const CHILD = fileURLToPath(new URL('../helpers/usage-child.ts', import.meta.url));

test('diskUsage of a big tree agrees with du -s whether or not the helper thread shares the walk', prerequisiteOptions(STRACE_MISSING), async () => {
  assertPrerequisite(STRACE_MISSING);
  const dir = tempDir('ovl-usage-');
  try {
    const tree = join(dir, 'tree');
    for (let d = 0; d < 60; d++) {
      mkdirSync(`${tree}/d${d}`, { recursive: true });
      for (let f = 0; f < 100; f++) writeFileSync(`${tree}/d${d}/f${f}`, 'x'.repeat(f * 50));
    }
    // Links across the two halves the walk is split into.
    for (let k = 0; k < 200; k++) linkSync(`${tree}/d${k % 60}/f${k % 100}`, `${tree}/d${(k + 1) % 60}/link${k}`);
    const expected = du(tree);
    const log = join(dir, 'strace.log');
    const stop = join(dir, 'stop');
    writeFileSync(log, '');
    const child = spawn('strace', ['-f', '-qq', '--seccomp-bpf', '-e', 'trace=openat,write', '-o', log, process.execPath, '--import', 'tsx', CHILD, tree, stop, '200'], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<number | null>((resolve) => child.once('close', resolve));
    // Per walk: its result, and the threads that opened the tree's subdirectories.
    const walks = (): { usage: { size: number; inodes: number }; threads: Set<string>; main: string }[] => {
      const out = [];
      let threads = new Set<string>();
      for (const line of readFileSync(log, 'utf8').split('\n')) {
        const tid = line.split(' ')[0]!;
        const done = /write\(2, "DONE \d+ (\d+) (\d+)\\n"/.exec(line);
        if (done) {
          out.push({ usage: { size: Number(done[1]), inodes: Number(done[2]) }, threads, main: tid });
          threads = new Set();
        } else if (line.includes(`openat(AT_FDCWD, "${tree}/d`)) {
          threads.add(tid);
        }
      }
      return out;
    };
    const shared = (w: ReturnType<typeof walks>[number]) => w.threads.size === 2 && w.threads.has(w.main);
    // Walks go on until one was shared with the helper thread (then a few more), or 200 walks.
    const poll = setInterval(() => {
      if (walks().filter(shared).length >= 3) writeFileSync(stop, '');
    }, 100);
    const code = await exited.finally(() => clearInterval(poll));
    assert.equal(code, 0, stderr);
    const all = walks();
    assert.ok(all.length > 0);
    for (const [i, walk] of all.entries()) assert.deepEqual(walk.usage, expected, `walk ${i}`);
    assert.deepEqual([...all[0]!.threads], [all[0]!.main], 'the first walk runs on the calling thread alone (the helper is only starting)');
    assert.ok(all.filter(shared).length >= 3, `later walks were shared with the helper thread (threads per walk: ${all.map((w) => w.threads.size)})`);
  } finally {
    await removeTree(dir);
  }
});
