/**
 * A store keeps the driver it was created with (lib/disk/driver.ts): a reopen
 * with the other one is refused before anything changes, stores made before
 * drivers were recorded get theirs from their data, and processes opening a
 * new root at once agree on one.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { lstatSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import Database from 'better-sqlite3';
import { Snapshotter, isFailedPrecondition, isUnavailable, type SnapshotterOptions } from '../../lib/index.js';
import { mknod } from '../../lib/kernel/files.js';
import { removeTree, tempDir, withMounted } from '../helpers/fixtures.js';
import { mountTestOptions } from '../helpers/require-mount.js';

const mountOpts = mountTestOptions();
const REPO = fileURLToPath(new URL('../..', import.meta.url));
const OPEN_CHILD = fileURLToPath(new URL('../helpers/open-child.ts', import.meta.url));
const NATIVE = { driver: 'native' } as const;
const OVERLAY = { driver: 'overlay' } as const;

/** Runs `fn` with a root in a fresh temp dir, removed afterwards. */
async function withRoot(fn: (root: string, top: string) => Promise<void>): Promise<void> {
  const top = tempDir('ovl-driver-');
  try {
    await fn(join(top, 'root'), top);
  } finally {
    await removeTree(top);
  }
}

/** Makes the store: a committed `base` holding `file` and an active `c` on it; returns the driver it got. */
async function baseAndActive(root: string, options: SnapshotterOptions = {}): Promise<string> {
  const sn = await Snapshotter.open(root, options);
  try {
    // A parentless active is a bind of its own fs in both drivers: written without a mount.
    writeFileSync(`${(await sn.prepare('b'))[0]!.source}/file`, 'from base');
    await sn.commit('base', 'b');
    await sn.prepare('c', 'base');
    return sn.driver;
  } finally {
    await sn.close();
  }
}

/** Every entry under the root (but the SQLite files) with its type, size and times, and every row of the store. */
function fingerprint(root: string): unknown {
  const files: string[] = [];
  const walk = (rel: string): void => {
    for (const name of readdirSync(`${root}${rel}`).sort()) {
      if (rel === '' && name.startsWith('metadata.db')) continue;
      const st = lstatSync(`${root}${rel}/${name}`, { bigint: true });
      files.push(`${rel}/${name} ${st.mode.toString(8)} ${st.size} ${st.mtimeNs} ${st.ctimeNs}`);
      if (st.isDirectory()) walk(`${rel}/${name}`);
    }
  };
  walk('');
  const db = new Database(`${root}/metadata.db`, { readonly: true });
  try {
    const rows = (table: string) => db.prepare(`SELECT * FROM ${table} ORDER BY 1, 2`).all();
    return { files, snapshots: rows('snapshots'), labels: rows('labels'), meta: rows('meta') };
  } finally {
    db.close();
  }
}

function meta(root: string, key: string): string | undefined {
  const db = new Database(`${root}/metadata.db`, { readonly: true });
  try {
    return (db.prepare('SELECT value FROM meta WHERE key = ?').get(key) as { value: string } | undefined)?.value;
  } finally {
    db.close();
  }
}

/** Makes the store look like one made before drivers were recorded. */
function forgetDriver(root: string, value?: string): void {
  const db = new Database(`${root}/metadata.db`);
  try {
    if (value === undefined) db.prepare("DELETE FROM meta WHERE key = 'driver'").run();
    else db.prepare("UPDATE meta SET value = ? WHERE key = 'driver'").run(value);
  } finally {
    db.close();
  }
}

async function driverOf(root: string, options: SnapshotterOptions = {}): Promise<{ driver: string; reason: string }> {
  const sn = await Snapshotter.open(root, options);
  try {
    return { driver: sn.driver, reason: sn.driverReason };
  } finally {
    await sn.close();
  }
}

