/**
 * The store's read caches (records by key, the full walk) are checked
 * against the WAL-index header before every use: whatever another
 * connection or process commits is seen by the very next read.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { Snapshotter } from '../../lib/index.js';
import { removeTree, tempDir } from '../helpers/fixtures.js';
import { assertPrerequisite, prerequisiteOptions, toolSkipReason } from '../helpers/require-mount.js';

const LIB = fileURLToPath(new URL('../../lib/index.ts', import.meta.url));

async function names(sn: Snapshotter, ...filters: string[]): Promise<string[]> {
  const out: string[] = [];
  await sn.walk((info) => void out.push(info.name), ...filters);
  return out;
}

test('stat, mounts and walk see at once what another connection commits, after they were cached', async () => {
  const top = tempDir();
  const a = await Snapshotter.open(join(top, 'root'));
  const b = await Snapshotter.open(join(top, 'root'));
  try {
    await a.prepare('x');
    await a.commit('base', 'x');
    await a.prepare('c', 'base', { labels: { k: 'v1' } });
    // Fill every cache of `a`.
    assert.equal((await a.stat('c')).labels.k, 'v1');
    await a.mounts('c');
    assert.deepEqual(await names(a), ['base', 'c']);
    assert.deepEqual(await names(a, 'labels.k==v1'), ['c']);

    await b.update({ name: 'c', labels: { k: 'v2' } }, 'labels.k');
    assert.equal((await a.stat('c')).labels.k, 'v2');
    const walked: Record<string, string>[] = [];
    await a.walk((info) => void walked.push(info.labels));
    assert.equal(walked[1]!.k, 'v2');
    assert.deepEqual(await names(a, 'labels.k==v2'), ['c']);

    await b.prepare('d', 'base');
    assert.deepEqual(await names(a), ['base', 'c', 'd']);
    assert.equal((await a.stat('d')).kind, 'active');

    await b.remove('c');
    await assert.rejects(a.stat('c'), { code: 'ERR_NOT_FOUND' });
    await assert.rejects(a.mounts('c'), { code: 'ERR_NOT_FOUND' });
    assert.deepEqual(await names(a), ['base', 'd']);
  } finally {
    await a.close();
    await b.close();
    await removeTree(top);
  }
});

test('a change committed by another process is seen by the next stat and walk', async () => {
  const top = tempDir();
  const root = join(top, 'root');
  const sn = await Snapshotter.open(root);
  try {
    await sn.prepare('c', '', { labels: { k: 'before' } });
    assert.equal((await sn.stat('c')).labels.k, 'before');
    assert.deepEqual(await names(sn), ['c']);
    const script = `import { Snapshotter } from ${JSON.stringify(LIB)};
      const sn = await Snapshotter.open(${JSON.stringify(root)});
      await sn.update({ name: 'c', labels: { k: 'after' } }, 'labels.k');
      await sn.prepare('e');
      await sn.close();`;
    const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    assert.equal((await sn.stat('c')).labels.k, 'after');
    assert.deepEqual(await names(sn), ['c', 'e']);
  } finally {
    await sn.close();
    await removeTree(top);
  }
});

test('Info objects from cached records are the caller\'s own: changing one changes no later answer', async () => {
  const top = tempDir();
  const sn = await Snapshotter.open(join(top, 'root'), { upperdirLabel: true });
  try {
    await sn.prepare('c', '', { labels: { k: 'v' } });
    const first = await sn.stat('c');
    first.labels.k = 'changed';
    first.labels.extra = 'x';
    const again = await sn.stat('c');
    assert.equal(again.labels.k, 'v');
    assert.equal(again.labels.extra, undefined);
    await sn.walk((info) => {
      info.labels.k = 'changed by walk';
    });
    assert.equal((await sn.stat('c')).labels.k, 'v');
    let seen = '';
    await sn.walk((info) => void (seen = info.labels.k!));
    assert.equal(seen, 'v');
  } finally {
    await sn.close();
    await removeTree(top);
  }
});

test('walk orders keys bytewise (UTF-8), on the indexed path as on the full one', async () => {
  const top = tempDir();
  const sn = await Snapshotter.open(join(top, 'root'));
  try {
    // U+FF5E sorts before U+1F600 in UTF-8, after its surrogates in UTF-16.
    const keys = ['\u{1F600}', '\uFF5E', 'b', 'B', 'a\u00e9', 'a'];
    for (const key of keys) await sn.prepare(key, '', { labels: { x: 'y' } });
    const expected = [...keys].sort((p, q) => Buffer.compare(Buffer.from(p), Buffer.from(q)));
    assert.deepEqual(await names(sn), expected);
    assert.deepEqual(await names(sn, 'labels.x==y'), expected);
  } finally {
    await sn.close();
    await removeTree(top);
  }
});

test('a cache miss followed by many writes in one turn of the event loop does not hold the WAL back', async () => {
  const top = tempDir();
  const root = join(top, 'root');
  const sn = await Snapshotter.open(root);
  try {
    await sn.prepare('base');
    // A miss: the reader connection begins a read transaction...
    await sn.stat('base');
    // ...and these writes all run before the event loop turns (each call resolves at once).
    for (let i = 0; i < 1500; i++) {
      await sn.prepare(`k${i}`);
      await sn.remove(`k${i}`);
    }
    // 3,000 commits of about 4 pages each: a pinned snapshot would keep all ~48 MB of them in the WAL.
    const wal = statSync(join(root, 'metadata.db-wal')).size;
    assert.ok(wal < 16 * 1024 * 1024, `WAL is ${wal} bytes`);
    assert.equal((await sn.stat('base')).kind, 'active');
  } finally {
    await sn.close();
    await removeTree(top);
  }
});

const STRACE_MISSING = toolSkipReason('strace', ['-V'], 'to watch the system calls');

test('every mutating call returns only after a sync of the WAL that began after its last write to it, and commit syncs the layer before it writes the record', prerequisiteOptions(STRACE_MISSING), async () => {
  assertPrerequisite(STRACE_MISSING);
  const dir = tempDir();
  try {
    const log = join(dir, 'strace.log');
    const child = fileURLToPath(new URL('../helpers/durable-child.ts', import.meta.url));
    const result = spawnSync('strace', ['-f', '-qq', '-e', 'trace=openat,pwrite64,fsync,fdatasync,syncfs,write', '-o', log, process.execPath, '--import', 'tsx', child, join(dir, 'root')], {
      encoding: 'utf8',
    });
    assert.equal(result.status, 0, result.stderr);
    const lines = readFileSync(log, 'utf8').split('\n');
    // The descriptor an openat of a path matching `path` returned at line `i`, also when another
    // thread's line split the call in two; strace pads short lines, so any run of spaces comes before "=".
    const openedAt = (i: number, path: RegExp): string | undefined => {
      const line = lines[i]!;
      const call = /^(\d+) +openat\(AT_FDCWD, "([^"]*)", /.exec(line);
      if (call === null || !path.test(call[2]!)) return undefined;
      const whole = /\)\s+= (\d+)$/.exec(line);
      if (whole) return whole[1];
      if (!line.includes('<unfinished')) return undefined;
      const resumed = lines.find((l, k) => k > i && l.startsWith(`${call[1]} `) && l.includes('<... openat resumed>'));
      return resumed === undefined ? undefined : /\)\s+= (\d+)/.exec(resumed)?.[1];
    };
    // The WAL's descriptors: SQLite's (which writes it) and the store's own (which syncs it).
    const walFds = new Set<string>();
    lines.forEach((_, i) => {
      const fd = openedAt(i, /metadata\.db-wal$/);
      if (fd !== undefined) walFds.add(fd);
    });
    assert.ok(walFds.size >= 2, `the WAL is opened by SQLite and by the store: ${[...walFds]}`);
    const isWalWrite = (l: string) => { const m = /pwrite64\((\d+),/.exec(l); return m !== null && walFds.has(m[1]!); };
    const syncStart = (l: string) => { const m = /(?:fdatasync|fsync)\((\d+)/.exec(l); return m !== null && walFds.has(m[1]!); };
    const syncEnd = (l: string) =>
      (/(?:fdatasync|fsync)\((\d+)\)\s+= 0/.test(l) && syncStart(l)) || /<\.\.\. (?:fdatasync|fsync) resumed>\)\s+= 0/.test(l);
    const calls: string[] = [];
    const done = new Map<string, number>();
    lines.forEach((line, i) => {
      const m = /write\(2, "DONE ([^\\"]*)/.exec(line);
      if (!m) return;
      calls.push(m[1]!);
      done.set(m[1]!, i);
      let lastWrite = -1;
      for (let j = i - 1; j >= 0; j--) {
        if (isWalWrite(lines[j]!)) {
          lastWrite = j;
          break;
        }
      }
      assert.ok(lastWrite >= 0, `${m[1]} wrote the WAL`);
      // A sync of the WAL that started after that write and finished before the call returned.
      let synced = false;
      for (let j = lastWrite + 1; j < i && !synced; j++) {
        if (!syncStart(lines[j]!)) continue;
        const tid = lines[j]!.split(' ')[0];
        for (let k = j; k < i; k++) {
          if (lines[k]!.split(' ')[0] === tid && syncEnd(lines[k]!)) {
            synced = true;
            break;
          }
        }
      }
      assert.ok(synced, `${m[1]} returned before its commit was synced`);
    });
    assert.deepEqual(calls, ['prepare', 'commit', 'update', 'view', 'prepare burst', 'concurrent prepares', 'concurrent removes', 'remove']);

    // Group commit: calls in flight together share their syncs, where one each would be 16 and 21.
    const syncsBetween = (a: string, b: string) => lines.slice(done.get(a)! + 1, done.get(b)).filter(syncStart).length;
    assert.ok(syncsBetween('prepare burst', 'concurrent prepares') <= 2, `16 prepares started together made ${syncsBetween('prepare burst', 'concurrent prepares')} WAL syncs`);
    assert.ok(syncsBetween('concurrent prepares', 'concurrent removes') <= 4, `21 removes started together made ${syncsBetween('concurrent prepares', 'concurrent removes')} WAL syncs`);

    // The commit (between "DONE prepare" and "DONE commit"): a syncfs(2) of
    // the layer's own fs dir finishes before the first write of the record.
    const from = done.get('prepare')!;
    const to = done.get('commit')!;
    const firstRecordWrite = lines.findIndex((l, i) => i > from && i < to && isWalWrite(l));
    assert.ok(firstRecordWrite > from, 'commit wrote its record to the WAL');
    const layerFds = new Set<string>();
    let layerSynced = false;
    for (let i = from + 1; i < firstRecordWrite; i++) {
      const line = lines[i]!;
      const fd = openedAt(i, /\/snapshots\/1\/fs$/);
      if (fd !== undefined) layerFds.add(fd);
      const synced = /syncfs\((\d+)\)\s+= 0/.exec(line);
      if (synced && layerFds.has(synced[1]!)) layerSynced = true;
      // A syncfs interrupted in the log by another thread's line ends in a "resumed" line of the same thread.
      const started = /^(\d+) +syncfs\((\d+) <unfinished/.exec(line);
      if (started && layerFds.has(started[2]!)) {
        const end = lines.findIndex((l, k) => k > i && k < firstRecordWrite && l.startsWith(`${started[1]} `) && /<\.\.\. syncfs resumed>\)\s+= 0/.test(l));
        if (end > 0) layerSynced = true;
      }
    }
    const seen = lines.slice(from + 1, firstRecordWrite + 1).filter((l) => /syncfs|snapshots\/1\/fs|resumed/.test(l));
    assert.ok(layerSynced, `commit synced the layer (syncfs of snapshots/1/fs) before it wrote the record; strace saw:\n${seen.join('\n')}`);
  } finally {
    await removeTree(dir);
  }
});

/** Whether process `pid` has ended (gone, or a zombie not yet reaped). */
function ended(pid: number): boolean {
  try {
    return readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.startsWith('Z');
  } catch {
    return true;
  }
}

