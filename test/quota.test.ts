/**
 * Size and inode quotas (prepare's `quota`, lib/kernel/quota.ts) on real
 * filesystems made on loop devices: an XFS and an ext4. Where project
 * quotas are not on (this kernel has no XFS quota support and no ext4
 * quota format), `capabilities` says why and prepare refuses the quota with
 * UnavailableError before anything is made. Setting limits is not
 * implemented yet (docs/capabilities.md); where a filesystem does have
 * project quotas on, the refusal says so instead.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { NotFoundError, QUOTA_INODES_LABEL, QUOTA_SIZE_LABEL, Snapshotter, UnavailableError, unmountAll } from '../lib/index.js';
import { isMounted } from './helpers/fixtures.js';
import { assertPrerequisite, mountSkipReason, prerequisiteOptions, toolSkipReason } from './helpers/require-mount.js';

const MKFS: Record<string, { tool: string; args: string[]; size: string }> = {
  // mkfs.xfs refuses filesystems under 300 MiB; the image is sparse.
  xfs: { tool: 'mkfs.xfs', args: ['-q', '-f'], size: '320M' },
  ext4: { tool: 'mkfs.ext4', args: ['-q', '-F'], size: '64M' },
};

function missing(fs: string): string | undefined {
  return mountSkipReason() ?? toolSkipReason(MKFS[fs]!.tool, ['-V'], `(${fs === 'xfs' ? 'xfsprogs' : 'e2fsprogs'}) to make a ${fs} filesystem`);
}

/** Makes a `fs` filesystem in a sparse image, mounts it on a loop device with `options`, runs `fn` on it, and takes it all away. */
async function onLoop(fs: string, options: string, fn: (dir: string, mounted: boolean) => Promise<void>): Promise<void> {
  const base = mkdtempSync(join(tmpdir(), `ovl-quota-${fs}-`));
  const image = `${base}/image`;
  const dir = `${base}/mnt`;
  mkdirSync(dir);
  try {
    assert.equal(spawnSync('truncate', ['-s', MKFS[fs]!.size, image]).status, 0);
    const made = spawnSync(MKFS[fs]!.tool, [...MKFS[fs]!.args, image], { encoding: 'utf8' });
    assert.equal(made.status, 0, made.stderr);
    const mount = spawnSync('mount', ['-o', `loop${options === '' ? '' : `,${options}`}`, image, dir], { encoding: 'utf8' });
    if (mount.status !== 0) {
      await fn(dir, false);
      return;
    }
    try {
      await fn(dir, true);
    } finally {
      await unmountAll(dir); // the loop device goes with it (autoclear)
    }
  } finally {
    assert.equal(isMounted(dir), false);
    rmSync(base, { recursive: true, force: true });
  }
}

/** prepare with a quota, given as an option or as labels, is refused before anything is made. */
async function assertRefused(root: string): Promise<void> {
  const sn = await Snapshotter.open(root);
  try {
    const caps = sn.capabilities;
    const reason = caps.projectQuotas === true ? /does not set them yet/ : new RegExp(`needs project quotas on the root's filesystem, and ${escape(caps.projectQuotasUnavailable!)}`);
    await assert.rejects(sn.prepare('ctr', undefined, { quota: { size: '64M', inodes: 1000 } }), (err: Error) => err instanceof UnavailableError && reason.test(err.message));
    await assert.rejects(sn.prepare('ctr', undefined, { labels: { [QUOTA_SIZE_LABEL]: '64M' } }), UnavailableError);
    await assert.rejects(sn.prepare('ctr', undefined, { labels: { [QUOTA_INODES_LABEL]: '10' } }), UnavailableError);
    await assert.rejects(sn.stat('ctr'), NotFoundError, 'no record');
    assert.deepEqual(readdirSync(`${root}/snapshots`).filter((n) => !n.startsWith(`new-${process.pid}.`)), [], 'no directory');
    await sn.prepare('ctr');
    assert.equal(readdirSync(`${root}/snapshots`).includes('1'), true, 'the refusals took no id: the key and id 1 are still free');
  } finally {
    await sn.close();
  }
}

function escape(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

describe('quota', () => {
  test('on XFS, capabilities say whether project quotas are on and why not, and prepare refuses a quota with UnavailableError, making nothing', prerequisiteOptions(missing('xfs')), async () => {
    assertPrerequisite(missing('xfs'));
    await onLoop('xfs', '', async (dir, mounted) => {
      assert.ok(mounted, 'a plain XFS mounts');
      const sn = await Snapshotter.open(`${dir}/root`);
      try {
        assert.equal(sn.capabilities.rootFilesystem, 'xfs');
        assert.equal(sn.capabilities.projectQuotas, false, 'mounted without prjquota');
        assert.match(sn.capabilities.projectQuotasUnavailable!, /kernel has no quota support for xfs|not enabled on xfs.*prjquota/);
      } finally {
        await sn.close();
      }
      await assertRefused(`${dir}/root2`);
    });
  });

  test('XFS mounted with prjquota shows project quotas on; a kernel that refuses that mount is one the capabilities say lacks quota support', prerequisiteOptions(missing('xfs')), async () => {
    assertPrerequisite(missing('xfs'));
    let refused = false;
    await onLoop('xfs', 'prjquota', async (dir, mounted) => {
      refused = !mounted;
      if (!mounted) return;
      const sn = await Snapshotter.open(`${dir}/root`);
      try {
        assert.equal(sn.capabilities.projectQuotas, true);
        assert.equal(sn.capabilities.projectQuotasUnavailable, null);
      } finally {
        await sn.close();
      }
      await assertRefused(`${dir}/root2`);
    });
    if (!refused) return;
    await onLoop('xfs', '', async (dir) => {
      const sn = await Snapshotter.open(`${dir}/root`);
      try {
        assert.match(sn.capabilities.projectQuotasUnavailable!, /the kernel has no quota support for xfs .*CONFIG_XFS_QUOTA/);
      } finally {
        await sn.close();
      }
    });
  });

  test('on ext4 without the project and quota features, capabilities say how to make one, and prepare refuses a quota', prerequisiteOptions(missing('ext4')), async () => {
    assertPrerequisite(missing('ext4'));
    await onLoop('ext4', '', async (dir, mounted) => {
      assert.ok(mounted);
      const sn = await Snapshotter.open(`${dir}/root`);
      try {
        assert.equal(sn.capabilities.rootFilesystem, 'ext4');
        assert.equal(sn.capabilities.projectQuotas, false);
        assert.match(sn.capabilities.projectQuotasUnavailable!, /mkfs\.ext4 -O project,quota/);
      } finally {
        await sn.close();
      }
      await assertRefused(`${dir}/root2`);
    });
  });
});
