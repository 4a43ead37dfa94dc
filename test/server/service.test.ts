/**
 * The snapshots service on the wire, seen with the generated client:
 * status codes, List's blocks and filters, Update's mask, containerd's keys
 * and labels, timestamps, the fields of newer containerd versions, and
 * requests that must be refused without harm.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Metadata, type ServiceError, makeGenericClientConstructor, credentials, status as Status } from '@grpc/grpc-js';
import type { Snapshotter } from '../../lib/index.js';
import { wallClock } from '../../lib/kernel/clock.js';
import { RemoteError, type ServedSnapshotter, connect } from '../../lib/server/index.js';
import { Kind, type ListSnapshotsResponse, type SnapshotsClient } from '../../lib/server/gen/containerd/services/snapshots/v1/snapshots.js';
import { withSnapshotter } from '../helpers/fixtures.js';
import { rawCall, rawClient, served, statusCode } from '../helpers/grpc.js';

/** Runs `fn` with a snapshotter on a temp root served on a temp socket, and a generated client of it. */
function withServer(fn: (raw: SnapshotsClient, sn: Snapshotter, address: string) => Promise<void>) {
  return () =>
    withSnapshotter({}, async (sn) => {
      const s = await served(sn);
      const raw = rawClient(s.server.address);
      try {
        await fn(raw, sn, s.server.address);
      } finally {
        raw.close();
        await s.dispose();
      }
    });
}

const req = (key: string, extra: Record<string, unknown> = {}) => ({ snapshotter: 'anything', key, parent: '', labels: new Map<string, string>(), ...extra });

async function listBlocks(raw: SnapshotsClient, filters: string[] = []): Promise<ListSnapshotsResponse[]> {
  const blocks: ListSnapshotsResponse[] = [];
  for await (const block of raw.list({ snapshotter: '', filters }) as AsyncIterable<ListSnapshotsResponse>) blocks.push(block);
  return blocks;
}

test('each kind of library error travels as the gRPC code containerd\'s errdefs expects', withServer(async (raw, sn) => {
  await sn.prepare('a');
  await sn.view('v');
  assert.equal(await statusCode(rawCall((cb) => raw.stat({ snapshotter: '', key: 'missing' }, cb))), Status.NOT_FOUND);
  assert.equal(await statusCode(rawCall((cb) => raw.prepare(req('a'), cb))), Status.ALREADY_EXISTS);
  assert.equal(await statusCode(rawCall((cb) => raw.commit({ snapshotter: '', name: 'c', key: 'v', labels: new Map(), parent: '' }, cb))), Status.FAILED_PRECONDITION);
  assert.equal(await statusCode(rawCall((cb) => raw.prepare(req('b', { parent: 'a' }), cb))), Status.INVALID_ARGUMENT);
  const err = await rawCall((cb) => raw.remove({ snapshotter: '', key: 'missing' }, cb)).catch((e: ServiceError) => e);
  const local = await sn.remove('missing').catch((e: Error) => e);
  assert.equal((err as ServiceError).details, (local as Error).message, 'the library\'s message, for ctr to print');
  await sn.close();
  assert.equal(await statusCode(rawCall((cb) => raw.stat({ snapshotter: '', key: 'a' }, cb))), Status.UNAVAILABLE);
}));

test('any other failure is UNKNOWN with its message, and the client gives it as a RemoteError', async () => {
  const failing: ServedSnapshotter = Object.assign(Object.create(null) as ServedSnapshotter, { stat: () => Promise.reject(new Error('disk on fire')) });
  const s = await served(failing);
  try {
    const err = await rawCall((cb) => rawClient(s.server.address).stat({ snapshotter: '', key: 'k' }, cb)).catch((e: ServiceError) => e);
    assert.deepEqual([(err as ServiceError).code, (err as ServiceError).details], [Status.UNKNOWN, 'disk on fire']);
    const viaClient = await s.client.stat('k').catch((e: unknown) => e);
    assert.ok(viaClient instanceof RemoteError);
    assert.deepEqual([viaClient.status, viaClient.message], [Status.UNKNOWN, 'disk on fire']);
  } finally {
    await s.dispose();
  }
});

