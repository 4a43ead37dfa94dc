/**
 * Rootless use, for real: a child process in its own user and mount
 * namespaces (`unshare --user --map-root-user --mount`) opens a
 * snapshotter, stacks layers and mounts them. Overlay is mountable there on
 * Linux 5.11+ with `userxattr`, which the specs must then carry.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, chownSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, test } from 'node:test';
import type { Capabilities, Mount } from '../lib/index.js';
import { kernelAtLeast } from '../lib/kernel/probe.js';
import { removeTree, tempDir } from './helpers/fixtures.js';
import { REQUIRE_MOUNT, assertPrerequisite, mountSkipReason, prerequisiteOptions, toolSkipReason } from './helpers/require-mount.js';

const REPO = fileURLToPath(new URL('..', import.meta.url));
const CHILD = fileURLToPath(new URL('./helpers/rootless-child.ts', import.meta.url));
/** A host uid and gid no one uses here, for the unprivileged run. */
const UNPRIVILEGED = 47_231;

interface Report {
  uidMap: string;
  capabilities: Capabilities;
  bindSpec: Mount[];
  activeSpec: Mount[];
  viewSpec: Mount[];
  whiteoutIsCharDevice: boolean;
  opaqueXattrs: string[];
  merged: { entries: string[]; dir: string[]; kept: string; erofs: boolean };
  reopenedFromCache: boolean;
  nativeSpec: Mount[];
  nativeSeen: string[];
  nativeParentKept: string[];
}

function works(cmd: string, args: string[]): boolean {
  return spawnSync(cmd, args, { stdio: 'ignore' }).status === 0;
}

/** Why the user-namespace tests cannot run here, or undefined. */
function skipReason(): string | undefined {
  const mount = mountSkipReason();
  if (mount !== undefined) return mount;
  if (!kernelAtLeast(5, 11)) return 'overlay in a user namespace needs Linux 5.11+';
  if (!works('unshare', ['--user', '--map-root-user', '--mount', 'true'])) return 'cannot make a user namespace (`unshare --user --map-root-user --mount true` failed)';
  return undefined;
}

const reason = skipReason();
const SETPRIV_MISSING = toolSkipReason('setpriv', ['--version'], '(util-linux) to run as an unprivileged host user');
const options = reason === undefined || REQUIRE_MOUNT ? {} : { skip: reason };

/** Runs the child in new user and mount namespaces, optionally as an unprivileged host user, and returns its report. */
function runChild(dir: string, mode: 'ext4' | 'tmpfs', asUser?: number): Report {
  const unshare = ['unshare', '--user', '--map-root-user', '--mount', process.execPath, '--import', 'tsx', CHILD, dir, mode];
  const [cmd, ...args] = asUser === undefined ? unshare : ['setpriv', `--reuid=${asUser}`, `--regid=${asUser}`, '--clear-groups', ...unshare];
  const env: NodeJS.ProcessEnv = { ...process.env, HOME: dir };
  delete env.NODE_OPTIONS;
  const child = spawnSync(cmd!, args, { cwd: REPO, env, encoding: 'utf8', timeout: 120_000 });
  assert.equal(child.status, 0, `child failed (status ${child.status}, signal ${child.signal}):\n${child.stderr}\n${child.stdout}`);
  const last = child.stdout.trim().split('\n').at(-1) ?? '';
  return JSON.parse(last) as Report;
}

/** What every rootless overlay run must show. */
function assertOverlayWorked(report: Report, expectUserxattr: boolean): void {
  const caps = report.capabilities;
  assert.equal(caps.userNamespace, true, `uid map ${report.uidMap} is a user namespace`);
  assert.equal(caps.userxattrNeeded, expectUserxattr);
  assert.equal(caps.multipleLowerDirs, true, 'the open probe mounted an overlay inside the namespace');
  assert.equal(caps.overlayUnavailable, null);
  assert.deepEqual(report.bindSpec[0]!.options, ['rw', 'rbind']);
  for (const spec of [report.activeSpec, report.viewSpec]) {
    assert.equal(spec[0]!.type, 'overlay');
    assert.equal(spec[0]!.options.includes('userxattr'), expectUserxattr, `userxattr in ${spec[0]!.options.join(',')}`);
  }
  assert.deepEqual(report.merged, { entries: ['dir', 'kept'], dir: ['new'], kept: 'changed by l2', erofs: true });
  assert.equal(report.whiteoutIsCharDevice, true, 'a deletion is a 0/0 character device in the upper dir');
  if (expectUserxattr) assert.deepEqual(report.opaqueXattrs, ['user.overlay.opaque'], 'overlay marks the remade dir opaque in the user.* namespace');
  assert.equal(report.reopenedFromCache, true, 'the second open reads the probes from the store');
}

function assertNativeWorked(report: Report): void {
  assert.deepEqual(report.nativeSpec, [{ type: 'bind', source: report.nativeSpec[0]!.source, options: ['rw', 'rbind'] }]);
  assert.deepEqual(report.nativeSeen, ['f'], 'the copy holds the parent\'s file, and its deletion of sub/ ...');
  assert.deepEqual(report.nativeParentKept, ['f', 'sub'], '... leaves the parent alone');
}

describe('rootless: in a user namespace', options, () => {
  test('as mapped root on ext4, specs carry userxattr and layers stack, delete and hide through real overlay mounts', async () => {
    const dir = tempDir('ovl-userns-');
    try {
      const report = runChild(dir, 'ext4');
      assertOverlayWorked(report, true);
      assertNativeWorked(report);
    } finally {
      await removeTree(dir);
    }
  });

  test('as an unprivileged host user (setpriv) owning the root, the same works with no privilege on the host', prerequisiteOptions(SETPRIV_MISSING), async () => {
    assertPrerequisite(SETPRIV_MISSING);
    const dir = tempDir('ovl-userns-');
    try {
      chownSync(dir, UNPRIVILEGED, UNPRIVILEGED);
      chmodSync(dir, 0o755);
      const report = runChild(dir, 'ext4', UNPRIVILEGED);
      assert.match(report.uidMap, new RegExp(`^0\\s+${UNPRIVILEGED}\\s+1$`), 'container root is the unprivileged host user');
      assertOverlayWorked(report, true);
      assertNativeWorked(report);
    } finally {
      await removeTree(dir);
    }
  });

  test('on tmpfs, userxattr follows whether tmpfs stores user.* xattrs (Linux 6.6+), and a lower dir can be removed and remade', async () => {
    const dir = tempDir('ovl-userns-');
    try {
      const report = runChild(dir, 'tmpfs');
      assert.equal(report.capabilities.rootFilesystem, 'tmpfs');
      assert.equal(report.capabilities.userXattrs, kernelAtLeast(6, 6), 'tmpfs has user.* xattrs from 6.6');
      assertOverlayWorked(report, report.capabilities.userXattrs);
      assertNativeWorked(report);
    } finally {
      await removeTree(dir);
    }
  });
});
