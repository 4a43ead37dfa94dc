/** Commands that make, change and remove snapshots: prepare, view, commit, sync, rm, label. */
import type { Command } from 'commander';
import type { SnapshotOptions } from '../../index.js';
import { Context } from '../context.js';
import { ExitError, errorCodeOf, exitCodeOf, messageOf, reportError } from '../exit.js';
import { displayName, infoJson } from '../format.js';
import { collectLabel, parsePair } from '../parse.js';
import { MOUNT_COMMAND_HELP, printMounts } from './mounts.js';

interface CreateOptions {
  label?: Record<string, string>;
  mountCommand?: string | boolean;
  volatile?: boolean;
  quotaSize?: string;
  quotaInodes?: string;
}

function snapshotOptions(labels: Record<string, string> | undefined): SnapshotOptions | undefined {
  return labels === undefined ? undefined : { labels };
}

/** prepare's options: labels, and the volatile and quota flags (checked by the library, which names a bad value). */
function createOptions(opts: CreateOptions): SnapshotOptions | undefined {
  const out: SnapshotOptions = snapshotOptions(opts.label) ?? {};
  if (opts.volatile === true) out.volatile = true;
  if (opts.quotaSize !== undefined || opts.quotaInodes !== undefined) {
    out.quota = { ...(opts.quotaSize !== undefined && { size: opts.quotaSize }), ...(opts.quotaInodes !== undefined && { inodes: opts.quotaInodes }) };
  }
  return Object.keys(out).length === 0 ? undefined : out;
}

export function registerSnapshots(program: Command): void {
  for (const kind of ['prepare', 'view'] as const) {
    const command = program
      .command(kind)
      .description(
        kind === 'prepare'
          ? 'create an active (writable) snapshot on PARENT, or empty, and print its mounts'
          : 'create a read-only view of PARENT, or empty, and print its mounts',
      )
      .argument('<key>', 'key of the new snapshot')
      .argument('[parent]', 'name of a committed snapshot')
      .option('--label <key=value>', 'label of the new snapshot; repeatable', collectLabel)
      .option('--mount-command [target]', MOUNT_COMMAND_HELP);
    if (kind === 'prepare') {
      command
        .option('--volatile', 'mount its overlay with volatile: no syncs of the upper; commit needs `sync` first')
        .option('--quota-size <bytes>', 'bound its upper dir to this size (e.g. 10G) with project quotas')
        .option('--quota-inodes <count>', 'bound its upper dir to this many inodes with project quotas');
    }
    command.action(async (key: string, parent: string | undefined, opts: CreateOptions, cmd: Command) => {
      const ctx = Context.of(cmd);
      const mounts = await ctx.with((sn) => sn[kind](key, parent, kind === 'prepare' ? createOptions(opts) : snapshotOptions(opts.label)), { create: true });
      printMounts(ctx, key, mounts, opts.mountCommand);
    });
  }

  program
    .command('sync')
    .description('make the data of the active snapshot KEY durable; a volatile one can then be committed')
    .argument('<key>', 'key of an active snapshot')
    .action(async (key: string, _opts: unknown, cmd: Command) => {
      const ctx = Context.of(cmd);
      const info = await ctx.with(async (sn) => {
        await sn.sync(key);
        return sn.stat(key);
      });
      ctx.output(infoJson(info), () => '');
    });

  program
    .command('commit')
    .description('commit the active snapshot KEY as the immutable layer NAME')
    .argument('<name>', 'name of the committed snapshot')
    .argument('<key>', 'key of an active snapshot')
    .option('--label <key=value>', 'label of the committed snapshot; repeatable', collectLabel)
    .action(async (name: string, key: string, opts: { label?: Record<string, string> }, cmd: Command) => {
      const ctx = Context.of(cmd);
      const info = await ctx.with(async (sn) => {
        await sn.commit(name, key, snapshotOptions(opts.label));
        return sn.stat(name);
      });
      ctx.output(infoJson(info), () => '');
    });

  program
    .command('rm')
    .alias('remove')
    .description('remove snapshots (each must have no children and not be mounted)')
    .argument('<key...>', 'keys or names, removed in the order given')
    .addHelpText('after', '\nEvery key is tried; the exit code is that of the first failure.')
    .action(async (keys: string[], _opts: unknown, cmd: Command) => {
      const ctx = Context.of(cmd);
      const removed: string[] = [];
      const failed: { key: string; code: string; message: string }[] = [];
      let firstCode: number | undefined;
      await ctx.with(async (sn) => {
        for (const key of keys) {
          try {
            await sn.remove(key);
            removed.push(key);
          } catch (err) {
            reportError(err);
            failed.push({ key, code: errorCodeOf(err), message: messageOf(err) });
            firstCode ??= exitCodeOf(err);
          }
        }
      });
      ctx.output({ removed, failed }, () => '');
      if (firstCode !== undefined) throw new ExitError('', firstCode);
    });

  program
    .command('label')
    .description('set labels (k=v) or delete them (k=) on a snapshot, and print its labels')
    .argument('<key>', 'key or name of the snapshot')
    .argument('[labels...]', 'k=v to set, k= to delete; none: just print the labels', (text: string, prev: [string, string][] = []) => [
      ...prev,
      parsePair(text, true),
    ])
    .action(async (key: string, pairs: [string, string][] | undefined, _opts: unknown, cmd: Command) => {
      const ctx = Context.of(cmd);
      const info = await ctx.with(async (sn) => {
        if (pairs === undefined || pairs.length === 0) return sn.stat(key);
        const labels: Record<string, string> = {};
        for (const [k, v] of pairs) labels[k] = v;
        return sn.update({ name: key, labels }, ...pairs.map(([k]) => `labels.${k}`));
      });
      ctx.output(infoJson(info), () => {
        const keys = Object.keys(info.labels).sort();
        return keys.length === 0 ? '' : keys.map((k) => `${displayName(k)}=${displayName(info.labels[k]!)}\n`).join('');
      });
    });
}