test('the snapshotter field of a request is accepted whatever its value', withServer(async (raw) => {
  for (const name of ['', 'ovl', 'overlayfs', 'x'.repeat(1000)]) {
    await rawCall((cb) => raw.prepare({ ...req(`k-${name.length}-${name.slice(0, 3)}`), snapshotter: name }, cb));
  }
  const meta = new Metadata();
  meta.set('containerd-namespace', 'default');
  await rawCall((cb) => raw.stat({ snapshotter: 'ovl', key: 'k-3-ovl' }, meta, cb));
}));

test('List streams blocks of 100 in key order and honours filters (OR across, AND within)', withServer(async (raw, sn) => {
  for (let i = 0; i < 250; i++) await sn.prepare(`k${String(i).padStart(3, '0')}`, undefined, { labels: { mod: String(i % 5), half: i < 125 ? 'low' : 'high' } });
  const blocks = await listBlocks(raw);
  assert.deepEqual(blocks.map((b) => b.info.length), [100, 100, 50]);
  const names = blocks.flatMap((b) => b.info.map((i) => i.name));
  assert.deepEqual(names, [...names].sort());
  assert.equal(new Set(names).size, 250);
  const filtered = (await listBlocks(raw, ['labels.mod==0,labels.half==low', 'name==k249'])).flatMap((b) => b.info.map((i) => i.name));
  assert.deepEqual(filtered, [...Array.from({ length: 25 }, (_, j) => `k${String(j * 5).padStart(3, '0')}`), 'k249']);
  assert.deepEqual(await listBlocks(raw, ['name==nothing']), [], 'no match sends no message');
  await assert.rejects(listBlocks(raw, ['labels.=x']), (err: ServiceError) => err.code === Status.INVALID_ARGUMENT);
}));

test('a client that stops reading a List midway cancels it and the server goes on serving', withServer(async (_raw, sn, address) => {
  for (let i = 0; i < 300; i++) await sn.prepare(`k${i}`);
  const client = connect(address);
  try {
    let seen = 0;
    await assert.rejects(
      client.walk(() => {
        if (++seen === 150) throw new Error('enough');
      }),
      /enough/,
    );
    assert.equal(seen, 150);
    assert.equal((await client.stat('k1')).kind, 'active');
  } finally {
    await client.close();
  }
}));

test('a slow reader of a long List gets every snapshot once, in order, while the server waits for it', withServer(async (_raw, sn, address) => {
  for (let i = 0; i < 3000; i++) await sn.view(`v${String(i).padStart(4, '0')}`);
  const warnings: string[] = [];
  const onWarning = (w: Error) => void warnings.push(w.name);
  process.on('warning', onWarning);
  const client = connect(address);
  try {
    const names: string[] = [];
    await client.walk(async (info) => {
      names.push(info.name);
      if (names.length % 200 === 0) await new Promise((r) => setTimeout(r, 5));
    });
    assert.equal(names.length, 3000);
    assert.deepEqual(names, [...names].sort());
    assert.equal(new Set(names).size, 3000);
  } finally {
    process.off('warning', onWarning);
    await client.close();
  }
  assert.deepEqual(warnings, [], 'no listener piles up on the stream while it waits');
}));

test('Update honours the field mask as containerd does: none replaces all labels, labels.<k> one, others are refused', withServer(async (raw, sn) => {
  await sn.prepare('a', undefined, { labels: { x: '1', y: '2' } });
  const info = (labels: Record<string, string>) => ({ name: 'a', parent: '', kind: Kind.UNKNOWN, createdAt: undefined, updatedAt: undefined, labels: new Map(Object.entries(labels)) });
  const update = (labels: Record<string, string>, paths?: string[]) => rawCall<{ info?: { labels: Map<string, string> } }>((cb) => raw.update({ snapshotter: '', info: info(labels), updateMask: paths }, cb));
  assert.deepEqual(Object.fromEntries((await update({ z: '3' })).info!.labels), { z: '3' }, 'no mask: all labels replaced');
  assert.deepEqual(Object.fromEntries((await update({ z: '4' }, [])).info!.labels), { z: '4' }, 'an empty mask is no mask');
  assert.deepEqual(Object.fromEntries((await update({ w: '5', z: 'ignored' }, ['labels.w'])).info!.labels), { z: '4', w: '5' });
  assert.deepEqual(Object.fromEntries((await update({}, ['labels.z'])).info!.labels), { w: '5' }, 'a masked key absent from info is deleted');
  assert.deepEqual(Object.fromEntries((await update({ only: '1' }, ['labels'])).info!.labels), { only: '1' });
  for (const path of ['kind', 'name', 'parent', 'created_at', 'labels.']) {
    assert.equal(await statusCode(update({ q: '1' }, [path])), Status.INVALID_ARGUMENT, path);
  }
  assert.equal(await statusCode(rawCall((cb) => raw.update({ snapshotter: '', info: undefined, updateMask: [] }, cb))), Status.INVALID_ARGUMENT, 'no info');
  assert.equal(await statusCode(rawCall((cb) => raw.update({ snapshotter: '', info: { ...info({}), kind: 42 as Kind }, updateMask: [] }, cb))), Status.INVALID_ARGUMENT, 'unknown kind');
  assert.deepEqual((await sn.stat('a')).labels, { only: '1' }, 'refused updates changed nothing');
}));

