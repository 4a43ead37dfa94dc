/**
 * Tests that mount need root and overlayfs; some tests also need a tool
 * (strace, setpriv, script). Elsewhere they skip with a stated reason; with
 * OVERLAY_SNAPSHOTTER_REQUIRE_MOUNT=1 (as CI sets it, after `.ci/run` has
 * installed the tools) a missing prerequisite fails the test instead.
 */
import { spawnSync } from 'node:child_process';
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
 * Why a test that runs `command` cannot run here (`command ...args` does
 * not exit 0, or its stdout does not match `expect`), or undefined.
 */
export function toolSkipReason(command: string, args: readonly string[], why: string, expect?: RegExp): string | undefined {
  const r = spawnSync(command, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
  if (r.error === undefined && r.status === 0 && (expect === undefined || expect.test(r.stdout))) return undefined;
  return `needs ${command} ${why}`;
}

/**
 * Options for `test()`/`describe()` of a test with a prerequisite that may
 * be missing (`reason` says why it is, undefined when it is there):
 * `{ skip: reason }`, and nothing under REQUIRE_MOUNT, so that the test
 * runs and fails on it (call {@link assertPrerequisite} first).
 */
export function prerequisiteOptions(reason: string | undefined): { skip?: string } {
  if (reason === undefined || REQUIRE_MOUNT) return {};
  return { skip: reason };
}

/** Throws when the prerequisite is missing: call first in a test that must not silently pass or skip. */
export function assertPrerequisite(reason: string | undefined): void {
  if (reason !== undefined) throw new Error(`OVERLAY_SNAPSHOTTER_REQUIRE_MOUNT=1 but this test ${reason}`);
}

/**
 * Options for `test()`/`describe()` of a test that mounts: `{ skip: reason }`
 * where it cannot run, and nothing under REQUIRE_MOUNT, so that the test
 * runs and fails on the missing prerequisite.
 */
export function mountTestOptions(): { skip?: string } {
  return prerequisiteOptions(mountSkipReason());
}

/** Throws when mounting is impossible: call first in a mounting test that must not silently pass. */
export function assertCanMount(): void {
  const reason = mountSkipReason();
  if (reason !== undefined) throw new Error(`OVERLAY_SNAPSHOTTER_REQUIRE_MOUNT=1 but ${reason}`);
}