/** Mounts `c` of the reopened store and returns what its container sees. */
async function containerOfC(root: string): Promise<{ type: string; files: string[]; file: string }> {
  const sn = await Snapshotter.open(root);
  try {
    const mounts = await sn.mounts('c');
    return await withMounted(mounts, (d) => ({ type: mounts[0]!.type, files: readdirSync(d), file: readFileSync(`${d}/file`, 'utf8') }));
  } finally {
    await sn.close();
  }
}

const mismatch = (recorded: string, asked: string) => (err: Error) =>
  isFailedPrecondition(err) &&
  err.message.includes(`uses the "${recorded}" driver, but the "${asked}" driver was asked for`) &&
  err.message.includes(`open it with no driver (it uses its own) or with "${recorded}"`);

describe('a store keeps its driver', () => {
  test('an overlay store reopened with driver native fails with ERR_FAILED_PRECONDITION naming both drivers and changes nothing; without a driver its container sees every layer', mountOpts, async () => {
    await withRoot(async (root) => {
      assert.equal(await baseAndActive(root), 'overlay', 'a new store on this ext4 root picks overlay by itself');
      assert.match(meta(root, 'driver') ?? '', /"driver":"overlay".*chosen when the store was created, as overlay runs here/);
      const before = fingerprint(root);
      await assert.rejects(Snapshotter.open(root, NATIVE), mismatch('overlay', 'native'));
      assert.deepEqual(fingerprint(root), before, 'nothing on disk or in the store changed');
      assert.deepEqual(await containerOfC(root), { type: 'overlay', files: ['file'], file: 'from base' });
      assert.equal((await driverOf(root, OVERLAY)).driver, 'overlay', 'the store\'s own driver, given, is fine');
    });
  });

  test('a native store reopened with driver overlay fails the same way and changes nothing; without a driver its container sees every layer', mountOpts, async () => {
    await withRoot(async (root) => {
      assert.equal(await baseAndActive(root, NATIVE), 'native');
      assert.match(meta(root, 'driver') ?? '', /"driver":"native".*given when the store was created/);
      const before = fingerprint(root);
      await assert.rejects(Snapshotter.open(root, OVERLAY), mismatch('native', 'overlay'));
      assert.deepEqual(fingerprint(root), before, 'nothing on disk or in the store changed');
      assert.deepEqual(await containerOfC(root), { type: 'bind', files: ['file'], file: 'from base' });
    });
  });

  test('an unreadable driver record fails with ERR_UNAVAILABLE as damage, and is never guessed', async () => {
    await withRoot(async (root) => {
      await baseAndActive(root, NATIVE);
      forgetDriver(root, '{"driver":"vfs"}');
      await assert.rejects(Snapshotter.open(root), (err: Error) => isUnavailable(err) && /unreadable driver record/.test(err.message) && /restore metadata\.db/.test(err.message));
    });
  });

  test('processes opening a brand-new root at once agree on one driver: the first recorded wins, a different one asked for is refused', mountOpts, async () => {
    await withRoot(async (_root, top) => {
      for (const drivers of [['overlay', 'native', 'overlay', 'native'], ['-', '-', '-', 'native']]) {
        const root = join(top, `root-${drivers.join('-')}`);
        const start = join(top, `start-${drivers.join('-')}`);
        const children = drivers.map((d) => runOpenChild(root, d, start));
        writeFileSync(start, '');
        const results = await Promise.all(children);
        const recorded = JSON.parse(meta(root, 'driver')!) as { driver: string };
        // Every child that asked for the recorded driver (or none) has it; every other one was refused.
        assert.deepEqual(
          results,
          drivers.map((asked) => (asked === '-' || asked === recorded.driver ? { driver: recorded.driver } : { code: 'ERR_FAILED_PRECONDITION' })),
          `recorded ${recorded.driver}`,
        );
      }
    });
  });
});

