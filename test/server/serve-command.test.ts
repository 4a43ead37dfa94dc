/** `overlay-snapshotter serve` as an operator runs it: start, stop on a signal, refusals. */
import assert from 'node:assert/strict';
import { existsSync, lstatSync, writeFileSync } from 'node:fs';
import { test } from 'node:test';
import { connect } from '../../lib/server/index.js';
import { cli } from '../helpers/cli.js';
import { removeTree, tempDir } from '../helpers/fixtures.js';
import { startServe } from '../helpers/grpc.js';

async function inTemp(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = tempDir('ovl-serve-');
  try {
    await fn(dir);
  } finally {
    await removeTree(dir);
  }
}

test('serve prints one line at start and one at stop, and SIGINT stops it like SIGTERM', () =>
  inTemp(async (dir) => {
    const server = await startServe(`${dir}/root`, `${dir}/run/s.sock`, ['--socket-mode', '0600']);
    try {
      assert.equal(lstatSync(server.address).mode & 0o777, 0o600);
      const client = connect(server.address);
      await client.prepare('a');
      await client.close();
    } finally {
      const { code, stderr } = await server.stop('SIGINT');
      assert.equal(code, 0, stderr);
      assert.deepEqual(stderr.trim().split('\n'), [
        `overlay-snapshotter: serving ${dir}/root on ${dir}/run/s.sock (pid ${server.pid})`,
        'overlay-snapshotter: stopped on SIGINT: socket removed, store closed',
      ]);
    }
    assert.equal(existsSync(`${dir}/run/s.sock`), false);
    const again = await startServe(`${dir}/root`, `${dir}/run/s.sock`);
    const client = connect(again.address);
    try {
      assert.equal((await client.stat('a')).kind, 'active', 'the store kept what the first server made');
    } finally {
      await client.close();
      await again.stop();
    }
  }));

test('serve refuses an address where a server is listening (exit 6) and leaves that server alone', () =>
  inTemp(async (dir) => {
    const first = await startServe(`${dir}/root`, `${dir}/s.sock`);
    try {
      const second = await cli(['--root', `${dir}/root`, 'serve', '--address', `${dir}/s.sock`]);
      assert.equal(second.code, 6);
      assert.match(second.stderr, /^overlay-snapshotter: another server is listening on .*s\.sock; stop it or choose another address\n$/);
      const client = connect(first.address);
      await client.prepare('still-served');
      await client.close();
    } finally {
      await first.stop();
    }
  }));

test('serve makes no socket when the store cannot be opened (exit 6)', () =>
  inTemp(async (dir) => {
    writeFileSync(`${dir}/root`, 'a file, not a directory');
    const res = await cli(['--root', `${dir}/root`, 'serve', '--address', `${dir}/s.sock`]);
    assert.equal(res.code, 6, res.stderr);
    assert.equal(existsSync(`${dir}/s.sock`), false);
  }));

test('serve rejects a malformed --socket-mode or --shutdown-timeout with exit 2', () =>
  inTemp(async (dir) => {
    for (const args of [['--socket-mode', '999'], ['--socket-mode', 'rw'], ['--shutdown-timeout', '-1'], ['--shutdown-timeout', 'soon']]) {
      const res = await cli(['--root', `${dir}/root`, 'serve', '--address', `${dir}/s.sock`, ...args]);
      assert.equal(res.code, 2, `${args.join(' ')}: ${res.stderr}`);
      assert.match(res.stderr, new RegExp(args[0]!));
    }
    assert.equal(existsSync(`${dir}/s.sock`), false);
  }));
