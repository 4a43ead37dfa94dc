/**
 * Layer apply/diff throughput against GNU tar, on the same data in the same run.
 *
 *   npx tsx bench/layers.ts [--quick] [--json FILE] [--dir DIR] [--keep] [--set big|small]
 *
 * Two data sets: "big" (1 GiB in 10,000 files) and "small" (50,000 files of
 * 0-4 KiB); --quick scales both down tenfold. For each:
 *   apply: `tar -xf layer.tar -C dir`   vs applyLayer(layer.tar) into an overlay upper (one empty lower)
 *   diff:  `tar -cf out.tar -C dir .`   vs diffLayer(dir) to a file
 * Each figure is the best of three interleaved runs, each into a fresh path,
 * with `sync` before each so writeback of one run does not land on the next,
 * and the order alternating (tar first, then ours first, ...) so that neither
 * side always runs right after the data set was written. A diff's output
 * file is deleted once timed (unless --keep): its page cache is then reused
 * by the next run instead of taken fresh, which on a VM that hands freed
 * memory back to its host can cost either side seconds per GiB (one
 * deleted file, unlike a deleted tree, does not slow later file creation).
 * Needs root (the layer keeps owners) and about 15 GiB free under --dir
 * (default $TMPDIR or /tmp). On a slow disk both sides wait on file creation and the ratio says
 * little; `--dir /dev/shm` (tmpfs) compares the CPU cost of the two.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { createReadStream, createWriteStream, mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { applyLayer } from '../lib/layers/apply.js';
import { diffLayer } from '../lib/layers/diff.js';

const args = process.argv.slice(2);
const quick = args.includes('--quick');
const keep = args.includes('--keep');
const jsonIdx = args.indexOf('--json');
const jsonFile = jsonIdx >= 0 ? args[jsonIdx + 1] : undefined;
const dirIdx = args.indexOf('--dir');
const baseDir = dirIdx >= 0 ? args[dirIdx + 1]! : (process.env.TMPDIR ?? tmpdir());
const runs = 3;
const onlyIdx = args.indexOf('--set');
/** `big` or `small`: run that data set alone. */
const only = onlyIdx >= 0 ? args[onlyIdx + 1] : undefined;
if (only !== undefined && only !== 'big' && only !== 'small') throw new Error(`--set takes big or small, not ${only}`);

interface DataSet {
  name: string;
  files: number;
  dirs: number;
  size: (i: number) => number;
}

const sets: DataSet[] = [
  { name: quick ? 'big (100 MiB / 1,000 files)' : 'big (1 GiB / 10,000 files)', files: quick ? 1_000 : 10_000, dirs: 100, size: () => 107_374 },
  { name: quick ? 'small (5,000 files)' : 'small (50,000 files)', files: quick ? 5_000 : 50_000, dirs: quick ? 50 : 500, size: (i) => (i * 2654435761) % 4096 },
];

function sync(): void {
  spawnSync('sync');
}

function generate(dir: string, set: DataSet): number {
  const pool = randomBytes(4 * 1024 * 1024);
  let total = 0;
  for (let d = 0; d < set.dirs; d++) mkdirSync(join(dir, `d${d}`), { recursive: true });
  for (let i = 0; i < set.files; i++) {
    const size = set.size(i);
    const off = (i * 7919) % (pool.length - size);
    writeFileSync(join(dir, `d${i % set.dirs}`, `f${i}`), pool.subarray(off, off + size));
    total += size;
  }
  return total;
}

/**
 * Best time of each of two commands over a few rounds, interleaved and alternating (tar, ours, ours, tar, tar, ours).
 * Every run writes to a fresh path and nothing is deleted until the end: deleting a large
 * tree just before a timed run slows the next file creations on some disks, and would
 * favour whichever side ran first.
 */
async function bestOf(
  labels: [string, string],
  tarRun: (r: number) => void,
  ourRun: (r: number) => Promise<void>,
  after?: (side: 0 | 1, r: number) => void,
): Promise<[number, number]> {
  const min: [number, number] = [Infinity, Infinity];
  for (let r = 0; r < runs; r++) {
    for (const side of r % 2 === 0 ? ([0, 1] as const) : ([1, 0] as const)) {
      sync();
      const t0 = process.hrtime.bigint();
      if (side === 0) tarRun(r);
      else await ourRun(r);
      min[side] = Math.min(min[side], Number(process.hrtime.bigint() - t0) / 1e9);
      after?.(side, r);
    }
  }
  process.stderr.write(`  ${labels[0]}: ${min[0].toFixed(3)} s, ${labels[1]}: ${min[1].toFixed(3)} s\n`);
  return min;
}