function runOpenChild(root: string, driver: string, start: string): Promise<{ driver?: string; code?: string }> {
  return new Promise((resolve, reject) => {
    const env = { ...process.env };
    delete env.NODE_OPTIONS;
    const child = spawn(process.execPath, ['--import', 'tsx', OPEN_CHILD, root, driver, start], { cwd: REPO, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (b: Buffer) => (out += b.toString()));
    child.stderr.on('data', (b: Buffer) => (err += b.toString()));
    child.on('error', reject);
    child.on('close', (code) => {
      if (code !== 0) reject(new Error(`open child exited ${code}: ${err}`));
      else resolve(JSON.parse(out.trim().split('\n').at(-1)!) as { driver?: string; code?: string });
    });
  });
}

describe('stores made before drivers were recorded', () => {
  test('native data (an active holding a copy of its parent) is recognised at the first open: overlay asked for is refused with nothing changed, and native is recorded', mountOpts, async () => {
    await withRoot(async (root) => {
      await baseAndActive(root, NATIVE);
      forgetDriver(root);
      const before = fingerprint(root);
      await assert.rejects(Snapshotter.open(root, OVERLAY), mismatch('native', 'overlay'));
      assert.deepEqual(fingerprint(root), before, 'not even the record was written');
      const got = await driverOf(root);
      assert.equal(got.driver, 'native');
      assert.match(got.reason, /read from the data .*"c" among them\) hold full copies of their parents' trees/);
      assert.match(meta(root, 'driver') ?? '', /"driver":"native"/, 'recorded at that open');
      assert.deepEqual(await containerOfC(root), { type: 'bind', files: ['file'], file: 'from base' });
    });
  });

  test('overlay data is recognised from an active holding only its own changes, one mounted as an overlay, or a whiteout', mountOpts, async () => {
    await withRoot(async (root) => {
      await baseAndActive(root);
      forgetDriver(root);
      await assert.rejects(Snapshotter.open(root, NATIVE), mismatch('overlay', 'native'));
      assert.equal(meta(root, 'driver'), undefined);
      const unmounted = await driverOf(root);
      assert.equal(unmounted.driver, 'overlay');
      assert.match(unmounted.reason, /hold only their own changes/);

      assert.deepEqual(await containerOfC(root), { type: 'overlay', files: ['file'], file: 'from base' });
      forgetDriver(root);
      assert.match((await driverOf(root)).reason, /active "c" has been mounted as an overlay/);

      // A committed layer that deleted its parent's file, as overlay records deletions.
      const sn = await Snapshotter.open(root);
      try {
        await sn.prepare('d', 'base');
        mknod(`${root}/snapshots/3/fs/file`, 'character-device', 0, 0, 0);
        await sn.commit('deleted', 'd');
        await sn.remove('c');
      } finally {
        await sn.close();
      }
      forgetDriver(root);
      const whiteout = await driverOf(root);
      assert.equal(whiteout.driver, 'overlay');
      assert.match(whiteout.reason, /"deleted" holds an overlay whiteout/);
    });
  });

  test('data that reads the same under both drivers (no snapshot on a non-empty parent): the driver given is recorded, else the one a new store would get', async () => {
    await withRoot(async (root) => {
      const sn = await Snapshotter.open(root, NATIVE);
      try {
        writeFileSync(`${(await sn.prepare('b'))[0]!.source}/file`, 'x');
        await sn.commit('base', 'b');
        await sn.prepare('empty');
        await sn.commit('nothing', 'empty');
        await sn.prepare('on-empty', 'nothing');
      } finally {
        await sn.close();
      }
      forgetDriver(root);
      const given = await driverOf(root, NATIVE);
      assert.deepEqual(given, { driver: 'native', reason: 'given at the first open that recorded drivers (the data read the same with either)' });
      assert.equal((await driverOf(root)).driver, 'native', 'kept from then on');
      forgetDriver(root);
      const chosen = await Snapshotter.open(root);
      try {
        assert.equal(chosen.driver, chosen.capabilities.defaultDriver);
        assert.equal(chosen.driverReason, `chosen at the first open that recorded drivers (the data read the same with either), as ${chosen.capabilities.defaultDriverReason}`);
      } finally {
        await chosen.close();
      }
    });
  });
});
