import assert from 'node:assert/strict';
import { test } from 'node:test';
import { buildMounts, overlayOptions, type SpecSettings } from '../../lib/model/specs.js';

const settings: SpecSettings = { snapshotsDir: '/r/snapshots', overlayOptions: ['index=off'] };

test('a parentless active is a rw bind of its fs and a parentless view a ro bind', () => {
  assert.deepEqual(buildMounts(settings, 'active', 7, []), [{ type: 'bind', source: '/r/snapshots/7/fs', options: ['rw', 'rbind'] }]);
  assert.deepEqual(buildMounts(settings, 'view', 7, []), [{ type: 'bind', source: '/r/snapshots/7/fs', options: ['ro', 'rbind'] }]);
});

test('a view of one parent is a read-only bind of the parent\'s fs', () => {
  assert.deepEqual(buildMounts(settings, 'view', 9, [3]), [{ type: 'bind', source: '/r/snapshots/3/fs', options: ['ro', 'rbind'] }]);
});

test('an active with parents is an overlay with workdir, upperdir and lowerdir immediate parent first', () => {
  assert.deepEqual(buildMounts(settings, 'active', 9, [5, 3, 1]), [
    {
      type: 'overlay',
      source: 'overlay',
      options: ['workdir=/r/snapshots/9/work', 'upperdir=/r/snapshots/9/fs', 'lowerdir=/r/snapshots/5/fs:/r/snapshots/3/fs:/r/snapshots/1/fs', 'index=off'],
    },
  ]);
});

test('a view of two or more parents is an overlay of lowerdirs only', () => {
  assert.deepEqual(buildMounts(settings, 'view', 9, [5, 3]), [
    { type: 'overlay', source: 'overlay', options: ['lowerdir=/r/snapshots/5/fs:/r/snapshots/3/fs', 'index=off'] },
  ]);
});

test('idmap options come first', () => {
  const [m] = buildMounts(settings, 'active', 2, [1], ['uidmap=0:1000:10', 'gidmap=0:1000:10']);
  assert.deepEqual(m!.options.slice(0, 2), ['uidmap=0:1000:10', 'gidmap=0:1000:10']);
});

test('overlay options: configured first, then userxattr, then index=off unless index= is configured', () => {
  assert.deepEqual(overlayOptions(['redirect_dir=on'], true, true), ['redirect_dir=on', 'userxattr', 'index=off']);
  assert.deepEqual(overlayOptions([], false, true), ['index=off']);
  assert.deepEqual(overlayOptions([], false, false), []);
  assert.deepEqual(overlayOptions(['index=on'], false, true), ['index=on']);
  assert.deepEqual(overlayOptions(['userxattr'], true, false), ['userxattr']);
});