/** Another process holding `<root>/metadata.db-lock` for `seconds` (flock(1)), once it holds it. */
async function lockHolder(file: string, seconds: number): Promise<ChildProcess> {
  const holder = spawn('flock', [file, 'sleep', String(seconds)], { stdio: 'ignore' });
  while (spawnSync('flock', ['-n', file, 'true']).status === 0) await new Promise((r) => setTimeout(r, 10));
  return holder;
}

const FLOCK_MISSING = toolSkipReason('flock', ['--version'], "to hold the writers' lock from another process");

test('write transactions take turns through <db>-lock: a prepare waits while another process holds it, and goes on without it once the busy timeout has passed', prerequisiteOptions(FLOCK_MISSING), async () => {
  assertPrerequisite(FLOCK_MISSING);
  const dir = tempDir();
  const holders: ChildProcess[] = [];
  try {
    const root = join(dir, 'root');
    const patient = await Snapshotter.open(root, { busyTimeout: 60_000 });
    const hasty = await Snapshotter.open(root, { busyTimeout: 200 });
    try {
      const lock = join(root, 'metadata.db-lock');
      holders.push(await lockHolder(lock, 0.5));
      await patient.prepare('waited');
      assert.ok(ended(holders[0]!.pid!), 'the prepare went on only once the other process had let go');
      holders.push(await lockHolder(lock, 30));
      await hasty.prepare('went-on');
      assert.ok(!ended(holders[1]!.pid!), 'past its busy timeout the prepare went on while the lock was still held');
      assert.deepEqual((await patient.stat('went-on')).kind, 'active', 'SQLite\'s own lock kept the store whole');
    } finally {
      for (const h of holders) h.kill('SIGKILL');
      await patient.close();
      await hasty.close();
    }
  } finally {
    await removeTree(dir);
  }
});
