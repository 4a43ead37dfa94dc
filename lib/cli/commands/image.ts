/**
 * Whole images: `image import`, `image export`, `image ls`, `image rm`
 * (lib/images through the package's public API). Progress bars follow
 * layers and bytes through the library's onProgress callbacks.
 */
import type { Command } from 'commander';
import { Option } from 'commander';
import { type ImageProgress, exportImage, importImage, listImages, removeImage } from '../../index.js';
import { Context } from '../context.js';
import { displayName, fields, humanSize, table } from '../format.js';
import { integerIn } from '../parse.js';
import type { Progress } from '../progress.js';

/** Moves a bar along with an import's or export's progress events. */
function follow(progress: Progress): (p: ImageProgress) => void {
  return (p) => {
    progress.update({
      done: p.status === 'reading' ? p.layer : p.layer + 1,
      total: p.layers,
      bytes: p.doneBytes + (p.status === 'reading' ? p.bytes : 0),
      ...(p.totalBytes !== undefined ? { totalBytes: p.totalBytes } : {}),
    });
  };
}

export function registerImage(program: Command): void {
  const image = program
    .command('image')
    .description('import and export whole images (OCI layouts, docker archives); list and remove imported images')
    .addHelpText('after', '\nImported images are kept in <root>/images, itself an OCI image layout. See docs/images.md.');

  image
    .command('import')
    .description('import an image (OCI layout dir or tar, docker archive) as committed snapshots named by chain ID')
    .argument('<source>', 'an OCI image layout directory, an OCI layout tar, or a docker archive (docker save)')
    .option('--ref <name>', 'which image of the source (its ref annotation or tag); default: its only image')
    .option('--platform <os/arch[/variant]>', 'which platform of a multi-platform image; default: this machine')
    .action(async (source: string, o: { ref?: string; platform?: string }, cmd: Command) => {
      const ctx = Context.of(cmd);
      const result = await ctx.with(
        async (sn) => {
          const progress = ctx.progress({ label: 'import', unit: 'layers' });
          try {
            return await importImage(sn, source, {
              ...(o.ref !== undefined ? { ref: o.ref } : {}),
              ...(o.platform !== undefined ? { platform: o.platform } : {}),
              onProgress: follow(progress),
            });
          } finally {
            progress.stop();
          }
        },
        { create: true },
      );
      const { config: _config, ...shown } = result;
      ctx.output(shown, () =>
        table(
          ['LAYER', 'STATUS', 'SIZE', 'CHAIN ID'],
          result.layers.map((l) => [String(l.index), l.status, humanSize(l.size), l.chainId]),
          ['right', 'left', 'right', 'left'],
        ) +
        fields([
          ['Image', result.ref === undefined ? '(no name)' : displayName(result.ref)],
          ['Platform', `${result.platform.os}/${result.platform.architecture}${result.platform.variant ? `/${result.platform.variant}` : ''}`],
          ['Manifest', result.manifestDigest],
          ['Chain ID', result.chainId],
        ]),
      );
    });

  image
    .command('export')
    .description('export an active or committed snapshot, with its parents, as an image')
    .argument('<key>', 'key of an active snapshot, or name of a committed one')
    .argument('<target>', 'an OCI layout directory (created, or added to), or a tar file for the archive formats')
    .addOption(new Option('--format <format>', 'what to write').choices(['oci', 'oci-archive', 'docker-archive']).default('oci'))
    .option('--ref <name>', 'the image name (index.json ref annotation; RepoTags of a docker archive)')
    .addOption(new Option('--compression <kind>', 'compression of new layers (docker archives are uncompressed)').choices(['gzip', 'zstd']).default('gzip'))
    .option('--base <ref>', 'the imported image whose config the new one starts from (default: found from the chain)')
    .addOption(
      new Option('--source-date-epoch <seconds>', 'creation time, and clamp of file mtimes, for reproducible images')
        .env('SOURCE_DATE_EPOCH')
        .argParser(integerIn(0, 253402300799)),
    )
    .option('--created-by <text>', "history entry of the new layers ('created_by')")
    .action(
      async (
        key: string,
        target: string,
        o: { format: 'oci' | 'oci-archive' | 'docker-archive'; ref?: string; compression: 'gzip' | 'zstd'; base?: string; sourceDateEpoch?: number; createdBy?: string },
        cmd: Command,
      ) => {
        const ctx = Context.of(cmd);
        const result = await ctx.with(async (sn) => {
          const progress = ctx.progress({ label: 'export', unit: 'layers' });
          try {
            return await exportImage(sn, key, target, {
              format: o.format,
              compression: o.compression,
              ...(o.ref !== undefined ? { ref: o.ref } : {}),
              ...(o.base !== undefined ? { base: o.base } : {}),
              ...(o.sourceDateEpoch !== undefined ? { sourceDateEpoch: o.sourceDateEpoch } : {}),
              ...(o.createdBy !== undefined ? { layerHistory: { created_by: o.createdBy } } : {}),
              onProgress: follow(progress),
            });
          } finally {
            progress.stop();
          }
        });
        ctx.output(result, () =>
          table(
            ['LAYER', 'STATUS', 'SIZE', 'DIGEST'],
            result.layers.map((l, i) => [String(i), l.status, humanSize(l.size), l.digest]),
            ['right', 'left', 'right', 'left'],
          ) +
          fields([
            ['Target', `${displayName(result.target)} (${result.format})`],
            ['Manifest', result.manifestDigest],
            ['Chain ID', result.chainId],
          ]),
        );
      },
    );

  image
    .command('ls')
    .alias('list')
    .description('list imported images: refs, chain IDs, sizes')
    .action(async (_o: unknown, cmd: Command) => {
      const ctx = Context.of(cmd);
      const images = await ctx.with((sn) => listImages(sn));
      ctx.output(images, () =>
        table(
          ['REF', 'PLATFORM', 'LAYERS', 'SIZE', 'CHAIN ID', 'SNAPSHOT'],
          images.map((i) => [
            i.ref === undefined ? `(${i.manifestDigest.slice(0, 19)})` : displayName(i.ref),
            i.platform ? `${i.platform.os}/${i.platform.architecture}${i.platform.variant ? `/${i.platform.variant}` : ''}` : '-',
            String(i.layers),
            humanSize(i.size),
            i.chainId,
            i.present ? 'present' : 'missing',
          ]),
          ['left', 'left', 'right', 'right', 'left', 'left'],
        ),
      );
    });

  image
    .command('rm')
    .alias('remove')
    .description('remove an imported image (its snapshots become prunable)')
    .argument('<ref>', 'the image ref, or its manifest digest')
    .action(async (ref: string, _o: unknown, cmd: Command) => {
      const ctx = Context.of(cmd);
      const result = await ctx.with((sn) => removeImage(sn, ref));
      ctx.output(result, () =>
        result.removed.map((i) => `removed ${i.ref === undefined ? i.manifestDigest : displayName(i.ref)} (${i.chainId})`).join('\n') +
        (result.released.length > 0 ? `\n${result.released.length} top layer(s) no longer kept: \`prune\` removes them` : ''),
      );
    });
}
