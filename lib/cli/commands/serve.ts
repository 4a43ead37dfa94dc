/**
 * `serve`: the snapshotter as a containerd proxy plugin, run as a system
 * service. It opens the store, then puts the socket in place (its
 * existence means ready), and on SIGTERM or SIGINT stops accepting, lets
 * calls in flight finish (bounded), removes the socket and closes the
 * store. One line on stderr at start and one at stop; the rest goes to
 * the `debug` log (`DEBUG=overlay-snapshotter:*`).
 */
import { type Command, Option } from 'commander';
import { Snapshotter } from '../../index.js';
import { serve } from '../../server/index.js';
import { Context } from '../context.js';
import { PROG, UsageError } from '../exit.js';

export const DEFAULT_ADDRESS = '/run/overlay-snapshotter/overlay-snapshotter.sock';
export const ADDRESS_ENV = 'OVERLAY_SNAPSHOTTER_ADDRESS';

const STOP_SIGNALS = ['SIGTERM', 'SIGINT'] as const;

interface ServeFlags {
  address: string;
  socketMode: string;
  shutdownTimeout: string;
  asyncRemove?: boolean;
  upperdirLabel?: boolean;
  durableLayers: boolean;
}

function parseMode(text: string): number {
  if (!/^0?[0-7]{3}$/.test(text)) throw new UsageError(`--socket-mode expects octal permission bits such as 0660, got ${JSON.stringify(text)}`);
  return parseInt(text, 8);
}

function parseSeconds(text: string): number {
  const seconds = Number(text);
  if (text.trim() === '' || !Number.isFinite(seconds) || seconds < 0) throw new UsageError(`--shutdown-timeout expects seconds (>= 0), got ${JSON.stringify(text)}`);
  return seconds * 1000;
}

/** Resolves with the first stop signal received; a second one ends the process at once. */
function stopSignal(): Promise<NodeJS.Signals> {
  return new Promise((resolve) => {
    const onSignal = (signal: NodeJS.Signals) => {
      for (const s of STOP_SIGNALS) process.removeListener(s, onSignal);
      for (const s of STOP_SIGNALS) {
        process.once(s, (again) => {
          process.stderr.write(`${PROG}: ${again} again: exiting without waiting for calls in flight\n`);
          process.exit(1);
        });
      }
      resolve(signal);
    };
    for (const s of STOP_SIGNALS) process.on(s, onSignal);
  });
}

export function registerServe(program: Command): void {
  program
    .command('serve')
    .description("serve containerd's snapshots gRPC API on a unix socket, as a containerd proxy plugin (see docs/containerd.md)")
    .addOption(new Option('--address <path>', 'unix socket to listen on').env(ADDRESS_ENV).default(DEFAULT_ADDRESS))
    .option('--socket-mode <octal>', 'permission bits of the socket', '0660')
    .option('--shutdown-timeout <seconds>', 'how long calls in flight may run on after SIGTERM or SIGINT', '10')
    .option('--async-remove', 'Remove deletes only the record; Cleanup (containerd\'s garbage collector calls it) deletes the directories')
    .option('--upperdir-label', 'show the label containerd.io/snapshot/overlay.upperdir on actives and views')
    .option('--no-durable-layers', 'do not sync a layer\'s data before Commit records it (throwaway CI layers only)')
    .action(async (flags: ServeFlags, cmd: Command) => {
      const ctx = Context.of(cmd);
      const socketMode = parseMode(flags.socketMode);
      const shutdownTimeout = parseSeconds(flags.shutdownTimeout);
      const stopping = stopSignal();
      const sn = await Snapshotter.open(ctx.root, {
        driver: ctx.driver,
        asyncRemove: flags.asyncRemove === true,
        upperdirLabel: flags.upperdirLabel === true,
        durableLayers: flags.durableLayers,
      });
      let signal: NodeJS.Signals;
      try {
        const server = await serve(sn, { address: flags.address, socketMode, shutdownTimeout });
        process.stderr.write(`${PROG}: serving ${ctx.root} on ${server.address} (pid ${process.pid})\n`);
        signal = await stopping;
        await server.close();
      } finally {
        await sn.close();
      }
      process.stderr.write(`${PROG}: stopped on ${signal}: socket removed, store closed\n`);
    });
}
