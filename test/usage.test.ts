/** diskUsage counts as `du -s` does: allocated blocks and distinct inodes, hard links once, symlinks not followed. */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { linkSync, mkdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { test } from 'node:test';
import { diskUsage } from '../lib/usage.js';
import { removeTree, tempDir } from './helpers/fixtures.js';

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

test('diskUsage of a big tree agrees with du -s whether or not the helper thread shares the walk', async () => {
  const dir = tempDir('ovl-usage-');
  try {
    for (let d = 0; d < 60; d++) {
      mkdirSync(`${dir}/d${d}`);
      for (let f = 0; f < 100; f++) writeFileSync(`${dir}/d${d}/f${f}`, 'x'.repeat(f * 50));
    }
    // Links across the two halves the walk is split into.
    for (let k = 0; k < 200; k++) linkSync(`${dir}/d${k % 60}/f${k % 100}`, `${dir}/d${(k + 1) % 60}/link${k}`);
    const expected = du(dir);
    assert.deepEqual(diskUsage(dir), expected);
    await sleep(1500); // the helper thread, started by the first big walk, is ready by now
    assert.deepEqual(diskUsage(dir), expected);
    assert.deepEqual(diskUsage(dir), expected);
  } finally {
    await removeTree(dir);
  }
});