test('containerd\'s keys and labels pass through untouched and filter as containerd\'s would', withServer(async (_raw, _sn, address) => {
  const client = connect(address);
  try {
    const layer = 'default/12/sha256:3ec94e5022a601eed1b4c258391e30418474c4177e1add50393a18788df2bbea';
    const labels = {
      'containerd.io/snapshot.ref': 'sha256:3ec94e5022a601eed1b4c258391e30418474c4177e1add50393a18788df2bbea',
      'containerd.io/gc.root': '2024-01-01T00:00:00Z',
      'containerd.io/gc.ref.snapshot.overlayfs': 'default/11/sha256:aa',
      'containerd.io/snapshot/remote/stargz.reference': 'docker.io/library/busybox:latest',
      'containerd.io/snapshot/overlay.upperdir': '/elsewhere',
    };
    await client.prepare('default/11/extract-123 sha256:3ec9', undefined, { labels });
    await client.commit(layer, 'default/11/extract-123 sha256:3ec9', { labels });
    await client.prepare('k8s.io/13/abc', layer);
    const info = await client.stat(layer);
    assert.deepEqual([info.name, info.labels], [layer, labels]);
    assert.equal((await client.stat('k8s.io/13/abc')).parent, layer);
    const roots: string[] = [];
    await client.walk((i) => void roots.push(i.name), 'labels."containerd.io/gc.root"');
    assert.deepEqual(roots, [layer]);
    await client.remove('k8s.io/13/abc');
    await client.remove(layer);
    await client.cleanup();
    const left: string[] = [];
    await client.walk((i) => void left.push(i.name));
    assert.deepEqual(left, []);
  } finally {
    await client.close();
  }
}));

test('timestamps travel as protobuf Timestamps holding every digit the store keeps, and the client gives them back whole', withServer(async (raw, sn, address) => {
  await sn.prepare('a');
  await new Promise((r) => setTimeout(r, 3));
  const updated = await sn.update({ name: 'a', labels: { k: 'v' } });
  const res = await rawCall<{ info?: { createdAt?: { seconds: number; nanos: number }; updatedAt?: { seconds: number; nanos: number } } }>((cb) => raw.stat({ snapshotter: '', key: 'a' }, cb));
  const ns = (ts: { seconds: number; nanos: number } | undefined) => BigInt(ts!.seconds) * 1_000_000_000n + BigInt(ts!.nanos);
  const local = (date: Date, nanos: number) => BigInt(date.getTime()) * 1_000_000n + BigInt(nanos);
  assert.equal(ns(res.info!.createdAt), local(updated.created, updated.createdNanos));
  assert.equal(ns(res.info!.updatedAt), local(updated.updated, updated.updatedNanos));
  for (const ts of [res.info!.createdAt!, res.info!.updatedAt!]) assert.ok(Number.isInteger(ts.nanos) && ts.nanos >= 0 && ts.nanos < 1e9);
  const client = connect(address);
  try {
    assert.deepEqual(await client.stat('a'), updated);
  } finally {
    await client.close();
  }
}));

