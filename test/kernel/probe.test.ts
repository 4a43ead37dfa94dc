/**
 * Kernel and filesystem probes (lib/kernel/probe.ts) and the capabilities object
 * built from them (lib/kernel/capabilities.ts): what each field says on this
 * machine, that the probes leave nothing behind, and that they run once per
 * root and kernel release.
 */
import assert from 'node:assert/strict';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { release } from 'node:os';
import { describe, test } from 'node:test';
import Database from 'better-sqlite3';
import { Snapshotter, mountAll, probeCapabilities, unmountAll, type Capabilities } from '../../lib/index.js';
import { capabilityCacheKey } from '../../lib/kernel/capabilities.js';
import { resolveOverlayStrategy } from '../../lib/kernel/mount/index.js';
import {
  filesystemName,
  filesystemType,
  kernelAtLeast,
  kernelVersion,
  overlayParameter,
  probeIdmappedMounts,
  probeLowerdirPlus,
  supportsDType,
  supportsUserXattrs,
} from '../../lib/kernel/probe.js';
import { helperMissing } from '../../lib/kernel/userns.js';
import { isMounted, removeTree, tempDir, withSnapshotter } from '../helpers/fixtures.js';
import { mountTestOptions } from '../helpers/require-mount.js';

const mountOpts = mountTestOptions();
const INDEX = '/sys/module/overlay/parameters/index';

/** A `meta`-table stand-in that remembers what was written. */
function memoryCache(): { getMeta(k: string): string | undefined; setMeta(k: string, v: string): void; map: Map<string, string> } {
  const map = new Map<string, string>();
  return { map, getMeta: (k) => map.get(k), setMeta: (k, v) => void map.set(k, v) };
}

function parameter(name: string): boolean | null {
  const path = `/sys/module/overlay/parameters/${name}`;
  return existsSync(path) ? readFileSync(path, 'utf8').trim() === 'Y' : null;
}

describe('probes', () => {
  test('kernel releases parse to major and minor, and compare', () => {
    assert.deepEqual(kernelVersion('6.8.0-45-generic'), [6, 8]);
    assert.deepEqual(kernelVersion('5.10.0'), [5, 10]);
    assert.deepEqual(kernelVersion('garbage'), [0, 0]);
    assert.equal(kernelAtLeast(5, 11, '5.11.0'), true);
    assert.equal(kernelAtLeast(5, 11, '5.10.200'), false);
    assert.equal(kernelAtLeast(5, 11, '6.0.1'), true);
    assert.equal(kernelAtLeast(6, 8, '6.18.4'), true, 'minor numbers compare as numbers, not strings');
  });

  test('filesystem magic numbers have names, unknown ones show in hex', () => {
    assert.equal(filesystemName(0xef53), 'ext4');
    assert.equal(filesystemName(0x794c7630), 'overlay');
    assert.equal(filesystemName(0x01021994), 'tmpfs');
    assert.equal(filesystemName(0x12345), '0x12345');
  });

  test('overlay module parameters read as booleans, absent ones as undefined', () => {
    for (const name of ['index', 'redirect_dir', 'metacopy'] as const) assert.equal(overlayParameter(name) ?? null, parameter(name), name);
  });

  test('d_type and user.* xattr probes answer for a temp dir and leave nothing behind', async () => {
    const dir = tempDir();
    try {
      assert.equal(typeof supportsDType(dir), 'boolean');
      assert.equal(typeof supportsUserXattrs(dir), 'boolean');
      if (['ext4', 'xfs', 'btrfs'].includes(filesystemName(filesystemType(dir)))) {
        assert.equal(supportsDType(dir), true);
        assert.equal(supportsUserXattrs(dir), true);
      }
      assert.deepEqual(readdirSync(dir), []);
    } finally {
      await removeTree(dir);
    }
  });

  test('as root, lowerdir+ and ID-mapped mounts are found on the kernels that have them', mountOpts, () => {
    const lowerdirPlus = probeLowerdirPlus();
    const idmapped = probeIdmappedMounts();
    assert.notEqual(lowerdirPlus, null, 'root may open a filesystem context');
    assert.notEqual(idmapped, null, 'root may mount');
    if (kernelAtLeast(6, 8)) assert.equal(lowerdirPlus, true);
    if (kernelAtLeast(5, 12)) assert.equal(idmapped, true);
    if (!kernelAtLeast(5, 12)) assert.equal(idmapped, false);
  });
});

