/**
 * The owner label's format (lib/model/owner.ts): what parses as an owner,
 * and what is left alone as someone else's label.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { formatOwner, parseOwner } from '../../lib/model/owner.js';

const BOOT = '134c6cfe-7ec9-4ea7-ad01-6f123af76bf0';

test('an owner label value round-trips through formatOwner and parseOwner, with or without the pid namespace', () => {
  const owner = { pid: 4242, start: '123456', boot: BOOT, ns: '4026531836' };
  assert.equal(formatOwner(owner), `pid=4242 start=123456 boot=${BOOT} ns=4026531836`);
  assert.deepEqual(parseOwner(formatOwner(owner)), owner);
  // Values written before the namespace was recorded.
  assert.deepEqual(parseOwner(`pid=7 start=9 boot=${BOOT}`), { pid: 7, start: '9', boot: BOOT });
});

test('a value that is not an owner label does not parse, so that it is never judged', () => {
  for (const value of [
    '',
    'made by hand',
    'pid=0 start=1 boot=x',
    `pid=-1 start=1 boot=${BOOT}`,
    `pid=1 start=1 boot=${BOOT} `,
    `pid=1 start=1 boot=${BOOT} ns=`,
    `pid=1 start=1 boot=${BOOT} ns=1 extra=2`,
    `start=1 pid=1 boot=${BOOT}`,
    `pid=99999999999 start=1 boot=${BOOT}`,
  ]) {
    assert.equal(parseOwner(value), undefined, value);
  }
});
