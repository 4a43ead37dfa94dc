/** ID maps (lib/model/idmap.ts): parsed and checked as the kernel takes a user namespace's uid_map, before anything is mounted. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { InvalidArgumentError } from '../../lib/model/errors.js';
import { MAX_ID_EXTENTS, hostRoot, idmapOptions, parseIdMapping, takeIdMapping } from '../../lib/model/idmap.js';

const invalid = (pattern: RegExp) => (err: unknown) => err instanceof InvalidArgumentError && pattern.test(err.message);

test('a mapping is parsed into extents: container id, host id, count', () => {
  assert.deepEqual(parseIdMapping('0:100000:65536', 'm'), [{ inside: 0, outside: 100000, count: 65536 }]);
  assert.deepEqual(parseIdMapping('0:1000:1,1:100000:65535', 'm'), [
    { inside: 0, outside: 1000, count: 1 },
    { inside: 1, outside: 100000, count: 65535 },
  ]);
  assert.equal(hostRoot('5:7:1,0:300:5', 'label'), 300);
});

test('overlapping ranges, on the container side or the host side, are InvalidArgumentError', () => {
  assert.throws(() => parseIdMapping('0:100000:10,5:200000:10', 'uidmap='), invalid(/overlaps "0:100000:10" on the container side/));
  assert.throws(() => parseIdMapping('0:100000:10,20:100005:10', 'uidmap='), invalid(/overlaps "0:100000:10" on the host side/));
  assert.deepEqual(parseIdMapping('0:100000:10,10:100010:10', 'm').length, 2, 'adjacent ranges do not overlap');
});

test('non-numeric, negative, empty, zero-sized or 32-bit-overflowing ranges are InvalidArgumentError', () => {
  for (const bad of ['x:y:z', '0:100000', '0:100000:65536:1', '-1:0:1', '0:0:0', '', '0:1e5:10', '0:100000:65536,', '4294967295:0:2', '0:4294967290:10']) {
    assert.throws(() => parseIdMapping(bad, 'uidmap='), InvalidArgumentError, bad);
  }
});

test(`more than the kernel's ${MAX_ID_EXTENTS} extents is InvalidArgumentError; ${MAX_ID_EXTENTS} are fine`, () => {
  const ranges = (n: number) => Array.from({ length: n }, (_, i) => `${i}:${100000 + i}:1`).join(',');
  assert.equal(parseIdMapping(ranges(MAX_ID_EXTENTS), 'm').length, MAX_ID_EXTENTS);
  assert.throws(() => parseIdMapping(ranges(MAX_ID_EXTENTS + 1), 'uidmap='), invalid(/341 ranges, more than the kernel's 340 extents/));
});

test('takeIdMapping takes uidmap=/gidmap= out of a mount\'s data and needs both, once each', () => {
  const { mapping, rest } = takeIdMapping(['uidmap=0:1:2', 'lowerdir=/a:/b', 'gidmap=0:3:4', 'index=off'], 'spec');
  assert.deepEqual(rest, ['lowerdir=/a:/b', 'index=off']);
  assert.equal(mapping?.uidmap, '0:1:2');
  assert.deepEqual(mapping?.gids, [{ inside: 0, outside: 3, count: 4 }]);
  assert.deepEqual(takeIdMapping(['ro', 'x=y'], 'spec'), { mapping: undefined, rest: ['ro', 'x=y'] });
  assert.throws(() => takeIdMapping(['gidmap=0:1:2'], 'spec'), invalid(/gidmap= without uidmap=/));
  assert.throws(() => takeIdMapping(['uidmap=0:1:2', 'uidmap=0:1:2', 'gidmap=0:1:2'], 'spec'), invalid(/more than one uidmap=/));
  assert.throws(() => takeIdMapping(['uidmap=0:1:2', 'gidmap=a:b:c'], 'spec'), invalid(/spec: gidmap= has the malformed range "a:b:c"/));
});

test('idmapOptions makes both options from both labels, and none from one', () => {
  const uid = 'containerd.io/snapshot/uidmapping';
  const gid = 'containerd.io/snapshot/gidmapping';
  assert.deepEqual(idmapOptions({ [uid]: '0:1:2', [gid]: '0:3:4' }), ['uidmap=0:1:2', 'gidmap=0:3:4']);
  assert.deepEqual(idmapOptions({ [uid]: '0:1:2' }), []);
});
