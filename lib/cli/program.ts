/**
 * The command tree: global options, help and error output, and every
 * subcommand. `createProgram()` builds a fresh, side-effect-free program
 * (tests inspect it); main.ts parses the real command line with it.
 */
import { readFileSync } from 'node:fs';
import { Command, Option } from 'commander';
import { registerImage } from './commands/image.js';
import { registerInspect } from './commands/inspect.js';
import { registerLayers } from './commands/layers.js';
import { registerMaintenance } from './commands/maintenance.js';
import { registerMounts } from './commands/mounts.js';
import { registerServe } from './commands/serve.js';
import { registerSnapshots } from './commands/snapshots.js';
import { DEFAULT_ROOT, DRIVER_ENV, ROOT_ENV } from './context.js';
import { PROG } from './exit.js';

/** The package's version (package.json sits two levels up from both lib/cli/ and dist/cli/). */
export const VERSION = (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;

export function createProgram(): Command {
  const program = new Command(PROG);
  program
    .description('Inspect, create, mount, import, diff, clean up and prune overlayfs snapshots (containerd semantics).')
    .version(VERSION, '-V, --version')
    .addOption(new Option('--root <dir>', 'snapshotter root').env(ROOT_ENV).default(DEFAULT_ROOT))
    .addOption(
      new Option('--driver <driver>', "how a new store keeps snapshots: overlay, or native (copies); default: the store's own, or chosen by the root").choices(['overlay', 'native']).env(DRIVER_ENV),
    )
    .option('--json', 'machine-readable output on stdout (shapes in docs/cli.md)')
    // Errors and their exit codes are decided in main.ts.
    .exitOverride()
    .configureOutput({
      outputError: (str, write) => write(`${PROG}: ${str.replace(/^error: /, '')}`),
    })
    .showHelpAfterError(`(run ${PROG} --help, or ${PROG} <command> --help)`)
    .configureHelp({ showGlobalOptions: true, sortSubcommands: false })
    .addHelpText(
      'after',
      `
Exit codes: 0 ok, 1 failure, 2 usage or invalid argument, 3 not found,
4 already exists, 5 failed precondition, 6 unavailable, 7 check found problems.
The root also comes from ${ROOT_ENV}; see docs/cli.md.`,
    );

  registerInspect(program);
  registerSnapshots(program);
  registerMounts(program);
  registerLayers(program);
  registerImage(program);
  registerMaintenance(program);
  registerServe(program);
  return program;
}