interface Row {
  set: string;
  op: 'apply' | 'diff';
  tarSeconds: number;
  oursSeconds: number;
  tarBytes: number;
  files: number;
  ratio: number;
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('bench/layers.ts needs root (layers keep owners; overlay uppers need trusted xattrs)');
  const root = mkdtempSync(join(baseDir, 'layers-bench-'));
  const rows: Row[] = [];
  try {
    for (const [setIndex, set] of sets.entries()) {
      if (only !== undefined && !set.name.startsWith(only)) continue;
      process.stderr.write(`${set.name}\n`);
      // Each set in its own dir, and no tree deleted before the end: on ext4, creating files soon
      // after a big delete walks the recently freed inodes (recently_deleted() in the inode
      // allocator) and can take ten times as long, hitting whichever side runs then.
      const top = join(root, `set${setIndex}`);
      const data = join(top, 'data');
      mkdirSync(data, { recursive: true });
      generate(data, set);
      const layer = join(top, 'layer.tar');
      execFileSync('tar', ['--numeric-owner', '-cf', layer, '-C', data, '.']);
      const tarBytes = statSync(layer).size;

      const lower = join(top, 'lower');
      mkdirSync(lower, { recursive: true });
      const fresh = (name: string): string => {
        const dir = join(top, name);
        mkdirSync(dir);
        return dir;
      };
      const [tarApply, ourApply] = await bestOf(
        ['tar -x', 'applyLayer'],
        (r) => {
          execFileSync('tar', ['--numeric-owner', '-xf', layer, '-C', fresh(`x-tar-${r}`)]);
        },
        async (r) => {
          await applyLayer(createReadStream(layer, { highWaterMark: 1024 * 1024 }), { upper: fresh(`x-ours-${r}`), lowers: [lower] });
        },
      );
      rows.push({ set: set.name, op: 'apply', tarSeconds: tarApply, oursSeconds: ourApply, tarBytes, files: set.files, ratio: tarApply / ourApply });

      const [tarDiff, ourDiff] = await bestOf(
        ['tar -c', 'diffLayer'],
        (r) => {
          execFileSync('tar', ['--numeric-owner', '-cf', join(top, `c-tar-${r}.tar`), '-C', data, '.']);
        },
        async (r) => {
          await diffLayer({ upper: data, lowers: [] }, createWriteStream(join(top, `c-ours-${r}.tar`)));
        },
        (side, r) => {
          if (!keep) rmSync(join(top, `c-${side === 0 ? 'tar' : 'ours'}-${r}.tar`));
        },
      );
      rows.push({ set: set.name, op: 'diff', tarSeconds: tarDiff, oursSeconds: ourDiff, tarBytes, files: set.files, ratio: tarDiff / ourDiff });
    }
  } finally {
    if (!keep) rmSync(root, { recursive: true, force: true });
  }

  const mib = (b: number, s: number): string => `${(b / 1024 / 1024 / s).toFixed(0)} MiB/s`;
  const fps = (n: number, s: number): string => `${Math.round(n / s).toLocaleString('en')} files/s`;
  console.log(`\n| data | op | GNU tar | ours | ours / tar speed |`);
  console.log(`|---|---|---|---|---|`);
  for (const r of rows) {
    console.log(
      `| ${r.set} | ${r.op} | ${r.tarSeconds.toFixed(2)} s (${mib(r.tarBytes, r.tarSeconds)}, ${fps(r.files, r.tarSeconds)}) | ${r.oursSeconds.toFixed(2)} s (${mib(r.tarBytes, r.oursSeconds)}, ${fps(r.files, r.oursSeconds)}) | ${r.ratio.toFixed(2)}× |`,
    );
  }
  if (jsonFile) writeFileSync(jsonFile, `${JSON.stringify({ quick, runs, dir: baseDir, node: process.version, rows }, null, 2)}\n`);
}

await main();
