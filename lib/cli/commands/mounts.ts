/** Mount specs and real mounts: mounts, mount, unmount. */
import { resolve } from 'node:path';
import type { Command } from 'commander';
import { type Mount, mountAll, unmountAll } from '../../index.js';
import { Context } from '../context.js';
import { mountCommand, mountsTable } from '../format.js';

export const MOUNT_COMMAND_HELP = 'print the mounts as mount(8) command lines for TARGET (default /mnt)';

/** What prepare, view and mounts print: a table, or `mount` command lines; JSON `{ key, mounts }`. */
export function printMounts(ctx: Context, key: string, mounts: Mount[], commandTarget: string | boolean | undefined): void {
  ctx.output({ key, mounts }, () => {
    if (commandTarget === undefined || commandTarget === false) return mountsTable(mounts);
    const target = commandTarget === true ? '/mnt' : commandTarget;
    return mounts.map((m) => `${mountCommand(m, target)}\n`).join('');
  });
}

export function registerMounts(program: Command): void {
  program
    .command('mounts')
    .description('print the mount spec of an active snapshot or view')
    .argument('<key>', 'key of an active snapshot or view')
    .option('--mount-command [target]', MOUNT_COMMAND_HELP)
    .action(async (key: string, opts: { mountCommand?: string | boolean }, cmd: Command) => {
      const ctx = Context.of(cmd);
      const mounts = await ctx.with((sn) => sn.mounts(key));
      printMounts(ctx, key, mounts, opts.mountCommand);
    });

  program
    .command('mount')
    .description('mount an active snapshot or view on TARGET (needs CAP_SYS_ADMIN)')
    .argument('<key>', 'key of an active snapshot or view')
    .argument('<target>', 'an existing directory')
    .action(async (key: string, dir: string, _opts: unknown, cmd: Command) => {
      const ctx = Context.of(cmd);
      const target = resolve(dir);
      const mounts = await ctx.with((sn) => sn.mounts(key));
      await mountAll(mounts, target);
      ctx.output({ key, target, mounts }, () => '');
    });

  program
    .command('unmount')
    .alias('umount')
    .description('unmount TARGET until nothing is mounted there (not mounted is fine)')
    .argument('<target>', 'mount point')
    .action(async (dir: string, _opts: unknown, cmd: Command) => {
      const ctx = Context.of(cmd);
      const target = resolve(dir);
      await unmountAll(target);
      ctx.output({ target }, () => '');
    });
}