test('an updated time lies between clock reads just before and just after the call, as containerd\'s snapshotter tests check', withServer(async (raw, sn) => {
  await sn.prepare('a');
  // The wall clock (CLOCK_REALTIME), as Go's time.Now() reads it on containerd's side.
  const nowNs = () => {
    const now = wallClock();
    return BigInt(now.ms) * 1_000_000n + BigInt(now.ns);
  };
  for (let i = 0; i < 3; i++) {
    const before = nowNs();
    const res = await rawCall<{ info?: { updatedAt?: { seconds: number; nanos: number } } }>((cb) =>
      raw.update({ snapshotter: '', info: { name: 'a', parent: '', kind: Kind.UNKNOWN, createdAt: undefined, updatedAt: undefined, labels: new Map([['i', String(i)]]) }, updateMask: [] }, cb),
    );
    const after = nowNs();
    const ts = res.info!.updatedAt!;
    const updated = BigInt(ts.seconds) * 1_000_000_000n + BigInt(ts.nanos);
    assert.ok(before <= updated && updated <= after, `updated ${updated} outside [${before}, ${after}]`);
  }
}));

test('Commit with a parent (containerd 2.x) passes when it is the active\'s parent and is refused otherwise', withServer(async (raw, sn) => {
  await sn.prepare('base-a');
  await sn.commit('base', 'base-a');
  await sn.prepare('other-a');
  await sn.commit('other', 'other-a');
  await sn.prepare('a', 'base');
  const commit = (name: string, key: string, parent: string) => rawCall((cb) => raw.commit({ snapshotter: '', name, key, labels: new Map(), parent }, cb));
  assert.equal(await statusCode(commit('x', 'a', 'other')), Status.INVALID_ARGUMENT, 'a rebase is refused');
  assert.equal(await statusCode(commit('x', 'missing', 'base')), Status.NOT_FOUND);
  await commit('x', 'a', 'base');
  assert.equal((await sn.stat('x')).parent, 'base');
}));

test('bad requests get INVALID_ARGUMENT and leave the store as it was', withServer(async (raw, sn) => {
  assert.equal(await statusCode(rawCall((cb) => raw.prepare(req(''), cb))), Status.INVALID_ARGUMENT, 'empty key');
  assert.equal(await statusCode(rawCall((cb) => raw.view(req('a\0b'), cb))), Status.INVALID_ARGUMENT, 'NUL in key');
  const big = new Map([['k', 'x'.repeat(4096)]]);
  assert.equal(await statusCode(rawCall((cb) => raw.prepare(req('a', { labels: big }), cb))), Status.INVALID_ARGUMENT, 'oversized label');
  assert.equal(await statusCode(rawCall((cb) => raw.prepare(req('a', { labels: new Map([['', 'v']]) }), cb))), Status.INVALID_ARGUMENT, 'empty label key');
  assert.equal(await statusCode(rawCall((cb) => raw.commit({ snapshotter: '', name: '', key: 'a', labels: new Map(), parent: '' }, cb))), Status.INVALID_ARGUMENT, 'empty name');
  const names: string[] = [];
  await sn.walk((i) => void names.push(i.name));
  assert.deepEqual(names, []);
}));

test('bytes that are not a request get an error status, and the server goes on serving', withServer(async (raw, sn, address) => {
  // A client of the same path whose serializer sends garbage instead of a StatSnapshotRequest.
  const Garbage = makeGenericClientConstructor(
    {
      stat: {
        path: '/containerd.services.snapshots.v1.Snapshots/Stat',
        requestStream: false,
        responseStream: false,
        requestSerialize: () => Buffer.from([0xff, 0xff, 0xff, 0xff, 0x0f]),
        requestDeserialize: (b: Buffer) => b,
        responseSerialize: (b: Buffer) => b,
        responseDeserialize: (b: Buffer) => b,
      },
    },
    'Garbage',
  );
  const garbage = new Garbage(`unix:${address}`, credentials.createInsecure()) as unknown as { stat(req: unknown, cb: (err: ServiceError | null, res: unknown) => void): void; close(): void };
  try {
    const code = await statusCode(rawCall((cb) => garbage.stat({}, cb)));
    assert.notEqual(code, Status.OK);
  } finally {
    garbage.close();
  }
  await sn.prepare('still-here');
  await rawCall((cb) => raw.stat({ snapshotter: '', key: 'still-here' }, cb));
}));
