/**
 * Layer apply/diff throughput against GNU tar, on the same data in the same run.
 *
 *   npx tsx bench/layers.ts [--quick] [--json FILE] [--dir DIR] [--keep]
 *
 * Two data sets: "big" (1 GiB in 10,000 files) and "small" (50,000 files of
 * 0-4 KiB); --quick scales both down tenfold. For each:
 *   apply: `tar -xf layer.tar -C dir`   vs applyLayer(layer.tar) into an overlay upper (one empty lower)
 *   diff:  `tar -cf out.tar -C dir .`   vs diffLayer(dir) to a file
 * Each measurement is the best of a few runs, with `sync` before each so
 * writeback of the previous run does not land on the next. Needs root (the
 * layer keeps owners) and a few GiB free under --dir (default $TMPDIR or
 * /tmp). On a slow disk both sides wait on file creation and the ratio says
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
const runs = quick ? 3 : 2;

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

async function best(label: string, prepare: () => void, run: () => Promise<void> | void): Promise<number> {
  let min = Infinity;
  for (let r = 0; r < runs; r++) {
    prepare();
    sync();
    const t0 = process.hrtime.bigint();
    await run();
    const s = Number(process.hrtime.bigint() - t0) / 1e9;
    min = Math.min(min, s);
  }
  process.stderr.write(`  ${label}: ${min.toFixed(3)} s\n`);
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
  const top = mkdtempSync(join(baseDir, 'layers-bench-'));
  const rows: Row[] = [];
  try {
    for (const set of sets) {
      process.stderr.write(`${set.name}\n`);
      const data = join(top, 'data');
      rmSync(data, { recursive: true, force: true });
      mkdirSync(data);
      generate(data, set);
      const layer = join(top, 'layer.tar');
      execFileSync('tar', ['--numeric-owner', '-cf', layer, '-C', data, '.']);
      const tarBytes = statSync(layer).size;

      const out = join(top, 'out');
      const lower = join(top, 'lower');
      mkdirSync(lower, { recursive: true });
      const fresh = (): void => {
        rmSync(out, { recursive: true, force: true });
        mkdirSync(out);
      };
      const tarApply = await best('tar -x', fresh, () => {
        execFileSync('tar', ['--numeric-owner', '-xf', layer, '-C', out]);
      });
      const ourApply = await best('applyLayer', fresh, async () => {
        await applyLayer(createReadStream(layer, { highWaterMark: 1024 * 1024 }), { upper: out, lowers: [lower] });
      });
      rows.push({ set: set.name, op: 'apply', tarSeconds: tarApply, oursSeconds: ourApply, tarBytes, files: set.files, ratio: tarApply / ourApply });

      const outTar = join(top, 'out.tar');
      const clear = (): void => rmSync(outTar, { force: true });
      const tarDiff = await best('tar -c', clear, () => {
        execFileSync('tar', ['--numeric-owner', '-cf', outTar, '-C', data, '.']);
      });
      const ourDiff = await best('diffLayer', clear, async () => {
        await diffLayer({ upper: data, lowers: [] }, createWriteStream(outTar));
      });
      rows.push({ set: set.name, op: 'diff', tarSeconds: tarDiff, oursSeconds: ourDiff, tarBytes, files: set.files, ratio: tarDiff / ourDiff });
      rmSync(out, { recursive: true, force: true });
    }
  } finally {
    if (!keep) rmSync(top, { recursive: true, force: true });
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
