/**
 * Tests that mount need root and overlayfs. Elsewhere they skip with a
 * stated reason; with OVERLAY_SNAPSHOTTER_REQUIRE_MOUNT=1 (as CI sets it) a
 * missing prerequisite fails the test instead.
 */
import { readFileSync } from 'node:fs';

export const REQUIRE_MOUNT = process.env.OVERLAY_SNAPSHOTTER_REQUIRE_MOUNT === '1';

/** Why mount tests cannot run here, or undefined when they can. */
export function mountSkipReason(): string | undefined {
  if (process.platform !== 'linux') return 'mount tests need Linux';
  if (process.getuid?.() !== 0) return 'mount tests need root (mount(2) needs CAP_SYS_ADMIN)';
  let filesystems = '';
  try {
    filesystems = readFileSync('/proc/filesystems', 'utf8');
  } catch {
    return 'mount tests need /proc/filesystems';
  }
  if (!/\toverlay$/m.test(filesystems)) return 'mount tests need overlayfs in the kernel';
  return undefined;
}

/**
 * Options for `test()`/`describe()` of a test that mounts: `{ skip: reason }`
 * where it cannot run, and nothing under REQUIRE_MOUNT, so that the test
 * runs and fails on the missing prerequisite.
 */
export function mountTestOptions(): { skip?: string } {
  const reason = mountSkipReason();
  if (reason === undefined || REQUIRE_MOUNT) return {};
  return { skip: reason };
}

/** Throws when mounting is impossible: call first in a mounting test that must not silently pass. */
export function assertCanMount(): void {
  const reason = mountSkipReason();
  if (reason !== undefined) throw new Error(`OVERLAY_SNAPSHOTTER_REQUIRE_MOUNT=1 but ${reason}`);
}
