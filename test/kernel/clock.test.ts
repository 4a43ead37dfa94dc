/**
 * The wall clock of snapshot times (lib/kernel/clock.ts): CLOCK_REALTIME to
 * the nanosecond, the same clock `date` and Go's time.Now() read.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { test } from 'node:test';
import { wallClock } from '../../lib/kernel/clock.js';

const asNs = (t: { ms: number; ns: number }) => BigInt(t.ms) * 1_000_000n + BigInt(t.ns);

test('wallClock lies between two reads of CLOCK_REALTIME by another program (date +%s%N)', () => {
  for (let i = 0; i < 3; i++) {
    const before = BigInt(execFileSync('date', ['+%s%N'], { encoding: 'utf8' }).trim());
    const now = asNs(wallClock());
    const after = BigInt(execFileSync('date', ['+%s%N'], { encoding: 'utf8' }).trim());
    assert.ok(before <= now && now <= after, `${now} outside [${before}, ${after}]`);
  }
});

test('wallClock gives whole milliseconds as Date.now() does, and 0 to 999,999 nanoseconds past them', () => {
  const reads = [];
  for (let i = 0; i < 1000; i++) {
    const before = Date.now();
    const now = wallClock();
    const after = Date.now();
    assert.ok(Number.isInteger(now.ms) && before <= now.ms && now.ms <= after, `${now.ms} outside [${before}, ${after}]`);
    assert.ok(Number.isInteger(now.ns) && now.ns >= 0 && now.ns < 1_000_000, `ns ${now.ns}`);
    reads.push(now);
  }
  assert.ok(reads.some((t) => t.ns !== 0), 'finer than Date.now(): some read falls between two milliseconds');
});
