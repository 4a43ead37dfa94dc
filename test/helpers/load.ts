/** A seeded mix of every call on a small, overlapping key space, for the concurrency tests. */
import type { Snapshotter } from '../../lib/index.js';
import { prng } from './prng.js';

export { prng };

export interface LoadCounts {
  created: number;
  removed: number;
  committed: number;
  expectedErrors: number;
  ops: number;
}

const EXPECTED = new Set(['ERR_NOT_FOUND', 'ERR_ALREADY_EXISTS', 'ERR_FAILED_PRECONDITION', 'ERR_INVALID_ARGUMENT']);

/**
 * Runs `ops` calls. With `concurrent`, all are started at once and awaited
 * together (one process, many promises); otherwise one after another.
 * Throws on the first unexpected error.
 */
export async function mixedLoad(sn: Snapshotter, seed: number, ops: number, concurrent: boolean): Promise<LoadCounts> {
  const rand = prng(seed);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)]!;
  const keys = Array.from({ length: 12 }, (_, i) => `k${i}`);
  const names = Array.from({ length: 6 }, (_, i) => `c${i}`);
  const counts: LoadCounts = { created: 0, removed: 0, committed: 0, expectedErrors: 0, ops: 0 };

  const one = async (): Promise<void> => {
    const r = rand();
    try {
      if (r < 0.25) {
        await sn.prepare(pick(keys), rand() < 0.5 ? pick(names) : undefined);
        counts.created++;
      } else if (r < 0.32) {
        await sn.view(pick(keys), rand() < 0.7 ? pick(names) : undefined);
        counts.created++;
      } else if (r < 0.5) {
        await sn.commit(pick(names), pick(keys));
        counts.committed++;
      } else if (r < 0.72) {
        await sn.remove(rand() < 0.6 ? pick(keys) : pick(names));
        counts.removed++;
      } else if (r < 0.8) {
        await sn.walk(async (info) => void (await sn.stat(info.name).catch(() => undefined)), rand() < 0.5 ? 'kind==committed' : 'name~=^k');
      } else if (r < 0.88) {
        await sn.usage(rand() < 0.5 ? pick(keys) : pick(names));
      } else if (r < 0.93) {
        await sn.cleanup();
      } else if (r < 0.97) {
        await sn.mounts(pick(keys));
      } else {
        await sn.update({ name: pick(keys), labels: { seed: String(seed) } });
      }
    } catch (err) {
      const code = (err as { code?: string }).code;
      if (code === undefined || !EXPECTED.has(code)) throw err;
      counts.expectedErrors++;
    } finally {
      counts.ops++;
    }
  };

  if (concurrent) {
    await Promise.all(Array.from({ length: ops }, one));
  } else {
    for (let i = 0; i < ops; i++) await one();
  }
  return counts;
}