describe('capabilities', () => {
  test('probeCapabilities on an ext4/xfs/btrfs dir as root: overlay usable, every field as the kernel says, no scratch left and nothing mounted', mountOpts, async () => {
    const dir = tempDir();
    try {
      const caps = await probeCapabilities(dir);
      assert.ok(Object.isFrozen(caps));
      assert.equal(caps.kernelRelease, release());
      assert.equal(caps.overlay, true);
      assert.equal(caps.rootFilesystem, filesystemName(filesystemType(dir)));
      assert.equal(caps.rootOnOverlay, false);
      assert.equal(caps.indexParameter, existsSync(INDEX));
      assert.equal(caps.indexDefault, parameter('index'));
      assert.equal(caps.redirectDirDefault, parameter('redirect_dir'));
      assert.equal(caps.metacopyDefault, parameter('metacopy'));
      assert.equal(caps.mountStrategy, resolveOverlayStrategy(), 'what mountAll will use in this process');
      assert.equal(caps.userNamespace, false);
      assert.equal(caps.userxattrNeeded, false, 'the initial user namespace never needs userxattr');
      assert.equal(caps.cached, false);
      if (['ext4', 'xfs', 'btrfs'].includes(caps.rootFilesystem)) {
        assert.equal(caps.dType, true);
        assert.equal(caps.multipleLowerDirs, true);
        assert.equal(caps.overlayUnavailable, null);
        assert.equal(caps.defaultDriver, 'overlay', 'a new store here takes overlay');
        assert.equal(caps.defaultDriverReason, `overlay runs here: the root is on ${caps.rootFilesystem}, which records d_type, and an overlay with two lower dirs was mounted under it`);
      }
      assert.deepEqual(readdirSync(dir), [], 'scratch dirs of the probes are removed');
      if (kernelAtLeast(5, 19)) assert.equal(caps.idmappedLayers, helperMissing() === undefined, 'ID-mapped layers: 5.19+ and unshare in PATH');
      assert.equal(caps.idmappedLayersUnavailable === null, caps.idmappedLayers === true, 'a reason exactly when they are not available');
      assert.equal(caps.idmappedLayerFds, kernelAtLeast(6, 13) ? true : caps.idmappedLayerFds, 'layers by descriptor from 6.13');
      assert.equal(caps.volatileOverlay, kernelAtLeast(5, 10));
      assert.equal(caps.projectQuotasUnavailable === null, caps.projectQuotas === true, 'a reason exactly when project quotas are not on');
      assert.deepEqual(Object.keys(caps).sort(), [
        'cached', 'dType', 'defaultDriver', 'defaultDriverReason', 'idmappedLayerFds', 'idmappedLayers', 'idmappedLayersUnavailable', 'idmappedMounts', 'indexDefault',
        'indexParameter', 'kernelRelease', 'lowerdirPlus', 'metacopyDefault', 'mountStrategy', 'multipleLowerDirs', 'overlay', 'overlayUnavailable', 'projectQuotas',
        'projectQuotasUnavailable', 'redirectDirDefault', 'rootFilesystem', 'rootOnOverlay', 'userNamespace', 'userXattrs', 'userxattrNeeded', 'volatileOverlay',
      ]);
    } finally {
      await removeTree(dir);
    }
  });

  test('with a cache, the first probe is kept under probe:<kernel release> and the next one only reads it', mountOpts, async () => {
    const dir = tempDir();
    try {
      const cache = memoryCache();
      const first = await probeCapabilities(dir, { cache });
      assert.deepEqual([...cache.map.keys()], [capabilityCacheKey()]);
      assert.equal(capabilityCacheKey(), `probe:${release()}`);
      // Tamper with the kept answer: a second call that probed again would not see it.
      const kept = JSON.parse(cache.map.get(capabilityCacheKey())!) as Record<string, unknown>;
      cache.map.set(capabilityCacheKey(), JSON.stringify({ ...kept, metacopyDefault: !first.metacopyDefault }));
      const second = await probeCapabilities(dir, { cache });
      assert.equal(second.cached, true);
      assert.equal(second.metacopyDefault, !first.metacopyDefault);
      const { cached: _a, metacopyDefault: _b, ...restFirst } = first;
      const { cached: _c, metacopyDefault: _d, ...restSecond } = second;
      assert.deepEqual(restSecond, restFirst);
    } finally {
      await removeTree(dir);
    }
  });

  test('a stale cache entry (the "ok" of earlier versions, or another format) is probed again and replaced', mountOpts, async () => {
    const dir = tempDir();
    try {
      for (const stale of ['ok', '{"v":0}', '{not json', 'null']) {
        const cache = memoryCache();
        cache.setMeta(capabilityCacheKey(), stale);
        const caps = await probeCapabilities(dir, { cache });
        assert.equal(caps.cached, false, stale);
        assert.equal((JSON.parse(cache.map.get(capabilityCacheKey())!) as { v: number }).v, 1);
      }
    } finally {
      await removeTree(dir);
    }
  });

  test('the default driver comes with the kept probe: where this process could not mount an overlay, a new store gets native and says why', mountOpts, async () => {
    const dir = tempDir();
    try {
      const cache = memoryCache();
      await probeCapabilities(dir, { cache });
      const key = capabilityCacheKey();
      cache.map.set(key, JSON.stringify({ ...(JSON.parse(cache.map.get(key)!) as object), multipleLowerDirs: null }));
      const caps = await probeCapabilities(dir, { cache });
      assert.equal(caps.cached, true);
      assert.equal(caps.overlayUnavailable, null, 'overlay asked for is still allowed: its specs can go to a runtime that may mount');
      assert.equal(caps.defaultDriver, 'native');
      assert.equal(caps.defaultDriverReason, 'overlay is not used here: this process may not mount (EPERM), so no overlay mount could be tried under the root');
    } finally {
      await removeTree(dir);
    }
  });

  test('a root on tmpfs reports tmpfs; outside a user namespace it still needs no userxattr', mountOpts, async () => {
    const dir = tempDir();
    try {
      await mountAll([{ type: 'tmpfs', source: 'tmpfs', options: ['mode=0700'] }], dir);
      const caps = await probeCapabilities(dir);
      assert.equal(caps.rootFilesystem, 'tmpfs');
      assert.equal(caps.userXattrs, kernelAtLeast(6, 6), 'tmpfs stores user.* xattrs from Linux 6.6');
      assert.equal(caps.userxattrNeeded, false);
      assert.equal(caps.multipleLowerDirs, true, 'overlay stacks on tmpfs');
      assert.equal(caps.defaultDriver, 'overlay', 'and a new store there takes it');
    } finally {
      await unmountAll(dir);
      assert.equal(isMounted(dir), false);
      await removeTree(dir);
    }
  });
});

