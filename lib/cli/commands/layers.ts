/**
 * Layer tarballs: apply, diff, import. Bytes are counted through the stream
 * handed to the library (it has no progress callbacks for these).
 */
import { once } from 'node:events';
import { createReadStream, createWriteStream, rmSync, statSync } from 'node:fs';
import { finished, pipeline } from 'node:stream/promises';
import type { Command } from 'commander';
import { Option } from 'commander';
import { type DiffOptions, type LayerSource, applyToSnapshot, diffSnapshot, importLayers } from '../../index.js';
import { Context } from '../context.js';
import { UsageError } from '../exit.js';
import { displayName, fields, humanSize, table } from '../format.js';
import { collectLabel, integerIn, parseDigest } from '../parse.js';
import { counted, counter } from '../progress.js';

const STDIN = '-';

/** The size of a regular file (a bar can then show a percentage); undefined for pipes and devices. */
function fileSize(file: string): number | undefined {
  const st = statSync(file);
  return st.isFile() ? st.size : undefined;
}

function refuseTerminalInput(): void {
  if (process.stdin.isTTY) throw new UsageError('refusing to read a layer from a terminal; pipe one into stdin or name a FILE');
}

export function registerLayers(program: Command): void {
  program
    .command('apply')
    .description('apply a layer tarball (tar, gzip or zstd) to an active snapshot')
    .argument('<key>', 'key of an active snapshot')
    .argument('<file>', 'layer file, or - for stdin')
    .action(async (key: string, file: string, _opts: unknown, cmd: Command) => {
      const ctx = Context.of(cmd);
      if (file === STDIN) refuseTerminalInput();
      const totalBytes = file === STDIN ? undefined : fileSize(file);
      const result = await ctx.with(async (sn) => {
        let read = 0;
        const progress = ctx.progress({ label: 'apply', ...(totalBytes === undefined ? {} : { totalBytes }) });
        try {
          const source = counted(file === STDIN ? process.stdin : createReadStream(file), (n) => {
            read = n;
            progress.update({ bytes: n });
          });
          const r = await applyToSnapshot(sn, key, source);
          return { key, digest: r.digest, size: r.size, compression: r.compression, read };
        } finally {
          progress.stop();
        }
      });
      ctx.output(result, () =>
        fields([
          ['Key', displayName(result.key)],
          ['Digest', result.digest],
          ['Size', `${humanSize(result.size)} (${result.size} bytes uncompressed)`],
          ['Compression', result.compression],
          ['Read', `${humanSize(result.read)} (${result.read} bytes)`],
        ]),
      );
    });

  program
    .command('diff')
    .description("write an active snapshot's changes as a layer tarball")
    .argument('<key>', 'key of an active snapshot')
    .argument('[file]', 'output file; - or omitted: stdout (never a terminal)')
    .addOption(new Option('--compression <kind>', 'compress the layer').choices(['gzip', 'none']).default('none'))
    .option('--gzip', 'same as --compression gzip')
    .option('--gzip-level <level>', 'gzip level, 1 (fast) to 9 (small)', integerIn(1, 9))
    .addOption(
      new Option('--source-date-epoch <seconds>', 'clamp mtimes to this time, for reproducible layers')
        .env('SOURCE_DATE_EPOCH')
        .argParser(integerIn(0, Number.MAX_SAFE_INTEGER)),
    )
    .addHelpText('after', '\nWhen the layer goes to stdout, the summary (or --json document) goes to stderr.')
    .action(
      async (
        key: string,
        file: string | undefined,
        o: { compression: 'gzip' | 'none'; gzip?: boolean; gzipLevel?: number; sourceDateEpoch?: number },
        cmd: Command,
      ) => {
        const ctx = Context.of(cmd);
        const toStdout = file === undefined || file === STDIN;
        if (toStdout && process.stdout.isTTY) {
          throw new UsageError('refusing to write a layer to a terminal; redirect stdout or name a FILE');
        }
        const compression = o.gzip ? 'gzip' : o.compression;
        const options: DiffOptions = { compression };
        if (o.gzipLevel !== undefined) options.gzipLevel = o.gzipLevel;
        if (o.sourceDateEpoch !== undefined) options.sourceDateEpoch = o.sourceDateEpoch;
        const result = await ctx.with(async (sn) => {
          // Fail on a missing or committed key before creating FILE.
          await sn.mounts(key);
          const progress = ctx.progress({ label: 'diff' });
          const out = counter((n) => progress.update({ bytes: n }));
          try {
            let r;
            if (toStdout) {
              const onError = (err: Error) => out.destroy(err);
              process.stdout.once('error', onError);
              out.pipe(process.stdout);
              try {
                [r] = await Promise.all([diffSnapshot(sn, key, out, options), finished(out)]);
                if (process.stdout.writableNeedDrain) await once(process.stdout, 'drain');
              } catch (err) {
                out.destroy();
                throw err;
              } finally {
                process.stdout.removeListener('error', onError);
              }
            } else {
              try {
                [r] = await Promise.all([diffSnapshot(sn, key, out, options), pipeline(out, createWriteStream(file))]);
              } catch (err) {
                // Settle the pipeline (the diff may have failed before ending `out`), then drop the partial file.
                out.destroy();
                rmSync(file, { force: true });
                throw err;
              }
            }
            return { key, ...r, compression, file: toStdout ? null : file };
          } finally {
            progress.stop();
          }
        });
        const human = () =>
          fields([
            ['Key', displayName(result.key)],
            ['Digest', `${result.digest} (diffID)`],
            ['Size', `${humanSize(result.size)} (${result.size} bytes uncompressed)`],
            ['Compressed digest', result.compressedDigest],
            ['Written', `${humanSize(result.compressedSize)} (${result.compressedSize} bytes, ${result.compression})`],
          ]);
        if (!toStdout) ctx.output(result, human);
        else if (ctx.json) ctx.printJson(result, process.stderr);
        else process.stderr.write(human());
      },
    );

  program
    .command('import')
    .description('import layer tarballs, bottom first, as committed snapshots named by their chain IDs')
    .argument('<file...>', 'layer files, bottom layer first (one may be - for stdin)')
    .option('--diff-id <digest>', "the layers' diffIDs (sha256:...) in the same order, from the image config; repeatable. Present layers are then skipped unread", parseDigest)
    .option('--label <key=value>', 'label of each committed snapshot; repeatable', collectLabel)
    .action(async (files: string[], o: { diffId?: string[]; label?: Record<string, string> }, cmd: Command) => {
      const ctx = Context.of(cmd);
      if (files.filter((f) => f === STDIN).length > 1) throw new UsageError('stdin (-) can be given only once');
      if (files.includes(STDIN)) refuseTerminalInput();
      if (o.diffId !== undefined && o.diffId.length !== files.length) {
        throw new UsageError(`--diff-id given ${o.diffId.length} times for ${files.length} files; give one per file, in order, or none`);
      }
      const sizes = files.map((f) => (f === STDIN ? undefined : fileSize(f)));
      const known = sizes.every((s) => s !== undefined);
      const layers: { index: number; file: string; chainID: string; diffID: string; skipped: boolean }[] = [];
      const top = await ctx.with(
        async (sn) => {
          const progress = ctx.progress({
            label: 'import',
            unit: 'layers',
            total: files.length,
            ...(known ? { totalBytes: sizes.reduce<number>((s, n) => s + n!, 0) } : {}),
          });
          // Bytes of finished layers, and of the one being read.
          let base = 0;
          let current = 0;
          const sources: LayerSource[] = files.map((f, i) => {
            const stream = () =>
              counted(f === STDIN ? process.stdin : createReadStream(f), (n) => {
                current = n;
                progress.update({ bytes: base + n });
              });
            const diffID = o.diffId?.[i];
            return diffID === undefined ? { stream } : { stream, diffID };
          });
          try {
            return await importLayers(sn, sources, {
              ...(o.label === undefined ? {} : { labels: o.label }),
              onLayer: (e) => {
                // A layer skipped unread counts as its whole file, so the bar ends full.
                base += current > 0 ? current : (sizes[e.index] ?? 0);
                current = 0;
                layers.push({ index: e.index, file: files[e.index]!, chainID: e.chainID, diffID: e.diffID, skipped: e.skipped });
                progress.update({ done: e.index + 1, bytes: base });
              },
            });
          } finally {
            progress.stop();
          }
        },
        { create: true },
      );
      ctx.output({ top, layers }, () =>
        table(
          ['LAYER', 'FILE', 'STATUS', 'CHAIN ID'],
          layers.map((l) => [String(l.index), displayName(l.file), l.skipped ? 'present' : 'applied', l.chainID]),
        ) + `top: ${top}\n`,
      );
    });
}
