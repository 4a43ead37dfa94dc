#!/usr/bin/env node
/**
 * `overlay-snapshotter`: the command-line tool, over the public API only.
 * See docs/cli.md.
 */
import { CommanderError } from 'commander';
import { EXIT, ExitError, exitCodeOf, reportError } from './exit.js';
import { createProgram } from './program.js';

// A reader that goes away (`| head`) ends us quietly, as SIGPIPE ends other tools.
process.stdout.on('error', (err: NodeJS.ErrnoException) => {
  if (err.code !== 'EPIPE') reportError(err);
  process.exit(err.code === 'EPIPE' ? EXIT.BROKEN_PIPE : EXIT.FAILURE);
});

try {
  await createProgram().parseAsync(process.argv);
} catch (err) {
  // Commander has already printed its own errors and the help text.
  if (!(err instanceof CommanderError) && !(err instanceof ExitError && err.message === '')) reportError(err);
  // Leave through the event loop, so that piped stdout is flushed.
  process.exitCode = exitCodeOf(err);
}
