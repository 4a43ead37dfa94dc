/**
 * `serve()` as a system service keeps its socket: modes, the parent dir,
 * stale and live sockets, removal at stop, calls in flight at stop, bad
 * options; and several servers on one root.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, lstatSync, mkdirSync, readdirSync, statSync, unlinkSync, writeFileSync } from 'node:fs';
import { test } from 'node:test';
import { Snapshotter, isInvalidArgument, isUnavailable } from '../../lib/index.js';
import { type ServedSnapshotter, connect, serve } from '../../lib/server/index.js';
import { removeTree, tempDir, withSnapshotter } from '../helpers/fixtures.js';
import { startServe } from '../helpers/grpc.js';

/** Runs `fn` with a snapshotter and a fresh dir for sockets. */
function withRoot(fn: (sn: Snapshotter, dir: string) => Promise<void>) {
  return () =>
    withSnapshotter({}, async (sn) => {
      const dir = tempDir('ovl-sock-');
      try {
        await fn(sn, dir);
      } finally {
        await removeTree(dir);
      }
    });
}

/** A socket file left behind by a server that died without removing it. */
function staleSocket(path: string): void {
  const script = "require('net').createServer().listen(process.argv[1], () => process.kill(process.pid, 'SIGKILL'))";
  spawnSync(process.execPath, ['-e', script, path]);
  assert.ok(lstatSync(path).isSocket());
}

test('the socket is 0660 under a parent made 0711, accepts at once, and nothing else is left beside it', withRoot(async (sn, dir) => {
  const address = `${dir}/a/b/snapshotter.sock`;
  const server = await serve(sn, { address });
  try {
    assert.equal(lstatSync(address).mode & 0o777, 0o660);
    assert.equal(statSync(`${dir}/a`).mode & 0o777, 0o711);
    assert.equal(statSync(`${dir}/a/b`).mode & 0o777, 0o711);
    assert.deepEqual(readdirSync(`${dir}/a/b`), ['snapshotter.sock'], 'the staging name is gone');
    const client = connect(address);
    await client.prepare('x');
    await client.close();
  } finally {
    await server.close();
  }
  assert.equal(existsSync(address), false, 'close removes the socket');
  await server.close();
}));

test('socketMode sets the socket\'s mode and an existing parent keeps its own', withRoot(async (sn, dir) => {
  mkdirSync(`${dir}/run`, { mode: 0o750 });
  const server = await serve(sn, { address: `${dir}/run/s.sock`, socketMode: 0o600 });
  try {
    assert.equal(lstatSync(server.address).mode & 0o777, 0o600);
    assert.equal(statSync(`${dir}/run`).mode & 0o777, 0o750);
  } finally {
    await server.close();
  }
}));

test('a stale socket of a dead server is replaced; a live server is refused with UnavailableError', withRoot(async (sn, dir) => {
  const address = `${dir}/s.sock`;
  staleSocket(address);
  const first = await serve(sn, { address });
  try {
    const err = await serve(sn, { address }).catch((e: unknown) => e);
    assert.ok(isUnavailable(err));
    assert.match((err as Error).message, /another server is listening on .*s\.sock; stop it or choose another address/);
    const client = connect(address);
    await client.prepare('served-by-first');
    await client.close();
  } finally {
    await first.close();
  }
}));

test('something at the address that is not a socket is refused and left alone', withRoot(async (sn, dir) => {
  writeFileSync(`${dir}/s.sock`, 'not a socket');
  await assert.rejects(serve(sn, { address: `${dir}/s.sock` }), (err: Error) => isUnavailable(err) && /is not a socket/.test(err.message));
  assert.equal(lstatSync(`${dir}/s.sock`).isFile(), true);
}));

test('close removes only its own socket, not one that replaced it', withRoot(async (sn, dir) => {
  const address = `${dir}/s.sock`;
  const first = await serve(sn, { address });
  unlinkSync(address);
  const second = await serve(sn, { address });
  try {
    await first.close();
    assert.equal(existsSync(address), true);
    const client = connect(address);
    await client.prepare('served-by-second');
    await client.close();
  } finally {
    await second.close();
  }
}));

test('bad options are refused with InvalidArgumentError naming the option', withRoot(async (sn, dir) => {
  const cases: [unknown, RegExp][] = [
    [{}, /address/],
    [{ address: '' }, /address/],
    [{ address: `${dir}/s`, socketMode: 0o1777 }, /socketMode/],
    [{ address: `${dir}/s`, shutdownTimeout: -1 }, /shutdownTimeout/],
    [{ address: `${dir}/s`, adress: 'x' }, /Unknown serve option `adress`/],
  ];
  for (const [options, message] of cases) {
    await assert.rejects(serve(sn, options as never), (err: Error) => isInvalidArgument(err) && message.test(err.message), JSON.stringify(options));
  }
  await assert.rejects(serve(sn, { address: `${dir}/${'x'.repeat(120)}.sock` }), (err: Error) => isUnavailable(err) && /over the 107/.test(err.message));
}));

test('close lets a call in flight finish and refuses new ones', withRoot(async (sn, dir) => {
  let release!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  let entered!: () => void;
  const inside = new Promise<void>((r) => (entered = r));
  const slow: ServedSnapshotter = Object.assign(Object.create(sn) as Snapshotter, {
    stat: async (key: string) => {
      entered();
      await gate;
      return sn.stat(key);
    },
  });
  await sn.prepare('a');
  const server = await serve(slow, { address: `${dir}/s.sock` });
  const client = connect(server.address);
  try {
    const call = client.stat('a');
    await inside;
    const closing = server.close();
    assert.equal(existsSync(server.address), false, 'the socket goes first: nobody new can connect');
    release();
    assert.equal((await call).name, 'a', 'the call in flight got its answer');
    await closing;
    const late = connect(server.address);
    await assert.rejects(late.stat('a'), (err: Error) => isUnavailable(err));
    await late.close();
  } finally {
    release();
    await client.close();
    await server.close();
  }
}));

test('close cuts off a call still running after shutdownTimeout', withRoot(async (sn, dir) => {
  let entered!: () => void;
  const inside = new Promise<void>((r) => (entered = r));
  const stuck: ServedSnapshotter = Object.assign(Object.create(sn) as Snapshotter, {
    stat: () => {
      entered();
      return new Promise<never>(() => {});
    },
  });
  const server = await serve(stuck, { address: `${dir}/s.sock`, shutdownTimeout: 50 });
  const client = connect(server.address);
  try {
    const call = client.stat('a').catch((e: unknown) => e);
    await inside;
    await server.close();
    assert.ok((await call) instanceof Error, 'the client hears that its call was cut off');
  } finally {
    await client.close();
  }
}));

test('two server processes on one root serve one store, as two processes of the library do', async () => {
  const dir = tempDir('ovl-two-');
  const servers = await Promise.all([startServe(`${dir}/root`, `${dir}/one.sock`), startServe(`${dir}/root`, `${dir}/two.sock`)]);
  const [one, two] = servers.map((s) => connect(s.address));
  try {
    await one!.prepare('a');
    await two!.commit('c', 'a');
    await one!.prepare('b', 'c');
    assert.equal((await two!.stat('b')).parent, 'c');
    await assert.rejects(two!.prepare('b'), (err: Error) => /already exists/.test(err.message));
    const seen: string[] = [];
    await two!.walk((i) => void seen.push(i.name));
    assert.deepEqual(seen, ['b', 'c']);
  } finally {
    await one!.close();
    await two!.close();
    for (const s of servers) await s.stop('SIGTERM');
    await removeTree(dir);
  }
});
