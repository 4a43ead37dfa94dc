/** The options of prepare and view beyond labels (lib/model/create-options.ts): volatile and quota, as options and as labels. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { InvalidArgumentError, UnavailableError } from '../../lib/model/errors.js';
import {
  QUOTA_INODES_LABEL,
  QUOTA_SIZE_LABEL,
  VOLATILE_LABEL,
  checkCreateOptions,
  keepFixed,
  parseSize,
  unavailableFor,
} from '../../lib/model/create-options.js';

const invalid = (pattern: RegExp) => (err: unknown) => err instanceof InvalidArgumentError && pattern.test(err.message);

test('volatile as an option sets its label; the label alone means the same', () => {
  assert.deepEqual(checkCreateOptions('active', { volatile: true }), { labels: { [VOLATILE_LABEL]: 'true' }, volatile: true, quota: undefined });
  assert.equal(checkCreateOptions('active', { labels: { [VOLATILE_LABEL]: 'true' } }).volatile, true);
  assert.equal(checkCreateOptions('active', { labels: { [VOLATILE_LABEL]: 'false' } }).volatile, false);
  assert.equal(checkCreateOptions('active', {}).volatile, false);
});

test('a bad volatile, or an option and a label that disagree, is InvalidArgumentError', () => {
  assert.throws(() => checkCreateOptions('active', { volatile: 'yes' }), invalid(/`volatile` to be a boolean/));
  assert.throws(() => checkCreateOptions('active', { labels: { [VOLATILE_LABEL]: 'yes' } }), invalid(/"true" or "false"/));
  assert.throws(() => checkCreateOptions('active', { volatile: false, labels: { [VOLATILE_LABEL]: 'true' } }), invalid(/disagree/));
});

test('quota sizes take bytes or K/M/G/T suffixes (powers of 1024); inodes a whole number', () => {
  assert.equal(parseSize('10G'), 10 * 2 ** 30);
  assert.equal(parseSize('512m'), 512 * 2 ** 20);
  assert.equal(parseSize('1048576'), 1048576);
  assert.equal(parseSize(4096), 4096);
  for (const bad of ['', '0', '-1', '1.5G', '10GB', 'G', 0, 1.5, -3, '99999999999999999T']) assert.equal(parseSize(bad), undefined, String(bad));
  assert.deepEqual(checkCreateOptions('active', { quota: { size: '1G', inodes: 1000 } }).quota, { size: 2 ** 30, inodes: 1000 });
  assert.deepEqual(checkCreateOptions('active', { labels: { [QUOTA_SIZE_LABEL]: '2M', [QUOTA_INODES_LABEL]: '50' } }).quota, { size: 2 * 2 ** 20, inodes: 50 });
  assert.deepEqual(checkCreateOptions('active', { quota: { inodes: '7' } }).quota, { inodes: 7 });
});

test('a malformed quota is InvalidArgumentError naming the field', () => {
  assert.throws(() => checkCreateOptions('active', { quota: { size: '10 GB' } }), invalid(/`quota.size`.*got "10 GB"/));
  assert.throws(() => checkCreateOptions('active', { quota: { inodes: 0 } }), invalid(/`quota.inodes`/));
  assert.throws(() => checkCreateOptions('active', { quota: {} }), invalid(/sets no limit/));
  assert.throws(() => checkCreateOptions('active', { quota: { bytes: 1 } }), invalid(/Unknown quota field `bytes`/));
  assert.throws(() => checkCreateOptions('active', { quota: 5 }), invalid(/`quota` to be an object/));
  assert.throws(() => checkCreateOptions('active', { labels: { [QUOTA_INODES_LABEL]: 'many' } }), invalid(/quota.inodes"/));
  assert.throws(() => checkCreateOptions('active', { quota: { size: '1G' }, labels: { [QUOTA_SIZE_LABEL]: '2G' } }), invalid(/disagree/));
});

test('a view takes neither volatile nor quota, as options or labels', () => {
  assert.throws(() => checkCreateOptions('view', { volatile: true }), invalid(/applies to prepare only/));
  assert.throws(() => checkCreateOptions('view', { quota: { size: 1 } }), invalid(/applies to prepare only/));
  assert.throws(() => checkCreateOptions('view', { labels: { [VOLATILE_LABEL]: 'true' } }), invalid(/set by prepare only, not on a view/));
  assert.throws(() => checkCreateOptions('active', { volatil: true }), invalid(/Unknown snapshot option `volatil`; the known ones are `labels`, `volatile`, `quota`/));
});

test('an update may not add, change or remove the labels prepare sets', () => {
  assert.deepEqual(keepFixed({ [VOLATILE_LABEL]: 'true', a: '1' }, { [VOLATILE_LABEL]: 'true' }), { [VOLATILE_LABEL]: 'true' });
  assert.throws(() => keepFixed({ [VOLATILE_LABEL]: 'true' }, {}), invalid(/cannot be added, changed or removed by update \(sync\(\)/));
  assert.throws(() => keepFixed({}, { [QUOTA_SIZE_LABEL]: '1G' }), invalid(/quota.size/));
});

test('what the driver, the kernel and the root cannot give is refused, and why', () => {
  const support = { kernelRelease: '6.18', volatileOverlay: true, projectQuotasUnavailable: 'the kernel has no quota support for xfs' };
  const volatile = checkCreateOptions('active', { volatile: true });
  assert.equal(unavailableFor(volatile, 'base', 'overlay', support), undefined);
  assert.ok(unavailableFor(volatile, '', 'overlay', support) instanceof InvalidArgumentError, 'no parent: a bind');
  assert.ok(unavailableFor(volatile, 'base', 'native', support) instanceof UnavailableError);
  assert.match(unavailableFor(volatile, 'base', 'overlay', { ...support, volatileOverlay: false })!.message, /Linux 5.10/);
  const quota = checkCreateOptions('active', { quota: { size: '1G' } });
  assert.match(unavailableFor(quota, 'base', 'overlay', support)!.message, /needs project quotas on the root's filesystem, and the kernel has no quota support for xfs/);
  assert.match(unavailableFor(quota, 'base', 'overlay', { ...support, projectQuotasUnavailable: null })!.message, /does not set them yet/);
});