describe('capabilities of an open snapshotter', () => {
  test('open probes once per kernel release; a warm open reads the store and probes nothing', mountOpts, async () => {
    await withSnapshotter({}, async (sn, root) => {
      assert.equal(sn.capabilities.cached, false, 'the first open of a fresh root probes');
      assert.equal(sn.capabilities.overlayUnavailable, null);
      await sn.close();
      // Tamper with the kept answer inside metadata.db: only a reopen that reads it (and probes nothing) can show it.
      const db = new Database(`${root}/metadata.db`);
      const key = capabilityCacheKey();
      const kept = JSON.parse((db.prepare('SELECT value FROM meta WHERE key = ?').get(key) as { value: string }).value) as Capabilities;
      db.prepare('UPDATE meta SET value = ? WHERE key = ?').run(JSON.stringify({ ...kept, redirectDirDefault: 'tampered' }), key);
      db.close();
      const again = await Snapshotter.open(root);
      try {
        assert.equal(again.capabilities.cached, true);
        assert.equal(again.capabilities.redirectDirDefault as unknown, 'tampered');
        assert.deepEqual(readdirSync(root).sort(), ['metadata.db', 'metadata.db-lock', 'metadata.db-shm', 'metadata.db-wal', 'snapshots'].filter((n) => existsSync(`${root}/${n}`)));
      } finally {
        await again.close();
      }
    });
  });

  test('overlay specs follow the capabilities: index=off with the index parameter, userxattr only where needed', async () => {
    await withSnapshotter({}, async (sn) => {
      await sn.prepare('a');
      await sn.commit('c', 'a');
      const [m] = await sn.prepare('b', 'c');
      assert.equal(m!.options.includes('index=off'), sn.capabilities.indexParameter);
      assert.equal(m!.options.includes('userxattr'), sn.capabilities.userxattrNeeded);
    });
  });

  test('userxattr: true or false overrides the probe', async () => {
    for (const userxattr of [true, false]) {
      await withSnapshotter({ userxattr }, async (sn) => {
        await sn.prepare('a');
        await sn.commit('c', 'a');
        const [m] = await sn.prepare('b', 'c');
        assert.equal(m!.options.includes('userxattr'), userxattr);
      });
    }
  });
});
